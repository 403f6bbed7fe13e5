"""Write the Kubernetes manifests (and the KServe resources, and the Helm chart) for some models.

Every option is checked before the registry is asked or a file written; the folder is written
beside `out` and renamed into place, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard import __version__
from shipyard.deploy import yaml_text
from shipyard.deploy.chart import render_chart
from shipyard.deploy.context import resolve_refs
from shipyard.deploy.kserve import render_kserve
from shipyard.deploy.kube import KubeSpec, render_manifests
from shipyard.deploy.kube_values import check_label, quantity_value
from shipyard.deploy.output import check_out, holds
from shipyard.errors import InvalidInputError
from shipyard.registry import Registry
from shipyard.types import ModelVersion

MARKER = "# Written by `shipyard k8s`"  # each file's first line: --force may replace such a folder
_NAME_MAX = 45  # room for the longest suffix ("-secrets", "-config") within a 63-character name


@dataclass(frozen=True, slots=True)
class KubeConfig:
    """The options of one `shipyard k8s`."""

    refs: tuple[str, ...]
    image: str
    out: Path
    namespace: str = "default"
    name: str | None = None
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    cpu: str = "1"
    memory: str | None = None
    kserve: bool = False
    helm: bool = False
    force: bool = False
    shared_registry: bool = False
    artifact_url: str | None = None
    secret: str | None = None
    service_account: str | None = None
    annotations: tuple[tuple[str, str], ...] = ()
    target_in_flight: int = 8


@dataclass(frozen=True, slots=True)
class WrittenManifests:
    path: Path
    spec: KubeSpec
    files: tuple[str, ...]  # paths relative to `path`


def default_name(versions: list[ModelVersion]) -> str:
    """`shipyard-iris`, `shipyard-iris-digits`: model names made into a Kubernetes name."""
    words = "-".join(v.name for v in versions).replace("_", "-").replace(".", "-")
    name = f"shipyard-{words}"[:_NAME_MAX]
    while "--" in name:
        name = name.replace("--", "-")
    return name.rstrip("-")


def _replicas(config: KubeConfig) -> tuple[int, int, int]:
    """(replicas, min, max): the autoscaler's range and where the Deployment starts in it."""
    for option, value in (
        ("replicas", config.replicas),
        ("min", config.min_replicas),
        ("max", config.max_replicas),
    ):
        if value is not None and value < 1:
            raise InvalidInputError(f"--{option} must be at least 1, got {value}", field=option)
    low = config.min_replicas or min(config.replicas or 2, 2)
    high = config.max_replicas or max(10, low)
    if low > high:
        raise InvalidInputError(
            f"--min {low} is more than --max {high}; the autoscaler needs min <= max", field="min"
        )
    replicas = config.replicas or low
    if not low <= replicas <= high:
        raise InvalidInputError(
            f"--replicas {replicas} is outside --min {low} .. --max {high}", field="replicas"
        )
    return replicas, low, high


def check_options(config: KubeConfig) -> None:
    """Everything that needs no registry: quantities, names, replica counts, the folder."""
    quantity_value(config.cpu, "cpu")
    if config.memory is not None:
        quantity_value(config.memory, "memory")
    check_label(config.namespace, "namespace")
    if config.name is not None:
        check_label(config.name, "name", letter_first=True)
        if len(config.name) > _NAME_MAX:
            raise InvalidInputError(
                f"--name {config.name!r} is longer than {_NAME_MAX} characters "
                "(the ConfigMap and Secret add a suffix to it)",
                field="name",
            )
    for option, value in (("secret", config.secret), ("service-account", config.service_account)):
        if value is not None:
            check_label(value, option)
    if config.annotations and config.service_account is None:
        raise InvalidInputError(
            "--annotation goes on the ServiceAccount: name one with --service-account", field="annotation"
        )
    if config.shared_registry and not config.artifact_url:
        raise InvalidInputError(
            "--shared-registry needs --artifact-url (where the shared registry's artifacts live, "
            "e.g. s3://bucket/prefix)",
            field="artifact_url",
        )
    if config.target_in_flight < 1:
        raise InvalidInputError("--target-in-flight must be at least 1", field="target_in_flight")
    _replicas(config)
    check_out(
        config.out,
        config.force,
        what="the manifests",
        command="shipyard k8s",
        ours=holds("deployment.yaml", MARKER),
    )


def plan(registry: Registry, config: KubeConfig) -> KubeSpec:
    """The spec the files are rendered from: options checked, references resolved."""
    check_options(config)
    versions, _aliases = resolve_refs(registry, config.refs)
    replicas, low, high = _replicas(config)
    # The image pins every version; a shared registry serves the references as given (an alias
    # is followed as it moves), each once.
    served = (
        tuple(dict.fromkeys(config.refs)) if config.shared_registry else tuple(str(v.ref) for v in versions)
    )
    return KubeSpec(
        versions=tuple(versions),
        served=served,
        image=config.image,
        name=config.name or default_name(versions),
        namespace=config.namespace,
        shipyard_version=__version__,
        replicas=replicas,
        min_replicas=low,
        max_replicas=high,
        cpu=config.cpu,
        memory=config.memory,
        grace_period_s=registry.settings.serve.grace_period_s,
        target_in_flight=config.target_in_flight,
        secret=config.secret,
        shared_registry=config.shared_registry,
        artifact_url=config.artifact_url,
        service_account=config.service_account,
        annotations=config.annotations,
    )


def _header(spec: KubeSpec, what: str) -> str:
    return f"{MARKER} (Shipyard {spec.shipyard_version}) for {' '.join(spec.served)}: {what}\n"


def render_files(spec: KubeSpec, *, kserve: bool, helm: bool) -> dict[str, str]:
    """Every file's text by its path in the output folder."""
    manifests: dict[str, Mapping[str, Any]] = dict(render_manifests(spec))
    files = {path: _header(spec, str(doc["kind"])) + yaml_text.dump(doc) for path, doc in manifests.items()}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": list(manifests),
    }
    files["kustomization.yaml"] = _header(spec, "`kubectl apply -k .`") + yaml_text.dump(kustomization)
    if kserve:
        for path, doc in render_kserve(spec).items():
            files[path] = _header(spec, str(doc["kind"])) + yaml_text.dump(doc)
    if helm:
        for path, text in render_chart(spec, kserve=kserve).items():
            files[f"chart/{path}"] = text
    return files


def write_manifests(registry: Registry, config: KubeConfig) -> WrittenManifests:
    """Check, resolve, render, and write the whole folder to `config.out`."""
    spec = plan(registry, config)
    files = render_files(spec, kserve=config.kserve, helm=config.helm)
    out = config.out
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(parents=True)
    try:
        for path, text in files.items():
            target = staging / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        if out.exists():
            shutil.rmtree(out)  # checked above: empty, or written by `shipyard k8s` and --force
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return WrittenManifests(out, spec, tuple(files))

"""Pure render functions for the Helm chart: the same manifests as `kube` and `kserve` write,
as templates over a documented values.yaml whose defaults reproduce them exactly."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from importlib import resources
from importlib.resources.abc import Traversable
from string import Template
from typing import Any

from shipyard.deploy import contract, yaml_text
from shipyard.deploy.kserve import render_kserve
from shipyard.deploy.kube import (
    GRPC_PORT,
    HTTP_PORT,
    IN_FLIGHT_METRIC,
    PRESTOP_S,
    KubeSpec,
    config_data,
)

_SEMVER = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$")
_NAMESPACE = "__SHIPYARD_RELEASE_NAMESPACE__"  # stands for {{ .Release.Namespace }} while dumping
_IMAGE = "__SHIPYARD_IMAGE__"


class _Template(Template):
    delimiter = "%%"  # Helm's templates and values are full of `$` and `{{`


def _chart_files() -> Traversable:
    return resources.files("shipyard.deploy").joinpath("templates", "chart")


def _value(value: Any) -> str:
    return json.dumps(value)  # JSON is YAML: strings stay strings ("1", "true")


def _block(mapping: dict[str, str], indent: int) -> str:
    if not mapping:
        return " " * indent + "{}"
    return "".join(" " * indent + line + "\n" for line in yaml_text.dump(mapping).splitlines()).rstrip("\n")


def chart_version(version: str) -> str:
    """Helm wants SemVer 2: Shipyard's own version where it is one."""
    return version if _SEMVER.match(version) else "0.0.0"


def render_values(spec: KubeSpec, *, kserve: bool) -> str:
    config = {k: v for k, v in config_data(spec).items() if k != "SHIPYARD_SERVE__GRACE_PERIOD_S"}
    drain = spec.grace_period_s
    return _Template(_chart_files().joinpath("values.yaml.tmpl").read_text()).substitute(
        shipyard_version=spec.shipyard_version,
        name=_value(spec.name),
        image=_value(spec.image),
        command=_value(list(contract.PLATFORMS["generic"].entrypoint)),
        models=_value(list(spec.served)),
        digests=_value([f"{v.ref}={v.digest}" for v in spec.versions]),
        uid=contract.UID,
        http_port=HTTP_PORT,
        grpc_port=GRPC_PORT,
        replicas=spec.replicas,
        min_replicas=spec.min_replicas,
        max_replicas=spec.max_replicas,
        target_cpu=spec.target_cpu_percent,
        in_flight_metric=_value(IN_FLIGHT_METRIC),
        target_in_flight=spec.target_in_flight,
        cpu=_value(spec.cpu),
        memory=_value(spec.memory_quantity),
        drain=_value(int(drain) if drain == math.floor(drain) else drain),
        prestop=PRESTOP_S,
        startup_failures=spec.startup_failure_threshold,
        config=_block(config, 2),
        secret=_value(spec.secret_name),
        shared=_value(spec.shared_registry),
        service_account=_value(spec.service_account or ""),
        annotations=_value(dict(spec.annotations)),
        kserve=_value(kserve),
    )


def _kserve_template(manifest: dict[str, Any]) -> str:
    """A KServe manifest as a template: the namespace and image from the release and values,
    and KServe's own `{{.Name}}` placeholders kept as text rather than run by Helm."""
    text = yaml_text.dump(manifest)
    text = text.replace("{{", '{{ "{{" }}')
    for placeholder, action in (
        (_NAMESPACE, "{{ .Release.Namespace | quote }}"),
        (_IMAGE, "{{ .Values.image | quote }}"),
    ):
        text = text.replace(json.dumps(placeholder), action).replace(placeholder, action)
    return "{{- if .Values.kserve.enabled }}\n" + text + "{{- end }}\n"


def render_chart(spec: KubeSpec, *, kserve: bool) -> dict[str, str]:
    """Each file of the chart by its path inside the chart folder."""
    files = {
        "Chart.yaml": _Template(_chart_files().joinpath("Chart.yaml.tmpl").read_text()).substitute(
            shipyard_version=chart_version(spec.shipyard_version),
            chart_name=spec.name,
            description=_value(f"Shipyard serving {', '.join(spec.served)}"),
            app_version=_value(spec.shipyard_version),
        ),
        "values.yaml": render_values(spec, kserve=kserve),
    }
    templates = _chart_files().joinpath("templates")
    for entry in sorted(templates.iterdir(), key=lambda e: e.name):
        files[f"templates/{entry.name}"] = entry.read_text()
    placeholders = _placeholder_spec(spec)
    for path, manifest in render_kserve(placeholders).items():
        files[f"templates/{path.replace('/', '-')}"] = _kserve_template(dict(manifest))
    return files


def _placeholder_spec(spec: KubeSpec) -> KubeSpec:
    return replace(spec, namespace=_NAMESPACE, image=_IMAGE)

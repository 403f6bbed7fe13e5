"""Pure render functions for the build context: an `ImageSpec` in, each file's text out."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

from shipyard.deploy import contract
from shipyard.deploy.contract import Platform
from shipyard.deploy.requirements import TORCH_CPU_INDEX, Requirements
from shipyard.types import ModelVersion

# Run, in this order, from the folder holding SHA256SUMS and home/ (the context, or APP_DIR in
# the image), with SHIPYARD_HOME=home: the build fails if either fails.
VERIFY_STEPS = (
    ("sha256sum", "--strict", "--check", "--quiet", "SHA256SUMS"),
    ("shipyard", "verify"),
)
DEFAULT_BASE = "python:3.11-slim-bookworm"
PYPI_INDEX = "https://pypi.org/simple"


class _Template(Template):
    delimiter = "%%"  # Dockerfiles are full of `$`


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """Everything the generated files depend on."""

    versions: tuple[ModelVersion, ...]
    refs: tuple[str, ...]  # as the user gave them
    platform: Platform
    requirements: Requirements
    wheel: str  # the file name of Shipyard's wheel under wheels/
    shipyard_version: str
    base: str = DEFAULT_BASE
    gpu: bool = False
    tag: str | None = None

    @property
    def pinned(self) -> tuple[str, ...]:
        """The references the image serves: each version pinned (an image never moves)."""
        return tuple(str(v.ref) for v in self.versions)

    @property
    def torch_index(self) -> str:
        # --gpu: PyPI's torch, which carries its CUDA libraries; otherwise the CPU-only build.
        return PYPI_INDEX if self.gpu else TORCH_CPU_INDEX


def _template(name: str) -> _Template:
    return _Template(resources.files("shipyard.deploy").joinpath("templates", name).read_text())


def _verify_text() -> str:
    return " && ".join(shlex.join(step) for step in VERIFY_STEPS)


def _labels(spec: ImageSpec) -> str:
    labels = {
        "org.opencontainers.image.title": f"shipyard: {' '.join(spec.pinned)}",
        "org.opencontainers.image.description": f"Shipyard serving {', '.join(spec.pinned)}",
        "org.opencontainers.image.version": spec.shipyard_version,
        "org.opencontainers.image.base.name": spec.base,
        "io.shipyard.platform": spec.platform.name,
        "io.shipyard.models": " ".join(spec.pinned),
        "io.shipyard.digests": " ".join(f"{v.ref}={v.digest}" for v in spec.versions),
    }
    if spec.tag:
        labels["org.opencontainers.image.ref.name"] = spec.tag
    body = " \\\n      ".join(f"{key}={json.dumps(value)}" for key, value in labels.items())
    return f"LABEL {body}"


def _env(spec: ImageSpec) -> str:
    env = {
        **contract.REGISTRY_ENV,
        **contract.RUNTIME_ENV,
        contract.PLATFORM_ENV: spec.platform.name,
        contract.MODELS_ENV: " ".join(spec.pinned),
    }
    if "keras" in spec.requirements.formats or "keras-h5" in spec.requirements.formats:
        env["KERAS_BACKEND"] = "torch"
    if {"transformers", "transformers-onnx"} & set(spec.requirements.formats):
        env["HF_HUB_OFFLINE"] = "1"  # everything a model needs is in its artifact
    return " \\\n".join(f"    {key}={json.dumps(value)}" for key, value in env.items())


def _torch_install(spec: ImageSpec) -> str:
    if spec.requirements.torch is None:
        return ""
    return (
        f"ARG TORCH_INDEX_URL={spec.torch_index}\n"
        'RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" -r /tmp/requirements/torch.txt\n'
    )


def _command(spec: ImageSpec) -> tuple[list[str], list[str]]:
    entrypoint = list(spec.platform.entrypoint)
    cmd = list(spec.pinned) if spec.platform.serves_refs_as_args else []
    return entrypoint, cmd


def render_dockerfile(spec: ImageSpec) -> str:
    """The multi-stage Dockerfile."""
    entrypoint, cmd = _command(spec)
    return _template("Dockerfile.tmpl").substitute(
        shipyard_version=spec.shipyard_version,
        refs=", ".join(spec.refs),
        platform=spec.platform.name,
        base=spec.base,
        torch_install=_torch_install(spec),
        venv=contract.VENV_DIR,
        app=contract.APP_DIR,
        home=contract.HOME_DIR,
        wheel=spec.wheel,
        verify=_verify_text(),
        registry_env=" ".join(f"{key}={json.dumps(value)}" for key, value in contract.REGISTRY_ENV.items()),
        labels=_labels(spec),
        uid=contract.UID,
        user=contract.USER,
        env=_env(spec),
        port=spec.platform.port,
        entrypoint=json.dumps(entrypoint),
        cmd=f"CMD {json.dumps(cmd)}\n" if cmd else "",  # SageMaker appends its own `serve`
    )


def render_healthcheck(spec: ImageSpec) -> str:
    """healthcheck.py, the HEALTHCHECK's command: the platform's health route, on its port."""
    return _template("healthcheck.py.tmpl").substitute(
        port=spec.platform.port, route=spec.platform.health_route
    )


def render_dockerignore() -> str:
    return _template("dockerignore.tmpl").template


def render_checksums(files: list[tuple[str, str]]) -> str:
    """SHA256SUMS in `sha256sum`'s format: (path relative to the context, hex digest) pairs."""
    return "".join(f"{digest}  {path}\n" for path, digest in sorted(files))


def build_command(engine: str, tag: str | None, context: str = ".") -> list[str]:
    """The command that builds a context with `engine` (docker or podman, or a path to one)."""
    command = [engine, "build"]
    if Path(engine).name == "podman":
        # Rootless and nested podman cannot set up the OCI runtime's namespaces for RUN steps;
        # the OCI image format drops HEALTHCHECK, so the image is written in Docker's.
        command += ["--isolation=chroot", "--format=docker"]
    if tag:
        command += ["--tag", tag]
    return [*command, context]


def render_readme(spec: ImageSpec) -> str:
    """README.md of the context: what is in the image, how it starts, how to build it."""
    entrypoint, cmd = _command(spec)
    rows = "\n".join(f"| `{v.ref}` | {v.format} | `{v.digest}` |" for v in spec.versions)
    torch = spec.requirements.torch
    torch_note = (
        ""
        if torch is None
        else f" and torch (`torch.txt`, {'with CUDA' if spec.gpu else 'CPU-only'}, installed first)"
    )
    return _template("README.md.tmpl").substitute(
        refs=", ".join(spec.pinned),
        shipyard_version=spec.shipyard_version,
        platform=spec.platform.name,
        build_command=shlex.join(build_command("docker", spec.tag)),
        model_rows=rows,
        home=contract.HOME_DIR,
        verify=_verify_text(),
        torch_note=torch_note,
        wheel=spec.wheel,
        route=spec.platform.health_route,
        port=spec.platform.port,
        user=contract.USER,
        uid=contract.UID,
        entrypoint_text=shlex.join([*entrypoint, *cmd]),
        pinned=" ".join(spec.pinned),
        base=spec.base,
        torch_arg=""
        if torch is None
        else f"- `TORCH_INDEX_URL` (default `{spec.torch_index}`): where torch is installed from.\n",
    )

"""Run a container engine (Docker or Podman) over a written build context."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shipyard.deploy.dockerfile import build_command
from shipyard.errors import MissingToolError, ShipyardError

ENGINES = ("docker", "podman")
_PROBE_TIMEOUT_S = 15  # `docker version` asks the daemon


@dataclass(frozen=True, slots=True)
class Engine:
    name: str  # docker | podman
    path: str

    def build_command(self, context: Path, tag: str) -> list[str]:
        return build_command(self.path, tag, str(context))


def _docker_answers(path: str) -> bool:
    """Whether the Docker client reaches a daemon (a client alone cannot build)."""
    try:
        probe = subprocess.run(
            [path, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def find_engine(preferred: str | None = None, *, path: str | None = None) -> Engine:
    """The engine to use: `preferred`, else docker if its daemon answers, else podman (which
    needs no daemon), as found on PATH (`path`)."""
    if preferred is not None:
        found = shutil.which(preferred, path=path)
        if found:
            return Engine(preferred, found)
        raise MissingToolError(
            f"--build --engine {preferred}: no {preferred} was found on PATH; install it, or build "
            "the context yourself (its README says how)"
        )
    docker = shutil.which("docker", path=path)
    if docker and _docker_answers(docker):
        return Engine("docker", docker)
    podman = shutil.which("podman", path=path)
    if podman:
        return Engine("podman", podman)
    if docker:
        raise MissingToolError(
            f"--build needs a container engine: docker ({docker}) is on PATH but its daemon does not "
            "answer, and no podman was found; start Docker or install Podman"
        )
    raise MissingToolError(
        "--build needs a container engine, and no docker or podman was found on PATH; install "
        "Docker or Podman, or build the context yourself (its README says how)"
    )


def _run(command: list[str], what: str) -> None:
    """Run with the engine's output going to the terminal; a failure is one error line."""
    try:
        code = subprocess.run(command, check=False).returncode
    except OSError as exc:
        raise ShipyardError(f"{what} could not start ({exc.strerror or exc})") from exc
    if code != 0:
        raise ShipyardError(f"{what} failed (exit code {code}); its output is above")


def build_image(engine: Engine, context: Path, tag: str) -> None:
    _run(engine.build_command(context, tag), f"{engine.name} build")


def push_image(engine: Engine, tag: str, registry: str) -> str:
    """Tag the image for `registry` (host[:port][/namespace]) and push it; the pushed name."""
    target = f"{registry.rstrip('/')}/{tag}"
    _run([engine.path, "tag", tag, target], f"{engine.name} tag")
    _run([engine.path, "push", target], f"{engine.name} push")
    return target

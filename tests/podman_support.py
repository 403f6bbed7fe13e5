"""Podman for the tests that run the image `shipyard build` makes (scripts/k8s-podman-check.sh
builds it): the machine's default OCI runtime and limits are refused here, so a containers.conf
of our own selects runc and 1024 nofile/nproc, leaving the machine's configuration untouched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

IMAGE = os.environ.get("SHIPYARD_K8S_CHECK_IMAGE", "localhost/shipyard-check:latest")


def podman(
    *args: str, env: dict[str, str], check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, check=check, timeout=timeout
    )


def podman_environment(folder: Path) -> dict[str, str]:
    """The environment podman runs in, or a skip naming what is missing."""
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: scripts/k8s-podman-check.sh installs them")
    conf = folder / "containers.conf"
    limits = '["nofile=1024:1024", "nproc=1024:1024"]'
    conf.write_text(f'[containers]\ndefault_ulimits = {limits}\n\n[engine]\nruntime = "runc"\n')
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    if podman("image", "exists", IMAGE, env=env, check=False).returncode != 0:
        pytest.skip(
            f"image {IMAGE} not built: scripts/k8s-podman-check.sh builds it (scripts/build-image-check.sh)"
        )
    return env

"""A wheel of the Shipyard that is running, built from its source tree into a build context."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from shipyard.errors import ShipyardError

_SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE")


def source_tree() -> Path | None:
    """The folder Shipyard was installed from (an editable or local install), if known."""
    try:
        text = importlib.metadata.distribution("shipyard").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    url = json.loads(text).get("url", "")
    parts = urlsplit(url)
    if parts.scheme != "file":
        return None
    root = Path(unquote(parts.path))
    return root if (root / "pyproject.toml").is_file() and (root / "src" / "shipyard").is_dir() else None


def build_wheel(dest: Path) -> Path:
    """Build Shipyard's wheel into `dest` from a clean copy of its source (no stale build/)."""
    root = source_tree()
    if root is None:
        raise ShipyardError(
            "cannot find Shipyard's source tree to build its wheel (it was installed from a wheel); "
            "pass the wheel with --wheel FILE"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shipyard-wheel-") as tmp:
        copy = Path(tmp) / "src-tree"
        copy.mkdir()
        for name in _SOURCE_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, copy / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
        shutil.copytree(root / "src", copy / "src", ignore=ignore)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dest), str(copy)]
        if importlib.util.find_spec("setuptools") is not None:
            command.insert(-1, "--no-build-isolation")  # offline when the backend is already here
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("shipyard-*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ShipyardError(f"building Shipyard's wheel failed ({detail}); pass one with --wheel FILE")
    return wheels[-1]

"""The git commit of the code that pushes a model (recorded for lineage)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False)


def current_commit(cwd: Path) -> tuple[str | None, bool]:
    """(commit, dirty) of the checkout containing `cwd`, or (None, False) outside one."""
    try:
        commit = _git(cwd, "rev-parse", "HEAD")
        if commit.returncode != 0:
            return None, False
        status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # git not installed, or hung
        return None, False
    return commit.stdout.strip() or None, bool(status.stdout.strip())

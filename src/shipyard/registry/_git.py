"""The git commit of the code that pushes a model (recorded for lineage)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def current_commit(cwd: Path) -> tuple[str | None, bool]:
    """(commit, dirty) of the checkout containing `cwd`, or (None, False) outside one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None, False
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # git not installed, or hung
        return None, False
    return commit.stdout.strip() or None, bool(status.stdout.strip())

"""The folder a deploy command writes (`build`, `k8s`, `deploy --dry-run`): new or empty, or with
--force one that the same command wrote before; never anything else of the user's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shipyard.errors import ConflictError, InvalidInputError


def check_out(out: Path, force: bool, *, what: str, command: str, ours: Callable[[Path], bool]) -> None:
    """Refuse `out` unless it is new, empty, or (with `force`) a folder `ours` recognises."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"--out {out} is a file; give a folder for {what}", field="out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise ConflictError(
            f"--out {out} exists and is not empty; choose another folder, or pass --force to replace it",
            field="out",
        )
    if not ours(out):
        raise ConflictError(
            f"--out {out} is not {what} written by `{command}`, so --force does not replace it; "
            "remove it yourself or choose another folder",
            field="out",
        )


def holds(name: str, marker: str) -> Callable[[Path], bool]:
    """A folder is ours when its file `name` holds `marker` (a comment the command writes)."""

    def ours(out: Path) -> bool:
        path = out / name
        return path.is_file() and marker in path.read_text(errors="replace")

    return ours

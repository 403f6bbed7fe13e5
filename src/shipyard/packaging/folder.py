"""Checks of a pushed folder before any byte of it is read or copied: only regular files and
folders inside it, no links (one could pull a file from outside into the immutable artifact, or
point at an endless device such as /dev/zero)."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from shipyard.errors import InvalidInputError


def refuse_links(folder: Path) -> None:
    """Raise InvalidInputError if `folder` holds a symbolic link or anything but files and folders."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in sorted(dirnames + filenames):
            entry = Path(dirpath, name)
            relative = entry.relative_to(folder).as_posix()
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise InvalidInputError(
                    f"{folder} contains a symbolic link {relative!r}; Shipyard stores only regular "
                    "files, since a link can reach outside the folder: replace the link with a "
                    "copy of its file (cp -L) and push again",
                    field="path",
                )
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise InvalidInputError(
                    f"{folder} contains {relative!r}, which is not a regular file (a device, "
                    "socket or pipe); remove it and push again",
                    field="path",
                )


def inside(folder: Path, relative: object, what: str) -> Path:
    """`folder / relative` for a relative path that stays inside `folder`, else a clear error."""
    if not isinstance(relative, str):
        raise InvalidInputError(f"{what} must be a relative path, got {relative!r}", field="path")
    parts = PurePosixPath(relative.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or Path(relative).is_absolute():
        raise InvalidInputError(
            f"{what} {relative!r} points outside the model folder; use a path inside the folder "
            "(no '..', not absolute) and push again",
            field="path",
        )
    return folder / relative

"""Checks made before a pushed file is read: a file's own size, and for a zip archive what its
directory declares (sizes, so a bomb is refused before one entry is inflated; names and links, so
no entry can land outside wherever the archive is unpacked)."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from shipyard.errors import InvalidInputError, PayloadTooLargeError
from shipyard.settings import PushSettings

# Below this many uncompressed bytes the ratio is not checked: small archives of zeros (an
# untrained model's weights) compress very well and cost nothing to inflate.
_RATIO_FLOOR = 64 << 20


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def check_file_size(path: Path, limits: PushSettings, what: str = "model file") -> None:
    """Refuse a file larger than the per-file limit (JSON files have their own, lower one)."""
    size = path.stat().st_size
    json_file = path.suffix == ".json"
    limit = limits.max_json_bytes if json_file else limits.max_file_bytes
    setting = "SHIPYARD_PUSH__MAX_JSON_BYTES" if json_file else "SHIPYARD_PUSH__MAX_FILE_BYTES"
    if size > limit:
        raise PayloadTooLargeError(
            f"{what} {path.name} is {_mib(size)}, over the limit of {_mib(limit)}; raise {setting} "
            "if the file is genuine",
            field="path",
        )


def check_archive(path: Path, limits: PushSettings) -> None:
    """Refuse a zip whose entries would inflate past the size limit or by a suspicious ratio."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    for info in infos:
        _check_entry(path, info)
    total = sum(i.file_size for i in infos)
    packed = max(1, sum(i.compress_size for i in infos))
    if total > limits.max_uncompressed_bytes:
        raise PayloadTooLargeError(
            f"{path.name} would inflate to {_mib(total)}, over the limit of "
            f"{_mib(limits.max_uncompressed_bytes)}; raise SHIPYARD_PUSH__MAX_UNCOMPRESSED_BYTES if "
            "the archive is genuine",
            field="path",
        )
    if total > _RATIO_FLOOR and total / packed > limits.max_compression_ratio:
        raise PayloadTooLargeError(
            f"{path.name} would inflate {total / packed:,.0f} times ({_mib(packed)} to {_mib(total)}), "
            f"over the limit of {limits.max_compression_ratio:g}; an archive bomb? Raise "
            "SHIPYARD_PUSH__MAX_COMPRESSION_RATIO if the archive is genuine",
            field="path",
        )


def _check_entry(path: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename.replace("\\", "/")
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts or name[1:3] == ":/":
        raise InvalidInputError(
            f"{path.name} holds an entry {info.filename[:80]!r} that points outside the archive "
            "(absolute or with '..'): a crafted archive",
            field="path",
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise InvalidInputError(
            f"{path.name} holds a symbolic link {info.filename[:80]!r}; model archives hold only "
            "files: a crafted archive",
            field="path",
        )


def check_folder_sizes(folder: Path, limits: PushSettings) -> None:
    """Every file of a pushed folder within its limit."""
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            check_file_size(file, limits, "file")

"""Size limits checked before a pushed file is read: a file's own size, and for a zip archive
the sizes its directory declares (so a bomb is refused before one entry is inflated)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from shipyard.errors import PayloadTooLargeError
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


def check_folder_sizes(folder: Path, limits: PushSettings) -> None:
    """Every file of a pushed folder within its limit."""
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            check_file_size(file, limits, "file")

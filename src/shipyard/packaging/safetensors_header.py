"""A safetensors file's header checked at push, in Python: an 8-byte length, a JSON table of
tensors, and data offsets that must tile the rest of the file exactly (in range, no overlaps, each
as long as its dtype and shape say)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError, PayloadTooLargeError

_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_MAX_HEADER = 100 << 20  # what the safetensors library itself accepts


def _bad(path: Path, why: str) -> InvalidInputError:
    return InvalidInputError(
        f"{path.name} is not a valid safetensors file: {why}; save it again with "
        "save_pretrained(safe_serialization=True)",
        field="path",
    )


def _header(path: Path, size: int) -> dict[str, Any]:
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise _bad(path, f"{size} bytes, shorter than the 8-byte header length")
        length = int.from_bytes(prefix, "little")
        if length > _MAX_HEADER:
            raise PayloadTooLargeError(
                f"{path.name} declares a {length:,}-byte safetensors header, over the "
                f"{_MAX_HEADER:,} bytes any real file needs: a damaged or crafted file",
                field="path",
            )
        if 8 + length > size:
            raise _bad(path, f"its header length ({length:,} bytes) runs past the end of the file")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(path, f"its header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    return header


def check_safetensors(path: Path) -> None:
    """Raise InvalidInputError unless `path` is a consistent safetensors file."""
    size = path.stat().st_size
    header = _header(path, size)
    with open(path, "rb") as fh:
        available = size - 8 - int.from_bytes(fh.read(8), "little")
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                raise _bad(path, "__metadata__ is not an object")
            continue
        if not isinstance(entry, dict):
            raise _bad(path, f"tensor {name!r} is not described by an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _ITEMSIZE:
            raise _bad(path, f"tensor {name!r} has unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _bad(path, f"tensor {name!r} has an invalid shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= available
        ):
            raise _bad(path, f"tensor {name!r} has data offsets outside the file's {available:,} data bytes")
        if offsets[1] - offsets[0] != math.prod(shape) * _ITEMSIZE[dtype]:
            held = offsets[1] - offsets[0]
            raise _bad(path, f"tensor {name!r} holds {held:,} bytes, not what {dtype} {shape} needs")
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            what = "overlaps another" if begin < position else "leaves a gap before it"
            raise _bad(path, f"tensor {name!r} {what}")
        position = end
    if position != available:
        raise _bad(path, f"its tensors cover {position:,} of {available:,} data bytes")


def parameter_count(path: Path) -> int:
    """The number of values the tensors of a (checked) safetensors file hold."""
    header = _header(path, path.stat().st_size)
    return sum(
        math.prod(e["shape"]) for n, e in header.items() if n != "__metadata__" and isinstance(e, dict)
    )

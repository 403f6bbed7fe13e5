"""Detect an artifact's format from its bytes, never from its file name."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.packaging.folder import refuse_links
from shipyard.runtimes.base import one_line

_PICKLE_PROTOCOLS = range(2, 6)
_KNOWN = (
    "ONNX, skops, Keras (.keras/.h5), TFLite, GGUF, a Hugging Face folder, a TensorFlow SavedModel "
    "folder, or pickle, joblib and torch.save files (with --trust)"
)


@dataclass(frozen=True, slots=True)
class Detected:
    """A model file and its format; an ONNX file comes parsed, so packaging reads it once."""

    format: str
    file: Path
    onnx_model: Any = None  # the file's onnx.ModelProto (external data not loaded)


def _is_pickle(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS


def _decompressed_head(path: Path, head: bytes) -> bytes | None:
    """The first bytes of a compressed joblib file, or None if it is not compressed."""
    try:
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path) as fh:
                return fh.read(64)
        if head[:3] == b"BZh":
            with bz2.open(path) as fh:
                return fh.read(64)
        if head[:6] == b"\xfd7zXZ\x00" or head[:3] == b"\x5d\x00\x00":
            with lzma.open(path) as fh:
                return fh.read(64)
        if head[:1] == b"\x78" and head[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
            return zlib.decompressobj().decompress(head + path.read_bytes()[len(head) : 4096])
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        return None
    return None


def _zip_format(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile as exc:
        raise InvalidInputError(f"{path} is a damaged zip archive: {one_line(exc)}", field="path") from exc
    if "schema.json" in names:
        return "skops"
    if any(n.endswith("data.pkl") for n in names):
        return "torch-checkpoint"
    if "config.json" in names and "model.weights.h5" in names:
        return "keras"
    raise InvalidInputError(
        f"{path} is a zip archive but not a model format Shipyard knows ({_KNOWN})", field="path"
    )


def _parse_onnx(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(
            f"{path} looks like an ONNX file but cannot be parsed (truncated or damaged?): {one_line(exc)}",
            field="path",
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise InvalidInputError(f"{path} is not a model Shipyard recognises ({_KNOWN})")
    return model


def detect_file(path: Path) -> Detected:
    """`path` with its format: 'onnx', 'skops', 'pickle', 'joblib', 'torch-checkpoint', 'keras',
    'keras-h5', 'tflite', 'gguf' or 'safetensors'."""
    size = path.stat().st_size
    if size == 0:
        raise InvalidInputError(f"{path} is empty (0 bytes): not a model", field="path")
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"PK\x03\x04"):
        return Detected(_zip_format(path), path)
    if _is_pickle(head):
        fmt = "joblib" if b"joblib" in path.read_bytes()[: 1 << 16] else "pickle"
        return Detected(fmt, path)
    inner = _decompressed_head(path, head)
    if inner is not None and _is_pickle(inner):
        return Detected("joblib", path)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return Detected("keras-h5", path)
    if head[:4] == b"GGUF":
        return Detected("gguf", path)
    if head[4:8] == b"TFL3":
        return Detected("tflite", path)
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return Detected("safetensors", path)
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version) as a varint: how ONNX files start
        return Detected("onnx", path, _parse_onnx(path))
    raise InvalidInputError(
        f"{path} is not a model file Shipyard recognises (expected {_KNOWN})", field="path"
    )


def detect_format(path: Path) -> Detected:
    """The format of a file or folder, and the model file inside a folder."""
    if not path.exists():
        raise InvalidInputError(f"path {str(path)!r} does not exist", field="path")
    if path.is_file():
        return detect_file(path)
    if not path.is_dir():
        raise InvalidInputError(f"{path} is neither a file nor a folder", field="path")
    refuse_links(path)
    files = [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise InvalidInputError(f"folder {path} is empty: no model file inside", field="path")
    if len(files) == 1:
        return detect_file(files[0])
    listing = ", ".join(sorted(p.relative_to(path).as_posix() for p in files)[:6])
    raise InvalidInputError(
        f"folder {path} holds {len(files)} files ({listing}{', …' if len(files) > 6 else ''}) "
        f"and is not a model layout Shipyard knows; push the model file itself ({_KNOWN})",
        field="path",
    )

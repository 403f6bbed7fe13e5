"""Read a GGUF file's header: its key-value metadata and tensor table, in plain Python.

Push uses it to describe the model and to refuse a truncated file before llama.cpp sees it; the
engine uses it for what llama.cpp's API does not say (the quantization name). Only the header is
read; the tensor data (most of the file) is never touched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from shipyard.errors import InvalidInputError
from shipyard.runtimes.generation import GenerativeInfo

MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_STRING = 1 << 28  # a chat template or vocabulary entry is never near this; a damaged length is
_MAX_ITEMS = 1 << 28

# Scalar value types of GGUF metadata: type id -> struct format.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# ggml tensor types: id -> (elements per block, bytes per block), for the file-size check. Types not
# listed are still accepted; only their extent is not checked.
_TENSOR_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
    15: (256, 292), 20: (32, 18), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8),
    28: (1, 8), 30: (1, 2),
}  # fmt: skip

# llama.cpp's `general.file_type` (enum llama_ftype): how the weights are quantized.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]
    type: int
    offset: int  # from the start of the data section

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def nbytes(self) -> int | None:
        block = _TENSOR_BLOCKS.get(self.type)
        if block is None:
            return None
        per, size = block
        return (self.elements + per - 1) // per * size


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # arrays other than the token texts are left out (their length is kept)
    tensors: tuple[GGUFTensor, ...]
    data_offset: int  # where tensor data starts in the file
    array_lengths: dict[str, int]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str) -> Any:
        """`{architecture}.{key}`, e.g. context_length."""
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def parameters(self) -> int:
        return sum(t.elements for t in self.tensors)

    @property
    def quantization(self) -> str | None:
        file_type = self.metadata.get("general.file_type")
        if file_type is None:
            return None
        return FILE_TYPES.get(int(file_type), f"type {file_type}")

    def token(self, key: str) -> str | None:
        """The text of a special token named by `tokenizer.ggml.{key}_token_id`."""
        token_id = self.metadata.get(f"tokenizer.ggml.{key}_token_id")
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if token_id is None or not isinstance(tokens, list) or not 0 <= int(token_id) < len(tokens):
            return None
        return str(tokens[int(token_id)])


@dataclass(frozen=True, slots=True)
class _Skipped:
    count: int


class _Reader:
    def __init__(self, fh: BinaryIO, label: str) -> None:
        self._fh = fh
        self._label = label

    def take(self, n: int) -> bytes:
        data = self._fh.read(n)
        if len(data) != n:
            raise InvalidInputError(
                f"{self._label} is a truncated GGUF file: its header ends early", field="path"
            )
        return data

    def scalar(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.take(size))[0]

    def string(self) -> str:
        length = self.scalar("Q")
        if length > _MAX_STRING:
            raise InvalidInputError(f"{self._label} has a damaged GGUF header (a string of {length} bytes)")
        return self.take(length).decode("utf-8", errors="replace")

    def value(self, kind: int, *, keep_array: bool) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.scalar("I"), self.scalar("Q")
            if count > _MAX_ITEMS:
                raise InvalidInputError(f"{self._label} has a damaged GGUF header (an array of {count})")
            if not keep_array:
                if item_kind in _SCALARS:
                    self.take(count * struct.calcsize("<" + _SCALARS[item_kind]))
                else:
                    for _ in range(count):
                        self.value(item_kind, keep_array=False)
                return _Skipped(count)
            return [self.value(item_kind, keep_array=True) for _ in range(count)]
        raise InvalidInputError(f"{self._label} has a damaged GGUF header (value type {kind})", field="path")


def is_gguf(head: bytes) -> bool:
    return head[:4] == MAGIC


def read_header(path: Path, label: str | None = None) -> GGUFHeader:
    """The header of the GGUF file at `path`; InvalidInputError when it is damaged or truncated
    (a file shorter than its own tensor table says is refused here, not at serving time)."""
    label = label or path.name
    size = path.stat().st_size
    with open(path, "rb") as fh:
        reader = _Reader(fh, label)
        if reader.take(4) != MAGIC:
            raise InvalidInputError(f"{label} is not a GGUF file", field="path")
        version = reader.scalar("I")
        if version not in (2, 3):
            raise InvalidInputError(
                f"{label} is GGUF version {version}; llama.cpp reads versions 2 and 3", field="path"
            )
        n_tensors, n_kv = reader.scalar("Q"), reader.scalar("Q")
        if n_tensors > _MAX_ITEMS or n_kv > _MAX_ITEMS:
            raise InvalidInputError(f"{label} has a damaged GGUF header", field="path")
        metadata: dict[str, Any] = {}
        lengths: dict[str, int] = {}
        for _ in range(n_kv):
            key = reader.string()
            kind = reader.scalar("I")
            # Token texts are kept (BOS/EOS are looked up in them); scores, types and merges are skipped.
            value = reader.value(kind, keep_array=key == "tokenizer.ggml.tokens")
            if isinstance(value, _Skipped):
                lengths[key] = value.count
                continue
            if isinstance(value, list):
                lengths[key] = len(value)
            metadata[key] = value
        tensors = []
        for _ in range(n_tensors):
            name = reader.string()
            dims = reader.scalar("I")
            if dims > 8:
                raise InvalidInputError(f"{label} has a damaged GGUF tensor table ({name!r})", field="path")
            shape = tuple(reader.scalar("Q") for _ in range(dims))
            tensors.append(GGUFTensor(name, shape, reader.scalar("I"), reader.scalar("Q")))
        alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT)) or _DEFAULT_ALIGNMENT
        position = fh.tell()
    data_offset = (position + alignment - 1) // alignment * alignment
    end = position
    for tensor in tensors:
        nbytes = tensor.nbytes() or 0
        end = max(end, data_offset + tensor.offset + nbytes)
    if end > size:
        raise InvalidInputError(
            f"{label} is a truncated GGUF file: its tensors need {end} bytes but it has {size}",
            field="path",
        )
    return GGUFHeader(version, metadata, tuple(tensors), data_offset, lengths)


def generative_info(header: GGUFHeader) -> GenerativeInfo:
    """What the registry records and the server reports about a GGUF model."""
    meta = header.metadata
    template = meta.get("tokenizer.chat_template")
    extra = {
        "name": meta.get("general.name"),
        "size_label": meta.get("general.size_label"),
        "layers": header.arch_value("block_count"),
        "embedding_length": header.arch_value("embedding_length"),
        "vocab_size": header.array_lengths.get("tokenizer.ggml.tokens"),
        "gguf_version": header.version,
    }
    return GenerativeInfo(
        architecture=header.architecture,
        parameters=header.parameters,
        context_length=int(header.arch_value("context_length") or 0),
        quantization=header.quantization,
        chat_template=str(template) if template else None,
        tokenizer=str(meta.get("tokenizer.ggml.model", "")),
        bos_token=header.token("bos"),
        eos_token=header.token("eos"),
        extra={k: v for k, v in extra.items() if v is not None},
    )

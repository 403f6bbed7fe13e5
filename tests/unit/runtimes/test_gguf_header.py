"""The GGUF header reader on files written here: metadata, the tensor table, the size check."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from shipyard.errors import InvalidInputError
from shipyard.packaging.formats import detect_file
from shipyard.runtimes.gguf_header import generative_info, read_header


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(path: Path, *, data_bytes: int | None = None) -> None:
    """A small GGUF v3: typed metadata, a token list, and one F32 tensor of 4 x 8 values."""
    kv = [
        _string("general.architecture") + struct.pack("<I", 8) + _string("llama"),
        _string("general.file_type") + struct.pack("<II", 4, 3),
        _string("llama.context_length") + struct.pack("<II", 4, 4096),
        _string("tokenizer.ggml.model") + struct.pack("<I", 8) + _string("gpt2"),
        _string("tokenizer.ggml.tokens")
        + struct.pack("<IIQ", 9, 8, 3)
        + b"".join(_string(t) for t in ("<unk>", "<s>", "</s>")),
        _string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 3) + struct.pack("<3f", 0, 0, 0),
        _string("tokenizer.ggml.bos_token_id") + struct.pack("<II", 4, 1),
        _string("tokenizer.ggml.eos_token_id") + struct.pack("<II", 4, 2),
        _string("tokenizer.chat_template") + struct.pack("<I", 8) + _string("{{ messages }}"),
    ]
    tensor = (
        _string("token_embd.weight")
        + struct.pack("<I", 2)
        + struct.pack("<QQ", 8, 4)
        + struct.pack("<IQ", 0, 0)
    )
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kv)) + b"".join(kv) + tensor
    header += b"\0" * (-len(header) % 32)
    path.write_bytes(header + b"\0" * (4 * 8 * 4 if data_bytes is None else data_bytes))


def test_header_is_read_and_described(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"  # the name says nothing: the content does
    write_gguf(path)
    assert detect_file(path).format == "gguf"
    header = read_header(path)
    assert header.version == 3 and header.parameters == 32
    assert header.array_lengths["tokenizer.ggml.scores"] == 3
    info = generative_info(header)
    assert (info.architecture, info.quantization, info.context_length) == ("llama", "Q4_1", 4096)
    assert (info.bos_token, info.eos_token, info.tokenizer) == ("<s>", "</s>", "gpt2")
    assert info.chat_template == "{{ messages }}"


def test_a_file_shorter_than_its_tensors_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    write_gguf(path, data_bytes=100)
    with pytest.raises(
        InvalidInputError, match=r"truncated GGUF file: its tensors need \d+ bytes but it has"
    ):
        read_header(path)


@pytest.mark.parametrize("keep", [6, 30, 200])
def test_a_header_cut_short_is_truncated(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "cut.gguf"
    write_gguf(path)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(InvalidInputError, match="truncated GGUF file"):
        read_header(path)

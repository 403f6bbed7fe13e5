"""Pushing GGUF files: detected by content, described from the header, refused when truncated or
of an architecture llama.cpp cannot run; and the CLI journey push → show → predict."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from shipyard.errors import InvalidInputError
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.types import ModelVersion

SHIPYARD = Path(sys.executable).parent / "shipyard"


def gguf_bytes(metadata: dict[str, str]) -> bytes:
    """A GGUF v3 file with string metadata and no tensors."""

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    body = b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata))
    for key, value in metadata.items():
        body += string(key) + struct.pack("<I", 8) + string(value)
    return body


def test_push_records_what_the_header_says(smol_version: ModelVersion) -> None:
    assert smol_version.format == "gguf"
    assert smol_version.framework == "llama.cpp"
    assert "llama-cpp-python" in smol_version.library_versions
    info = smol_version.extra["generative"]
    assert info["architecture"] == "llama"
    assert info["quantization"] == "Q4_1"
    assert info["context_length"] == 8192
    assert 130e6 < info["parameters"] < 140e6  # SmolLM2-135M
    assert info["tokenizer"] == "gpt2"
    assert (info["bos_token"], info["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert info["chat_template"].startswith("{% for message in messages %}")
    assert [s.name for s in smol_version.signature.inputs] == ["text_input"]


@pytest.mark.parametrize("keep", [1 << 20, 4 << 20], ids=["in-header", "in-tensors"])
def test_a_truncated_gguf_is_refused_and_the_registry_unchanged(
    tmp_path: Path, smollm2: Path, keep: int
) -> None:
    truncated = tmp_path / "cut.gguf"
    with open(smollm2, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(keep))
    with Registry(settings=Settings.load(home=tmp_path / "home")) as registry:
        with pytest.raises(InvalidInputError, match=r"cut\.gguf is a truncated GGUF file"):
            registry.push("cut", truncated)
        assert registry.list_models() == []


def test_an_architecture_llama_cpp_cannot_run_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "odd.gguf"
    model.write_bytes(gguf_bytes({"general.architecture": "frobnicator", "tokenizer.ggml.model": "gpt2"}))
    with Registry(settings=Settings.load(home=tmp_path / "home")) as registry:
        with pytest.raises(InvalidInputError, match=r"cannot load odd\.gguf: .*frobnicator"):
            registry.push("odd", model)
        assert registry.list_models() == []


def _cli(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env |= {"SHIPYARD_HOME": str(home), "SHIPYARD_GENERATION__THREADS": "1", "COLUMNS": "200"}
    env["SHIPYARD_GENERATION__CONTEXT_PER_SLOT"] = "256"
    return subprocess.run(
        [str(SHIPYARD), *map(str, args)], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_cli_push_show_and_predict(tmp_path: Path, smollm2: Path) -> None:
    model = tmp_path / "smollm2.gguf"  # any name: the format comes from the content
    shutil.copyfile(smollm2, model)
    home = tmp_path / "home"
    pushed = _cli(home, "push", "smol", model)
    assert pushed.returncode == 0, pushed.stderr
    shown = _cli(home, "show", "smol")
    assert shown.returncode == 0, shown.stderr
    for fragment in ("gguf (llama.cpp)", "architecture llama", "quantization Q4_1", "chat template: yes"):
        assert fragment in shown.stdout
    prompt = "The capital of France is"
    first = _cli(home, "predict", "smol", "--prompt", prompt, "--max-tokens", "6")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()
    again = _cli(home, "predict", "smol", "--prompt", prompt, "--max-tokens", "6")
    assert again.stdout == first.stdout  # temperature 0 by default: greedy, the same text

    wrong = _cli(home, "predict", "smol", "--input", '{"inputs": [[1.0]]}')
    assert wrong.returncode != 0 and "generative model: pass --prompt" in wrong.stderr

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model.read_bytes()[: 1 << 20])
    refused = _cli(home, "push", "cut", cut)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "truncated GGUF" in refused.stderr

"""The real SmolLM2-135M-Instruct on the transformers engine: a Hugging Face copy derived from the
GGUF with transformers' own GGUF loader (weights dequantized), saved as a folder, pushed as any
causal-LM folder is and served by a real `shipyard serve`; through the official `openai` client a
greedy chat answer makes sense and its stream equals it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from servers import Server, running
from shipyard.registry import Registry
from shipyard.settings import Settings

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")  # transformers reads GGUF files with it

pytestmark = pytest.mark.slow  # dequantizing and saving the model: tens of seconds

ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "SHIPYARD_GENERATION__THREADS": "1"}
ASK: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


def hf_copy(gguf_file: Path, folder: Path) -> Path:
    """SmolLM2 as a Hugging Face folder (safetensors, config, tokenizer with the GGUF's chat
    template), converted by transformers from the GGUF (most of this test's time)."""
    import torch

    transformers: Any = importlib.import_module("transformers")  # untyped: used as Any
    where, name = str(gguf_file.parent), gguf_file.name
    # transformers 5 can keep GGUF weights packed, which cannot be saved: ask for plain tensors
    # (older releases always dequantize and have no GgufConfig).
    unpack = {"quantization_config": transformers.GgufConfig(dequantize=True)}
    options = unpack if hasattr(transformers, "GgufConfig") else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(
        where, gguf_file=name, dtype=torch.bfloat16, **options
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
    assert isinstance(tokenizer.chat_template, str)  # the GGUF's, carried over by transformers
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("smollm2-hf-home")
    folder = hf_copy(smollm2, tmp_path_factory.mktemp("smollm2-hf"))
    with Registry(settings=Settings.load(home=home)) as registry:
        version = registry.push("smol-hf", folder)
    assert version.format == "transformers-lm"
    with running(
        home, ["smol-hf"], tmp_path_factory.mktemp("smollm2-hf-log"), env=ENV, ready_timeout=120
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def test_a_greedy_chat_answer_makes_sense_and_streams_the_same(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model="smol-hf", messages=ASK, temperature=0, max_tokens=12)
    content = whole.choices[0].message.content
    assert content and "Paris" in content
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 12
    stream = oai.chat.completions.create(
        model="smol-hf", messages=ASK, temperature=0, max_tokens=12, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == [whole.choices[0].finish_reason]

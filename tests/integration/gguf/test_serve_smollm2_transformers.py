"""The real SmolLM2-135M-Instruct on the transformers engine: a Hugging Face copy derived from the
GGUF with transformers' own GGUF loader (weights dequantized), saved as a folder, pushed as any
causal-LM folder is and served by a real `shipyard serve`; through the official `openai` client a
greedy chat answer makes sense and its stream equals it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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
    """SmolLM2 as a Hugging Face folder, converted in a process of its own (hf_from_gguf.py says
    why; most of this test's time)."""
    script = Path(__file__).with_name("hf_from_gguf.py")
    subprocess.run(
        [sys.executable, str(script), str(gguf_file), str(folder)], check=True, env={**os.environ, **ENV}
    )
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

"""The real chat model SmolLM2-135M-Instruct (GGUF, llama.cpp) served by a real `shipyard serve`,
through the official `openai` client: a chat completion, a streamed one equal to it for greedy
decoding, stop sequences, `n` with a seed, logprobs, a JSON schema answer that validates, 16
concurrent streams that all finish, and a client that leaves mid-stream freeing its slot."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema_rs
import openai
import pytest

from prometheus_text import metric_sum
from servers import Server, running
from shipyard.registry import Registry
from shipyard.settings import Settings

pytest.importorskip("llama_cpp")

# One engine thread: two on shared cores spin and collapse throughput. 16 slots for 16 streams.
ENV = {
    "SHIPYARD_GENERATION__THREADS": "1",
    "SHIPYARD_GENERATION__SLOTS": "16",
    "SHIPYARD_GENERATION__CONTEXT_PER_SLOT": "512",
}
ASK: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Name three colours of the rainbow."}
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("gguf-serve-home")
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("smol", smollm2)
    with running(
        home, ["smol"], tmp_path_factory.mktemp("gguf-serve-log"), env=ENV, ready_timeout=120
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def greedy(oai: openai.OpenAI) -> str:
    answer = oai.chat.completions.create(model="smol", messages=ASK, temperature=0, max_tokens=24)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 24
    content = answer.choices[0].message.content
    assert content
    return content


def test_a_streamed_chat_equals_the_whole_answer(oai: openai.OpenAI, greedy: str) -> None:
    stream = oai.chat.completions.create(
        model="smol", messages=ASK, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == greedy
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_a_stop_sequence_ends_the_answer_before_it(oai: openai.OpenAI, greedy: str) -> None:
    words = greedy.split()
    assert len(words) >= 3, greedy
    stop = words[2]  # a word the greedy answer reaches: it must end just before it
    answer = oai.chat.completions.create(
        model="smol", messages=ASK, temperature=0, max_tokens=24, stop=[stop]
    )
    text = answer.choices[0].message.content or ""
    assert answer.choices[0].finish_reason == "stop"
    assert stop not in text and greedy.startswith(text)


def test_n_choices_with_a_seed_are_reproducible_and_logprobs_are_sane(oai: openai.OpenAI) -> None:
    def sample() -> list[str]:
        answer = oai.chat.completions.create(
            model="smol", messages=ASK, max_tokens=12, n=2, seed=7, temperature=0.9,
            logprobs=True, top_logprobs=2,
        )  # fmt: skip
        assert [c.index for c in answer.choices] == [0, 1]
        for choice in answer.choices:
            assert choice.logprobs is not None and choice.logprobs.content
            for token in choice.logprobs.content:
                assert token.logprob <= 0
                tops = [t.logprob for t in token.top_logprobs]
                assert len(tops) == 2 and tops == sorted(tops, reverse=True)
        return [c.message.content or "" for c in answer.choices]

    first = sample()
    assert sample() == first


def test_a_json_schema_answer_validates(oai: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["colour", "count"],
        "additionalProperties": False,
    }
    answer = oai.chat.completions.create(
        model="smol",
        messages=[{"role": "user", "content": "Give a colour and a count as JSON."}],
        temperature=0,
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert answer.choices[0].finish_reason == "stop"
    jsonschema_rs.validate(schema, json.loads(answer.choices[0].message.content or ""))


def test_sixteen_concurrent_streams_all_finish(oai: openai.OpenAI, greedy: str) -> None:
    def stream() -> tuple[str, str | None]:
        chunks = list(
            oai.chat.completions.create(model="smol", messages=ASK, temperature=0, max_tokens=24, stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, next(c.choices[0].finish_reason for c in reversed(chunks) if c.choices)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: stream(), range(16)))
    assert all(reason in ("stop", "length") for _, reason in results)
    assert [text for text, _ in results] == [greedy] * 16  # batched decoding equals decoding alone


def test_a_client_that_leaves_mid_stream_frees_its_slot(server: Server) -> None:
    body = {"model": "smol", "messages": ASK, "max_tokens": 400, "stream": True, "temperature": 0.8}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    break  # tokens are flowing: leave now, closing the connection
        deadline = time.monotonic() + 30
        running_now = None
        while time.monotonic() < deadline:
            running_now = metric_sum(client.get("/metrics").text, "shipyard_llm_requests_running")
            if running_now == 0:
                break
            time.sleep(0.05)  # the scheduler frees the slot at its next step; /metrics has no event
        assert running_now == 0

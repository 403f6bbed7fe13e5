"""A tiny random causal LM served by a real `shipyard serve`, through the official `openai` client:
chat completions whole and streamed, text completions, `n`, seeds, logprobs, usage in the stream,
errors with their `param`, concurrent streams, and a client that leaves mid-stream freeing its
sequence at once."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Iterator

import httpx
import jsonschema_rs
import openai
import pytest

from prometheus_text import metric_sum
from servers import Server, running
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_lm import tiny_lm_folder

pytest.importorskip("torch")
pytest.importorskip("transformers")

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "SHIPYARD_GENERATION__THREADS": "1"}
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("llm-serve-home")
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("tiny", tiny_lm_folder(home / "src"))
    with running(
        home, ["tiny"], tmp_path_factory.mktemp("llm-serve-log"), env=OFFLINE, ready_timeout=90
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_chat_streamed_equals_whole_for_greedy(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=16)
    content = whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.completion_tokens <= 16
    stream = oai.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == content
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_completions_n_seed_and_logprobs(oai: openai.OpenAI) -> None:
    def sample() -> list[str]:
        answer = oai.completions.create(
            model="tiny", prompt="the quick", max_tokens=8, n=2, seed=11, temperature=1.0, logprobs=2
        )
        assert [c.index for c in answer.choices] == [0, 1]
        for choice in answer.choices:
            logprobs = choice.logprobs
            assert logprobs is not None and logprobs.token_logprobs is not None and logprobs.tokens
            assert len(logprobs.token_logprobs) == len(logprobs.tokens) <= 8
        return [c.text for c in answer.choices]

    assert sample() == sample()
    chat = oai.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    logprobs = chat.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert all(len(t.top_logprobs) == 3 for t in logprobs.content)


def test_a_json_schema_answer_validates(oai: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"ship": {"enum": ["ketch", "sloop"]}, "masts": {"type": "integer"}},
        "required": ["ship", "masts"],
        "additionalProperties": False,
    }
    answer = oai.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=48,
        seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "ship", "schema": schema}},
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content is not None
    jsonschema_rs.validate(schema, json.loads(choice.message.content))  # a random model, held to the schema


def test_errors_carry_status_and_param(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=50_000)
    assert bad.value.param == "max_tokens" and "1024" in bad.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="nope", messages=MESSAGES)
    assert missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as role:
        oai.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}])  # type: ignore[misc,list-item]
    assert role.value.param == "messages[0].role"


def test_concurrent_streams_all_finish(oai: openai.OpenAI) -> None:
    def stream(seed: int) -> tuple[str, str | None]:
        chunks = list(
            oai.completions.create(model="tiny", prompt="hello", max_tokens=24, seed=seed, stream=True)
        )
        return "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(stream, range(8)))
    assert all(reason in ("stop", "length") for _, reason in results)


def test_a_client_leaving_mid_stream_frees_its_sequence(server: Server) -> None:
    request = {"model": "tiny", "prompt": "hello", "max_tokens": 900, "ignore_eos": True, "temperature": 0}
    with server.client(timeout=60.0) as http:
        started = time.perf_counter()
        whole = http.post("/v1/completions", json=request)
        assert whole.json()["usage"]["completion_tokens"] == 900
        full_s = time.perf_counter() - started  # what the sequence costs if nobody stops it

        with http.stream("POST", "/v1/completions", json={**request, "stream": True}) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    break  # one event, then the client goes away
        left = time.perf_counter()
        server.wait_until(lambda c: _running(c) == 0, timeout=full_s)
        freed_s = time.perf_counter() - left
    print(f"freed in {freed_s:.3f}s; the whole sequence takes {full_s:.3f}s")
    assert freed_s < full_s / 3, (freed_s, full_s)


def _running(client: httpx.Client) -> float:
    return metric_sum(client.get("/metrics").text, "shipyard_llm_requests_running", model="tiny")

"""The generation routes in-process on a tiny random causal LM (transformers engine): OpenAI's
chat and text completions, whole and streamed, Triton's generate extension, the V2 metadata,
/v1/models, the token metrics, and every bad request refused with its status and `param`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# huggingface_hub reads these when it is imported: set them before anything imports it.
os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})

import httpx
import orjson
import pytest
from asgi_serving import run

from prometheus_text import metric_sum
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_lm import tiny_lm_folder
from tiny_models import tiny_onnx

pytest.importorskip("torch")
pytest.importorskip("transformers")

REFS = ["tiny", "plain", "iris"]
CHAT = {
    "model": "tiny",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0,
    "max_tokens": 12,
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("llm-home")
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("tiny", tiny_lm_folder(home / "src" / "tiny"))
        registry.push("plain", tiny_lm_folder(home / "src" / "plain", chat_template=False))
        (home / "iris.onnx").write_bytes(tiny_onnx("iris"))
        registry.push("iris", home / "iris.onnx")
    yield home


def events(response: httpx.Response) -> list[Any]:
    """The SSE events of a response: JSON objects, and the final b"[DONE]"."""
    assert response.headers["content-type"].startswith("text/event-stream")
    out: list[Any] = []
    for block in response.content.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: "), block
            data = block[6:]
            out.append(data if data == b"[DONE]" else orjson.loads(data))
    return out


def test_push_records_what_a_generative_model_is(home: Path) -> None:
    with Registry(settings=Settings.load(home=home)) as registry:
        version = registry.resolve("tiny")
        plain = registry.resolve("plain")
    assert version.format == "transformers-lm"
    extra = version.extra["generative"]  # GenerativeInfo's fields, as a GGUF push records them
    assert extra["architecture"] == "llama" and extra["context_length"] == 1024
    assert extra["parameters"] > 10_000 and extra["tokenizer"] == "bpe"
    assert "<|im_start|>" in extra["chat_template"] and extra["eos_token"] == "</s>"
    assert plain.extra["generative"]["chat_template"] is None
    assert [t.name for t in version.signature.inputs] == ["text_input"]


def test_chat_whole_and_streamed_agree(home: Path) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        whole = await client.post("/v1/chat/completions", json=CHAT)
        assert whole.status_code == 200, whole.text
        answer = whole.json()
        assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
        choice = answer["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
        usage = answer["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert 0 < usage["completion_tokens"] <= 12

        streamed = await client.post(
            "/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        )
        assert streamed.status_code == 200
        chunks = events(streamed)
        assert chunks[-1] == b"[DONE]"
        first, *middle, usage_chunk = chunks[:-1]
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert all(c["object"] == "chat.completion.chunk" and c["id"] == first["id"] for c in chunks[:-1])
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in middle)
        assert text == choice["message"]["content"]  # greedy: the same tokens either way
        assert [c["choices"][0]["finish_reason"] for c in middle][-1] == choice["finish_reason"]
        assert all(c["choices"][0]["finish_reason"] is None for c in middle[:-1])
        assert usage_chunk["choices"] == [] and usage_chunk["usage"] == usage
        assert all(c["usage"] is None for c in [first, *middle])

    run(home, REFS, body)


def test_completions_seed_n_stop_and_logprobs(home: Path) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        request = {
            "model": "tiny",
            "prompt": "the quick",
            "max_tokens": 16,
            "n": 2,
            "seed": 7,
            "ignore_eos": True,
        }
        first = (await client.post("/v1/completions", json=request)).json()
        again = (await client.post("/v1/completions", json=request)).json()
        texts = [c["text"] for c in first["choices"]]
        assert first["object"] == "text_completion" and len(texts) == 2
        assert texts == [c["text"] for c in again["choices"]]  # the same seed, the same text
        assert [c["index"] for c in first["choices"]] == [0, 1]
        assert all(c["finish_reason"] == "length" for c in first["choices"])
        assert first["usage"]["completion_tokens"] == 32

        greedy = {
            "model": "tiny",
            "prompt": "hello world",
            "max_tokens": 16,
            "temperature": 0,
            "ignore_eos": True,
        }
        full = (await client.post("/v1/completions", json=greedy)).json()["choices"][0]["text"]
        stop = full[len(full) // 2 : len(full) // 2 + 2]
        cut = (await client.post("/v1/completions", json={**greedy, "stop": [stop]})).json()["choices"][0]
        assert cut["text"] == full[: full.index(stop)] and cut["finish_reason"] == "stop"

        scored = await client.post("/v1/completions", json={**greedy, "max_tokens": 4, "logprobs": 3})
        logprobs = scored.json()["choices"][0]["logprobs"]
        assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == 4
        assert all(len(top) <= 3 for top in logprobs["top_logprobs"]) and logprobs["text_offset"][0] == 0

        chat = await client.post("/v1/chat/completions", json={**CHAT, "logprobs": True, "top_logprobs": 2})
        content = chat.json()["choices"][0]["logprobs"]["content"]
        assert content and all(len(t["top_logprobs"]) == 2 and t["logprob"] <= 0 for t in content)
        assert all(t["bytes"] == list(t["token"].encode()) for t in content)

        batch = await client.post("/v1/completions", json={**greedy, "prompt": ["hello world", "a model"]})
        assert [c["index"] for c in batch.json()["choices"]] == [0, 1]
        assert batch.json()["choices"][0]["text"] == full

        stream = await client.post("/v1/completions", json={**greedy, "stream": True})
        pieces = events(stream)
        assert "".join(p["choices"][0]["text"] for p in pieces[:-1]) == full and pieces[-1] == b"[DONE]"

    run(home, REFS, body)


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("/v1/chat/completions", {"model": "nope"}, 404, "model"),
    ("/v1/chat/completions", {"model": "iris"}, 400, "model"),
    ("/v1/completions", {"model": "iris", "prompt": "hi"}, 400, "model"),
    ("/v1/embeddings", {"model": "tiny", "input": "hi"}, 400, "model"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        400,
        "messages[0].content",
    ),
    ("/v1/chat/completions", {"model": "plain"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 1200}]}, 400, "messages"),
    ("/v1/completions", {"model": "tiny", "prompt": "word " * 1200}, 400, "prompt"),
    ("/v1/chat/completions", {"max_tokens": 5000}, 400, "max_tokens"),
    ("/v1/chat/completions", {"max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ("/v1/chat/completions", {"n": 9}, 400, "n"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "logprobs": 6}, 400, "logprobs"),
    ("/v1/chat/completions", {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/chat/completions", {"temperature": 3}, 400, "temperature"),
    ("/v1/chat/completions", {"top_p": "high"}, 400, "top_p"),
    ("/v1/chat/completions", {"stream_options": {"include_usage": True}}, 400, "stream_options"),
    (
        "/v1/chat/completions",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "banana"}},
            }
        },
        400,
        "response_format.json_schema.schema",
    ),
    ("/v1/chat/completions", {"response_format": {"type": "xml"}}, 400, "response_format"),
    ("/v1/chat/completions", {"tools": [{"type": "function"}]}, 400, "tools"),
    ("/v1/completions", {"model": "tiny", "prompt": [[99999]]}, 400, "prompt"),
    ("/v2/models/tiny/generate", {"text_input": 3}, 400, "text_input"),
    ("/v2/models/tiny/generate", {"text_input": "hi", "parameters": {"max_tokens": 5000}}, 400, "max_tokens"),
]


def test_bad_requests_are_refused_with_their_param(home: Path) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        for path, fields, status, param in BAD:
            request = {**CHAT, **fields} if path == "/v1/chat/completions" else fields
            response = await client.post(path, json=request)
            assert response.status_code == status, (path, fields, response.text)
            error = response.json()["error"]
            if path.startswith("/v2/"):  # Triton's shape
                assert response.json()["field"] == param, (fields, response.text)
                continue
            assert error["param"] == param, (fields, error)
            assert error["type"] == "invalid_request_error" and error["code"] == status
        context = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5000})
        assert "context of 1024 tokens" in context.json()["error"]["message"]
        template = await client.post("/v1/chat/completions", json={**CHAT, "model": "plain"})
        assert "chat_template" in template.json()["error"]["message"]
        v2 = await client.post("/v2/models/tiny/infer", json={"inputs": []})
        assert v2.status_code == 400 and "generate" in v2.json()["error"]

    run(home, REFS, body)


SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "size": {"enum": ["small", "large"]}},
    "required": ["ok", "size"],
    "additionalProperties": False,
}


def test_structured_output_always_parses_and_validates(home: Path) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")

    async def body(client: httpx.AsyncClient) -> None:
        schema_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
        for seed in range(3):  # a random model: only the grammar makes this JSON
            request = {
                **CHAT,
                "max_tokens": 64,
                "temperature": 1.0,
                "seed": seed,
                "response_format": schema_format,
            }
            answer = (await client.post("/v1/chat/completions", json=request)).json()["choices"][0]
            assert answer["finish_reason"] == "stop", answer
            jsonschema_rs.validate(SCHEMA, orjson.loads(answer["message"]["content"]))
        request = {**CHAT, "max_tokens": 200, "stream": True, "response_format": {"type": "json_object"}}
        chunks = events(await client.post("/v1/chat/completions", json=request))
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1])
        if chunks[-2]["choices"][0]["finish_reason"] == "stop":  # an object may run past max_tokens
            assert isinstance(orjson.loads(text), dict)
        assert text.startswith("{")

    run(home, REFS, body)


def test_a_passed_deadline_stops_generation_with_a_clear_reason(home: Path) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        late = {"X-Request-Timeout": "0.000001"}
        whole = await client.post("/v1/chat/completions", json=CHAT, headers=late)
        assert whole.status_code == 504 and "deadline" in whole.json()["error"]["message"]
        streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=late)
        assert streamed.status_code == 504 and whole.json()["error"]["param"] == "max_tokens"

    run(home, REFS, body)


def test_models_metadata_triton_generate_and_metrics(home: Path) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        models = (await client.get("/v1/models")).json()
        by_id = {m["id"]: m for m in models["data"]}
        assert set(by_id) == set(REFS) and by_id["tiny"]["max_model_len"] == 1024
        metadata = (await client.get("/v2/models/tiny")).json()
        assert metadata["inputs"] == [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}]
        assert metadata["outputs"][0]["name"] == "text_output"

        request = {"text_input": "hello world", "parameters": {"max_tokens": 10, "temperature": 0}}
        whole = await client.post("/v2/models/tiny/generate", json=request)
        assert whole.status_code == 200, whole.text
        answer = whole.json()
        assert answer["model_name"] == "tiny" and answer["model_version"] == "1"
        streamed = await client.post("/v2/models/tiny/versions/1/generate_stream", json=request)
        pieces = events(streamed)
        assert "".join(p["text_output"] for p in pieces) == answer["text_output"]
        completion = {"model": "tiny", "prompt": "hello world", "max_tokens": 10, "temperature": 0}
        openai = (await client.post("/v1/completions", json=completion)).json()
        assert openai["choices"][0]["text"] == answer["text_output"]  # one engine, one answer

        assert (await client.get("/openapi.json")).status_code == 200
        text = (await client.get("/metrics")).text
        for name in (
            "shipyard_llm_time_to_first_token_seconds_count",
            "shipyard_llm_inter_token_latency_seconds_count",
            "shipyard_llm_e2e_request_latency_seconds_count",
            "shipyard_llm_prompt_tokens_total",
            "shipyard_llm_generation_tokens_total",
            "shipyard_llm_requests_running",
            "shipyard_llm_requests_waiting",
            "shipyard_llm_kv_cache_usage_ratio",
        ):
            assert f'{name}{{model="tiny",version="1"}}' in text, name

    run(home, REFS, body)


def test_beyond_the_slots_and_the_queue_is_503_with_retry_after(home: Path) -> None:
    long = {"model": "tiny", "prompt": "hi", "max_tokens": 900, "ignore_eos": True}
    short = {"model": "tiny", "prompt": "hi", "max_tokens": 2}

    async def gauge(client: httpx.AsyncClient, name: str) -> float:
        text = (await client.get("/metrics")).text
        return metric_sum(text, name, model="tiny")

    async def until(client: httpx.AsyncClient, name: str, value: float) -> None:
        for _ in range(1500):  # a /metrics page costs the decode thread time: not too often
            if await gauge(client, name) == value:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{name} never reached {value}")

    async def body(client: httpx.AsyncClient) -> None:
        running = asyncio.ensure_future(client.post("/v1/completions", json=long))
        await until(client, "shipyard_llm_requests_running", 1)  # the only slot is taken
        waiting = asyncio.ensure_future(client.post("/v1/completions", json=short))
        await until(client, "shipyard_llm_requests_waiting", 1)  # the queue is full
        refused = await client.post("/v1/completions", json=short)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "server_error"
        running.cancel()  # the first client leaves: the waiting request gets the slot
        await asyncio.gather(running, return_exceptions=True)
        assert (await waiting).status_code == 200

    run(home, REFS, body, generation={"slots": 1, "max_queue": 1})

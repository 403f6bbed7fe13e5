"""all-MiniLM-L6-v2 served by a real `shipyard serve`, through the clients users already have.

Every protocol must give the embeddings sentence-transformers computes in-process (cosine >=
0.9999 per sentence): OpenAI's `/v1/embeddings` through the official `openai` client, V2 through
`tritonclient.http` (binary tensors, its default) and plain JSON, and V1 `instances`. One server
for the module serves minilm (truncates long text), minilm-strict (rejects it) and sentiment (a
tiny classifier, for the label path and the not-an-embedding-model error).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from text_support import (
    DIM,
    LONG_PROSE,
    MAX_SEQ,
    OFFLINE,
    SENTENCES,
    WORD_TOKENS_254,
    WORD_TOKENS_255,
    TextRegistry,
    assert_same_embeddings,
    cosines,
)

from servers import Server, running

REFS = ["minilm", "minilm-strict", "sentiment"]
READY_TIMEOUT_S = 90.0  # importing torch + transformers and loading three models, on 2 slow cores
# All but the long texts: for tests about the wire format rather than the numbers, so that only
# the tests that must send every sentence pay for the 256-token ones on a small CPU.
SHORT = [t for t in SENTENCES if len(t) < 100]
HELLO_WORLD_IDS = [7592, 2088]  # "hello world" in the uncased BERT vocabulary


@pytest.fixture(scope="module")
def server(text_registry: TextRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module; the three transformers models load at once, in threads."""
    log_dir = tmp_path_factory.mktemp("text-server-log")
    with running(text_registry.home, REFS, log_dir, env=OFFLINE, ready_timeout=READY_TIMEOUT_S) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client(timeout=60.0) as client:
        yield client


@pytest.fixture(scope="module")
def oai(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def v2_json(http: httpx.Client, model: str, texts: list[str]) -> dict[str, np.ndarray]:
    """V2 infer with a JSON BYTES input; outputs by name, reshaped to their declared shapes."""
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    response = http.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    outputs = {}
    for out in response.json()["outputs"]:
        dtype = {"FP32": np.float32, "INT64": np.int64, "BOOL": bool, "BYTES": object}[out["datatype"]]
        outputs[out["name"]] = np.array(out["data"], dtype=dtype).reshape(out["shape"])
    return outputs


def embed(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def assert_openai_error(response: httpx.Response, status: int, param: str | None, *fragments: str) -> str:
    """OpenAI's error shape, exactly: {"error": {message, type, param, code}} naming the problem."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == "invalid_request_error", error
    assert error["code"] == status, error
    assert error["param"] == param, error
    for fragment in fragments:
        assert fragment in error["message"], (fragment, error["message"])
    return str(error["message"])


def test_openai_client_floats_match_sentence_transformers(oai: openai.OpenAI, reference: np.ndarray) -> None:
    response = oai.embeddings.create(model="minilm", input=SENTENCES, encoding_format="float")
    assert response.object == "list" and response.model == "minilm"
    assert [d.index for d in response.data] == list(range(len(SENTENCES)))
    assert {d.object for d in response.data} == {"embedding"}
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert got.shape == (len(SENTENCES), DIM)
    assert_same_embeddings(got, reference, SENTENCES)


def test_openai_client_default_base64_matches(oai: openai.OpenAI, reference: np.ndarray) -> None:
    """The client asks for base64 unless told otherwise and decodes it itself."""
    response = oai.embeddings.create(model="minilm", input=SHORT)
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert_same_embeddings(got, reference[[SENTENCES.index(t) for t in SHORT]], SHORT)


def test_base64_is_the_same_little_endian_float32(http: httpx.Client) -> None:
    texts = SHORT[:12]
    floats = embed(http, {"model": "minilm", "input": texts, "encoding_format": "float"})
    packed = embed(http, {"model": "minilm", "input": texts, "encoding_format": "base64"})
    for f, b in zip(floats["data"], packed["data"], strict=True):
        assert isinstance(b["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        assert decoded.shape == (DIM,)
        np.testing.assert_allclose(decoded, np.array(f["embedding"], dtype=np.float32), rtol=1e-6, atol=1e-7)


def test_response_envelope_and_usage_count_tokens(http: httpx.Client, minilm_tokenizer: Any) -> None:
    texts = [*SHORT, WORD_TOKENS_255]
    body = embed(http, {"model": "minilm", "input": texts})
    assert body["object"] == "list" and body["model"] == "minilm"
    assert body["id"].startswith("embd-") and isinstance(body["created"], int)
    expected = sum(min(len(minilm_tokenizer(t)["input_ids"]), MAX_SEQ) for t in texts)
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_single_string_input(oai: openai.OpenAI, reference: np.ndarray) -> None:
    response = oai.embeddings.create(model="minilm", input="hello world", encoding_format="float")
    assert len(response.data) == 1
    assert_same_embeddings([response.data[0].embedding], reference[[0]], ["hello world"])


def test_token_arrays_embed_like_their_text(
    http: httpx.Client, reference_model: Any, minilm_tokenizer: Any
) -> None:
    assert minilm_tokenizer("hello world")["input_ids"][1:-1] == HELLO_WORLD_IDS
    expected = reference_model.encode(["hello world", "hello"])
    one = embed(http, {"model": "minilm", "input": HELLO_WORLD_IDS})
    assert len(one["data"]) == 1
    assert one["usage"]["prompt_tokens"] == 4  # [CLS] hello world [SEP]
    assert_same_embeddings([one["data"][0]["embedding"]], expected[:1], ["hello world"])
    many = embed(http, {"model": "minilm", "input": [HELLO_WORLD_IDS, [7592]]})
    assert_same_embeddings([d["embedding"] for d in many["data"]], expected, ["hello world", "hello"])
    mixed = embed(http, {"model": "minilm", "input": ["hello", HELLO_WORLD_IDS]})
    assert_same_embeddings([d["embedding"] for d in mixed["data"]], expected[::-1], ["hello", "hello world"])


@pytest.mark.parametrize(
    ("model", "tokens", "fragment"),
    [
        ("minilm", [30522], "vocabulary"),
        ("minilm", [[7592, -1]], "vocabulary"),
        ("minilm", ["fine", [2**40]], "vocabulary"),
        ("minilm-strict", [[7592] * MAX_SEQ], f"limit of {MAX_SEQ}"),
    ],
    ids=["one-past-vocab", "negative", "huge", "over-limit"],
)
def test_bad_token_arrays_are_named(http: httpx.Client, model: str, tokens: list[Any], fragment: str) -> None:
    assert_openai_error(
        http.post("/v1/embeddings", json={"model": model, "input": tokens}), 400, "input", fragment
    )


def test_dimensions_equal_to_the_model_is_accepted(oai: openai.OpenAI) -> None:
    response = oai.embeddings.create(model="minilm", input="hi", dimensions=DIM, encoding_format="float")
    assert len(response.data[0].embedding) == DIM


def test_models_lists_the_served_models(oai: openai.OpenAI, http: httpx.Client) -> None:
    assert sorted(m.id for m in oai.models.list()) == sorted(REFS)
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    for entry in body["data"]:
        assert entry["object"] == "model" and isinstance(entry["created"], int)
        assert entry["root"] == f"{entry['id']}:1"


def test_v2_tritonclient_binary_bytes_input(server: Server, reference: np.ndarray) -> None:
    client = triton.InferenceServerClient(url=server.host_port)
    try:
        text = triton.InferInput("text", [len(SENTENCES)], "BYTES")
        text.set_data_from_numpy(np.array(SENTENCES, dtype=np.object_))  # binary_data=True
        result = client.infer("minilm", [text])
    finally:
        client.close()
    embedding = result.as_numpy("embedding")
    assert embedding.dtype == np.float32 and embedding.shape == (len(SENTENCES), DIM)
    assert_same_embeddings(embedding, reference, SENTENCES)
    truncated = result.as_numpy("truncated")
    assert [SENTENCES[i] for i in np.flatnonzero(truncated)] == [
        t for t in SENTENCES if t in (LONG_PROSE, WORD_TOKENS_255) or t.startswith("lorem")
    ]
    assert result.as_numpy("tokens").max() == MAX_SEQ


def test_v2_json_bytes_input(http: httpx.Client, reference: np.ndarray) -> None:
    outputs = v2_json(http, "minilm", SENTENCES)
    assert outputs["embedding"].shape == (len(SENTENCES), DIM)
    assert_same_embeddings(outputs["embedding"], reference, SENTENCES)


def test_v1_instances_of_text(http: httpx.Client, reference: np.ndarray) -> None:
    response = http.post("/v1/models/minilm:predict", json={"instances": SENTENCES})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert len(rows) == len(SENTENCES)
    assert set(rows[0]) == {"embedding", "tokens", "truncated"}
    assert_same_embeddings([r["embedding"] for r in rows], reference, SENTENCES)


def test_truncation_is_flagged_per_row(http: httpx.Client) -> None:
    texts = [WORD_TOKENS_254, WORD_TOKENS_255, "short", LONG_PROSE]
    outputs = v2_json(http, "minilm", texts)
    assert outputs["truncated"].tolist() == [False, True, False, True]
    assert outputs["tokens"].tolist() == [MAX_SEQ, MAX_SEQ, 3, MAX_SEQ]


def test_classifier_over_v2_returns_labels(http: httpx.Client) -> None:
    outputs = v2_json(http, "sentiment", ["great", "awful", ""])
    assert set(outputs["label"].tolist()) <= {"neg", "neu", "pos"}
    assert outputs["scores"].shape == (3, 3)
    np.testing.assert_allclose(outputs["scores"].sum(axis=1), 1.0, rtol=1e-5)
    labels = np.array(["neg", "neu", "pos"])[outputs["scores"].argmax(axis=1)]
    assert outputs["label"].tolist() == labels.tolist()


REJECTED = {
    "empty-list": ({"model": "minilm", "input": []}, 400, "input", "empty"),
    "number-item": ({"model": "minilm", "input": ["ok", 3]}, 400, "input", "input[1]"),
    "float-item": ({"model": "minilm", "input": [1.5]}, 400, "input", "input[0]"),
    "null-item": ({"model": "minilm", "input": [None]}, 400, "input", "input[0]"),
    "object-item": ({"model": "minilm", "input": ["ok", {"text": "a"}]}, 400, "input", "input[1]"),
    "nested-strings": ({"model": "minilm", "input": [["nested", "strings"]]}, 400, "input", "input[0]"),
    "empty-token-array": ({"model": "minilm", "input": [[]]}, 400, "input", "input[0]"),
    "booleans": ({"model": "minilm", "input": [True, False]}, 400, "input", "input[0]"),
    "null-input": ({"model": "minilm", "input": None}, 400, "input", "'input'"),
    "number-input": ({"model": "minilm", "input": 42}, 400, "input", "'input'"),
    "object-input": ({"model": "minilm", "input": {"text": "a"}}, 400, "input", "'input'"),
    "unknown-model": ({"model": "nope", "input": "hi"}, 404, "model", "'nope'"),
    "dimensions-smaller": ({"model": "minilm", "input": "hi", "dimensions": 128}, 400, "dimensions", "384"),
    "dimensions-larger": ({"model": "minilm", "input": "hi", "dimensions": 4096}, 400, "dimensions", "384"),
    "dimensions-zero": ({"model": "minilm", "input": "hi", "dimensions": 0}, 400, "dimensions", "positive"),
    "dimensions-text": (
        {"model": "minilm", "input": "hi", "dimensions": "384"},
        400,
        "dimensions",
        "positive",
    ),
    "dimensions-bool": (
        {"model": "minilm", "input": "hi", "dimensions": True},
        400,
        "dimensions",
        "positive",
    ),
    "encoding-hex": (
        {"model": "minilm", "input": "hi", "encoding_format": "hex"},
        400,
        "encoding_format",
        "base64",
    ),
    "missing-model": ({"input": "hi"}, 400, "model", "'model'"),
    "empty-model": ({"model": "", "input": "hi"}, 400, "model", "'model'"),
    "missing-input": ({"model": "minilm"}, 400, "input", "'input'"),
    "classifier": ({"model": "sentiment", "input": "hi"}, 400, "model", "not an embedding model"),
    "over-limit": (
        {"model": "minilm-strict", "input": ["ok", LONG_PROSE]},
        400,
        "input",
        f"limit of {MAX_SEQ}",
    ),
}


@pytest.mark.parametrize(("body", "status", "param", "fragment"), list(REJECTED.values()), ids=list(REJECTED))
def test_embeddings_rejects(
    http: httpx.Client, body: dict[str, Any], status: int, param: str, fragment: str
) -> None:
    assert_openai_error(http.post("/v1/embeddings", json=body), status, param, fragment)


@pytest.mark.parametrize(
    ("content", "content_type", "status", "fragment"),
    [
        (b'{"model": "minilm", "input": ', "application/json", 400, "not valid JSON"),
        (b"", "application/json", 400, "not valid JSON"),
        (b'["minilm", "hi"]', "application/json", 400, "JSON object"),
        (b'{"model": "minilm", "input": "hi"}', "text/plain", 415, "application/json"),
        (b"model=minilm&input=hi", "application/x-www-form-urlencoded", 415, "application/json"),
    ],
    ids=["truncated-json", "empty-body", "json-list", "text-plain", "form"],
)
def test_embeddings_rejects_bodies(
    http: httpx.Client, content: bytes, content_type: str, status: int, fragment: str
) -> None:
    response = http.post("/v1/embeddings", content=content, headers={"content-type": content_type})
    param = "content-type" if status == 415 else "body"
    assert_openai_error(response, status, param, fragment)


def test_openai_client_raises_its_own_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="nope"):
        oai.embeddings.create(model="nope", input="hi")
    with pytest.raises(openai.BadRequestError, match=f"limit of {MAX_SEQ}"):
        oai.embeddings.create(model="minilm-strict", input=WORD_TOKENS_255)


def test_strict_model_takes_text_at_the_limit_and_rejects_one_more(http: httpx.Client) -> None:
    assert (
        embed(http, {"model": "minilm-strict", "input": WORD_TOKENS_254})["usage"]["prompt_tokens"] == MAX_SEQ
    )
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["ok", WORD_TOKENS_255]}]}
    response = http.post("/v2/models/minilm-strict/infer", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert "257 tokens" in message and f"limit of {MAX_SEQ}" in message, message


def test_v2_non_text_items_are_a_400(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["ok", 7]}]}
    response = http.post("/v2/models/minilm/infer", json=body)
    assert response.status_code == 400, response.text
    assert "text" in response.json()["error"]


@pytest.mark.parametrize("item", [1, 2.5, True], ids=["int", "float", "bool"])
def test_v1_non_text_instances_are_a_400(http: httpx.Client, item: Any) -> None:
    response = http.post("/v1/models/minilm:predict", json={"instances": ["ok", item]})
    assert response.status_code == 400, response.text
    assert "text" in response.json()["error"]


def test_zero_rows_give_empty_outputs(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]}
    response = http.post("/v2/models/minilm/infer", json=body)
    assert response.status_code == 200, response.text
    shapes = {o["name"]: (o["shape"], o["data"]) for o in response.json()["outputs"]}
    assert shapes == {"embedding": ([0, DIM], []), "tokens": ([0], []), "truncated": ([0], [])}


def _stats(http: httpx.Client) -> tuple[int, int]:
    (entry,) = http.get("/v2/models/minilm/stats").json()["model_stats"]
    return int(entry["request_count"]), int(entry["execution_count"])


def test_concurrent_requests_match_one_at_a_time(server: Server, http: httpx.Client) -> None:
    pool = [*SHORT, LONG_PROSE]
    alone = {t: v2_json(http, "minilm", [t]) for t in pool}
    # 16 threads, each sending requests of 1-4 texts, short and long mixed: merged batches hold
    # rows of very different lengths, which the runtime re-orders into length buckets.
    requests = [[pool[(7 * i + k) % len(pool)] for k in range(1 + i % 4)] for i in range(16 * 3)]
    before = _stats(http)

    def send(chunk: list[list[str]]) -> list[tuple[list[str], dict[str, np.ndarray]]]:
        with server.client(timeout=120.0) as client:
            return [(texts, v2_json(client, "minilm", texts)) for texts in chunk]

    with ThreadPoolExecutor(16) as executor:
        results = [r for part in executor.map(send, [requests[i::16] for i in range(16)]) for r in part]
    after = _stats(http)
    assert len(results) == len(requests)
    for texts, outputs in results:
        expected = np.concatenate([alone[t]["embedding"] for t in texts])
        assert outputs["embedding"].shape == expected.shape
        assert cosines(outputs["embedding"], expected).min() >= 0.99999, texts
        np.testing.assert_allclose(outputs["embedding"], expected, atol=1e-5)
        assert outputs["tokens"].tolist() == [int(alone[t]["tokens"][0]) for t in texts]
        assert outputs["truncated"].tolist() == [bool(alone[t]["truncated"][0]) for t in texts]
    requests_run, batches_run = after[0] - before[0], after[1] - before[1]
    assert requests_run == len(requests)
    assert batches_run < requests_run, "no two requests were merged into one batch"


def test_metadata_describes_text_input(http: httpx.Client) -> None:
    meta = http.get("/v2/models/minilm").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "embedding": "FP32",
        "tokens": "INT64",
        "truncated": "BOOL",
    }
    assert meta["outputs"][0]["shape"] == [-1, DIM]

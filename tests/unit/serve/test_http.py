"""What every route shares, in-process: error bodies and statuses, body limits, probes, metrics,
OpenAPI and docs, and a model that fails to load (the server stays live, the others serve, every
probe says which model is not ready and why)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import orjson
import pytest
from app_support import ROW, V2_ROW, Home, serve
from fake_runtime import Controls
from prometheus_client.parser import text_string_to_metric_families

from http_errors import assert_error

pytestmark = pytest.mark.anyio

MAX_BODY_BYTES = 100_000


@pytest.fixture
async def http(fake: Controls, home: Home) -> AsyncIterator[httpx.AsyncClient]:
    """A server with `m` (versions 1 and 2) and a small body limit."""
    home.push("m")
    home.push("m")
    async with serve(home, ["m", "m:1"], max_body_bytes=MAX_BODY_BYTES) as served:
        yield served.client


async def test_malformed_json_is_400(http: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    response = await http.post("/v2/models/m/infer", content=b'{"inputs": [', headers=headers)
    assert_error(response, 400, "malformed")
    response = await http.post("/v1/models/m:predict", content=b"{nope}", headers=headers)
    assert_error(response, 400, "not valid JSON")
    assert_error(await http.post("/invocations", content=b"[1, 2", headers=headers), 400, "not valid JSON")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [("abc", "byte count"), ("-5", "byte count"), ("100000", "outside the body")],
    ids=["not-a-number", "negative", "past-the-end"],
)
async def test_bad_binary_header_is_400(http: httpx.AsyncClient, header: str, fragment: str) -> None:
    response = await http.post(
        "/v2/models/m/infer",
        content=orjson.dumps(V2_ROW),
        headers={"Inference-Header-Content-Length": header},
    )
    assert_error(response, 400, "Inference-Header-Content-Length", fragment)


async def test_binary_sizes_that_do_not_add_up_are_400(http: httpx.AsyncClient) -> None:
    tensor = {"name": "X", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
    header = orjson.dumps({"inputs": [tensor]})
    response = await http.post(
        "/v2/models/m/infer",
        content=header + b"\0" * 12,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert_error(response, 400, "binary_data_size 16", "only 12 bytes")


async def test_wrong_content_type_is_415(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/models/m:predict", content=b"instances=1", headers={"content-type": "text/plain"}
    )
    assert_error(response, 415, "text/plain", "application/json")


async def test_unsupported_content_encoding_is_415(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/models/m:predict",
        content=orjson.dumps({"instances": [ROW]}),
        headers={"content-type": "application/json", "content-encoding": "br"},
    )
    assert_error(response, 415, "'br'")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_bodies_are_accepted(http: httpx.AsyncClient, encoding: str) -> None:
    raw = orjson.dumps({"instances": [ROW]})
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    response = await http.post(
        "/v1/models/m:predict",
        content=body,
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    assert response.status_code == 200, response.text


async def test_corrupt_compressed_body_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/models/m:predict",
        content=b"\x1f\x8b not really gzip",
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_error(response, 400, "gzip")


def big_v1_body(size: int) -> bytes:
    row = len(orjson.dumps(ROW)) + 1  # with its comma
    body = orjson.dumps({"instances": [ROW] * (size // row + 1)})
    assert len(body) > size
    return body


@pytest.mark.parametrize(
    "path", ["/v1/models/m:predict", "/v2/models/m/infer", "/invocations"], ids=["v1", "v2", "sagemaker"]
)
async def test_body_over_the_limit_is_413(http: httpx.AsyncClient, path: str) -> None:
    body = big_v1_body(MAX_BODY_BYTES + 1000)
    response = await http.post(path, content=body, headers={"content-type": "application/json"})
    assert_error(response, 413, "limit", str(MAX_BODY_BYTES))


async def test_chunked_body_over_the_limit_is_413_while_reading(http: httpx.AsyncClient) -> None:
    body = big_v1_body(MAX_BODY_BYTES + 1000)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while streaming
        for start in range(0, len(body), 16 * 1024):
            yield body[start : start + 16 * 1024]

    response = await http.post(
        "/v1/models/m:predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "limit")


async def test_compressed_body_that_inflates_over_the_limit_is_413(http: httpx.AsyncClient) -> None:
    bomb = gzip.compress(b" " * (MAX_BODY_BYTES * 3))
    assert len(bomb) < MAX_BODY_BYTES // 100
    response = await http.post(
        "/v1/models/m:predict",
        content=bomb,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_error(response, 413, "decompressed")


async def test_body_just_under_the_limit_is_served(http: httpx.AsyncClient, fake: Controls) -> None:
    rows = (MAX_BODY_BYTES - 100) // (len(orjson.dumps(ROW)) + 1)
    body = orjson.dumps({"instances": [ROW] * rows})
    assert len(body) < MAX_BODY_BYTES
    response = await http.post(
        "/v1/models/m:predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text[:200]
    assert len(response.json()["predictions"]) == rows
    assert fake.rows[2] == rows


@pytest.mark.parametrize("path", ["/nope", "/v2/models/m/explain", "/v3", "/v2/models/m/versions/1/x/y"])
async def test_unknown_route_is_404_json(http: httpx.AsyncClient, path: str) -> None:
    assert_error(await http.get(path), 404, path)


async def test_wrong_method_is_405_json(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v2/models/m/infer"), 405, "GET")
    assert_error(await http.delete("/healthz"), 405)


async def test_healthz_and_readyz(http: httpx.AsyncClient) -> None:
    live = await http.get("/healthz")
    assert live.status_code == 200 and live.json() == {"live": True}
    assert live.headers["content-type"] == "application/json"
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(http: httpx.AsyncClient) -> Samples:
    """Sample name → [(labels, value)] from /metrics."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def counted(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == w for k, w in labels.items()))


async def test_metrics_count_requests_by_model_version_protocol_and_status(http: httpx.AsyncClient) -> None:
    requests = "shipyard_server_requests_total"
    ok = {"model": "m", "version": "1", "protocol": "v2", "status": "200"}
    bad = {"model": "m", "version": "2", "protocol": "v1", "status": "400"}

    before = await scrape(http)
    for _ in range(3):
        assert (await http.post("/v2/models/m/versions/1/infer", json=V2_ROW)).status_code == 200
    assert (await http.post("/v1/models/m:predict", json={"instances": [[1, 2]]})).status_code == 400
    after = await scrape(http)

    assert counted(after, requests, **ok) - counted(before, requests, **ok) == 3
    assert counted(after, requests, **bad) - counted(before, requests, **bad) == 1
    for labels, _ in after[requests]:
        assert set(labels) == {"model", "version", "protocol", "status"}
    assert any(k.startswith("shipyard_server_request_duration_seconds") for k in after)
    batch_rows = [labels for labels, _ in after["shipyard_batcher_batch_size_rows_count"]]
    assert {"model": "m", "version": "1"} in batch_rows
    assert "shipyard_batcher_queue_depth_requests" in after


async def test_errors_are_counted_by_kind(http: httpx.AsyncClient) -> None:
    async def errors(kind: str) -> float:
        return counted(await scrape(http), "shipyard_server_errors_total", kind=kind, protocol="v1")

    not_found, invalid = await errors("not_found"), await errors("invalid_input")
    assert (await http.post("/v1/models/m/versions/9:predict", json={"instances": [ROW]})).status_code == 404
    assert (await http.post("/v1/models/m:predict", json={"instances": [[1, 2]]})).status_code == 400
    assert await errors("not_found") - not_found == 1
    assert await errors("invalid_input") - invalid == 1


async def test_metrics_never_label_with_user_input(http: httpx.AsyncClient) -> None:
    assert (await http.post("/v2/models/attacker-chosen-name/infer", json=V2_ROW)).status_code == 404
    response = await http.post("/v1/models/another-made-up-name:predict", json={"instances": [ROW]})
    assert response.status_code == 404
    text = (await http.get("/metrics")).text
    assert "attacker-chosen-name" not in text and "another-made-up-name" not in text


async def test_openapi_is_generated_from_the_signatures(http: httpx.AsyncClient) -> None:
    import schemathesis

    response = await http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] and spec["info"]["version"]
    assert "/v2/models/m/infer" in spec["paths"] and "/v1/models/m:predict" in spec["paths"]
    row = spec["paths"]["/v1/models/m:predict"]["post"]["requestBody"]["content"]["application/json"]
    items = row["schema"]["properties"]["instances"]["items"]
    assert items["type"] == "array" and items["minItems"] == items["maxItems"] == 4
    assert items["items"]["type"] == "number"
    # a schema tool loads it and sees every operation
    operations = [op.ok() for op in schemathesis.openapi.from_dict(spec).get_all_operations()]  # type: ignore[union-attr]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v2/models/m/infer",
        "POST /v1/models/m:predict",
        "GET /healthz",
    }


async def test_docs_page(http: httpx.AsyncClient) -> None:
    response = await http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.lstrip().lower().startswith("<!doctype html>")
    assert "/v2/models/m/infer" in response.text
    assert "/openapi.json" in response.text
    assert "<script" not in response.text.lower()  # self-contained, nothing from a CDN


@pytest.fixture
async def broken(
    fake: Controls, home: Home, tamper: Callable[[Path], None]
) -> AsyncIterator[httpx.AsyncClient]:
    """Serves m (fine), broken (artifact damaged after push) and ghost@production (no such model)."""
    home.push("m")
    version = home.push("broken")
    tamper(home.registry.artifact_path(version) / "model.onnx")
    async with serve(home, ["m", "broken", "ghost@production"]) as served:
        yield served.client


async def test_a_failed_model_leaves_the_server_live(broken: httpx.AsyncClient) -> None:
    assert (await broken.get("/healthz")).status_code == 200
    assert (await broken.get("/v2/health/live")).json() == {"live": True}


async def test_readyz_names_the_model_and_the_reason(broken: httpx.AsyncClient) -> None:
    response = await broken.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["ready"] is False
    models = body["models"]
    assert set(models) == {"m", "broken", "ghost"}  # every served model, the ready one too
    assert models["m"]["state"] == "ready"
    assert models["broken"]["state"] == "failed"
    assert "integrity" in models["broken"]["reason"] and "model.onnx" in models["broken"]["reason"]
    assert "ghost" in models["ghost"]["reason"]
    assert "Traceback" not in response.text and "/" not in response.text  # no paths


@pytest.mark.parametrize("path", ["/v2/health/ready", "/ping"])
async def test_other_readiness_probes_agree(broken: httpx.AsyncClient, path: str) -> None:
    response = await broken.get(path)
    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert "broken" in response.json()["models"]


async def test_model_ready_endpoint_says_why(broken: httpx.AsyncClient) -> None:
    response = await broken.get("/v2/models/broken/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["name"] == "broken"
    assert "integrity" in body["reason"]
    assert (await broken.get("/v2/models/m/ready")).status_code == 200


async def test_other_models_keep_serving(broken: httpx.AsyncClient) -> None:
    response = await broken.post("/v2/models/m/infer", json=V2_ROW)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v2/models/broken/infer", V2_ROW),
        ("POST", "/v1/models/broken:predict", {"instances": [ROW]}),
        ("GET", "/v2/models/broken", None),
        ("POST", "/v2/models/ghost/infer", V2_ROW),
    ],
    ids=["v2-infer", "v1-predict", "v2-metadata", "unresolved"],
)
async def test_requests_to_the_failed_model_are_503_with_the_reason(
    broken: httpx.AsyncClient, method: str, path: str, body: object
) -> None:
    assert_error(await broken.request(method, path, json=body), 503, "not ready")


async def test_sagemaker_invocations_of_the_failed_model(broken: httpx.AsyncClient) -> None:
    response = await broken.post(
        "/invocations", json=[[1, 2, 3, 4]], headers={"x-amzn-sagemaker-target-model": "broken"}
    )
    assert_error(response, 503, "broken")

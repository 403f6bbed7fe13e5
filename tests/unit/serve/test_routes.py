"""The server's routes in-process: `create_app` behind `httpx.ASGITransport`, over a registry of
tiny ONNX models (iris, one that crashes in onnxruntime on more than one row, one whose artifact
is damaged). No sockets (see asgi_serving.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_serving import run as serve
from prometheus_client.parser import text_string_to_metric_families

from prometheus_text import metric_sum
from shipyard.registry import Registry
from shipyard.settings import Settings

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROW = [5.1, 3.5, 1.4, 0.2]
V2_ROWS = {"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": ROW * 2}]}
Client = httpx.AsyncClient


def reshape_onnx_bytes() -> bytes:
    """x FP32[N, 4] -> y FP32[N, 4] through a Reshape to [1, 4]: fine for one row, an
    onnxruntime failure for two (the signature allows any N, so the input is not at fault)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "shape"], ["y"])],
        "crash",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, onnx_path: Path, onnx_variants: Any) -> Path:
    """iris (ONNX), crash (fails in onnxruntime on 2 rows), broken (artifact damaged after push)."""
    home = tmp_path_factory.mktemp("routes-home")
    files = tmp_path_factory.mktemp("routes-files")
    crash = files / "crash.onnx"
    crash.write_bytes(reshape_onnx_bytes())
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("iris", onnx_path)
        registry.push("crash", crash)
        broken = registry.push("broken", onnx_variants(1))  # its own digest: iris stays intact
        artifact = registry.artifact_path(broken) / "model.onnx"
    artifact.chmod(0o644)
    artifact.write_bytes(b"not the bytes that were pushed")
    return home


def run(home: Path, refs: list[str], body: Callable[[Client], Awaitable[None]]) -> None:
    serve(home, refs, body, serve={"admin_token": TOKEN})


def assert_error(response: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    message = body["error"]["message"] if isinstance(body["error"], dict) else body["error"]
    for fragment in fragments:
        assert fragment in message, message
    if status >= 500:
        assert "Traceback" not in response.text and "/" not in message  # no internals, no paths
    return body


def test_readyz_lists_every_model_with_its_state(home: Path) -> None:
    async def body(client: Client) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 503
        readiness = response.json()
        assert readiness["ready"] is False
        models = readiness["models"]
        assert models["iris"] == {"state": "ready", "version": 1}
        assert models["iris:1"] == {"state": "ready", "version": 1}  # a pinned version: its own entry
        assert models["broken"]["state"] == "failed" and models["broken"]["version"] == 1
        assert "integrity" in models["broken"]["reason"]
        assert models["ghost"]["state"] == "failed" and models["ghost"]["version"] is None
        assert "ghost" in models["ghost"]["reason"]
        for probe in ("/v2/health/ready", "/ping"):
            same = await client.get(probe)
            assert (same.status_code, same.json()) == (503, readiness)

    run(home, ["iris", "iris:1", "broken", "ghost@production"], body)


def test_readyz_is_200_when_every_model_is_ready(home: Path) -> None:
    async def body(client: Client) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 200
        assert response.json() == {"ready": True, "models": {"iris": {"state": "ready", "version": 1}}}

    run(home, ["iris"], body)


def test_model_ready_route_reports_the_same_entry(home: Path) -> None:
    async def body(client: Client) -> None:
        ready = await client.get("/v2/models/iris/ready")
        assert (ready.status_code, ready.json()) == (
            200,
            {"name": "iris", "ready": True, "state": "ready", "version": 1},
        )
        broken = await client.get("/v2/models/broken/versions/1/ready")
        assert broken.status_code == 503
        assert broken.json()["state"] == "failed" and "integrity" in broken.json()["reason"]
        assert_error(await client.get("/v2/models/iris/versions/7/ready"), 404, "no version 7")
        assert_error(await client.get("/v2/models/nope/ready"), 404, "'nope'")

    run(home, ["iris", "broken"], body)


INFERENCE_ROUTES = [
    "/v1/models/iris:predict",
    "/v1/models/iris/versions/1:predict",
    "/v2/models/iris/infer",
    "/v2/models/iris/versions/1/infer",
    "/invocations",
    "/v1/embeddings",
]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_on_an_inference_route_is_405_with_allow(home: Path, method: str) -> None:
    async def body(client: Client) -> None:
        for path in INFERENCE_ROUTES:
            response = await client.request(method, path)
            assert_error(response, 405, method, path)
            assert response.headers["allow"] == "POST", path

    run(home, ["iris"], body)


def test_every_405_carries_allow(home: Path) -> None:
    async def body(client: Client) -> None:
        for method, path, allowed in [
            ("DELETE", "/healthz", {"GET", "HEAD"}),
            ("POST", "/readyz", {"GET", "HEAD"}),
            ("POST", "/v2/models/iris", {"GET", "HEAD"}),
            ("GET", "/v2/repository/index", {"POST"}),
            ("PUT", "/v2/repository/models/iris/load", {"POST"}),
        ]:
            response = await client.request(method, path)
            assert_error(response, 405, method)
            assert set(response.headers["allow"].split(", ")) == allowed, path

    run(home, ["iris"], body)


def test_unknown_route_is_404_in_the_one_error_shape(home: Path) -> None:
    async def body(client: Client) -> None:
        body = assert_error(await client.get("/v3/nothing"), 404, "/v3/nothing")
        assert body == {"error": "no route GET /v3/nothing", "field": "path"}

    run(home, ["iris"], body)


def test_a_runtime_crash_is_500_without_internals_and_counted_by_kind(home: Path) -> None:
    async def body(client: Client) -> None:
        labels = {"model": "crash", "version": "1", "protocol": "v2"}
        before = metric_sum((await client.get("/metrics")).text, "shipyard_server_errors_total", **labels)
        one_row = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
        assert (await client.post("/v2/models/crash/infer", json=one_row)).status_code == 200
        response = await client.post("/v2/models/crash/infer", json=V2_ROWS)
        assert_error(response, 500, "onnxruntime failed", "server log")
        assert "Reshape" not in response.text  # onnxruntime's own words stay in the log
        after = (await client.get("/metrics")).text
        assert metric_sum(after, "shipyard_server_errors_total", kind="model_error", **labels) == 1
        assert metric_sum(after, "shipyard_server_errors_total", **labels) - before == 1
        for family in text_string_to_metric_families(after):
            if family.name == "shipyard_server_errors":
                for sample in family.samples:
                    assert set(sample.labels) == {"model", "version", "protocol", "kind"}

    run(home, ["crash"], body)


def test_a_model_that_fails_to_load_on_management_load_is_500(home: Path) -> None:
    async def body(client: Client) -> None:
        response = await client.post("/v2/repository/models/broken/load", headers=AUTH)
        assert_error(response, 500, "broken:1 failed to load", "server log")
        assert "integrity" not in response.text
        assert_error(await client.get("/v2/models/broken"), 404)  # nothing was kept

    run(home, ["iris"], body)


def test_management_load_takes_a_reference_to_the_same_model(home: Path) -> None:
    async def body(client: Client) -> None:
        path = "/v2/repository/models/iris/load"
        loaded = await client.post(path, json={"parameters": {"ref": "iris:1"}}, headers=AUTH)
        assert loaded.json() == {"name": "iris", "version": "1"}
        other = await client.post(path, json={"parameters": {"ref": "crash:1"}}, headers=AUTH)
        assert_error(other, 400, "'crash:1'", "another model")
        bad = await client.post(path, json={"parameters": {"ref": "iris:one"}}, headers=AUTH)
        assert assert_error(bad, 400)["field"] == "ref"
        unknown = await client.post(path, json={"parameters": {"ref": "iris@nowhere"}}, headers=AUTH)
        assert_error(unknown, 404, "nowhere")

    run(home, ["crash"], body)


def test_requests_are_labelled_with_the_version_that_answered(home: Path) -> None:
    async def body(client: Client) -> None:
        ok = {"model": "iris", "version": "1", "status": "200"}
        counts = {}
        for protocol, path, payload in [
            ("v1", "/v1/models/iris:predict", {"instances": [ROW]}),
            ("sagemaker", "/invocations", [ROW]),
            ("v2", "/v2/models/iris/infer", V2_ROWS),
        ]:
            text = (await client.get("/metrics")).text
            counts[protocol] = metric_sum(text, "shipyard_server_requests_total", protocol=protocol, **ok)
            assert (await client.post(path, json=payload)).status_code == 200
        text = (await client.get("/metrics")).text
        for protocol, before in counts.items():
            after = metric_sum(text, "shipyard_server_requests_total", protocol=protocol, **ok)
            assert after - before == 1, protocol
        made_up = {"model": "made-up", "input": "x"}
        assert (await client.post("/v1/embeddings", json=made_up)).status_code == 404
        assert "made-up" not in (await client.get("/metrics")).text

    run(home, ["iris"], body)


def test_openapi_lists_every_route(home: Path) -> None:
    async def body(client: Client) -> None:
        spec = (await client.get("/openapi.json")).json()
        operations = {f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops}
        assert operations >= {
            "POST /v1/embeddings",
            "GET /v1/models",
            "GET /ping",
            "POST /invocations",
            "POST /v2/repository/index",
            "POST /v2/repository/models/{model}/load",
            "POST /v2/repository/models/{model}/unload",
            "GET /healthz",
            "GET /readyz",
            "GET /metrics",
            "GET /v2/health/live",
            "GET /v2/health/ready",
            "GET /v2/models/{model}/versions/{version}/ready",
            "POST /v2/models/{model}/versions/{version}/infer",
            "POST /v1/models/{model}:predict",
            "POST /v1/models/iris:predict",  # and a typed operation per served model
            "POST /v2/models/iris/infer",
        }
        version = spec["paths"]["/v2/models/{model}/versions/{version}/infer"]["post"]["parameters"][1]
        assert version == {
            "name": "version",
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
        assert "HEAD" not in {m.upper() for ops in spec["paths"].values() for m in ops}

    run(home, ["iris"], body)


def test_repository_index_honours_ready(home: Path) -> None:
    async def body(client: Client) -> None:
        every = (await client.post("/v2/repository/index", headers=AUTH)).json()
        assert {(e["name"], e["state"]) for e in every} >= {("iris", "READY"), ("crash", "UNLOADED")}
        assert any(e["name"] == "broken" and e["state"] != "READY" for e in every)
        ready = await client.post("/v2/repository/index", json={"ready": True}, headers=AUTH)
        assert [(e["name"], e["state"]) for e in ready.json()] == [("iris", "READY")]
        everything = await client.post("/v2/repository/index", json={"ready": False}, headers=AUTH)
        assert everything.json() == every
        bad = await client.post("/v2/repository/index", json={"ready": "yes"}, headers=AUTH)
        assert assert_error(bad, 400, '"ready"')["field"] == "ready"

    run(home, ["iris", "broken"], body)


def test_kserve_v1_live_and_model_list_beside_openai_fields(home: Path) -> None:
    """What KServe's V1 REST client reads: `status` at `/` (is_server_live), `models` at /v1/models."""

    async def body(client: Client) -> None:
        live = await client.get("/")
        assert live.status_code == 200 and live.headers["content-type"] == "application/json"
        assert live.json()["status"].lower() == "alive"
        models = (await client.get("/v1/models")).json()
        assert models["models"] == ["iris"]  # KServe V1
        assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["iris"]  # OpenAI
        assert (await client.get("/v1/models/iris")).json()["ready"] is True  # is_model_ready (V1)

    run(home, ["iris"], body)

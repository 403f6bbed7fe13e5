"""A model that fails to load leaves the server live, the other models serving, and the probes
saying which model is not ready and why."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from serve_support import ServeModels, Server, assert_error, iris_onnx_bytes, push_file

from shipyard.registry import Registry
from shipyard.settings import Settings

ROW = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def corrupt(path: Any) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def broken_server(
    serve_models: ServeModels, serve_launcher: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Serves iris-onnx (fine), broken (artifact damaged after push) and ghost@production (no such model)."""
    home = tmp_path_factory.mktemp("broken-home")
    files = tmp_path_factory.mktemp("broken-files")
    with Registry(settings=Settings.load(home=home)) as registry:
        push_file(registry, "iris-onnx", serve_models.onnx_bytes, files)
        version = push_file(
            registry, "broken", iris_onnx_bytes(serve_models.iris_v1, serve_models.x, "b"), files
        )
        artifact = registry.artifact_path(version) / "model.onnx"
    assert str(artifact).startswith(str(home / "artifacts" / "sha256"))
    corrupt(artifact)

    with serve_launcher(home, ["iris-onnx", "broken", "ghost@production"], wait_ready=False) as server:
        server.wait_until(
            lambda c: {m["state"] for m in c.get("/readyz").json()["models"].values()} == {"ready", "failed"}
        )
        yield server


@pytest.fixture
def client(broken_server: Server) -> Iterator[httpx.Client]:
    with broken_server.client() as c:
        yield c


def test_server_stays_live(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/v2/health/live").json() == {"live": True}


def test_readyz_names_the_model_and_the_reason(client: httpx.Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["ready"] is False
    assert body["models"]["iris-onnx"] == {"state": "ready", "version": 1}
    assert body["models"]["broken"]["state"] == body["models"]["ghost"]["state"] == "failed"
    assert "integrity" in body["models"]["broken"]["reason"]
    assert "model.onnx" in body["models"]["broken"]["reason"]
    assert "ghost" in body["models"]["ghost"]["reason"]
    assert "Traceback" not in response.text and "/" not in response.text  # no paths


@pytest.mark.parametrize("path", ["/v2/health/ready", "/ping"])
def test_other_readiness_probes_agree(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert "broken" in response.json()["models"]


def test_model_ready_endpoint_says_why(client: httpx.Client) -> None:
    response = client.get("/v2/models/broken/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["name"] == "broken"
    assert "integrity" in body["reason"]
    assert client.get("/v2/models/iris-onnx/ready").status_code == 200


def test_tritonclient_sees_the_same(broken_server: Server) -> None:
    c = triton.InferenceServerClient(url=broken_server.host_port)
    try:
        assert c.is_server_live()
        assert not c.is_server_ready()
        assert not c.is_model_ready("broken")
        assert not c.is_model_ready("ghost")
        assert c.is_model_ready("iris-onnx")
    finally:
        c.close()


def test_other_models_keep_serving(client: httpx.Client, serve_models: ServeModels) -> None:
    response = client.post("/v2/models/iris-onnx/infer", json=ROW)
    assert response.status_code == 200, response.text
    proba = next(o for o in response.json()["outputs"] if o["name"] == "probabilities")["data"]
    np.testing.assert_allclose(
        proba, serve_models.iris_v1.predict_proba([[5.1, 3.5, 1.4, 0.2]])[0], atol=1e-4
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v2/models/broken/infer", ROW),
        ("POST", "/v1/models/broken:predict", {"instances": [[5.1, 3.5, 1.4, 0.2]]}),
        ("GET", "/v2/models/broken", None),
        ("POST", "/v2/models/ghost/infer", ROW),
    ],
    ids=["v2-infer", "v1-predict", "v2-metadata", "unresolved"],
)
def test_requests_to_the_failed_model_are_503_with_the_reason(
    client: httpx.Client, method: str, path: str, body: Any
) -> None:
    response = client.request(method, path, json=body)
    assert_error(response, 503, "not ready")


def test_sagemaker_invocations_of_the_failed_model(client: httpx.Client) -> None:
    response = client.post(
        "/invocations", json=[[1, 2, 3, 4]], headers={"x-amzn-sagemaker-target-model": "broken"}
    )
    assert_error(response, 503, "broken")

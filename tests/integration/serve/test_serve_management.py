"""Triton's model-repository extension: index, load, unload, behind an admin token.

The tests in this module share one server with a token and run in order: unloading and loading
change what it serves.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from serve_support import ADMIN_TOKEN, ServeModels
from tritonclient.utils import InferenceServerException

from http_errors import assert_error
from prometheus_text import metric_sum
from servers import Server

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROW = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


@pytest.fixture(scope="module")
def admin_server(serve_models: ServeModels, serve_launcher: Callable[..., Any]) -> Iterator[Server]:
    env = {"SHIPYARD_SERVE__ADMIN_TOKEN": ADMIN_TOKEN}
    with serve_launcher(serve_models.home, ["iris-onnx", "multi"], env=env) as server:
        yield server


@pytest.fixture
def admin(admin_server: Server) -> Iterator[httpx.Client]:
    with admin_server.client() as client:
        yield client


@pytest.fixture
def triton_admin(admin_server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=admin_server.host_port)
    yield client
    client.close()


def test_management_is_disabled_without_an_admin_token(http: httpx.Client) -> None:
    for path in (
        "/v2/repository/index",
        "/v2/repository/models/iris/load",
        "/v2/repository/models/iris/unload",
    ):
        assert_error(http.post(path, headers=AUTH), 403, "SHIPYARD_SERVE__ADMIN_TOKEN")
    assert http.get("/v2/models/iris/ready").status_code == 200  # nothing was unloaded


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
    ],
    ids=["missing", "wrong-token", "no-scheme", "basic"],
)
def test_management_needs_the_bearer_token(admin: httpx.Client, headers: dict[str, str]) -> None:
    assert_error(admin.post("/v2/repository/index", headers=headers), 401, "Bearer")
    assert_error(admin.post("/v2/repository/models/multi/unload", headers=headers), 401)
    assert admin.get("/v2/models/multi/ready").status_code == 200


def test_index_lists_served_and_registered_models(triton_admin: triton.InferenceServerClient) -> None:
    index = triton_admin.get_model_repository_index(headers=AUTH)
    by_name = {(e["name"], e["version"]): e for e in index}
    assert by_name[("iris-onnx", "1")]["state"] == "READY"
    assert by_name[("multi", "1")]["state"] == "READY"
    assert by_name[("iris", "2")]["state"] == "UNLOADED"  # in the registry, not served here
    assert all(set(e) >= {"name", "version", "state", "reason"} for e in index)


def test_file_overrides_are_refused(admin: httpx.Client) -> None:
    payload = base64.b64encode(b"import os; os.system('id')").decode()
    body = {"parameters": {"config": "{}", "file:1/model.py": payload}}
    assert_error(admin.post("/v2/repository/models/multi/load", json=body, headers=AUTH), 403, "not allowed")
    body = {"parameters": {"file:1/model.onnx": payload}}
    assert_error(admin.post("/v2/repository/models/evil/load", json=body, headers=AUTH), 403)
    assert admin.get("/v2/models/evil").status_code == 404


def test_config_overrides_are_refused(triton_admin: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="config overrides are not supported") as caught:
        triton_admin.load_model("multi", headers=AUTH, config='{"max_batch_size": 8}')
    assert caught.value.status() == "400"


def test_load_body_must_be_an_object_of_parameters(admin: httpx.Client) -> None:
    path = "/v2/repository/models/multi/load"
    assert_error(admin.post(path, content=b"{oops", headers=AUTH), 400)
    assert_error(admin.post(path, json={"parameters": [1]}, headers=AUTH), 400, "parameters")


def test_unload_then_the_model_is_gone(
    triton_admin: triton.InferenceServerClient, admin: httpx.Client
) -> None:
    triton_admin.unload_model("multi", headers=AUTH)
    assert_error(admin.get("/v2/models/multi"), 404, "'multi'", "iris-onnx")
    assert_error(admin.post("/v2/models/multi/infer", json=ROW), 404)
    assert not triton_admin.is_model_ready("multi")
    assert admin.get("/readyz").status_code == 200  # what is still requested is ready
    assert admin.post("/v2/models/iris-onnx/infer", json=ROW).status_code == 200
    index = {(e["name"], e["state"]) for e in triton_admin.get_model_repository_index(headers=AUTH)}
    assert ("multi", "UNLOADED") in index


def test_unload_of_a_model_not_loaded_is_404(admin: httpx.Client) -> None:
    assert_error(admin.post("/v2/repository/models/multi/unload", headers=AUTH), 404, "'multi'")


def test_load_again_serves_it(triton_admin: triton.InferenceServerClient) -> None:
    triton_admin.load_model("multi", headers=AUTH)
    assert triton_admin.is_model_ready("multi")
    x = np.ones((1, 4), dtype=np.float32)
    tensors = []
    for name, arr, kind in (
        ("x", x, "FP32"),
        ("n", np.array([[3]]), "INT64"),
        ("s", np.array([["z"]], dtype=object), "BYTES"),
    ):
        tensor = triton.InferInput(name, list(arr.shape), kind)
        tensor.set_data_from_numpy(arr)
        tensors.append(tensor)
    result = triton_admin.infer("multi", tensors)
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)


def test_load_a_model_the_server_did_not_start_with(admin: httpx.Client, serve_models: ServeModels) -> None:
    response = admin.post(
        "/v2/repository/models/iris/load", json={"parameters": {"ref": "iris:2"}}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "iris", "version": "2"}
    row = [[6.7, 3.0, 5.2, 2.3]]
    predicted = admin.post("/v1/models/iris:predict", json={"instances": row})
    assert predicted.status_code == 200, predicted.text
    np.testing.assert_allclose(
        predicted.json()["predictions"][0]["probabilities"],
        serve_models.iris_v2.predict_proba(row)[0],
        atol=1e-9,
    )


def test_load_with_a_ref_naming_another_model_is_400(admin: httpx.Client) -> None:
    body = {"parameters": {"ref": "multi:1"}}
    assert_error(
        admin.post("/v2/repository/models/iris-onnx/load", json=body, headers=AUTH), 400, "another model"
    )


def load(admin: httpx.Client, name: str, ref: str | None = None) -> httpx.Response:
    body = {"parameters": {"ref": ref}} if ref else {}
    return admin.post(f"/v2/repository/models/{name}/load", json=body, headers=AUTH)


def loaded_models(admin: httpx.Client) -> float:
    return metric_sum(admin.get("/metrics").text, "shipyard_server_loaded_models")


@pytest.mark.parametrize(
    ("name", "ref"),
    [("no-such-model", None), ("iris", "iris@no-such-alias"), ("iris", "iris:99")],
    ids=["unknown-model", "unknown-alias", "unknown-version"],
)
def test_a_load_that_cannot_resolve_is_404_and_changes_nothing(
    admin: httpx.Client, name: str, ref: str | None
) -> None:
    if name == "iris":
        assert load(admin, "iris", "iris:2").status_code == 200
    try:
        response = load(admin, name, ref)
        ready = admin.get("/readyz").status_code
    finally:
        admin.post(f"/v2/repository/models/{name}/unload", headers=AUTH)  # leave the server as it was
    assert ready == 200
    assert_error(response, 404, name)


def test_loading_a_ref_to_an_already_loaded_version_loads_nothing_twice(admin: httpx.Client) -> None:
    assert load(admin, "iris", "iris:2").status_code == 200
    try:
        before = loaded_models(admin)
        response = load(admin, "iris", "iris")  # the latest version is 2: already loaded
        after = loaded_models(admin)
    finally:
        admin.post("/v2/repository/models/iris/unload", headers=AUTH)
    assert response.status_code == 200 and response.json()["version"] == "2"
    assert after == before

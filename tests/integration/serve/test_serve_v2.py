"""Open Inference Protocol V2 through the official `tritonclient.http` client, with its defaults.

tritonclient sends inputs as binary tensors and asks for binary outputs unless told otherwise, so
these tests exercise the binary-tensor extension end to end; raw httpx requests cover what the
client does not expose (the echoed id, the exact error bodies).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from serve_support import ServeModels
from serve_support import triton_raises as raises

from http_errors import assert_error
from servers import Server

X4 = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=server.host_port)
    yield c
    c.close()


def infer_input(name: str, arr: np.ndarray, datatype: str, *, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput(name, list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr, binary_data=binary)
    return tensor


def multi_inputs(*, binary: bool) -> tuple[list[triton.InferInput], dict[str, np.ndarray]]:
    arrays = {
        "x": np.arange(12, dtype=np.float32).reshape(3, 4) / 3,
        "n": np.array([[-(2**40)], [0], [7]], dtype=np.int64),
        "s": np.array([["setosa"], ["vérsicolor"], [""]], dtype=object),
    }
    types = {"x": "FP32", "n": "INT64", "s": "BYTES"}
    return [infer_input(k, v, types[k], binary=binary) for k, v in arrays.items()], arrays


def test_server_live_and_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


def test_health_bodies_satisfy_the_kserve_client_too(http: httpx.Client) -> None:
    live = http.get("/v2/health/live")
    ready = http.get("/v2/health/ready")
    assert live.status_code == ready.status_code == 200
    assert live.headers["content-type"] == ready.headers["content-type"] == "application/json"
    assert live.json()["live"] is True
    assert ready.json()["ready"] is True


@pytest.mark.parametrize(("model", "version"), [("iris", ""), ("iris", "1"), ("iris", "2"), ("multi", "")])
def test_model_ready(client: triton.InferenceServerClient, model: str, version: str) -> None:
    assert client.is_model_ready(model, version)


def test_model_ready_body(http: httpx.Client) -> None:
    response = http.get("/v2/models/iris-onnx/ready")
    assert response.status_code == 200
    assert response.json()["name"] == "iris-onnx" and response.json()["ready"] is True


def test_unknown_model_is_not_ready(client: triton.InferenceServerClient) -> None:
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("iris", "9")


def test_server_metadata_advertises_binary_tensors(client: triton.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "shipyard"
    assert isinstance(meta["version"], str)
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata("multi")
    assert meta["name"] == "multi"
    assert meta["versions"] == ["1"]
    assert meta["platform"]
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "n", "datatype": "INT64", "shape": [-1, 1]},
        {"name": "s", "datatype": "BYTES", "shape": [-1, 1]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["y", "n_out", "s_out"]
    assert meta["parameters"]["digest"].startswith("sha256:")


def test_model_metadata_lists_every_served_version(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata("iris", "2")
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]


def test_model_config(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config("iris-onnx")
    assert config["name"] == "iris-onnx"
    assert config["max_batch_size"] >= 1
    assert [t["name"] for t in config["input"]] == ["X"]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert {t["name"] for t in config["output"]} == {"label", "probabilities"}
    # Triton's shape: dims without the batch dimension, the names its clients know.
    assert config["max_batch_size"] == 32
    assert config["input"][0]["dims"] == [4]
    assert {t["name"]: t["dims"] for t in config["output"]} == {"label": [], "probabilities": [3]}
    assert (config["platform"], config["backend"]) == ("onnxruntime_onnx", "onnxruntime")
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 2000}
    assert config["instance_group"] == [{"name": "iris-onnx", "count": 1, "kind": "KIND_CPU"}]
    assert client.get_model_metadata("iris-onnx")["platform"] == "onnxruntime_onnx"
    python = client.get_model_config("iris", "2")  # skops: run in Python
    assert (python["platform"], python["backend"]) == ("python", "python")


def test_inference_statistics(client: triton.InferenceServerClient) -> None:
    client.infer("iris-onnx", [infer_input("X", X4.astype(np.float32), "FP32")])
    stats = client.get_inference_statistics("iris-onnx")
    entry = stats["model_stats"][0]
    assert entry["name"] == "iris-onnx" and entry["request_count"] >= 1 and entry["inference_count"] >= 3


def test_infer_onnx_matches_scikit_learn(
    client: triton.InferenceServerClient, serve_models: ServeModels
) -> None:
    x = serve_models.x[::10].astype(np.float32)
    result = client.infer("iris-onnx", [infer_input("X", x, "FP32")])
    proba = result.as_numpy("probabilities")
    assert proba.dtype == np.float32 and proba.shape == (len(x), 3)
    np.testing.assert_allclose(proba, serve_models.iris_v1.predict_proba(x), atol=1e-4)
    np.testing.assert_array_equal(result.as_numpy("label"), serve_models.iris_v1.predict(x))
    response = result.get_response()
    assert response["model_name"] == "iris-onnx" and response["model_version"] == "1"
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])  # sent binary


def test_infer_skops_model_fp64(client: triton.InferenceServerClient, serve_models: ServeModels) -> None:
    result = client.infer("iris", [infer_input("input", X4, "FP64")])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), serve_models.iris_v1.predict_proba(X4), atol=1e-9
    )
    assert result.get_response()["model_version"] == "1"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_fp32_int64_bytes_inputs(client: triton.InferenceServerClient, binary: bool) -> None:
    inputs, arrays = multi_inputs(binary=binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("y", "n_out", "s_out")]
    result = client.infer("multi", inputs, outputs=outputs)
    np.testing.assert_allclose(result.as_numpy("y"), arrays["x"] * 2)
    assert result.as_numpy("y").dtype == np.float32
    np.testing.assert_array_equal(result.as_numpy("n_out"), arrays["n"])
    assert result.as_numpy("n_out").dtype == np.int64
    texts = result.as_numpy("s_out")
    assert texts.shape == (3, 1)
    decoded = [t.decode() if isinstance(t, bytes) else t for t in texts.ravel()]
    assert decoded == ["setosa", "vérsicolor", ""]


def test_infer_with_default_outputs_gets_them_all_binary(client: triton.InferenceServerClient) -> None:
    inputs, arrays = multi_inputs(binary=True)
    result = client.infer("multi", inputs)
    outs = result.get_response()["outputs"]
    assert [o["name"] for o in outs] == ["y", "n_out", "s_out"]
    assert all("data" not in o for o in outs)
    np.testing.assert_array_equal(result.as_numpy("n_out"), arrays["n"])


def test_requested_outputs_mix_json_and_binary(client: triton.InferenceServerClient) -> None:
    inputs, arrays = multi_inputs(binary=True)
    outputs = [triton.InferRequestedOutput("n_out", binary_data=False), triton.InferRequestedOutput("y")]
    result = client.infer("multi", inputs, outputs=outputs)
    outs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert set(outs) == {"n_out", "y"}  # only what was asked for
    assert outs["n_out"]["data"] == arrays["n"].ravel().tolist()
    assert outs["y"]["parameters"]["binary_data_size"] == 3 * 4 * 4
    np.testing.assert_allclose(result.as_numpy("y"), arrays["x"] * 2)


def test_version_specific_requests(client: triton.InferenceServerClient, serve_models: ServeModels) -> None:
    x = [infer_input("input", X4, "FP64")]
    default = client.infer("iris", x)
    v1 = client.infer("iris", x, model_version="1")
    v2 = client.infer("iris", x, model_version="2")
    assert [r.get_response()["model_version"] for r in (default, v1, v2)] == ["1", "1", "2"]
    np.testing.assert_allclose(
        v2.as_numpy("probabilities"), serve_models.iris_v2.predict_proba(X4), atol=1e-9
    )
    assert not np.allclose(v1.as_numpy("probabilities"), v2.as_numpy("probabilities"), atol=1e-3)


def test_classification_extension(client: triton.InferenceServerClient, serve_models: ServeModels) -> None:
    outputs = [triton.InferRequestedOutput("probabilities", class_count=2)]
    result = client.infer("iris", [infer_input("input", X4, "FP64")], outputs=outputs)
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 2)
    proba = serve_models.iris_v1.predict_proba(X4)
    for row, expected in zip(top, proba, strict=True):
        score, index, label = row[0].decode().split(":")
        assert int(index) == int(np.argmax(expected)) == int(label)
        assert float(score) == pytest.approx(expected.max(), rel=1e-4)


def test_classification_of_a_one_dimensional_output_keeps_the_batch(
    client: triton.InferenceServerClient, serve_models: ServeModels
) -> None:
    rows = X4[:2].astype(np.float32)
    outputs = [triton.InferRequestedOutput("label", class_count=3)]
    result = client.infer("iris-onnx", [infer_input("X", rows, "FP32")], outputs=outputs)
    top = result.as_numpy("label")
    assert top.shape == (2, 1)  # one value per row, so one class per row: not one row of two
    labels = serve_models.iris_v1.predict(rows)
    assert [float(row[0].decode().split(":")[0]) for row in top] == [float(v) for v in labels]


def test_request_id_echoed(client: triton.InferenceServerClient, http: httpx.Client) -> None:
    result = client.infer("iris-onnx", [infer_input("X", X4.astype(np.float32), "FP32")], request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    body = {
        "id": "abc-123",
        "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": X4[0].tolist()}],
    }
    response = http.post("/v2/models/iris-onnx/infer", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert payload["id"] == "abc-123" and payload["model_name"] == "iris-onnx"
    assert {o["name"] for o in payload["outputs"]} == {"label", "probabilities"}
    assert all("data" in o for o in payload["outputs"])  # JSON out when JSON came in


def test_infer_through_a_version_path_and_reserved_parameters(http: httpx.Client) -> None:
    body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [X4[0].tolist()]}],
        "parameters": {"sequence_id": 0, "priority": 1, "timeout": 1000000},
    }
    response = http.post("/v2/models/iris/versions/2/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "2"


def test_compressed_request_and_response(client: triton.InferenceServerClient) -> None:
    inputs, arrays = multi_inputs(binary=True)
    result = client.infer(
        "multi", inputs, request_compression_algorithm="gzip", response_compression_algorithm="deflate"
    )
    np.testing.assert_allclose(result.as_numpy("y"), arrays["x"] * 2)


def test_unknown_model_is_404_listing_served_models(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    with raises(404, "'nope'", "iris", "iris-onnx", "multi"):
        client.infer("nope", [infer_input("X", X4.astype(np.float32), "FP32")])
    with raises(404, "nope"):
        client.get_model_metadata("nope")
    with raises(404, "nope"):
        client.get_model_config("nope")
    message = assert_error(http.get("/v2/models/nope"), 404, "iris-onnx", "multi")
    assert message.startswith("Request for unknown model: 'nope'")  # Triton's wording first


def test_unknown_version_is_404_listing_served_versions(client: triton.InferenceServerClient) -> None:
    with raises(404, "version 9", "1, 2"):
        client.infer("iris", [infer_input("input", X4, "FP64")], model_version="9")
    with raises(404, "version 9"):
        client.get_model_metadata("iris", "9")


def test_malformed_version_is_400(http: httpx.Client) -> None:
    assert_error(http.get("/v2/models/iris/versions/abc"), 400, "'abc'")


def test_wrong_input_name_is_400_naming_the_signature(client: triton.InferenceServerClient) -> None:
    with raises(400, "'input0'", "X: FP32[?, 4]"):
        client.infer("iris-onnx", [infer_input("input0", X4.astype(np.float32), "FP32")])


def test_wrong_datatype_is_400_naming_the_signature(client: triton.InferenceServerClient) -> None:
    with raises(400, "FP64", "X: FP32[?, 4]"):
        client.infer("iris-onnx", [infer_input("X", X4, "FP64")])


def test_wrong_shape_is_400_naming_the_signature(client: triton.InferenceServerClient) -> None:
    with raises(400, "'X'", "[3, 3]", "expected 4", "X: FP32[?, 4]"):
        client.infer("iris-onnx", [infer_input("X", X4[:, :3].astype(np.float32), "FP32")])


def test_missing_input_is_400(client: triton.InferenceServerClient) -> None:
    inputs, _ = multi_inputs(binary=True)
    with raises(400, "missing input(s) 's'"):
        client.infer("multi", inputs[:2])


def test_inputs_disagreeing_on_batch_size_is_400(client: triton.InferenceServerClient) -> None:
    inputs, arrays = multi_inputs(binary=True)
    inputs[1] = infer_input("n", arrays["n"][:2], "INT64")
    with raises(400, "batch size"):
        client.infer("multi", inputs)


def test_unknown_requested_output_is_400(client: triton.InferenceServerClient) -> None:
    with raises(400, "unknown output 'nope'"):
        client.infer(
            "iris-onnx",
            [infer_input("X", X4.astype(np.float32), "FP32")],
            outputs=[triton.InferRequestedOutput("nope")],
        )


def test_element_count_not_matching_shape_is_400(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert_error(http.post("/v2/models/iris-onnx/infer", json=body), 400, "4 elements", "[2, 4]")


@pytest.mark.parametrize(
    ("model", "outputs"),
    [
        ("iris-onnx", [{"name": "label", "parameters": [1]}]),
        ("iris-onnx", [{"name": ["label"]}]),
        ("multi", [{"name": "s_out", "parameters": {"classification": 1}}]),
    ],
    ids=["parameters-list", "name-list", "classify-text"],
)
def test_bad_requested_outputs_are_400_not_500(http: httpx.Client, model: str, outputs: list[Any]) -> None:
    inputs = {
        "iris-onnx": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "multi": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "n", "shape": [1, 1], "datatype": "INT64", "data": [1]},
            {"name": "s", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]},
        ],
    }[model]
    response = http.post(f"/v2/models/{model}/infer", json={"inputs": inputs, "outputs": outputs})
    if response.status_code >= 500:
        assert_error(response, response.status_code)  # even a crash keeps its traceback to itself
    assert_error(response, 400)


@pytest.mark.parametrize(
    "version",
    ["0", "-1", "1.0", "%C2%B2", "%D9%A3", "9" * 5000],
    ids=["zero", "negative", "decimal", "superscript-two", "arabic-indic-three", "5000-digits"],
)
def test_malformed_version_is_400_not_500(http: httpx.Client, version: str) -> None:
    """Only ASCII digits name a version: int() alone would take '²' (and crash) or '٣' (as 3)."""
    assert_error(http.get(f"/v2/models/iris/versions/{version}"), 400, "version")
    assert_error(http.post(f"/v2/models/iris/versions/{version}/infer", json={"inputs": []}), 400, "version")
    assert_error(
        http.post(f"/v1/models/iris/versions/{version}:predict", json={"instances": [[1, 2, 3, 4]]}), 400
    )


def test_concurrent_requests_each_get_their_own_rows(server: Server) -> None:
    """Many requests in flight at once are merged into batches and split back to their owners."""
    client = triton.InferenceServerClient(url=server.host_port, concurrency=8)
    try:
        pending = []
        for i in range(32):
            rows = 1 + i % 3
            x = np.full((rows, 4), i, dtype=np.float32)
            n = np.full((rows, 1), i, dtype=np.int64)
            s = np.array([[f"request {i} row {r}"] for r in range(rows)], dtype=object)
            inputs = [infer_input("x", x, "FP32"), infer_input("n", n, "INT64"), infer_input("s", s, "BYTES")]
            pending.append((i, rows, client.async_infer("multi", inputs, request_id=str(i))))
        for i, rows, future in pending:
            result = future.get_result(timeout=30)
            assert result.get_response()["id"] == str(i)
            np.testing.assert_array_equal(result.as_numpy("y"), np.full((rows, 4), 2 * i, dtype=np.float32))
            np.testing.assert_array_equal(result.as_numpy("n_out"), np.full((rows, 1), i))
            assert [t.decode() for t in result.as_numpy("s_out").ravel()] == [
                f"request {i} row {r}" for r in range(rows)
            ]
    finally:
        client.close()


def test_model_ready_with_a_malformed_version_is_400(http: httpx.Client) -> None:
    assert_error(http.get("/v2/models/iris/versions/0/ready"), 400, "version")

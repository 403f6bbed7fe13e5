"""Row-oriented protocols: TF Serving / KServe V1, SageMaker (/ping, /invocations) and Vertex AI."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from serve_support import ServeModels

from http_errors import assert_error
from servers import Server, free_port

X4 = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def proba_of(predictions: list[dict[str, Any]]) -> np.ndarray:
    return np.array([p["probabilities"] for p in predictions])


def test_v1_instances_row_format(http: httpx.Client, serve_models: ServeModels) -> None:
    response = http.post("/v1/models/iris:predict", json={"instances": X4})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    assert set(predictions[0]) == {"label", "probabilities"}  # several outputs: one object per row
    np.testing.assert_allclose(
        proba_of(predictions), serve_models.iris_v1.predict_proba(np.array(X4)), atol=1e-9
    )
    assert [p["label"] for p in predictions] == serve_models.iris_v1.predict(np.array(X4)).tolist()


def test_v1_inputs_columnar_format(http: httpx.Client, serve_models: ServeModels) -> None:
    for body in ({"inputs": X4}, {"inputs": {"X": X4}}):
        response = http.post("/v1/models/iris-onnx:predict", json=body)
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(
            proba_of(response.json()["predictions"]),
            serve_models.iris_v1.predict_proba(np.array(X4)),
            atol=1e-4,
        )


def test_v1_named_instances_for_a_one_input_model(http: httpx.Client) -> None:
    response = http.post("/v1/models/iris-onnx:predict", json={"instances": [{"X": row} for row in X4]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 3


def test_v1_one_instance_without_batch_axis(http: httpx.Client) -> None:
    response = http.post("/v1/models/iris-onnx:predict", json={"inputs": X4[0]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


def test_v1_multi_input_model_rows_and_columns(http: httpx.Client) -> None:
    rows = [{"x": [1, 2, 3, 4], "n": [7], "s": ["a"]}, {"x": [0, 0, 0, 1], "n": [-1], "s": ["bé"]}]
    by_rows = http.post("/v1/models/multi:predict", json={"instances": rows})
    columns = {"x": [r["x"] for r in rows], "n": [r["n"] for r in rows], "s": [r["s"] for r in rows]}
    by_columns = http.post("/v1/models/multi:predict", json={"inputs": columns})
    for response in (by_rows, by_columns):
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert predictions == [
            {"y": [2.0, 4.0, 6.0, 8.0], "n_out": [7], "s_out": ["a"]},
            {"y": [0.0, 0.0, 0.0, 2.0], "n_out": [-1], "s_out": ["bé"]},
        ]


def test_v1_multi_input_model_needs_named_instances(http: httpx.Client) -> None:
    response = http.post("/v1/models/multi:predict", json={"instances": [[1, 2, 3, 4]]})
    assert_error(response, 400, "several inputs", "x, n, s")


def test_v1_version_path(http: httpx.Client, serve_models: ServeModels) -> None:
    response = http.post("/v1/models/iris/versions/2:predict", json={"instances": X4})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        proba_of(response.json()["predictions"]), serve_models.iris_v2.predict_proba(np.array(X4)), atol=1e-9
    )


def test_v1_model_status(http: httpx.Client) -> None:
    status = http.get("/v1/models/iris")
    assert status.status_code == 200
    body = status.json()
    assert body["name"] == "iris" and body["ready"] is True
    assert body["model_version_status"][0]["version"] == "1"
    assert body["model_version_status"][0]["state"] == "AVAILABLE"
    pinned = http.get("/v1/models/iris/versions/2").json()
    assert pinned["model_version_status"][0]["version"] == "2"
    assert_error(http.get("/v1/models/nope"), 404, "'nope'", "iris")


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"instances": X4, "inputs": X4}, ["exactly one"]),
        ({"rows": X4}, ["instances"]),
        ({"instances": []}, ["non-empty"]),
        ({"instances": [[1, 2, 3]]}, ["wrong number of features", "expected 4"]),
        ({"instances": [[1, 2, 3, 4], [1, 2]]}, ["ragged"]),
        ({"instances": [["a", "b", "c", "d"]]}, ["expects numbers"]),
        ({"instances": [[1, 2, 3, "4"]]}, ["expects numbers"]),
        ({"instances": [[1, 2, 3, None]]}, ["expects numbers"]),
        ("just text", ["body must be"]),
    ],
    ids=["both", "neither", "empty", "features", "ragged", "text", "numeric-text", "null", "string-body"],
)
def test_v1_bad_bodies_are_400(http: httpx.Client, body: Any, fragments: list[str]) -> None:
    assert_error(http.post("/v1/models/iris-onnx:predict", json=body), 400, *fragments)


def test_v1_fractional_values_for_an_integer_input_are_refused(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/multi:predict", json={"instances": [{"x": [1, 2, 3, 4], "n": [1.5], "s": ["a"]}]}
    )
    assert_error(response, 400, "fractional")


def test_sagemaker_ping(http: httpx.Client) -> None:
    response = http.get("/ping")
    assert response.status_code == 200
    assert response.json()["ready"] is True


def test_sagemaker_invocations_json(http: httpx.Client, serve_models: ServeModels) -> None:
    expected = serve_models.iris_v1.predict_proba(np.array(X4))
    for body in ({"instances": X4}, X4):  # the object form, and the bare list SageMaker clients send
        response = http.post("/invocations", json=body)  # no target: the first model served
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(proba_of(response.json()["predictions"]), expected, atol=1e-9)


def test_sagemaker_invocations_csv(http: httpx.Client, serve_models: ServeModels) -> None:
    csv = "\n".join(",".join(str(v) for v in row) for row in X4) + "\n\n"
    response = http.post(
        "/invocations",
        content=csv.encode(),
        headers={"content-type": "text/csv", "x-amzn-sagemaker-target-model": "iris-onnx"},
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        proba_of(response.json()["predictions"]), serve_models.iris_v1.predict_proba(np.array(X4)), atol=1e-4
    )


@pytest.mark.parametrize(
    ("csv", "fragments"),
    [
        (b"5.1,3.5,abc,0.2\n", ["line 1", "not a number"]),
        (b"1,2,3,4\n1,2,x,4\n", ["line 2"]),
        (b"\n\n", ["no rows"]),
        (b"\xff\xfe1,2", ["UTF-8"]),
        (b"1,2,3\n", ["expected 4"]),
    ],
    ids=["text-cell", "second-line", "empty", "not-utf8", "features"],
)
def test_sagemaker_bad_csv_is_400(http: httpx.Client, csv: bytes, fragments: list[str]) -> None:
    response = http.post("/invocations", content=csv, headers={"content-type": "text/csv"})
    assert_error(response, 400, *fragments)


def test_sagemaker_unknown_target_model_is_404(http: httpx.Client) -> None:
    response = http.post("/invocations", json=X4, headers={"x-amzn-sagemaker-target-model": "nope"})
    assert_error(response, 404, "'nope'", "iris-onnx")


def test_sagemaker_unsupported_content_type_is_415(http: httpx.Client) -> None:
    response = http.post("/invocations", content=b"<x/>", headers={"content-type": "application/xml"})
    assert_error(response, 415, "text/csv")


def test_vertex_ai_routes_and_port_from_the_environment(
    serve_models: ServeModels, serve_launcher: Callable[..., Any]
) -> None:
    port = free_port()
    env = {"AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": "/health", "AIP_PREDICT_ROUTE": "/predict"}
    with serve_launcher(serve_models.home, ["iris-onnx"], env=env, port=None) as server:
        assert isinstance(server, Server)
        assert server.port == port
        with server.client() as client:
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["ready"] is True
            body = {"instances": X4, "parameters": {"confidence": 0.5}}  # Vertex sends parameters too
            response = client.post("/predict", json=body)
            assert response.status_code == 200, response.text
            np.testing.assert_allclose(
                proba_of(response.json()["predictions"]),
                serve_models.iris_v1.predict_proba(np.array(X4)),
                atol=1e-4,
            )
            assert client.get("/ping").status_code == 200  # the SageMaker routes stay too


@pytest.mark.parametrize("value", [1e300, 10**23], ids=["huge-float", "huge-int"])
def test_v1_integers_out_of_range_are_refused(http: httpx.Client, value: float) -> None:
    response = http.post(
        "/v1/models/multi:predict", json={"instances": [{"x": [1, 2, 3, 4], "n": [value], "s": ["a"]}]}
    )
    assert_error(response, 400, "'n'")


def test_v1_floats_too_large_for_fp32_are_refused(http: httpx.Client) -> None:
    response = http.post("/v1/models/iris-onnx:predict", json={"instances": [[1e39, 3.5, 1.4, 0.2]]})
    assert_error(response, 400, "'X' has values outside the range of FP32")


def test_v1_metadata_of_any_model_in_tf_serving_shape(http: httpx.Client) -> None:
    """Every model answers TF Serving's metadata route, as one serving_default predict signature."""
    body = http.get("/v1/models/iris-onnx/metadata").json()
    assert body["model_spec"] == {"name": "iris-onnx", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    x = signature["inputs"]["X"]
    assert x["dtype"] == "DT_FLOAT" and x["name"] == "X"
    assert [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "4"]
    assert_error(http.get("/v1/models/nope/metadata"), 404, "'nope'")

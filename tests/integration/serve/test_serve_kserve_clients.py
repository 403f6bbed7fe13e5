"""KServe's official Python clients (`InferenceRESTClient` V1 and V2, `InferenceGRPCClient`) and
MLServer's `mlserver infer` against one real `shipyard serve --grpc-port N`.

The clients live in their own venvs (`scripts/install-kserve.sh`: kserve and mlserver pin
protobuf 6 and conflicting starlettes): each test runs `kserve_calls.py` with .venv-kserve's python,
or `mlserver infer` from .venv-mlserver, and checks what they print or write against the model's
own prediction (onnxruntime on the same bytes). Without the venvs, the tests skip (no server
starts), naming the script.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from serve_support import ServeModels

from servers import Server

ROOT = Path(__file__).resolve().parents[3]
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
MLSERVER = ROOT / ".venv-mlserver" / "bin" / "mlserver"
CALLS = Path(__file__).with_name("kserve_calls.py")
ROWS = 3  # iris rows sent per request
UNKNOWN = "Request for unknown model: 'nope'"
# Checked when the tests are collected, so that no server starts only to be skipped.
needs_kserve = pytest.mark.skipif(
    not KSERVE_PYTHON.exists(),
    reason=f"KServe's client is not in {KSERVE_PYTHON.parents[1]}: run scripts/install-kserve.sh",
)
needs_mlserver = pytest.mark.skipif(
    not MLSERVER.exists(), reason=f"MLServer is not in {MLSERVER.parents[1]}: run scripts/install-kserve.sh"
)


@pytest.fixture(scope="module")
def endpoints(serve_models: ServeModels, serve_launcher: Callable[..., Any]) -> Iterator[dict[str, str]]:
    """{"rest": URL, "grpc": HOST:PORT} of a server holding iris-onnx and multi."""
    args = ["--max-batch-delay-ms", "0"]
    server: Server
    with serve_launcher(serve_models.home, ["iris-onnx", "multi"], args=args, grpc=True) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield {"rest": server.url, "grpc": target}


@pytest.fixture(scope="module")
def expected(serve_models: ServeModels) -> dict[str, np.ndarray]:
    """iris-onnx's own answer for the first ROWS rows: onnxruntime on the served bytes."""
    import onnxruntime as ort

    session = ort.InferenceSession(serve_models.onnx_bytes, providers=["CPUExecutionProvider"])
    label, probabilities = session.run(["label", "probabilities"], {"X": iris(serve_models)})
    return {"label": label, "probabilities": probabilities}


def iris(models: ServeModels) -> np.ndarray:
    return models.x[:ROWS].astype(np.float32)


def iris_input(models: ServeModels, *, binary: bool = True, shape: list[int] | None = None) -> dict[str, Any]:
    x = iris(models)
    return {
        "name": "X",
        "shape": shape or list(x.shape),
        "datatype": "FP32",
        "data": x.ravel().tolist(),
        "binary": binary,
    }


MULTI_INPUTS = [
    {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [0.5, 1, 2, 3, 4, 5, 6, 7]},
    {"name": "n", "shape": [2, 1], "datatype": "INT64", "data": [2**40, -3]},
    {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": ["héllo", ""]},
]


def plan(models: ServeModels) -> dict[str, dict[str, Any]]:
    """Every call the tests below check, by name: one run of the clients (each start costs ~1 s)."""
    calls: dict[str, dict[str, Any]] = {}
    for client in ("rest-v1", "rest-v2", "grpc"):
        for op in ("server_live", "server_ready"):
            calls[f"{client} {op}"] = {"client": client, "op": op}
        for model in ("iris-onnx", "nope"):
            calls[f"{client} model_ready {model}"] = {"client": client, "op": "model_ready", "model": model}
    iris_call = {"op": "infer", "model": "iris-onnx", "inputs": [iris_input(models)]}
    both_binary = [{"name": "label", "binary": True}, {"name": "probabilities", "binary": True}]
    calls |= {
        "rest-v2 binary": {**iris_call, "client": "rest-v2"},
        "rest-v2 binary outputs": {**iris_call, "client": "rest-v2", "outputs": both_binary},
        "rest-v2 json": {
            **iris_call,
            "client": "rest-v2",
            "inputs": [iris_input(models, binary=False)],
            "id": "r-7",
        },
        "rest-v2 one output": {**iris_call, "client": "rest-v2", "outputs": [{"name": "probabilities"}]},
        "grpc raw": {**iris_call, "client": "grpc", "id": "g-1"},
        "grpc typed": {**iris_call, "client": "grpc", "inputs": [iris_input(models, binary=False)]},
        "grpc one output": {**iris_call, "client": "grpc", "outputs": [{"name": "label"}]},
        "rest-v2 binary_data_output": {
            **iris_call,
            "client": "rest-v2",
            "parameters": {"binary_data_output": True},
        },
        "grpc version 1": {**iris_call, "client": "grpc", "version": "1"},
        "grpc version 9": {**iris_call, "client": "grpc", "version": "9"},
        "grpc metadata": {"client": "grpc", "op": "metadata", "model": "iris-onnx"},
        "rest-v1 predict": {
            "client": "rest-v1",
            "op": "infer",
            "model": "iris-onnx",
            "instances": iris(models).tolist(),
        },
        "rest-v2 multi binary outputs": {
            "client": "rest-v2",
            "op": "infer",
            "model": "multi",
            "inputs": MULTI_INPUTS,
            "parameters": {"binary_data_output": True},
        },
        "rest-v2 unknown": {**iris_call, "client": "rest-v2", "model": "nope"},
        "grpc unknown": {**iris_call, "client": "grpc", "model": "nope"},
        "rest-v1 unknown": {
            "client": "rest-v1",
            "op": "infer",
            "model": "nope",
            "instances": [[1.0, 2.0, 3.0, 4.0]],
        },
    }
    wrong_shape = [iris_input(models, shape=[ROWS * 2, 2])]
    for client in ("rest-v2", "grpc"):
        calls[f"{client} wrong shape"] = {**iris_call, "client": client, "inputs": wrong_shape}
        for binary in (True, False):
            inputs = [{**tensor, "binary": binary} for tensor in MULTI_INPUTS]
            calls[f"{client} multi binary={binary}"] = {
                "client": client,
                "op": "infer",
                "model": "multi",
                "inputs": inputs,
            }
    return calls


@pytest.fixture(scope="module")
def answers(endpoints: dict[str, str], serve_models: ServeModels) -> dict[str, dict[str, Any]]:
    """What KServe's clients answered to each call of `plan`, by name."""
    done = subprocess.run(
        [str(KSERVE_PYTHON), str(CALLS)],
        input=json.dumps({**endpoints, "calls": plan(serve_models)}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return results


def outputs_by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert "ok" in result, result
    return {o["name"]: o for o in result["ok"]["outputs"]}


def check_iris(result: dict[str, Any], expected: dict[str, np.ndarray]) -> None:
    """Names, datatypes, shapes and values equal to the model's own."""
    outputs = outputs_by_name(result)
    assert result["ok"]["model_name"] == "iris-onnx"
    assert set(outputs) == {"label", "probabilities"}
    label, probabilities = outputs["label"], outputs["probabilities"]
    assert (label["datatype"], label["shape"]) == ("INT64", [ROWS])
    assert (probabilities["datatype"], probabilities["shape"]) == ("FP32", [ROWS, 3])
    assert label["data"] == expected["label"].tolist()
    np.testing.assert_array_equal(
        np.array(probabilities["data"], dtype=np.float32), expected["probabilities"]
    )


@needs_kserve
def test_health_and_model_readiness(answers: dict[str, dict[str, Any]]) -> None:
    for client in ("rest-v1", "rest-v2", "grpc"):
        assert answers[f"{client} server_live"] == {"ok": True}
        assert answers[f"{client} model_ready iris-onnx"] == {"ok": True}
    for client in ("rest-v2", "grpc"):
        assert answers[f"{client} server_ready"] == {"ok": True}
    # KServe's REST client has no V1 server-ready check: it refuses before sending anything.
    assert answers["rest-v1 server_ready"]["error"]["type"] == "UnsupportedProtocol"
    assert answers["rest-v2 model_ready nope"] == {"ok": False}  # V2 readiness: any 4xx is false
    for name, status in (("rest-v1 model_ready nope", 404), ("grpc model_ready nope", "NOT_FOUND")):
        error = answers[name]["error"]
        assert error["status"] == status, error
        assert UNKNOWN in error["message"], error


@needs_kserve
def test_rest_v2_infer_binary_and_json(
    answers: dict[str, dict[str, Any]], expected: dict[str, np.ndarray]
) -> None:
    for name in ("rest-v2 binary", "rest-v2 binary outputs", "rest-v2 binary_data_output", "rest-v2 json"):
        check_iris(answers[name], expected)
    assert answers["rest-v2 json"]["ok"]["id"] == "r-7"
    only = outputs_by_name(answers["rest-v2 one output"])
    assert list(only) == ["probabilities"]
    np.testing.assert_array_equal(
        np.array(only["probabilities"]["data"], dtype=np.float32), expected["probabilities"]
    )


@needs_kserve
def test_grpc_infer_raw_and_typed_contents(
    answers: dict[str, dict[str, Any]], expected: dict[str, np.ndarray]
) -> None:
    check_iris(answers["grpc raw"], expected)
    check_iris(answers["grpc typed"], expected)
    check_iris(answers["grpc version 1"], expected)
    assert (answers["grpc raw"]["ok"]["id"], answers["grpc raw"]["ok"]["model_version"]) == ("g-1", "1")
    only = outputs_by_name(answers["grpc one output"])
    assert list(only) == ["label"]
    assert only["label"]["data"] == expected["label"].tolist()


@needs_kserve
def test_bytes_int64_and_fp32_over_rest_and_grpc(answers: dict[str, dict[str, Any]]) -> None:
    names = [f"{client} multi binary={binary}" for client in ("rest-v2", "grpc") for binary in (True, False)]
    for name in [*names, "rest-v2 multi binary outputs"]:
        outputs = outputs_by_name(answers[name])
        assert outputs["y"] == {
            "name": "y",
            "datatype": "FP32",
            "shape": [2, 4],
            "data": [[1, 2, 4, 6], [8, 10, 12, 14]],
        }
        assert outputs["n_out"] == {
            "name": "n_out",
            "datatype": "INT64",
            "shape": [2, 1],
            "data": [[2**40], [-3]],
        }
        assert outputs["s_out"] == {
            "name": "s_out",
            "datatype": "BYTES",
            "shape": [2, 1],
            "data": [["héllo"], [""]],
        }


@needs_kserve
def test_grpc_model_metadata_through_kserves_stub(answers: dict[str, dict[str, Any]]) -> None:
    metadata = answers["grpc metadata"]["ok"]
    assert (metadata["name"], metadata["versions"]) == ("iris-onnx", ["1"])
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "label": ("INT64", [-1]),
        "probabilities": ("FP32", [-1, 3]),
    }


@needs_kserve
def test_rest_v1_predict(answers: dict[str, dict[str, Any]], expected: dict[str, np.ndarray]) -> None:
    rows = answers["rest-v1 predict"]["ok"]["predictions"]
    assert [row["label"] for row in rows] == expected["label"].tolist()
    probabilities = np.array([row["probabilities"] for row in rows], dtype=np.float32)
    np.testing.assert_array_equal(probabilities, expected["probabilities"])


@needs_kserve
def test_errors_carry_our_message(answers: dict[str, dict[str, Any]]) -> None:
    for name, kind, status in (
        ("rest-v2 unknown", "HTTPStatusError", 404),
        ("grpc unknown", "RpcError", "NOT_FOUND"),
        ("rest-v1 unknown", "HTTPStatusError", 404),
    ):
        error = answers[name]["error"]
        assert (error["type"], error["status"]) == (kind, status), error
        assert UNKNOWN in error["message"], error
    version = answers["grpc version 9"]["error"]
    assert version["status"] == "NOT_FOUND", version
    assert "model 'iris-onnx' has no version 9" in version["message"], version
    for name, status in (("rest-v2 wrong shape", 400), ("grpc wrong shape", "INVALID_ARGUMENT")):
        error = answers[name]["error"]
        assert error["status"] == status, error
        assert "input 'X' has shape [6, 2], expected [?, 4]" in error["message"], error


# --- mlserver infer -----------------------------------------------------------------------------


def mlserver_infer(
    endpoints: dict[str, str], tmp_path: Path, model: str, lines: list[dict[str, Any]], *args: str
) -> list[dict[str, Any]]:
    """`mlserver infer` over `lines` (V2 requests, one a line); its output lines by batch_index."""
    source, target = tmp_path / "requests.jsonl", tmp_path / "responses.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    host_port = endpoints["rest"].removeprefix("http://")
    command = [str(MLSERVER), "infer", "-u", host_port, "-m", model, "-i", str(source), "-o", str(target)]
    done = subprocess.run(
        [*command, "--workers", "2", "--retries", "1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in target.read_text().splitlines()]
    return sorted(answers, key=lambda a: a["parameters"]["batch_index"])


def v2_requests(models: ServeModels, *, outputs: bool = False) -> list[dict[str, Any]]:
    """One V2 request a line, an iris row each; with `outputs`, both outputs asked for by name."""
    asked = {"outputs": [{"name": "label"}, {"name": "probabilities"}]} if outputs else {}
    return [
        {
            "id": f"row-{i}",
            "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": row.tolist()}],
        }
        | asked
        for i, row in enumerate(iris(models))
    ]


@needs_mlserver
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary-microbatch"])
def test_mlserver_infer(
    endpoints: dict[str, str],
    serve_models: ServeModels,
    expected: dict[str, np.ndarray],
    tmp_path: Path,
    binary: bool,
) -> None:
    """Plain JSON; then binary tensors both ways (outputs asked for are binary too) with two rows
    merged into one request and split again by mlserver."""
    args = ["--binary-data", "--batch-size", "2"] if binary else []
    answers = mlserver_infer(
        endpoints, tmp_path, "iris-onnx", v2_requests(serve_models, outputs=binary), *args
    )
    assert [a["parameters"]["batch_index"] for a in answers] == list(range(ROWS))
    assert [a["id"] for a in answers] == [f"row-{i}" for i in range(ROWS)]
    for i, answer in enumerate(answers):
        assert (answer["model_name"], answer["model_version"]) == ("iris-onnx", "1")
        outputs = {o["name"]: o for o in answer["outputs"]}
        # mlserver's NumpyCodec re-encodes what it got, adding a dimension to 1-D tensors: [1] -> [1, 1]
        assert (outputs["label"]["datatype"], outputs["label"]["shape"]) == ("INT64", [1, 1])
        assert outputs["label"]["data"] == [expected["label"][i]]
        assert (outputs["probabilities"]["datatype"], outputs["probabilities"]["shape"]) == ("FP32", [1, 3])
        # Rows the server batched otherwise than `expected` (one batch of all) may differ in the last
        # bits: onnxruntime's kernels take other paths for other batch sizes.
        np.testing.assert_allclose(
            np.array(outputs["probabilities"]["data"], dtype=np.float32),
            expected["probabilities"][i],
            rtol=1e-5,
        )


@needs_mlserver
def test_mlserver_infer_bytes_and_int64(endpoints: dict[str, str], tmp_path: Path) -> None:
    lines = [
        {
            "id": f"m-{i}",
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
                {"name": "n", "shape": [1, 1], "datatype": "INT64", "data": [2**40 + i]},
                {"name": "s", "shape": [1, 1], "datatype": "BYTES", "data": [f"héllo {i}"]},
            ],
        }
        for i in range(ROWS)
    ]
    answers = mlserver_infer(endpoints, tmp_path, "multi", lines, "--binary-data", "--batch-size", "2")
    for i, answer in enumerate(answers):
        outputs = {o["name"]: (o["datatype"], o["shape"], o["data"]) for o in answer["outputs"]}
        assert outputs == {
            "y": ("FP32", [1, 4], [2.0, 4.0, 6.0, 8.0]),
            "n_out": ("INT64", [1, 1], [2**40 + i]),
            "s_out": ("BYTES", [1, 1], [f"héllo {i}"]),
        }


@needs_mlserver
def test_mlserver_infer_unknown_model(
    endpoints: dict[str, str], serve_models: ServeModels, tmp_path: Path
) -> None:
    [answer] = mlserver_infer(endpoints, tmp_path, "nope", v2_requests(serve_models)[:1])
    assert UNKNOWN in answer["error"]["msg"], answer

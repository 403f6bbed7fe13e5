"""SageMaker's container contract in-process, as its SDK's serializers and deserializers drive it:
JSON, CSV, JSON Lines and .npy bodies, Accept, the echoed headers, the body limit, and the
multi-model /models API.

The SDK (sagemaker 3.x) pulls in mlflow, pandas and boto3 and moves pinned versions, so it is not
installed; the bodies here are what its serializers write (sagemaker-core 2.27,
serializers/base.py): CSVSerializer joins rows with "\n" and no final newline, JSONLinesSerializer
the same with one JSON value per line, NumpySerializer `np.save`; and what its deserializers ask
for and read: Accept `text/csv` read with `csv.reader(text.splitlines())`, `application/jsonlines`,
`application/x-npy` read with `np.load(allow_pickle=False)`, PandasDeserializer's
`text/csv, application/json`, and `*/*` by default."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from asgi_serving import run as serve

from http_errors import assert_error
from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.serve.platforms import SAGEMAKER_MAX_BODY, VERTEX_MAX_BODY
from shipyard.settings import Settings
from tiny_models import tiny_onnx

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
SCORES = [[round(0.1 * sum(row), 4)] * 3 for row in ROWS]  # tiny_onnx: X @ 0.1, label 0
Client = httpx.AsyncClient
SAGEMAKER = {"serve": {"platform": "sagemaker", "max_body_bytes": SAGEMAKER_MAX_BODY}}


def double_onnx() -> bytes:
    """X FP32[N, 4] -> y = 2X: one output, so its answer can be a .npy array."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["X", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def registry_folder(root: Path, name: str, model: bytes) -> Path:
    """A folder holding a registry with one model, as SageMaker unpacks a model.tar.gz."""
    (root / f"{name}.onnx").write_bytes(model)
    with Registry(settings=Settings.load(home=root / name)) as registry:
        registry.push(name, root / f"{name}.onnx")
    return root / name


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """iris (tiny ONNX: two outputs) and double (one output)."""
    files = tmp_path_factory.mktemp("sagemaker-files")
    home = tmp_path_factory.mktemp("sagemaker-home")
    (files / "iris.onnx").write_bytes(tiny_onnx("iris"))
    (files / "double.onnx").write_bytes(double_onnx())
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("iris", files / "iris.onnx")
        registry.push("double", files / "double.onnx")
    return home


def csv_body(rows: list[list[float]]) -> bytes:
    """As the SDK's CSVSerializer writes rows: joined by newlines, none at the end."""
    return "\n".join(",".join(map(str, row)) for row in rows).encode()


def test_each_body_type_in_and_out(home: Path) -> None:
    async def body(http: Client) -> None:
        answer = await http.post(
            "/invocations", content=csv_body(ROWS), headers={"content-type": "text/csv", "accept": "text/csv"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "text/csv"
        lines = list(csv.reader(answer.text.splitlines()))  # what the SDK's CSVDeserializer reads
        np.testing.assert_allclose(
            [[float(v) for v in line] for line in lines], [[0, *s] for s in SCORES], rtol=1e-5
        )

        lines_in = "\n".join(json.dumps(row) for row in ROWS).encode()  # JSONLinesSerializer
        answer = await http.post(
            "/invocations",
            content=lines_in,
            headers={"content-type": "application/jsonlines", "accept": "application/jsonlines"},
        )
        assert answer.headers["content-type"] == "application/jsonlines"
        rows = [json.loads(line) for line in answer.text.splitlines()]
        assert [r["label"] for r in rows] == [0, 0]
        np.testing.assert_allclose([r["probabilities"] for r in rows], SCORES, rtol=1e-5)

        buffer = io.BytesIO()
        np.save(buffer, np.array(ROWS, dtype=np.float32))  # what the SDK's NumpySerializer sends
        answer = await http.post(
            "/invocations",
            content=buffer.getvalue(),
            headers={
                "content-type": "application/x-npy",
                "accept": "application/x-npy",
                "x-amzn-sagemaker-target-model": "double",
            },
        )
        assert answer.headers["content-type"] == "application/x-npy"
        np.testing.assert_allclose(np.load(io.BytesIO(answer.content)), 2 * np.array(ROWS), rtol=1e-6)

        answer = await http.post("/invocations", json=ROWS)  # no Accept: JSON
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["predictions"][1]["probabilities"] == pytest.approx(SCORES[1])

    serve(home, ["iris", "double"], body, **SAGEMAKER)


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        ("text/csv;q=0.5, application/jsonlines", "application/jsonlines"),
        ("application/xml, text/csv;q=0.1", "text/csv"),
        ("*/*", "application/json"),
        ("text/csv, application/json", "text/csv"),  # PandasDeserializer
        ("application/vnd.api+json", "application/json"),
        ("text/*", "text/csv"),
    ],
)
def test_accept_picks_the_preferred_supported_type(home: Path, accept: str, media: str) -> None:
    async def body(http: Client) -> None:
        answer = await http.post("/invocations", json=ROWS, headers={"accept": accept})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == media

    serve(home, ["iris"], body, **SAGEMAKER)


def test_bad_input_names_the_problem(home: Path) -> None:
    supported = ["application/json", "text/csv", "application/jsonlines", "application/x-npy"]

    async def body(http: Client) -> None:
        refused = await http.post("/invocations", json=ROWS, headers={"accept": "application/xml"})
        assert_error(refused, 406, "'application/xml'", *supported)
        refused = await http.post("/invocations", json=ROWS, headers={"accept": "application/x-npy"})
        assert_error(refused, 406, "2 outputs", "label, probabilities")
        refused = await http.post(
            "/invocations", content=b"<x/>", headers={"content-type": "application/xml"}
        )
        assert_error(refused, 415, "'application/xml'", *supported)
        assert_error(await http.post("/invocations", content=b"[[1,2,3,4]]"), 415, "without Content-Type")
        big = csv_body([[1.0, 2.0, 3.0, 4.0]] * 400_000)  # over 6 MB
        refused = await http.post("/invocations", content=big, headers={"content-type": "text/csv"})
        assert_error(refused, 413, f"limit of {SAGEMAKER_MAX_BODY} bytes", "SageMaker's limit", "6 MB")
        refused = await http.post(
            "/invocations", content=b"not npy", headers={"content-type": "application/x-npy"}
        )
        assert_error(refused, 400, ".npy")
        lines = b"[1,2,3,4]\n{oops\n"
        refused = await http.post(
            "/invocations", content=lines, headers={"content-type": "application/jsonlines"}
        )
        assert_error(refused, 400, "line 2")
        long = {"x-amzn-sagemaker-custom-attributes": "a" * 1025}
        assert_error(await http.post("/invocations", json=ROWS, headers=long), 400, "1024")

    serve(home, ["iris"], body, **SAGEMAKER)


def test_custom_attributes_and_inference_id_come_back(home: Path) -> None:
    headers = {
        "x-amzn-sagemaker-custom-attributes": "trace=42,c1=yes",
        "x-amzn-sagemaker-inference-id": "inf-7",
    }

    async def body(http: Client) -> None:
        answer = await http.post("/invocations", json=ROWS, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-amzn-sagemaker-custom-attributes"] == "trace=42,c1=yes"
        assert answer.headers["x-amzn-sagemaker-inference-id"] == "inf-7"
        plain = await http.post("/invocations", json=ROWS)
        assert "x-amzn-sagemaker-custom-attributes" not in plain.headers
        parameters = (await http.get("/execution-parameters")).json()  # asked by batch transform
        assert parameters == {
            "MaxConcurrentTransforms": 1,
            "BatchStrategy": "MULTI_RECORD",
            "MaxPayloadInMB": 6,
        }

    serve(home, ["iris"], body, **SAGEMAKER)


def test_multi_model_api(home: Path, tmp_path: Path) -> None:
    """Load, list, get, invoke, unload as SageMaker calls them, with the documented codes."""
    folder = registry_folder(tmp_path, "double", double_onnx())
    folder.chmod(0o555)  # SageMaker's model folders are read-only

    async def body(http: Client) -> None:
        load = {"model_name": "m-1a2b", "url": str(folder)}
        loaded = await http.post("/models", json=load)
        assert loaded.status_code == 200, loaded.text
        assert_error(await http.post("/models", json=load), 409, "'m-1a2b'", "loaded already")
        listed = (await http.get("/models")).json()
        assert listed == {"models": [{"modelName": "m-1a2b", "modelUrl": str(folder)}]}
        assert (await http.get("/models/m-1a2b")).json() == {"modelName": "m-1a2b", "modelUrl": str(folder)}
        answer = await http.post(
            "/models/m-1a2b/invoke",
            content=csv_body(ROWS),
            headers={
                "content-type": "text/csv",
                "accept": "text/csv",
                "x-amzn-sagemaker-target-model": "d.tgz",
            },
        )
        assert answer.status_code == 200, answer.text
        doubled = [[float(v) for v in line.split(",")] for line in answer.text.split()]
        np.testing.assert_allclose(doubled, 2 * np.array(ROWS), rtol=1e-6)
        assert (await http.get("/ping")).status_code == 200
        assert (await http.delete("/models/m-1a2b")).status_code == 200
        for gone in (
            await http.get("/models/m-1a2b"),
            await http.delete("/models/m-1a2b"),
            await http.post("/models/m-1a2b/invoke", json=ROWS),
        ):
            assert_error(gone, 404, "'m-1a2b'", "POST /models")
        assert (await http.get("/models")).json() == {"models": []}
        nothing = await http.post("/models", json={"model_name": "x", "url": str(tmp_path / "empty")})
        assert_error(nothing, 404, "no Shipyard registry")
        assert_error(await http.post("/models", json={"model_name": "x"}), 400, "url")

    try:
        serve(home, ["iris"], body, **SAGEMAKER)
    finally:
        folder.chmod(0o755)


def test_multi_model_api_only_on_sagemaker(home: Path) -> None:
    async def body(http: Client) -> None:
        assert (await http.get("/models")).status_code == 404

    serve(home, ["iris"], body)


def test_vertex_limit_is_named(home: Path) -> None:
    async def main() -> None:
        settings = Settings.load(home=home, serve={"platform": "vertex", "max_body_bytes": VERTEX_MAX_BODY})
        app = create_app(settings, ["iris"], vertex_routes=("/health", "/predict"))
        async with app.app.router.lifespan_context(app.app):
            await app.state.loading
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://vertex.test") as http:
                big = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]] * 100_000}).encode()
                refused = await http.post(
                    "/predict", content=big, headers={"content-type": "application/json"}
                )
                assert_error(refused, 413, "Vertex AI's limit", "1.5 MB")
                answer = await http.post("/predict", json={"instances": ROWS, "parameters": {"k": 1}})
                assert answer.json()["predictions"][0]["probabilities"] == pytest.approx(SCORES[0])
                assert (await http.get("/health")).json()["ready"] is True

    asyncio.run(main())

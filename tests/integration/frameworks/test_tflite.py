"""TFLite files through the registry and the server, on LiteRT.

TensorFlow is not used (TFLite serving must not need it): the models are real `.tflite` flatbuffers
written here with the `tflite` package's generated builders, so each test knows the exact
weights and can check LiteRT's answers against numpy.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from servers import running
from shipyard.errors import InvalidInputError, MissingDependencyError, NotReadyError
from shipyard.registry import Registry
from shipyard.settings import Settings

pytest.importorskip("ai_edge_litert")
tflite = pytest.importorskip("tflite")
flatbuffers = pytest.importorskip("flatbuffers")

RNG = np.random.default_rng(0)
W = RNG.normal(size=(3, 4)).astype(np.float32)  # FULLY_CONNECTED weights: [units, features]
B = RNG.normal(size=3).astype(np.float32)


def expected(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32) @ W.T + B


@dataclass
class _Tensor:
    name: str
    shape: list[int]
    signature: list[int] | None = None
    type: int = 0  # tflite.TensorType.FLOAT32
    data: bytes | None = None  # constant contents (little-endian), stored in its own buffer


@dataclass
class _Op:
    code: int  # a tflite.BuiltinOperator
    inputs: list[int]
    outputs: list[int]
    options_type: int = 0
    options: Callable[[Any], int] | None = None  # writes the options table, returns its offset


@dataclass
class _Graph:
    tensors: list[_Tensor]
    inputs: list[int]
    outputs: list[int]
    ops: list[_Op] = field(default_factory=list)


def _int32s(builder: Any, values: list[int]) -> int:
    return int(builder.CreateNumpyVector(np.asarray(values, dtype=np.int32)))


def _offsets(builder: Any, start: Callable[[Any, int], None], offsets: list[int]) -> int:
    start(builder, len(offsets))
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return int(builder.EndVector())


def _buffers_and_tensors(builder: Any, graph: _Graph) -> tuple[list[int], list[int]]:
    """The buffers (0 is the empty sentinel every model starts with; then one per tensor)."""
    tflite.BufferStart(builder)
    buffers = [tflite.BufferEnd(builder)]
    tensors = []
    for tensor in graph.tensors:
        data = builder.CreateNumpyVector(np.frombuffer(tensor.data, np.uint8)) if tensor.data else None
        tflite.BufferStart(builder)
        if data is not None:
            tflite.BufferAddData(builder, data)
        buffers.append(tflite.BufferEnd(builder))
        name = builder.CreateString(tensor.name)
        shape = _int32s(builder, tensor.shape)
        signature = _int32s(builder, tensor.signature) if tensor.signature is not None else None
        tflite.TensorStart(builder)
        tflite.TensorAddName(builder, name)
        tflite.TensorAddShape(builder, shape)
        if signature is not None:
            tflite.TensorAddShapeSignature(builder, signature)
        tflite.TensorAddType(builder, tensor.type)
        tflite.TensorAddBuffer(builder, len(buffers) - 1)
        tensors.append(tflite.TensorEnd(builder))
    return buffers, tensors


def _operators(builder: Any, graph: _Graph, codes: list[int]) -> list[int]:
    operators = []
    for op in graph.ops:
        options = op.options(builder) if op.options is not None else None
        inputs, outputs = _int32s(builder, op.inputs), _int32s(builder, op.outputs)
        tflite.OperatorStart(builder)
        tflite.OperatorAddOpcodeIndex(builder, codes.index(op.code))
        tflite.OperatorAddInputs(builder, inputs)
        tflite.OperatorAddOutputs(builder, outputs)
        if options is not None:
            tflite.OperatorAddBuiltinOptionsType(builder, op.options_type)
            tflite.OperatorAddBuiltinOptions(builder, options)
        operators.append(tflite.OperatorEnd(builder))
    return operators


def _operator_codes(builder: Any, codes: list[int]) -> list[int]:
    opcodes = []
    for code in codes:
        tflite.OperatorCodeStart(builder)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(builder, min(code, 127))  # int8 in the schema
        tflite.OperatorCodeAddBuiltinCode(builder, code)
        tflite.OperatorCodeAddVersion(builder, 1)
        opcodes.append(tflite.OperatorCodeEnd(builder))
    return opcodes


def write_tflite(graph: _Graph) -> bytes:
    """The flatbuffer of a one-subgraph model (schema version 3)."""
    builder = flatbuffers.Builder(1024)
    buffers, tensors = _buffers_and_tensors(builder, graph)
    codes = sorted({op.code for op in graph.ops})
    tensor_vector = _offsets(builder, tflite.SubGraphStartTensorsVector, tensors)
    operators = _operators(builder, graph, codes)
    operator_vector = _offsets(builder, tflite.SubGraphStartOperatorsVector, operators)
    inputs, outputs = _int32s(builder, graph.inputs), _int32s(builder, graph.outputs)
    name = builder.CreateString("main")
    tflite.SubGraphStart(builder)
    tflite.SubGraphAddTensors(builder, tensor_vector)
    tflite.SubGraphAddInputs(builder, inputs)
    tflite.SubGraphAddOutputs(builder, outputs)
    tflite.SubGraphAddOperators(builder, operator_vector)
    tflite.SubGraphAddName(builder, name)
    subgraph = tflite.SubGraphEnd(builder)
    opcode_vector = _offsets(builder, tflite.ModelStartOperatorCodesVector, _operator_codes(builder, codes))
    subgraph_vector = _offsets(builder, tflite.ModelStartSubgraphsVector, [subgraph])
    buffer_vector = _offsets(builder, tflite.ModelStartBuffersVector, buffers)
    description = builder.CreateString("written by shipyard's tests")
    tflite.ModelStart(builder)
    tflite.ModelAddVersion(builder, 3)
    tflite.ModelAddOperatorCodes(builder, opcode_vector)
    tflite.ModelAddSubgraphs(builder, subgraph_vector)
    tflite.ModelAddDescription(builder, description)
    tflite.ModelAddBuffers(builder, buffer_vector)
    builder.Finish(tflite.ModelEnd(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _fully_connected_options(builder: Any) -> int:
    tflite.FullyConnectedOptionsStart(builder)
    tflite.FullyConnectedOptionsAddFusedActivationFunction(builder, tflite.ActivationFunctionType.NONE)
    return int(tflite.FullyConnectedOptionsEnd(builder))


def _dense_graph(batch: int) -> _Graph:
    """y = x @ W.T + B; `batch` is the batch axis of the shape signature (-1 = dynamic)."""
    return _Graph(
        tensors=[
            _Tensor("x", [1, 4], [batch, 4]),
            _Tensor("w", [3, 4], data=W.astype("<f4").tobytes()),
            _Tensor("b", [3], data=B.astype("<f4").tobytes()),
            _Tensor("y", [1, 3], [batch, 3]),
        ],
        inputs=[0],
        outputs=[3],
        ops=[
            _Op(
                tflite.BuiltinOperator.FULLY_CONNECTED,
                [0, 1, 2],
                [3],
                tflite.BuiltinOptions.FullyConnectedOptions,
                _fully_connected_options,
            )
        ],
    )


def dense_tflite(batch: int = -1) -> bytes:
    return write_tflite(_dense_graph(batch))


def dense_reshape_tflite() -> bytes:
    """The dense model with a batch of exactly 1 baked in: a Reshape to the constant [1, 3]
    follows it, so LiteRT refuses to resize it and the runtime must run row by row."""
    graph = _dense_graph(1)
    graph.tensors[3] = _Tensor("dense", [1, 3], [1, 3])
    graph.tensors += [
        _Tensor("new_shape", [2], type=tflite.TensorType.INT32, data=np.array([1, 3], "<i4").tobytes()),
        _Tensor("y", [1, 3], [1, 3]),
    ]
    graph.outputs = [5]
    graph.ops.append(_Op(tflite.BuiltinOperator.RESHAPE, [3, 4], [5]))
    return write_tflite(graph)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def registry(home: Path) -> Iterator[Registry]:
    with Registry(settings=Settings.load(home=home)) as reg:
        yield reg


@pytest.fixture
def dense_path(tmp_path: Path) -> Path:
    path = tmp_path / "dense.tflite"
    path.write_bytes(dense_tflite())
    return path


def test_push_records_format_and_signature(registry: Registry, dense_path: Path) -> None:
    version = registry.push("tfl", dense_path)
    assert (version.format, version.framework) == ("tflite", "tflite")
    assert [str(f["path"]) for f in version.files] == ["model.tflite"]
    assert version.extra["file"] == "model.tflite"
    assert set(version.library_versions) == {"ai-edge-litert"}
    assert version.signature.describe() == "inputs (x: FP32[?, 4]) -> outputs (y: FP32[?, 3])"
    assert (registry.artifact_path(version) / "model.tflite").read_bytes() == dense_path.read_bytes()


def test_predicts_like_numpy_while_the_batch_size_changes(registry: Registry, dense_path: Path) -> None:
    registry.push("tfl", dense_path)
    with registry.load("tfl") as model:
        for rows in (1, 5, 2, 5, 5, 1):
            x = RNG.normal(size=(rows, 4)).astype(np.float32)
            (name, out), *rest = model.predict(x).items()
            assert (name, rest) == ("y", [])
            assert out.shape == (rows, 3) and out.dtype == np.float32
            np.testing.assert_allclose(out, expected(x), rtol=1e-5, atol=1e-5)


def test_outputs_are_copies(registry: Registry, dense_path: Path) -> None:
    registry.push("tfl", dense_path)
    with registry.load("tfl") as model:
        x = np.ones((2, 4), np.float32)
        first = model.predict(x)["y"]
        model.predict(x * 3)
        np.testing.assert_allclose(first, expected(x), rtol=1e-5, atol=1e-5)


def test_a_fixed_batch_of_one_is_resized(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "fixed.tflite"
    path.write_bytes(dense_tflite(batch=1))
    version = registry.push("fixed", path)
    assert version.signature.inputs[0].shape == (1, 4)
    with registry.load("fixed") as model:
        x = RNG.normal(size=(3, 4)).astype(np.float32)  # as the batcher merges three requests
        out = model.runtime.predict({"x": x})["y"]
    np.testing.assert_allclose(out, expected(x), rtol=1e-5, atol=1e-5)


def test_a_model_that_cannot_be_resized_runs_row_by_row(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "reshape.tflite"
    path.write_bytes(dense_reshape_tflite())
    registry.push("reshape", path)
    with registry.load("reshape") as model:
        for rows in (4, 1, 3):
            x = RNG.normal(size=(rows, 4)).astype(np.float32)
            out = model.runtime.predict({"x": x})["y"]
            np.testing.assert_allclose(out, expected(x), rtol=1e-5, atol=1e-5)


def test_format_comes_from_the_content_not_the_name(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(dense_tflite())
    assert registry.push("tfl", path).format == "tflite"


def test_a_truncated_file_is_refused(registry: Registry, tmp_path: Path) -> None:
    data = dense_tflite()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidInputError, match=r"cut\.tflite"):
        registry.push("tfl", path)
    assert registry.list_models() == []


def test_wrong_features_are_refused_and_the_model_still_works(registry: Registry, dense_path: Path) -> None:
    registry.push("tfl", dense_path)
    with registry.load("tfl") as model:
        with pytest.raises(InvalidInputError):
            model.runtime.predict({"x": np.ones((2, 5), np.float32)})
        x = np.ones((2, 4), np.float32)
        np.testing.assert_allclose(model.predict(x)["y"], expected(x), rtol=1e-5, atol=1e-5)


def test_threads_setting_and_close(home: Path, dense_path: Path) -> None:
    settings = Settings.load(home=home, runtime={"intra_op_threads": 2})
    with Registry(settings=settings) as registry:
        registry.push("tfl", dense_path)
        model = registry.load("tfl")
        x = np.ones((1, 4), np.float32)
        np.testing.assert_allclose(model.predict(x)["y"], expected(x), rtol=1e-5, atol=1e-5)
        model.close()
        with pytest.raises(NotReadyError):
            model.predict(x)


def test_missing_litert_names_the_extra(
    registry: Registry, dense_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    with pytest.raises(MissingDependencyError, match=r"shipyard\[tflite\]"):
        registry.push("tfl", dense_path)


def test_served_over_http(registry: Registry, dense_path: Path, home: Path, tmp_path: Path) -> None:
    registry.push("tfl", dense_path)
    with running(home, ["tfl"], tmp_path) as server, server.client() as client:
        for rows in ([[1, 2, 3, 4]], [[1, 2, 3, 4], [0.5, -1, 0, 2], [0, 0, 0, 0]], [[-1, 0, 1, 2]]):
            response = client.post("/v1/models/tfl:predict", json={"instances": rows})
            assert response.status_code == 200, response.text
            predictions = response.json()["predictions"]
            np.testing.assert_allclose(predictions, expected(np.array(rows)), rtol=1e-5, atol=1e-5)

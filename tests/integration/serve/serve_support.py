"""Helpers for the inference-server tests: the test models, metrics and the error shape.

Servers are started by `servers.py` (beside tests/conftest.py), shared per session or module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.registry import Registry

ADMIN_TOKEN = "s3cret-admin-token"
MAX_BODY_BYTES = 1_000_000  # the shared server's body limit: small enough to pass in a test


@dataclass
class ServeModels:
    """What the test registry holds, and the estimators behind it (to compare predictions)."""

    home: Path
    x: np.ndarray  # iris features, float64
    iris_v1: Any  # served as iris:1 = iris@production
    iris_v2: Any  # iris:2
    onnx_bytes: bytes  # iris_v1 converted with skl2onnx (float32 input "X", no ZipMap)
    multi_bytes: bytes  # x FP32[-1,4], n INT64[-1,1], s STRING[-1,1] -> y = 2x, n_out = n, s_out = s


def iris_onnx_bytes(model: Any, x: np.ndarray, doc: str = "") -> bytes:
    from skl2onnx import to_onnx

    proto = to_onnx(model, x[:1].astype(np.float32), options={id(model): {"zipmap": False}}, target_opset=17)
    proto.doc_string = doc  # a different doc string gives a different digest
    return bytes(proto.SerializeToString())


def multi_onnx_bytes() -> bytes:
    """A hand-built model with FP32, INT64 and STRING inputs, so each V2 datatype is exercised."""
    import onnx
    from onnx import TensorProto, helper

    def info(name: str, kind: int, width: int) -> Any:
        return helper.make_tensor_value_info(name, kind, ["N", width])

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["y"]),
            helper.make_node("Identity", ["n"], ["n_out"]),
            helper.make_node("Identity", ["s"], ["s_out"]),
        ],
        "multi",
        [info("x", TensorProto.FLOAT, 4), info("n", TensorProto.INT64, 1), info("s", TensorProto.STRING, 1)],
        [
            info("y", TensorProto.FLOAT, 4),
            info("n_out", TensorProto.INT64, 1),
            info("s_out", TensorProto.STRING, 1),
        ],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def slow_onnx_bytes(size: int = 1024, rounds: int = 8) -> bytes:
    """x FP32[-1,4] -> score FP32[-1,1] after `rounds` [size, size] matrix products that depend
    on the input (so no constant folding): tens of milliseconds per call, whatever the batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal((4, 1)) * 0.1).astype(np.float32), "w"),
        numpy_helper.from_array((rng.standard_normal((size, size)) / size).astype(np.float32), "c"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0),
        helper.make_node("Mul", ["c", "s"], ["m0"]),
        *(helper.make_node("MatMul", [f"m{i}", "c"], [f"m{i + 1}"]) for i in range(rounds)),
        helper.make_node("ReduceMean", [f"m{rounds}"], ["t"], keepdims=0),
        helper.make_node("Add", ["y", "t"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def push_file(registry: Registry, name: str, data: bytes, folder: Path, **kwargs: Any) -> Any:
    path = folder / f"{name}-{len(list(folder.iterdir()))}.onnx"
    path.write_bytes(data)
    return registry.push(name, path, **kwargs)


def triton_raises(status: object, *fragments: str) -> Any:
    """Context manager: a tritonclient call (HTTP or gRPC) raises with that status (an HTTP status
    or a gRPC code) and a message naming the problem."""
    from tritonclient.utils import InferenceServerException

    class _Check:
        def __enter__(self) -> None:
            return None

        def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
            assert isinstance(exc, InferenceServerException), (
                f"expected InferenceServerException, got {exc!r}"
            )
            assert exc.status() == str(status), (exc.status(), exc.message())
            for fragment in fragments:
                assert fragment in exc.message(), (fragment, exc.message())
            return True

    return _Check()

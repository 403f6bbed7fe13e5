"""The memory an ONNX graph asks for, read from what it declares before onnxruntime sees it:
initializer and Constant dimensions, and the constant shapes given to the ops that build a tensor
of any size from a few bytes (ConstantOfShape, Expand, Tile, Resize, Range)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, PayloadTooLargeError
from shipyard.settings import PushSettings

_ADVICE = "raise SHIPYARD_PUSH__MAX_TENSOR_BYTES if the model is genuine"


def _itemsize(data_type: int) -> int:
    from onnx import helper

    try:
        return max(1, np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return 8  # strings and unknown types: count them as the widest number


def _declared_bytes(tensor: Any) -> int:
    return math.prod(max(0, int(d)) for d in tensor.dims) * _itemsize(tensor.data_type)


def _values(tensor: Any) -> np.ndarray | None:
    """A small constant's values (shapes, repeats); None for anything large or unreadable."""
    from onnx import numpy_helper

    if math.prod(tensor.dims) > 64 or tensor.data_location == 1:
        return None
    try:
        return np.asarray(numpy_helper.to_array(tensor)).reshape(-1)
    except (ValueError, TypeError):
        return None


def _check_size(what: str, size: int, limits: PushSettings) -> None:
    if size > limits.max_tensor_bytes:
        raise PayloadTooLargeError(
            f"the ONNX graph's {what} needs {size / (1 << 20):,.0f} MiB, over the limit of "
            f"{limits.max_tensor_bytes / (1 << 20):,.0f} MiB per tensor; {_ADVICE}",
            field="path",
        )


def _check_stored(tensor: Any, what: str, limits: PushSettings) -> None:
    """A stored tensor's declared size within the limit and matching the bytes it carries."""
    declared = _declared_bytes(tensor)
    _check_size(what, declared, limits)
    if tensor.data_location != 1 and tensor.HasField("raw_data") and len(tensor.raw_data) != declared:
        raise InvalidInputError(
            f"the ONNX graph's {what} declares dimensions {list(tensor.dims)} ({declared} bytes) but "
            f"carries {len(tensor.raw_data)} bytes: a damaged or crafted file",
            field="path",
        )


def _builds(node: Any, constants: dict[str, np.ndarray]) -> int | None:
    """Elements of the tensor `node` builds from constant inputs, where they say it."""
    known = [constants.get(name) for name in node.input]
    if node.op_type in ("ConstantOfShape", "Expand") and len(known) >= 1:
        shape = known[0] if node.op_type == "ConstantOfShape" else known[-1]
        return math.prod(abs(int(d)) for d in shape) if shape is not None else None
    if node.op_type == "Tile" and len(known) == 2 and known[1] is not None:
        base = math.prod(known[0].shape) if known[0] is not None else 1
        return base * math.prod(abs(int(d)) for d in known[1])
    if node.op_type == "Resize" and len(known) == 4 and known[3] is not None:
        return math.prod(abs(int(d)) for d in known[3])
    if node.op_type == "Range" and len(known) == 3 and all(k is not None and k.size == 1 for k in known):
        start, limit, delta = (float(k[0]) for k in known)  # type: ignore[index]
        return 0 if delta == 0 else max(0, math.ceil((limit - start) / delta))
    return None


def check_onnx_memory(model: Any, limits: PushSettings) -> None:
    """Refuse a graph whose declared or constant-built tensors exceed the per-tensor limit."""
    graph = model.graph
    constants: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        _check_stored(tensor, f"initializer {tensor.name!r}", limits)
        values = _values(tensor)
        if values is not None:
            constants[tensor.name] = values
    for sparse in graph.sparse_initializer:
        _check_size(
            f"sparse initializer {sparse.values.name!r}",
            math.prod(max(0, int(d)) for d in sparse.dims) * _itemsize(sparse.values.data_type),
            limits,
        )
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.HasField("t"):
                    _check_stored(attr.t, f"Constant {node.name or node.output[0]!r}", limits)
                    values = _values(attr.t)
                    if values is not None and node.output:
                        constants[node.output[0]] = values
                if attr.HasField("sparse_tensor"):
                    sparse = attr.sparse_tensor
                    size = math.prod(max(0, int(d)) for d in sparse.dims) * _itemsize(sparse.values.data_type)
                    _check_size(f"Constant {node.name or node.output[0]!r}", size, limits)
            continue
        elements = _builds(node, constants)
        if elements is not None:
            _check_size(f"{node.op_type} node {node.name or node.output[0]!r}", elements * 8, limits)

"""ONNX files at push: checked to be self-contained and loadable by onnxruntime, then copied."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.packaging.isolated import check_isolated
from shipyard.packaging.onnx_memory import check_onnx_memory
from shipyard.packaging.packaged import Packaged
from shipyard.runtimes.onnx import ONNX_FILE, onnx_session, onnx_signature
from shipyard.settings import PushSettings, RuntimeSettings


def _tensors(graph: Any) -> Iterator[Any]:
    """Every stored tensor of a graph and its subgraphs: initializers, sparse ones, node attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in [attr.sparse_tensor, *attr.sparse_tensors]:
                yield from (sparse.values, sparse.indices)
            for sub in [attr.g, *attr.graphs]:
                yield from _tensors(sub)


def check_self_contained(model: Any, model_path: Path) -> None:
    """Refuse a graph with any tensor in external data: its location could name any file."""
    for tensor in _tensors(model.graph):
        if tensor.data_location == 1 or tensor.external_data:
            raise InvalidInputError(
                f"{model_path.name} keeps tensor {tensor.name!r} in external data files; push a "
                "self-contained ONNX file (onnx.save_model(..., save_as_external_data=False))",
                field="path",
            )


def check_onnx(model: Any, model_path: Path, limits: PushSettings) -> None:
    """The checks of a parsed ONNX graph before onnxruntime (in a child) loads it."""
    check_self_contained(model, model_path)
    check_onnx_memory(model, limits)
    check_isolated([("onnx", model_path)], limits)


def package_onnx(source: Path, dest: Path, model: Any = None, limits: PushSettings | None = None) -> Packaged:
    """Copy a self-contained ONNX file into `dest` after checking onnxruntime can load it.
    `model` is the file already parsed (by format detection), so it is not parsed again."""
    import onnx
    import onnxruntime

    if model is None:
        model = onnx.load_model(str(source), load_external_data=False)
    check_onnx(model, source, limits or PushSettings())
    target = dest / ONNX_FILE
    shutil.copyfile(source, target)
    session = onnx_session(target, RuntimeSettings())
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return Packaged(
        format="onnx",
        framework="onnx",
        signature=onnx_signature(session),
        library_versions={"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        extra={"opset": opsets, "producer": model.producer_name, "file": ONNX_FILE},
    )

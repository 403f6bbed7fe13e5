"""ONNX files at push: checked to be self-contained and loadable by onnxruntime, then copied."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.packaging.packaged import Packaged
from shipyard.runtimes.onnx import ONNX_FILE, onnx_session, onnx_signature
from shipyard.settings import RuntimeSettings


def _check_external_data(model: Any, model_path: Path) -> None:
    from onnx.external_data_helper import uses_external_data

    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            raise InvalidInputError(
                f"{model_path} keeps weights in external data files; push a self-contained "
                "ONNX file (onnx.save_model(..., save_as_external_data=False))",
                field="path",
            )


def package_onnx(source: Path, dest: Path, model: Any = None) -> Packaged:
    """Copy a self-contained ONNX file into `dest` after checking onnxruntime can load it.
    `model` is the file already parsed (by format detection), so it is not parsed again."""
    import onnx
    import onnxruntime

    if model is None:
        model = onnx.load_model(str(source), load_external_data=False)
    _check_external_data(model, source)
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

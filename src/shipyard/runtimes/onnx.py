"""ONNX models on onnxruntime: one InferenceSession per loaded version."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, ModelError
from shipyard.runtimes.base import one_line
from shipyard.settings import RuntimeSettings
from shipyard.types import ModelVersion, Signature, TensorSpec

ONNX_FILE = "model.onnx"  # the graph's name in every artifact that holds one
# The opset every Shipyard exporter writes: torch.export's exporter needs at least 18, and the
# onnxruntime Shipyard installs runs it.
ONNX_OPSET = 18

_ONNX_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}


def _is_zipmap(type_str: str) -> bool:
    return type_str.startswith("seq(map(")


def _spec(arg: Any) -> TensorSpec:
    if _is_zipmap(arg.type):
        # skl2onnx's default classifier output (a list of {class: probability} maps); the
        # runtime turns it into a plain probability matrix.
        return TensorSpec(arg.name, "FP32", (-1, -1))
    datatype = _ONNX_TYPES.get(arg.type)
    if datatype is None:
        raise InvalidInputError(f"ONNX tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def onnx_session(path: Path, settings: RuntimeSettings) -> Any:
    """An onnxruntime session on the CPU, or InvalidInputError saying why it cannot load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise InvalidInputError(f"onnxruntime cannot load {path.name}: {one_line(exc)}") from exc


def onnx_signature(session: Any) -> Signature:
    """The inputs and outputs of an onnxruntime session."""
    return Signature(
        tuple(_spec(i) for i in session.get_inputs()),
        tuple(_spec(o) for o in session.get_outputs()),
    )


_SIGNATURE_FILE = re.compile(r"signatures/[0-9]{1,6}\.onnx")


def extra_signatures(version: ModelVersion) -> dict[str, str]:
    """A converted TensorFlow SavedModel's signatures beyond the default one (which is
    `model.onnx`): signature name → its ONNX file in the artifact (packaging/tf_savedmodel.py)."""
    info = version.extra.get("tf_serving") if version.format == "onnx" else None
    if not isinstance(info, dict) or not isinstance(info.get("signature_def"), dict):
        return {}
    files = {}
    for name, sig in info["signature_def"].items():
        file = sig.get("file") if isinstance(sig, dict) else None
        if name == info.get("default_signature") or not isinstance(file, str):
            continue
        if _SIGNATURE_FILE.fullmatch(file):  # a path Shipyard wrote, never one naming another file
            files[str(name)] = file
    return files


def signature_runtimes(
    version: ModelVersion, path: Path, settings: RuntimeSettings
) -> dict[str, OnnxRuntime]:
    """A runtime per extra signature of `version` (none for most models); all load, or none."""
    runtimes: dict[str, OnnxRuntime] = {}
    try:
        for name, file in extra_signatures(version).items():
            runtimes[name] = OnnxRuntime(path, version, settings, file)
    except BaseException:
        for runtime in runtimes.values():
            runtime.close()
        raise
    return runtimes


class OnnxRuntime:
    can_batch = True

    def __init__(
        self, path: Path, version: ModelVersion, settings: RuntimeSettings, file: str = ONNX_FILE
    ) -> None:
        self._session = onnx_session(path / file, settings)
        self.signature = onnx_signature(self._session)
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._zipmap = {o.name for o in self._session.get_outputs() if _is_zipmap(o.type)}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self._session.run(self._output_names, inputs)
        except Exception as exc:  # the input already fits the signature: a failure here is the model's
            raise ModelError(
                f"onnxruntime failed to run the model: {one_line(exc)}",
                public="onnxruntime failed to run the model on this input; the server log has the details",
            ) from exc
        out = {}
        for name, value in zip(self._output_names, results, strict=True):
            if name in self._zipmap:
                keys = list(value[0]) if value else []
                out[name] = np.array([[row[k] for k in keys] for row in value], dtype=np.float32)
            else:
                out[name] = np.asarray(value)
        return out

    def close(self) -> None:
        self._session = None

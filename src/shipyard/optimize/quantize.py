"""Int8 quantization with onnxruntime, and the per-node error ranking that drives fp32 fallback.

Dynamic quantization (weights int8, activations quantized on the fly) suits transformers and
MLPs; static QDQ with MinMax calibration suits convolutions. Which variant is fastest and which
keeps accuracy depends on the CPU (VNNI or not, per-channel or per-tensor), so the search tries several and
measures them rather than trusting a rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, ModelError
from shipyard.optimize.applicability import NotApplicable
from shipyard.runtimes.base import quiet

QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv", "Gather", "Attention", "EmbedLayerNormalization")
WEIGHT_TYPES = ("qint8", "quint8")


def quantizable_nodes(model_path: Path) -> list[str]:
    """Names of the nodes int8 quantization would touch (their weights are initializers)."""
    import onnx

    model = onnx.load_model(str(model_path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in QUANTIZABLE_OPS and any(i in weights for i in node.input):
            found.append(node.name)
    return found


def dynamic(
    source: Path,
    dest: Path,
    *,
    per_channel: bool = False,
    reduce_range: bool = False,
    weight_type: str = "qint8",
    exclude: Iterable[str] = (),
) -> dict[str, Any]:
    """Dynamic int8: weights stored int8 (embeddings too), activations quantized per call."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weight_type not in WEIGHT_TYPES:
        raise InvalidInputError(f"weight type must be one of {', '.join(WEIGHT_TYPES)}", field="weight_type")
    _require_quantizable(source)
    exclude = list(exclude)
    try:
        with quiet():
            quantize_dynamic(
                str(source),
                str(dest),
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8 if weight_type == "qint8" else QuantType.QUInt8,
                nodes_to_exclude=exclude,
                extra_options={"DefaultTensorType": TensorProto.FLOAT},
            )
    except Exception as exc:  # onnxruntime's quantizer raises plain exceptions
        raise _tool_failed("dynamic", exc) from exc
    return {
        "method": "dynamic",
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "weight_type": weight_type,
        "excluded_nodes": exclude,
    }


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def static(
    source: Path,
    dest: Path,
    feeds: list[dict[str, np.ndarray]],
    *,
    per_channel: bool = False,
    reduce_range: bool = False,
    exclude: Iterable[str] = (),
) -> dict[str, Any]:
    """Static int8 in QDQ format (S8S8, the first choice on x86), MinMax ranges from `feeds`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not feeds:
        raise InvalidInputError("static quantization needs calibration data", field="calibration")
    _require_quantizable(source)
    exclude = list(exclude)
    try:
        with quiet():
            quantize_static(
                str(source),
                str(dest),
                _Reader(feeds),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
    except Exception as exc:  # onnxruntime's quantizer raises plain exceptions
        raise _tool_failed("static", exc) from exc
    rows = sum(len(next(iter(f.values()))) for f in feeds)
    return {
        "method": "static",
        "format": "QDQ",
        "calibration": "MinMax",
        "calibration_rows": rows,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "excluded_nodes": exclude,
    }


def _tool_failed(method: str, exc: Exception) -> ModelError:
    # The quantizer crashing is the tool's failure, not the caller's: a 5xx-class error.
    return ModelError(
        f"{method} quantization failed in onnxruntime's quantizer: {type(exc).__name__}: {exc}",
        public=f"{method} quantization failed in onnxruntime's quantizer",
    )


def _require_quantizable(path: Path) -> None:
    if not quantizable_nodes(path):
        raise NotApplicable(
            "the model has no MatMul, Gemm, Conv or Gather with constant weights: int8 "
            "quantization has nothing to change (tree and linear models are already small; "
            "convert them to ONNX for speed instead)"
        )


def node_errors(fp32: Path, int8: Path, feeds: list[dict[str, np.ndarray]]) -> list[tuple[str, float]]:
    """Quantizable nodes of `fp32` ranked by the relative error of their output in `int8`
    (‖int8 − fp32‖² / ‖fp32‖² over `feeds`), worst first: which to fall back to fp32."""
    import onnx
    import onnxruntime as ort

    model = onnx.load_model(str(fp32), load_external_data=False)
    quantized = onnx.load_model(str(int8), load_external_data=False)
    targets = set(quantizable_nodes(fp32))
    produced = {o for n in quantized.graph.node for o in n.output}
    watch = {n.output[0]: n.name for n in model.graph.node if n.name in targets and n.output[0] in produced}
    if not watch:
        return []
    results = []
    for graph_model in (model, quantized):
        existing = {o.name for o in graph_model.graph.output}
        for name in watch:
            if name not in existing:
                graph_model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep names
        session = ort.InferenceSession(
            graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        names = list(watch)
        results.append([session.run(names, feed) for feed in feeds])
    errors: dict[str, list[float]] = {watch[n]: [0.0, 0.0] for n in watch}
    for ref_run, q_run in zip(results[0], results[1], strict=True):
        for name, ref, q in zip(watch, ref_run, q_run, strict=True):
            ref64, q64 = np.asarray(ref, dtype=np.float64), np.asarray(q, dtype=np.float64)
            if ref64.shape != q64.shape:
                continue
            errors[watch[name]][0] += float(np.sum((q64 - ref64) ** 2))
            errors[watch[name]][1] += float(np.sum(ref64**2))
    ranked = [(node, num / den if den else 0.0) for node, (num, den) in errors.items()]
    return sorted(ranked, key=lambda item: item[1], reverse=True)

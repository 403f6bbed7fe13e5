"""Conversion to ONNX: scikit-learn estimators (skl2onnx) and Hugging Face encoders (torch.onnx).

The converted graph keeps the original's input and output names, so a client of the original
version can call the converted one unchanged. Whether the conversion is faithful is decided by
the caller on real data (`parity`), not assumed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, MissingDependencyError
from shipyard.optimize.applicability import NotApplicable
from shipyard.optimize.report import REPORT_FOLDER
from shipyard.optimize.scoring import Outputs, agreement
from shipyard.runtimes.base import quiet
from shipyard.runtimes.onnx import ONNX_FILE, ONNX_OPSET
from shipyard.types import Signature

# What "agrees with the original" means: labels identical; probabilities or embeddings
# within 1e-4 relative; cosine >= 0.9999.
PARITY_REL = 1e-4
PARITY_COSINE = 0.9999


def parity(reference: Outputs, converted: Outputs) -> tuple[bool, dict[str, float]]:
    """Whether `converted` reproduces `reference`, and the measured disagreement."""
    found = agreement(reference, converted)
    ok = (
        found.get("label_flip_rate", 0.0) == 0.0
        and found.get("max_abs_prob_diff", 0.0) <= PARITY_REL
        and found.get("max_rel_diff", 0.0) <= PARITY_REL
        and found.get("cosine_min", 1.0) >= PARITY_COSINE
    )
    return ok, found


def sklearn_to_onnx(
    estimator: Any, signature: Signature, dest: Path, *, double: bool = False
) -> dict[str, Any]:
    """Write `estimator` as ONNX to `dest`: plain probability tensors (no ZipMap), the original's
    input name, float32 by default or float64 (`double`) where float32 flips tree thresholds."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    if len(signature.inputs) != 1 or len(signature.inputs[0].shape) != 2:
        raise InvalidInputError(
            "only estimators with one 2-D numeric input can be converted to ONNX", field="ref"
        )
    spec = signature.inputs[0]
    tensor = DoubleTensorType if double else FloatTensorType
    options: dict[Any, Any] = {}
    if hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_"):
        options = {id(estimator): {"zipmap": False}}
        final = None
    else:
        width = signature.outputs[0].shape[1] if len(signature.outputs[0].shape) == 2 else 1
        final = [("prediction", tensor([None, max(width, 1)]))]
    try:
        onx = to_onnx(
            estimator,
            initial_types=[(spec.name, tensor([None, spec.shape[1] if spec.shape[1] > 0 else None]))],
            final_types=final,
            options=options,
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
        )
    except Exception as exc:  # skl2onnx raises many kinds for unsupported estimators
        raise InvalidInputError(
            f"skl2onnx cannot convert {type(estimator).__name__}: {type(exc).__name__}: {exc}", field="ref"
        ) from exc
    import skl2onnx

    dest.write_bytes(onx.SerializeToString())
    return {"converter": "skl2onnx", "skl2onnx": skl2onnx.__version__, "opset": ONNX_OPSET, "double": double}


def transformers_to_onnx(source: Path, dest: Path, task: str) -> dict[str, Any]:
    """Export a Hugging Face folder's encoder to `dest/model.onnx` (dynamic batch and sequence
    axes) beside a copy of its tokenizer, config and pooling settings (not its weights)."""
    try:
        import torch
        import transformers
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(exc.name or "torch", "transformers", "exporting transformers") from exc
    auto = {
        "feature-extraction": transformers.AutoModel,
        "text-classification": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
    }[task]
    # Eager attention exports as plain MatMul/Softmax, which onnxruntime's transformer optimizer
    # fuses into its Attention kernels; SDPA exports do not fuse.
    model = auto.from_pretrained(str(source), local_files_only=True, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    sample = tokenizer(
        ["a short sentence to trace the encoder", "and a second, somewhat longer one to pad"],
        return_tensors="pt",
        padding=True,
    )
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    output = "last_hidden_state" if task == "feature-extraction" else "logits"
    wrapper = _Encoder(model, names, output)
    shutil.copytree(
        source,
        dest,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(
            ".*", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.onnx", REPORT_FOLDER
        ),
    )
    target = dest / ONNX_FILE
    args = tuple(sample[n] for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, output]}
    try:
        with quiet(), torch.inference_mode():
            torch.onnx.export(
                wrapper,
                args,
                str(target),
                input_names=names,
                output_names=[output],
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
                dynamo=False,  # the TorchScript exporter's graphs match the fusion patterns
            )
    except Exception as exc:  # the exporter fails in many ways on unusual architectures
        raise InvalidInputError(f"cannot export this model to ONNX: {exc}", field="ref") from exc
    return {
        "converter": "torch.onnx.export",
        "exporter": "torchscript",
        "opset": ONNX_OPSET,
        "torch": torch.__version__.split("+")[0],
        "inputs": names,
        "output": output,
    }


def _Encoder(model: Any, names: list[str], output: str) -> Any:
    """A module taking the tokenizer's tensors positionally and returning one output tensor."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: Any) -> Any:
            return getattr(self.model(**dict(zip(names, tensors, strict=True))), output)

    return Encoder()


def optimize_transformer_graph(source: Path, dest: Path, config: dict[str, Any]) -> dict[str, Any]:
    """onnxruntime's transformer fusions (Attention, SkipLayerNorm, BiasGelu) for BERT-like encoders."""
    from onnxruntime.transformers import optimizer

    heads = int(config.get("num_attention_heads") or 0)
    hidden = int(config.get("hidden_size") or 0)
    try:
        with quiet():
            model = optimizer.optimize_model(
                str(source), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1
            )
            fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
            model.save_model_to_file(str(dest))
    except Exception as exc:  # fusion is best-effort: the unfused graph remains a candidate
        raise NotApplicable(f"the transformer optimizer failed: {exc}") from exc
    if not fused.get("Attention") and not fused.get("MultiHeadAttention"):
        raise NotApplicable("the transformer optimizer fused no attention")
    return {"fused": fused}


def synthetic_rows(signature: Signature, rows: int = 64, seed: int = 0) -> dict[str, np.ndarray] | None:
    """Standard-normal rows for a numeric signature (a parity check when no eval file is given)."""
    from shipyard.tensors import numpy_dtype

    rng = np.random.default_rng(seed)
    data = {}
    for spec in signature.inputs:
        if spec.datatype == "BYTES" or any(d < 0 for d in spec.shape[1:]):
            return None
        data[spec.name] = rng.standard_normal((rows, *spec.shape[1:])).astype(numpy_dtype(spec.datatype))
    return data

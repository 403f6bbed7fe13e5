"""Turn what a user pushes (an in-memory model or a path) into artifact files plus facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.runtimes.base import Packaged
from shipyard.runtimes.formats import detect_format

_PLANNED = {"safetensors": "bare safetensors weights (no architecture or config)"}


def package(
    obj: Any,
    dest: Path,
    *,
    sample_input: Any = None,
    trust: bool = False,
    task: str | None = None,
    tokenizer: Any = None,
    truncate: bool = True,
) -> Packaged:
    """Write the artifact for `obj` into the empty folder `dest` and describe it."""
    from shipyard.runtimes import pytorch, sklearn, transformers

    if isinstance(obj, (str, Path)):
        path = Path(obj).expanduser()
        if transformers.is_hf_folder(path):
            return transformers.package_folder(path, dest, trust=trust, task=task, truncate=truncate)
        return _package_path(path, dest, sample_input, trust)
    if transformers.is_transformers_object(obj):
        return transformers.package_object(obj, dest, tokenizer=tokenizer, task=task, truncate=truncate)
    if sklearn.is_estimator(obj):
        return sklearn.package_estimator(obj, dest, sample_input, trust)
    if pytorch.is_module(obj):
        return pytorch.package_module(obj, dest, sample_input)
    raise InvalidInputError(
        f"cannot push a {type(obj).__module__}.{type(obj).__qualname__}: pass a scikit-learn "
        "estimator or pipeline, a transformers model (with tokenizer=) or SentenceTransformer, "
        "a PyTorch nn.Module (with sample_input=), or the path of a model file (ONNX, skops, "
        "Keras, TFLite; pickle, joblib or torch.save with trust=True) or a Hugging Face folder",
        field="model",
    )


def _package_path(path: Path, dest: Path, sample_input: Any, trust: bool) -> Packaged:
    fmt, file = detect_format(path)
    if fmt == "onnx":
        from shipyard.runtimes.onnx import package_onnx

        return package_onnx(file, dest)
    from shipyard.runtimes import sklearn

    if fmt == "skops":
        return sklearn.package_skops(file, dest, sample_input, trust)
    if fmt in ("pickle", "joblib"):
        return sklearn.package_pickle(file, dest, fmt, sample_input, trust)
    if fmt == "tflite":
        from shipyard.runtimes.tflite import package_tflite

        return package_tflite(file, dest)
    if fmt in ("keras", "keras-h5"):
        from shipyard.runtimes.keras import package_keras

        return package_keras(file, dest, fmt, trust)
    if fmt == "torch-checkpoint":
        from shipyard.runtimes.pytorch import package_checkpoint

        return package_checkpoint(file, dest, sample_input, trust)
    raise InvalidInputError(
        f"{file.name} holds {_PLANNED.get(fmt, fmt)}, which this version of Shipyard cannot "
        "serve yet; convert it to ONNX and push that",
        field="path",
    )

"""Push-time packaging: turn what a user pushes (an in-memory model or a path) into artifact files
plus the facts recorded with the version. One module per format; loading for serving is in
`shipyard.runtimes`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.packaging.folder import refuse_links
from shipyard.packaging.formats import Detected, detect_format
from shipyard.packaging.isolated import check_isolated
from shipyard.packaging.limits import check_archive, check_file_size, check_folder_sizes
from shipyard.packaging.packaged import Packaged
from shipyard.settings import PushSettings

__all__ = ["Packaged", "package"]

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
    limits: PushSettings | None = None,
) -> Packaged:
    """Write the artifact for `obj` into the empty folder `dest` and describe it, within `limits`."""
    from shipyard.packaging import pytorch, sklearn, tf_savedmodel, transformers

    limits = limits or PushSettings()
    if isinstance(obj, (str, Path)):
        path = Path(obj).expanduser()
        if path.is_dir() and not path.is_symlink():
            refuse_links(path)
            check_folder_sizes(path, limits)
        elif path.is_file():
            check_file_size(path, limits)
        if tf_savedmodel.is_saved_model(path):
            return tf_savedmodel.package_saved_model(path, dest, limits, trust)
        if transformers.is_hf_folder(path):
            return transformers.package_folder(
                path, dest, trust=trust, task=task, truncate=truncate, limits=limits
            )
        return _package_file(detect_format(path), dest, sample_input, trust, limits)
    if transformers.is_transformers_object(obj):
        return transformers.package_object(
            obj, dest, tokenizer=tokenizer, task=task, truncate=truncate, limits=limits
        )
    if sklearn.is_estimator(obj):
        return sklearn.package_estimator(obj, dest, sample_input, trust)
    if pytorch.is_module(obj):
        return pytorch.package_module(obj, dest, sample_input)
    raise InvalidInputError(
        f"cannot push a {type(obj).__module__}.{type(obj).__qualname__}: pass a scikit-learn "
        "estimator or pipeline, a transformers model (with tokenizer=) or SentenceTransformer, "
        "a PyTorch nn.Module (with sample_input=), or the path of a model file (ONNX, skops, "
        "Keras, TFLite, GGUF; pickle, joblib or torch.save with trust=True), a Hugging Face folder "
        "or a TensorFlow SavedModel folder",
        field="model",
    )


def _package_file(
    detected: Detected, dest: Path, sample_input: Any, trust: bool, limits: PushSettings
) -> Packaged:
    fmt, file = detected.format, detected.file
    if fmt in ("skops", "keras", "torch-checkpoint"):
        check_archive(file, limits)
    if fmt == "onnx":
        from shipyard.packaging.onnx import package_onnx

        return package_onnx(file, dest, detected.onnx_model, limits)
    if fmt in ("tflite", "keras", "keras-h5"):
        check_isolated([(fmt, file)], limits)
    from shipyard.packaging import sklearn

    if fmt == "skops":
        return sklearn.package_skops(file, dest, sample_input, trust)
    if fmt in ("pickle", "joblib"):
        return sklearn.package_pickle(file, dest, fmt, sample_input, trust)
    if fmt == "tflite":
        from shipyard.packaging.tflite import package_tflite

        return package_tflite(file, dest)
    if fmt in ("keras", "keras-h5"):
        from shipyard.packaging.keras import package_keras

        return package_keras(file, dest, fmt, trust)
    if fmt == "gguf":
        from shipyard.packaging.gguf import package_gguf

        return package_gguf(file, dest)
    if fmt == "torch-checkpoint":
        from shipyard.packaging.pytorch import package_checkpoint

        return package_checkpoint(file, dest, sample_input, trust)
    raise InvalidInputError(
        f"{file.name} holds {_PLANNED.get(fmt, fmt)}, which this version of Shipyard cannot "
        "serve yet; convert it to ONNX and push that",
        field="path",
    )

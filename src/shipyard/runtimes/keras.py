"""Keras 3 models (`.keras`, and legacy `.h5` where Keras 3 reads it) on the PyTorch backend,
always loaded in safe mode: a Lambda layer carrying Python code is refused unless trusted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, MissingDependencyError, UntrustedArtifactError
from shipyard.runtimes.base import Packaged
from shipyard.settings import RuntimeSettings
from shipyard.tensors import datatype_of
from shipyard.types import ModelVersion, Signature, TensorSpec

FILES = {"keras": "model.keras", "keras-h5": "model.h5"}


def _keras() -> Any:
    # Keras reads its backend once, at import; torch is the backend Shipyard installs.
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(exc.name or "keras", "keras", "Keras models") from exc
    return keras


def _load(path: Path, trusted: bool) -> Any:
    keras = _keras()
    try:
        return keras.saving.load_model(str(path), safe_mode=not trusted, compile=False)
    except ValueError as exc:
        if "arbitrary code" in str(exc) or "safe_mode" in str(exc):
            raise UntrustedArtifactError(
                f"{path.name} contains a layer that runs Python code when loaded (e.g. a Lambda); "
                "push it with --trust if you trust it"
            ) from exc
        raise InvalidInputError(f"Keras cannot load {path.name}: {exc}", field="path") from exc
    except (OSError, TypeError, KeyError) as exc:
        raise InvalidInputError(f"Keras cannot load {path.name}: {exc}", field="path") from exc


def _spec(name: str, tensor: Any) -> TensorSpec:
    shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
    return TensorSpec(name, datatype_of(np.dtype(str(tensor.dtype))), shape)


def _signature(model: Any) -> Signature:
    inputs = tuple(_spec(t.name, t) for t in model.inputs)
    names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
    return Signature(inputs, tuple(_spec(n, t) for n, t in zip(names, model.outputs, strict=True)))


def package_keras(source: Path, dest: Path, fmt: str, trust: bool) -> Packaged:
    keras = _keras()
    target = dest / FILES[fmt]
    shutil.copyfile(source, target)
    try:
        model, needs_trust = _load(target, False), False
    except UntrustedArtifactError:
        if not trust:
            raise
        model, needs_trust = _load(target, True), True
    import torch

    versions = {"keras": keras.__version__, "torch": torch.__version__.split("+")[0]}
    extra = {"file": FILES[fmt], "backend": keras.backend.backend()}
    return Packaged(fmt, "keras", _signature(model), versions, extra, trusted=needs_trust)


class KerasRuntime:
    can_batch = True

    def __init__(self, path: Path, version: ModelVersion, settings: RuntimeSettings) -> None:
        self._model = _load(path / FILES[version.format], version.trusted)
        self.signature = version.signature
        if settings.intra_op_threads:
            import torch

            torch.set_num_threads(settings.intra_op_threads)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        # Hand Keras torch tensors: its own numpy conversion trips a numpy 2 deprecation.
        args = [torch.from_numpy(np.ascontiguousarray(inputs[t.name])) for t in self.signature.inputs]
        with torch.inference_mode():  # no autograd graph for serving
            result = self._model(args[0] if len(args) == 1 else args, training=False)
        outputs = result if isinstance(result, (list, tuple)) else [result]
        # Torch tensors straight to numpy: keras.ops.convert_to_numpy trips a numpy 2 warning.
        return {
            spec.name: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            for spec, value in zip(self.signature.outputs, outputs, strict=True)
        }

    def close(self) -> None:
        self._model = None

"""Keras 3 models (`.keras`, and legacy `.h5` where Keras 3 reads it) on the PyTorch backend,
always loaded in safe mode: a Lambda layer carrying Python code is refused unless trusted."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, MissingDependencyError, UntrustedArtifactError
from shipyard.runtimes.base import one_line
from shipyard.settings import RuntimeSettings
from shipyard.types import ModelVersion

FILES = {"keras": "model.keras", "keras-h5": "model.h5"}


def import_keras() -> Any:
    """keras on the torch backend, or a clear error naming the extra that installs it."""
    # Keras reads its backend once, at import; torch is the backend Shipyard installs.
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(exc.name or "keras", "keras", "Keras models") from exc
    return keras


def load_keras(path: Path, trusted: bool) -> Any:
    """The model in `path`, in safe mode unless `trusted`."""
    keras = import_keras()
    try:
        return keras.saving.load_model(str(path), safe_mode=not trusted, compile=False)
    except ValueError as exc:
        if "arbitrary code" in str(exc) or "safe_mode" in str(exc):
            raise UntrustedArtifactError(
                f"{path.name} contains a layer that runs Python code when loaded (e.g. a Lambda); "
                "push it with --trust if you trust it"
            ) from exc
        raise InvalidInputError(f"Keras cannot load {path.name}: {one_line(exc)}", field="path") from exc
    # BadZipFile: a damaged .keras; RuntimeError: h5py on a damaged HDF5 structure
    except (OSError, TypeError, KeyError, RuntimeError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"Keras cannot load {path.name}: {one_line(exc)}", field="path") from exc


class KerasRuntime:
    can_batch = True

    def __init__(self, path: Path, version: ModelVersion, settings: RuntimeSettings) -> None:
        self._model = load_keras(path / FILES[version.format], version.trusted)
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

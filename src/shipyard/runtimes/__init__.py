"""Runtimes load one version from a local folder and predict. Chosen by format from a table of
import strings, so optional libraries are imported only when a model needs them."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError, MissingDependencyError, UntrustedArtifactError
from shipyard.runtimes.base import Runtime
from shipyard.settings import RuntimeSettings
from shipyard.types import ModelVersion

__all__ = ["CODE_EXECUTING", "RUNTIMES", "Runtime", "load_runtime"]

RUNTIMES: dict[str, str] = {
    "onnx": "shipyard.runtimes.onnx:OnnxRuntime",
    "skops": "shipyard.runtimes.sklearn:SklearnRuntime",
    "pickle": "shipyard.runtimes.sklearn:PickledRuntime",
    "joblib": "shipyard.runtimes.sklearn:PickledRuntime",
    "transformers": "shipyard.runtimes.transformers:TransformersRuntime",
    "transformers-onnx": "shipyard.runtimes.transformers:TransformersOnnxRuntime",
    "keras": "shipyard.runtimes.keras:KerasRuntime",
    "keras-h5": "shipyard.runtimes.keras:KerasRuntime",
    "tflite": "shipyard.runtimes.tflite:TfliteRuntime",
}
# Formats whose loading runs arbitrary code: loaded only for versions pushed with --trust.
CODE_EXECUTING = frozenset({"pickle", "joblib"})
# The optional extra that installs each runtime's library (absent: a core dependency).
EXTRAS: dict[str, str] = {
    "torch": "torch",
    "transformers": "transformers",
    "keras": "keras",
    "ai_edge_litert": "tflite",
}


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_runtime(version: ModelVersion, path: Path, settings: RuntimeSettings) -> Runtime:
    """Instantiate the runtime for `version` from its (already verified) artifact folder."""
    target = RUNTIMES.get(version.format)
    if target is None:
        raise InvalidInputError(
            f"{version.ref} has format {version.format!r}, which no runtime serves "
            f"(known: {', '.join(sorted(RUNTIMES))})"
        )
    if version.format in CODE_EXECUTING and not version.trusted:
        raise UntrustedArtifactError(
            f"{version.ref} is a {version.format} file, which runs code when loaded, and was not "
            "pushed with --trust"
        )
    try:
        cls = _import(target)
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        raise MissingDependencyError(
            package, EXTRAS.get(package), f"loading {version.format} models"
        ) from exc
    runtime: Runtime = cls(path, version, settings)
    return runtime

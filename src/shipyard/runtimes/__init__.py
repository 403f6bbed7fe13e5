"""Runtimes load one version from a local folder and predict. Chosen by format from a table of
import strings, so optional libraries are imported only when a model needs them."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError, MissingDependencyError, UntrustedArtifactError
from shipyard.runtimes.base import Runtime
from shipyard.runtimes.generation import GenerationEngine
from shipyard.settings import GenerationSettings, RuntimeSettings
from shipyard.types import ModelVersion

__all__ = [
    "CODE_EXECUTING",
    "GENERATORS",
    "RUNTIMES",
    "GenerationEngine",
    "Runtime",
    "is_generative",
    "load_generator",
    "load_runtime",
]

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
# Generative language models: engines that decode token by token (runtimes/generation.py).
GENERATORS: dict[str, str] = {
    "gguf": "shipyard.runtimes.llama_cpp:LlamaCppEngine",
    "transformers-lm": "shipyard.runtimes.transformers_lm:TransformersLMEngine",
}
# Formats whose loading runs arbitrary code: loaded only for versions pushed with --trust.
CODE_EXECUTING = frozenset({"pickle", "joblib"})
# The optional extra that installs each runtime's library (absent: a core dependency).
EXTRAS: dict[str, str] = {
    "torch": "torch",
    "transformers": "transformers",
    "keras": "keras",
    "ai_edge_litert": "tflite",
    "llama_cpp": "llm",
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
    runtime: Runtime = _class(target, version)(path, version, settings)
    return runtime


def is_generative(version: ModelVersion) -> bool:
    """Whether the version is a generative language model (served by an engine, not a runtime)."""
    return version.format in GENERATORS


def load_generator(
    version: ModelVersion, path: Path, runtime: RuntimeSettings, generation: GenerationSettings
) -> GenerationEngine:
    """Start the engine for a generative `version` from its (already verified) artifact folder."""
    target = GENERATORS.get(version.format)
    if target is None:
        raise InvalidInputError(
            f"{version.ref} has format {version.format!r}, which is not a generative model "
            f"(generative formats: {', '.join(sorted(GENERATORS))})"
        )
    engine: GenerationEngine = _class(target, version)(path, version, runtime, generation)
    return engine


def _class(target: str, version: ModelVersion) -> Any:
    try:
        return _import(target)
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        raise MissingDependencyError(
            package, EXTRAS.get(package), f"loading {version.format} models"
        ) from exc

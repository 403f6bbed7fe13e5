"""scikit-learn estimators loaded for serving: skops files (typed, allow-listed loading), or
pickle/joblib files that were pushed with --trust."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, UntrustedArtifactError
from shipyard.runtimes.base import one_line
from shipyard.runtimes.sklearn_trees import TREE_TYPES, check_trees
from shipyard.settings import RuntimeSettings
from shipyard.types import ModelVersion

SKOPS_FILE = "model.skops"
PICKLE_FILES = {"pickle": "model.pkl", "joblib": "model.joblib"}


# Module paths under `sklearn` that hold other projects' code (vendored libraries) or test
# helpers; their names are never trusted, and never imported to find out.
_FOREIGN_SEGMENTS = frozenset({"externals", "tests", "conftest", "_testing"})


def _is_sklearn_module(module: str) -> bool:
    return module == "sklearn" or module.startswith("sklearn.")


def _is_sklearn_class(type_name: str) -> bool:
    """scikit-learn's own classes are trusted: the class the name resolves to must be *defined*
    in scikit-learn, since a skops file can name anything importable under a `sklearn` module,
    including re-exports (numpy.memmap, torch's file writer) that skops would build with
    arguments from the file. Types skops distrusts for their content are trusted only because
    `check_trees` inspects them after loading."""
    module, _, attr = type_name.rpartition(".")
    if not _is_sklearn_module(module) or not attr.isidentifier():
        return False
    if _FOREIGN_SEGMENTS.intersection(module.split(".")):
        return False
    from skops.io.exceptions import UNTRUSTED_TYPE_REASONS

    if type_name in UNTRUSTED_TYPE_REASONS and type_name not in TREE_TYPES:
        return False
    try:
        obj = getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return False
    return inspect.isclass(obj) and _is_sklearn_module(getattr(obj, "__module__", None) or "")


def skops_untrusted(path: Path) -> tuple[list[str], list[str]]:
    """(types Shipyard allows beyond skops' defaults, types nobody vouched for)."""
    import skops.io as sio

    try:
        names = sio.get_untrusted_types(file=path)
    except Exception as exc:  # a damaged archive or schema: skops raises what zipfile/json raise
        raise InvalidInputError(
            f"cannot read {path.name} with skops (a damaged file?): {one_line(exc)}", field="path"
        ) from exc
    allowed = [n for n in names if _is_sklearn_class(n)]
    return allowed, [n for n in names if n not in allowed]


def refuse_types(path: Path, unknown: list[str]) -> UntrustedArtifactError:
    """The error for a skops file naming types nobody vouched for."""
    return UntrustedArtifactError(
        f"{path.name} contains types that are not on the safe-loading allow-list: "
        f"{', '.join(unknown)}; loading them could run their code. If you trust this model, "
        "push it with --trust (recorded on the version)"
    )


def output_plan(model: Any) -> dict[str, str]:
    """Output name → estimator method that produces it."""
    if hasattr(model, "predict_proba") and hasattr(model, "classes_"):
        return {"label": "predict", "probabilities": "predict_proba"}
    if hasattr(model, "predict"):
        return {"prediction": "predict"}
    return {"output": "transform"}


def load_skops(path: Path, trusted_types: list[str] | None, trust: bool) -> Any:
    """A .skops file's estimator; types beyond the allow-list and `trusted_types` need `trust`."""
    import skops.io as sio

    allowed, unknown = skops_untrusted(path)
    # At load time, the types recorded at push are vouched for; anything else is not.
    unvouched = [n for n in unknown if trusted_types is None or n not in trusted_types]
    if unvouched and not trust:
        raise refuse_types(path, unvouched)
    try:
        model = sio.load(path, trusted=allowed + unknown)
    except Exception as exc:  # skops raises plain exceptions for damaged or foreign files
        raise InvalidInputError(f"cannot load {path.name} with skops: {one_line(exc)}") from exc
    check_trees(model, trust=trust)
    return model


def load_pickle(path: Path) -> Any:
    """A pickle or joblib file's object (only ever called for trusted versions)."""
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # unpickling can fail in any way the pickled code chooses
        raise InvalidInputError(
            f"cannot unpickle {path.name}: {type(exc).__name__}: {one_line(exc)}"
        ) from exc


class _EstimatorRuntime:
    can_batch = True

    def __init__(self, model: Any, version: ModelVersion) -> None:
        self._model = model
        self.signature = version.signature
        plan = version.extra.get("outputs_from") or output_plan(model)
        self._methods = {name: getattr(model, method) for name, method in plan.items()}

    @property
    def estimator(self) -> Any:
        """The scikit-learn object itself, for conversion to ONNX and refitting as a student."""
        return self._model

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs[self.signature.inputs[0].name]
        try:
            return {name: np.asarray(method(x)) for name, method in self._methods.items()}
        except ValueError as exc:  # scikit-learn's input validation errors
            raise InvalidInputError(f"the model rejected the input: {one_line(exc)}") from exc

    def close(self) -> None:
        self._model = None
        self._methods = {}


class SklearnRuntime(_EstimatorRuntime):
    def __init__(self, path: Path, version: ModelVersion, settings: RuntimeSettings) -> None:
        trusted_types = list(version.extra.get("trusted_types", []))
        super().__init__(load_skops(path / SKOPS_FILE, trusted_types, version.trusted), version)


class PickledRuntime(_EstimatorRuntime):
    def __init__(self, path: Path, version: ModelVersion, settings: RuntimeSettings) -> None:
        super().__init__(load_pickle(path / PICKLE_FILES[version.format]), version)

"""scikit-learn estimators: stored with skops (typed, allow-listed loading), or pickle/joblib
files when the user vouches for them with --trust."""

from __future__ import annotations

import importlib
import inspect
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, UntrustedArtifactError
from shipyard.runtimes.base import Packaged
from shipyard.settings import RuntimeSettings
from shipyard.tensors import datatype_of
from shipyard.types import ModelVersion, Signature, TensorSpec

SKOPS_FILE = "model.skops"
PICKLE_FILES = {"pickle": "model.pkl", "joblib": "model.joblib"}
INPUT_NAME = "input"


def is_estimator(obj: Any) -> bool:
    return hasattr(obj, "fit") and any(hasattr(obj, m) for m in ("predict", "predict_proba", "transform"))


def _library_versions() -> dict[str, str]:
    import sklearn

    versions = {"scikit-learn": sklearn.__version__, "numpy": np.__version__}
    try:
        import skops

        versions["skops"] = skops.__version__
    except ImportError:  # only pickled models can be served without skops
        pass
    return versions


def _is_sklearn_class(type_name: str) -> bool:
    """scikit-learn's own classes (e.g. `sklearn.tree._tree.Tree`) are trusted; functions and
    other libraries' types are not, since a skops file can name any callable."""
    module, _, attr = type_name.rpartition(".")
    if not (module == "sklearn" or module.startswith("sklearn.")):
        return False
    try:
        return inspect.isclass(getattr(importlib.import_module(module), attr, None))
    except ImportError:
        return False


def skops_untrusted(path: Path) -> tuple[list[str], list[str]]:
    """(types Shipyard allows beyond skops' defaults, types nobody vouched for)."""
    import skops.io as sio

    names = sio.get_untrusted_types(file=path)
    allowed = [n for n in names if _is_sklearn_class(n)]
    return allowed, [n for n in names if n not in allowed]


def _refuse_types(path: Path, unknown: list[str]) -> UntrustedArtifactError:
    return UntrustedArtifactError(
        f"{path.name} contains types that are not on the safe-loading allow-list: "
        f"{', '.join(unknown)}; loading them could run their code. If you trust this model, "
        "push it with --trust (recorded on the version)"
    )


def _output_plan(model: Any) -> dict[str, str]:
    """Output name → estimator method that produces it."""
    if hasattr(model, "predict_proba") and hasattr(model, "classes_"):
        return {"label": "predict", "probabilities": "predict_proba"}
    if hasattr(model, "predict"):
        return {"prediction": "predict"}
    return {"output": "transform"}


def _estimator_signature(model: Any, sample_input: Any) -> tuple[Signature, dict[str, Any]]:
    plan = _output_plan(model)
    extra: dict[str, Any] = {"outputs_from": plan}
    if hasattr(model, "classes_"):
        extra["classes"] = np.asarray(model.classes_).tolist()
    if sample_input is not None:
        sample = np.asarray(sample_input)
        if sample.ndim == 1:
            sample = sample[np.newaxis, :]
        if sample.ndim != 2 or sample.shape[0] == 0:
            raise InvalidInputError(
                f"sample_input must be a non-empty 2-D array (rows × features), got shape "
                f"{list(sample.shape)}",
                field="sample_input",
            )
        in_spec = TensorSpec(INPUT_NAME, datatype_of(sample.dtype), (-1, sample.shape[1]))
        try:
            outputs = [_spec_of(name, getattr(model, m)(sample[:2])) for name, m in plan.items()]
        except Exception as exc:  # the estimator's own error: wrong features, unfitted, …
            raise InvalidInputError(
                f"the model fails on sample_input: {type(exc).__name__}: {exc}",
                field="sample_input",
            ) from exc
    elif hasattr(model, "n_features_in_"):
        in_spec = TensorSpec(INPUT_NAME, "FP64", (-1, int(model.n_features_in_)))
        outputs = []
        for name in plan:
            if name == "label":
                outputs.append(TensorSpec(name, datatype_of(np.asarray(model.classes_).dtype), (-1,)))
            elif name == "probabilities":
                outputs.append(TensorSpec(name, "FP64", (-1, len(model.classes_))))
            else:
                outputs.append(TensorSpec(name, "FP64", (-1,)))
    else:
        raise InvalidInputError(
            "cannot tell the model's inputs: it is not fitted (no n_features_in_); fit it or "
            "pass sample_input",
            field="sample_input",
        )
    return Signature((in_spec,), tuple(outputs)), extra


def _spec_of(name: str, value: Any) -> TensorSpec:
    arr = np.asarray(value)
    return TensorSpec(name, datatype_of(arr.dtype), (-1, *arr.shape[1:]))


def package_estimator(model: Any, dest: Path, sample_input: Any, trust: bool) -> Packaged:
    """Save an in-memory estimator with skops."""
    import skops.io as sio

    signature, extra = _estimator_signature(model, sample_input)
    target = dest / SKOPS_FILE
    try:
        sio.dump(model, target)
    except Exception as exc:  # skops cannot serialise some objects (lambdas, open files, …)
        raise InvalidInputError(
            f"skops cannot save this {type(model).__name__}: {exc}", field="model"
        ) from exc
    return _skops_packaged(target, signature, extra, trust)


def package_skops(source: Path, dest: Path, sample_input: Any, trust: bool) -> Packaged:
    """Copy a .skops file after loading it (allow-listed types only, unless trusted)."""
    target = dest / SKOPS_FILE
    shutil.copyfile(source, target)
    model = _load_skops(target, trusted_types=None, trust=trust)
    signature, extra = _estimator_signature(model, sample_input)
    return _skops_packaged(target, signature, extra, trust)


def _skops_packaged(target: Path, signature: Signature, extra: dict[str, Any], trust: bool) -> Packaged:
    allowed, unknown = skops_untrusted(target)
    if unknown and not trust:
        raise _refuse_types(target, unknown)
    extra["trusted_types"] = allowed + unknown
    return Packaged("skops", "scikit-learn", signature, _library_versions(), extra, trusted=bool(unknown))


def _load_skops(path: Path, trusted_types: list[str] | None, trust: bool) -> Any:
    import skops.io as sio

    allowed, unknown = skops_untrusted(path)
    # At load time, the types recorded at push are vouched for; anything else is not.
    unvouched = [n for n in unknown if trusted_types is None or n not in trusted_types]
    if unvouched and not trust:
        raise _refuse_types(path, unvouched)
    try:
        return sio.load(path, trusted=allowed + unknown)
    except Exception as exc:  # skops raises plain exceptions for damaged or foreign files
        raise InvalidInputError(f"cannot load {path.name} with skops: {exc}") from exc


def _load_pickle(path: Path) -> Any:
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # unpickling can fail in any way the pickled code chooses
        raise InvalidInputError(f"cannot unpickle {path.name}: {type(exc).__name__}: {exc}") from exc


def package_pickle(source: Path, dest: Path, fmt: str, sample_input: Any, trust: bool) -> Packaged:
    """Copy a pickle/joblib file; only with --trust, since unpickling runs arbitrary code."""
    if not trust:
        raise UntrustedArtifactError(
            f"{source.name} is a {fmt} file: loading it runs arbitrary code, so Shipyard refuses "
            "it by default. Save the model with skops (or convert it to ONNX), or, if you trust "
            "where it came from, push it again with --trust (recorded on the version)"
        )
    target = dest / PICKLE_FILES[fmt]
    shutil.copyfile(source, target)
    model = _load_pickle(target)
    if not (hasattr(model, "predict") or hasattr(model, "transform")):
        raise InvalidInputError(
            f"{source.name} holds a {type(model).__name__}, which has no predict() or transform()"
        )
    signature, extra = _estimator_signature(model, sample_input)
    return Packaged(fmt, "scikit-learn", signature, _library_versions(), extra, trusted=True)


class _EstimatorRuntime:
    can_batch = True

    def __init__(self, model: Any, version: ModelVersion) -> None:
        self._model = model
        self.signature = version.signature
        plan = version.extra.get("outputs_from") or _output_plan(model)
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
            raise InvalidInputError(f"the model rejected the input: {exc}") from exc

    def close(self) -> None:
        self._model = None
        self._methods = {}


class SklearnRuntime(_EstimatorRuntime):
    def __init__(self, path: Path, version: ModelVersion, settings: RuntimeSettings) -> None:
        trusted_types = list(version.extra.get("trusted_types", []))
        super().__init__(_load_skops(path / SKOPS_FILE, trusted_types, version.trusted), version)


class PickledRuntime(_EstimatorRuntime):
    def __init__(self, path: Path, version: ModelVersion, settings: RuntimeSettings) -> None:
        super().__init__(_load_pickle(path / PICKLE_FILES[version.format]), version)

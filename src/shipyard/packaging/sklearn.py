"""scikit-learn estimators at push: saved with skops (typed, allow-listed loading), or pickle/joblib
files copied when the user vouches for them with --trust."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, UntrustedArtifactError
from shipyard.packaging.packaged import Packaged
from shipyard.runtimes.base import one_line
from shipyard.runtimes.sklearn import (
    PICKLE_FILES,
    SKOPS_FILE,
    load_pickle,
    load_skops,
    output_plan,
    refuse_types,
    skops_untrusted,
)
from shipyard.runtimes.sklearn_trees import check_trees
from shipyard.tensors import datatype_of
from shipyard.types import Signature, TensorSpec

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


def _estimator_signature(model: Any, sample_input: Any) -> tuple[Signature, dict[str, Any]]:
    plan = output_plan(model)
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
                f"the model fails on sample_input: {type(exc).__name__}: {one_line(exc)}",
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
            f"skops cannot save this {type(model).__name__}: {one_line(exc)}", field="model"
        ) from exc
    # The user's own object: trees with splits Shipyard cannot check are recorded as trusted, so
    # serving loads them as pushed.
    return _skops_packaged(target, signature, extra, trust, check_trees(model, trust=True))


def package_skops(source: Path, dest: Path, sample_input: Any, trust: bool) -> Packaged:
    """Copy a .skops file after loading it (allow-listed types only, unless trusted)."""
    target = dest / SKOPS_FILE
    shutil.copyfile(source, target)
    model = load_skops(target, trusted_types=None, trust=trust)
    signature, extra = _estimator_signature(model, sample_input)
    return _skops_packaged(target, signature, extra, trust, check_trees(model, trust=trust))


def _skops_packaged(
    target: Path, signature: Signature, extra: dict[str, Any], trust: bool, trees_need_trust: bool
) -> Packaged:
    allowed, unknown = skops_untrusted(target)
    if unknown and not trust:
        raise refuse_types(target, unknown)
    extra["trusted_types"] = allowed + unknown
    needs_trust = bool(unknown) or trees_need_trust
    return Packaged("skops", "scikit-learn", signature, _library_versions(), extra, needs_trust=needs_trust)


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
    model = load_pickle(target)
    if not (hasattr(model, "predict") or hasattr(model, "transform")):
        raise InvalidInputError(
            f"{source.name} holds a {type(model).__name__}, which has no predict() or transform()"
        )
    signature, extra = _estimator_signature(model, sample_input)
    return Packaged(fmt, "scikit-learn", signature, _library_versions(), extra, needs_trust=True)

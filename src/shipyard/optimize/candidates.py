"""A candidate is an artifact that could become a version; `Evaluator` measures it exactly as it
would be served: packaged by the registry's own packager, loaded by the runtime that would serve
it, fed the eval set through the same input checks.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, ModelError
from shipyard.optimize.evalset import EvalSet
from shipyard.optimize.measure import Speed, folder_size, gzip_size, significant, time_model
from shipyard.optimize.scoring import (
    Outputs,
    agreement,
    bootstrap,
    concat,
    interpret,
    per_unit,
    score,
)
from shipyard.packaging import package
from shipyard.runtimes import Runtime, load_runtime
from shipyard.runtimes.model import Model
from shipyard.settings import RuntimeSettings
from shipyard.tensors import coerce_inputs
from shipyard.types import ModelVersion

PREDICT_CHUNK = 64  # rows per call while scoring the eval set


@dataclass
class Candidate:
    name: str
    artifact: Path  # an ONNX file or a model folder, as `registry.push` accepts it
    recipe: dict[str, Any]


class Status(StrEnum):
    ORIGINAL = "original"
    MEASURED = "measured"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FAILED = "failed"
    SELECTED = "selected"
    REGISTERED = "registered"


class Rejection(StrEnum):
    """Why the search turned a candidate down; the fallback retries only `OVER_BUDGET` ones."""

    OVER_BUDGET = "over_budget"
    DRIFT = "drift"  # embeddings moved away from the original's
    NOT_BETTER = "not_better"


@dataclass(frozen=True)
class Result:
    """What was measured on one model, and the verdict on it."""

    name: str
    recipe: dict[str, Any]
    size_bytes: int = 0
    size_gzip_bytes: int = 0
    load_s: float = 0.0
    speed: Speed | None = None
    metric: float | None = None
    interval: tuple[float, float] | None = None
    agreement: dict[str, float] = field(default_factory=dict)
    status: Status = Status.MEASURED
    reason: str = ""
    rejection: Rejection | None = None
    outputs: Outputs | None = field(default=None, repr=False)

    def judged(self, status: Status, reason: str = "", rejection: Rejection | None = None) -> Result:
        return replace(self, status=status, reason=reason, rejection=rejection)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "reason": self.reason,
            "recipe": self.recipe,
            "size_bytes": self.size_bytes,
            "size_gzip_bytes": self.size_gzip_bytes,
            "load_s": round(self.load_s, 4),
            "speed": self.speed.to_dict() if self.speed else None,
            "metric": None if self.metric is None else significant(self.metric, 6),
            "interval95": None if self.interval is None else [significant(v, 6) for v in self.interval],
            "agreement": {k: round(v, 8) for k, v in self.agreement.items()},
        }


def preview_version(name: str, packaged: Any, size: int) -> ModelVersion:
    """A stand-in record for an unregistered artifact, enough for `load_runtime`."""
    return ModelVersion(
        name=name,
        version=0,
        format=packaged.format,
        digest="",
        size=size,
        files=(),
        signature=packaged.signature,
        framework=packaged.framework,
        library_versions=packaged.library_versions,
        extra=packaged.extra,
        trusted=packaged.needs_trust,
    )


def model_outputs(
    runtime: Runtime, version: ModelVersion, inputs: dict[str, np.ndarray], classes: list[Any] | None
) -> Outputs:
    """A model's answers for `inputs`, in chunks, read by role."""
    rows = len(next(iter(inputs.values())))
    classes = version.extra.get("classes") or classes
    model = Model(version, runtime)
    parts = []
    for start in range(0, rows, PREDICT_CHUNK):
        chunk = {k: v[start : start + PREDICT_CHUNK] for k, v in inputs.items()}
        parts.append(interpret(model.predict(chunk), classes))
    return concat(parts)


class Evaluator:
    """Scores models on one eval set against the original's outputs (`reference`), with fixed
    runtime settings."""

    def __init__(
        self,
        evalset: EvalSet,
        reference: Outputs,
        metric: str | None,
        *,
        settings: RuntimeSettings,
        seconds: float,
        timing_inputs: dict[str, np.ndarray],
        classes: list[Any] | None = None,
    ) -> None:
        self.evalset = evalset
        self.reference = reference
        self.metric = metric
        self.settings = settings
        self.seconds = seconds
        self.timing_inputs = timing_inputs
        self.classes = classes
        self._workdir = Path(tempfile.mkdtemp(prefix="shipyard-optimize-"))

    def close(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, candidate: Candidate) -> tuple[Runtime, ModelVersion, Path, float]:
        """Package the candidate as a push would, then load it; (runtime, version, folder, seconds)."""
        folder = Path(tempfile.mkdtemp(prefix="candidate-", dir=self._workdir))
        packaged = package(candidate.artifact, folder)
        version = preview_version(candidate.name, packaged, folder_size(folder))
        start = time.perf_counter()
        runtime = load_runtime(version, folder, self.settings)
        return runtime, version, folder, time.perf_counter() - start

    def outputs(self, runtime: Runtime, version: ModelVersion, inputs: dict[str, np.ndarray]) -> Outputs:
        return model_outputs(runtime, version, inputs, self.classes)

    def evaluate_loaded(
        self,
        name: str,
        recipe: dict[str, Any],
        runtime: Runtime,
        version: ModelVersion,
        folder: Path,
        *,
        load_s: float = 0.0,
        timed: bool = True,
        outputs: Outputs | None = None,
        status: Status = Status.MEASURED,
    ) -> Result:
        """Size, eval-set outputs (`outputs` if already computed), metric, agreement, speed."""
        found = outputs or self.outputs(runtime, version, self.evalset.inputs)
        metric = interval = None
        if self.metric is not None:
            pred, target = per_unit(self.metric, self.evalset, found, self.reference)
            metric = score(self.metric, pred, target)
            interval = bootstrap(self.metric, pred, target)
        speed = (
            time_model(Model(version, runtime).predict, self.timing_inputs, self.seconds) if timed else None
        )
        return Result(
            name,
            recipe,
            size_bytes=folder_size(folder),
            size_gzip_bytes=gzip_size(folder),
            load_s=load_s,
            speed=speed,
            metric=metric,
            interval=interval,
            agreement=agreement(self.reference, found),
            status=status,
            outputs=found,
        )

    def evaluate(self, candidate: Candidate, *, timed: bool = True) -> Result:
        """Measure a candidate; a candidate that fails to package or load is reported, not raised."""
        try:
            runtime, version, folder, load_s = self.load(candidate)
        except InvalidInputError as exc:
            return Result(candidate.name, candidate.recipe, status=Status.FAILED, reason=str(exc))
        try:
            return self.evaluate_loaded(
                candidate.name, candidate.recipe, runtime, version, folder, load_s=load_s, timed=timed
            )
        except (InvalidInputError, ModelError) as exc:  # a candidate the runtime cannot run
            return Result(candidate.name, candidate.recipe, status=Status.FAILED, reason=str(exc))
        finally:
            runtime.close()
            shutil.rmtree(folder, ignore_errors=True)


def graph_feeds(
    runtime: Runtime, version: ModelVersion, inputs: dict[str, np.ndarray], limit: int
) -> list[dict[str, np.ndarray]]:
    """What the ONNX graph itself is fed for up to `limit` rows (calibration, per-node debugging):
    the checked inputs for plain ONNX models, token ids and masks for transformer encoders."""
    from shipyard.runtimes.transformers import TransformersOnnxRuntime

    rows = {k: v[:limit] for k, v in inputs.items()}
    if isinstance(runtime, TransformersOnnxRuntime):
        ids, _ = runtime.token_ids(rows[version.signature.inputs[0].name])
        return [runtime.feeds(batch, mask) for _, batch, mask in runtime.buckets(ids)]
    checked = coerce_inputs(version.signature, rows)
    count = len(next(iter(checked.values())))
    return [{k: v[s : s + 32] for k, v in checked.items()} for s in range(0, count, 32)]

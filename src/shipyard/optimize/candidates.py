"""A candidate is an artifact that could become a version; `Evaluator` measures it exactly as it
would be served: packaged by the registry's own packager, loaded by the runtime that would serve
it, fed the eval set through the same input checks.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, ModelError
from shipyard.optimize.evalset import EvalSet
from shipyard.optimize.measure import Speed, folder_size, gzip_size, time_model
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


@dataclass
class Result:
    name: str
    recipe: dict[str, Any]
    size_bytes: int = 0
    size_gzip_bytes: int = 0
    load_s: float = 0.0
    speed: Speed | None = None
    metric: float | None = None
    interval: tuple[float, float] | None = None
    agreement: dict[str, float] = field(default_factory=dict)
    status: str = "measured"  # original | baseline | accepted | rejected | failed | selected
    reason: str = ""
    outputs: Outputs | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "recipe": self.recipe,
            "size_bytes": self.size_bytes,
            "size_gzip_bytes": self.size_gzip_bytes,
            "load_s": round(self.load_s, 4),
            "speed": self.speed.to_dict() if self.speed else None,
            "metric": None if self.metric is None else round(self.metric, 6),
            "interval95": None if self.interval is None else [round(v, 6) for v in self.interval],
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


class Evaluator:
    """Scores models on one eval set against the original's outputs (`reference`, set once the
    original has run), with a fixed thread count."""

    def __init__(
        self,
        evalset: EvalSet,
        metric: str | None,
        *,
        threads: int,
        seconds: float,
        timing_inputs: dict[str, np.ndarray],
        classes: list[Any] | None = None,
    ) -> None:
        self.evalset = evalset
        self.metric = metric
        self.settings = RuntimeSettings(intra_op_threads=threads, inter_op_threads=1)
        self.seconds = seconds
        self.timing_inputs = timing_inputs
        self.classes = classes
        self.reference: Outputs | None = None
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
        rows = len(next(iter(inputs.values())))
        classes = version.extra.get("classes") or self.classes
        model = Model(version, runtime)
        parts = []
        for start in range(0, rows, PREDICT_CHUNK):
            chunk = {k: v[start : start + PREDICT_CHUNK] for k, v in inputs.items()}
            parts.append(interpret(model.predict(chunk), classes))
        return concat(parts)

    def evaluate_loaded(
        self,
        result: Result,
        runtime: Runtime,
        version: ModelVersion,
        folder: Path,
        *,
        timed: bool = True,
        outputs: Outputs | None = None,
    ) -> Result:
        """Size, eval-set outputs (`outputs` if already computed), metric, agreement, speed."""
        result.size_bytes = folder_size(folder)
        result.size_gzip_bytes = gzip_size(folder)
        result.outputs = outputs or self.outputs(runtime, version, self.evalset.inputs)
        assert self.reference is not None, "the session sets the original's outputs first"
        result.agreement = agreement(self.reference, result.outputs)
        if self.metric is not None:
            pred, target = per_unit(self.metric, self.evalset, result.outputs, self.reference)
            result.metric = score(self.metric, pred, target)
            result.interval = bootstrap(self.metric, pred, target)
        if timed:
            result.speed = time_model(Model(version, runtime).predict, self.timing_inputs, self.seconds)
        return result

    def evaluate(self, candidate: Candidate, *, timed: bool = True) -> Result:
        """Measure a candidate; a candidate that fails to package or load is reported, not raised."""
        result = Result(candidate.name, candidate.recipe)
        try:
            runtime, version, folder, result.load_s = self.load(candidate)
        except InvalidInputError as exc:
            result.status, result.reason = "failed", str(exc)
            return result
        try:
            return self.evaluate_loaded(result, runtime, version, folder, timed=timed)
        except (InvalidInputError, ModelError) as exc:  # a candidate the runtime cannot run
            result.status, result.reason = "failed", str(exc)
            return result
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

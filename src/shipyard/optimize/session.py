"""What every optimize command shares: the original version loaded and measured on the eval set,
the ONNX baseline built from it, and registration of a result with lineage and its report."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError
from shipyard.optimize import convert
from shipyard.optimize.candidates import Candidate, Evaluator, Result, Status, model_outputs
from shipyard.optimize.config import OperationConfig
from shipyard.optimize.evalset import EvalSet, load_eval
from shipyard.optimize.measure import host_info, significant
from shipyard.optimize.report import REPORT_FOLDER, EvalInfo, Report, attachments
from shipyard.optimize.scoring import METRICS, check_metric, default_metric
from shipyard.registry import Registry
from shipyard.registry.metadata import utc_now
from shipyard.runtimes import load_runtime
from shipyard.runtimes.onnx import ONNX_FILE
from shipyard.settings import RuntimeSettings
from shipyard.types import ModelVersion

SAMPLE_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Shipyard serves models over HTTP.",
    "A short one.",
    "Quantization trades a little accuracy for speed and size, and the trade must be measured.",
    "It rained all day in the city, so the match was postponed until next week.",
    "Embeddings map sentences with similar meanings to nearby vectors.",
    "Please reset my password.",
    "The recipe needs two eggs, flour, sugar and a pinch of salt.",
)
ONNX_BACKED = ("onnx", "transformers-onnx")
SKLEARN_FORMATS = ("skops", "pickle", "joblib")
CALIBRATION_UNITS = 128  # held out of the eval set when no calibration file is given


@dataclass(frozen=True)
class ProgressEvent:
    text: str
    measuring: bool = False  # a model is being measured (a progress bar advances)


Progress = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class Measured:
    """The original, measured: its result, the evaluator built on its outputs, the task metric."""

    original: Result
    evaluator: Evaluator
    metric: str | None


class Session:
    """The original version of REF and its eval data; `measure()` loads and measures the original
    once, and builds the evaluator every candidate shares."""

    def __init__(
        self,
        registry: Registry,
        ref: str,
        *,
        eval_path: str | Path | None = None,
        metric: str | None = None,
        label: str | None = None,
        threads: int | None = None,
        seconds: float = 2.0,
        hold_out_calibration: bool = False,
        progress: Progress | None = None,
    ) -> None:
        self.registry = registry
        self.version = registry.resolve(ref)
        self.path = registry.artifact_path(self.version)
        self.threads = threads or os.cpu_count() or 1
        self.settings = RuntimeSettings(intra_op_threads=self.threads, inter_op_threads=1)
        self.seconds = seconds
        self._progress = progress or (lambda _event: None)
        self.notes: list[str] = []
        self.evalset: EvalSet | None = None
        self.calibration: EvalSet | None = None  # held out of the eval set, when asked to
        if eval_path is not None:
            self.evalset = load_eval(eval_path, self.version.signature, label=label)
            if hold_out_calibration:
                self.calibration, self.evalset = self._hold_out(self.evalset)
        elif metric is not None:
            raise InvalidInputError("--metric needs an eval file (--eval)", field="metric")
        self._requested_metric = metric
        self.timing_inputs = self._timing_inputs()
        self.workdir = Path(tempfile.mkdtemp(prefix="shipyard-variants-"))
        self._measured: Measured | None = None

    def say(self, text: str) -> None:
        self._progress(ProgressEvent(text))

    def measuring(self, name: str) -> None:
        self._progress(ProgressEvent(f"measuring {name}", measuring=True))

    def measure(self) -> Result:
        """Load and measure the original (once): its outputs become the reference every candidate
        is compared with, and its score the one each must keep."""
        return self._measure().original

    def _measure(self) -> Measured:
        if self._measured is None:
            self._measured = self._measure_original()
        return self._measured

    @property
    def original(self) -> Result:
        return self._measure().original

    @property
    def evaluator(self) -> Evaluator:
        return self._measure().evaluator

    @property
    def metric(self) -> str | None:
        return self._measure().metric

    def _measure_original(self) -> Measured:
        # Without an eval set, agreement with the original is measured on the timing rows.
        scored = self.evalset if self.evalset is not None else EvalSet(self.timing_inputs)
        classes = self.version.extra.get("classes")
        self.measuring(f"the original {self.version.ref}")
        started = time.perf_counter()
        runtime = load_runtime(self.version, self.path, self.settings)
        load_s = time.perf_counter() - started
        try:
            reference = model_outputs(runtime, self.version, scored.inputs, classes)
            metric: str | None = None
            if self.evalset is not None:
                metric = self._requested_metric or default_metric(self.evalset, reference)
                check_metric(metric, self.evalset, reference)
            else:
                self.notes.append("no --eval file: agreement measured on synthetic inputs, no task metric")
            evaluator = Evaluator(
                scored,
                reference,
                metric,
                settings=self.settings,
                seconds=self.seconds,
                timing_inputs=self.timing_inputs,
                classes=classes,
            )
            original = evaluator.evaluate_loaded(
                "original",
                {"ref": str(self.version.ref)},
                runtime,
                self.version,
                self.path,
                load_s=load_s,
                outputs=reference,
                status=Status.ORIGINAL,
            )
        finally:
            runtime.close()
        return Measured(original, evaluator, metric)

    def _hold_out(self, evalset: EvalSet) -> tuple[EvalSet, EvalSet]:
        """(calibration, verdict): the first units calibrate, and never take part in the verdict."""
        count = min(CALIBRATION_UNITS, evalset.units // 4)
        calibration, rest = evalset.split(count)
        source = f"{evalset.source} (first {count} units)"
        calibration = EvalSet(
            calibration.inputs, calibration.labels, calibration.scores, source, calibration.pairs
        )
        self.notes.append(
            f"no --calibration file: the first {count} of {evalset.units} eval units calibrate static "
            f"quantization and rank nodes; the verdict uses the other {rest.units}"
        )
        return calibration, rest

    def close(self) -> None:
        if self._measured is not None:
            self._measured.evaluator.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timing_inputs(self) -> dict[str, np.ndarray]:
        """64 rows to time with: the eval set's first rows, else synthetic rows or sentences."""
        if self.evalset is not None:
            return {k: v[:64] for k, v in self.evalset.inputs.items()}
        signature = self.version.signature
        synthetic = convert.synthetic_rows(signature)
        if synthetic is not None:
            return synthetic
        if len(signature.inputs) == 1 and signature.inputs[0].datatype == "BYTES":
            texts = np.empty(64, dtype=object)
            texts[:] = [SAMPLE_SENTENCES[i % len(SAMPLE_SENTENCES)] for i in range(64)]
            return {signature.inputs[0].name: texts}
        raise InvalidInputError(
            f"{self.version.ref} has inputs that cannot be made up ({signature.describe()}); pass --eval",
            field="eval",
        )

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][1] if self.metric else True

    def onnx_graph(self, artifact: Path) -> Path:
        """The ONNX file inside a candidate artifact (a file, or a transformer folder's model.onnx)."""
        return artifact if artifact.is_file() else artifact / ONNX_FILE

    def with_graph(self, base: Path, graph: Path, name: str) -> Path:
        """A new artifact like `base` whose ONNX graph is `graph` (for folders: the tokenizer too)."""
        if base.is_file():
            return graph
        folder = self.workdir / name
        shutil.copytree(base, folder, ignore=shutil.ignore_patterns(ONNX_FILE))
        shutil.move(str(graph), folder / ONNX_FILE)
        return folder

    def baseline(self) -> Candidate:
        """The original as ONNX fp32: converted (scikit-learn, transformers) or as it is (ONNX)."""
        fmt = self.version.format
        if fmt in ONNX_BACKED:
            source = self.path / ONNX_FILE
            target = self.workdir / "original"
            if fmt == "onnx":
                shutil.copyfile(source, target.with_suffix(".onnx"))
                target = target.with_suffix(".onnx")
            else:  # the model's files, not the report that justified the original
                shutil.copytree(self.path, target, ignore=shutil.ignore_patterns(REPORT_FOLDER))
            return Candidate("onnx-fp32", target, {"steps": [], "source": str(self.version.ref)})
        if fmt in SKLEARN_FORMATS:
            return self._convert_sklearn()
        if fmt == "transformers":
            return self._convert_transformers()
        raise InvalidInputError(
            f"{self.version.ref} is a {fmt} model; optimization works on scikit-learn, ONNX, PyTorch "
            "(pushed as ONNX) and Hugging Face transformer versions",
            field="ref",
        )

    def _convert_sklearn(self) -> Candidate:
        estimator = load_estimator(self.version, self.path, self.settings)
        tree_like = any(hasattr(estimator, a) for a in ("tree_", "estimators_", "_predictors"))
        first_error: str | None = None
        for double in (False, True) if tree_like else (False,):
            self.say(f"converting to ONNX ({'float64' if double else 'float32'})")
            target = self.workdir / ("converted-fp64.onnx" if double else "converted.onnx")
            facts = convert.sklearn_to_onnx(estimator, self.version.signature, target, double=double)
            candidate = Candidate(
                "onnx-fp32" if not double else "onnx-fp64", target, _recipe(self, "convert", facts)
            )
            problem = self._parity(candidate)
            if problem is None:
                return candidate
            first_error = first_error or problem
            if double:
                break
            self.notes.append(
                f"float32 conversion flipped tree decisions ({problem}); trying float64 thresholds"
            )
        raise InvalidInputError(
            f"the ONNX conversion disagrees with the original: {first_error}", field="ref"
        )

    def _convert_transformers(self) -> Candidate:
        task = self.version.extra.get("task", "feature-extraction")
        self.say("exporting the encoder to ONNX")
        target = self.workdir / "converted"
        facts = convert.transformers_to_onnx(self.path, target, task)
        candidate = Candidate("onnx-fp32", target, _recipe(self, "convert", facts))
        problem = self._parity(candidate)
        if problem is not None:
            raise InvalidInputError(f"the ONNX export disagrees with the original: {problem}", field="ref")
        return candidate

    def _parity(self, candidate: Candidate) -> str | None:
        """None when the candidate reproduces the original on the eval (or synthetic) rows."""
        result = self.evaluator.evaluate(candidate, timed=False)
        if result.status is Status.FAILED:
            return result.reason
        assert result.outputs is not None
        ok, found = convert.parity(self.evaluator.reference, result.outputs)
        candidate.recipe["steps"][-1]["parity"] = {k: round(v, 8) for k, v in found.items()}
        if ok:
            return None
        return ", ".join(f"{k} {v:.3g}" for k, v in found.items())

    def report(
        self, command: str, results: list[Result], config: OperationConfig | None, **fields: Any
    ) -> Report:
        """The one place a report is assembled: the session's facts plus the command's own."""
        evalset = self.evalset
        return Report(
            command=command,
            ref=str(self.version.ref),
            created_at=utc_now(),
            metric=self.metric,
            eval=None if evalset is None else EvalInfo(evalset.source, evalset.units, bool(evalset.pairs)),
            host=host_info(self.threads),
            original=self.original,
            candidates=tuple(results),
            notes=tuple(self.notes),
            config=None if config is None else config.recipe(),
            **fields,
        )

    def register(
        self,
        candidate: Candidate,
        result: Result,
        report: Report,
        config: OperationConfig,
        *,
        alias: str | None = None,
    ) -> ModelVersion:
        """Push the candidate as the next version of the original's name, parent = the original;
        the recipe records the operation's config and every step from the original."""
        extra = self.version.extra
        # Quality metrics under their own names; what was timed and sized under `measured.`.
        metrics: dict[str, float] = {}
        if result.metric is not None and self.metric is not None:
            metrics[self.metric] = significant(result.metric)
        metrics["measured.size_bytes"] = float(result.size_bytes)
        if result.speed is not None:
            metrics["measured.p50_b1_ms"] = significant(result.speed.p50_b1_ms)
            metrics["measured.p50_b32_ms"] = significant(result.speed.p50_b32_ms)
            metrics["measured.throughput_rows_s"] = significant(result.speed.throughput)
        return self.registry.push(
            self.version.name,
            candidate.artifact,
            alias=alias,
            metrics=metrics,
            params={"candidate": candidate.name},
            tags={"optimized": report.command},
            description=f"{candidate.name} of {self.version.ref} (shipyard {report.command})",
            parent=str(self.version.ref),
            recipe={"candidate": candidate.name, "config": config.recipe(), **candidate.recipe},
            serving=self.version.serving,
            task=extra.get("task"),
            truncate=bool(extra.get("truncate", True)),
            attachments=attachments(report),
        )


def load_estimator(version: ModelVersion, path: Path, settings: RuntimeSettings) -> Any:
    """The scikit-learn estimator of a version, loaded by its runtime (trust rules included)."""
    if version.format not in SKLEARN_FORMATS:
        raise InvalidInputError(
            f"{version.ref} is a {version.format} model, not a scikit-learn one", field="ref"
        )
    runtime = load_runtime(version, path, settings)
    try:
        return runtime.estimator  # type: ignore[attr-defined]
    finally:
        runtime.close()


def _recipe(
    session: Session, step: str, facts: dict[str, Any], base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A recipe is the chain of exact steps from the original, each with its settings."""
    steps = list((base or {}).get("steps", []))
    steps.append({"step": step, **facts})
    return {"source": str(session.version.ref), "steps": steps}


def derive(
    session: Session, base: Candidate | None, step: str, facts: dict[str, Any], artifact: Path, name: str
) -> Candidate:
    return Candidate(name, artifact, _recipe(session, step, facts, base.recipe if base else None))

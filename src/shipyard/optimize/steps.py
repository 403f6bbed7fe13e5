"""The single steps — convert, quantize, prune, distill — and `compare`. Each step measures what it
made (on the eval set when given) and registers it as the next version with parent and recipe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, NotFoundError
from shipyard.optimize.applicability import NotApplicable
from shipyard.optimize.candidates import Candidate, Rejection, Result, Status
from shipyard.optimize.config import ConvertConfig, DistillConfig, PruneConfig, QuantizeConfig, StepConfig
from shipyard.optimize.evalset import load_eval
from shipyard.optimize.report import BudgetExceededError, MetricChange, Report, save
from shipyard.optimize.search import Outcome
from shipyard.optimize.session import (
    ONNX_BACKED,
    SKLEARN_FORMATS,
    Progress,
    Session,
    derive,
    load_estimator,
)
from shipyard.optimize.variants import dynamic_variant, pruned_variant, static_variant
from shipyard.registry import Registry
from shipyard.runtimes import load_runtime
from shipyard.runtimes.model import Model
from shipyard.runtimes.onnx import ONNX_FILE
from shipyard.types import ModelRef


def _metric_change(session: Session, result: Result, config: StepConfig) -> MetricChange:
    original = session.original
    if session.metric is None or original.metric is None or result.metric is None:
        return MetricChange(None)
    drop = original.metric - result.metric if session.higher_is_better else result.metric - original.metric
    allowed = config.budget.allowed(original.metric)
    return MetricChange(session.metric, original.metric, result.metric, drop, allowed)


def _finish(session: Session, candidate: Candidate, config: StepConfig, alias: str | None) -> Outcome:
    """Measure the step's result against the original; register it with its report unless the
    metric fell beyond the budget (and the step was not forced)."""
    command = config.operation
    session.measuring(candidate.name)
    result = session.evaluator.evaluate(candidate)
    if result.status is Status.FAILED:
        raise InvalidInputError(f"{candidate.name} cannot be loaded: {result.reason}", field="ref")
    change = _metric_change(session, result, config)
    home = session.registry.settings.home
    if change.over_budget and not config.force:
        reason = f"over budget: drop {change.drop:.4f} > allowed {change.allowed:.4f}"
        rejected = result.judged(Status.REJECTED, reason, Rejection.OVER_BUDGET)
        report = session.report(
            command, [rejected], config, metric_change=change, budget=config.budget
        ).concluded("the metric fell beyond --max-drop; nothing registered")
        path = save(home, report)
        raise BudgetExceededError(
            f"{command} of {session.version.ref} drops {change.metric} from {change.before:.4f} to "
            f"{change.after:.4f}, more than the {config.budget.text} allowed; nothing registered; "
            f"pass --force to register it anyway; report: {path}",
            report,
            path,
        )
    if change.over_budget:
        session.notes.append(
            f"registered although the metric fell beyond --max-drop {config.max_drop} (--force)"
        )
    registered = result.judged(Status.REGISTERED)
    pending = session.report(command, [registered], config, metric_change=change, budget=config.budget)
    version = session.register(candidate, registered, pending, config, alias=alias)
    report = pending.concluded(f"registered {candidate.name} as {version.ref}", str(version.ref))
    return Outcome(report, save(home, report), version)


def _applied(make: Callable[[], Candidate]) -> Candidate:
    """Run a step the user asked for: one that does not apply to the model is their error to fix."""
    try:
        return make()
    except NotApplicable as exc:
        raise InvalidInputError(exc.reason, field="ref") from exc


def convert_version(
    registry: Registry,
    ref: str,
    *,
    to: str = "onnx",
    max_drop: str = "1%",
    force: bool = False,
    alias: str | None = None,
    **options: Any,
) -> Outcome:
    """The version as ONNX, checked against the original (identical labels; 1e-4 relative)."""
    config = ConvertConfig.build(to=to, max_drop=max_drop, force=force)
    with Session(registry, ref, **options) as session:
        if session.version.format in ONNX_BACKED:
            raise InvalidInputError(
                f"{session.version.ref} is already served by onnxruntime ({session.version.format}); "
                "quantize or prune it instead",
                field="ref",
            )
        return _finish(session, session.baseline(), config, alias)


def quantize_version(
    registry: Registry,
    ref: str,
    *,
    mode: str = "dynamic",
    per_channel: bool = False,
    reduce_range: bool = False,
    calibration: str | Path | None = None,
    max_drop: str = "1%",
    force: bool = False,
    alias: str | None = None,
    **options: Any,
) -> Outcome:
    """Int8 `ref`; a scikit-learn or transformers version is converted to ONNX first (both steps
    are in the recipe)."""
    config = QuantizeConfig.build(
        mode=mode,
        per_channel=per_channel,
        reduce_range=reduce_range,
        calibration=calibration,
        max_drop=max_drop,
        force=force,
    )
    with Session(registry, ref, **options) as session:
        base = session.baseline()
        name = config.candidate_name
        if config.calibration is not None:
            calib = load_eval(config.calibration, session.version.signature)
            candidate = _applied(
                lambda: static_variant(
                    session,
                    base,
                    name,
                    calib,
                    per_channel=config.per_channel,
                    reduce_range=config.reduce_range,
                )
            )
        else:
            candidate = _applied(
                lambda: dynamic_variant(
                    session, base, name, per_channel=config.per_channel, reduce_range=config.reduce_range
                )
            )
        return _finish(session, candidate, config, alias)


def prune_version(
    registry: Registry,
    ref: str,
    *,
    sparsity: float = 0.5,
    structured: bool = False,
    max_drop: str = "1%",
    force: bool = False,
    alias: str | None = None,
    **options: Any,
) -> Outcome:
    """`ref` with its smallest weights (or hidden units) removed; other formats are converted first."""
    config = PruneConfig.build(sparsity=sparsity, structured=structured, max_drop=max_drop, force=force)
    with Session(registry, ref, **options) as session:
        base = session.baseline()
        candidate = _applied(
            lambda: pruned_variant(
                session, base, config.candidate_name, sparsity=config.sparsity, structured=config.structured
            )
        )
        return _finish(session, candidate, config, alias)


def distill_version(
    registry: Registry,
    teacher: str,
    *,
    student: str,
    data: str | Path,
    epochs: int | None = None,
    max_drop: str = "1%",
    force: bool = False,
    alias: str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Outcome:
    """Train a student on the teacher's outputs for `data`; register it as the teacher's next version."""
    from shipyard.optimize import distill

    config = DistillConfig.build(student=student, data=data, epochs=epochs, max_drop=max_drop, force=force)
    student, data, epochs = config.student, config.data, config.epochs
    with Session(registry, teacher, progress=progress, **options) as session:
        version = session.version
        signature = version.signature
        if len(signature.inputs) != 1 or signature.inputs[0].datatype == "BYTES":
            raise InvalidInputError(
                "distillation trains tabular students: the teacher must take one numeric input",
                field="teacher",
            )
        name = signature.inputs[0].name
        inputs = load_eval(data, signature).inputs[name].astype(np.float32)
        teacher_model = Model(version, load_runtime(version, session.path, session.settings))
        teacher_predict = teacher_model.predict
        try:
            estimator = _registered_estimator(registry, student)
            if estimator is not None:
                session.say(f"fitting {type(estimator).__name__} on the teacher's outputs")
                model, facts = distill.distill_estimator(
                    teacher_predict, inputs, input_name=name, student_estimator=estimator
                )
                sample = None
            else:
                spec = distill.parse_student(student)

                def report_epoch(epoch: int, total: int, loss: float) -> None:
                    session.say(f"epoch {epoch}/{total}: loss {loss:.4f}")

                model, facts = distill.distill_mlp(
                    teacher_predict,
                    inputs,
                    input_name=name,
                    student=spec,
                    classes=version.extra.get("classes"),
                    epochs=epochs,
                    progress=report_epoch,
                )
                sample = inputs[:2]
        finally:
            teacher_model.close()
        folder = session.workdir / "student"
        folder.mkdir()
        artifact = _stage_student(model, sample, folder)
        facts["data"] = str(data)
        candidate = derive(session, None, "distill", facts, artifact, "student")
        return _finish(session, candidate, config, alias)


def _registered_estimator(registry: Registry, spec: str) -> Any:
    """A scikit-learn version named by `spec` (its estimator is refit as the student), else None."""
    if spec.lstrip().startswith("{") or spec.endswith(".json"):
        return None
    try:
        ref = ModelRef.parse(spec)
        version = registry.resolve(ref)
    except (InvalidInputError, NotFoundError):
        return None
    if version.format not in SKLEARN_FORMATS:
        raise InvalidInputError(
            f"student {version.ref} is a {version.format} model; a registered student must be a "
            "scikit-learn estimator (it is refit), or pass an MLP config as JSON",
            field="student",
        )
    return load_estimator(version, registry.artifact_path(version), registry.settings.runtime)


def _stage_student(model: Any, sample: np.ndarray | None, folder: Path) -> Path:
    """Write the student where `registry.push` can take it: an ONNX file (torch) or a skops file."""
    from shipyard.packaging import package

    target = folder / "packaged"
    target.mkdir()
    package(model, target, sample_input=sample)
    onnx_file = target / ONNX_FILE
    if onnx_file.is_file():
        return onnx_file
    return next(target.glob("*.skops"))


def compare(
    registry: Registry,
    refs: list[str],
    eval_path: str | Path,
    *,
    progress: Progress | None = None,
    **options: Any,
) -> Report:
    """Measure several versions on one eval set; the first is the reference for agreement."""
    if len(refs) < 2:
        raise InvalidInputError("compare needs at least two versions", field="refs")
    with Session(registry, refs[0], eval_path=eval_path, progress=progress, **options) as session:
        evaluator = session.evaluator
        results: list[Result] = []
        for ref in refs[1:]:
            version = registry.resolve(ref)
            session.measuring(str(version.ref))
            path = registry.artifact_path(version)
            runtime = load_runtime(version, path, evaluator.settings)
            try:
                results.append(
                    evaluator.evaluate_loaded(
                        str(version.ref),
                        {"recipe": version.recipe, "parent": version.parent},
                        runtime,
                        version,
                        path,
                    )
                )
            finally:
                runtime.close()
        report = session.report("compare", results, None)
        report = replace(report, original=replace(session.original, name=str(session.version.ref)))
        return report.concluded(f"compared {len(refs)} versions on {eval_path}")

"""The single steps — convert, quantize, prune, distill — and `compare`. Each step measures what it
made (on the eval set when given) and registers it as the next version with parent and recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, NotFoundError
from shipyard.optimize.candidates import Candidate, Result
from shipyard.optimize.evalset import load_eval
from shipyard.optimize.report import save
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


def _finish(session: Session, command: str, candidate: Candidate, alias: str | None) -> Outcome:
    """Measure the step's result, register it with its report, save the report."""
    session.progress(f"measuring {candidate.name}")
    result = session.evaluator.evaluate(candidate)
    if result.status == "failed":
        raise InvalidInputError(f"{candidate.name} cannot be loaded: {result.reason}", field="ref")
    result.status = "registered"
    report = session.report(command, [result])
    version = session.register(candidate, result, report, alias=alias)
    report["registered"] = str(version.ref)
    report["outcome"] = f"registered {candidate.name} as {version.ref}"
    return Outcome(report, save(session.registry.settings.home, report), version)


def convert_version(
    registry: Registry, ref: str, *, to: str = "onnx", alias: str | None = None, **options: Any
) -> Outcome:
    """The version as ONNX, checked against the original (identical labels; 1e-4 relative)."""
    if to != "onnx":
        raise InvalidInputError(f"cannot convert to {to!r}; the only target is onnx", field="to")
    with Session(registry, ref, **options) as session:
        if session.version.format in ONNX_BACKED:
            raise InvalidInputError(
                f"{session.version.ref} is already served by onnxruntime ({session.version.format}); "
                "quantize or prune it instead",
                field="ref",
            )
        return _finish(session, "convert", session.baseline(), alias)


def _onnx_base(session: Session, step: str) -> Candidate:
    if session.version.format not in ONNX_BACKED:
        raise InvalidInputError(
            f"{session.version.ref} is a {session.version.format} model; convert it first "
            f"(shipyard convert {session.version.ref} --to onnx), then {step} the ONNX version",
            field="ref",
        )
    return session.baseline()


def quantize_version(
    registry: Registry,
    ref: str,
    *,
    mode: str = "dynamic",
    per_channel: bool = False,
    reduce_range: bool = False,
    calibration: str | Path | None = None,
    alias: str | None = None,
    **options: Any,
) -> Outcome:
    if mode not in ("dynamic", "static"):
        raise InvalidInputError(f"unknown mode {mode!r}; use dynamic or static", field="mode")
    if mode == "dynamic" and calibration is not None:
        raise InvalidInputError("--calibration applies to --mode static only", field="calibration")
    if mode == "static" and calibration is None:
        raise InvalidInputError(
            "--mode static needs --calibration FILE (representative inputs)", field="calibration"
        )
    with Session(registry, ref, **options) as session:
        base = _onnx_base(session, "quantize")
        name = (
            f"int8-{mode}"
            + ("-per-channel" if per_channel else "")
            + ("-reduce-range" if reduce_range else "")
        )
        if mode == "static":
            assert calibration is not None
            calib = load_eval(calibration, session.version.signature)
            candidate = static_variant(
                session, base, name, calib, per_channel=per_channel, reduce_range=reduce_range
            )
        else:
            candidate = dynamic_variant(
                session, base, name, per_channel=per_channel, reduce_range=reduce_range
            )
        return _finish(session, "quantize", candidate, alias)


def prune_version(
    registry: Registry,
    ref: str,
    *,
    sparsity: float,
    structured: bool = False,
    alias: str | None = None,
    **options: Any,
) -> Outcome:
    with Session(registry, ref, **options) as session:
        base = _onnx_base(session, "prune")
        name = f"pruned-{'structured' if structured else 'magnitude'}-{round(sparsity * 100)}"
        candidate = pruned_variant(session, base, name, sparsity=sparsity, structured=structured)
        return _finish(session, "prune", candidate, alias)


def distill_version(
    registry: Registry,
    teacher: str,
    *,
    student: str,
    data: str | Path,
    epochs: int | None = None,
    alias: str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Outcome:
    """Train a student on the teacher's outputs for `data`; register it as the teacher's next version."""
    from shipyard.optimize import distill

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
        teacher_model = Model(version, load_runtime(version, session.path, session.evaluator.settings))
        teacher_predict = teacher_model.predict
        try:
            estimator = _registered_estimator(registry, student)
            if estimator is not None:
                session.progress(f"fitting {type(estimator).__name__} on the teacher's outputs")
                model, facts = distill.distill_estimator(
                    teacher_predict, inputs, input_name=name, student_estimator=estimator
                )
                sample = None
            else:
                spec = distill.parse_student(student)

                def report_epoch(epoch: int, total: int, loss: float) -> None:
                    session.progress(f"epoch {epoch}/{total}: loss {loss:.4f}")

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
        return _finish(session, "distill", candidate, alias)


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
) -> dict[str, Any]:
    """Measure several versions on one eval set; the first is the reference for agreement."""
    if len(refs) < 2:
        raise InvalidInputError("compare needs at least two versions", field="refs")
    with Session(registry, refs[0], eval_path=eval_path, progress=progress, **options) as session:
        results: list[Result] = []
        for ref in refs[1:]:
            version = registry.resolve(ref)
            session.progress(f"measuring {version.ref}")
            path = registry.artifact_path(version)
            evaluator = session.evaluator
            result = Result(str(version.ref), {"recipe": version.recipe, "parent": version.parent})
            runtime = load_runtime(version, path, evaluator.settings)
            try:
                results.append(evaluator.evaluate_loaded(result, runtime, version, path))
            finally:
                runtime.close()
        session.original.name = str(session.version.ref)
        report = session.report("compare", results)
        report["outcome"] = f"compared {len(refs)} versions on {eval_path}"
        return report

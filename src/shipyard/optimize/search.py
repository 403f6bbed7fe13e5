"""`shipyard optimize`: build up to eight candidates, measure each on the eval set, fall the
costliest int8 nodes back to fp32 when quantization breaks the budget, and register the best
candidate that keeps the metric within budget and beats the original on the objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.errors import BudgetNotMetError, InvalidInputError
from shipyard.optimize import quantize
from shipyard.optimize.candidates import Candidate, Result
from shipyard.optimize.evalset import EvalSet, load_eval
from shipyard.optimize.measure import cpu_flags, has_vnni
from shipyard.optimize.report import save
from shipyard.optimize.session import Budget, Progress, Session
from shipyard.optimize.variants import (
    calibration_feeds,
    dynamic_variant,
    fused_variant,
    pruned_variant,
    static_variant,
)
from shipyard.registry import Registry
from shipyard.types import ModelVersion

OBJECTIVES = ("latency", "throughput", "size")
MAX_CANDIDATES = 8
MIN_GAIN = 0.05  # a candidate must beat the original by 5% on the objective: less is noise
MIN_CONTINUOUS_UNITS = 30
MIN_COSINE = 0.99  # embeddings must also stay close to the original's, not only score alike


@dataclass
class Outcome:
    report: dict[str, Any]
    report_path: Path
    version: ModelVersion | None


def objective_value(result: Result, objective: str) -> float:
    """Lower is better for every objective (throughput is negated)."""
    if objective == "size":
        return float(result.size_bytes)
    assert result.speed is not None
    return result.speed.p50_b1_ms if objective == "latency" else -result.speed.throughput


def _describe(result: Result, objective: str) -> str:
    if objective == "size":
        return f"{result.size_bytes / 1e6:.2f} MB"
    assert result.speed is not None
    if objective == "latency":
        return f"{result.speed.p50_b1_ms:.3f} ms p50 at batch 1"
    return f"{result.speed.throughput:.0f} rows/s at batch 32"


class Search:
    def __init__(
        self,
        session: Session,
        budget: Budget,
        objective: str,
        calibration: EvalSet,
        min_cosine: float = MIN_COSINE,
    ) -> None:
        self.session = session
        self.min_cosine = min_cosine
        self.budget = budget
        self.objective = objective
        self.calibration = calibration
        self.results: list[Result] = []
        self.candidates: dict[str, Candidate] = {}
        self.fallback: dict[str, Any] | None = None
        original = session.original
        assert original.metric is not None
        self.allowed = budget.allowed(original.metric)

    @property
    def room(self) -> int:
        return MAX_CANDIDATES - len(self.results)

    def judge(self, result: Result) -> None:
        """Accept or reject with the reason: over budget, or not better than the original."""
        if result.status == "failed":
            return
        original = self.session.original
        assert original.metric is not None and result.metric is not None
        drop = (
            original.metric - result.metric
            if self.session.higher_is_better
            else result.metric - original.metric
        )
        if drop > self.allowed + 1e-12:
            result.status = "rejected"
            result.reason = (
                f"over budget: {self.session.metric} {result.metric:.4f} vs {original.metric:.4f} "
                f"(drop {drop:.4f} > allowed {self.allowed:.4f})"
            )
            return
        cosine = result.agreement.get("cosine_mean")
        if cosine is not None and cosine < self.min_cosine:
            result.status = "rejected"
            result.reason = (
                f"over budget: embeddings drift from the original's (mean cosine {cosine:.4f} < "
                f"{self.min_cosine})"
            )
            return
        mine, theirs = objective_value(result, self.objective), objective_value(original, self.objective)
        if mine > theirs * (1 - MIN_GAIN) if theirs > 0 else mine > theirs * (1 + MIN_GAIN):
            word = {"latency": "slower", "throughput": "slower", "size": "larger"}[self.objective]
            result.status = "rejected"
            result.reason = (
                f"not better than the original ({word}: {_describe(result, self.objective)} vs "
                f"{_describe(original, self.objective)})"
            )
            return
        result.status, result.reason = "accepted", ""

    def measure(self, candidate: Candidate) -> Result:
        self.session.progress(f"measuring {candidate.name}")
        result = self.session.evaluator.evaluate(candidate)
        self.judge(result)
        self.results.append(result)
        self.candidates[candidate.name] = candidate
        return result

    def build(self, name: str, make: Any) -> Candidate | None:
        """Run one candidate-making step; a step that cannot apply becomes a note, not a failure."""
        self.session.progress(f"building {name}")
        try:
            candidate: Candidate = make()
            return candidate
        except InvalidInputError as exc:
            self.session.notes.append(f"{name} skipped: {exc}")
            return None

    def plan(self, baseline: Candidate, is_text: bool) -> list[tuple[str, Any]]:
        """The candidate steps in order of promise; the cap keeps the first ones."""
        session = self.session
        dynamic: list[tuple[str, dict[str, Any]]] = [
            ("int8-dynamic", {}),
            ("int8-dynamic-per-channel", {"per_channel": True}),
        ]
        if not has_vnni(cpu_flags()):  # VPMADDUBSW saturates without VNNI: 7-bit weights avoid it
            dynamic.append(("int8-dynamic-reduce-range", {"reduce_range": True}))
        dynamic.append(("int8-dynamic-u8", {"weight_type": "quint8"}))
        steps: list[tuple[str, Any]] = [
            (name, lambda n=name, o=options: dynamic_variant(session, baseline, n, **o))
            for name, options in dynamic
        ]
        if not is_text:
            steps.append(
                (
                    "int8-static-qdq",
                    lambda: static_variant(session, baseline, "int8-static-qdq", self.calibration),
                )
            )
            steps.append(
                (
                    "pruned-structured-25",
                    lambda: pruned_variant(
                        session, baseline, "pruned-structured-25", sparsity=0.25, structured=True
                    ),
                )
            )
        return steps

    def run(self, baseline: Candidate) -> None:
        session = self.session
        is_text = session.version.format in ("transformers", "transformers-onnx")
        if session.version.format not in ("onnx", "transformers-onnx"):
            self.measure(baseline)  # a conversion: itself a candidate
        if is_text:
            fused = self.build("onnx-fp32-fused", lambda: fused_variant(session, baseline))
            if fused is not None:
                self.measure(fused)
                fused_q = self.build(
                    "int8-dynamic-fused", lambda: dynamic_variant(session, fused, "int8-dynamic-fused")
                )
                if fused_q is not None:
                    self.measure(fused_q)
        for name, make in self.plan(baseline, is_text):
            if self.room <= 1:  # keep one slot for the fallback
                session.notes.append(f"{name} not tried: the search is capped at {MAX_CANDIDATES} candidates")
                continue
            candidate = self.build(name, make)
            if candidate is not None:
                self.measure(candidate)
        self.run_fallback(baseline)
        session.notes.append(
            "fp16/bf16 not tried: onnxruntime's CPU kernels compute them through casts to fp32 "
            "(slower on CPUs, OPTIMIZATION.md §1.8); fp16 is only a storage format here"
        )

    def run_fallback(self, baseline: Candidate) -> None:
        """When int8 breaks the budget, keep its worst nodes in fp32 until it fits (INC stage V/VI)."""
        if any(r.status == "accepted" and "int8" in r.name for r in self.results):
            return
        over = [
            r
            for r in self.results
            if r.status == "rejected"
            and r.reason.startswith("over budget")
            and r.name.startswith("int8-dynamic")
            and r.speed is not None
        ]
        if not over or self.room <= 0:
            return
        worst = min(over, key=lambda r: objective_value(r, self.objective))
        candidate = self.candidates[worst.name]
        base = self.candidates["onnx-fp32-fused"] if "fused" in worst.name else baseline
        step = next(s for s in candidate.recipe["steps"] if s["step"] == "quantize")
        options = {k: step[k] for k in ("per_channel", "reduce_range", "weight_type")}
        session = self.session
        session.progress(f"ranking the nodes of {worst.name} by int8 error")
        feeds = calibration_feeds(session, base, self.calibration)[:8]
        ranked = quantize.node_errors(
            session.onnx_graph(base.artifact), session.onnx_graph(candidate.artifact), feeds
        )
        self.fallback = {
            "from": worst.name,
            "ranked_nodes": [[n, round(e, 8)] for n, e in ranked[:20]],
            "steps": [],
        }
        count = 1
        while self.room > 0 and count <= len(ranked):
            exclude = [n for n, _ in ranked[:count]]
            name = f"{worst.name}-fp32-{count}"
            made = self.build(
                name, lambda ex=exclude, nm=name: dynamic_variant(session, base, nm, exclude=ex, **options)
            )
            if made is None:
                break
            result = self.measure(made)
            self.fallback["steps"].append(
                {
                    "candidate": name,
                    "excluded": exclude,
                    "metric": result.metric,
                    "status": result.status,
                    "node_errors": {n: round(e, 8) for n, e in ranked[:count]},
                }
            )
            if result.status == "accepted":
                break
            count *= 2

    def best(self) -> Result | None:
        accepted = [r for r in self.results if r.status == "accepted"]
        return min(accepted, key=lambda r: objective_value(r, self.objective)) if accepted else None


def optimize(
    registry: Registry,
    ref: str,
    eval_path: str | Path,
    *,
    metric: str | None = None,
    max_drop: str = "1%",
    objective: str = "latency",
    calibration: str | Path | None = None,
    alias: str | None = None,
    label: str | None = None,
    threads: int | None = None,
    seconds: float = 2.0,
    min_cosine: float = MIN_COSINE,
    progress: Progress | None = None,
) -> Outcome:
    """Find, measure and register the best variant of `ref` within the accuracy budget."""
    if objective not in OBJECTIVES:
        raise InvalidInputError(
            f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}", field="objective"
        )
    budget = Budget.parse(max_drop)
    with Session(
        registry,
        ref,
        eval_path=eval_path,
        metric=metric,
        label=label,
        threads=threads,
        seconds=seconds,
        hold_out_calibration=calibration is None,
        progress=progress,
    ) as session:
        _check_size(session, budget)
        if calibration is not None:
            calib = load_eval(calibration, session.version.signature, label=label)
        else:
            assert session.calibration is not None
            calib = session.calibration
        search = Search(session, budget, objective, calib, min_cosine)
        search.run(session.baseline())
        best = search.best()
        if best is not None:
            best.status = "selected"
        fields = {
            "min_cosine": min_cosine,
            "objective": objective,
            "budget": budget.to_dict(),
            "fallback": search.fallback,
            "selected": best.name if best else None,
            "registered": None,
        }
        report = session.report("optimize", search.results, **fields)
        if best is None:
            report["outcome"] = "no candidate met the budget and beat the original; nothing registered"
            path = save(registry.settings.home, report)
            error = BudgetNotMetError(
                f"no candidate of {session.version.ref} kept {session.metric} within {budget.text} and beat "
                f"the original on {objective}; nothing registered; report: {path}"
            )
            error.report, error.report_path = report, path
            raise error
        report["outcome"] = f"registered {best.name} as the next version of {session.version.name}"
        version = session.register(search.candidates[best.name], best, report, alias=alias)
        report["registered"] = str(version.ref)
        report["outcome"] = f"registered {best.name} as {version.ref}" + (f" (@{alias})" if alias else "")
        return Outcome(report, save(registry.settings.home, report), version)


def _check_size(session: Session, budget: Budget) -> None:
    """Refuse a verdict the eval set is too small to give."""
    original = session.original
    assert original.metric is not None and session.evalset is not None
    units = session.evalset.units
    allowed = budget.allowed(original.metric)
    interval = original.interval or (float("nan"), float("nan"))
    shown = f"{session.metric} {original.metric:.4f}, 95% interval [{interval[0]:.4f}, {interval[1]:.4f}]"
    if session.metric in ("accuracy", "f1_macro"):
        step = 1 / units if units else 1.0
        if allowed and step > allowed:
            raise InvalidInputError(
                f"the eval set is too small for a {budget.text} budget: with {units} rows one changed "
                f"prediction moves {session.metric} by {step:.4f}, more than the {allowed:.4f} allowed "
                f"({shown}); use at least {int(1 / allowed) + 1} rows or a larger --max-drop",
                field="eval",
            )
    elif units < MIN_CONTINUOUS_UNITS:
        raise InvalidInputError(
            f"the eval set is too small: {units} units give {shown}; use at least {MIN_CONTINUOUS_UNITS}",
            field="eval",
        )

"""`shipyard optimize`: build up to eight candidates, measure each on the eval set, fall the
costliest int8 nodes back to fp32 when quantization breaks the budget, and register the best
candidate that keeps the metric within budget and beats the original on the objective.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError, ShipyardError
from shipyard.optimize import quantize
from shipyard.optimize.applicability import NotApplicable
from shipyard.optimize.candidates import Candidate, Rejection, Result, Status
from shipyard.optimize.config import MIN_COSINE, Budget, OptimizeConfig
from shipyard.optimize.evalset import EvalSet, load_eval
from shipyard.optimize.measure import cpu_flags, has_vnni
from shipyard.optimize.report import BudgetExceededError, Fallback, FallbackStep, Report, save
from shipyard.optimize.session import Progress, Session
from shipyard.optimize.variants import (
    calibration_feeds,
    dynamic_variant,
    fused_variant,
    pruned_variant,
    static_variant,
)
from shipyard.registry import Registry
from shipyard.types import ModelVersion

MAX_CANDIDATES = 8
MIN_GAIN = 0.05  # a candidate must beat the original by 5% on the objective: less is noise
MIN_CONTINUOUS_UNITS = 30


@dataclass(frozen=True)
class Outcome:
    report: Report
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
        self.fallback: Fallback | None = None
        original = session.original
        assert original.metric is not None
        self.allowed = budget.allowed(original.metric)

    @property
    def room(self) -> int:
        return MAX_CANDIDATES - len(self.results)

    def judge(self, result: Result) -> Result:
        """Accept, or reject with the reason: over budget, drifted, or not better than the original."""
        if result.status is Status.FAILED:
            return result
        original = self.session.original
        assert original.metric is not None and result.metric is not None
        drop = (
            original.metric - result.metric
            if self.session.higher_is_better
            else result.metric - original.metric
        )
        if drop > self.allowed + 1e-12:
            return result.judged(
                Status.REJECTED,
                f"over budget: {self.session.metric} {result.metric:.4f} vs {original.metric:.4f} "
                f"(drop {drop:.4f} > allowed {self.allowed:.4f})",
                Rejection.OVER_BUDGET,
            )
        cosine = result.agreement.get("cosine_mean")
        if cosine is not None and cosine < self.min_cosine:
            return result.judged(
                Status.REJECTED,
                f"over budget: embeddings drift from the original's (mean cosine {cosine:.4f} < "
                f"{self.min_cosine})",
                Rejection.DRIFT,
            )
        mine, theirs = objective_value(result, self.objective), objective_value(original, self.objective)
        if mine > theirs * (1 - MIN_GAIN) if theirs > 0 else mine > theirs * (1 + MIN_GAIN):
            word = {"latency": "slower", "throughput": "slower", "size": "larger"}[self.objective]
            return result.judged(
                Status.REJECTED,
                f"not better than the original ({word}: {_describe(result, self.objective)} vs "
                f"{_describe(original, self.objective)})",
                Rejection.NOT_BETTER,
            )
        return result.judged(Status.ACCEPTED)

    def measure(self, candidate: Candidate) -> Result:
        self.session.measuring(candidate.name)
        result = self.judge(self.session.evaluator.evaluate(candidate))
        self.results.append(result)
        self.candidates[candidate.name] = candidate
        return result

    def build(self, name: str, make: Callable[[], Candidate]) -> Candidate | None:
        """Run one candidate-making step; one that does not apply, or fails, becomes a note."""
        self.session.say(f"building {name}")
        try:
            return make()
        except NotApplicable as exc:
            self.session.notes.append(f"{name} skipped: {exc.reason}")
        except ShipyardError as exc:  # one broken variant must not end the search
            self.session.notes.append(f"{name} failed: {exc.message}")
        return None

    def plan(self, baseline: Candidate, is_text: bool) -> list[tuple[str, Callable[[], Candidate]]]:
        """The candidate steps in order of promise; the cap keeps the first ones."""
        session = self.session
        dynamic: list[tuple[str, dict[str, Any]]] = [
            ("int8-dynamic", {}),
            ("int8-dynamic-per-channel", {"per_channel": True}),
        ]
        if not has_vnni(cpu_flags()):  # VPMADDUBSW saturates without VNNI: 7-bit weights avoid it
            dynamic.append(("int8-dynamic-reduce-range", {"reduce_range": True}))
        dynamic.append(("int8-dynamic-u8", {"weight_type": "quint8"}))
        steps: list[tuple[str, Callable[[], Candidate]]] = [
            (name, functools.partial(dynamic_variant, session, baseline, name, **options))
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
            "(slower than fp32 on CPUs); fp16 is only a storage format here"
        )

    def run_fallback(self, baseline: Candidate) -> None:
        """When int8 breaks the budget, keep its worst nodes in fp32 until it fits (INC stage V/VI)."""
        if any(r.status is Status.ACCEPTED and "int8" in r.name for r in self.results):
            return
        dynamic = {
            name
            for name, candidate in self.candidates.items()
            if any(s.get("method") == "dynamic" for s in candidate.recipe["steps"] if s["step"] == "quantize")
        }
        over = [
            r
            for r in self.results
            if r.rejection in (Rejection.OVER_BUDGET, Rejection.DRIFT)
            and r.name in dynamic
            and r.speed is not None
        ]
        if not over or self.room <= 0:
            return
        worst = min(over, key=lambda r: objective_value(r, self.objective))
        candidate = self.candidates[worst.name]
        fused = any(s["step"] == "fuse" for s in candidate.recipe["steps"])
        base = self.candidates["onnx-fp32-fused"] if fused else baseline
        step = next(s for s in candidate.recipe["steps"] if s["step"] == "quantize")
        options = {k: step[k] for k in ("per_channel", "reduce_range", "weight_type")}
        session = self.session
        session.say(f"ranking the nodes of {worst.name} by int8 error")
        feeds = calibration_feeds(session, base, self.calibration)[:8]
        ranked = quantize.node_errors(
            session.onnx_graph(base.artifact), session.onnx_graph(candidate.artifact), feeds
        )
        self.fallback = Fallback(worst.name, tuple((n, round(e, 8)) for n, e in ranked[:20]))
        count = 1
        while self.room > 0 and count <= len(ranked):
            exclude = [n for n, _ in ranked[:count]]
            name = f"{worst.name}-fp32-{count}"
            made = self.build(
                name, functools.partial(dynamic_variant, session, base, name, exclude=exclude, **options)
            )
            if made is None:
                break
            result = self.measure(made)
            step = FallbackStep(
                name,
                tuple(exclude),
                result.metric,
                str(result.status),
                {n: round(e, 8) for n, e in ranked[:count]},
            )
            self.fallback = replace(self.fallback, steps=(*self.fallback.steps, step))
            if result.status is Status.ACCEPTED:
                break
            count *= 2

    def best(self) -> Result | None:
        accepted = [r for r in self.results if r.status is Status.ACCEPTED]
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
    config = OptimizeConfig.build(
        metric=metric, max_drop=max_drop, objective=objective, calibration=calibration, min_cosine=min_cosine
    )
    budget = config.budget
    with Session(
        registry,
        ref,
        eval_path=eval_path,
        metric=config.metric,
        label=label,
        threads=threads,
        seconds=seconds,
        hold_out_calibration=config.calibration is None,
        progress=progress,
    ) as session:
        _check_size(session, budget)
        if config.calibration is not None:
            calib = load_eval(config.calibration, session.version.signature, label=label)
        else:
            assert session.calibration is not None
            calib = session.calibration
        search = Search(session, budget, config.objective, calib, config.min_cosine)
        search.run(session.baseline())
        best = search.best()
        results = [r.judged(Status.SELECTED) if r is best else r for r in search.results]
        report = session.report(
            "optimize",
            results,
            config,
            min_cosine=config.min_cosine,
            objective=config.objective,
            budget=budget,
            fallback=search.fallback,
            selected=best.name if best else None,
        )
        if best is None:
            report = report.concluded("no candidate met the budget and beat the original; nothing registered")
            path = save(registry.settings.home, report)
            raise BudgetExceededError(
                f"no candidate of {session.version.ref} kept {session.metric} within {budget.text} and beat "
                f"the original on {config.objective}; nothing registered; report: {path}",
                report,
                path,
            )
        pending = report.concluded(f"registered {best.name} as the next version of {session.version.name}")
        version = session.register(search.candidates[best.name], best, pending, config, alias=alias)
        report = report.concluded(
            f"registered {best.name} as {version.ref}" + (f" (@{alias})" if alias else ""), str(version.ref)
        )
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

"""The optimization report: what was measured and decided, stored with the version it justified
(JSON and a readable table) and, when nothing was registered, under the registry's `reports/`.
`render` is the one text form: the CLI prints it and the attachment stores it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shipyard.errors import BudgetNotMetError
from shipyard.optimize.candidates import Result
from shipyard.optimize.config import Budget

REPORT_FOLDER = "optimization"  # where a derived version carries the report that justified it
HEADERS = (
    "candidate",
    "size MB",
    "load s",
    "p50 b1 ms",
    "p99 b1 ms",
    "p50 b32 ms",
    "rows/s",
    "metric [95% CI]",
    "agreement",
    "status",
)


@dataclass(frozen=True)
class EvalInfo:
    file: str
    units: int
    pairs: bool


@dataclass(frozen=True)
class FallbackStep:
    candidate: str
    excluded: tuple[str, ...]
    metric: float | None
    status: str
    node_errors: dict[str, float]


@dataclass(frozen=True)
class Fallback:
    """Int8 nodes ranked by output error (worst first) and the fp32 fallbacks tried from them."""

    source: str
    ranked_nodes: tuple[tuple[str, float], ...]
    steps: tuple[FallbackStep, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "ranked_nodes": [[node, error] for node, error in self.ranked_nodes],
            "steps": [
                {
                    "candidate": s.candidate,
                    "excluded": list(s.excluded),
                    "metric": s.metric,
                    "status": s.status,
                    "node_errors": s.node_errors,
                }
                for s in self.steps
            ],
        }


@dataclass(frozen=True)
class MetricChange:
    """A single step's effect on the task metric; `metric` is None when no eval set measured it."""

    metric: str | None
    before: float | None = None
    after: float | None = None
    drop: float | None = None
    allowed: float | None = None

    @property
    def over_budget(self) -> bool:
        return self.drop is not None and self.allowed is not None and self.drop > self.allowed + 1e-12

    def text(self) -> str:
        if self.metric is None or self.before is None or self.after is None:
            return "metric change: not measured (no --eval file)"
        return (
            f"metric change: {self.metric} {self.before:.4f} → {self.after:.4f} "
            f"(drop {self.drop:.4f}, allowed {self.allowed:.4f})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "before": _rounded(self.before),
            "after": _rounded(self.after),
            "drop": _rounded(self.drop),
            "allowed": _rounded(self.allowed),
            "measured": self.before is not None,
        }


@dataclass(frozen=True)
class Report:
    """Everything one optimize, single-step or compare run measured, and its outcome."""

    command: str
    ref: str
    created_at: str
    metric: str | None
    eval: EvalInfo | None
    host: dict[str, Any]
    original: Result
    candidates: tuple[Result, ...]
    notes: tuple[str, ...]
    config: dict[str, Any] | None = None
    outcome: str = ""
    registered: str | None = None
    selected: str | None = None
    objective: str | None = None
    budget: Budget | None = None
    min_cosine: float | None = None
    fallback: Fallback | None = None
    metric_change: MetricChange | None = None

    def concluded(self, outcome: str, registered: str | None = None) -> Report:
        return replace(self, outcome=outcome, registered=registered)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "ref": self.ref,
            "created_at": self.created_at,
            "metric": self.metric,
            "eval": None
            if self.eval is None
            else {"file": self.eval.file, "units": self.eval.units, "pairs": self.eval.pairs},
            "host": self.host,
            "original": self.original.to_dict(),
            "candidates": [r.to_dict() for r in self.candidates],
            "notes": list(self.notes),
            "config": self.config,
            "outcome": self.outcome,
            "registered": self.registered,
            "selected": self.selected,
            "objective": self.objective,
            "budget": None if self.budget is None else self.budget.to_dict(),
            "min_cosine": self.min_cosine,
            "fallback": None if self.fallback is None else self.fallback.to_dict(),
            "metric_change": None if self.metric_change is None else self.metric_change.to_dict(),
        }


class BudgetExceededError(BudgetNotMetError):
    """Nothing registered because the metric fell too far; carries the report, already saved."""

    def __init__(self, message: str, report: Report, path: Path) -> None:
        super().__init__(message)
        self.details = report
        self.report = report.to_dict()
        self.report_path = path


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _agreement_text(found: dict[str, float]) -> str:
    if "cosine_mean" in found:
        return f"cos {found['cosine_mean']:.5f} (p1 {found['cosine_p1']:.4f}, min {found['cosine_min']:.4f})"
    if "label_flip_rate" in found:
        return f"flips {found['label_flip_rate']:.2%}"
    if "max_rel_diff" in found:
        return f"max rel Δ {found['max_rel_diff']:.2g}"
    return "-"


def _row(item: Result) -> tuple[str, ...]:
    speed = item.speed

    def timing(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    metric_text = "-"
    if item.metric is not None:
        metric_text = f"{item.metric:.4f}"
        if item.interval:
            metric_text += f" [{item.interval[0]:.4f}, {item.interval[1]:.4f}]"
    return (
        item.name,
        f"{item.size_bytes / 1e6:.2f}" if item.size_bytes else "-",
        f"{item.load_s:.2f}" if item.load_s else "-",
        timing(speed.p50_b1_ms if speed else None, 3),
        timing(speed.p99_b1_ms if speed else None, 3),
        timing(speed.p50_b32_ms if speed else None, 3),
        timing(speed.throughput if speed else None, 0),
        metric_text,
        _agreement_text(item.agreement),
        str(item.status),
    )


def render(report: Report) -> str:
    """The report as plain text: a heading, the table, the reasons, the host and the outcome."""
    items = [report.original, *report.candidates]
    rows = [HEADERS, *(_row(item) for item in items)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = [f"shipyard {report.command} {report.ref}  ({report.created_at})"]
    if report.metric:
        budget = report.budget.text if report.budget else "-"
        lines.append(f"metric: {report.metric}  budget: {budget}  objective: {report.objective or '-'}")
    host = report.host
    lines.append(f"host: {host['cpu']}, {host['threads']} threads, flags {' '.join(host['flags'])}")
    lines.append("")
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.extend(f"{item.name} {item.status}: {item.reason}" for item in items if item.reason)
    lines.extend(f"note: {note}" for note in report.notes)
    fallback = report.fallback
    if fallback:
        lines.append(f"fallback from {fallback.source}: nodes ranked by int8 output error (worst first):")
        lines.extend(f"  {node}: relative error {error:.3g}" for node, error in fallback.ranked_nodes[:10])
        lines.extend(
            f"  kept {len(step.excluded)} node(s) in fp32 → metric {step.metric}, {step.status}"
            for step in fallback.steps
        )
    if report.metric_change is not None:
        lines.append(report.metric_change.text())
    lines.append(f"outcome: {report.outcome}")
    return "\n".join(lines) + "\n"


def figures(report: Report) -> dict[str, dict[str, float]]:
    """What was measured on each model, by its name (the original first), as named numbers: the
    JSON report's figures under tags such as `speed/p50_b1_ms`, `metric/accuracy`,
    `agreement/label_flip_rate`; a figure not measured is left out."""
    metric = report.metric or "metric"
    return {item.name: _figures(item, metric) for item in (report.original, *report.candidates)}


def _figures(item: Result, metric: str) -> dict[str, float]:
    measured = item.to_dict()
    out: dict[str, float] = {}
    if item.size_bytes:
        out["size_mb"] = item.size_bytes / 1e6
    if item.size_gzip_bytes:
        out["size_gzip_mb"] = item.size_gzip_bytes / 1e6
    if item.load_s:
        out["load_s"] = measured["load_s"]
    out.update({f"speed/{name}": value for name, value in (measured["speed"] or {}).items()})
    if measured["metric"] is not None:
        out[f"metric/{metric}"] = measured["metric"]
    if measured["interval95"] is not None:
        out[f"metric/{metric}_ci95_low"], out[f"metric/{metric}_ci95_high"] = measured["interval95"]
    out.update({f"agreement/{name}": value for name, value in measured["agreement"].items()})
    return out


def attachments(report: Report) -> dict[str, bytes]:
    return {
        f"{REPORT_FOLDER}/report.json": json.dumps(report.to_dict(), indent=2, sort_keys=True).encode(),
        f"{REPORT_FOLDER}/report.txt": render(report).encode(),
    }


def save(home: Path, report: Report) -> Path:
    """Write the report under `home/reports/` and return the JSON file's path."""
    folder = home / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    ref = report.ref.replace(":", "-v").replace("@", "-")
    stem = f"{report.command}-{ref}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    path.with_suffix(".txt").write_text(render(report))
    return path

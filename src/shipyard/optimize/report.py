"""The optimization report: stored with the version it justified (JSON and a readable table) and,
when nothing was registered, under the registry's `reports/` folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

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
    "verdict",
)


def _agreement_text(found: dict[str, float]) -> str:
    if "cosine_mean" in found:
        return f"cos {found['cosine_mean']:.5f} (p1 {found['cosine_p1']:.4f}, min {found['cosine_min']:.4f})"
    if "label_flip_rate" in found:
        return f"flips {found['label_flip_rate']:.2%}"
    if "max_rel_diff" in found:
        return f"max rel Δ {found['max_rel_diff']:.2g}"
    return "-"


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per measured model: the original first, then every candidate in order."""
    rows: list[tuple[str, ...]] = []
    for item in [report["original"], *report["candidates"]]:
        speed = item.get("speed") or {}
        metric = item.get("metric")
        interval = item.get("interval95")
        metric_text = "-"
        if metric is not None:
            metric_text = f"{metric:.4f}"
            if interval:
                metric_text += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
        verdict = item["status"] + (f": {item['reason']}" if item.get("reason") else "")

        def num(key: str, digits: int, speed: dict[str, float] = speed) -> str:
            value = speed.get(key)
            return "-" if value is None else f"{value:.{digits}f}"

        rows.append(
            (
                item["name"],
                f"{item['size_bytes'] / 1e6:.2f}" if item.get("size_bytes") else "-",
                f"{item['load_s']:.2f}" if item.get("load_s") else "-",
                num("p50_b1_ms", 3),
                num("p99_b1_ms", 3),
                num("p50_b32_ms", 3),
                num("throughput", 0),
                metric_text,
                _agreement_text(item.get("agreement") or {}),
                verdict,
            )
        )
    return rows


def render(report: dict[str, Any]) -> str:
    """The report as plain text: a heading, the table, the host and the outcome."""
    rows = [HEADERS, *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = [f"shipyard {report['command']} {report['ref']}  ({report['created_at']})"]
    if report.get("metric"):
        lines.append(
            f"metric: {report['metric']}  budget: {report.get('budget', {}).get('text', '-')}  "
            f"objective: {report.get('objective', '-')}"
        )
    host = report["host"]
    lines.append(f"host: {host['cpu']}, {host['threads']} threads, flags {' '.join(host['flags'])}")
    lines.append("")
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    fallback = report.get("fallback")
    if fallback:
        lines.append(f"fallback from {fallback['from']}: nodes ranked by int8 output error (worst first):")
        for node, error in fallback["ranked_nodes"][:10]:
            lines.append(f"  {node}: relative error {error:.3g}")
        for step in fallback["steps"]:
            lines.append(
                f"  kept {len(step['excluded'])} node(s) in fp32 → metric {step['metric']}, {step['status']}"
            )
    lines.append(f"outcome: {report['outcome']}")
    return "\n".join(lines) + "\n"


def attachments(report: dict[str, Any]) -> dict[str, bytes]:
    return {
        "optimization/report.json": json.dumps(report, indent=2, sort_keys=True).encode(),
        "optimization/report.txt": render(report).encode(),
    }


def save(home: Path, report: dict[str, Any]) -> Path:
    """Write the report under `home/reports/` and return the JSON file's path."""
    folder = home / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    ref = report["ref"].replace(":", "-v").replace("@", "-")
    stem = f"{report['command']}-{ref}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    path.with_suffix(".txt").write_text(render(report))
    return path

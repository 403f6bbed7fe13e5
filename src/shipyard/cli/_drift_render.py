"""How `shipyard drift` shows a drift report: a verdict, a table worst first, and the reference
and live histograms of the worst features side by side (text blocks, or a PNG)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from shipyard.cli._render import Column, console, number, print_table
from shipyard.errors import InvalidInputError, MissingDependencyError

TOP = 3  # features charted
_BAR = 24  # characters of the longest bar
_EIGHTHS = " ▏▎▍▌▋▊▉"


def verdict(body: dict[str, Any]) -> str:
    judged, drifted = body["judged_features"], body["drifted_features"]
    if body["detected"] is None:
        return f"no verdict yet: {body['rows']} rows, {body['min_rows']} needed (setting drift.min_rows)"
    share = f"share {body['share']:.2f}, threshold {body['drift_share']:g}"
    counts = f"{drifted} of {judged} features drifted ({share})"
    return f"drift detected: {counts}" if body["detected"] else f"no drift: {counts}"


def show(body: dict[str, Any]) -> None:
    """The verdict, the table and the charts of the worst features, on stdout."""
    window, reference = body["window"], body["reference"]
    source = f" ({reference['source']})" if reference.get("source") else ""
    console.out(
        f"{body['model']}:{body['version']}: {window['rows']} rows ({window['requested']}) vs reference "
        f"of {reference['rows']} rows{source}",
        highlight=False,
    )
    console.out(verdict(body), highlight=False)
    features = body["features"]
    if not features:
        return
    columns = [
        Column("feature"),
        Column("kind", "stamp", optional=True),
        Column("method", "stamp"),
        Column("score", "number"),
        Column("threshold", "number", optional=True),
        Column("drifted", "stamp"),
        Column("rows", "number", optional=True),
        Column("missing ref→live", "stamp", optional=True),
    ]
    rows = [
        [
            f["name"],
            f["kind"],
            f["method"],
            "-" if f["score"] is None else _score(f["score"]),
            number(f["threshold"]),
            "yes" if f["drifted"] else "no",
            str(f["rows"]),
            f"{f['missing']['reference']:.1%}→{f['missing']['current']:.1%}",
        ]
        for f in features
    ]
    print_table(columns, rows)
    for feature in features[:TOP]:
        console.out("", highlight=False)
        console.out("\n".join(chart(feature)), highlight=False)


def _score(value: float) -> str:
    return f"{value:.2e}" if 0 < value < 1e-3 else number(value)


def chart(feature: dict[str, Any]) -> list[str]:
    """Text lines: one per bucket, the reference's share and the live one as bars."""
    labels, reference, current = buckets(feature)
    state = "drifted" if feature["drifted"] else "not drifted"
    score = "-" if feature["score"] is None else _score(feature["score"])
    lines = [f"{feature['name']}: {feature['method']} {score}, {state}"]
    if "component" in feature["histogram"]:  # an embedding: the chart is of its worst dimension
        lines[0] += f" (worst dimension: {feature['histogram']['component']})"
    width = max(len(label) for label in labels)
    top = max([*reference, *current, 1e-12])
    lines.append(f"  {'':<{width}}  {'reference':<{_BAR + 7}}  live")
    for label, r, c in zip(labels, reference, current, strict=True):
        lines.append(f"  {label:<{width}}  {_bar(r / top)} {r:6.1%}  {_bar(c / top)} {c:6.1%}")
    return lines


def buckets(feature: dict[str, Any]) -> tuple[list[str], list[float], list[float]]:
    """(label, reference share, live share) per bucket; numeric tails are `< low` and `≥ high`."""
    histogram = feature["histogram"]
    if "categories" in histogram:
        return [str(c) for c in histogram["categories"]], histogram["reference"], histogram["current"]
    edges = [number(e) for e in histogram["edges"]]
    labels = [f"< {edges[0]}"] + [f"{a} – {b}" for a, b in itertools.pairwise(edges)] + [f"≥ {edges[-1]}"]
    return labels, histogram["reference"], histogram["current"]


def _bar(fraction: float) -> str:
    eighths = round(max(0.0, min(1.0, fraction)) * _BAR * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_EIGHTHS[part] if part else "")).ljust(_BAR)


def write_png(body: dict[str, Any], path: Path) -> None:
    """Reference vs live histograms of the worst features, side by side, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import PercentFormatter
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("matplotlib", "monitor", "drawing drift charts (--png)") from exc
    features = body["features"][:4]
    if not features:
        raise InvalidInputError("there is nothing to draw: the window has no rows yet", field="png")
    columns = 2 if len(features) > 1 else 1
    rows = math.ceil(len(features) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.6 * rows), squeeze=False)
    for ax, feature in zip(axes.flat, features, strict=False):
        labels, reference, current = buckets(feature)
        positions = range(len(labels))
        ax.bar([p - 0.2 for p in positions], reference, width=0.4, label="reference", color="#8c8c8c")
        ax.bar(
            [p + 0.2 for p in positions],
            current,
            width=0.4,
            label="live",
            color="#d9534f" if feature["drifted"] else "#337ab7",
        )
        ax.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=7)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        score = "-" if feature["score"] is None else _score(feature["score"])
        name = feature["histogram"].get("component", feature["name"])  # an embedding's worst dimension
        ax.set_title(
            f"{name} — {feature['method']} {score}{' (drifted)' if feature['drifted'] else ''}",
            fontsize=9,
        )
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(features) :]:
        ax.axis("off")
    figure.suptitle(f"{body['model']}:{body['version']} — {verdict(body)}", fontsize=10)
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {path}: {exc.strerror or exc}", field="png") from exc
    finally:
        plt.close(figure)

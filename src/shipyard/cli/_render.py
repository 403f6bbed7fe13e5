"""How the CLI prints results: JSON, Rich tables on a terminal, tab-separated text in a pipe."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from shipyard.types import ModelVersion

console = Console(highlight=False, soft_wrap=True)

# Timings, rates and sizes: shown apart from quality metrics such as accuracy.
_MEASUREMENT = re.compile(r"(_ms|_s|_per_s|_bytes)$|^(size|latency|throughput)")


def print_json(data: Any) -> None:
    """One JSON document on stdout, full precision, never wrapped."""
    console.out(json.dumps(data, indent=2, default=str, ensure_ascii=False), highlight=False)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def number(value: Any) -> str:
    """About four significant digits, without scientific notation for ordinary magnitudes."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    if abs(value) >= 1e4:
        return f"{value:.0f}"
    return f"{value:.4g}"


def split_metrics(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(quality metrics, timings and sizes), each in its stored order."""
    quality = {k: v for k, v in metrics.items() if not _MEASUREMENT.search(k)}
    measured = {k: v for k, v in metrics.items() if _MEASUREMENT.search(k)}
    return quality, measured


def _mapping(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={number(v)}" for k, v in values.items()) or "-"


@dataclass(frozen=True)
class Column:
    """A table column: `text` may fold; numbers and stamps never wrap; `optional` goes first."""

    header: str
    kind: str = "text"  # "text", "number" or "stamp"
    optional: bool = False


def print_table(columns: list[Column], rows: list[list[str]], title: str | None = None) -> None:
    """A Rich table fitted to the terminal, or header and rows tab-separated when piped."""
    if not console.is_terminal:  # written as is: Rich would expand the tabs
        lines = [[c.header for c in columns], *([cell.replace("\n", "; ") for cell in row] for row in rows)]
        console.file.write("".join("\t".join(line) + "\n" for line in lines))
        return
    least = [_least_width(column, [row[i] for row in rows]) for i, column in enumerate(columns)]
    keep = list(range(len(columns)))

    def fits() -> bool:
        return sum(least[i] + 3 for i in keep) + 1 <= console.width

    for index in reversed(range(len(columns))):  # optional columns go, last first, until all fit
        if fits():
            break
        if columns[index].optional:
            keep.remove(index)
    if not fits():  # a very narrow terminal: text may fold inside words rather than overflow
        least = [n if c.kind != "text" else min(n, 8) for n, c in zip(least, columns, strict=True)]
    table = Table(title=title)
    for index in keep:
        column = columns[index]
        table.add_column(
            column.header,
            min_width=least[index],
            no_wrap=column.kind != "text",
            overflow="fold",
            justify="right" if column.kind == "number" else "left",
        )
    for row in rows:
        table.add_row(*(row[index] for index in keep))
    console.print(table)


def _least_width(column: Column, cells: list[str]) -> int:
    """Text wraps between words, so a `key=0.9733` stays whole (words over 24 may fold); the rest
    never wraps."""
    cells = [column.header, *cells]
    if column.kind == "text":
        return max(len(word) for cell in cells for word in cell.split() if len(word) <= 24)
    return max(len(line) for cell in cells for line in cell.splitlines() or [""])


def show_version(v: ModelVersion) -> None:
    quality, measured = split_metrics(v.metrics)
    rows = [
        ("ref", str(v.ref)),
        ("aliases", ", ".join(v.aliases) or "-"),
        ("format", f"{v.format} ({v.framework})"),
        ("digest", v.digest),
        ("size", f"{human_size(v.size)} in {len(v.files)} file(s)"),
        ("inputs", "\n".join(t.describe() for t in v.signature.inputs)),
        ("outputs", "\n".join(t.describe() for t in v.signature.outputs)),
        *([("generative", _generative(v.extra["generative"]))] if v.extra.get("generative") else []),
        ("metrics", _mapping(quality)),
        *([("measured", _mapping(measured))] if measured else []),
        ("params", _mapping(v.params)),
        ("tags", _mapping(v.tags)),
        ("description", v.description or "-"),
        ("parent", v.parent or "-"),
        ("created", f"{v.created_at} by {v.created_by}"),
        ("git commit", (v.git_commit or "-") + (" (dirty)" if v.extra.get("git_dirty") else "")),
        ("trusted", "yes (code-executing or unlisted types allowed)" if v.trusted else "no"),
        ("libraries", _mapping(v.library_versions)),
    ]
    if not console.is_terminal:
        pad = max(len(key) for key, _ in rows) + 2
        for key, value in rows:
            lines = value.splitlines() or [""]
            console.out(f"{key:<{pad}}{lines[0]}", highlight=False)
            for line in lines[1:]:
                console.out(f"{'':<{pad}}{line}", highlight=False)
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _count(n: int) -> str:
    """134.5M, 1.2B, or the number itself when small."""
    for unit, size in (("B", 1e9), ("M", 1e6)):
        if n >= size:
            return f"{n / size:,.1f}{unit}"
    return f"{n:,}"


def _generative(info: dict[str, Any]) -> str:
    """A generative model's facts, one per line (GenerativeInfo as the registry stores it)."""
    params = info.get("parameters")
    lines = [
        f"architecture {info.get('architecture')}" + (f", {_count(params)} parameters" if params else ""),
        f"context {info.get('context_length')} tokens",
        f"quantization {info.get('quantization') or 'none'}",
        f"tokenizer {info.get('tokenizer') or '-'} (bos {info.get('bos_token') or '-'}, "
        f"eos {info.get('eos_token') or '-'})",
        "chat template: " + ("yes" if info.get("chat_template") else "none (completions only)"),
    ]
    return "\n".join(lines)


def versions_table(versions: list[ModelVersion]) -> None:
    columns = [
        Column("version", "number"),
        Column("aliases"),
        Column("format", "stamp", optional=True),
        Column("size", "number"),
        Column("metrics"),
        Column("created", "stamp", optional=True),
        Column("digest", "stamp", optional=True),
    ]
    rows = [
        [
            str(v.version),
            ", ".join(v.aliases),
            v.format,
            human_size(v.size),
            _mapping(split_metrics(v.metrics)[0]),
            v.created_at[:19].replace("T", " "),
            v.digest[7:19],
        ]
        for v in versions
    ]
    print_table(columns, rows)


def models_table(models: list[dict[str, Any]]) -> None:
    columns = [
        Column("name"),
        Column("latest", "number"),
        Column("versions", "number"),
        Column("aliases"),
        Column("updated", "stamp", optional=True),
    ]
    rows = [
        [
            m["name"],
            str(m["latest"]),
            str(m["versions"]),
            ", ".join(f"{a}→{v}" for a, v in m["aliases"].items()),
            str(m["updated_at"])[:19].replace("T", " "),
        ]
        for m in models
    ]
    print_table(columns, rows)


def diff_table(diff: dict[str, Any]) -> None:
    columns = [
        Column("field", "stamp"),
        Column(diff["left"]),
        Column(diff["right"]),
        Column("same", "stamp", optional=True),
    ]
    rows = [
        [name, _cell(name, entry["left"]), _cell(name, entry["right"]), "yes" if entry["same"] else "no"]
        for name, entry in diff["fields"].items()
    ]
    print_table(columns, rows, title=f"{diff['left']} vs {diff['right']}")


def _cell(field: str, value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"inputs", "outputs"}:
        return "\n".join(
            f"{t['name']}: {t['datatype']}{t['shape']}" for t in value["inputs"] + value["outputs"]
        )
    if isinstance(value, dict):
        return "\n".join(f"{k}={number(v)}" for k, v in value.items()) or "-"
    if field == "size" and isinstance(value, int):
        return human_size(value)
    if field == "created_at" and isinstance(value, str):
        return value[:19].replace("T", " ")
    return "-" if value is None else str(value)

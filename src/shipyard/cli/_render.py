"""Rich tables and JSON printing for the CLI."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from shipyard.types import ModelVersion

console = Console(highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    console.out(json.dumps(data, indent=2, default=str, ensure_ascii=False), highlight=False)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def version_json(v: ModelVersion) -> dict[str, Any]:
    return v.to_dict()


def _mapping(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "-"


def show_version(v: ModelVersion) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("ref", str(v.ref)),
        ("aliases", ", ".join(v.aliases) or "-"),
        ("format", f"{v.format} ({v.framework})"),
        ("digest", v.digest),
        ("size", f"{human_size(v.size)} in {len(v.files)} file(s)"),
        ("inputs", "\n".join(t.describe() for t in v.signature.inputs)),
        ("outputs", "\n".join(t.describe() for t in v.signature.outputs)),
        ("metrics", _mapping(v.metrics)),
        ("params", _mapping(v.params)),
        ("tags", _mapping(v.tags)),
        ("description", v.description or "-"),
        ("parent", v.parent or "-"),
        ("created", f"{v.created_at} by {v.created_by}"),
        ("git commit", (v.git_commit or "-") + (" (dirty)" if v.extra.get("git_dirty") else "")),
        ("trusted", "yes (code-executing or unlisted types allowed)" if v.trusted else "no"),
        ("libraries", _mapping(v.library_versions)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def versions_table(versions: list[ModelVersion]) -> None:
    table = Table()
    for col in ("version", "aliases", "format", "size", "metrics", "created", "digest"):
        table.add_column(col)
    for v in versions:
        table.add_row(
            str(v.version),
            ", ".join(v.aliases),
            v.format,
            human_size(v.size),
            _mapping(v.metrics),
            v.created_at[:19].replace("T", " "),
            v.digest[7:19],
        )
    console.print(table)


def models_table(models: list[dict[str, Any]]) -> None:
    table = Table()
    for col in ("name", "latest", "versions", "aliases", "updated"):
        table.add_column(col)
    for m in models:
        aliases = ", ".join(f"{a}→{v}" for a, v in m["aliases"].items())
        table.add_row(
            m["name"],
            str(m["latest"]),
            str(m["versions"]),
            aliases,
            str(m["updated_at"])[:19].replace("T", " "),
        )
    console.print(table)


def diff_table(diff: dict[str, Any]) -> None:
    table = Table(title=f"{diff['left']} vs {diff['right']}")
    table.add_column("field", style="bold")
    table.add_column(diff["left"])
    table.add_column(diff["right"])
    for name, entry in diff["fields"].items():
        left, right = _cell(entry["left"]), _cell(entry["right"])
        style = None if entry["same"] else "yellow"
        table.add_row(name, left, right, style=style)
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"inputs", "outputs"}:
        return "\n".join(
            f"{t['name']}: {t['datatype']}{t['shape']}" for t in value["inputs"] + value["outputs"]
        )
    if isinstance(value, dict):
        return _mapping(value)
    return "-" if value is None else str(value)

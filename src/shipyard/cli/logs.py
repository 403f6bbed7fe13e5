"""`shipyard logs`: read the prediction log the servers write (every worker's), newest first."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shipyard.cli._context import JsonFlag, state

if TYPE_CHECKING:
    from shipyard.monitor.predictions import Entry

_SHOWN = 20  # entries in a table unless --limit says otherwise; an export takes them all
_WIDE = 60  # characters of an output's values shown in the table


def logs(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME (every version), NAME:VERSION or NAME@ALIAS.")],
    since: Annotated[
        str | None,
        typer.Option(metavar="WHEN", help="Only entries from WHEN on: 30m, 1h, 2d, or an ISO time."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(metavar="N", min=1, help=f"At most N entries (default {_SHOWN}; all with --export)."),
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Write the entries to FILE.parquet or FILE.jsonl instead."),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Show the prediction log of a model: each logged request, its status, latency and outputs."""
    from shipyard.api import predictions
    from shipyard.cli.audit import parse_since
    from shipyard.monitor.predictions import export as export_entries

    start = datetime.fromisoformat(parse_since(since)) if since else None
    settings = state(ctx).settings()
    entries = predictions(ref, since=start, limit=limit or (None if export else _SHOWN), settings=settings)
    if export is not None:
        export_entries(entries, export)
        typer.echo(f"exported {len(entries)} entries of {ref} to {export}")
        return
    from shipyard.cli._render import Column, print_json, print_table

    if json_:
        print_json([entry.to_dict() for entry in entries])
        return
    if not entries:
        window = f" since {since}" if since else ""
        typer.echo(f"no logged requests for {ref}{window}", err=True)
        return
    columns = [
        Column("time", "stamp"),
        Column("request id", "stamp"),
        Column("version", "number"),
        Column("protocol", "stamp", optional=True),
        Column("status", "number"),
        Column("ms", "number"),
        Column("rows", "number", optional=True),
        Column("outputs"),
    ]
    rows = [
        [
            entry.at[:23].replace("T", " "),
            entry.request_id,
            "-" if entry.version is None else str(entry.version),
            entry.protocol,
            str(entry.status),
            f"{entry.latency_ms:.1f}",
            str(entry.summary.get("rows", "-")),
            _outputs(entry),
        ]
        for entry in entries
    ]
    print_table(columns, rows)


def _outputs(entry: Entry) -> str:
    """Each output's values (or shape when it was too large to log them), one per line."""
    import json

    lines = []
    for name, about in entry.summary.get("outputs", {}).items():
        if "values" in about:
            text = json.dumps(about["values"], separators=(",", ":"))
            lines.append(f"{name}={text if len(text) <= _WIDE else text[: _WIDE - 1] + '…'}")
        else:
            lines.append(f"{name}: {about['dtype']}{about['shape']}")
    return "\n".join(lines) or "-"


def register(app: typer.Typer) -> None:
    app.command()(logs)

"""`shipyard audit`: read the registry's audit log, or check that its hash chain is intact."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from shipyard.cli._context import JsonFlag, state
from shipyard.errors import InvalidInputError

if TYPE_CHECKING:
    from shipyard.registry.audit import AuditEntry

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: datetime | None = None) -> str:
    """`30m`, `1h`, `2d`, `1w` ago, or an ISO date/time (UTC unless it says otherwise), as the
    ISO UTC text entries are stamped with, so it compares with them as text."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(value.strip())
    if match:
        moment = now - timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    else:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInputError(
                f"--since expects a duration such as 30m, 1h, 2d or an ISO time such as "
                f"2026-01-31T12:00, got {value!r}",
                field="since",
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _detail(entry: AuditEntry) -> str:
    return ", ".join(f"{k}={v}" for k, v in entry.detail.items()) or "-"


def audit(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(metavar="WHEN", help="Only entries from WHEN on: 30m, 1h, 2d, or an ISO time."),
    ] = None,
    action: Annotated[
        str | None,
        typer.Option(
            metavar="ACTION", help="Only this action (e.g. push, rm, sign; `alias` selects alias.*)."
        ),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Re-compute the hash chain; exit 7 naming the first bad entry.")
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Show the audit log (pushes, alias moves, removals, signatures, server loads), oldest first."""
    from shipyard.cli._render import Column, print_json, print_table

    registry = state(ctx).registry()
    if verify:
        count, head = registry.verify_audit()  # raises IntegrityError (exit 7) on a broken chain
        if json_:
            print_json({"ok": True, "entries": count, "head": head})
        else:
            typer.echo(f"audit log intact: {count} entries, head {head}")
        return
    entries = registry.audit_log(since=parse_since(since) if since else None, action=action)
    if json_:
        print_json([e.to_dict() for e in entries])
        return
    columns = [
        Column("#", "number"),
        Column("when", "stamp"),
        Column("actor", optional=True),
        Column("action", "stamp"),
        Column("target"),
        Column("detail", optional=True),
    ]
    rows = [
        [str(e.seq), e.at[:19].replace("T", " "), e.actor, e.action, e.target, _detail(e)] for e in entries
    ]
    print_table(columns, rows)


def register(app: typer.Typer) -> None:
    app.command()(audit)

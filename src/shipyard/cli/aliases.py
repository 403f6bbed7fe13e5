"""Commands on aliases: alias, rollback, history."""

from __future__ import annotations

from typing import Annotated

import typer

from shipyard.cli._context import JsonFlag, state
from shipyard.errors import InvalidInputError


def _print_move(name: str, alias: str, version: int | None, previous: int | None) -> None:
    from shipyard.cli._render import print_json

    print_json({"name": name, "alias": alias, "version": version, "previous": previous})


def alias(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias, e.g. production.")],
    version: Annotated[int | None, typer.Argument(help="Version to point at.")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias.")] = False,
    json_: JsonFlag = False,
) -> None:
    """Point NAME@ALIAS at VERSION, or remove it with --delete (every move is kept)."""
    registry = state(ctx).registry()
    if delete:
        if version is not None:
            raise InvalidInputError("give either VERSION or --delete, not both", field="version")
        removed = registry.delete_alias(name, alias_)
        if json_:
            _print_move(name, alias_, None, removed)
        else:
            typer.echo(f"removed {name}@{alias_} (was {removed})")
        return
    if version is None:
        raise InvalidInputError(
            f"missing VERSION: `shipyard alias {name} {alias_} VERSION` or add --delete",
            field="version",
        )
    previous = registry.set_alias(name, alias_, version)
    if json_:
        _print_move(name, alias_, version, previous)
        return
    was = f" (was {previous})" if previous is not None else ""
    typer.echo(f"{name}@{alias_} → {version}{was}")


def rollback(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias to move back.")],
    json_: JsonFlag = False,
) -> None:
    """Move NAME@ALIAS back to its previous target."""
    before, after = state(ctx).registry().rollback(name, alias_)
    if json_:
        _print_move(name, alias_, after, before)
        return
    typer.echo(f"{name}@{alias_} → {after} (rolled back from {before if before else 'none'})")


def history(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias.")],
    json_: JsonFlag = False,
) -> None:
    """Every move of NAME@ALIAS, oldest first."""
    from dataclasses import asdict

    from shipyard.cli._render import Column, print_json, print_table

    changes = state(ctx).registry().history(name, alias_)
    if json_:
        print_json([asdict(c) for c in changes])
        return
    columns = [
        Column("when", "stamp"),
        Column("action", "stamp"),
        Column("from", "number"),
        Column("to", "number"),
        Column("by", optional=True),
    ]
    rows = [
        [
            c.changed_at[:19].replace("T", " "),
            c.action,
            "-" if c.previous is None else str(c.previous),
            "-" if c.version is None else str(c.version),
            c.changed_by,
        ]
        for c in changes
    ]
    print_table(columns, rows, title=f"{name}@{alias_}")


def register(app: typer.Typer) -> None:
    app.command()(alias)
    app.command()(rollback)
    app.command()(history)

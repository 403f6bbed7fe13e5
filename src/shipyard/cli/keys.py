"""`shipyard keys create|list|revoke`: API keys for the inference server, kept in the registry."""

from __future__ import annotations

from typing import Annotated

import typer

from shipyard.cli._context import JsonFlag, state
from shipyard.cli._help import PlainHelpGroup

keys_app = typer.Typer(
    name="keys",
    cls=PlainHelpGroup,
    help="API keys for `shipyard serve` (stored in the registry, so every server sharing it sees them).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@keys_app.command()
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A name for the key, e.g. the client that uses it.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="admin, read, write, infer:MODEL or infer:* (repeat for several).",
            show_default=False,
        ),
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="Lifetime (30d, 12h, 2w, 90m) or a date (2027-01-31); default: never.")
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Create a key and print it once: only its hash is stored, so it cannot be shown again."""
    record, secret = state(ctx).registry().create_key(name, scope or [], expires)
    if json_:
        from shipyard.cli._render import print_json

        print_json({**record.to_dict(), "key": secret})
    else:
        typer.echo(secret)
    typer.echo(
        f"created key {record.id} ({record.name}) with {', '.join(record.scopes)}; "
        "store it now: it is not shown again",
        err=True,
    )


@keys_app.command("list")
def list_keys(ctx: typer.Context, json_: JsonFlag = False) -> None:
    """Every key's id, name, scopes and dates (never the key itself)."""
    from shipyard.cli._render import Column, print_json, print_table

    records = state(ctx).registry().list_keys()
    if json_:
        print_json([k.to_dict() for k in records])
        return
    columns = [
        Column("id", "stamp"),
        Column("name"),
        Column("scopes"),
        Column("state", "stamp"),
        Column("expires", "stamp"),
        Column("last used", "stamp", optional=True),
        Column("created", "stamp", optional=True),
    ]
    rows = [
        [
            k.id,
            k.name,
            " ".join(k.scopes),
            "revoked" if k.revoked else "expired" if k.expired() else "active",
            (k.expires_at or "never")[:19].replace("T", " "),
            (k.last_used_at or "never")[:19].replace("T", " "),
            k.created_at[:19].replace("T", " "),
        ]
        for k in records
    ]
    print_table(columns, rows)


@keys_app.command()
def revoke(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(metavar="ID_OR_NAME", help="The key's id or name.")],
    json_: JsonFlag = False,
) -> None:
    """Revoke a key: servers refuse it within their cache time (5 s by default)."""
    record = state(ctx).registry().revoke_key(key)
    if json_:
        from shipyard.cli._render import print_json

        print_json(record.to_dict())
        return
    typer.echo(f"revoked key {record.id} ({record.name})")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app)

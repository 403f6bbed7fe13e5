"""`shipyard keygen` and `shipyard sign`: Ed25519 signatures that `serve --require-signed` checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shipyard.cli._context import JsonFlag, state


def keygen(
    out: Annotated[
        Path,
        typer.Option(metavar="FILE", help="Private key file to create (the public key goes to FILE.pub)."),
    ],
    json_: JsonFlag = False,
) -> None:
    """Create an Ed25519 signing key pair: FILE (private, mode 0600) and FILE.pub."""
    from shipyard.registry import signing

    private, public = signing.generate_key(out.expanduser())
    fingerprint = signing.fingerprint(signing.load_public_key(public))
    if json_:
        from shipyard.cli._render import print_json

        print_json({"private_key": str(private), "public_key": str(public), "fingerprint": fingerprint})
        return
    typer.echo(f"private key {private} (keep it secret), public key {public}, fingerprint {fingerprint}")


def sign(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="Version to sign: NAME:VERSION, NAME@ALIAS or NAME.")],
    key: Annotated[
        Path, typer.Option(metavar="KEY_FILE", help="Ed25519 private key (from `shipyard keygen`).")
    ],
    json_: JsonFlag = False,
) -> None:
    """Sign a version's name, number and artifact digest; `serve --require-signed` checks it."""
    signed = state(ctx).registry().sign(ref, key)
    if json_:
        from shipyard.cli._render import print_json

        print_json(signed)
        return
    typer.echo(f"signed {signed['ref']} ({signed['digest']}) with key {signed['fingerprint']}")


def register(app: typer.Typer) -> None:
    app.command()(keygen)
    app.command()(sign)

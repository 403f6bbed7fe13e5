"""`shipyard import triton DIR`: models from the tools users leave, as Shipyard versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shipyard.cli._context import JsonFlag, state
from shipyard.cli._help import PlainHelpGroup

import_app = typer.Typer(
    name="import",
    cls=PlainHelpGroup,
    help="Store models from another tool's layout (a Triton model repository) as versions here.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@import_app.command("triton")
def triton(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="A Triton model repository (model folders), or one model folder."),
    ],
    json_: JsonFlag = False,
) -> None:
    """Push each ONNX model's version folders, in version order, as versions of the model's name.

    config.pbtxt's max_batch_size and dynamic_batching become each version's serving options;
    its tensors are checked against the graph. Everything is checked before anything is stored:
    on any error nothing is imported. Exit codes: 0 imported; 2 a bad repository (a missing or
    malformed config.pbtxt, a platform other than ONNX, a tensor that does not match the graph,
    a missing model file); 1 anything else.
    """
    from shipyard.importers.triton import import_repository

    pushed = import_repository(state(ctx).registry(), path)
    if json_:
        from shipyard.cli._render import print_json

        print_json([version.to_dict() for version in pushed])
        return
    for version in pushed:
        source = version.tags.get("triton_version", "?")
        options = ", ".join(f"{key}={value}" for key, value in version.serving.items())
        typer.echo(f"imported {version.ref} (Triton version {source}) {version.digest} [{options}]")


def register(app: typer.Typer) -> None:
    app.add_typer(import_app)

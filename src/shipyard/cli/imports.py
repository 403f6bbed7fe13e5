"""`shipyard import triton DIR`: models from the tools users leave, as Shipyard versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shipyard.cli._context import JsonFlag, state, steps
from shipyard.cli._help import PlainHelpGroup

import_app = typer.Typer(
    name="import",
    cls=PlainHelpGroup,
    help="Store models from another tool (a Triton model repository, MLflow) as versions here.",
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


@import_app.command("mlflow")
def mlflow(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="An MLflow model folder (with MLmodel), runs:/RUN_ID/PATH, models:/NAME, "
            "models:/NAME/VERSION or models:/NAME@ALIAS.",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            help="Shipyard model name (default: the registered model's name, or the folder's); "
            "needed for runs:/."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="MLflow tracking server for runs:/ and models:/ (default: $MLFLOW_TRACKING_URI).",
        ),
    ] = None,
    trust: Annotated[
        bool,
        typer.Option(help="Allow pickle-based flavours (sklearn saved with pickle or cloudpickle)."),
    ] = False,
    json_: JsonFlag = False,
) -> None:
    """Push an MLflow model, or each registered version of one in version order, as versions.

    Flavours: onnx (ONNX), sklearn saved with skops (skops), keras, transformers; sklearn saved
    with pickle or cloudpickle only with --trust; python_function (code that runs only inside
    MLflow) is refused, with --trust (exit 2) or without (exit 5). The run's metrics, params and
    tags, the input example (as the sample input) and MLmodel (with the signature, stored as
    mlflow/MLmodel) come along; registered aliases become aliases. models:/NAME imports every
    version; models:/NAME/VERSION and models:/NAME@ALIAS that one. Everything is fetched and
    checked before anything is stored: on any error nothing is imported. Exit codes: 0 imported;
    2 a bad source (a missing or malformed MLmodel, an unsupported flavour, a missing model file,
    no tracking URI); 3 the run, model, version or alias does not exist; 5 a pickle without
    --trust; 6 the tracking server cannot be reached; 1 anything else.
    """
    from shipyard.importers.mlflow import import_source

    pushed = import_source(
        state(ctx).registry(),
        source,
        name=name,
        tracking_uri=tracking_uri,
        trust=trust,
        say=steps(json_),
    )
    if json_:
        from shipyard.cli._render import print_json

        print_json([version.to_dict() for version in pushed])
        return
    for version in pushed:
        origin = version.tags.get("mlflow_source", source)
        flavour = version.tags.get("mlflow_flavor", "?")
        aliases = f" aliases: {', '.join(version.aliases)}" if version.aliases else ""
        typer.echo(f"imported {version.ref} ({flavour}, from {origin}) {version.digest}{aliases}")


def register(app: typer.Typer) -> None:
    app.add_typer(import_app)

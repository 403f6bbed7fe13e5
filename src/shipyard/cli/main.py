"""The `shipyard` entry point: builds the app and maps every error to one line + exit code."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
import typer.exceptions

from shipyard import __version__
from shipyard.cli import (
    aliases,
    audit,
    build,
    deploy,
    drift,
    entrypoint,
    imports,
    k8s,
    keys,
    logs,
    models,
    monitor,
    optimize,
    quality,
    serve,
    sign,
)
from shipyard.cli._context import CliState
from shipyard.cli._help import PlainHelpGroup
from shipyard.errors import ShipyardError

app = typer.Typer(
    name="shipyard",
    cls=PlainHelpGroup,
    help="Store, optimize, serve, monitor and ship trained models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"shipyard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Registry home (default: $SHIPYARD_HOME or ~/.shipyard)."),
    ] = None,
    config: Annotated[Path | None, typer.Option(metavar="FILE", help="TOML config file.")] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    ctx.obj = CliState(home=home, config=config)


models.register(app)
aliases.register(app)
serve.register(app)
entrypoint.register(app)
optimize.register(app)
keys.register(app)
audit.register(app)
sign.register(app)
drift.register(app)
monitor.register(app)
logs.register(app)
quality.register(app)
build.register(app)
deploy.register(app)
k8s.register(app)
imports.register(app)


def _click_errors() -> tuple[type[Exception], ...]:
    """Usage-error classes: Typer >= 0.29 vendors its own copy of Click."""
    classes: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        classes.append(VendoredClickException)
    except ImportError:  # an older Typer that uses Click itself
        pass
    return tuple(classes)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors print one readable line (no traceback) and exit non-zero."""
    command = typer.main.get_command(app)
    try:
        # Without standalone mode Click returns the code of a `typer.Exit(code)` rather than
        # raising it: keep it, or `shipyard serve` would exit 0 after its workers failed.
        result = command.main(args=argv, prog_name="shipyard", standalone_mode=False)
    except ShipyardError as exc:
        # One line whatever a dependency put in the message (a wrapped library error may span several).
        click.echo(f"error: {' '.join(exc.message.split())}", err=True)
        return exc.exit_code
    except (click.exceptions.Exit, typer.exceptions.Exit) as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except _click_errors() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `shipyard`: the help is the answer
            click.echo(command.get_help(command.make_context("shipyard", [], resilient_parsing=True)))
            return 0
        context = getattr(exc, "ctx", None)
        hint = f" (see `{context.command_path} --help`)" if context is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", 2))
    except (click.exceptions.Abort, typer.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        return 130
    except Exception as exc:  # the last line of defence: never a traceback unless asked
        if os.environ.get("SHIPYARD_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else ""
        click.echo(
            f"error: internal error ({type(exc).__name__}: {message}); "
            "rerun with SHIPYARD_DEBUG=1 for details",
            err=True,
        )
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run() -> None:
    sys.exit(main())

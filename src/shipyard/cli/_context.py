"""What the root command passes to every subcommand: where the registry is, lazily opened."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shipyard.errors import InvalidInputError

if TYPE_CHECKING:
    from shipyard.registry import Registry
    from shipyard.settings import Settings


# Every command that prints a result takes it; errors stay one `error:` line on stderr.
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document.")]


def api_key_option(scope: str) -> Any:
    """`--api-key KEY`, or SHIPYARD_API_KEY, for a command that asks a server: `scope` names what
    the key needs (`the read scope`)."""
    return typer.Option(
        metavar="KEY",
        envvar="SHIPYARD_API_KEY",
        help=f"API key with {scope}, if the server needs one.",
        show_default=False,
    )


@dataclass
class CliState:
    home: Path | None = None
    config: Path | None = None
    _registry: Registry | None = field(default=None, repr=False)

    def settings(self, config: Path | None = None, **flags: Any) -> Settings:
        """Settings with this command's flags on top (`config`: a command's own --config)."""
        from shipyard.settings import Settings

        return Settings.load(config or self.config, home=self.home, **flags)

    def registry(self) -> Registry:
        if self._registry is None:
            from shipyard.registry import Registry

            self._registry = Registry(settings=self.settings())
        return self._registry


def state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState)
    return obj


def parse_pairs(values: list[str] | None, what: str) -> dict[str, str]:
    """`k=v` options into a dict, with a clear error for a malformed pair."""
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--{what} expects KEY=VALUE, got {item!r}", field=what)
        out[key.strip()] = value.strip()
    return out


def read_json_arg(value: str, what: str) -> Any:
    """JSON given inline or as @FILE ('-' or '@-' reads standard input)."""
    if value in ("-", "@-"):
        import sys

        text, source = sys.stdin.read(), "standard input"
    elif value.startswith("@"):
        path = Path(value[1:]).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"--{what} file {str(path)!r} does not exist", field=what)
        text, source = path.read_text(), str(path)
    else:
        text, source = value, f"--{what}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            field=what,
        ) from exc


def steps(json_: bool) -> Callable[[str], None]:
    """Each long step (a download, a push, a conversion) as it starts, on a terminal's stderr;
    silent with --json or in a pipe, where stderr is for the one error line."""
    if json_ or not sys.stderr.isatty():
        return lambda _line: None
    return lambda line: typer.echo(f"{line} …", err=True)

"""Help text in the classic shape: `shipyard show [OPTIONS] REF`, `--alias TEXT`.

Typer's plain help prints required arguments as `{ref}` and types as `<list[str]>`; these
classes print upper-case names and type names instead, for every command of the app.
"""

from __future__ import annotations

import re
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup

_TYPE_PLACEHOLDER = re.compile(r" <(?:list\[)?(\w+)[^>]*>(\.\.\.)?$")
_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "bool": "BOOLEAN"}


def _argument_name(param: TyperArgument) -> str:
    name = param.metavar or (param.name or "").upper()
    return name + ("..." if param.nargs != 1 else "")


def _plain_type(match: re.Match[str]) -> str:
    return " " + _TYPE_NAMES.get(match[1], match[1].upper()) + (match[2] or "")


def _write_params(command: Any, ctx: Any, formatter: Any) -> None:
    arguments, options = [], []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        if isinstance(param, TyperArgument):
            arguments.append((_argument_name(param), record[1]))
        else:
            options.append((_TYPE_PLACEHOLDER.sub(_plain_type, record[0]), record[1]))
    if arguments:
        with formatter.section("Arguments"):
            formatter.write_dl(arguments)
    if options:
        with formatter.section("Options"):
            formatter.write_dl(options)


class PlainHelpCommand(TyperCommand):
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _write_params(self, ctx, formatter)


class PlainHelpGroup(TyperGroup):
    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for command in self.commands.values():
            if type(command) is TyperCommand:  # built by Typer: same state, plainer help
                command.__class__ = PlainHelpCommand

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _write_params(self, ctx, formatter)
        self.format_commands(ctx, formatter)

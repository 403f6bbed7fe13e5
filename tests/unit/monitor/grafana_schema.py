"""Checks a dashboard against Grafana's dashboard schema, as grafana-foundation-sdk encodes it.

Grafana publishes its dashboard schema as CUE kinds; no package on PyPI or npm ships it as JSON
Schema. grafana-foundation-sdk (PyPI, Apache-2.0) is generated from those kinds: a typed class per
schema object (the dashboard, panels, grid positions, variables), per panel type's options (the
`timeseries` and `stat` panels' `options`) and per data source's query (Prometheus targets). A
dashboard conforms when

- the SDK's decoder keeps every key it was given (a key outside the schema is dropped), with the
  same value, and
- every value it decoded has the type its class declares (ints, strings, enums, literals, nested
  objects, lists), which the SDK's decoder does not check itself.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

_MODELS = "grafana_foundation_sdk.models."
plugins.register_default_plugins()  # panel options and data-source queries decode to their types


def schema_problems(dashboard: dict[str, Any]) -> list[str]:
    """Every way `dashboard` departs from the schema (empty: it conforms)."""
    decoded = Dashboard.from_json(dashboard)
    encoded = json.loads(json.dumps(decoded, cls=JSONEncoder))
    return _lost(dashboard, encoded, "dashboard") + _mistyped(decoded, "dashboard")


def _lost(given: Any, kept: Any, path: str) -> list[str]:
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [f"{path}: decoded as {kept!r}"]
        problems = []
        for key, value in given.items():
            if key not in kept:
                problems.append(f"{path}.{key}: not in the schema")
            else:
                problems += _lost(value, kept[key], f"{path}.{key}")
        return problems
    if isinstance(given, list):
        if not isinstance(kept, list) or len(kept) != len(given):
            return [f"{path}: decoded as {kept!r}"]
        return [
            p for i, (g, k) in enumerate(zip(given, kept, strict=True)) for p in _lost(g, k, f"{path}[{i}]")
        ]
    return [] if given == kept else [f"{path}: {given!r} decoded as {kept!r}"]


def _mistyped(value: Any, path: str, hint: Any = None) -> list[str]:
    if hint is None:  # a decoded object: each of its declared attributes
        hints = typing.get_type_hints(type(value))
        return [p for name, h in hints.items() for p in _mistyped(getattr(value, name), f"{path}.{name}", h)]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (Any, object):  # e.g. a panel's options: typed by the panel's own schema once decoded
        return _mistyped(value, path) if type(value).__module__.startswith(_MODELS) else []
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None:
            return [] if len(options) < len(args) else [f"{path}: null is not {hint}"]
        # The option this value claims to be (its class), else the only one: its own problems.
        claimed = [o for o in options if isinstance(o, type) and isinstance(value, o)] or options
        if len(claimed) == 1:
            return _mistyped(value, path, claimed[0])
        if any(not _mistyped(value, path, option) for option in claimed):
            return []
        return [f"{path}: {value!r} is not {hint}"]
    if hint is type(None):
        return [] if value is None else [f"{path}: {value!r} is not null"]
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [p for i, item in enumerate(value) for p in _mistyped(item, f"{path}[{i}]", args[0])]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        return [p for k, item in value.items() for p in _mistyped(item, f"{path}.{k}", args[1])]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = {member.value for member in hint}
        ok = isinstance(value, hint) or (value in allowed and type(value) is not bool)
        return [] if ok else [f"{path}: {value!r} is not one of {sorted(allowed, key=str)}"]
    if hint is bool:
        return [] if isinstance(value, bool) else [f"{path}: {value!r} is not a boolean"]
    if hint is int:
        return (
            []
            if isinstance(value, int) and not isinstance(value, bool)
            else [f"{path}: {value!r} is not an integer"]
        )
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is not a number"]
    if hint is str:
        return [] if isinstance(value, str) else [f"{path}: {value!r} is not a string"]
    if isinstance(hint, type):
        if not isinstance(value, hint):
            return [f"{path}: {value!r} is not a {hint.__name__}"]
        return _mistyped(value, path)
    raise AssertionError(f"{path}: no check for the type {hint!r}")

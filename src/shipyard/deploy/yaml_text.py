"""YAML text for manifests: block style for mappings and lists, every string double-quoted.

Manifests hold only mappings, lists, strings, numbers and booleans, so a small emitter does, and
Shipyard needs no YAML library at run time. A string is written plain only when it is a word no
YAML parser reads as anything else; otherwise double-quoted, so `"true"`, `"8080"` or `"no"`
stay strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")  # whole strings only: `$` would let "A\n" through
# Words YAML 1.1 (Helm's parser among others) reads as booleans or null when left unquoted.
_UNPRINTABLE = frozenset({0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF})
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def dump(document: Mapping[str, Any]) -> str:
    """One YAML document (no `---`), ending with a newline."""
    return "".join(line + "\n" for line in _mapping(document, 0))


def dump_all(documents: Sequence[Mapping[str, Any]]) -> str:
    """Several documents, each after a `---` line."""
    return "".join(f"---\n{dump(document)}" for document in documents)


def _string(text: str) -> str:
    """Plain where nothing could read it as another type, else double-quoted."""
    return text if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED else _quoted(text)


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar: what YAML does not allow raw (control characters, C1, BOM,
    line separators) escaped by code point, never as JSON's surrogate pairs, which YAML lacks."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif code < 0x20 or 0x7F <= code <= 0x9F or code in _UNPRINTABLE or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return _string(value)
    raise TypeError(f"cannot write {type(value).__name__} to a manifest")


def _is_block(value: Any) -> bool:
    return isinstance(value, Mapping | list | tuple) and len(value) > 0


def _empty(value: Any) -> str:
    return "{}" if isinstance(value, Mapping) else "[]"


def _mapping(mapping: Mapping[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    lines = []
    for key, value in mapping.items():
        if _is_block(value):
            lines.append(f"{pad}{_string(key)}:")
            child = (
                _mapping(value, indent + 2) if isinstance(value, Mapping) else _sequence(value, indent + 2)
            )
            lines.extend(child)
        elif isinstance(value, Mapping | list | tuple):
            lines.append(f"{pad}{_string(key)}: {_empty(value)}")
        else:
            lines.append(f"{pad}{_string(key)}: {_scalar(value)}")
    return lines


def _sequence(items: Sequence[Any], indent: int) -> list[str]:
    pad = " " * indent
    lines = []
    for item in items:
        if _is_block(item):
            child = _mapping(item, indent + 2) if isinstance(item, Mapping) else _sequence(item, indent + 2)
            # The item's first line goes after the dash: `- name: x`.
            lines.append(f"{pad}- {child[0].lstrip()}")
            lines.extend(child[1:])
        elif isinstance(item, Mapping | list | tuple):
            lines.append(f"{pad}- {_empty(item)}")
        else:
            lines.append(f"{pad}- {_scalar(item)}")
    return lines

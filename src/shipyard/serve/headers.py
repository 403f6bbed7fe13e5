"""A request's headers as a dict, built once per request and kept in its ASGI scope.

ASGI gives headers as a list of (name, value) pairs with lower-case names; the auth check, the
request id and the protocol handlers each read a few of them. Built once (the last of a repeated
header wins), a read is a dict lookup.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

_KEY = "shipyard.headers"


def headers_of(scope: MutableMapping[str, Any]) -> dict[bytes, bytes]:
    """The request's headers by lower-case name."""
    headers: dict[bytes, bytes] | None = scope.get(_KEY)
    if headers is None:
        headers = scope[_KEY] = dict(scope["headers"])
    return headers

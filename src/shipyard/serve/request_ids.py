"""Request ids: the client's `X-Request-ID` when it is safe to repeat, else one made here.

A made id is this process's random prefix and a counter (0.3-0.6 µs on a busy shared host, where
`uuid4().hex` took 4 µs): unique across workers and restarts without asking the kernel for
entropy on every request. A client's id is kept only if it is 1-128 characters of a small safe set
(letters, digits and `._~:;=+/@-`: UUIDs, ULIDs and AWS trace ids pass), so a response header, a log
line or the prediction log never repeats arbitrary text; any other value is replaced, not refused.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import MutableMapping
from typing import Any

from shipyard.serve.headers import headers_of

HEADER = b"x-request-id"
_safe = re.compile(r"[A-Za-z0-9._~:;=+/@-]{1,128}").fullmatch


class _Sequence:
    """This process's ids: a random prefix and a counter."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.prefix = os.urandom(8).hex() + "-"
        self.counter = itertools.count(1)


_ids = _Sequence()
os.register_at_fork(after_in_child=_ids.restart)  # a forked child must not repeat its parent's ids


def request_id(given: str | None) -> str:
    """`given` if it is a safe id, else a new one."""
    if given is not None and _safe(given):
        return given
    return f"{_ids.prefix}{next(_ids.counter):x}"


def request_id_of(scope: MutableMapping[str, Any]) -> str:
    """The id of the request in an ASGI scope (for responses made before any handler runs)."""
    given = headers_of(scope).get(HEADER)
    return request_id(None if given is None else given.decode("latin-1"))

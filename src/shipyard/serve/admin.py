"""The admin listener: management and `/metrics` on their own port, loopback by default.

Each serving process listens on the admin port too (with SO_REUSEPORT when there are several
workers) and one app answers both ports, choosing the routes by the port a connection came in
on. So metrics, already summed across workers, need nothing more. Model management does: a load
or unload would reach only the worker that took the connection and leave its siblings serving
something else, so with several workers the admin port refuses them (index still answers).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Scope

from shipyard.errors import ConflictError, NotFoundError
from shipyard.serve.protocols._http import error_response
from shipyard.settings import ServeSettings, Settings

# Answered on the admin port besides the admin routes: a scraper or operator checks health there.
PROBES = ("/healthz", "/readyz")
# Paths that change what a worker serves (the other admin routes only read).
CHANGES_MODELS = re.compile(r"^/v2/repository/models/[^/]+/(load|unload)$")


@dataclass(frozen=True)
class AdminSplit:
    """Which requests each port answers: admin routes only on `port`, the rest only elsewhere."""

    port: int
    admin_paths: tuple[re.Pattern[str], ...]
    workers: int

    @classmethod
    def of(cls, serve: ServeSettings, admin_routes: list[Route]) -> AdminSplit | None:
        if serve.admin_port is None:
            return None
        patterns = tuple(re.compile(route.path_regex.pattern) for route in admin_routes)
        return cls(serve.admin_port, patterns, serve.workers)

    def refusal(self, scope: Scope) -> Response | None:
        """The error for an http request on the wrong port, or None to serve it."""
        path: str = scope["path"]
        server = scope.get("server")
        on_admin_port = server is not None and server[1] == self.port
        is_admin = any(pattern.match(path) for pattern in self.admin_paths)
        if is_admin and not on_admin_port:
            return error_response(
                NotFoundError(f"{path} is served on the admin port, not this one", field="path")
            )
        if on_admin_port and not is_admin and path not in PROBES:
            return error_response(
                NotFoundError(
                    f"the admin port serves management, /metrics and probes only, not {path}", field="path"
                )
            )
        if on_admin_port and self.workers > 1 and CHANGES_MODELS.match(path):
            return error_response(
                ConflictError(
                    f"load and unload are refused with {self.workers} workers: each would reach only the "
                    "worker that took the connection; run management with --workers 1",
                    field="path",
                )
            )
        return None


@contextmanager
def reserved_admin_port(settings: Settings) -> Iterator[Settings]:
    """Settings whose admin port is a real number (0 picks a free one), held until the block ends.

    The holding socket is bound with SO_REUSEPORT and never listens, so it takes no connections;
    each serving process binds its own listening socket on the same port (`admin_sockets`).
    """
    serve = settings.serve
    if serve.admin_port is None:
        yield settings
        return
    from shipyard.serve.server import bind_socket

    holder = bind_socket(serve.admin_host, serve.admin_port, reuse_port=True)
    try:
        port = holder.getsockname()[1]
        yield settings.model_copy(update={"serve": serve.model_copy(update={"admin_port": port})})
    finally:
        holder.close()


def admin_sockets(serve: ServeSettings) -> list[socket.socket]:
    """This process's admin listening socket, or none without an admin port."""
    if serve.admin_port is None:
        return []
    from shipyard.serve.server import bind_socket

    return [bind_socket(serve.admin_host, serve.admin_port, reuse_port=True)]

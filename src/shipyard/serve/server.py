"""Running the app: one process, or N worker processes sharing one port.

Several workers each open their own listening socket with SO_REUSEPORT, so the kernel spreads
connections across them by hash; a single shared socket lets the busiest worker accept most
connections (one of two uvicorn workers took all 32 in our measurements). Metrics are summed
across workers through prometheus_client's multiprocess directory.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shipyard.errors import ConflictError, InvalidInputError, ShipyardError
from shipyard.settings import Settings


@dataclass(frozen=True)
class ServeSpec:
    """Everything a worker process needs to build its app (picklable)."""

    settings: Settings
    refs: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)
    vertex_routes: tuple[str | None, str | None] = (None, None)


def bind_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise _bind_error(host, port, exc) from exc
    sock.set_inheritable(True)
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> ShipyardError:
    where = f"cannot listen on {host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return ConflictError(f"{where}: the port is in use (another server?); pick another", field="port")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
        return InvalidInputError(f"{where}: no such address on this machine", field="host")
    if exc.errno == errno.EACCES:
        return InvalidInputError(f"{where}: permission denied (ports below 1024 need root)", field="port")
    return ShipyardError(f"{where}: {exc.strerror or exc}")


def _serve_on(spec: ServeSpec, sock: socket.socket) -> None:
    import uvicorn

    from shipyard.monitor.logs import configure_logging
    from shipyard.serve.app import create_app
    from shipyard.serve.transport import OneWriteHttpProtocol

    configure_logging(spec.settings.serve.log_level, as_json=spec.settings.serve.log_json)

    app = create_app(
        spec.settings,
        spec.refs,
        overrides=spec.overrides,
        vertex_routes=spec.vertex_routes,
        # With several workers a worker must not join the shared port before it can serve:
        # the kernel would hand it connections that get 503s while a sibling is ready.
        wait_for_models=spec.settings.serve.workers > 1,
    )
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=OneWriteHttpProtocol,
        lifespan="on",
        access_log=spec.settings.serve.access_log,
        # X-Forwarded-For/-Proto only change the client address and scheme in the scope, which
        # nothing but the access log reads: skip that middleware (a measurable µs per request).
        proxy_headers=spec.settings.serve.access_log,
        server_header=False,  # `server: uvicorn` tells a scanner what to try, and no client needs it
        log_level="warning",
        timeout_graceful_shutdown=int(spec.settings.serve.grace_period_s) or None,
        backlog=2048,
    )
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler it found:
    # a no-op handler here turns that into a clean exit with status 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])


def _worker_main(spec: ServeSpec, host: str, port: int) -> None:
    # No listen() here: uvicorn listens after its lifespan startup, which waits for the models.
    _serve_on(spec, bind_socket(host, port, reuse_port=True))


def run(spec: ServeSpec, announce: Callable[[str, int], None]) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    serve = spec.settings.serve
    if serve.workers == 1:
        sock = bind_socket(serve.host, serve.port, reuse_port=False)
        announce(serve.host, sock.getsockname()[1])
        _serve_on(spec, sock)
        return 0
    # Reserve the port (a port of 0 picks one) without listening: only listening sockets in a
    # SO_REUSEPORT group receive connections, so the parent never takes any.
    holder = bind_socket(serve.host, serve.port, reuse_port=True)
    port = holder.getsockname()[1]
    metrics_dir = tempfile.mkdtemp(prefix="shipyard-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker_main, args=(spec, serve.host, port), name=f"shipyard-worker-{i}")
        for i in range(serve.workers)
    ]
    for worker in workers:
        worker.start()
    announce(serve.host, port)

    def forward(signum: int, _frame: Any) -> None:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for worker in workers:
            worker.join()
    finally:
        holder.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    failed = [w for w in workers if w.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        print(f"shipyard: {len(failed)} worker(s) exited with an error", file=sys.stderr)
        return 1
    return 0

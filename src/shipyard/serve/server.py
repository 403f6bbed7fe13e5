"""Running the app: one process, or N worker processes sharing one port.

Several workers each open their own listening socket with SO_REUSEPORT, so the kernel spreads
connections across them by hash; a single shared socket lets the busiest worker accept most
connections (one of two uvicorn workers took all 32 in our measurements). Metrics are summed
across workers through prometheus_client's multiprocess directory. The parent supervises the
workers (`workers.py`): it replaces one that dies and stops when one cannot start.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from shipyard.errors import ConflictError, InvalidInputError, ShipyardError
from shipyard.monitor.logs import configure_logging
from shipyard.serve.limits import create_table
from shipyard.serve.workers import Supervisor, report_failure, report_ready
from shipyard.settings import ServeSettings, Settings


@dataclass(frozen=True)
class ServeSpec:
    """Everything a worker process needs to build its app (picklable)."""

    settings: Settings
    refs: list[str]
    limits_file: str | None = None  # the rate-limit table shared by the workers (serve.limits)
    drift_dir: str | None = None  # where the workers share their drift windows (monitor.window_share)


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


def _bind_grpc(serve: ServeSettings, reuse_port: bool) -> socket.socket:
    try:
        return bind_socket(serve.host, serve.grpc_port, reuse_port)
    except ShipyardError as exc:
        raise type(exc)(
            f"{exc.message} (the gRPC port: --grpc-port, or 0 to serve no gRPC)", field="grpc_port"
        ) from exc


def _serve_on(
    spec: ServeSpec,
    sock: socket.socket,
    worker: int | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    import uvicorn

    from shipyard.serve.access_log import AccessLog
    from shipyard.serve.admin import admin_sockets
    from shipyard.serve.app import create_app
    from shipyard.serve.tls import start_reloading
    from shipyard.serve.transport import HeadLimits, OneWriteHttpProtocol

    serve = spec.settings.serve
    configure_logging(serve.log_level, as_json=serve.log_json, worker=worker)

    app: Any = create_app(
        spec.settings,
        spec.refs,
        vertex_routes=(serve.vertex_health_route, serve.vertex_predict_route),
        # With several workers a worker must not join the shared port before it can serve:
        # the kernel would hand it connections that get 503s while a sibling is ready.
        wait_for_models=serve.workers > 1,
        limits_file=spec.limits_file,
        worker=worker or 0,
        drift_dir=spec.drift_dir,
    )
    shipyard_app = app
    if serve.access_log:
        app = AccessLog(app)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=OneWriteHttpProtocol.limited(
            HeadLimits(serve.header_timeout_s, serve.max_header_bytes, serve.max_header_count)
        ),
        timeout_keep_alive=max(1, round(serve.keep_alive_s)),
        lifespan="on",
        access_log=False,  # AccessLog writes it, through Shipyard's log set-up
        # X-Forwarded-For/-Proto only change the client address and scheme in the scope, which
        # nothing but the access log reads: skip that middleware (a measurable µs per request).
        proxy_headers=serve.access_log,
        server_header=False,  # `server: uvicorn` tells a scanner what to try, and no client needs it
        log_config=None,  # configure_logging has set up uvicorn's logger
        log_level="warning",
        timeout_graceful_shutdown=int(serve.grace_period_s) or None,
        backlog=2048,
        ssl_context_factory=start_reloading(serve),  # None without --tls-cert
    )

    class Server(uvicorn.Server):
        grpc: Any = None
        failure: ShipyardError | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if serve.grpc_port and not self.should_exit:
                # After the lifespan: with several workers it has waited for the models, so a
                # worker joins the shared gRPC port only once it can serve, as on HTTP.
                from shipyard.serve.grpc_server import GrpcListener

                listener = GrpcListener(shipyard_app, serve, reuse_port=worker is not None)
                try:
                    await listener.start()
                    self.grpc = listener
                except ShipyardError as exc:  # stop as a failed start does: the lifespan closes
                    self.failure, self.should_exit = exc, True
            if started is not None and not self.should_exit:
                started()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if self.grpc is not None:  # drained with HTTP's grace period, before the models close
                await self.grpc.stop(serve.grace_period_s)
            await super().shutdown(sockets)

    server = Server(config)

    def stop_soon(signum: int, frame: Any) -> None:
        server.should_exit = True

    # uvicorn takes SIGTERM/SIGINT over once it runs, drains, then re-raises the signal to the
    # handler it found: this one, where it changes nothing, so the exit is clean (status 0). A
    # signal that comes before uvicorn takes over (a worker still starting when the supervisor
    # stops) asks the server to stop as uvicorn would: with a no-op here it was lost, and the
    # worker served on until the supervisor killed it.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_soon)
    server.run(sockets=[sock, *admin_sockets(serve)])
    if server.failure is not None:
        raise server.failure


def _worker_main(spec: ServeSpec, host: str, port: int, worker: int, status: Connection) -> None:
    """One of several workers; it tells the supervisor when it serves, or why it cannot start."""
    try:
        # No listen() here: uvicorn listens after its lifespan startup, which waits for the models.
        sock = bind_socket(host, port, reuse_port=True)
        _serve_on(spec, sock, worker, started=lambda: report_ready(status))
    except ShipyardError as exc:
        report_failure(status, exc.message)
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:  # noqa: BLE001 -- e.g. a registry it cannot open: one line, no traceback
        first_line = (str(exc).splitlines() or [""])[0]
        report_failure(status, f"{type(exc).__name__}: {first_line}")
        raise SystemExit(1) from None


def _share_cores(settings: Settings) -> Settings:
    """N workers each using every core would oversubscribe the CPU: unless a thread count was
    set, each worker's runtimes get an equal share of the cores."""
    workers = settings.serve.workers
    if workers == 1 or settings.runtime.intra_op_threads:
        return settings
    share = max(1, len(os.sched_getaffinity(0)) // workers)
    runtime = settings.runtime.model_copy(update={"intra_op_threads": share})
    return settings.model_copy(update={"runtime": runtime})


_MAX_FILES = 1 << 20  # the kernel's usual nr_open ceiling


def _raise_file_limit() -> None:
    """Every connection holds a file descriptor: at the usual soft limit of 1,024, a thousand idle
    connections starve a server of sockets, while the hard limit, what the system allows this
    process, is often far higher (measured: 10% of requests answered under 1,000 half-open
    connections at 1,024, all of them at 4,096). Workers inherit the raised limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MAX_FILES if hard == resource.RLIM_INFINITY else min(hard, _MAX_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run(spec: ServeSpec, announce: Callable[[str, int], None]) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code. With several workers, one that dies is
    replaced, and ShipyardError says why when the server stops because of a failure."""
    serve = spec.settings.serve
    _raise_file_limit()
    if serve.workers == 1:
        sock = bind_socket(serve.host, serve.port, reuse_port=False)
        if serve.grpc_port:  # a port in use is one line now, not an error once models load
            _bind_grpc(serve, reuse_port=False).close()
        announce(serve.host, sock.getsockname()[1])
        _serve_on(spec, sock)
        return 0
    # Reserve the port (a port of 0 picks one) without listening: only listening sockets in a
    # SO_REUSEPORT group receive connections, so the parent never takes any.
    holder = bind_socket(serve.host, serve.port, reuse_port=True)
    port = holder.getsockname()[1]
    if serve.grpc_port:
        # Checked, not held: grpcio binds an IPv6 socket (v4-mapped for an IPv4 host), which
        # cannot share a port with an IPv4 holder. Each worker's gRPC server joins the port with
        # SO_REUSEPORT; a port someone else holds fails here, before any worker starts.
        _bind_grpc(serve, reuse_port=False).close()
    metrics_dir = tempfile.mkdtemp(prefix="shipyard-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    configure_logging(serve.log_level, as_json=serve.log_json)
    limits_file = create_table(metrics_dir, serve.workers)
    drift_dir = os.path.join(metrics_dir, "drift")
    os.mkdir(drift_dir)
    supervisor = Supervisor(
        serve.workers,
        _worker_main,
        (ServeSpec(_share_cores(spec.settings), spec.refs, limits_file, drift_dir), serve.host, port),
        on_exit=lambda pid: _forget_worker(pid, drift_dir),
        stop_timeout_s=_stop_timeout(serve.grace_period_s),
    )
    if serve.tls_cert:  # SIGHUP reloads certificates: each worker reloads its own
        from shipyard.serve.tls import forward_sighup

        forward_sighup(supervisor.pids)
    try:
        supervisor.run(started=lambda: announce(serve.host, port))
    finally:
        holder.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _stop_timeout(grace_period_s: float) -> float | None:
    """How long the supervisor lets a worker drain after SIGTERM before killing it: the grace
    period three times over (its gRPC server drains, then its HTTP server, then its models close,
    each bounded by that period) and a margin for the prediction log's last write; None when the
    grace period is 0 (uvicorn then waits as long as the requests take)."""
    return 3 * grace_period_s + 15.0 if grace_period_s else None


def _forget_worker(pid: int, drift_dir: str) -> None:
    """A dead worker's live gauges (queue depth, in-flight, loaded models) no longer count, nor do
    the inputs in its drift window."""
    from pathlib import Path

    from shipyard.monitor.metrics import forget_process
    from shipyard.monitor.window_share import forget_worker

    forget_process(pid)
    forget_worker(Path(drift_dir), pid)

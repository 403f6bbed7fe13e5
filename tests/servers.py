"""The one way tests start `shipyard serve`: as a user would, and stopped as a supervisor would.

Every server is the installed console script on a port the kernel picks (`--port 0`; the first
line it prints names the real one), its output in files of a log folder, stopped with SIGTERM.
A command expected to refuse to start runs to its exit instead (`run_to_exit`).

It lives beside tests/conftest.py because pytest puts that folder on sys.path for every test;
helpers in a subfolder are importable only from the tests below it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

SHIPYARD = Path(sys.executable).with_name("shipyard")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REFUSAL_TIMEOUT_S = 60.0
GRPC_TRIES = 3  # starts of a server whose free gRPC port another process took first


def free_port() -> int:
    """A loopback port nothing listens on now: for a program that cannot be told `--port 0`, or a
    URL that must find nothing listening (another process may take it before it is used)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(home: Path, **extra: str) -> dict[str, str]:
    """The parent's environment minus what Shipyard, Vertex AI or OpenTelemetry would read, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SHIPYARD_", "AIP_", "PROMETHEUS_", "OTEL_"))
    }
    env["SHIPYARD_HOME"] = str(home)
    env["SHIPYARD_SERVE__GRPC_PORT"] = "0"  # no server binds the fixed default 8001; gRPC tests set one
    env.update(extra)
    return env


def serve_command(refs: list[str], port: int | None, args: list[str] | None) -> list[str]:
    """`shipyard serve REFS [--port PORT] ARGS`; no --port when `port` is None."""
    return [
        str(SHIPYARD),
        "serve",
        *refs,
        *(["--port", str(port)] if port is not None else []),
        *(args or []),
    ]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log_dir: Path
    client_options: dict[str, Any] = field(default_factory=dict)  # e.g. `verify` for a TLS server
    stopped_code: int | None = None
    grpc_port: int | None = None  # where it serves gRPC, when started with `grpc=True`

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def host_port(self) -> str:
        """host:port, the form tritonclient wants."""
        return self.url.removeprefix("http://")

    def client(self, **kwargs: Any) -> httpx.Client:
        options = {"timeout": 30.0, **self.client_options, **kwargs}
        return httpx.Client(base_url=self.url, **options)

    def stdout(self) -> str:
        return (self.log_dir / "stdout.txt").read_text(errors="replace")

    def stderr(self) -> str:
        return (self.log_dir / "stderr.txt").read_text(errors="replace")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then the exit code (killing it, and failing, if it does not exit in time)."""
        if self.stopped_code is not None:
            return self.stopped_code
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.stopped_code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"server did not exit within {timeout}s of SIGTERM; stderr:\n{self.stderr()}")
        return self.stopped_code

    def kill(self) -> None:
        """For a server that failed its test anyway: no orphan process."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_until(self, predicate: Callable[[httpx.Client], bool], timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        with self.client(timeout=5.0) as client:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"server exited with {self.proc.returncode}; stderr:\n{self.stderr()}")
                try:
                    if predicate(client):
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"server not ready within {timeout}s; stderr:\n{self.stderr()}")
                time.sleep(0.05)


def launch(
    home: Path,
    refs: list[str],
    log_dir: Path,
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = 0,
    wait_ready: bool = True,
    ready_timeout: float = START_TIMEOUT_S,
    client_options: dict[str, Any] | None = None,
    grpc: bool = False,
) -> Server:
    """Start `shipyard serve REFS --port PORT ARGS` and wait for its announcement (and /readyz,
    for up to `ready_timeout` seconds, unless `wait_ready` is false). `client_options` are
    httpx.Client arguments for every `server.client()`, the readiness checks' included.

    `grpc`: serve gRPC too, on a port found free (`server.grpc_port`). Another process (an xdist
    worker's server, say) may bind that port between the probe and the server's own bind: the
    server then exits saying it cannot listen, and starts again on another port (GRPC_TRIES starts
    in all)."""
    tries, attempt = (GRPC_TRIES if grpc else 1), 1
    while True:
        grpc_port = free_port() if grpc else None
        extra = [] if grpc_port is None else ["--grpc-port", str(grpc_port)]
        try:
            server = _launch(
                serve_command(refs, port, [*(args or []), *extra]),
                home,
                log_dir,
                env,
                wait_ready,
                ready_timeout,
                client_options,
            )
        except pytest.fail.Exception as exc:
            said = str(exc)  # the CLI's check before it starts, or the gRPC server's own bind
            if attempt < tries and "cannot listen" in said and f":{grpc_port}" in said:
                attempt += 1
                continue
            raise
        server.grpc_port = grpc_port
        return server


def _launch(
    command: list[str],
    home: Path,
    log_dir: Path,
    env: dict[str, str] | None,
    wait_ready: bool,
    ready_timeout: float,
    client_options: dict[str, Any] | None,
) -> Server:
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "stdout.txt").open("wb") as out, (log_dir / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=server_env(home, **(env or {})))
    server = Server(proc, "", log_dir, client_options or {})
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.url:
        first = server.stdout().split("\n", 1)
        if len(first) == 2:  # a whole first line
            assert first[0].startswith("shipyard: serving "), first[0]
            server.url = first[0].split(" on ", 1)[1].split()[0]
        elif proc.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"`{' '.join(command)}` announced no address; stderr:\n{server.stderr()}")
        else:
            time.sleep(0.02)
    if wait_ready:
        try:
            server.wait_until(lambda c: c.get("/readyz").status_code == 200, ready_timeout)
        except BaseException:
            server.kill()
            raise
    return server


@contextmanager
def running(home: Path, refs: list[str], log_dir: Path, **kwargs: Any) -> Iterator[Server]:
    """A server for the duration of the block; it must exit 0 on SIGTERM afterwards."""
    server = launch(home, refs, log_dir, **kwargs)
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"exit code {code} after SIGTERM; stderr:\n{server.stderr()}"


def run_to_exit(
    home: Path,
    refs: list[str],
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = 0,
    timeout: float = REFUSAL_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """`shipyard serve REFS --port PORT ARGS` for a server that must refuse to start: its exit code
    and output once it exits (it fails the test by timing out if it serves instead)."""
    return subprocess.run(
        serve_command(refs, port, args),
        env=server_env(home, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

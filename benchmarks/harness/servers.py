"""Server processes under test: start on a free loopback port, wait until ready, stop cleanly."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from harness.procfs import cmdline, descendants, listening_sockets

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


HELPERS = ("shipyard.monitor.log_writer",)  # a server's processes that serve no requests


@dataclass
class Server:
    label: str
    workers: int  # 0 = the raw app
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]
    started: float
    known: dict[int, str] = field(default_factory=dict)  # pid → cmdline of every process seen

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the spawned workers, or the server itself."""
        kids = self._descendants()
        others = (*HELPERS, "resource_tracker")
        workers = [p for p in kids if not any(name in self.known[p] for name in others)]
        return workers or [self.proc.pid]

    def helper_pids(self) -> list[int]:
        """The processes that work for the server without serving: its prediction log writers,
        whose CPU is the server's as much as its workers' own is."""
        return [p for p in self._descendants() if any(name in self.known[p] for name in HELPERS)]

    def _descendants(self) -> list[int]:
        kids = descendants(self.proc.pid)
        for pid in [self.proc.pid, *kids]:
            self.known.setdefault(pid, cmdline(pid))
        return kids

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start_shipyard(
    label: str,
    model: str,
    flags: list[str],
    home: Path,
    folder: Path,
    env: dict[str, str] | None = None,
    nofile: int | None = None,
) -> Server:
    """`shipyard serve MODEL FLAGS` on a free loopback port, with a registry at `home`."""
    port = free_port()
    exe = Path(sys.executable).with_name("shipyard")
    if not exe.exists():
        exe = Path(shutil.which("shipyard") or "shipyard")
    cmd = [str(exe), "serve", model, "--host", HOST, "--port", str(port), *flags]
    workers = int(flags[flags.index("--workers") + 1]) if "--workers" in flags else 1
    return launch(label, cmd, workers, port, home, folder, env, nofile)


def launch(
    label: str,
    cmd: list[str],
    workers: int,
    port: int,
    home: Path,
    folder: Path,
    env: dict[str, str] | None = None,
    nofile: int | None = None,
) -> Server:
    """Start `cmd` with its output in FOLDER/LABEL.log; SHIPYARD_* of this shell are dropped.
    `nofile`: the server's soft limit on open files (e.g. the usual default 1024), whatever this
    process's limit is."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    environ |= {"SHIPYARD_HOME": str(home), "SHIPYARD_SERVE__GRPC_PORT": "0", **(env or {})}
    if nofile is not None:  # the shell's ulimit, then exec: the server keeps the pid
        cmd = ["sh", "-c", f'ulimit -Sn {int(nofile)} && exec "$@"', "sh", *cmd]
    log_path = folder / f"{label}.log"
    with log_path.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
        )
    return Server(label, workers, port, log_path, proc, started)


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes] | None:
    """One request on a fresh connection: (status, body), or None if nothing answered."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        sent = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=sent | (headers or {}))
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_ready(server: Server) -> float:
    """Seconds from process start to ready. With several workers, a ready answer may come from
    one worker while another is still loading (or not yet listening), so readiness needs every
    worker's socket listening and 16 fresh connections in a row (hashed across the workers by
    SO_REUSEPORT) answered 200; the time is that of the first answer of the streak."""
    need = 16 if server.workers > 1 else 1
    streak, first_ok = 0, 0.0
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.label} exited with {server.proc.returncode} before it was ready:\n"
                f"{server.log_tail()}"
            )
        now = time.perf_counter()
        if now - server.started > READY_TIMEOUT_S:
            raise TimeoutError(
                f"{server.label} not ready after {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}"
            )
        answer = http_call(server.port, "GET", "/readyz")
        if (
            answer is not None
            and answer[0] == 200
            and listening_sockets(server.port) >= max(server.workers, 1)
        ):
            if streak == 0:
                first_ok = now
            streak += 1
            if streak >= need:
                return first_ok - server.started
        else:
            streak = 0
            time.sleep(0.005)


def check_announcement(server: Server) -> str:
    """`shipyard serve` must print `shipyard: serving … on http://HOST:PORT` first."""
    if server.workers == 0:
        return ""
    lines = server.log_path.read_text(errors="replace").splitlines()
    first = lines[0] if lines else ""
    match = re.match(r"shipyard: serving .* on http://([^\s:/]+):(\d+)", first)
    if match is None:
        return f"first line is not the announcement: {first!r}"
    if (match[1], int(match[2])) != (HOST, server.port):
        return f"announced {match[1]}:{match[2]}, asked for {HOST}:{server.port}"
    return ""


def stop_server(server: Server) -> int | None:
    """SIGTERM, then SIGKILL after a grace period; also kills workers left behind. Exit code."""
    with contextlib.suppress(Exception):
        server.worker_pids()  # remember the children before the parent can go
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log(f"  {server.label}: still running {STOP_GRACE_S:.0f} s after SIGTERM; killing it")
            server.proc.kill()
            server.proc.wait()
    for pid, cmd in server.known.items():  # orphaned workers: same pid *and* same command line
        if pid != server.proc.pid and cmd and cmdline(pid) == cmd:
            deadline = time.perf_counter() + 5
            while cmdline(pid) == cmd and time.perf_counter() < deadline:
                time.sleep(0.05)
            if cmdline(pid) == cmd:
                log(f"  {server.label}: worker {pid} outlived its parent; killing it")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
    return server.proc.returncode


def run_main(main: Callable[[], int]) -> NoReturn:
    """A benchmark's entry point: exit with `main()`'s code, or on Ctrl-C (SIGTERM too, with
    `stop_on_sigterm`) with 130 and one line, once `main`'s own cleanup has stopped its servers."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log(f"{Path(sys.argv[0]).name}: interrupted; every server it started has been stopped")
        sys.exit(130)


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every server started is stopped and the folder removed."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)

"""Supervising worker processes: replace one that dies, give up on one that cannot start.

A worker that dies while the server runs (SIGKILL, out of memory, a native crash) is replaced
after a back-off that doubles from 0.5 s to 30 s and starts over once a worker has served for a
while. A worker that dies before it could serve, several times in a row, would only die again:
the server then stops with one line saying why instead of restarting it forever.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from shipyard.errors import ShipyardError

log = logging.getLogger(__name__)

READY = b"ready"  # what a worker sends once it serves; b"failed:" + why, when it cannot start
_FAILED = b"failed:"
_CLEAN_STOP = (0, -signal.SIGTERM, -signal.SIGINT)


@dataclass
class RestartPolicy:
    """When to start a replacement for one worker that died, and when to stop trying."""

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    stable_after_s: float = 30.0  # serving this long makes the next death count as a first one
    max_start_failures: int = 5  # deaths in a row before serving, then the server stops
    failures: int = 0
    start_failures: int = 0

    def after_death(self, served_s: float | None) -> float | None:
        """Seconds to wait before replacing a worker that served `served_s` seconds (None: it died
        before it could serve); None when it has failed to start too often to try again."""
        if served_s is None:
            self.start_failures += 1
            if self.start_failures >= self.max_start_failures:
                return None
        else:
            self.start_failures = 0
            if served_s >= self.stable_after_s:
                self.failures = 0
        self.failures += 1
        return min(self.first_delay_s * 2.0 ** min(self.failures - 1, 32), self.max_delay_s)


def report_ready(status: Connection) -> None:
    """In a worker: tell the supervisor that this worker serves."""
    status.send_bytes(READY)


def report_failure(status: Connection, why: str) -> None:
    """In a worker that cannot start: tell the supervisor why, for its one line."""
    with contextlib.suppress(OSError):
        status.send_bytes(_FAILED + why.encode(errors="replace"))


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


@dataclass
class _Slot:
    """One of the N workers, across its replacements."""

    number: int
    policy: RestartPolicy
    process: BaseProcess | None = None
    status: Connection | None = None  # the worker's reports: READY, or why it failed
    ready_at: float | None = None
    reason: str | None = None
    due: float | None = None  # when to start a replacement
    generation: int = 0
    signalled: bool = False
    killed: bool = False  # it outlived the stop timeout


@dataclass
class Supervisor:
    """Runs `count` workers, `target(*args, number, status)` each, until a signal or a failure."""

    count: int
    target: Callable[..., None]
    args: tuple[Any, ...]
    on_exit: Callable[[int], None] = lambda pid: None  # called with the pid of every worker that ended
    policy: Callable[[], RestartPolicy] = RestartPolicy
    # How long workers may drain after SIGTERM before they are killed (None: as long as they take):
    # a worker hung in its shutdown (a stuck thread, a model call that never returns) must not
    # keep the whole server from stopping, nor a deployment from rolling on.
    stop_timeout_s: float | None = None
    _kill_at: float | None = None  # when the workers still draining get SIGKILL (once)
    _slots: list[_Slot] = field(default_factory=list)
    _stop_requested: bool = False
    _stopping: bool = False
    _failure: str | None = None
    _stop_failures: list[str] = field(default_factory=list)

    def run(self, started: Callable[[], None]) -> None:
        """Start the workers, call `started`, and supervise them until SIGTERM/SIGINT (forwarded as
        SIGTERM, then waits for them to drain); raises ShipyardError if the server stops because of
        a failure."""
        context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(number, self.policy()) for number in range(1, self.count + 1)]
        with self._stop_signals() as wake:
            for slot in self._slots:
                self._start(context, slot)
            started()
            while self._step(context, wake):
                pass
        if self._failure is not None:
            raise ShipyardError(self._failure)
        if self._stop_failures:
            raise ShipyardError(
                f"{len(self._stop_failures)} of {self.count} workers failed while stopping "
                f"({'; '.join(self._stop_failures)})"
            )

    def pids(self) -> list[int]:
        """The pids of the workers alive now."""
        return [
            pid
            for slot in self._slots
            if slot.process is not None and slot.process.is_alive() and (pid := slot.process.pid) is not None
        ]

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[socket.socket]:
        """Handlers that only note the request and wake the loop, which does the work: a handler
        runs between any two lines, even halfway through starting a replacement."""
        wake, waker = socket.socketpair()
        waker.setblocking(False)

        def request_stop(signum: int, frame: Any) -> None:
            self._stop_requested = True
            with contextlib.suppress(OSError):
                waker.send(b"\0")

        previous = {signum: signal.signal(signum, request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield wake
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            wake.close()
            waker.close()

    def _step(self, context: Any, wake: socket.socket) -> bool:
        """Start what is due, wait for the next event and handle it; False once all have ended."""
        if self._stop_requested:
            self._stopping = True
        if self._stopping:
            self._stop_all()
        else:
            now = time.monotonic()
            for slot in self._slots:
                if slot.process is None and slot.due is not None and slot.due <= now:
                    self._start(context, slot)
        live = [slot for slot in self._slots if slot.process is not None]
        if not live and self._stopping:
            return False
        dues = [slot.due for slot in self._slots if slot.due is not None]
        if self._kill_at is not None:
            dues.append(self._kill_at)
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
        waitables: list[Any] = [wake]
        for slot in live:
            assert slot.process is not None
            waitables.append(slot.process.sentinel)
            if slot.status is not None:
                waitables.append(slot.status)
        ready = wait(waitables, timeout)
        if wake in ready:
            with contextlib.suppress(OSError):
                wake.recv(64)
        for slot in live:
            assert slot.process is not None
            if slot.status is not None and slot.status in ready:
                self._read_status(slot)
            if slot.process.sentinel in ready:
                self._reap(slot)
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            self._kill_all()
        return True

    def _start(self, context: Any, slot: _Slot) -> None:
        status, writer = context.Pipe(duplex=False)
        process = context.Process(
            target=self.target,
            args=(*self.args, slot.number, writer),
            name=f"shipyard-worker-{slot.number}",
        )
        process.start()
        writer.close()  # the worker holds the only writer: its death ends the pipe
        slot.process, slot.status = process, status
        slot.ready_at = slot.reason = slot.due = None
        slot.signalled = False
        slot.generation += 1

    def _read_status(self, slot: _Slot) -> None:
        status = slot.status
        while status is not None:
            try:
                if not status.poll():
                    return
                message = status.recv_bytes()
            except (EOFError, OSError):
                status.close()
                slot.status = status = None
                return
            if message == READY:
                slot.ready_at = time.monotonic()
                if slot.generation > 1:
                    log.info("worker %d (pid %s) is serving again", slot.number, _pid(slot))
            elif message.startswith(_FAILED):
                slot.reason = message[len(_FAILED) :].decode(errors="replace")

    def _reap(self, slot: _Slot) -> None:
        process = slot.process
        assert process is not None
        process.join()
        self._read_status(slot)  # what it said before it died
        if slot.status is not None:
            slot.status.close()
        slot.process = slot.status = None
        if process.pid is not None:
            self.on_exit(process.pid)
        code = process.exitcode
        who = f"worker {slot.number} (pid {process.pid}) {describe_exit(code)}"
        why = f" ({slot.reason})" if slot.reason else ""
        if self._stopping:
            if slot.killed:
                late = f"did not stop within {self.stop_timeout_s:g} s of SIGTERM and was killed"
                self._stop_failures.append(f"worker {slot.number} {late}")
            elif code not in _CLEAN_STOP:
                self._stop_failures.append(f"worker {slot.number} {describe_exit(code)}{why}")
            return
        served = None if slot.ready_at is None else time.monotonic() - slot.ready_at
        delay = slot.policy.after_death(served)
        if delay is None:
            self._failure = (
                f"{who} before it could serve{why}, {slot.policy.start_failures} times in a row; "
                "stopping the server"
            )
            self._stopping = True
            return
        log.warning("%s%s; starting a replacement in %g s", who, why, delay)
        slot.due = time.monotonic() + delay

    def _stop_all(self) -> None:
        killed = any(slot.killed for slot in self._slots)
        if self._kill_at is None and self.stop_timeout_s is not None and not killed:
            self._kill_at = time.monotonic() + self.stop_timeout_s
        for slot in self._slots:
            slot.due = None
            if slot.process is not None and not slot.signalled and slot.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGTERM)
                slot.signalled = True

    def _kill_all(self) -> None:
        """Kill the workers still draining past the stop timeout (reaped as they die)."""
        for slot in self._slots:
            if slot.process is not None and not slot.killed and slot.process.pid is not None:
                log.error(
                    "worker %d (pid %s) did not stop within %g s of SIGTERM; killing it",
                    slot.number,
                    slot.process.pid,
                    self.stop_timeout_s,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGKILL)
                slot.killed = True
        self._kill_at = None


def _pid(slot: _Slot) -> int | None:
    return None if slot.process is None else slot.process.pid

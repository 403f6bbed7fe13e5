"""The supervisor of `--workers`: back-off between replacements, when to give up, a worker that
will not stop, and a worker told to stop while it starts."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from shipyard.errors import ShipyardError
from shipyard.serve.workers import RestartPolicy, Supervisor, describe_exit, report_ready


def test_replacements_back_off_doubling_to_a_cap() -> None:
    policy = RestartPolicy()
    delays = [policy.after_death(served_s=1.0) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_worker_that_served_a_while_starts_the_back_off_over() -> None:
    policy = RestartPolicy(stable_after_s=30.0)
    assert [policy.after_death(served_s=1.0) for _ in range(3)] == [0.5, 1.0, 2.0]
    assert policy.after_death(served_s=30.0) == 0.5
    assert policy.after_death(served_s=29.0) == 1.0


def test_it_gives_up_on_a_worker_that_dies_before_serving_too_often_in_a_row() -> None:
    policy = RestartPolicy(max_start_failures=3)
    assert policy.after_death(served_s=None) == 0.5
    assert policy.after_death(served_s=None) == 1.0
    assert policy.after_death(served_s=0.1) == 2.0  # it served: the count of failed starts restarts
    assert policy.after_death(served_s=None) == 4.0
    assert policy.after_death(served_s=None) == 8.0
    assert policy.after_death(served_s=None) is None
    assert policy.start_failures == 3


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(1) == "exited with 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by signal 9 (SIGKILL)"
    assert describe_exit(-signal.SIGSEGV) == "was killed by signal 11 (SIGSEGV)"


def _hangs_on_stop(number: int, status: Connection) -> None:
    """A worker whose shutdown never ends: it ignores SIGTERM, says it serves, then asks the
    supervisor (its parent, the test) to stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    report_ready(status)
    os.kill(os.getppid(), signal.SIGTERM)
    threading.Event().wait()


def test_a_worker_that_does_not_stop_is_killed_once_the_stop_timeout_passes() -> None:
    supervisor = Supervisor(1, _hangs_on_stop, (), stop_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ShipyardError, match=r"worker 1 did not stop within 0\.5 s of SIGTERM and was killed"):
        supervisor.run(started=lambda: None)
    assert time.monotonic() - started < 60  # it did not wait for the worker without end
    assert supervisor.pids() == []


def _stopped_before_uvicorn_takes_over(home: str) -> None:
    """A worker's server whose SIGTERM comes before uvicorn has taken the signals over: as a
    supervisor's stop does when a worker is still starting."""
    import uvicorn

    from shipyard.serve.server import ServeSpec, _serve_on, bind_socket
    from shipyard.settings import Settings

    serve = uvicorn.Server.serve

    async def signalled_first(self: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
        signal.raise_signal(signal.SIGTERM)  # handled at once, by the handler _serve_on installed
        await serve(self, sockets)

    uvicorn.Server.serve = signalled_first  # type: ignore[method-assign]
    settings = Settings.load(home=Path(home), serve={"grpc_port": 0, "port": 0})
    _serve_on(ServeSpec(settings, []), bind_socket("127.0.0.1", 0, reuse_port=False))


def test_a_sigterm_that_comes_while_a_worker_starts_stops_it(tmp_path: Path) -> None:
    child = multiprocessing.get_context("spawn").Process(
        target=_stopped_before_uvicorn_takes_over, args=(str(tmp_path),)
    )
    child.start()
    child.join(30)  # with the signal lost, it served on until killed here
    stuck = child.is_alive()
    if stuck:
        child.kill()
        child.join()
    assert not stuck, "the server went on serving after SIGTERM"
    assert child.exitcode == 0

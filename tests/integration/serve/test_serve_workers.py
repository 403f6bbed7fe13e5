"""`shipyard serve --workers N` as a process supervisor: a worker that dies is replaced while the
others keep answering, and a worker that cannot start stops the server with one line."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_support import ServeModels

from prometheus_text import metric_sum
from servers import Server, launch, run_to_exit

EVENT_TIMEOUT_S = 60.0
GIVE_UP_TIMEOUT_S = 180.0  # five failed starts of two workers, with their back-off, on a busy host
CLIENTS = 4
ROW = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def worker_pids(parent: int) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    pids = []
    for pid in children:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except FileNotFoundError:  # it ended between the two reads
            pass
    return pids


def per_worker(text: str, name: str) -> dict[str, float]:
    """Metric `name` of a /metrics page by its `worker` label."""
    return {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def wait_for(condition: Callable[[], bool], what: str, server: Server) -> None:
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while not condition():
        if server.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {EVENT_TIMEOUT_S}s; stderr:\n{server.stderr()}")
        time.sleep(0.02)


def stderr_line(server: Server, pattern: str) -> re.Match[str]:
    """The first stderr line matching `pattern`, waiting for the server to write it."""
    found: list[re.Match[str]] = []

    def seen() -> bool:
        found.extend(m for line in server.stderr().splitlines() if (m := re.search(pattern, line)))
        return bool(found)

    wait_for(seen, f"a stderr line matching {pattern!r}", server)
    return found[0]


class Traffic:
    """Clients sending V2 requests in a loop over keep-alive connections, counting the outcomes."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.ok = 0
        self.failed = 0  # connections that broke: a request in flight on a worker that died
        self.statuses: list[int] = []  # any answer but 200
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _send(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            while not self._stop.is_set():
                try:
                    status = client.post("/v2/models/iris-onnx/infer", json=ROW).status_code
                except httpx.TransportError:
                    with self._lock:
                        self.failed += 1
                    continue
                with self._lock:
                    if status == 200:
                        self.ok += 1
                    else:
                        self.statuses.append(status)


def test_a_killed_worker_is_replaced_while_the_other_keeps_answering(
    serve_models: ServeModels, tmp_path: Path
) -> None:
    server = launch(serve_models.home, ["iris-onnx"], tmp_path, args=["--workers", "2"])
    try:
        for worker in (1, 2):  # each has loaded the model, so each listens
            stderr_line(server, rf" worker={worker} shipyard\..*: loaded iris-onnx:1 ")
        before = worker_pids(server.proc.pid)
        assert len(before) == 2, (before, server.stderr())
        victim = before[0]

        with Traffic(server.url, CLIENTS) as traffic:
            wait_for(lambda: traffic.ok >= 20, "answers before the kill", server)
            with server.client() as client:
                cpu_before = per_worker(client.get("/metrics").text, "shipyard_process_cpu_seconds_total")
            killed_at = time.time()
            os.kill(victim, signal.SIGKILL)
            died = stderr_line(
                server,
                rf"worker (\d) \(pid {victim}\) was killed by signal 9 \(SIGKILL\); "
                r"starting a replacement in 0\.5 s$",
            )
            back = stderr_line(server, rf"worker {died[1]} \(pid (\d+)\) is serving again$")
            replacement = int(back[1])
            now = worker_pids(server.proc.pid)
            assert replacement not in before and replacement in now, (before, now, server.stderr())
            answered = traffic.ok
            wait_for(lambda: traffic.ok >= answered + 20, "answers after the replacement", server)
        # Only requests that reached the killed worker can fail: the one in flight, and a reconnect
        # the kernel hashed to its listening socket before that socket closed (seen in CI: 6 of 4
        # clients). At most two per client; every other request is answered.
        assert traffic.failed <= 2 * CLIENTS, (traffic.failed, traffic.ok, server.stderr())
        assert traffic.statuses == [], (traffic.statuses, server.stderr())

        # The dead worker's gauges are gone: two live workers, one model each.
        with server.client() as client:
            text = client.get("/metrics").text
        assert metric_sum(text, "shipyard_server_loaded_models") == 2, text
        # Resources are per worker number, not per pid: still one series per worker, the replaced
        # one's from the new process alone (a dead worker's value still added would double it),
        # while its CPU counter keeps the time the dead worker used.
        started = per_worker(text, "shipyard_process_start_time_seconds")
        assert set(started) == {"1", "2"}, text
        assert killed_at < started[died[1]] < time.time(), (killed_at, started)
        assert set(per_worker(text, "shipyard_process_resident_memory_bytes")) == {"1", "2"}
        assert per_worker(text, "shipyard_process_cpu_seconds_total")[died[1]] >= cpu_before[died[1]]
        code = server.stop()
    except BaseException:
        server.kill()
        raise
    assert code == 0, server.stderr()


def test_a_worker_that_cannot_start_stops_the_server_with_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # A registry database the workers cannot open (--wait: the parent does not open it).
    (home / "registry.db").write_bytes(b"this is not an SQLite database\n" * 64)
    done = run_to_exit(home, ["iris"], args=["--wait", "--workers", "2"], timeout=GIVE_UP_TIMEOUT_S)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [done.stderr.strip().splitlines()[-1]], done.stderr
    assert re.fullmatch(
        r"error: worker \d \(pid \d+\) exited with 1 before it could serve "
        r"\(DatabaseError: .*file is not a database\), 5 times in a row; stopping the server",
        errors[0],
    ), errors[0]
    # Each failed start before the last was one line naming the worker, why, and the back-off.
    assert re.search(
        r"worker \d \(pid \d+\) exited with 1 \(DatabaseError: .*\); starting a replacement in 1 s$",
        done.stderr,
        re.MULTILINE,
    ), done.stderr

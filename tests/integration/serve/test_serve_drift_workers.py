"""Drift on a real `shipyard serve --workers 2`: traffic spread over both workers is one window,
in the drift route, `shipyard drift --url` and /metrics, whichever worker answers; when a worker
is killed its rows leave the window and no series is left behind or counted twice."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve_workers import stderr_line, worker_pids

from servers import Server, launch
from shipyard.cli.main import main
from shipyard.monitor.profile import build_profile
from shipyard.registry import Registry
from shipyard.settings import Settings

WAIT_S = 60.0
SHIFT = np.array([0.0, 0.0, 2.5, 1.0], dtype=np.float32)  # petals grow: two features of four move
# Workers share their windows every 0.1 s (2 s by default); /metrics recomputes on every scrape and
# exports a window from 5 rows (30 by default), as what one worker served may be fewer.
ENV = {
    "SHIPYARD_DRIFT__SHARE_S": "0.1",
    "SHIPYARD_DRIFT__METRICS_REFRESH_S": "0",
    "SHIPYARD_DRIFT__MIN_ROWS": "5",
}


def drift(server: Server) -> dict[str, Any]:
    """The drift route, on a connection of its own: either worker may answer."""
    with server.client(headers={"Connection": "close"}) as client:
        response = client.get("/v2/models/iris-onnx/drift")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def window_rows(server: Server) -> list[float]:
    """`shipyard_drift_window_rows` of iris-onnx in one scrape: one value per series."""
    with server.client(headers={"Connection": "close"}) as client:
        text = client.get("/metrics").text
    return [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shipyard_drift_window_rows" and sample.labels["model"] == "iris-onnx"
    ]


def until(condition: Callable[[], bool], what: str, server: Server) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if server.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {WAIT_S}s; stderr:\n{server.stderr()}")
        time.sleep(0.05)


def test_two_workers_traffic_is_one_drift_window(
    tmp_path: Path,
    onnx_path: Path,
    iris: tuple[np.ndarray, np.ndarray],
    capsys: pytest.CaptureFixture[str],
) -> None:
    x = iris[0]
    home = tmp_path / "home"
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("iris-onnx", onnx_path, data_profile=lambda s: build_profile({"X": x}, s).to_dict())
    rng = np.random.default_rng(4)
    server = launch(home, ["iris-onnx"], tmp_path / "log", args=["--workers", "2"], env=ENV)
    try:
        # Requests of 5 shifted rows, a connection each, until both workers have served some.
        sent = 0
        seen: dict[str, int] = {}

        def both_workers_merged() -> bool:
            nonlocal sent, seen
            for _ in range(4):
                rows = (x[rng.integers(0, len(x), 5)] + SHIFT).astype(np.float32)
                tensor = {"name": "X", "shape": [5, 4], "datatype": "FP32", "data": rows.ravel().tolist()}
                with server.client(headers={"Connection": "close"}) as client:
                    answer = client.post("/v2/models/iris-onnx/infer", json={"inputs": [tensor]})
                assert answer.status_code == 200, answer.text
                sent += 5
            seen = drift(server)["window"].get("workers", {})
            return len(seen) == 2

        until(both_workers_merged, "traffic on both workers", server)
        # Whichever worker answers, once each has shared its latest rows: every row, once.
        until(lambda: drift(server)["rows"] == sent, f"all {sent} rows in the window", server)
        for _ in range(6):
            body = drift(server)
            assert body["rows"] == sent and sum(body["window"]["workers"].values()) == sent
            assert (
                set(body["window"]["workers"]) == {"1", "2"} and min(body["window"]["workers"].values()) > 0
            )
            assert body["detected"] is True
            assert {"X[2]", "X[3]"} <= {f["name"] for f in body["features"] if f["drifted"]}
            assert window_rows(server) == [sent]  # one series, all the rows: never a sum over workers

        # `shipyard drift --url` gives the same one verdict.
        assert main(["drift", "iris-onnx", "--url", server.url, "--json"]) == 0
        command = json.loads(capsys.readouterr().out)
        assert command["rows"] == sent and command["detected"] is True

        # A worker killed: its rows leave the window with it; its replacement shares no stale ones.
        shares = drift(server)["window"]["workers"]
        victim = worker_pids(server.proc.pid)[0]
        os.kill(victim, signal.SIGKILL)
        stderr_line(server, rf"worker (\d) \(pid {victim}\) was killed by signal 9")
        until(
            lambda: len(drift(server)["window"].get("workers", {})) == 1,
            "the killed worker's rows gone",
            server,
        )
        stderr_line(server, r"worker \d \(pid \d+\) is serving again")
        (survivor,) = drift(server)["window"]["workers"]
        for _ in range(6):
            body = drift(server)
            assert body["window"]["workers"] == {survivor: shares[survivor]}
            assert body["rows"] == shares[survivor]
            assert window_rows(server) == [shares[survivor]]
    finally:
        code = server.stop()
    assert code == 0, server.stderr()

"""`shipyard serve` and `shipyard ps` as a user runs them: unknown references, --wait, the access
log and worker ids on log lines (test_serve_workers.py: workers that die or cannot start)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from serve_support import ServeModels, push_file

from servers import SHIPYARD, Server, free_port, launch, run_to_exit, server_env
from shipyard.cli.serve import _served_models
from shipyard.registry import Registry
from shipyard.settings import Settings

LINE_TIMEOUT_S = 60.0


def shipyard(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SHIPYARD), *args],
        env=server_env(home, COLUMNS="200", **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert done.stdout == ""
    return lines[0]


def wait_for_line(server: Server, wanted: Callable[[str], bool], what: str) -> str:
    """The first stderr line `wanted` accepts, read as the server writes them."""
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while True:
        for line in server.stderr().splitlines():
            if wanted(line):
                return line
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"no {what} on stderr; stderr:\n{server.stderr()}")
        time.sleep(0.02)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("ref", ["nope", "iris:99", "iris@staging"])
def test_an_unknown_reference_fails_before_binding(serve_models: ServeModels, ref: str) -> None:
    port = free_port()
    done = run_to_exit(serve_models.home, ["iris-onnx", ref], port=port, env={"COLUMNS": "200"})
    line = one_line_error(done, 3)
    assert line.startswith(f"error: cannot serve {ref}: ")
    assert "`shipyard list" in line and "--wait" in line


def test_wait_serves_a_reference_once_it_appears(serve_models: ServeModels, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"SHIPYARD_SERVE__POLL_INTERVAL_S": "0.05"}
    args = ["--wait", "--max-batch-size", "3"]
    server = launch(home, ["late"], tmp_path / "log", args=args, env=env, wait_ready=False)
    try:
        server.wait_until(lambda c: c.get("/healthz").status_code == 200)
        with server.client() as client:
            assert client.get("/readyz").status_code == 503
        listed = shipyard(home, "ps", server.url, "--json")
        assert listed.returncode == 0, listed.stderr
        status = json.loads(listed.stdout)
        assert status["ready"] is False
        assert [m["name"] for m in status["models"]] == ["late"]
        assert "late" in status["models"][0]["reason"]

        with Registry(settings=Settings.load(home=home)) as registry:
            push_file(registry, "late", serve_models.onnx_bytes, tmp_path, serving={"max_batch_size": 8})
        server.wait_until(lambda c: c.get("/readyz").status_code == 200)
        with server.client() as client:
            assert client.get("/v2/models/late/config").json()["max_batch_size"] == 3  # the flag wins
    finally:
        assert server.stop() == 0, server.stderr()


def test_ps_shows_what_a_server_serves(serve_models: ServeModels, tmp_path: Path) -> None:
    env = {"SHIPYARD_SERVE__ACCESS_LOG": "true"}
    server = launch(serve_models.home, ["iris-onnx"], tmp_path, env=env)
    try:
        table = shipyard(serve_models.home, "ps", server.url)
        assert table.returncode == 0, table.stderr
        assert table.stdout.splitlines()[0] == f"{server.url}: ready"
        listed = json.loads(
            shipyard(serve_models.home, "ps", server.url.removeprefix("http://"), "--json").stdout
        )
        assert listed["url"] == server.url and listed["ready"] is True
        assert listed["models"] == [{"name": "iris-onnx", "version": 1, "state": "ready", "reason": ""}]
        assert table.stdout.splitlines()[1:] == ["model\tversion\tstate\treason", "iris-onnx\t1\tready\t-"]

        # The access log has a line for each of ps's requests: client, method, path, status, duration.
        line = wait_for_line(server, lambda s: '"GET /readyz" 200 ' in s, "access log line")
        assert " shipyard.access: 127.0.0.1:" in line and line.endswith("ms")
    finally:
        assert server.stop() == 0, server.stderr()


def test_ps_says_when_nothing_answers(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(shipyard(tmp_path, "ps", url), 6)
    assert line.startswith(f"error: nothing answers at {url} (")


def test_served_models_reads_the_readiness_body() -> None:
    body = {
        "iris": {"state": "ready", "version": 2},
        "iris:1": {"state": "failed", "version": 1, "reason": "x"},
    }
    assert _served_models(body) == [
        {"name": "iris", "version": 2, "state": "ready", "reason": ""},
        {"name": "iris:1", "version": 1, "state": "failed", "reason": "x"},
    ]
    assert _served_models({}) == []


def test_workers_tag_their_log_lines(serve_models: ServeModels, tmp_path: Path) -> None:
    env = {"SHIPYARD_SERVE__ACCESS_LOG": "true", "SHIPYARD_SERVE__LOG_JSON": "true"}
    server = launch(serve_models.home, ["iris-onnx"], tmp_path, args=["--workers", "2"], env=env)
    try:
        for worker in (1, 2):  # each worker loads the model and says so
            wait_for_line(
                server,
                lambda s, w=worker: s.startswith("{") and json.loads(s).get("worker") == w,  # type: ignore[misc]
                f"log line of worker {worker}",
            )
        with server.client() as client:
            assert client.get("/healthz").status_code == 200
        line = wait_for_line(server, lambda s: '"path": "/healthz"' in s, "access log line")
        entry = json.loads(line)
        assert entry["logger"] == "shipyard.access" and entry["worker"] in (1, 2)
        assert (entry["method"], entry["status"]) == ("GET", 200)
        assert entry["client"].startswith("127.0.0.1:") and entry["duration_ms"] >= 0
        code = server.stop()
    except BaseException:
        server.kill()
        raise
    assert code == 0, server.stderr()

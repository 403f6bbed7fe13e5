"""The server's life: command-line options, several workers, hot swap under load, graceful SIGTERM."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from serve_support import ServeModels, iris_onnx_bytes, push_file

from prometheus_text import metric_sum
from servers import Server, launch, run_to_exit
from shipyard.registry import Registry
from shipyard.settings import Settings

ROW = [5.1, 3.5, 1.4, 0.2]
V2_ROW = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


def test_default_bind_and_announcement(server: Server) -> None:
    first = server.stdout().splitlines()[0]
    assert first.startswith(
        "shipyard: serving iris@production, iris:2, iris-onnx, multi on http://127.0.0.1:"
    )
    assert server.url.startswith("http://127.0.0.1:")
    assert f"{server.url}/v2/models/iris/infer" in server.stdout()


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["--port", "PORT"], {}, 4, "cannot listen on 127.0.0.1:PORT: the port is in use"),
        (["--port", "PORT", "--workers", "2"], {}, 4, "the port is in use"),
        (
            ["--host", "10.255.255.1"],
            {"SHIPYARD_SERVE__AUTH": "required"},  # past the no-keys refusal, to the bind
            2,
            "cannot listen on 10.255.255.1:8000: no such address",
        ),
        (["--port", "70000"], {}, 2, "serve.port: Input should be less than or equal to 65535"),
        ([], {"AIP_HTTP_PORT": "eighty"}, 2, "port: Input should be a valid integer"),
        (
            [],
            {"SHIPYARD_SERVE__WORKERS": "0"},
            2,
            "serve.workers: Input should be greater than or equal to 1",
        ),
    ],
    ids=["port-in-use", "port-in-use-workers", "no-such-address", "port-out-of-range", "vertex-port", "env"],
)
def test_a_server_that_cannot_start_says_why_in_one_line(
    serve_models: ServeModels, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = run_to_exit(
            serve_models.home, ["iris-onnx"], args=[a.replace("PORT", port) for a in args], env=env, port=None
        )
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message.replace("PORT", port) in lines[0]
    assert done.stdout == ""  # nothing announced


def test_an_ipv6_address_is_announced_in_brackets(
    serve_models: ServeModels, serve_launcher: Callable[..., Any]
) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 is not configured here")
    with serve_launcher(serve_models.home, ["iris-onnx"], args=["--host", "::1"]) as server:
        assert server.url.startswith("http://[::1]:")
        with server.client() as client:
            assert client.get("/healthz").json() == {"live": True}


def test_two_workers_share_the_port_and_add_up_their_metrics(
    serve_models: ServeModels, serve_launcher: Callable[..., Any]
) -> None:
    args = ["--workers", "2", "--max-batch-size", "4", "--max-batch-delay-ms", "5", "--max-queue", "3"]
    with serve_launcher(serve_models.home, ["iris-onnx"], args=args) as server:
        assert "(2 worker(s))" in server.stdout().splitlines()[0]

        def fresh() -> httpx.Client:  # one connection per request: the kernel spreads them
            return server.client(headers={"Connection": "close"})

        def ready_workers() -> float:
            with fresh() as c:
                return metric_sum(c.get("/metrics").text, "shipyard_server_loaded_models")

        deadline = time.monotonic() + 30
        while ready_workers() < 2:  # /readyz answered for one worker; wait for the other too
            assert time.monotonic() < deadline, "the second worker never loaded its model"
            time.sleep(0.1)

        n = 40
        for _ in range(n):
            with fresh() as c:
                response = c.post("/v2/models/iris-onnx/infer", json=V2_ROW)
                assert response.status_code == 200, response.text
        for _ in range(6):  # whichever worker answers the scrape, the sum is over both
            with fresh() as c:
                text = c.get("/metrics").text
                assert metric_sum(text, "shipyard_server_requests_total") == n
                assert metric_sum(text, "shipyard_server_loaded_models") == 2

        with fresh() as c:
            config = c.get("/v2/models/iris-onnx/config").json()
        assert config["max_batch_size"] == 4  # command-line options reach every worker
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    serve_models: ServeModels, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = launch(serve_models.home, ["iris-onnx"], tmp_path_factory.mktemp("sigterm-log"))
    try:
        rows = [ROW] * 2000
        body = orjson.dumps({"instances": rows})
        half = len(body) // 2
        sent_first_half = threading.Event()
        may_finish = threading.Event()
        outcome: dict[str, Any] = {}

        def slow_body() -> Iterator[bytes]:
            yield body[:half]
            sent_first_half.set()
            assert may_finish.wait(20)
            yield body[half:]

        def client() -> None:
            try:
                with server.client() as c:
                    outcome["response"] = c.post(
                        "/v1/models/iris-onnx:predict",
                        content=slow_body(),
                        headers={"content-type": "application/json"},
                    )
            except Exception as exc:  # reported by the assertions below
                outcome["error"] = exc

        thread = threading.Thread(target=client)
        thread.start()
        assert sent_first_half.wait(20)
        # A request on a later connection answered: the server has accepted the first one and
        # read what arrived on it before, the request's head and half its body.
        with server.client() as other:
            assert other.get("/healthz").status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        server.wait_until(refuses_connections, timeout=20)  # no new connections while draining
        assert server.proc.poll() is None, "the server exited with a request in flight"
        may_finish.set()
        thread.join(30)

        assert "error" not in outcome, outcome.get("error")
        response = outcome["response"]
        assert response.status_code == 200, response.text[:300]
        predictions = response.json()["predictions"]
        assert len(predictions) == len(rows)
        np.testing.assert_allclose(
            predictions[0]["probabilities"], serve_models.iris_v1.predict_proba([ROW])[0], atol=1e-4
        )
        assert server.proc.wait(30) == 0, server.stderr()
    finally:
        may_finish.set()
        server.stop()


def refuses_connections(client: httpx.Client) -> bool:
    """For `Server.wait_until`: true once a new connection gets no answer."""
    try:
        client.get("/healthz", headers={"Connection": "close"})
    except httpx.TransportError:
        return True
    return False


class Load:
    """`clients` threads, each sending V2 requests back to back until stopped; every answer kept."""

    def __init__(self, server: Server, clients: int) -> None:
        self.server = server
        self.stopping = threading.Event()
        self.answers: list[list[tuple[int, str, float]]] = [[] for _ in range(clients)]  # status, version, p0
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(a,)) for a in self.answers]

    def _run(self, mine: list[tuple[int, str, float]]) -> None:
        try:
            with self.server.client(timeout=10) as c:
                while not self.stopping.is_set():
                    response = c.post("/v2/models/swap/infer", json=V2_ROW)
                    if response.status_code != 200:
                        mine.append((response.status_code, "?", -1.0))
                        continue
                    body = response.json()
                    proba = next(o for o in body["outputs"] if o["name"] == "probabilities")["data"][0]
                    mine.append((200, body["model_version"], proba))
        except BaseException as exc:  # a transport error is a failed request too
            self.errors.append(exc)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(20)

    def answered_each(self, count: int) -> bool:
        """Every client has had at least `count` answers."""
        return all(len(mine) >= count for mine in self.answers)

    def latest_versions(self) -> set[str]:
        return {mine[-1][1] for mine in self.answers if mine}

    @property
    def flat(self) -> list[tuple[int, str, float]]:
        return [a for mine in self.answers for a in mine]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail, naming `what`, after a generous `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_hot_swap_under_load_fails_no_request(
    serve_models: ServeModels, serve_launcher: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = tmp_path_factory.mktemp("swap-home")
    files = tmp_path_factory.mktemp("swap-files")
    v2_bytes = iris_onnx_bytes(serve_models.iris_v2, serve_models.x, "v2")
    env = {"SHIPYARD_SERVE__POLL_INTERVAL_S": "0.2"}
    with Registry(settings=Settings.load(home=home)) as registry:
        push_file(registry, "swap", serve_models.onnx_bytes, files, alias="production")
        with serve_launcher(home, ["swap@production"], env=env) as server, Load(server, clients=8) as load:
            wait_for(lambda: load.answered_each(20), "every client is answered by the old version")
            new = push_file(registry, "swap", v2_bytes, files)
            registry.set_alias("swap", "production", new.version)
            wait_for(lambda: "2" in load.latest_versions(), "traffic switches to the new version")
            # The load stays on while the old version drains and unloads.
            with server.client() as c:
                wait_for(lambda: c.get("/v2/models/swap").json()["versions"] == ["2"], "v1 unloads")

    assert not load.errors, load.errors[:3]
    answers = load.flat
    assert len(answers) > 100, "the load was too light to mean anything"
    failed = [a for a in answers if a[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    assert {v for _, v, _ in answers} == {"1", "2"}
    for mine in load.answers:  # per client: once on the new version, never back on the old one
        versions = [v for _, v, _ in mine]
        assert "2" in versions, "a client never reached the new version"
        assert "1" not in versions[versions.index("2") :]
    expected = {
        "1": serve_models.iris_v1.predict_proba([ROW])[0][0],
        "2": serve_models.iris_v2.predict_proba([ROW])[0][0],
    }
    for _, version, proba in answers:  # each answer really came from the version it names
        assert proba == pytest.approx(expected[version], abs=1e-4)

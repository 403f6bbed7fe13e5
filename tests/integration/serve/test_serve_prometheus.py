"""A real Prometheus scraping a real `shipyard serve --workers 2`: the metrics it stores carry the
traffic with the right labels, and the exported alerting rules fire in Prometheus itself.

Prometheus (prometheus_support.py) runs on loopback with a 1 s scrape and evaluation interval and
its own data folder; the tests poll its HTTP API until what they expect is there, up to a
deadline. Without the binary they skip, saying so.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_support import DEADLINE_S, Prometheus, export_rules, needs_prometheus, number
from serve_support import ServeModels
from sklearn.metrics import accuracy_score, f1_score

from prometheus_text import metric_sum
from servers import SHIPYARD, Server, server_env
from shipyard.api import lookup_predictions
from tensorboard_events import read_scalars

pytestmark = needs_prometheus
ROW = [5.1, 3.5, 1.4, 0.2]
V2_ROW = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
REQUESTS = 'shipyard_server_requests_total{model="iris-onnx",version="1",status="200"}'


@pytest.fixture(scope="module")
def scraped(
    serve_models: ServeModels,
    serve_launcher: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, Prometheus]]:
    """`shipyard serve iris-onnx --workers 2`, both workers serving, and a Prometheus scraping it."""
    folder = tmp_path_factory.mktemp("prometheus")
    rules = export_rules(folder)
    with serve_launcher(serve_models.home, ["iris-onnx"], args=["--workers", "2"]) as server:
        with server.client() as client:
            deadline = time.monotonic() + DEADLINE_S
            while metric_sum(client.get("/metrics").text, "shipyard_server_loaded_models") < 2:
                assert time.monotonic() < deadline, "the second worker never loaded its model"
                time.sleep(0.05)
        prometheus = Prometheus(folder, server.host_port, rules)
        try:
            prometheus.ready()
            # A counter's first sample shows no increase: let Prometheus see the series before
            # the tests send what they measure.
            send(server, 1)
            prometheus.until("the first requests scraped", lambda: number(prometheus.query(REQUESTS)) == 2)
            yield server, prometheus
        finally:
            prometheus.stop()


def send(server: Server, count: int) -> None:
    """`count` V2 and `count` V1 requests, one connection each, so both workers get some."""
    for _ in range(count):
        with server.client(headers={"Connection": "close"}) as client:
            assert client.post("/v2/models/iris-onnx/infer", json=V2_ROW).status_code == 200
            assert client.post("/v1/models/iris-onnx:predict", json={"instances": [ROW]}).status_code == 200


def test_prometheus_stores_the_traffic_with_its_labels(scraped: tuple[Server, Prometheus]) -> None:
    server, prometheus = scraped
    assert number(prometheus.query('up{job="shipyard"}')) == 1
    before = {r["metric"]["protocol"]: float(r["value"][1]) for r in prometheus.query(REQUESTS)}
    count = 20
    send(server, count)
    expected = {protocol: seen + count for protocol, seen in before.items()}
    by_protocol = prometheus.until(
        f"{count} more requests of each protocol counted",
        lambda: (
            {r["metric"]["protocol"]: float(r["value"][1]) for r in prometheus.query(REQUESTS)} == expected
            and prometheus.query(REQUESTS)
        ),
    )
    assert set(expected) == {"v1", "v2"}
    for item in by_protocol:  # the vocabulary's labels, and the scrape's own
        assert set(item["metric"]) == {
            "__name__",
            "model",
            "version",
            "protocol",
            "status",
            "job",
            "instance",
        }

    latency = "shipyard_server_request_duration_seconds"
    counted = prometheus.query(f'sum({latency}_count{{model="iris-onnx",status="200"}})')
    assert number(counted) == sum(expected.values())  # one observation per request
    buckets = prometheus.query(f'{latency}_bucket{{model="iris-onnx",protocol="v2",status="200"}}')
    assert {b["metric"]["le"] for b in buckets} >= {"0.001", "0.01", "0.1", "+Inf"}
    p99 = prometheus.series(
        f'histogram_quantile(0.99, sum by (le) (rate({latency}_bucket{{model="iris-onnx"}}[30s])))', 1
    )
    assert 0 < float(p99[0]["value"][1]) < 5

    # Resources: one series per worker number (never per pid), from both workers.
    for name in ("shipyard_process_resident_memory_bytes", "shipyard_process_open_files"):
        series = prometheus.series(name, 2)
        assert {s["metric"]["worker"] for s in series} == {"1", "2"}, series
    memory = {
        s["metric"]["worker"]: float(s["value"][1])
        for s in prometheus.query("shipyard_process_resident_memory_bytes")
    }
    assert all(20e6 < rss < 4e9 for rss in memory.values()), memory
    cpu = prometheus.query("shipyard_process_cpu_seconds_total")
    assert {s["metric"]["worker"] for s in cpu} == {"1", "2"} and number(cpu) > 0
    model_memory = prometheus.query('shipyard_model_resident_memory_bytes{model="iris-onnx",version="1"}')
    assert len(model_memory) == 1 and number(model_memory) > 0  # both workers' estimates, summed
    artifact = prometheus.query('shipyard_model_artifact_bytes{model="iris-onnx",version="1"}')
    assert number(artifact) > 0
    assert number(prometheus.query('shipyard_server_model_ready{model="iris-onnx"}')) == 1


def test_an_exported_alert_fires_in_prometheus(scraped: tuple[Server, Prometheus]) -> None:
    server, prometheus = scraped
    prometheus.until(
        "the rules are loaded", lambda: prometheus.client.get("/api/v1/rules").json()["data"]["groups"]
    )
    send(server, 10)
    firing = prometheus.until(
        "ShipyardHighLatencyP99 firing",
        lambda: "ShipyardHighLatencyP99" in (s := prometheus.alerts("firing")) and s,
    )
    # A healthy server sets off nothing else, though every rule waits only 1 s here.
    assert firing == {"ShipyardHighLatencyP99"}, firing
    body = prometheus.client.get("/api/v1/alerts").json()
    (alert,) = [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == "ShipyardHighLatencyP99"]
    assert alert["labels"]["model"] == "iris-onnx"
    assert alert["annotations"]["summary"].startswith("Model iris-onnx answers in ")


def test_tensorboard_gets_the_latency_prometheus_computes(
    scraped: tuple[Server, Prometheus], tmp_path: Path
) -> None:
    server, prometheus = scraped
    send(server, 5)
    done = subprocess.run(
        [str(SHIPYARD), "monitor", "export", "--tensorboard", str(tmp_path / "run"), "--url", server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=server_env(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"added 4 scalars of {server.url} to the TensorBoard run "), done.stdout
    board = {tag: points[-1][2] for tag, points in read_scalars(tmp_path / "run").items()}
    assert set(board) == {"requests/iris-onnx", *(f"latency/iris-onnx/p{p}" for p in (50, 90, 99))}

    # Prometheus's own histogram_quantile over the same totals (no traffic since) agrees.
    histogram = "shipyard_server_request_duration_seconds"
    prometheus.until(
        "Prometheus holds the same totals",
        lambda: (
            number(prometheus.query(f'sum({histogram}_count{{model="iris-onnx"}})'))
            == board["requests/iris-onnx"]
        ),
    )
    for p in (50, 90, 99):
        expr = f'histogram_quantile({p / 100}, sum by (le) ({histogram}_bucket{{model="iris-onnx"}}))'
        assert board[f"latency/iris-onnx/p{p}"] == pytest.approx(number(prometheus.query(expr)), rel=1e-6), p


def test_prometheus_sees_live_quality_move(
    scraped: tuple[Server, Prometheus], serve_models: ServeModels
) -> None:
    """Feedback posted to either worker moves accuracy and F1 in Prometheus; both stay over the
    alert's floor (0.8), so the alert test's healthy server fires nothing whatever the order. Last
    in the file: the TensorBoard test expects a server without quality series."""
    server, prometheus = scraped
    rows = serve_models.x[::7]  # 22 rows of all three classes: over quality.min_rows (20)
    with server.client(headers={"Connection": "close"}) as client:
        response = client.post(
            "/v1/models/iris-onnx:predict",
            json={"instances": rows.tolist()},
            headers={"X-Request-ID": "pq-all"},
        )
        assert response.status_code == 200, response.text
        predicted = [p["label"] for p in response.json()["predictions"]]
        response = client.post(
            "/v1/models/iris-onnx:predict",
            json={"instances": rows[:1].tolist()},
            headers={"X-Request-ID": "pq-one"},
        )
        assert response.status_code == 200, response.text
    deadline = time.monotonic() + DEADLINE_S
    while len(lookup_predictions(["pq-all", "pq-one"], home=serve_models.home)) < 2:
        assert time.monotonic() < deadline, "the workers never logged the requests"
        time.sleep(0.05)

    def quality(metric: str) -> float | None:
        result = prometheus.query(
            f'shipyard_quality_score{{model="iris-onnx",version="1",metric="{metric}"}}'
        )
        return number(result) if result else None

    def post(payload: dict[str, Any]) -> None:
        with server.client(headers={"Connection": "close"}) as client:
            response = client.post("/v2/models/iris-onnx/feedback", json=payload)
            assert response.status_code == 200, response.text

    post({"request_id": "pq-all", "label": predicted})
    prometheus.until(
        "accuracy 1 in Prometheus", lambda: quality("accuracy") == 1.0 and quality("f1_macro") == 1.0
    )
    wrong = (predicted[0] + 1) % 3
    post({"request_id": "pq-one", "label": wrong})
    truth, answers = [*predicted, wrong], [*predicted, predicted[0]]
    expected = {
        "accuracy": accuracy_score(truth, answers),
        "f1_macro": f1_score(truth, answers, average="macro"),
    }
    assert 0.8 < min(expected.values()) < 1
    prometheus.until(
        f"accuracy and F1 fall to {expected}",
        lambda: all(quality(m) == pytest.approx(v) for m, v in expected.items()),
    )

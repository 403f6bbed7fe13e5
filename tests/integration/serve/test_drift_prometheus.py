"""Drift proven in a real Prometheus: a version pushed with `--reference` is served, answers
in-distribution traffic (no drift), then shifted traffic; Prometheus stores each feature's score
crossing its threshold and the verdict turning, the exported drift alerts fire in Prometheus
itself, and `shipyard drift REF --url` says the same as Prometheus, score for score."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_support import Prometheus, export_rules, needs_prometheus, number

from shipyard.cli.main import main

pytestmark = needs_prometheus
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SHIFT = np.array([0.0, 0.0, 2.5, 1.0])  # petals grow: two features of four move
P_VALUE = 0.05  # a test's p-value under which a feature drifted (the default threshold)
SCORE = 'shipyard_drift_score{model="iris-onnx",version="1"}'
DETECTED = 'shipyard_drift_detected{model="iris-onnx",version="1"}'
ROWS = 'shipyard_drift_window_rows{model="iris-onnx",version="1"}'


def send(http: httpx.Client, rows: np.ndarray) -> None:
    tensor = {"name": "X", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    answer = http.post("/v2/models/iris-onnx/infer", json={"inputs": [tensor]})
    assert answer.status_code == 200, answer.text


def scores(prometheus: Prometheus, expr: str = SCORE) -> dict[str, float]:
    return {r["metric"]["feature"]: float(r["value"][1]) for r in prometheus.query(expr)}


def drift_command(server_url: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """`shipyard drift iris-onnx --url URL --json`, run as the console script runs it."""
    code = main(["drift", "iris-onnx", "--url", server_url, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    body: dict[str, Any] = json.loads(out)
    return body


def agree(body: dict[str, Any], stored: dict[str, float]) -> None:
    """The command's scores are the ones Prometheus stored (the window is the same: no traffic since)."""
    assert {f["name"]: f["method"] for f in body["features"]} == dict.fromkeys(COLUMNS, "ks")
    assert {f["name"]: f["score"] for f in body["features"]} == pytest.approx(stored, rel=1e-9, abs=1e-12)


def test_shifted_inputs_cross_the_drift_threshold_in_prometheus_and_in_shipyard_drift(
    tmp_path: Path,
    onnx_path: Path,
    iris: tuple[np.ndarray, np.ndarray],
    serve_launcher: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    x = iris[0]
    home, reference = tmp_path / "home", tmp_path / "reference.csv"
    with reference.open("w", newline="") as f:
        csv.writer(f).writerows([COLUMNS, *x.tolist()])
    pushed = main(["--home", str(home), "push", "iris-onnx", str(onnx_path), "--reference", str(reference)])
    assert pushed == 0
    capsys.readouterr()
    rules = export_rules(tmp_path, ["--for", "1s"])
    rng = np.random.default_rng(3)
    same = x[rng.integers(0, len(x), 300)].astype(np.float32)  # drawn from the reference itself
    shifted = (x[rng.integers(0, len(x), 600)] + SHIFT).astype(np.float32)

    # Drift recomputed for /metrics at most every second (10 s by default): the test waits less.
    env = {"SHIPYARD_DRIFT__METRICS_REFRESH_S": "1"}
    with serve_launcher(home, ["iris-onnx"], env=env) as server, server.client() as http:
        prometheus = Prometheus(tmp_path, server.host_port, rules)
        try:
            prometheus.ready()
            send(http, same[:150])
            send(http, same[150:])
            prometheus.until("the first window scraped", lambda: number(prometheus.query(ROWS)) == 300)
            stored = scores(prometheus)
            assert set(stored) == set(COLUMNS) and min(stored.values()) >= P_VALUE, stored
            assert number(prometheus.query(DETECTED)) == 0
            assert prometheus.query(f"{SCORE} < {P_VALUE}") == []  # PromQL sees no feature over the line
            body = drift_command(server.url, capsys)
            assert body["rows"] == 300 and body["detected"] is False and body["drifted_features"] == 0
            agree(body, stored)

            for start in range(0, len(shifted), 150):
                send(http, shifted[start : start + 150])
            prometheus.until("the shifted window scraped", lambda: number(prometheus.query(ROWS)) == 900)
            assert number(prometheus.query(DETECTED)) == 1
            crossed = scores(prometheus, f"{SCORE} < {P_VALUE}")
            assert set(crossed) == {"petal_length", "petal_width"}, scores(prometheus)
            stored = scores(prometheus)
            assert min(stored["sepal_length"], stored["sepal_width"]) >= P_VALUE, stored
            body = drift_command(server.url, capsys)
            assert body["rows"] == 900 and body["detected"] is True and body["drifted_features"] == 2
            assert {f["name"] for f in body["features"] if f["drifted"]} == set(crossed)
            agree(body, stored)

            # The alerts `shipyard monitor export` wrote fire on what Prometheus stored.
            expected = {"ShipyardDriftDetected", "ShipyardFeatureDrift"}
            prometheus.until("the drift alerts firing", lambda: expected <= prometheus.alerts("firing"))
            alerts = prometheus.client.get("/api/v1/alerts").json()["data"]["alerts"]
            by_feature = [a for a in alerts if a["labels"]["alertname"] == "ShipyardFeatureDrift"]
            assert {a["labels"]["feature"] for a in by_feature} == set(crossed)
        finally:
            prometheus.stop()

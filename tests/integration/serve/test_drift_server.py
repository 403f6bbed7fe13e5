"""`shipyard drift REF --url` against a real `shipyard serve`: shifted traffic crosses the
threshold in the command's verdict and in the server's /metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.cli.main import main
from shipyard.monitor.profile import build_profile
from shipyard.registry import Registry
from shipyard.settings import Settings


def test_drift_command_reads_a_running_server(
    tmp_path: Path,
    onnx_path: Path,
    iris: tuple[np.ndarray, np.ndarray],
    serve_launcher: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    x = iris[0]
    home = tmp_path / "home"
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push(
            "iris",
            onnx_path,
            alias="production",
            data_profile=lambda signature: build_profile({"X": x}, signature).to_dict(),
        )
    shifted = (x + np.array([2.0, 0.0, 0.0, 0.0])).astype(np.float32)
    body = {
        "inputs": [{"name": "X", "shape": [150, 4], "datatype": "FP32", "data": shifted.ravel().tolist()}]
    }
    with serve_launcher(home, ["iris@production"]) as server, server.client() as http:
        for _ in range(2):
            assert http.post("/v2/models/iris/infer", json=body).status_code == 200
        code = main(["--home", str(home), "drift", "iris@production", "--url", server.url, "--window", "5m"])
        out, err = capsys.readouterr()
        assert code == 0, err
        # a quarter of the features drifted: the input as a whole has not (threshold 0.5)
        assert out.startswith(
            "iris:1: 300 rows (5m) vs reference of 150 rows\nno drift: 1 of 4 features drifted"
        )
        assert "X[0]: ks" in out
        code = main(["drift", "iris", "--url", server.url, "--window", "150", "--json"])
        report = json.loads(capsys.readouterr().out)
        assert code == 0 and report["rows"] == 150 and report["features"][0]["name"] == "X[0]"
        metrics = http.get("/metrics").text
    assert 'shipyard_drift_window_rows{model="iris",version="1"} 300.0' in metrics
    score = next(
        line for line in metrics.splitlines() if line.startswith('shipyard_drift_score{feature="X[0]"')
    )
    assert float(score.rsplit(" ", 1)[1]) < 0.05

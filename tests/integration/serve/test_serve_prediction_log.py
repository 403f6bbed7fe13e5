"""The prediction log of a real `shipyard serve --workers 2`: each worker writes its own segments,
`shipyard logs` reads every worker's entries, and the access log names each request's id."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from servers import launch
from shipyard.api import lookup_predictions
from shipyard.cli.main import main
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_models import tiny_onnx

WAIT_S = 30.0


def test_two_workers_log_every_request_and_shipyard_logs_reads_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    (tmp_path / "iris.onnx").write_bytes(tiny_onnx("iris"))
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("iris", tmp_path / "iris.onnx")
    env = {
        "SHIPYARD_SERVE__ACCESS_LOG": "true",
        "SHIPYARD_SERVE__LOG_JSON": "true",
        "SHIPYARD_PREDICTION_LOG__PAYLOAD_RATE": "1",
    }
    server = launch(home, ["iris"], tmp_path / "log", args=["--workers", "2"], env=env)
    try:
        # The server answers once one worker is ready; the other may join the port a little later.
        # Requests go on, a connection each (the kernel spreads connections over the workers),
        # until both have logged some.
        ids: list[str] = []
        deadline = time.monotonic() + WAIT_S
        with server.client() as client:
            while len({e.worker for e in lookup_predictions(ids, home=home)}) < 2:
                assert time.monotonic() < deadline, f"one worker served all of {len(ids)} requests"
                for _ in range(8):
                    ids.append(f"real-{len(ids)}")
                    response = client.post(
                        "/v1/models/iris:predict",
                        json={"instances": [[5.1, 3.5, 1.4, 0.2]]},
                        headers={"X-Request-ID": ids[-1], "Connection": "close"},
                    )
                    assert response.status_code == 200, response.text
                    assert response.headers["x-request-id"] == ids[-1]
                time.sleep(0.05)
            made_id = client.post("/v1/models/iris:predict", json={"instances": [[1, 2]]}).headers[
                "x-request-id"
            ]
        while len(lookup_predictions([*ids, made_id], home=home)) < len(ids) + 1:  # the writers' next round
            assert time.monotonic() < deadline, "the workers never logged every request"
            time.sleep(0.05)

        assert main(["--home", str(home), "logs", "iris", "--json", "--limit", "100000"]) == 0
        entries = json.loads(capsys.readouterr().out)
        assert {e["request_id"] for e in entries} == {*ids, made_id}
        assert {e["worker"] for e in entries} == {1, 2}  # both workers served and logged
        assert len(list((home / "predictions").glob("*-w1.sqlite"))) == 1
        assert len(list((home / "predictions").glob("*-w2.sqlite"))) == 1
        refused = next(e for e in entries if e["request_id"] == made_id)
        assert refused["status"] == 400 and refused["payload"] is None
        served = next(e for e in entries if e["request_id"] == "real-0")
        assert served["status"] == 200 and served["protocol"] == "v1" and served["version"] == 1
        assert served["payload"]["inputs"]["X"][0] == pytest.approx([5.1, 3.5, 1.4, 0.2])
        assert served["payload"]["outputs"]["probabilities"][0] == pytest.approx([1.02] * 3)
        assert served["summary"]["outputs"]["label"]["values"] == [0]

        access = [json.loads(line) for line in server.stderr().splitlines() if '"shipyard.access"' in line]
        assert {line.get("request_id") for line in access} >= set(ids)
    finally:
        assert server.stop() == 0, server.stderr()

"""Request ids and the prediction log, in-process: every protocol takes `X-Request-ID` (when it is
safe to repeat) or makes one, returns it on success and on error, puts it on the request's log
lines, and logs the inference under it; the log never fails a request."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from app_support import ROW, V2_ROW, Home, Served, serve
from fake_runtime import Controls
from prometheus_client import REGISTRY

from shipyard.monitor.logs import JsonFormatter
from shipyard.monitor.prediction_recorder import PredictionRecorder
from shipyard.monitor.predictions import Entry, PredictionStore

pytestmark = pytest.mark.anyio

MADE = re.compile(r"[0-9a-f]{16}-[0-9a-f]+")  # this process's prefix and a counter
CSV = {"content-type": "text/csv"}
# (protocol, path, body, headers): one successful inference on `m` per protocol.
INFERENCES: list[tuple[str, str, Any, dict[str, str]]] = [
    ("v2", "/v2/models/m/infer", V2_ROW, {}),
    ("v2", "/v2/models/m/versions/1/infer", V2_ROW, {}),
    ("v1", "/v1/models/m:predict", {"instances": [ROW]}, {}),
    ("v1", "/v1/models/m/versions/1:predict", {"instances": [ROW]}, {}),
    ("sagemaker", "/invocations", {"instances": [ROW]}, {}),
    ("sagemaker", "/invocations", ",".join(map(str, ROW)), CSV),
]


@pytest.fixture
async def served(fake: Controls, home: Home) -> AsyncIterator[Served]:
    home.push("m")
    async with serve(home, ["m"]) as served:
        yield served


async def post(client: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    if isinstance(body, str):
        return await client.post(path, content=body, headers=headers)
    return await client.post(path, json=body, headers=headers)


def logged(served: Served, home: Home, *request_ids: str) -> dict[str, Entry]:
    recorder: PredictionRecorder = served.app.state.predictions
    assert recorder.flush(10.0)
    return {e.request_id: e for e in PredictionStore(home.path / "predictions").lookup(request_ids)}


@pytest.mark.parametrize(("protocol", "path", "body", "headers"), INFERENCES)
async def test_every_protocol_returns_and_logs_the_request_id(
    served: Served, home: Home, protocol: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    given = await post(served.client, path, body, {**headers, "X-Request-ID": "client-id_1.2:3"})
    made = await post(served.client, path, body, headers)
    assert given.status_code == made.status_code == 200, (given.text, made.text)
    assert given.headers["x-request-id"] == "client-id_1.2:3"
    assert MADE.fullmatch(made.headers["x-request-id"])
    entries = logged(served, home, "client-id_1.2:3", made.headers["x-request-id"])
    assert len(entries) == 2
    entry = entries["client-id_1.2:3"]
    assert (entry.model, entry.version, entry.protocol, entry.status) == ("m", 1, protocol, 200)
    assert entry.summary["rows"] == 1
    assert entry.summary["inputs"] == {"X": {"shape": [1, 4], "dtype": "float32"}}
    assert entry.summary["outputs"]["label"]["values"] == [1]  # the fake answers its version number
    assert entry.payload is None and entry.latency_ms > 0


async def test_errors_carry_the_request_id_and_failed_inferences_are_logged(
    served: Served, home: Home, fake: Controls
) -> None:
    client = served.client
    cases: list[tuple[str, Any, dict[str, str], int]] = [
        ("/v2/models/nope/infer", V2_ROW, {}, 404),
        ("/v1/models/nope:predict", {"instances": [ROW]}, {}, 404),
        ("/v1/models/m:predict", "{not json", {"content-type": "application/json"}, 400),
        ("/v1/models/m:predict", {"instances": [[1, 2]]}, {}, 400),  # the signature wants 4 columns
        ("/invocations", "1,x", CSV, 400),
        ("/v1/embeddings", {"model": "m", "input": "hi"}, {}, 400),  # OpenAI: not an embedding model
        ("/v2/models/m/versions/7/infer", V2_ROW, {}, 404),
    ]
    for number, (path, body, headers, status) in enumerate(cases):
        response = await post(client, path, body, {**headers, "X-Request-ID": f"err-{number}"})
        assert response.status_code == status, (path, response.text)
        assert response.headers["x-request-id"] == f"err-{number}", path
    fake.fail_predict.add(1)
    failed = await client.post("/v1/models/m:predict", json={"instances": [ROW]})
    assert failed.status_code == 500 and MADE.fullmatch(failed.headers["x-request-id"])
    entries = logged(served, home, "err-3", failed.headers["x-request-id"], "err-0", "err-2")
    # Inferences the dataplane was given are logged, refused or failed; a body it never got is not.
    assert set(entries) == {"err-3", failed.headers["x-request-id"]}
    refused = entries["err-3"]
    assert (refused.status, refused.protocol) == (400, "v1") and "outputs" not in refused.summary
    crashed = entries[failed.headers["x-request-id"]]
    assert crashed.status == 500 and crashed.summary["inputs"]["X"]["shape"] == [1, 4]


async def test_log_lines_about_a_request_carry_its_id(served: Served, fake: Controls) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(None))
    logger = logging.getLogger("shipyard.serve")
    logger.addHandler(handler)
    try:
        fake.fail_predict.add(1)  # the server logs a model's failure, with its detail
        response = await served.client.post(
            "/v2/models/m/infer", json=V2_ROW, headers={"X-Request-ID": "traced-1"}
        )
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(line["request_id"] == "traced-1" and line["level"] == "error" for line in lines), lines


async def test_an_unsafe_request_id_is_replaced_never_echoed(served: Served) -> None:
    for given in ["has spaces", "x" * 129, '<script>"', "semi;colon\\back", "", "ünïcode"]:
        response = await served.client.post(
            "/v1/models/m:predict",
            json={"instances": [ROW]},
            headers=[("X-Request-ID", given.encode("utf-8"))],
        )
        assert response.status_code == 200
        assert MADE.fullmatch(response.headers["x-request-id"]), given


async def test_made_ids_are_unique(served: Served) -> None:
    ids = set()
    for _ in range(20):
        response = await served.client.post("/v1/models/m:predict", json={"instances": [ROW]})
        ids.add(response.headers["x-request-id"])
    assert len(ids) == 20


async def test_an_auth_refusal_carries_the_request_id(fake: Controls, home: Home) -> None:
    home.push("m")
    home.registry.create_key("someone", ["infer:m"])
    async with serve(home, ["m"]) as served:
        response = await served.client.post(
            "/v2/models/m/infer", json=V2_ROW, headers={"X-Request-ID": "no-key"}
        )
    assert response.status_code == 401 and response.headers["x-request-id"] == "no-key"


async def test_an_unwritable_prediction_log_never_fails_a_request(
    fake: Controls, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = home.path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SHIPYARD_PREDICTION_LOG__PATH", str(blocker / "predictions"))
    home.push("unlogged")
    before = REGISTRY.get_sample_value(
        "shipyard_predictionlog_dropped_total", {"model": "unlogged", "reason": "write_failed"}
    )
    async with serve(home, ["unlogged"]) as served:
        for _ in range(3):
            response = await served.client.post("/v1/models/unlogged:predict", json={"instances": [ROW]})
            assert response.status_code == 200, response.text
        assert served.app.state.predictions.flush(10.0)
        metrics = (await served.client.get("/metrics")).text
    after = REGISTRY.get_sample_value(
        "shipyard_predictionlog_dropped_total", {"model": "unlogged", "reason": "write_failed"}
    )
    assert (after or 0) - (before or 0) == 3
    assert 'shipyard_predictionlog_dropped_total{model="unlogged",reason="write_failed"}' in metrics


async def test_with_every_rate_at_zero_there_is_no_prediction_log(
    fake: Controls, home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPYARD_PREDICTION_LOG__SAMPLE_RATE", "0")
    home.push("m")
    async with serve(home, ["m"]) as served:
        response = await served.client.post("/v1/models/m:predict", json={"instances": [ROW]})
        assert response.status_code == 200 and MADE.fullmatch(response.headers["x-request-id"])
        assert served.app.state.predictions is None
    assert not (home.path / "predictions").exists()

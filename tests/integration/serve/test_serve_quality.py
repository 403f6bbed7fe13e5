"""Live quality on a real `shipyard serve --workers 2`: predictions and their feedback spread over
both workers, and whichever worker answers /metrics reports the same accuracy and F1 (scored from
the feedback both share), as `shipyard quality` does, locally and through --url."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_support import ServeModels, iris_onnx_bytes, push_file
from sklearn.metrics import accuracy_score, f1_score

from prometheus_text import metric_sum
from servers import Server
from shipyard.api import lookup_predictions
from shipyard.cli.main import main
from shipyard.registry import Registry
from shipyard.settings import Settings

WAIT_S = 30.0
SCRAPES = 8  # connections of their own: the kernel hands them to either worker


def scores(client: httpx.Client) -> dict[str, float]:
    text = client.get("/metrics", headers={"Connection": "close"}).text
    return {
        sample.labels["metric"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shipyard_quality_score" and sample.labels["model"] == "iris"
    }


def every_scrape(server: Server) -> list[dict[str, float]]:
    with server.client() as client:
        return [scores(client) for _ in range(SCRAPES)]


def post_each(server: Server, items: list[dict[str, Any]]) -> None:
    """One feedback request per item, a connection each, so both workers take some."""
    for item in items:
        with server.client(headers={"Connection": "close"}) as client:
            response = client.post("/v2/models/iris/feedback", json=item)
            assert response.status_code == 200, response.text


def test_two_workers_report_the_same_live_quality(
    serve_models: ServeModels,
    serve_launcher: Callable[..., Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    with Registry(settings=Settings.load(home=home)) as registry:
        push_file(registry, "iris", iris_onnx_bytes(serve_models.iris_v1, serve_models.x), tmp_path)
    x = serve_models.x
    env = {"SHIPYARD_QUALITY__MIN_ROWS": "1"}
    with serve_launcher(home, ["iris"], args=["--workers", "2"], env=env) as server:
        # Requests, a connection each, until both workers have answered (and logged) some.
        ids: list[str] = []
        predicted: dict[str, int] = {}
        deadline = time.monotonic() + WAIT_S
        while len({e.worker for e in lookup_predictions(ids, home=home)}) < 2:
            assert time.monotonic() < deadline, f"one worker served all of {len(ids)} requests"
            for _ in range(6):
                row = x[len(ids) * 7 % len(x)]
                ids.append(f"q{len(ids)}")
                with server.client(headers={"Connection": "close"}) as client:
                    response = client.post(
                        "/v1/models/iris:predict",
                        json={"instances": [row.tolist()]},
                        headers={"X-Request-ID": ids[-1]},
                    )
                assert response.status_code == 200, response.text
                predicted[ids[-1]] = response.json()["predictions"][0]["label"]
        while len(lookup_predictions(ids, home=home)) < len(ids):  # the writers' next round
            assert time.monotonic() < deadline, "the workers never logged every request"
            time.sleep(0.05)

        # Feedback for the first half, every other one wrong: every scrape shows sklearn's figures.
        half = ids[: len(ids) // 2]
        given = {i: predicted[i] if n % 2 == 0 else (predicted[i] + 1) % 3 for n, i in enumerate(half)}
        post_each(server, [{"request_id": i, "label": label} for i, label in given.items()])
        first = [given[i] for i in half], [predicted[i] for i in half]
        for seen in every_scrape(server):
            assert seen["accuracy"] == pytest.approx(accuracy_score(*first))
            assert seen["f1_macro"] == pytest.approx(f1_score(*first, average="macro"))
        with server.client() as client:
            text = client.get("/metrics").text
        assert metric_sum(text, "shipyard_quality_feedback_total", model="iris", version="1") == len(half)

        # The rest, all right: accuracy and F1 rise, on every worker at once.
        rest = {i: predicted[i] for i in ids[len(half) :]}
        post_each(server, [{"request_id": i, "label": label} for i, label in rest.items()])
        given.update(rest)
        both = [given[i] for i in ids], [predicted[i] for i in ids]
        for seen in every_scrape(server):
            assert seen["accuracy"] == pytest.approx(accuracy_score(*both))
            assert seen["accuracy"] > accuracy_score(*first)
            assert seen["f1_macro"] == pytest.approx(f1_score(*both, average="macro"))

        # `shipyard quality`, from the home here and through the server, says the same.
        assert main(["--home", str(home), "quality", "iris", "--json"]) == 0
        local = json.loads(capsys.readouterr().out)["versions"][0]
        assert main(["quality", "iris:1", "--url", server.url, "--json"]) == 0
        remote = json.loads(capsys.readouterr().out)["versions"][0]
        assert local["metrics"] == remote["metrics"]
        assert local["metrics"]["accuracy"] == pytest.approx(accuracy_score(*both))
        assert local["feedback"]["coverage"] == 1.0 and local["rows"] == len(ids)

        # `shipyard feedback --url` goes through the server: its refusals keep their exit codes.
        code = main(["feedback", "iris", "--url", server.url, "--request-id", ids[0], "--label", "0"])
        assert code == 4 and "has feedback already" in capsys.readouterr().err

"""Feedback through the server, in-process: labels posted for logged requests move live accuracy
and F1 in /metrics (as scikit-learn computes them), regressors get MAE and RMSE, the quality route
answers what `shipyard quality` shows, and every bad input is its status with the field named."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from app_support import Home, serve, v2_body
from asgi_serving import run
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error

from prometheus_text import metric_sum
from shipyard.registry import Registry
from shipyard.serve.auth import required_scope
from shipyard.settings import Settings

QUALITY = {"min_rows": 1, "max_batch": 5}


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, onnx_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> Path:
    """iris (the ONNX logistic regression: integer labels, 3 probabilities) and reg (a scikit-learn
    linear regression of petal width)."""
    from sklearn.linear_model import LinearRegression

    x, _ = iris
    home = tmp_path_factory.mktemp("quality-home")
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("iris", onnx_path)
        registry.push("reg", LinearRegression().fit(x[:, :3], x[:, 3]), sample_input=x[:2, :3])
    return home


def quality_scores(text: str) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["model"], sample.labels["metric"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shipyard_quality_score"
    }


def test_feedback_moves_accuracy_and_f1_in_metrics(models: Path, iris: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = iris
    rows = x[::10]  # 15 rows, all three classes

    async def body(client: httpx.AsyncClient) -> None:
        predicted = []
        for i, row in enumerate(rows):
            response = await client.post(
                "/v2/models/iris/infer", json=v2_body(row[None]), headers={"X-Request-ID": f"q{i}"}
            )
            assert response.status_code == 200, response.text
            predicted.append(response.json()["outputs"][0]["data"][0])
        metrics = (await client.get("/metrics")).text
        assert "shipyard_quality_score{" not in metrics  # no feedback yet
        # Counters are the process's: other tests in it may have counted some already.
        counted = metric_sum(metrics, "shipyard_quality_feedback_total", model="iris", version="1")
        delays = metric_sum(metrics, "shipyard_quality_feedback_delay_seconds_count", model="iris")

        # Half of them, labelled with a wrong class: the figures are sklearn's on the same pairs.
        truth = [int(label) for label in y[::10]]
        wrong = [(p + 1) % 3 for p in predicted]
        first = [{"request_id": f"q{i}", "label": wrong[i] if i % 2 else truth[i]} for i in range(5)]
        response = await client.post("/v2/models/iris/feedback", json={"feedback": first})
        assert response.status_code == 200, response.text
        assert response.json()["accepted"] == 5 and response.json()["failed"] == 0
        given = [item["label"] for item in first]
        metrics = (await client.get("/metrics")).text
        scores = quality_scores(metrics)
        assert scores["iris", "accuracy"] == pytest.approx(accuracy_score(given, predicted[:5]))
        assert scores["iris", "f1_macro"] == pytest.approx(f1_score(given, predicted[:5], average="macro"))
        assert metric_sum(metrics, "shipyard_quality_window_rows", model="iris", version="1") == 5
        assert (
            metric_sum(metrics, "shipyard_quality_feedback_total", model="iris", version="1") == counted + 5
        )
        assert (
            metric_sum(metrics, "shipyard_quality_feedback_delay_seconds_count", model="iris") == delays + 5
        )
        before = scores["iris", "accuracy"]

        # The rest, each its prediction: accuracy and F1 rise.
        for i in range(5, len(rows)):
            response = await client.post(
                "/v2/models/iris/feedback", json={"request_id": f"q{i}", "label": predicted[i]}
            )
            assert response.status_code == 200, response.text
            assert response.json() == {"model": "iris", "request_id": f"q{i}", "status": 200, "version": 1}
        given += predicted[5:]
        scores = quality_scores((await client.get("/metrics")).text)
        assert scores["iris", "accuracy"] == pytest.approx(accuracy_score(given, predicted))
        assert scores["iris", "accuracy"] > before
        assert scores["iris", "f1_macro"] == pytest.approx(f1_score(given, predicted, average="macro"))
        per_class = f1_score(given, predicted, average=None, labels=[0, 1, 2])
        assert [scores["iris", f"f1:{c}"] for c in (0, 1, 2)] == pytest.approx(per_class.tolist())

        report = (await client.get("/v2/models/iris/quality", params={"window": "1h"})).json()
        (version,) = report["versions"]
        assert version["version"] == 1 and version["task"] == "classification" and version["rows"] == 15
        assert version["metrics"]["accuracy"] == scores["iris", "accuracy"]
        assert version["feedback"]["requests"] == version["feedback"]["logged"] == 15
        assert version["feedback"]["coverage"] == 1.0
        assert 0 <= version["feedback"]["delay_s"]["median"] <= version["feedback"]["delay_s"]["p90"] < 60
        versioned = (await client.get("/v2/models/iris/versions/1/quality", params={"window": "10"})).json()
        assert versioned["versions"][0]["rows"] == 10 and versioned["version"] == 1

    run(models, ["iris"], body, quality=QUALITY)


def test_a_regressor_gets_mae_and_rmse(models: Path, iris: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = iris
    rows = x[:6, :3]

    async def body(client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/models/reg:predict", json={"instances": rows.tolist()}, headers={"X-Request-ID": "r1"}
        )
        assert response.status_code == 200, response.text
        predicted = [float(p) for p in response.json()["predictions"]]
        truth = x[:6, 3].tolist()
        response = await client.post("/v2/models/reg/feedback", json={"request_id": "r1", "value": truth})
        assert response.status_code == 200, response.text
        scores = quality_scores((await client.get("/metrics")).text)
        assert scores["reg", "mae"] == pytest.approx(mean_absolute_error(truth, predicted))
        assert scores["reg", "rmse"] == pytest.approx(math.sqrt(mean_squared_error(truth, predicted)))
        response = await client.post("/v2/models/reg/feedback", json={"request_id": "r1", "value": "wide"})
        assert response.status_code == 400 and response.json()["field"] == "value"

    run(models, ["reg"], body, quality=QUALITY)


def test_bad_feedback_is_its_status_naming_the_field(
    models: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = iris

    async def body(client: httpx.AsyncClient) -> None:
        for request_id in ("b1", "b2"):
            response = await client.post(
                "/v2/models/iris/infer", json=v2_body(x[:1]), headers={"X-Request-ID": request_id}
            )
            assert response.status_code == 200
        post = client.post
        url = "/v2/models/iris/feedback"
        cases: list[tuple[dict[str, Any], int, str, str]] = [
            (
                {"request_id": "nope", "label": 0},
                404,
                "request_id",
                "no logged prediction of iris has request id 'nope'",
            ),
            (
                {"request_id": "b1", "label": "0"},
                400,
                "label",
                "label for 'b1' must be an integer like iris:1's classes (e.g. 0), got '0'",
            ),
            (
                {"request_id": "b1", "label": 5},
                400,
                "label",
                "label 5 for 'b1' is not a class of iris:1; its classes are 0, 1, 2",
            ),
            (
                {"request_id": "b1", "label": [0, 1]},
                400,
                "label",
                "predicted 1 row(s); give label as one value or a list of 1",
            ),
            ({"request_id": "b1"}, 400, "label", "needs exactly one of label (a class) or value"),
            ({"label": 0}, 400, "request_id", "request_id must be the X-Request-ID of a response"),
            (
                {"feedback": [{"request_id": "b1", "label": 0}] * 6},
                413,
                "feedback",
                "6 feedback items are over the limit of 5",
            ),
            ({"feedback": "b1"}, 400, "feedback", "feedback must be a non-empty list"),
        ]
        for payload, status, field, message in cases:
            response = await post(url, json=payload)
            assert response.status_code == status, (payload, response.text)
            assert response.json()["field"] == field and message in response.json()["error"], response.json()
        assert (await post(url, json={"request_id": "b1", "label": 0})).status_code == 200
        again = await post(url, json={"request_id": "b1", "label": 1})
        assert again.status_code == 409
        assert again.json() == {
            "error": "request 'b1' has feedback already; a request is labelled once",
            "field": "request_id",
        }

        # A batch keeps its good items and says which failed: 207.
        mixed = await post(
            url,
            json={
                "feedback": [
                    {"request_id": "b2", "label": 2},
                    {"request_id": "b1", "label": 0},
                    {"request_id": "gone", "label": 0},
                    {"request_id": "b2", "value": 1.5},
                ]
            },
        )
        assert mixed.status_code == 207
        answer = mixed.json()
        assert (answer["accepted"], answer["failed"]) == (1, 3)
        assert [(r["index"], r["status"], r.get("field")) for r in answer["results"]] == [
            (0, 200, None),
            (1, 409, "request_id"),
            (2, 404, "request_id"),
            (3, 409, "request_id"),
        ]

        raw = await post(url, content=b"{not json", headers={"content-type": "application/json"})
        assert raw.status_code == 400 and raw.json()["field"] == "body"
        plain = await post(url, content=b"{}", headers={"content-type": "text/plain"})
        assert plain.status_code == 415 and plain.json()["field"] == "content-type"
        for unserved in (
            post("/v2/models/other/feedback", json={"request_id": "b1", "label": 0}),
            client.get("/v2/models/other/quality"),
        ):
            response = await unserved
            assert response.status_code == 404 and response.json() == {
                "error": "Request for unknown model: 'other' is not served here (served: iris)",
                "field": "model",
            }
        window = await client.get("/v2/models/iris/quality", params={"window": "30d"})
        assert window.status_code == 400 and window.json()["field"] == "window"
        assert "longer than the prediction log keeps (7d" in window.json()["error"]

    run(models, ["iris"], body, quality=QUALITY)


def test_feedback_needs_the_models_infer_scope(home: Home) -> None:
    assert required_scope("POST", "/v2/models/iris/feedback") == "infer:iris"
    assert required_scope("GET", "/v2/models/iris/quality") == "read"
    home.push("iris")
    keys = {
        name: home.registry.create_key(name, [scope])[1]
        for name, scope in (("own", "infer:iris"), ("other", "infer:other"), ("reader", "read"))
    }

    async def body() -> None:
        async with serve(home, ["iris"]) as served:
            url = "/v2/models/iris/feedback"
            payload = {"request_id": "none", "label": 0}
            for name, status in (("own", 404), ("other", 403), ("reader", 403)):
                response = await served.client.post(
                    url, json=payload, headers={"Authorization": f"Bearer {keys[name]}"}
                )
                assert response.status_code == status, (name, response.text)
            quality = await served.client.get(
                "/v2/models/iris/quality", headers={"Authorization": f"Bearer {keys['reader']}"}
            )
            assert quality.status_code == 200 and quality.json()["versions"] == []

    import asyncio

    asyncio.run(body())

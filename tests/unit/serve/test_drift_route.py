"""Drift through the server, in-process: inferences fill the version's window, and shifted inputs
take the drift route's verdict and /metrics over the threshold (real iris ONNX model)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from app_support import v2_body
from asgi_serving import run

from shipyard.monitor.profile import build_profile
from shipyard.registry import Registry
from shipyard.serve.auth import required_scope
from shipyard.settings import Settings


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, onnx_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> Path:
    """iris:1 with a reference profile of the iris data; iris:2 without one."""
    home = tmp_path_factory.mktemp("drift-home")
    names = {"X": ["sepal_length", "sepal_width", "petal_length", "petal_width"]}
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push(
            "iris",
            onnx_path,
            data_profile=lambda signature: build_profile({"X": iris[0]}, signature, names=names).to_dict(),
        )
        registry.push("iris", onnx_path)
    return home


def drift_lines(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("shipyard_drift_") and 'model="iris"' in line
    }


def test_shifted_inputs_cross_the_threshold_on_the_route_and_in_metrics(
    home: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    x = iris[0]

    async def body(client: httpx.AsyncClient) -> None:
        response = await client.post("/v2/models/iris/versions/1/infer", json=v2_body(x[::2]))
        assert response.status_code == 200, response.text
        quiet = (await client.get("/v2/models/iris/versions/1/drift")).json()
        assert quiet["rows"] == 75 and quiet["detected"] is False
        assert [f["method"] for f in quiet["features"]] == ["ks"] * 4  # a small window: tests
        lines = drift_lines((await client.get("/metrics")).text)
        assert lines['shipyard_drift_detected{model="iris",version="1"}'] == 0.0

        for _ in range(4):
            response = await client.post(
                "/v2/models/iris/versions/1/infer", json=v2_body(x + np.array([1.5, 0.0, 2.0, 0.0]))
            )
            assert response.status_code == 200, response.text
        shifted = (await client.get("/v2/models/iris/versions/1/drift", params={"window": "600"})).json()
        assert shifted["rows"] == 600 and shifted["detected"] is True
        worst = shifted["features"][0]
        assert worst["name"] in ("sepal_length", "petal_length") and worst["drifted"] is True
        assert worst["score"] < worst["threshold"] == 0.05
        assert {"edges", "reference", "current"} <= set(worst["histogram"])
        assert {f["name"]: f["drifted"] for f in shifted["features"]} == {
            "sepal_length": True,
            "petal_length": True,
            "sepal_width": False,
            "petal_width": False,
        }
        lines = drift_lines((await client.get("/metrics")).text)
        assert lines['shipyard_drift_detected{model="iris",version="1"}'] == 1.0
        assert lines['shipyard_drift_window_rows{model="iris",version="1"}'] == 675.0
        score = 'shipyard_drift_score{feature="petal_length",method="ks",model="iris",version="1"}'
        assert lines[score] < 0.05

    run(home, ["iris:1"], body, drift={"min_rows": 30, "metrics_refresh_s": 0})


def test_a_version_without_profile_says_how_to_add_one(home: Path) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        response = await client.get("/v2/models/iris/drift")
        assert response.status_code == 404
        assert response.json() == {
            "error": "iris:2 has no reference profile; add one with `shipyard profile iris:2 FILE` "
            "(a sample of its training inputs)",
            "field": "profile",
        }

    run(home, ["iris"], body)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ("2h", "window '2h' is longer than the 1h of inputs this server keeps (setting drift.max_age_s)"),
        ("20000", "window '20000' asks for 20000 rows; this server keeps at most 10000 per version"),
    ],
)
def test_a_window_larger_than_what_is_kept_is_400_naming_window(
    home: Path, window: str, message: str
) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        response = await client.get("/v2/models/iris/versions/1/drift", params={"window": window})
        assert response.status_code == 400
        assert response.json()["field"] == "window" and message in response.json()["error"]

    run(home, ["iris:1"], body)


def test_the_drift_route_needs_the_read_scope() -> None:
    assert required_scope("GET", "/v2/models/iris/drift") == "read"
    assert required_scope("GET", "/v2/models/iris/versions/1/drift") == "read"

"""Azure ML's online-endpoint routes in-process: `GET /` as its liveness and readiness probe, and
`POST /score` with the bodies Azure's clients send, answered as Azure's own server answers a
scoring script that returns its predictions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from app_support import Home, serve
from asgi_serving import run
from fake_runtime import Controls

from http_errors import assert_error
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_models import tiny_onnx

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
EXPECTED = [{"label": 0, "probabilities": [pytest.approx(0.1 * sum(row))] * 3} for row in ROWS]
Client = httpx.AsyncClient


@pytest.fixture(scope="module")
def iris_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("azure-home")
    (home / "iris.onnx").write_bytes(tiny_onnx("azure"))
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("iris", home / "iris.onnx")
    return home


@pytest.mark.parametrize(
    "body",
    [
        {"data": ROWS},
        {"input_data": ROWS},
        {"input_data": {"columns": ["a", "b", "c", "d"], "index": [0, 1], "data": ROWS}},
        {"input_data": {"columns": ["X"], "index": [0, 1], "data": [[row] for row in ROWS]}},
        {"instances": ROWS},
    ],
    ids=["data", "input_data", "split", "split-named", "instances"],
)
def test_score_takes_the_bodies_azure_clients_send(iris_home: Path, body: object) -> None:
    async def check(http: Client) -> None:
        answer = await http.post("/score", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == EXPECTED  # the bare list a scoring script's run() returns

    run(iris_home, ["iris"], check)


def test_score_errors_carry_azure_message_too(iris_home: Path) -> None:
    async def check(http: Client) -> None:
        for body, status, fragment in (
            ({"data": []}, 400, "non-empty"),
            ({"data": [[1, 2, 3]]}, 400, "expected 4"),
            ({"input_data": {"columns": ["a"], "data": "x"}}, 400, '"input_data"'),
        ):
            answer = await http.post("/score", json=body)
            message = assert_error(answer, status, fragment)
            assert answer.json()["message"] == message
        refused = await http.post("/score", content=b"1,2,3,4", headers={"content-type": "text/csv"})
        assert_error(refused, 415, "application/json")
        assert_error(await http.get("/score"), 405, "POST")

    run(iris_home, ["iris"], check)


def test_probe_is_healthy_only_once_loaded(fake: Controls, home: Home) -> None:
    home.push("iris")
    gate = fake.hold_load(1)

    async def main() -> None:
        async with serve(home, ["iris"], wait=False, platform="azure") as served:
            await gate.wait_reached()
            loading = await served.client.get("/")
            assert loading.status_code == 503
            assert loading.json()["ready"] is False
            gate.opened.set()
            await asyncio.wait_for(asyncio.shield(served.loading), 10)
            ready = await served.client.get("/")
            assert (ready.status_code, ready.text) == (200, "Healthy")

    asyncio.run(main())

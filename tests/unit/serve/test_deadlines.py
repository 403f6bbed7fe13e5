"""Per-request deadlines: a request answers 504 when its deadline passes, even while the model
runs, and queued work whose deadline passed is dropped, never run (counted by the fake runtime).
"""

from __future__ import annotations

import asyncio

import pytest
from app_support import ROW, Home, serve, until
from fake_runtime import WAIT_S, Controls

from http_errors import assert_error

pytestmark = pytest.mark.anyio

PATH = "/v1/models/m:predict"
BODY = {"instances": [ROW]}


async def test_a_blocked_model_answers_504_at_the_clients_deadline(fake: Controls, home: Home) -> None:
    home.push("m")
    held = fake.hold_predict(1)
    async with serve(home, ["m"]) as served:
        answer = await served.client.post(PATH, json=BODY, headers={"X-Request-Timeout": "0.05"})
        assert_error(answer, 504, "deadline of 0.05 s", "X-Request-Timeout")
        held.opened.set()  # the running batch ends; its result is dropped
        assert (await served.client.post(PATH, json=BODY)).status_code == 200


async def test_queued_work_whose_deadline_passed_never_runs(fake: Controls, home: Home) -> None:
    home.push("m")
    held = fake.hold_predict(1)
    async with serve(home, ["m"], max_batch_size=1) as served:
        batcher = served.repository.models["m"].versions[1].batcher
        assert batcher is not None
        running = asyncio.create_task(served.client.post(PATH, json=BODY))
        await held.wait_reached()
        expired = await asyncio.gather(
            *(served.client.post(PATH, json=BODY, headers={"X-Request-Timeout": "0.01"}) for _ in range(3))
        )
        for answer in expired:
            assert_error(answer, 504, "deadline")
        held.opened.set()
        assert (await asyncio.wait_for(running, WAIT_S)).status_code == 200
        assert (await served.client.post(PATH, json=BODY)).status_code == 200
        await until(lambda: batcher.depth == 0, "the queue empties")
        assert fake.predictions[1] == 2, f"{fake.predictions[1] - 2} expired request(s) ran"


async def test_the_versions_timeout_applies_without_a_header(fake: Controls, home: Home) -> None:
    home.push("m", serving={"timeout_s": 0.05})
    held = fake.hold_predict(1)
    async with serve(home, ["m"]) as served:
        assert_error(await served.client.post(PATH, json=BODY), 504, "deadline of 0.05 s")
        held.opened.set()


async def test_a_header_above_the_cap_is_capped(fake: Controls, home: Home) -> None:
    home.push("m")
    held = fake.hold_predict(1)
    async with serve(home, ["m"], max_timeout_s=0.05) as served:
        answer = await served.client.post(PATH, json=BODY, headers={"X-Request-Timeout": "3600"})
        assert_error(answer, 504, "deadline of 0.05 s", "serve.max_timeout_s")
        held.opened.set()


async def test_grpc_timeout_is_honoured(fake: Controls, home: Home) -> None:
    home.push("m")
    held = fake.hold_predict(1)
    async with serve(home, ["m"]) as served:
        answer = await served.client.post(PATH, json=BODY, headers={"grpc-timeout": "50m"})
        assert_error(answer, 504, "deadline of 0.05 s")
        held.opened.set()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Request-Timeout", "soon"),
        ("X-Request-Timeout", "-1"),
        ("X-Request-Timeout", "0"),
        ("X-Request-Timeout", "inf"),
        ("X-Request-Timeout", "nan"),
        ("grpc-timeout", "10x"),
        ("grpc-timeout", "123456789S"),
        ("grpc-timeout", "0S"),
        ("grpc-timeout", "S"),
    ],
)
async def test_a_malformed_timeout_header_is_a_400_naming_it(
    fake: Controls, home: Home, name: str, value: str
) -> None:
    home.push("m")
    async with serve(home, ["m"]) as served:
        answer = await served.client.post(PATH, json=BODY, headers={name: value})
        assert_error(answer, 400, name)
        assert answer.json()["field"] == name.lower()
        assert fake.predictions[1] == 0

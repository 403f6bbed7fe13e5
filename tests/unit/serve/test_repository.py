"""Hot swap, drain and unload in `serve/repository.py`, and how each fails: driven through the app
in-process (and the repository's public methods) with the controllable fake runtime."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from app_support import V2_ROW, Home, Served, serve, until
from fake_runtime import WAIT_S, Controls

from http_errors import assert_error
from shipyard.errors import ShipyardError
from shipyard.types import ModelRef

pytestmark = pytest.mark.anyio

NEVER_S = 3600.0  # a poll interval that never elapses in a test: refresh() is called directly


def answered_by(response: httpx.Response) -> int:
    """The version that computed a V2 response (the fake fills every output with it)."""
    assert response.status_code == 200, response.text
    body = response.json()
    label = next(o for o in body["outputs"] if o["name"] == "label")["data"][0]
    assert body["model_version"] == str(label)
    return int(label)


async def infer(served: Served, name: str = "m") -> httpx.Response:
    return await served.client.post(f"/v2/models/{name}/infer", json=V2_ROW)


async def move_alias(home: Home, served: Served, version: int, name: str = "m") -> None:
    """Point m@prod at `version` and let the server follow it (what the poller does)."""
    home.registry.set_alias(name, "prod", version)
    await served.repository.refresh(served.repository.models[name])


async def test_the_poller_follows_a_moved_alias_and_unloads_the_old_version(
    fake: Controls, home: Home
) -> None:
    home.push("m", alias="prod")
    async with serve(home, ["m@prod"], poll_interval_s=0.01) as served:
        assert answered_by(await infer(served)) == 1
        home.push("m")
        home.registry.set_alias("m", "prod", 2)
        await fake.wait_event("closed", 1)
        assert answered_by(await infer(served)) == 2
        assert (await served.client.get("/v2/models/m")).json()["versions"] == ["2"]
    assert fake.closed() == [1, 2]


async def test_a_new_version_that_fails_to_load_leaves_the_old_one_serving(
    fake: Controls, home: Home
) -> None:
    home.push("m", alias="prod")
    home.push("m")
    fake.fail_load.add(2)
    async with serve(home, ["m@prod"], poll_interval_s=NEVER_S) as served:
        await move_alias(home, served, 2)

        assert answered_by(await infer(served)) == 1
        assert (await served.client.get("/readyz")).status_code == 200  # it still serves m
        model = served.repository.models["m"]
        assert model.default == 1 and "version 2 refuses to load" in model.error
        why = await served.client.get("/v2/models/m/versions/2/ready")
        assert why.status_code == 503
        assert why.json()["state"] == "failed" and "version 2 refuses to load" in why.json()["reason"]
        assert_error(await served.client.post("/v2/models/m/versions/2/infer", json=V2_ROW), 503, "m:2")
        assert fake.closed() == []  # the old version was never drained

        fake.fail_load.clear()  # the next poll retries the failed version and swaps it in
        await served.repository.refresh(model)
        assert answered_by(await infer(served)) == 2
        assert fake.loads[2] == 2 and fake.closed() == [1]
        assert model.error == ""


async def test_readyz_names_an_alias_target_that_fails_its_integrity_check(
    fake: Controls, home: Home, tamper: Callable[[Path], None]
) -> None:
    """The old version keeps answering, so the server stays ready (a probe failing on every
    replica would take the whole service down), and /readyz says which target failed and why."""
    home.push("m", alias="prod")
    damaged = home.push("m")
    tamper(home.registry.artifact_path(damaged) / "model.onnx")
    async with serve(home, ["m@prod"], poll_interval_s=NEVER_S) as served:
        await move_alias(home, served, 2)
        readyz = await served.client.get("/readyz")
        assert readyz.status_code == 200
        entry = readyz.json()["models"]["m"]
        assert entry["state"] == "ready" and entry["version"] == 1
        assert "version 2" in entry["reason"] and "integrity" in entry["reason"]
        assert (await served.client.post("/v2/models/m/infer", json=V2_ROW)).json()["model_version"] == "1"


async def test_a_new_version_that_fails_its_integrity_check_is_never_loaded(
    fake: Controls, home: Home, tamper: Callable[[Path], None]
) -> None:
    home.push("m", alias="prod")
    damaged = home.push("m")
    tamper(home.registry.artifact_path(damaged) / "model.onnx")
    async with serve(home, ["m@prod"], poll_interval_s=NEVER_S) as served:
        await move_alias(home, served, 2)

        assert answered_by(await infer(served)) == 1
        assert fake.loads[2] == 0  # refused before any runtime saw the files
        why = (await served.client.get("/v2/models/m/versions/2/ready")).json()["reason"]
        assert "integrity" in why and "model.onnx" in why
        assert "/" not in why  # names the file, not where it lives on the server


async def test_moving_the_alias_drains_the_request_in_flight_before_unloading(
    fake: Controls, home: Home
) -> None:
    home.push("m", alias="prod")
    home.push("m")
    held = fake.hold_predict(1)
    async with serve(home, ["m@prod"], poll_interval_s=NEVER_S) as served:
        in_flight = asyncio.create_task(infer(served))
        await held.wait_reached()
        swap = asyncio.create_task(move_alias(home, served, 2))

        model = served.repository.models["m"]
        await until(lambda: model.default == 2, "new requests switch to version 2")
        assert answered_by(await infer(served)) == 2  # new requests go to the new version...
        assert model.versions[1].state == "draining"  # ...while the old one finishes its own
        assert not in_flight.done() and not swap.done()
        assert fake.closed() == []

        held.opened.set()
        assert answered_by(await asyncio.wait_for(in_flight, WAIT_S)) == 1
        await asyncio.wait_for(swap, WAIT_S)
        assert sorted(model.versions) == [2]
        assert fake.events.index(("predicted", 1)) < fake.events.index(("closed", 1))


async def test_a_drain_gives_up_after_the_grace_period_and_fails_the_request_clearly(
    fake: Controls, home: Home
) -> None:
    home.push("m", alias="prod")
    home.push("m")
    held = fake.hold_predict(1)
    async with serve(home, ["m@prod"], poll_interval_s=NEVER_S, grace_period_s=0) as served:
        in_flight = asyncio.create_task(infer(served))
        await held.wait_reached()
        await asyncio.wait_for(move_alias(home, served, 2), WAIT_S)  # no grace: does not wait

        assert_error(await asyncio.wait_for(in_flight, WAIT_S), 503, "unloaded", "retry")
        assert answered_by(await infer(served)) == 2
        held.opened.set()


async def test_unloading_a_model_lets_its_request_in_flight_finish(fake: Controls, home: Home) -> None:
    home.push("m")
    held = fake.hold_predict(1)
    async with serve(home, ["m"], poll_interval_s=NEVER_S) as served:
        in_flight = asyncio.create_task(infer(served))
        await held.wait_reached()
        queued = asyncio.create_task(infer(served))
        batcher = served.repository.models["m"].versions[1].batcher
        assert batcher is not None
        await until(lambda: batcher.depth == 1, "the second request queues")
        unload = asyncio.create_task(served.repository.unload("m"))

        await until(lambda: "m" not in served.repository.models, "m is no longer served")
        assert_error(await infer(served), 404, "'m'")  # new requests: gone at once
        assert fake.closed() == []

        held.opened.set()
        assert answered_by(await asyncio.wait_for(in_flight, WAIT_S)) == 1
        assert answered_by(await asyncio.wait_for(queued, WAIT_S)) == 1
        await asyncio.wait_for(unload, WAIT_S)
        assert fake.closed() == [1]
        assert fake.events.count(("predicted", 1)) == 2  # the queued request ran before close
        assert fake.events[-1] == ("closed", 1)


async def test_closing_the_server_while_a_model_loads_does_not_wait_for_the_load(
    fake: Controls, home: Home
) -> None:
    home.push("m")
    loading = fake.hold_load(1)
    async with serve(home, ["m"], wait=False) as served:
        await loading.wait_reached()
        assert_error(await infer(served), 503, "not ready")
        ready = await served.client.get("/readyz")
        assert ready.status_code == 503 and "m" in ready.json()["models"]
    # The lifespan has ended with the load still held: the server shut down without it (the
    # loading task is cancelled, or about to be: the shutdown's own awaits may let it finish).
    assert served.loading.cancelled() or not served.loading.done()
    assert served.repository.models["m"].versions == {}
    loading.opened.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(served.loading, WAIT_S)
    assert served.repository.models["m"].versions == {}  # the late load did not come back


async def test_a_runtime_that_finishes_loading_after_close_is_closed(fake: Controls, home: Home) -> None:
    home.push("m")
    loading = fake.hold_load(1)
    async with serve(home, ["m"], wait=False):
        await loading.wait_reached()
    loading.opened.set()
    await fake.wait_event("loaded", 1)
    await fake.wait_event("closed", 1)


async def test_a_management_load_that_fails_keeps_nothing_and_says_why(fake: Controls, home: Home) -> None:
    home.push("m")
    home.push("m")
    fake.fail_load.add(2)
    async with serve(home, ["m:1"], poll_interval_s=NEVER_S) as served:
        with pytest.raises(ShipyardError, match=r"m:2 failed to load: .*version 2 refuses to load"):
            await served.repository.load(ModelRef.parse("m:2"))
        model = served.repository.models["m"]
        assert sorted(model.versions) == [1] and model.default == 1
        assert answered_by(await infer(served)) == 1
        assert (await served.client.get("/readyz")).status_code == 200


async def test_a_model_that_fails_to_predict_answers_500_without_internals(
    fake: Controls, home: Home
) -> None:
    home.push("m")
    fake.fail_predict.add(1)
    async with serve(home, ["m"]) as served:
        message = assert_error(await infer(served), 500)
        assert "refuses" not in message and "FakeModelError" not in message
        fake.fail_predict.clear()
        assert answered_by(await infer(served)) == 1  # the batcher survived

"""Requests whose clients hang up while they wait in the queue are withdrawn, never run.

Driven in-process: each abandoned request is a raw ASGI call whose `receive` reports
`http.disconnect` when the test hangs up, as uvicorn does when the socket closes. The fake
runtime counts every execution, so a single abandoned request that runs fails the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest
from app_support import ROW, Home, Served, serve, until
from fake_runtime import WAIT_S, Controls

pytestmark = pytest.mark.anyio

PATH = "/v1/models/m:predict"
BODY = orjson.dumps({"instances": [ROW]})


class AbandonedRequest:
    """A POST whose client sends its body, waits, then goes away when `hang_up()` is called."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.gone = asyncio.Event()
        self.sent: list[MutableMapping[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PATH,
            "raw_path": PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
            "client": ("127.0.0.1", 50000),
            "server": ("shipyard.test", 80),
        }
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": BODY, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            self.sent.append(message)

        self.task = asyncio.create_task(self.served.app(scope, receive, send))

    def hang_up(self) -> None:
        self.gone.set()


async def test_requests_of_clients_that_hang_up_are_withdrawn_not_run(fake: Controls, home: Home) -> None:
    home.push("m")
    held = fake.hold_predict(1)
    async with serve(home, ["m"], max_batch_size=1) as served:
        batcher = served.repository.models["m"].versions[1].batcher
        assert batcher is not None
        running = asyncio.create_task(served.client.post(PATH, json={"instances": [ROW]}))
        await held.wait_reached()
        waiting = asyncio.create_task(served.client.post(PATH, json={"instances": [ROW]}))
        await until(lambda: batcher.depth == 1, "the second request queues")

        abandoned = [AbandonedRequest(served) for _ in range(3)]
        for request in abandoned:
            request.start()
        await until(lambda: batcher.depth == 4, "the abandoned requests queue behind it")
        for request in abandoned:
            request.hang_up()
        gone = [r.task for r in abandoned if r.task is not None]
        await asyncio.wait(gone, timeout=WAIT_S)  # withdrawn: each returns without running

        held.opened.set()
        await asyncio.wait_for(asyncio.gather(*gone), WAIT_S)
        for kept in (running, waiting):
            assert (await asyncio.wait_for(kept, WAIT_S)).status_code == 200
        assert (await served.client.post(PATH, json={"instances": [ROW]})).status_code == 200

        # Three requests whose clients stayed ran; the three whose clients left never did.
        assert fake.predictions[1] == 3, f"{fake.predictions[1] - 3} abandoned request(s) ran"
        assert batcher.depth == 0
        assert served.repository.models["m"].versions[1].in_flight == 0

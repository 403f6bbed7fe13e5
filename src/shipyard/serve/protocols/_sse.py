"""Server-Sent Events responses for the generation routes: `data: <json>\\n\\n` events as they are
made, and the producer closed at once when the client goes away, so its sequences free their
slots at the next decoding step instead of generating for nobody."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from shipyard.errors import ShipyardError
from shipyard.serve.protocols._http import internal_error

log = logging.getLogger("shipyard.serve")


def event(data: Any) -> bytes:
    """One SSE event carrying `data` as compact JSON (bytes are sent as they are, e.g. [DONE])."""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    return b"data: " + payload + b"\n\n"


DONE = event(b"[DONE]")


async def guarded(
    events: AsyncIterator[bytes],
    close: Callable[[], Awaitable[None]],
    error_body: Callable[[ShipyardError], Any],
) -> AsyncIterator[bytes]:
    """`events`, then, if making them fails mid-stream (the status is sent already), one error
    event shaped by `error_body` instead of a broken stream, never a traceback; `close` (the
    producer's) runs however it ends."""
    try:
        async for data in events:
            yield data
    except ShipyardError as exc:
        yield event(error_body(exc))
    except Exception:
        log.exception("generation failed mid-stream")
        yield event(error_body(internal_error()))
    finally:
        await close()


class EventStream(Response):
    """A 200 `text/event-stream` response whose body is `events`, sent as each is made."""

    def __init__(self, events: AsyncIterator[bytes]) -> None:
        self.status_code = 200
        self.background = None
        self._events = events
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),  # proxies such as nginx would hold the events back
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sending = asyncio.ensure_future(self._send_all(send))
        watching = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({sending, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sending, watching):
                task.cancel()
            await asyncio.gather(sending, watching, return_exceptions=True)
            close = getattr(self._events, "aclose", None)
            if close is not None:
                await close()  # the client left mid-stream: end its sequences now

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        with contextlib.suppress(OSError):  # the connection broke under a send: stop quietly
            async for data in self._events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass

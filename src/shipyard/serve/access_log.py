"""The access log: one line per HTTP request (client, method, path, status, duration, request id).

Written through Shipyard's own logger rather than uvicorn's, so it follows `log_json`, carries the
worker id, and reports the duration, which uvicorn's access line lacks.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("shipyard.access")


class AccessLog:
    """Wraps an ASGI app; logs each request once it is answered (or has failed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        log.setLevel(logging.INFO)  # switched on explicitly: shown even when log_level is WARNING

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what uvicorn answers when the app fails before starting a response
        request_id = ""  # routes other than the protocols' (probes, /metrics) have none

        async def send_and_note(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-request-id":
                        request_id = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            duration_ms = (time.perf_counter() - started) * 1000
            host, port = scope.get("client") or ("-", 0)
            client = f"{host}:{port}" if port else host
            method, path = scope["method"], scope["path"]
            fields = {
                "client": client,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(duration_ms, 3),
            }
            if request_id:
                fields["request_id"] = request_id
                request_id = f" {request_id}"
            log.info(
                '%s "%s %s" %d %.1fms%s',
                client,
                method,
                path,
                status,
                duration_ms,
                request_id,
                extra={"fields": fields},
            )

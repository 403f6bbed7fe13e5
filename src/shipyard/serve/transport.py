"""uvicorn's HTTP protocol with every response leaving in one send(), and bounds on request heads.

uvicorn writes a response's head and its body with two `transport.write` calls, and uvloop
sends each at once: two syscalls and two TCP segments per response, and the client wakes twice
to read them. Here each connection's transport gathers the writes made in one turn of the event
loop and sends them together at the end of it, which is when a handler has written both parts.
Measured with wrk on the V1 benchmark: one write(2) per response instead of two.

uvicorn's httptools protocol has no header-read timeout and no bound on the head's size: a
client sending a request head byte by byte (or never) holds a connection and its memory
forever, and a thousand of them exhaust the file limit. Here a head must be complete within
`HeadLimits.timeout_s` of its first byte (of the connection, for the first request), within a
size and a header count, else the connection is closed (431 for a head too large).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class GatheringTransport:
    """Delegates to a transport, but holds writes until the current loop turn ends."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()  # a `connection: close` response is written, then closed in the same turn
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        held = sum(map(len, self._pending)) if self._pending else 0
        return held + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:  # get_extra_info, pause_reading, set_protocol, …
        return getattr(self._transport, name)


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """How long a request head may take to arrive, and how large it may be."""

    timeout_s: float = 10.0
    max_bytes: int = 16 * 1024
    max_count: int = 100


class _HeadRefusedError(Exception):
    """Stops the parser after a refusal was answered (uvicorn treats it as a parse error)."""


class OneWriteHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a `GatheringTransport`, bounding heads.

    One timer per connection, not per request: it wakes every `timeout_s` and closes the
    connection if the head in progress began longer ago than that. Per request the protocol
    only stores when the head began and, once complete, counts its headers and bytes.
    """

    head_limits: ClassVar[HeadLimits] = HeadLimits()
    _head_since: float | None = None  # loop time the current head began; None once complete
    _head_bytes = 0  # bytes of chunks after which the head was still incomplete
    _chunk_bytes = 0  # bytes of the chunk being parsed
    _head_timer: asyncio.TimerHandle | None = None

    @classmethod
    def limited(cls, limits: HeadLimits) -> type[OneWriteHttpProtocol]:
        """This protocol with `limits` (uvicorn builds its protocol from a class)."""
        return type(cls.__name__, (cls,), {"head_limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(GatheringTransport(transport, self.loop))  # type: ignore[arg-type]
        self._head_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.head_limits.timeout_s, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()  # the handle would keep the protocol alive until it fires
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._chunk_bytes = len(data)
        super().data_received(data)
        if self._head_since is not None and not self.transport.is_closing():
            # httptools buffers a header until it ends: bound what an unfinished head holds.
            self._head_bytes += len(data)
            if self._head_bytes > self.head_limits.max_bytes:
                self._refuse(f"the request head is over {self.head_limits.max_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:  # the first request's head counts from the connection
            self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        limits = self.head_limits
        headers = self.headers
        if len(headers) > limits.max_count:
            self._refuse(f"the request has {len(headers)} headers, over the limit of {limits.max_count}")
            raise _HeadRefusedError
        # A head is no larger than the bytes it came in: only a large one is measured exactly.
        over = self._head_bytes + self._chunk_bytes > limits.max_bytes
        if over and len(self.url) + sum(len(n) + len(v) for n, v in headers) > limits.max_bytes:
            self._refuse(f"the request head is over {limits.max_bytes} bytes")
            raise _HeadRefusedError
        self._head_since = None
        self._head_bytes = 0
        super().on_headers_complete()

    def _check_head(self) -> None:
        since = self._head_since
        timeout = self.head_limits.timeout_s
        if since is not None and self.loop.time() - since >= timeout:
            self._head_timer = None
            self.transport.close()
            return
        wait = timeout if since is None else since + timeout - self.loop.time()
        self._head_timer = self.loop.call_later(wait, self._check_head)

    def _refuse(self, reason: str) -> None:
        body = (
            b'{"error":"' + reason.encode() + b"; send a smaller head "
            b'(settings serve.max_header_bytes and serve.max_header_count)","field":"headers"}'
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        self.transport.close()

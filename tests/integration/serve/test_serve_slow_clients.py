"""Clients that never finish their request head, heads too large, and limits that must hold
across worker processes: against real `shipyard serve` processes over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from serve_support import ServeModels

from http_errors import assert_error
from servers import Server

PATH = "/v1/models/iris-onnx:predict"
ROW = {"instances": [[5.1, 3.5, 1.4, 0.2]]}
HALF_OPEN = 300
WAIT_S = 30.0  # an upper bound for what must happen: a hang fails, never blocks


@pytest.fixture(scope="module")
def impatient(serve_models: ServeModels, serve_launcher: Callable[..., Any]) -> Iterator[Server]:
    """A server that gives a request head one second, and an idle connection one more."""
    env = {"SHIPYARD_SERVE__HEADER_TIMEOUT_S": "1", "SHIPYARD_SERVE__KEEP_ALIVE_S": "1"}
    with serve_launcher(serve_models.home, ["iris-onnx"], env=env) as server:
        yield server


async def _half_open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {PATH} HTTP/1.1\r\nHost: shipyard\r\nContent-Type: app".encode())
    await writer.drain()
    return reader, writer


def test_half_open_connections_are_closed_and_others_still_served(impatient: Server) -> None:
    async def scenario() -> None:
        connections = await asyncio.gather(*(_half_open(impatient.port) for _ in range(HALF_OPEN)))
        async with httpx.AsyncClient(base_url=impatient.url, timeout=WAIT_S) as client:
            answers = await asyncio.gather(*(client.post(PATH, json=ROW) for _ in range(20)))
        assert [a.status_code for a in answers] == [200] * 20
        # Each half-open connection is closed by the server: the read ends (EOF or a reset).
        closed = await asyncio.wait_for(asyncio.gather(*(_closed(r) for r, _ in connections)), WAIT_S)
        assert all(closed)
        for _, writer in connections:
            writer.close()

    async def _closed(reader: asyncio.StreamReader) -> bool:
        with contextlib.suppress(ConnectionResetError):
            await reader.read()
        return True

    asyncio.run(scenario())


@pytest.mark.parametrize("then", [b"", b"GET /healthz HTTP/1.1\r\nHost: shi"], ids=["idle", "half-sent"])
def test_a_kept_alive_connection_is_closed_when_idle_or_stuck_in_its_next_head(
    impatient: Server, then: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=WAIT_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: shipyard\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first
        sock.sendall(then)
        rest = b""
        while chunk := sock.recv(65536):  # the server closes it: recv returns b"" (no timeout)
            rest += chunk
        assert rest == b""


def _raw(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "extra",
    [b"X-Big: " + b"a" * 20_000 + b"\r\n", b"".join(b"X-%d: 1\r\n" % i for i in range(150))],
    ids=["too-large", "too-many"],
)
def test_a_head_over_the_limits_gets_431(impatient: Server, extra: bytes) -> None:
    answer = _raw(impatient.port, b"GET /healthz HTTP/1.1\r\nHost: shipyard\r\n" + extra + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"serve.max_header_bytes" in answer


def test_a_rate_limit_holds_across_two_workers(
    serve_models: ServeModels, serve_launcher: Callable[..., Any]
) -> None:
    env = {
        "SHIPYARD_SERVE__RATE_LIMIT_PER_MODEL": "0.01",  # no token comes back during the test
        "SHIPYARD_SERVE__RATE_BURST_PER_MODEL": "5",
    }
    with serve_launcher(serve_models.home, ["iris-onnx"], env=env, args=["--workers", "2"]) as server:

        def one(_: int) -> httpx.Response:
            with server.client() as client:  # a connection each, so the kernel spreads them
                return client.post(PATH, json=ROW)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(20)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 5 + [429] * 15, statuses
    for answer in answers:
        if answer.status_code == 429:
            assert_error(answer, 429, "serve.rate_limit_per_model")
            assert int(answer.headers["retry-after"]) >= 1

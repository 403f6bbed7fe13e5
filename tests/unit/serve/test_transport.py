"""The gathering transport: what one loop turn writes leaves in one write, in order, never lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shipyard.serve.transport import GatheringTransport


class Recorder(asyncio.Transport):
    """Stands in for the socket transport: records each write and the order of calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(bytes(data))

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append("eof")

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name == "sockname" else default


def run(scenario: Any) -> list[Any]:
    async def main() -> list[Any]:
        inner = Recorder()
        await scenario(GatheringTransport(inner, asyncio.get_running_loop()), inner)
        await asyncio.sleep(0)  # one more turn: anything still held is written
        return inner.calls

    return asyncio.run(main())


def test_writes_of_one_turn_leave_as_one() -> None:
    async def scenario(t: GatheringTransport, inner: Recorder) -> None:
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(bytearray(b"{}"))
        t.writelines([b"a", memoryview(b"b")])
        assert t.get_write_buffer_size() == 7 + 23  # what is held counts for flow control

    assert run(scenario) == [b"HTTP/1.1 200 OK\r\n\r\n{}ab"]


def test_each_turn_gets_its_own_write_in_order() -> None:
    async def scenario(t: GatheringTransport, inner: Recorder) -> None:
        t.write(b"one")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        t.write(b"two")

    assert run(scenario) == [b"one", b"two"]


@pytest.mark.parametrize(("method", "mark"), [("close", "close"), ("write_eof", "eof")])
def test_close_and_eof_send_what_is_held_first(method: str, mark: str) -> None:
    async def scenario(t: GatheringTransport, inner: Recorder) -> None:
        t.write(b"head")
        t.write(b"body")
        getattr(t, method)()

    assert run(scenario) == [b"headbody", mark]


def test_abort_drops_what_is_held() -> None:
    async def scenario(t: GatheringTransport, inner: Recorder) -> None:
        t.write(b"never sent")
        t.abort()

    assert run(scenario) == ["abort"]


def test_nothing_is_written_to_a_closed_transport() -> None:
    async def scenario(t: GatheringTransport, inner: Recorder) -> None:
        t.write(b"late")
        inner.close()  # the peer went away before the turn ended

    assert run(scenario) == ["close"]


def test_everything_else_is_the_inner_transport() -> None:
    async def scenario(t: GatheringTransport, inner: Recorder) -> None:
        assert t.get_extra_info("sockname") == ("127.0.0.1", 8000)
        assert t.is_closing() is False

    assert run(scenario) == []

"""A generation stream that fails after its status was sent ends with one error event in the
route's own shape (never a traceback), and the producer is closed however the stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from shipyard.errors import InvalidInputError
from shipyard.serve.protocols._http import openai_error, plain_error
from shipyard.serve.protocols._sse import event, guarded


def run(failure: Exception, shape: object) -> tuple[list[bytes], list[str]]:
    closed: list[str] = []

    async def events() -> AsyncIterator[bytes]:
        yield event({"n": 1})
        raise failure

    async def close() -> None:
        closed.append("closed")

    async def collect() -> list[bytes]:
        return [data async for data in guarded(events(), close, shape)]  # type: ignore[arg-type]

    return asyncio.run(collect()), closed


def body(data: bytes) -> object:
    assert data.startswith(b"data: ") and data.endswith(b"\n\n")
    return orjson.loads(data[6:-2])


@pytest.mark.parametrize("shape", [openai_error, plain_error])
def test_a_failure_of_ours_becomes_its_error_event(shape: object) -> None:
    sent, closed = run(InvalidInputError("'stop' has 5 strings; at most 4", field="stop"), shape)
    assert body(sent[0]) == {"n": 1}
    error = body(sent[1])
    assert "at most 4" in str(error) and "stop" in str(error)
    assert len(sent) == 2 and closed == ["closed"]


def test_an_unexpected_failure_is_an_internal_error_without_its_detail() -> None:
    sent, closed = run(RuntimeError("/secret/path/model.gguf exploded"), openai_error)
    error = body(sent[1])
    assert isinstance(error, dict) and error["error"]["type"] == "server_error"
    assert "secret" not in str(error) and "Traceback" not in str(error)
    assert closed == ["closed"]

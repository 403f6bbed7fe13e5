"""The one inference path under every protocol: validate, queue, batch, run, return."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.serve.repository import ModelRepository, ServedVersion
from shipyard.tensors import coerce_inputs
from shipyard.types import ModelVersion


class Held:
    """`with dataplane.acquire(...) as served:` counts the request in flight on its version.

    A plain class: a generator-based context manager costs microseconds on every request.
    """

    __slots__ = ("served",)

    def __init__(self, served: ServedVersion) -> None:
        self.served = served

    def __enter__(self) -> ServedVersion:
        self.served.in_flight += 1  # the gauge samples this (see repository._gauge_sampler)
        return self.served

    def __exit__(self, *exc: object) -> None:
        served = self.served
        served.in_flight -= 1
        if not served.in_flight and served.sample_gauges is not None:
            served.sample_gauges()  # the last one out: else the gauge keeps a busy sample


@dataclass(frozen=True, slots=True)
class InferResult:
    version: ModelVersion
    outputs: dict[str, np.ndarray]


class DataPlane:
    """Transport-agnostic inference: protocol adapters translate wire formats to and from this."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def model(self, name: str, version: int | None = None) -> ServedVersion:
        return self.repository.get(name, version)

    def acquire(self, name: str, version: int | None = None) -> Held:
        """Hold one served version for a whole request, so a hot swap drains it, not drops it."""
        return Held(self.repository.get(name, version))

    async def infer(
        self,
        served: ServedVersion,
        inputs: Any,
        disconnected: Callable[[], Awaitable[None]] | None = None,
    ) -> InferResult:
        """Run one request on a held version; `inputs` maps names to values (or rows).

        `disconnected` resolves when the client goes away: the request is then withdrawn from
        its queue, so an abandoned request costs no inference and holds no memory.
        """
        record = served.version
        arrays = coerce_inputs(record.signature, inputs)
        if served.batcher is None:
            raise RuntimeError(f"{record.ref} has no batcher")  # cannot happen once ready
        batcher = served.batcher
        # Watching for a disconnect costs a task; it pays only for a request that will wait
        # behind at least one whole batch, which is also when abandoned work would pile up.
        if disconnected is None or batcher.depth < batcher.max_batch_size:
            outputs = await batcher.submit(arrays)
        else:
            outputs = await _unless_disconnected(batcher.submit(arrays), disconnected)
        served.requests += 1
        served.rows += next(iter(arrays.values())).shape[0] if arrays else 0
        return InferResult(record, outputs)

    def readiness(self) -> tuple[bool, dict[str, str]]:
        return self.repository.readiness()


class ClientDisconnectedError(Exception):
    """The client closed the connection before its result was ready."""


async def _unless_disconnected(
    work: Awaitable[dict[str, np.ndarray]], disconnected: Callable[[], Awaitable[None]]
) -> dict[str, np.ndarray]:
    current = asyncio.current_task()
    gone = False

    def on_disconnect(_: asyncio.Future[None]) -> None:
        nonlocal gone
        gone = True
        if current is not None:
            current.cancel()  # cancels the awaited queue item, which the batcher then skips

    watcher = asyncio.ensure_future(disconnected())
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            raise ClientDisconnectedError from None
        raise
    finally:
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()

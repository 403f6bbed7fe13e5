"""The one inference path under every protocol: validate, queue, batch, run, return."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from shipyard.monitor import metrics
from shipyard.serve.repository import ModelRepository, ServedVersion
from shipyard.tensors import coerce_inputs
from shipyard.types import ModelVersion


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

    @contextmanager
    def acquire(self, name: str, version: int | None = None) -> Iterator[ServedVersion]:
        """Hold one served version for a whole request, so a hot swap drains it, not drops it."""
        served = self.repository.get(name, version)
        gauge = metrics.IN_FLIGHT.labels(served.version.name, str(served.version.version))
        served.in_flight += 1
        gauge.inc()
        try:
            yield served
        finally:
            served.in_flight -= 1
            gauge.dec()

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
        if disconnected is None:
            outputs = await served.batcher.submit(arrays)
        else:
            outputs = await _unless_disconnected(served.batcher.submit(arrays), disconnected)
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
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        raise ClientDisconnectedError
    return task.result()

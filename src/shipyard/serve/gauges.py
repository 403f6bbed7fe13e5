"""Gauges sampled off the request path: this worker's resources, its models' readiness, the
registry's disk use.

Each worker samples itself every few seconds (the scrape reaches one worker of several, which
also samples itself just before it answers), so the figures of the others are at most
`INTERVAL_S` old. The registry's size is a walk of its folder: taken less often.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from shipyard.monitor import metrics
from shipyard.monitor.resources import ProcessSampler
from shipyard.registry import Registry
from shipyard.serve.repository import ModelRepository

log = logging.getLogger("shipyard.serve")

INTERVAL_S = 5.0
DISK_INTERVAL_S = 60.0


class Gauges:
    """Samples the gauges of one worker: now (`sample`) and every INTERVAL_S while `running`."""

    def __init__(self, repository: ModelRepository, registry: Registry, worker: int) -> None:
        self._repository = repository
        self._registry = registry
        self._process = ProcessSampler(worker)
        self._disk_due = 0.0
        self._names: set[str] = set()

    def sample(self) -> None:
        self._process.sample()
        names = set(self._repository.models)
        for name in names:
            metrics.MODEL_READY.labels(name).set(1 if self._repository.status(name).ready else 0)
        for name, model in self._repository.models.items():
            for number, served in list(model.versions.items()):
                if served.engine is not None and served.ready:
                    stats = served.engine.stats()
                    labels = (name, str(number))
                    metrics.LLM_REQUESTS_RUNNING.labels(*labels).set(stats.running)
                    metrics.LLM_REQUESTS_WAITING.labels(*labels).set(stats.waiting)
                    metrics.LLM_KV_CACHE_USAGE.labels(*labels).set(stats.kv_cache_usage)
        for name in self._names - names:  # unloaded through the management API
            metrics.forget_model(name)
        self._names = names

    async def run(self) -> None:
        """Sample until cancelled; a failure is logged and the next round tries again."""
        while True:
            try:
                self.sample()
                if time.monotonic() >= self._disk_due:
                    self._disk_due = time.monotonic() + DISK_INTERVAL_S
                    metrics.REGISTRY_DISK.set(await asyncio.to_thread(self._registry.disk_bytes))
            except Exception:  # monitoring must never take the server down
                log.exception("sampling the monitoring gauges failed")
            await asyncio.sleep(INTERVAL_S)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Samples every INTERVAL_S while the block runs."""
        task = asyncio.get_running_loop().create_task(self.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

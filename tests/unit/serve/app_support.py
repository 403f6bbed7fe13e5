"""The inference server in-process: `create_app` behind `httpx.ASGITransport`, over a real registry
whose versions are served by the controllable fake runtime (`fake_runtime.py`).

ASGITransport does not run the ASGI lifespan, so `serve` enters Starlette's lifespan itself:
models load on entry and are unloaded on exit exactly as in a real server. Importable by name
from the tests in this folder (a conftest is not).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fake_runtime import WAIT_S

from shipyard.registry import Registry
from shipyard.serve.app import ShipyardApp, create_app
from shipyard.serve.repository import ModelRepository
from shipyard.settings import Settings
from shipyard.types import ModelVersion
from tiny_models import tiny_onnx

ROW = [5.1, 3.5, 1.4, 0.2]
V2_ROW = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


def v2_body(rows: np.ndarray) -> dict[str, Any]:
    """A V2 inference request of `rows` as the FP32 input `X`."""
    data = rows.astype(np.float32)
    return {
        "inputs": [
            {"name": "X", "shape": list(data.shape), "datatype": "FP32", "data": data.ravel().tolist()}
        ]
    }


@dataclass
class Home:
    """A registry home the test pushes into; each app built on it opens its own Registry, as a
    server process would."""

    path: Path
    registry: Registry

    def settings(self, **serve: Any) -> Settings:
        return Settings.load(home=self.path, serve=serve)

    def push(self, name: str, **kwargs: Any) -> ModelVersion:
        count = len(list(self.path.glob("pushed-*.onnx")))
        path = self.path / f"pushed-{count}.onnx"
        path.write_bytes(tiny_onnx(f"{name} {count}"))
        return self.registry.push(name, path, **kwargs)


@dataclass
class Served:
    app: ShipyardApp
    client: httpx.AsyncClient

    @property
    def repository(self) -> ModelRepository:
        repository: ModelRepository = self.app.state.repository
        return repository

    @property
    def loading(self) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self.app.state.loading
        return task


@asynccontextmanager
async def serve(home: Home, refs: list[str], *, wait: bool = True, **serve: Any) -> AsyncIterator[Served]:
    """An app serving `refs` from `home`, in-process; `wait`: until the first loads are done."""
    app = create_app(home.settings(**serve), refs)
    async with app.app.router.lifespan_context(app.app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as client:
            served = Served(app, client)
            if wait:
                await asyncio.wait_for(asyncio.shield(served.loading), WAIT_S)
            yield served


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Let the event loop run until `predicate()` holds; fail (never hang) after WAIT_S."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.002)

    try:
        await asyncio.wait_for(poll(), WAIT_S)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")

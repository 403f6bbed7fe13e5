"""Run `create_app` in-process for a test: its lifespan entered (httpx's ASGITransport does not
run it), its models loaded, and an `httpx.AsyncClient` that talks to it without a socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from shipyard.registry import Registry
from shipyard.serve.app import create_app
from shipyard.settings import Settings


@asynccontextmanager
async def serving(home: Path, refs: list[str], **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    loaded = Settings.load(home=home, **settings)
    app = create_app(loaded, refs, registry=Registry(settings=loaded))
    async with app.app.router.lifespan_context(app.app):
        await app.state.loading  # every model loaded, or failed
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as client:
            yield client


def run(
    home: Path, refs: list[str], body: Callable[[httpx.AsyncClient], Awaitable[None]], **settings: Any
) -> None:
    """`body(client)` on a fresh event loop against the app serving `refs`."""

    async def main() -> None:
        async with serving(home, refs, **settings) as client:
            await body(client)

    asyncio.run(main())

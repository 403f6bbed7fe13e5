"""The composition root: builds the registry, repository, dataplane, protocols and ASGI app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from shipyard.errors import NotFoundError
from shipyard.monitor import metrics
from shipyard.registry import Registry
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols._http import error_response, json_response
from shipyard.serve.protocols.management import ManagementProtocol
from shipyard.serve.protocols.openapi import build_openapi, docs_page
from shipyard.serve.protocols.sagemaker import SageMakerProtocol
from shipyard.serve.protocols.v1 import V1Protocol
from shipyard.serve.protocols.v2 import V2Protocol
from shipyard.serve.repository import ModelRepository
from shipyard.settings import Settings

log = logging.getLogger("shipyard.serve")


def create_app(
    settings: Settings,
    refs: list[str],
    *,
    registry: Registry | None = None,
    overrides: dict[str, Any] | None = None,
    vertex_routes: tuple[str | None, str | None] = (None, None),
) -> Starlette:
    """An ASGI app serving `refs`; models load in the background so the server is live at once."""
    registry = registry or Registry(settings=settings)
    repository = ModelRepository(registry, settings, overrides)
    dataplane = DataPlane(repository)
    serve = settings.serve

    async def healthz(request: Request) -> Response:
        return json_response({"live": True})

    async def readyz(request: Request) -> Response:
        ready, problems = dataplane.readiness()
        return json_response({"ready": ready, "models": problems}, 200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def openapi(request: Request) -> Response:
        return json_response(build_openapi(repository))

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_page(build_openapi(repository)))

    protocols: list[V2Protocol | V1Protocol | SageMakerProtocol | ManagementProtocol] = [
        V2Protocol(dataplane, serve),
        V1Protocol(dataplane, serve),
        SageMakerProtocol(dataplane, serve, *vertex_routes),
        ManagementProtocol(dataplane, serve),
    ]
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
    for protocol in protocols:
        routes.extend(protocol.routes())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(repository.start(refs))
        app.state.loading = loading
        try:
            yield
        finally:
            loading.cancel()
            await repository.close()
            registry.close()

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(NotFoundError(f"no route {request.method} {request.url.path}", field="path"))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        return json_response({"error": f"method {request.method} is not allowed on {request.url.path}"}, 405)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return json_response({"error": "internal server error; the server log has the details"}, 500)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
    )
    app.state.dataplane = dataplane
    app.state.repository = repository
    return app

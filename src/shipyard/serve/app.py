"""The composition root: builds the registry, repository, dataplane, protocols and ASGI app."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from shipyard.errors import MethodNotAllowedError, NotFoundError
from shipyard.monitor import metrics
from shipyard.monitor.prediction_recorder import PredictionRecorder
from shipyard.monitor.quality import QualityMonitor
from shipyard.monitor.tracing import start_tracing
from shipyard.monitor.windows import DriftMonitor
from shipyard.registry import Registry
from shipyard.serve.admin import AdminSplit
from shipyard.serve.auth import Authenticator
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.gauges import Gauges
from shipyard.serve.limits import Limits, Table
from shipyard.serve.protocols._http import PREDICTIONS, error_response, internal_error, json_response
from shipyard.serve.protocols.azure import AzureProtocol
from shipyard.serve.protocols.drift import drift_routes
from shipyard.serve.protocols.feedback import feedback_routes
from shipyard.serve.protocols.management import ManagementProtocol
from shipyard.serve.protocols.openai import OpenAIProtocol
from shipyard.serve.protocols.openai_generation import GenerationRoutes
from shipyard.serve.protocols.openapi import build_openapi, docs_page
from shipyard.serve.protocols.sagemaker import SageMakerProtocol
from shipyard.serve.protocols.sagemaker_models import MultiModelProtocol
from shipyard.serve.protocols.system_shared_memory import SystemSharedMemoryProtocol
from shipyard.serve.protocols.triton_generate import TritonGenerateRoutes
from shipyard.serve.protocols.v1 import V1Protocol
from shipyard.serve.protocols.v2 import V2Protocol
from shipyard.serve.repository import ModelRepository
from shipyard.serve.request_ids import HEADER as REQUEST_ID_HEADER
from shipyard.serve.request_ids import request_id_of
from shipyard.serve.shared_memory import SystemSharedMemory
from shipyard.settings import Settings

log = logging.getLogger("shipyard.serve")
Protocol = (
    V2Protocol
    | V1Protocol
    | OpenAIProtocol
    | GenerationRoutes
    | TritonGenerateRoutes
    | SageMakerProtocol
    | AzureProtocol
    | MultiModelProtocol
    | SystemSharedMemoryProtocol
)


def create_app(  # noqa: PLR0915 -- the composition root wires every part in one place
    settings: Settings,
    refs: list[str],
    *,
    registry: Registry | None = None,
    vertex_routes: tuple[str | None, str | None] = (None, None),
    wait_for_models: bool = False,
    limits_file: str | None = None,
    worker: int = 0,
    drift_dir: str | None = None,
) -> ShipyardApp:
    """An ASGI app serving `refs`. Models load in the background so the server is live at once,
    unless `wait_for_models` (several workers: a worker joins the port only once it can serve).
    `limits_file` is the rate-limit table the workers share, `worker` this worker's number,
    `drift_dir` where the workers share their drift windows."""
    registry = registry or Registry(settings=settings)
    # The tracer is None unless an OTLP endpoint is set; each worker process starts its own.
    drift = DriftMonitor(
        settings.drift,
        fetch_profile=lambda v: registry.resolve(v.ref).data_profile,
        share_dir=Path(drift_dir) if drift_dir else None,
        worker=worker,
    )
    repository = ModelRepository(registry, settings, start_tracing(settings.tracing, worker), drift)
    serve = settings.serve
    table = Table(limits_file, serve.workers) if limits_file else None
    dataplane = DataPlane(repository, serve, Limits(serve, table, worker))
    predictions = PredictionRecorder.create(settings, worker)
    quality = QualityMonitor(settings, dataplane.served_names)
    probes = frozenset(p for p in ("/healthz", "/readyz", "/ping", "/", vertex_routes[0]) if p)
    auth = Authenticator(registry, serve, probes)
    gauges = Gauges(repository, registry, worker)
    if serve.insecure and serve.platform != "generic":
        log.info(
            "serving without API keys: %s authenticates callers before they reach the container",
            serve.platform,
        )
    elif serve.insecure:
        log.warning(
            "serving with --insecure: no API key is required until one is created with `shipyard keys create`"
        )

    async def healthz(request: Request) -> Response:
        return json_response({"live": True})

    async def readyz(request: Request) -> Response:
        readiness = dataplane.readiness()
        body = readiness.to_dict()
        if serve.insecure:
            body["insecure"] = True
        return json_response(body, 200 if readiness.ready else 503)

    async def openapi(request: Request) -> Response:
        return json_response(build_openapi(dataplane, routes))

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_page(build_openapi(dataplane, routes)))

    sagemaker = SageMakerProtocol(dataplane, serve, *vertex_routes)
    shared_memory = SystemSharedMemory(serve.workers)  # HTTP's and gRPC's, in this process
    protocols: list[Protocol] = [
        V2Protocol(dataplane, serve, shared_memory),
        SystemSharedMemoryProtocol(shared_memory, serve),
        TritonGenerateRoutes(dataplane, settings),
        OpenAIProtocol(dataplane, serve),
        GenerationRoutes(dataplane, settings),
        V1Protocol(dataplane, serve),
        sagemaker,
        AzureProtocol(dataplane, serve),
    ]
    if serve.platform == "sagemaker":  # SageMaker is then the only caller that reaches /models
        protocols.append(MultiModelProtocol(dataplane, settings, sagemaker))
    # With an admin port, these answer only there (see AdminSplit).
    admin_routes = [
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *ManagementProtocol(dataplane, serve).routes(),
    ]
    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        *drift_routes(dataplane, drift),
        *feedback_routes(dataplane, registry, settings, quality, predictions),
    ]
    for protocol in protocols:
        routes.extend(protocol.routes())
    routes.extend(admin_routes)

    async def load_models() -> None:
        await repository.start(refs)
        # Startup objects (modules, SQLAlchemy, runtimes) live for the whole process: move them
        # out of the collector's reach, so full collections stop pausing the event loop for tens
        # of milliseconds under load (measured: p99 from ~90 ms to ~15 ms).
        gc.collect()
        gc.freeze()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(load_models())
        app.state.loading = loading
        if predictions is not None:
            predictions.start()
        sharing = asyncio.create_task(drift.sharing()) if drift.share_dir is not None else None
        if wait_for_models:
            await asyncio.shield(loading)
        try:
            async with gauges.running():
                yield
        finally:
            loading.cancel()
            if sharing is not None:
                sharing.cancel()
            await repository.close()
            shared_memory.close()
            registry.close()
            if repository.tracer is not None:  # the last spans are exported before the process ends
                await asyncio.to_thread(repository.tracer.shutdown)
            if predictions is not None:
                await asyncio.to_thread(predictions.close)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed, 500: server_error},
    )
    app.state.dataplane = dataplane
    app.state.shared_memory = shared_memory
    app.state.repository = repository
    app.state.gauges = gauges
    app.state.predictions = predictions
    app.state.quality = quality  # /metrics reports it while it lives
    hot = [route for protocol in protocols for route in getattr(protocol, "hot_routes", list)()]
    return ShipyardApp(app, hot, auth, AdminSplit.of(serve, admin_routes), predictions)


async def not_found(request: Request, exc: Exception) -> Response:
    return error_response(NotFoundError(f"no route {request.method} {request.url.path}", field="path"))


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    # Starlette's router names the route's methods in the Allow header of its exception.
    allow = getattr(exc, "headers", None) or {}
    return error_response(_not_allowed(request.method, request.url.path, allow.get("Allow", "")))


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(internal_error())


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics: OpenMetrics (with exemplars) if the scraper accepts it, else text.
    This worker's gauges are sampled first, on the event loop (they read the repository); the
    exposition runs in a thread: drift is computed at scrape time, and must not stall the loop."""
    gauges: Gauges = request.app.state.gauges
    gauges.sample()
    body, media_type = await asyncio.to_thread(metrics.exposition, request.headers.get("accept"))
    return Response(body, media_type=media_type)


class ShipyardApp:
    """Inference routes go straight to their handler; everything else through Starlette.

    Starlette's router and middleware stack cost about half of a small model's request time
    (measured under wrk), so the few POST routes that carry inference skip them. The handlers
    are the same ones Starlette routes to, with the same error mapping and metrics.
    """

    def __init__(
        self,
        app: Starlette,
        hot: list[Route],
        auth: Authenticator,
        admin: AdminSplit | None = None,
        predictions: PredictionRecorder | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self._admin = admin
        self._predictions = predictions
        self.state = app.state
        self.router = app.router
        self._hot = [(re.compile(r.path_regex.pattern), r.endpoint) for r in hot]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._admin is not None and (refusal := self._admin.refusal(scope)) is not None:
                await refusal(scope, receive, send)
                return
            # Every route, before any of them runs; `check` (a coroutine) only when `admits` cannot tell.
            refused = None if self.auth.admits(scope) else await self.auth.check(scope)
            if refused is not None:
                metrics.count_rejection(self._model_label(scope), refused.kind)
                response = error_response(refused)
                response.raw_headers.append((REQUEST_ID_HEADER, request_id_of(scope).encode()))
                await response(scope, receive, send)
                return
            if self._predictions is not None:
                scope[PREDICTIONS] = self._predictions
            path = scope["path"]
            for pattern, handler in self._hot:
                match = pattern.match(path)
                if match is None:
                    continue
                if scope["method"] == "POST":
                    scope["path_params"] = match.groupdict()
                    scope["app"] = self.app
                    response = await handler(Request(scope, receive))
                else:  # else a GET route such as /v1/models/{model} would take `NAME:predict`
                    response = error_response(_not_allowed(scope["method"], path, "POST"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _model_label(self, scope: Scope) -> str:
        """The served model a refused request named in its path, else "-" (only when refusing:
        it routes the path a second time)."""
        for route in self.router.routes:
            match, child = route.matches(scope)
            if match != Match.NONE:
                name = child.get("path_params", {}).get("model")
                if isinstance(name, str) and self.state.dataplane.is_served(name):
                    return name
                break
        return "-"


def _not_allowed(method: str, path: str, allow: str) -> MethodNotAllowedError:
    return MethodNotAllowedError(f"method {method} is not allowed on {path} (allowed: {allow})", allow=allow)

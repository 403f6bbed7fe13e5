"""TF Serving / KServe V1: `:predict` with instances or inputs → predictions."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols._http import (
    call_options,
    disconnect_watcher,
    endpoint,
    json_response,
    label,
    parse_json,
    parse_version,
    read_body,
    require_json,
)
from shipyard.serve.protocols.rows import inputs_from_body, predictions
from shipyard.settings import ServeSettings


class V1Protocol:
    def __init__(self, dataplane: DataPlane, settings: ServeSettings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        wrap = endpoint("v1", dataplane.is_served, tracer=dataplane.tracer)
        self.predict = wrap(self._predict)
        self.status = wrap(self._status)

    def hot_routes(self) -> list[Route]:
        return [
            Route("/v1/models/{model}:predict", self.predict, methods=["POST"]),
            Route("/v1/models/{model}/versions/{version}:predict", self.predict, methods=["POST"]),
        ]

    def routes(self) -> list[Route]:
        # KServe's V1 server-live check reads `status` at `/`; on Azure, `/` is Azure's probe.
        live = [Route("/", self.live, methods=["GET"])] if self.settings.platform != "azure" else []
        return [
            *live,
            *self.hot_routes(),
            Route("/v1/models/{model}", self.status, methods=["GET"]),
            Route("/v1/models/{model}/versions/{version}", self.status, methods=["GET"]),
        ]

    async def live(self, request: Request) -> Response:
        return json_response({"status": "alive"})

    async def _predict(self, request: Request) -> Response:
        require_json(request)
        name = request.path_params["model"]
        with self.dataplane.acquire(name, parse_version(request)) as served:
            label(request, name, served.version.version)
            body = parse_json(await read_body(request, self.settings.max_body_bytes))
            inputs = inputs_from_body(body, served.version.signature)
            result = await self.dataplane.infer(
                served, inputs, disconnect_watcher(request), **call_options(request)
            )
        return json_response({"predictions": predictions(result.outputs)})

    async def _status(self, request: Request) -> Response:
        name = request.path_params["model"]
        served = self.dataplane.model(name, parse_version(request))
        return json_response(
            {
                "name": name,
                "ready": served.ready,
                "model_version_status": [
                    {
                        "version": str(served.version.version),
                        "state": "AVAILABLE" if served.ready else "UNAVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                ],
            }
        )

"""SageMaker (`/ping`, `/invocations`) and Vertex AI (AIP_* routes) container contracts.

Bodies in and out are any of JSON, CSV, JSON Lines and .npy (`media.py`). SageMaker's headers:
`X-Amzn-SageMaker-Target-Model` picks the served model, `X-Amzn-SageMaker-Custom-Attributes` and
`X-Amzn-SageMaker-Inference-Id` come back on the answer as they came (the platform hands the
former to the caller, so a client can tie an answer to its request; the latter it records with
captured data).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols import media
from shipyard.serve.protocols._http import (
    BytesResponse,
    call_options,
    disconnect_watcher,
    endpoint,
    header,
    json_response,
    label,
    read_body,
)
from shipyard.settings import ServeSettings

TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"
CUSTOM_ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"
INFERENCE_ID_HEADER = "x-amzn-sagemaker-inference-id"
# InvokeEndpoint's limits on the two echoed headers (visible US-ASCII only).
_ECHOED = ((CUSTOM_ATTRIBUTES_HEADER, 1024), (INFERENCE_ID_HEADER, 64))
_LIMITS = {
    "sagemaker": "SageMaker's limit for a real-time invocation is 6 MB",
    "vertex": "Vertex AI's limit for a prediction request is 1.5 MB",
}


class SageMakerProtocol:
    def __init__(
        self,
        dataplane: DataPlane,
        settings: ServeSettings,
        health_route: str | None = None,
        predict_route: str | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.health_route = health_route
        self.predict_route = predict_route
        wrap = endpoint("sagemaker", dataplane.is_served, tracer=dataplane.tracer)
        self.invocations = wrap(self._invocations)

    def hot_routes(self) -> list[Route]:
        routes = [Route("/invocations", self.invocations, methods=["POST"])]
        if self.predict_route and self.predict_route != "/invocations":
            routes.append(Route(self.predict_route, self.invocations, methods=["POST"]))
        return routes

    def routes(self) -> list[Route]:
        routes = [
            Route("/ping", self.ping, methods=["GET"]),
            Route("/execution-parameters", self.execution_parameters, methods=["GET"]),
            *self.hot_routes(),
        ]
        if self.health_route and self.health_route != "/ping":
            routes.append(Route(self.health_route, self.ping, methods=["GET"]))
        return routes

    async def ping(self, request: Request) -> Response:
        """Ready when every model is: one pass over in-memory states, never a model call."""
        readiness = self.dataplane.readiness()
        return json_response(readiness.to_dict(), 200 if readiness.ready else 503)

    async def execution_parameters(self, request: Request) -> Response:
        """What a batch transform job should send, when its request leaves these unset: one
        request per worker at a time, many records per request, bodies within the server's limit."""
        megabytes = max(1, min(100, self.settings.max_body_bytes // (1024 * 1024)))
        return json_response(
            {
                "MaxConcurrentTransforms": self.settings.workers,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": megabytes,
            }
        )

    def _target(self, request: Request) -> str:
        models = self.dataplane.served_names()
        wanted = header(request, TARGET_MODEL_HEADER.encode())
        if wanted:
            if wanted not in models:
                raise NotFoundError(
                    f"target model {wanted!r} is not served (served: {', '.join(models)})",
                    field=TARGET_MODEL_HEADER,
                )
            return wanted
        if not models:
            raise NotFoundError("no model is served", field="model")
        return models[0]

    async def _invocations(self, request: Request) -> Response:
        return await self.invoke(request, self._target(request))

    async def invoke(self, request: Request, name: str) -> Response:
        """One inference on `name` in the request's body type, answered in the type it accepts."""
        label(request, name)
        echoed = _echoed_headers(request)
        content = media.content_media(header(request, b"content-type"))
        answer = media.accept_media(header(request, b"accept"))
        with self.dataplane.acquire(name) as served:
            label(request, name, served.version.version)
            media.require_encodable(answer, served.version.signature)
            raw = await self._body(request)
            inputs = media.decode(content, raw, served.version.signature)
            result = await self.dataplane.infer(
                served, inputs, disconnect_watcher(request), **call_options(request)
            )
        return BytesResponse(media.encode(answer, result.outputs), media_type=answer.encode(), extra=echoed)

    async def _body(self, request: Request) -> bytes:
        try:
            return await read_body(request, self.settings.max_body_bytes)
        except PayloadTooLargeError as exc:
            note = _LIMITS.get(self.settings.platform)
            if note is None:
                raise
            raise PayloadTooLargeError(f"{exc.message}; {note}", field=exc.field) from exc


def _echoed_headers(request: Request) -> list[tuple[bytes, bytes]]:
    """The SageMaker headers that come back as they came; 400 for one past the platform's limits."""
    echoed = []
    for name, limit in _ECHOED:
        value = header(request, name.encode())
        if value is None:
            continue
        if len(value) > limit or not all(" " <= c <= "~" for c in value):
            raise InvalidInputError(
                f"{name} must be at most {limit} visible ASCII characters (got {len(value)} characters)",
                field=name,
            )
        echoed.append((name.encode(), value.encode()))
    return echoed

"""SageMaker (`/ping`, `/invocations`) and Vertex AI (AIP_* routes) container contracts."""

from __future__ import annotations

import csv
import io

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InvalidInputError, NotFoundError
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols._http import (
    call_options,
    disconnect_watcher,
    endpoint,
    header,
    json_response,
    label,
    parse_json,
    read_body,
    require_json,
)
from shipyard.serve.protocols.rows import inputs_from_body, predictions
from shipyard.settings import ServeSettings

TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"


def parse_csv(body: bytes) -> list[list[float]]:
    """CSV rows of numbers (no header), as SageMaker's built-in containers accept."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError("CSV body is not UTF-8 text", field="body") from exc
    rows = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            rows.append([float(cell) for cell in row])
        except ValueError:
            raise InvalidInputError(
                f"CSV line {number} has a value that is not a number: {','.join(row)[:80]!r}",
                field="body",
            ) from None
    if not rows:
        raise InvalidInputError("CSV body has no rows", field="body")
    return rows


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
            Route("/invocations", self.invocations, methods=["POST"]),
        ]
        if self.health_route and self.health_route != "/ping":
            routes.append(Route(self.health_route, self.ping, methods=["GET"]))
        if self.predict_route and self.predict_route != "/invocations":
            routes.append(Route(self.predict_route, self.invocations, methods=["POST"]))
        return routes

    async def ping(self, request: Request) -> Response:
        readiness = self.dataplane.readiness()
        return json_response(readiness.to_dict(), 200 if readiness.ready else 503)

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
        name = self._target(request)
        label(request, name)
        media = require_json(request, "text/csv")
        with self.dataplane.acquire(name) as served:
            label(request, name, served.version.version)
            raw = await read_body(request, self.settings.max_body_bytes)
            if media == "text/csv":
                inputs = parse_csv(raw)
            else:
                inputs = inputs_from_body(parse_json(raw), served.version.signature)
            result = await self.dataplane.infer(
                served, inputs, disconnect_watcher(request), **call_options(request)
            )
        return json_response({"predictions": predictions(result.outputs)})

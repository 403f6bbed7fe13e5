"""Azure ML online endpoints: `GET /` (liveness and readiness probe) and `POST /score`, as
Azure's own inference server (`azureml-inference-server-http`) answers them for a scoring script
that returns its predictions as a list.

The bodies Azure's clients send: `{"data": rows}` (the scoring-script examples and the v1 SDK) and
`{"input_data": rows | {"columns", "index", "data"}}` (azure-ai-ml and MLflow deployments); the
V1 forms (`instances`, `inputs`) pass too. The answer is the predictions themselves, a bare list,
and an error carries `message` (what Azure's server sends) beside Shipyard's `error`.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InvalidInputError, NotFoundError, ShipyardError
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols._http import (
    BytesResponse,
    call_options,
    disconnect_watcher,
    endpoint,
    json_response,
    label,
    parse_json,
    plain_error,
    read_body,
    require_json,
)
from shipyard.serve.protocols.rows import inputs_from_body, predictions
from shipyard.settings import ServeSettings
from shipyard.types import Signature


def azure_error(exc: ShipyardError) -> dict[str, Any]:
    """Shipyard's error body with Azure's `message` key beside `error`."""
    body = plain_error(exc)
    body["message"] = body["error"]
    return body


class AzureProtocol:
    def __init__(self, dataplane: DataPlane, settings: ServeSettings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.score = endpoint("azure", dataplane.is_served, azure_error, dataplane.tracer)(self._score)

    def hot_routes(self) -> list[Route]:
        return [Route("/score", self.score, methods=["POST"])]

    def routes(self) -> list[Route]:
        # `/` is Azure's probe only on Azure; elsewhere KServe's liveness answers it (see v1.py).
        probe = [Route("/", self.probe, methods=["GET"])] if self.settings.platform == "azure" else []
        return [*probe, *self.hot_routes()]

    async def probe(self, request: Request) -> Response:
        """`Healthy` (Azure's body) once every model is loaded; 503 with the readiness until then,
        so Azure sends no traffic to a replica still loading."""
        readiness = self.dataplane.readiness()
        if readiness.ready:
            return BytesResponse(b"Healthy", media_type=b"text/plain; charset=utf-8")
        return json_response(readiness.to_dict(), 503)

    async def _score(self, request: Request) -> Response:
        require_json(request)
        models = self.dataplane.served_names()
        if not models:
            raise NotFoundError("no model is served", field="model")
        name = models[0]  # an Azure deployment serves one model; further ones answer on /v2, /v1
        label(request, name)
        with self.dataplane.acquire(name) as served:
            label(request, name, served.version.version)
            body = parse_json(await read_body(request, self.settings.max_body_bytes))
            inputs = _inputs(body, served.version.signature)
            result = await self.dataplane.infer(
                served, inputs, disconnect_watcher(request), **call_options(request)
            )
        return BytesResponse(orjson.dumps(predictions(result.outputs), option=orjson.OPT_SERIALIZE_NUMPY))


def _inputs(body: Any, signature: Signature) -> Any:
    if not isinstance(body, dict) or not ({"data", "input_data"} & body.keys()):
        return inputs_from_body(body, signature)
    key = "input_data" if "input_data" in body else "data"
    data = body[key]
    if isinstance(data, dict) and "data" in data:  # pandas "split": {"columns", "index", "data"}
        columns, data = data.get("columns"), data["data"]
        names = {t.name for t in signature.inputs}
        if isinstance(columns, list) and isinstance(data, list) and names <= set(columns):
            # Columns naming the model's inputs: each row maps them to its values.
            data = [dict(zip(columns, row, strict=False)) if isinstance(row, list) else row for row in data]
    if not isinstance(data, list) or not data:
        raise InvalidInputError(f'"{key}" must be a non-empty list of rows', field=key)
    return inputs_from_body({"instances": data}, signature)

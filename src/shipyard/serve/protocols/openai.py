"""OpenAI-compatible embeddings (`POST /v1/embeddings`, `GET /v1/models`), as the official
`openai` client calls them; errors use OpenAI's `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InvalidInputError
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols._http import (
    call_options,
    disconnect_watcher,
    endpoint,
    json_response,
    label,
    openai_error,
    parse_json,
    read_body,
    require_json,
)
from shipyard.settings import ServeSettings

MAX_INPUTS = 2048  # OpenAI's own limit on items per request


def _texts(value: Any) -> np.ndarray:
    """`input` as an object array of texts, or of token-id lists (pre-tokenized input)."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        items = [value]  # one token array
    elif isinstance(value, list):
        items = value
    else:
        raise InvalidInputError("'input' must be a string, a list of strings or token arrays", field="input")
    if not items:
        raise InvalidInputError("'input' is empty: give at least one string", field="input")
    if len(items) > MAX_INPUTS:
        raise InvalidInputError(f"'input' has {len(items)} items; at most {MAX_INPUTS}", field="input")
    for i, item in enumerate(items):
        is_tokens = isinstance(item, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in item
        )
        if not isinstance(item, str) and not (is_tokens and item):
            raise InvalidInputError(
                f"input[{i}] is {type(item).__name__}: each item must be a string or a non-empty "
                "list of token ids",
                field="input",
            )
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


class OpenAIProtocol:
    def __init__(self, dataplane: DataPlane, settings: ServeSettings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        wrap = endpoint("openai", dataplane.is_served, openai_error, dataplane.tracer)
        self.embeddings = wrap(self._embeddings)
        self.models = wrap(self._models)

    def hot_routes(self) -> list[Route]:
        return [Route("/v1/embeddings", self.embeddings, methods=["POST"])]

    def routes(self) -> list[Route]:
        return [*self.hot_routes(), Route("/v1/models", self.models, methods=["GET"])]

    async def _models(self, request: Request) -> Response:
        data = []
        created = int(time.time())
        for name in sorted(self.dataplane.served_names()):
            served = self.dataplane.default(name)
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "shipyard",
                "root": str(served.version.ref) if served else name,
                "parent": None,
            }
            if served is not None and served.engine is not None:  # vLLM's field: what the routes allow
                entry["max_model_len"] = served.engine.max_context
            data.append(entry)
        # KServe V1 clients read `models` (the names) from the same route: both kinds are served.
        return json_response({"object": "list", "data": data, "models": [m["id"] for m in data]})

    async def _embeddings(self, request: Request) -> Response:
        require_json(request)
        body = parse_json(await read_body(request, self.settings.max_body_bytes))
        if not isinstance(body, dict):
            raise InvalidInputError("request body must be a JSON object", field="body")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidInputError("'model' is required", field="model")
        label(request, name)
        if "input" not in body:
            raise InvalidInputError("'input' is required", field="input")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise InvalidInputError("'encoding_format' must be 'float' or 'base64'", field="encoding_format")
        texts = _texts(body["input"])
        with self.dataplane.acquire(name) as served:
            label(request, name, served.version.version)
            signature = served.version.signature
            if served.engine is not None:
                raise InvalidInputError(
                    f"model {name!r} is a generative language model, not an embedding model; it "
                    "answers /v1/chat/completions and /v1/completions",
                    field="model",
                )
            if served.version.extra.get("task") != "feature-extraction":
                raise InvalidInputError(
                    f"model {name!r} is not an embedding model (task "
                    f"{served.version.extra.get('task', served.version.format)!r})",
                    field="model",
                )
            _check_dimensions(body.get("dimensions"), served.version.extra)
            result = await self.dataplane.infer(
                served,
                {signature.inputs[0].name: texts},
                disconnect_watcher(request),
                **call_options(request),
            )
        outputs = result.outputs
        tokens = int(outputs["tokens"].sum()) if "tokens" in outputs else 0
        # Texts over the model's limit were cut: say which, as V1 and V2 do with their output.
        truncated = outputs["truncated"].tolist() if "truncated" in outputs else None
        data = []
        for i, row in enumerate(outputs["embedding"].astype(np.float32)):
            embedding: Any = (
                base64.b64encode(row.astype("<f4").tobytes()).decode() if encoding == "base64" else row
            )
            item = {"object": "embedding", "index": i, "embedding": embedding}
            if truncated is not None:
                item["truncated"] = bool(truncated[i])
            data.append(item)
        return json_response(
            {
                "id": f"embd-{uuid.uuid4().hex}",
                "object": "list",
                "created": int(time.time()),
                "model": name,
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _check_dimensions(value: Any, extra: dict[str, Any]) -> None:
    """`dimensions` may only restate the model's own: no model here is trained to be shortened."""
    if value is None:
        return
    native = int(extra.get("dimension", -1))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInputError("'dimensions' must be a positive integer", field="dimensions")
    if value != native:
        raise InvalidInputError(
            f"this model returns {native}-dimensional embeddings and cannot shorten them; "
            f"omit 'dimensions' or pass {native}",
            field="dimensions",
        )

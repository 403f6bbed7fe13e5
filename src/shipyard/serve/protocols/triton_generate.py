"""Triton's generate extension for generative models: `POST /v2/models/{m}[/versions/{v}]/generate`
answers one JSON object, `…/generate_stream` the same objects as Server-Sent Events.

A request is `{"text_input": "…", "parameters": {"max_tokens": 32, "temperature": 0, …}}`
(sampling fields may also sit at the top level, as Triton allows); a response is
`{"model_name", "model_version", "text_output"}`, where a streamed event carries the text that
event adds. Errors are Triton's `{"error": "…"}`, mid-stream as one last event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InvalidInputError
from shipyard.runtimes.generation import GenerationRequest
from shipyard.serve.auth import caller_id
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.generation import Choice
from shipyard.serve.protocols import generation_params as params
from shipyard.serve.protocols._http import (
    endpoint,
    json_response,
    label,
    parse_json,
    parse_version,
    plain_error,
    read_body,
    request_timeout,
    require_json,
)
from shipyard.serve.protocols._sse import EventStream, event, guarded
from shipyard.serve.protocols.openai_generation import chunk_error, unless_disconnected
from shipyard.settings import Settings

_NOT_SAMPLING = ("text_input", "parameters", "id", "stream")


class TritonGenerateRoutes:
    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        wrap = endpoint("v2", dataplane.is_served, tracer=dataplane.tracer)
        self.generate = wrap(self._generate)
        self.generate_stream = wrap(self._generate_stream)

    def hot_routes(self) -> list[Route]:
        routes = []
        for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes.append(Route(f"{base}/generate", self.generate, methods=["POST"]))
            routes.append(Route(f"{base}/generate_stream", self.generate_stream, methods=["POST"]))
        return routes

    def routes(self) -> list[Route]:
        return self.hot_routes()

    async def _generate(self, request: Request) -> Response:
        return await self._run(request, stream=False)

    async def _generate_stream(self, request: Request) -> Response:
        return await self._run(request, stream=True)

    async def _run(self, request: Request, *, stream: bool) -> Response:
        started = time.perf_counter()
        require_json(request)
        name = request.path_params["model"]
        served = self.dataplane.model(name, parse_version(request))
        label(request, name, served.version.version)
        engine = self.dataplane.engine(served, "the generate extension")
        body = parse_json(await read_body(request, self.settings.serve.max_body_bytes))
        if not isinstance(body, dict):
            raise InvalidInputError("request body must be a JSON object", field="body")
        text = body.get("text_input")
        if isinstance(text, list) and len(text) == 1:  # a batch of one, as some clients send it
            text = text[0]
        if not isinstance(text, str) or not text:
            raise InvalidInputError("'text_input' must be a non-empty string", field="text_input")
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInputError("'parameters' must be an object", field="parameters")
        fields = {**{k: v for k, v in body.items() if k not in _NOT_SAMPLING}, **parameters}
        fields.pop("stream", None)  # the route says whether it streams
        prompt = params.prompt_ids(engine, text)
        params.check_prompt_length(len(prompt), engine.max_context, "text_input")
        limits = params.Limits(engine.max_context, self.settings.generation.max_tokens_default)
        sampling = params.sampling(
            fields, params.max_tokens(fields, ("max_tokens",), len(prompt), limits), None
        )
        timeout = self.dataplane.timeout(served, request_timeout(request))
        generation = GenerationRequest(
            prompt, sampling, time.monotonic() + timeout, str(body.get("id") or "")
        )
        choices = self.dataplane.generate(served, [generation], caller=caller_id(request), started=started)
        head: dict[str, Any] = {"model_name": name, "model_version": str(served.version.version)}
        if body.get("id") is not None:
            head["id"] = body["id"]
        if not stream:
            return await unless_disconnected(request, _whole(head, choices, timeout))
        try:
            first = await anext(choices)
        except BaseException:
            await choices.aclose()
            raise
        failed = chunk_error(first[1], timeout)
        if failed is not None:  # e.g. the deadline passed in the queue: a plain status still
            await choices.aclose()
            raise failed
        return EventStream(guarded(_events(head, first, choices, timeout), choices.aclose, plain_error))


async def _whole(head: dict[str, Any], choices: AsyncGenerator[Choice], timeout_s: float) -> Response:
    texts = []
    try:
        async for _, chunk in choices:
            error = chunk_error(chunk, timeout_s)
            if error is not None:
                raise error
            texts.append(chunk.text)
    finally:
        await choices.aclose()
    return json_response({**head, "text_output": "".join(texts)})


async def _events(
    head: dict[str, Any], first: Choice, choices: AsyncGenerator[Choice], timeout_s: float
) -> AsyncIterator[bytes]:
    chunk = first[1]
    while True:
        error = chunk_error(chunk, timeout_s)
        if error is not None:
            raise error
        if chunk.text or chunk.finish_reason is not None:
            yield event({**head, "text_output": chunk.text})
        if chunk.finish_reason is not None:
            break
        chunk = (await anext(choices))[1]

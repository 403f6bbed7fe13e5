"""OpenAI's chat completions (`POST /v1/chat/completions`) and text completions
(`POST /v1/completions`) for generative models, as the official `openai` client calls them:
whole responses, or Server-Sent Events with `stream: true`; errors in OpenAI's shape, also
mid-stream (an error event, then `[DONE]`). The routes speak only to the `GenerationEngine`
protocol, so every engine answers them the same way."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import DeadlineExceededError, InvalidInputError, ModelError, ShipyardError
from shipyard.runtimes.generation import (
    GenerationChunk,
    GenerationEngine,
    GenerationRequest,
    SamplingParams,
    TokenChoice,
)
from shipyard.serve.auth import caller_id
from shipyard.serve.dataplane import ClientDisconnectedError, DataPlane
from shipyard.serve.generation import Choice
from shipyard.serve.protocols import generation_params as params
from shipyard.serve.protocols._http import (
    disconnect_watcher,
    endpoint,
    json_response,
    label,
    openai_error,
    parse_json,
    read_body,
    request_timeout,
    require_json,
)
from shipyard.serve.protocols._sse import DONE, EventStream, event, guarded
from shipyard.serve.protocols.openai_inputs import chat_messages, completion_prompts
from shipyard.serve.repository import ServedVersion
from shipyard.settings import Settings


@dataclass(slots=True)
class Generation:
    """One parsed request: what to run, and how the answer is shaped."""

    chat: bool
    model: str
    served: ServedVersion
    requests: list[GenerationRequest]
    prompt_tokens: int
    timeout_s: float
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))


def deadline_error(timeout_s: float, tokens: int) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"generation stopped at the request's deadline of {timeout_s:g} s after {tokens} tokens; "
        "ask for fewer tokens (max_tokens) or a longer deadline (X-Request-Timeout)",
        field="max_tokens",
    )


def chunk_error(chunk: GenerationChunk, timeout_s: float) -> ShipyardError | None:
    """The error a sequence's last chunk stands for, if it did not end normally."""
    if chunk.finish_reason == "deadline":
        return deadline_error(timeout_s, chunk.completion_tokens)
    if chunk.finish_reason in ("error", "cancelled"):
        return ModelError(
            chunk.error or "generation failed", public="generation failed; the server log has the details"
        )
    return None


class GenerationRoutes:
    """The OpenAI generation routes over the dataplane."""

    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        wrap = endpoint("openai", dataplane.is_served, openai_error, dataplane.tracer)
        self.chat = wrap(self._chat)
        self.completions = wrap(self._completions)

    def hot_routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]

    def routes(self) -> list[Route]:
        return self.hot_routes()

    async def _body(self, request: Request) -> dict[str, Any]:
        require_json(request)
        body = parse_json(await read_body(request, self.settings.serve.max_body_bytes))
        if not isinstance(body, dict):
            raise InvalidInputError("request body must be a JSON object", field="body")
        return body

    def _engine(
        self, request: Request, body: dict[str, Any], route: str
    ) -> tuple[ServedVersion, GenerationEngine]:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidInputError("'model' is required", field="model")
        label(request, name)
        served = self.dataplane.model(name)
        label(request, name, served.version.version)
        return served, self.dataplane.engine(served, route)

    async def _chat(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await self._body(request)
        served, engine = self._engine(request, body, "/v1/chat/completions")
        params.unsupported(body)
        messages = chat_messages(body.get("messages"))
        prompt = params.prompt_ids(engine, engine.render_chat(messages))
        params.check_prompt_length(len(prompt), engine.max_context, "messages")
        top = params.integer(body, "top_logprobs", None, 0, params.MAX_TOP_LOGPROBS)
        logprobs = params.boolean(body, "logprobs")
        if top is not None and not logprobs:
            raise InvalidInputError("'top_logprobs' needs 'logprobs': true", field="top_logprobs")
        limits = params.Limits(engine.max_context, self.settings.generation.max_tokens_default)
        tokens = params.max_tokens(body, ("max_completion_tokens", "max_tokens"), len(prompt), limits)
        sampling = params.sampling(body, tokens, (top or 0) if logprobs else None)
        generation = self._generation(request, body, True, served, [prompt], sampling)
        generation.logprobs = logprobs
        return await self._respond(request, generation, started)

    async def _completions(self, request: Request) -> Response:
        started = time.perf_counter()
        body = await self._body(request)
        served, engine = self._engine(request, body, "/v1/completions")
        params.unsupported(body)
        prompts = [params.prompt_ids(engine, p) for p in completion_prompts(body.get("prompt"))]
        for ids in prompts:
            params.check_prompt_length(len(ids), engine.max_context, "prompt")
        logprobs = params.integer(body, "logprobs", None, 0, params.MAX_COMPLETION_LOGPROBS)
        limits = params.Limits(engine.max_context, self.settings.generation.max_tokens_default)
        longest = max(len(p) for p in prompts)
        tokens = params.max_tokens(body, ("max_tokens",), longest, limits)
        sampling = params.sampling(body, tokens, logprobs)
        generation = self._generation(request, body, False, served, prompts, sampling)
        generation.logprobs = logprobs is not None
        return await self._respond(request, generation, started)

    def _generation(
        self,
        request: Request,
        body: dict[str, Any],
        chat: bool,
        served: ServedVersion,
        prompts: list[tuple[int, ...]],
        sampling: SamplingParams,
    ) -> Generation:
        n = params.integer(body, "n", 1, 1, params.MAX_N) or 1
        if n * len(prompts) > params.MAX_N:
            raise InvalidInputError(
                f"{len(prompts)} prompts x n={n} asks for {n * len(prompts)} choices; at most {params.MAX_N}",
                field="n",
            )
        stream = params.boolean(body, "stream")
        options = body.get("stream_options")
        if options is not None and (not stream or not isinstance(options, dict)):
            raise InvalidInputError(
                "'stream_options' is an object, allowed only with 'stream': true", field="stream_options"
            )
        include_usage = params.boolean(options or {}, "include_usage")
        timeout = self.dataplane.timeout(served, request_timeout(request))
        deadline = time.monotonic() + timeout
        request_id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        requests: list[GenerationRequest] = []
        for prompt in prompts:
            for j in range(n):
                seed = None if sampling.seed is None else sampling.seed + j  # n different choices
                choice = sampling if seed == sampling.seed else _with_seed(sampling, seed)
                requests.append(GenerationRequest(prompt, choice, deadline, f"{request_id}-{len(requests)}"))
        return Generation(
            chat,
            body["model"],
            served,
            requests,
            sum(len(p) for p in prompts),
            timeout,
            stream,
            include_usage,
            id=request_id,
        )

    async def _respond(self, request: Request, generation: Generation, started: float) -> Response:
        choices = self.dataplane.generate(
            generation.served, generation.requests, caller=caller_id(request), started=started
        )
        if not generation.stream:
            return await unless_disconnected(request, self._whole(generation, choices))
        # The first chunk before any byte is sent: a refusal (queue full, a schema the engine
        # cannot enforce, ids outside the vocabulary) is still an ordinary HTTP error.
        try:
            first = await anext(choices)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await choices.aclose()
            raise
        failed = None if first is None else chunk_error(first[1], generation.timeout_s)
        if failed is not None:  # e.g. the deadline passed in the queue: a plain status still
            await choices.aclose()
            raise failed
        events = guarded(self._events(generation, first, choices), choices.aclose, openai_error)
        return EventStream(_then_done(events))

    async def _whole(self, generation: Generation, choices: AsyncGenerator[Choice]) -> Response:
        outputs = [_Output() for _ in generation.requests]
        try:
            async for index, chunk in choices:
                error = chunk_error(chunk, generation.timeout_s)
                if error is not None:
                    raise error
                outputs[index].add(chunk)
        finally:
            await choices.aclose()
        body: dict[str, Any] = {
            "id": generation.id,
            "object": "chat.completion" if generation.chat else "text_completion",
            "created": generation.created,
            "model": generation.model,
            "choices": [_whole_choice(i, o, generation) for i, o in enumerate(outputs)],
            "usage": _usage(generation.prompt_tokens, outputs),
        }
        if generation.chat:
            body["system_fingerprint"] = None
        return json_response(body)

    async def _events(
        self, generation: Generation, first: Choice | None, choices: AsyncGenerator[Choice]
    ) -> AsyncIterator[bytes]:
        outputs = [_Output() for _ in generation.requests]
        shape = _chat_chunk if generation.chat else _text_chunk
        base: dict[str, Any] = {
            "id": generation.id,
            "object": "chat.completion.chunk" if generation.chat else "text_completion",
            "created": generation.created,
            "model": generation.model,
        }
        usage_field: dict[str, Any] = {"usage": None} if generation.include_usage else {}
        if generation.chat:  # the role first, in a delta of its own, for every choice
            for index in range(len(outputs)):
                delta = {"role": "assistant", "content": ""}
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                yield event({**base, "choices": [choice], **usage_field})
        pending = [first] if first is not None else []
        async for item in _chain(pending, choices):
            index, chunk = item
            error = chunk_error(chunk, generation.timeout_s)
            if error is not None:
                raise error
            outputs[index].add(chunk)
            if not chunk.text and not chunk.logprobs and chunk.finish_reason is None:
                continue  # text held back (a possible stop string): nothing to say yet
            choice = shape(index, chunk, generation.logprobs)
            yield event({**base, "choices": [choice], **usage_field})
        if generation.include_usage:
            yield event({**base, "choices": [], "usage": _usage(generation.prompt_tokens, outputs)})


async def _then_done(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """OpenAI ends every stream, an error's too, with `data: [DONE]`."""
    async for data in events:
        yield data
    yield DONE


async def _chain(first: list[Choice], rest: AsyncIterator[Choice]) -> AsyncIterator[Choice]:
    for item in first:
        yield item
    async for item in rest:
        yield item


async def unless_disconnected(request: Request, work: Any) -> Response:
    """`work`'s response, or ClientDisconnectedError (its sequences closed) if the client leaves first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(disconnect_watcher(request)())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled (server shutting down): so is the work
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnectedError
    result: Response = task.result()
    return result


@dataclass(slots=True)
class _Output:
    """One choice's text, tokens and log-probabilities as they accumulate."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenChoice] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None

    def add(self, chunk: GenerationChunk) -> None:
        self.text.append(chunk.text)
        self.logprobs.extend(chunk.logprobs)
        self.tokens = chunk.completion_tokens
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason


def _usage(prompt_tokens: int, outputs: list[_Output]) -> dict[str, int]:
    completion = sum(o.tokens for o in outputs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _whole_choice(index: int, output: _Output, generation: Generation) -> dict[str, Any]:
    text = "".join(output.text)
    if generation.chat:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": _chat_logprobs(output.logprobs) if generation.logprobs else None,
            "finish_reason": output.finish_reason,
        }
    return {
        "index": index,
        "text": text,
        "logprobs": _text_logprobs(output.logprobs, 0) if generation.logprobs else None,
        "finish_reason": output.finish_reason,
    }


def _chat_chunk(index: int, chunk: GenerationChunk, logprobs: bool) -> dict[str, Any]:
    return {
        "index": index,
        "delta": {"content": chunk.text} if chunk.text or chunk.finish_reason is None else {},
        "logprobs": _chat_logprobs(list(chunk.logprobs)) if logprobs else None,
        "finish_reason": chunk.finish_reason,
    }


def _text_chunk(index: int, chunk: GenerationChunk, logprobs: bool) -> dict[str, Any]:
    return {
        "index": index,
        "text": chunk.text,
        "logprobs": _text_logprobs(list(chunk.logprobs), 0) if logprobs else None,
        "finish_reason": chunk.finish_reason,
    }


def _chat_logprobs(choices: list[TokenChoice]) -> dict[str, Any]:
    """OpenAI's chat shape: per token its text, log-probability, UTF-8 bytes and the likeliest."""
    return {
        "content": [
            {
                "token": c.chosen.token,
                "logprob": c.chosen.logprob,
                "bytes": list(c.chosen.bytes),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in c.top
                ],
            }
            for c in choices
        ]
    }


def _text_logprobs(choices: list[TokenChoice], offset: int) -> dict[str, Any]:
    """OpenAI's legacy completions shape: parallel lists, and a {token: logprob} map per position."""
    offsets = []
    for c in choices:
        offsets.append(offset)
        offset += len(c.chosen.token)
    return {
        "tokens": [c.chosen.token for c in choices],
        "token_logprobs": [c.chosen.logprob for c in choices],
        "top_logprobs": [{t.token: t.logprob for t in c.top} for c in choices],
        "text_offset": offsets,
    }


def _with_seed(sampling: SamplingParams, seed: int | None) -> SamplingParams:
    return dataclasses.replace(sampling, seed=seed)

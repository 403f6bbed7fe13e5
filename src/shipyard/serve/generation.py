"""Generation on a served generative version, under every route that generates (OpenAI's chat
and text completions, Triton's generate): the `n` streams of one request merged, the version
held and the request's limits admitted until the last stream ends, and the token metrics
recorded with the meaning of vLLM's (README: "Serving generative models")."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from shipyard.monitor import metrics
from shipyard.runtimes.generation import GenerationChunk, GenerationEngine, GenerationRequest
from shipyard.serve.limits import Admission

Choice = tuple[int, GenerationChunk]  # the request's choice index and what its sequence added


class TokenMeter:
    """Time to first token, inter-token latency, end-to-end latency and token counts of one request."""

    def __init__(self, model: str, version: int, started: float) -> None:
        labels = (model, str(version))
        self._ttft = metrics.LLM_TIME_TO_FIRST_TOKEN.labels(*labels)
        self._itl = metrics.LLM_INTER_TOKEN_LATENCY.labels(*labels)
        self._e2e = metrics.LLM_E2E_LATENCY.labels(*labels)
        self._prompt = metrics.LLM_PROMPT_TOKENS.labels(*labels)
        self._generated = metrics.LLM_GENERATION_TOKENS.labels(*labels)
        self._started = started
        self._last: dict[int, float] = {}  # when each choice's latest token came
        self.generated = 0

    def observe(self, index: int, chunk: GenerationChunk) -> None:
        if chunk.token_ids:
            now = time.perf_counter()
            last = self._last.get(index)
            if last is None:
                if not self._last:  # the request's first token, whichever choice it is in
                    self._ttft.observe(now - self._started)
            else:
                gap = (now - last) / len(chunk.token_ids)
                for _ in chunk.token_ids:
                    self._itl.observe(gap)
            self._last[index] = now
        if chunk.finish_reason is not None:
            self.generated += chunk.completion_tokens

    def finish(self, prompt_tokens: int) -> None:
        self._prompt.inc(prompt_tokens)
        self._generated.inc(self.generated)
        if self._last:
            self._e2e.observe(time.perf_counter() - self._started)


async def metered(
    engine: GenerationEngine,
    requests: list[GenerationRequest],
    meter: TokenMeter,
    admit: Callable[[], Admission | None],
    hold: contextlib.AbstractContextManager[Any],
) -> AsyncGenerator[Choice]:
    """The merged streams of `requests`, metered. On the first step the request is admitted
    (`admit` raises when a limit refuses it); `hold` (the version in flight) and the admission
    are released when the last stream ends or the iterator is closed."""
    prompts = {r.prompt for r in requests}
    admission = admit()
    try:
        with hold:
            async for choice in merged(engine, requests):
                meter.observe(*choice)
                yield choice
    finally:
        if admission is not None:
            admission.release()
        meter.finish(sum(len(p) if isinstance(p, tuple) else 0 for p in prompts))


async def merged(engine: GenerationEngine, requests: list[GenerationRequest]) -> AsyncGenerator[Choice]:
    """Every request's chunks as they come, tagged with the request's index. The first failure
    raises; closing this iterator closes every stream (their slots free at the next step)."""
    streams = [engine.generate(r) for r in requests]
    if len(streams) == 1:  # the common case: no tasks, no queue
        try:
            async for chunk in streams[0]:
                yield 0, chunk
        finally:
            await _close(streams[0])
        return
    queue: asyncio.Queue[tuple[int, GenerationChunk | BaseException]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationChunk]) -> None:
        try:
            async for chunk in stream:
                queue.put_nowait((index, chunk))
        except Exception as exc:  # noqa: BLE001 -- handed to the consumer, which raises it
            queue.put_nowait((index, exc))
        finally:
            await _close(stream)

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield index, item
            if item.finish_reason is not None:
                running -= 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close(stream: AsyncIterator[GenerationChunk]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()

"""GGUF models on llama.cpp, with continuous batching.

One llama.cpp context holds the KV cache of every slot: one sequence id per slot, each with its
own stream of `context_per_slot` cells (so a sequence's attention never depends on its neighbours:
batched output equals one-at-a-time output token for token). A dedicated thread runs the
scheduler: each step it builds one batch with the next token of every decoding sequence plus a
chunk of a joining sequence's prompt, decodes it, samples each sequence with its own sampler chain,
and hands the new text to the caller's event loop. Finished and cancelled sequences leave the
batch at once and their KV cells are freed; waiting requests join between steps.

Joining prompts go in arrival order, one finishing per step, so the first to arrive is the first
to answer. A short prompt goes in a step of its own while the running streams wait for it, as
long as the prompt tokens processed between two of their tokens stay within one step's budget
(`prompt_chunk_tokens`); a longer one goes in chunks beside their tokens.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InsufficientStorageError, InvalidInputError, NotReadyError, QueueFullError
from shipyard.runtimes.chat_template import render_chat
from shipyard.runtimes.generation import (
    EngineStats,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    GenerativeInfo,
    ResponseFormat,
    SamplingParams,
    StopMatcher,
    TokenChoice,
    TokenLogprob,
)
from shipyard.runtimes.gguf_header import generative_info, read_header
from shipyard.runtimes.llama_model import LlamaModel
from shipyard.settings import GenerationSettings, RuntimeSettings
from shipyard.types import ModelVersion

log = logging.getLogger(__name__)

GGUF_FILE = "model.gguf"
_MIN_SHARED_PREFIX = 16  # shorter common prefixes are cheaper to recompute than to look up
_KV_BYTES_PER_VALUE = 2  # llama.cpp keeps K and V in F16 by default
# Prompts that arrive together finish their prefill in successive steps, so each emits its first
# token as soon as its own prompt is in, not when all of theirs are (on a CPU a step costs about
# its token count: one step for N prompts makes every one of them wait for all). A further prompt
# finishes in a step that already emits a first token only when it adds little to it (a quarter
# of the step's tokens, or a couple): taken, it delays everyone in the step by its tokens;
# deferred, it waits one short step.
_JOIN_FRACTION = 4
_JOIN_TOKENS = 2


@dataclass(eq=False)
class _Sequence:
    """One request from the queue to its last chunk."""

    request: GenerationRequest
    prompt: list[int]
    sampler: Any
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[GenerationChunk]
    stop: StopMatcher
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    slot: int = -1
    n_past: int = 0  # tokens in the KV cache
    pending: int | None = None  # sampled, not yet decoded (enters the cache next step)
    completion: int = 0
    reused_prefix: bool = False
    cancelled: bool = False  # set from the event loop: the caller went away
    done: bool = False


class LlamaCppEngine:
    """A GGUF model served by llama.cpp: `slots` sequences decoded together, more waiting."""

    def __init__(
        self, path: Path, version: ModelVersion, runtime: RuntimeSettings, generation: GenerationSettings
    ) -> None:
        file = Path(path) / str(version.extra.get("file", GGUF_FILE))
        label = str(version.ref)
        known = version.extra.get("generative")
        self.info = GenerativeInfo(**known) if known else generative_info(read_header(file, label))
        self._label = label
        self._settings = generation
        self._model = model = LlamaModel(file, label=label)
        lib = self._lib = model.lib
        self.max_context = min(generation.context_per_slot, model.n_ctx_train)
        self._slots = generation.slots
        self._cache_seq = generation.slots  # the sequence id that keeps a prompt prefix for reuse
        streams = self._slots + (1 if generation.prefix_cache else 0)
        if generation.kv_budget_bytes is not None:  # the budget caps every stream alike
            per_stream = generation.kv_budget_bytes // (self._kv_bytes_per_cell() * streams)
            self.max_context = min(self.max_context, max(per_stream, 64))
        cells = streams * self.max_context
        n_batch = self._slots + generation.prompt_chunk_tokens
        params = lib.llama_context_default_params()
        params.n_ctx = cells
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = streams
        threads = generation.threads or len(os.sched_getaffinity(0)) or 1  # the cores this process may use
        params.n_threads = params.n_threads_batch = threads
        # A stream per sequence: attention over its own cells only, the same numbers batched or
        # alone, and no neighbour's long prompt in its way. llama.cpp splits n_ctx evenly.
        params.kv_unified = False
        params.no_perf = True
        self._ctx = lib.llama_init_from_model(model.ptr, params)
        if not self._ctx:
            model.close()
            raise InsufficientStorageError(
                f"llama.cpp could not create a context of {cells} tokens for {label}; lower "
                "SHIPYARD_GENERATION__SLOTS, CONTEXT_PER_SLOT or KV_BUDGET_BYTES"
            )
        self.max_context = min(self.max_context, int(lib.llama_n_ctx_seq(self._ctx)))
        self._cells = self._slots * self.max_context
        self._memory = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        self._batch_size = n_batch

        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._free_slots = list(range(self._slots))
        self._cache_tokens: list[int] = []
        self._prefilled_since_decode = 0  # prompt tokens processed while running streams waited
        self._closing = False
        # What the scheduler did, for tests, benchmarks and the server's gauges.
        self.steps = 0
        self.peak_batch_sequences = 0  # the most sequences that decoded a token in one step
        self.prefix_tokens_reused = 0
        self._thread = threading.Thread(target=self._loop, name=f"llama.cpp {label}", daemon=True)
        self._thread.start()

    def _kv_bytes_per_cell(self) -> int:
        lib, m = self._lib, self._model.ptr
        head_dim = int(lib.llama_model_n_embd(m)) // max(int(lib.llama_model_n_head(m)), 1)
        layers, kv_heads = int(lib.llama_model_n_layer(m)), int(lib.llama_model_n_head_kv(m))
        return 2 * layers * kv_heads * head_dim * _KV_BYTES_PER_VALUE

    # The caller's side (the event loop).

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        return self._model.tokenize(text, special=special)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return render_chat(
            self.info.chat_template,
            messages,
            bos_token=self.info.bos_token,
            eos_token=self.info.eos_token,
            model=self._label,
        )

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if self._closing:
            raise NotReadyError(f"{self._label} is shutting down")
        prompt = self._prompt_tokens(request)
        params = request.params
        if params.max_tokens < 1:
            raise InvalidInputError("max_tokens must be at least 1", field="max_tokens")
        sampler = self._sampler(params)
        seq = _Sequence(
            request=request,
            prompt=prompt,
            sampler=sampler,
            loop=asyncio.get_running_loop(),
            out=asyncio.Queue(),
            stop=StopMatcher(params.stop),
        )
        with self._cond:
            if len(self._waiting) >= self._settings.max_queue:
                self._lib.llama_sampler_free(sampler)
                raise QueueFullError(
                    f"{self._label} has {len(self._waiting)} requests waiting for one of its "
                    f"{self._slots} slots (the most it queues); retry shortly"
                )
            self._waiting.append(seq)
            self._cond.notify()
        return _Stream(self, seq)

    def _cancel(self, seq: _Sequence) -> None:
        """The caller went away: the decoding thread frees the slot at its next step."""
        if seq.done or seq.cancelled:
            return
        seq.cancelled = True
        with self._cond:
            if seq in self._waiting:  # never started: it leaves the queue now
                self._waiting.remove(seq)
                self._lib.llama_sampler_free(seq.sampler)
                seq.done = True
            self._cond.notify()

    def _prompt_tokens(self, request: GenerationRequest) -> list[int]:
        if isinstance(request.prompt, str):
            prompt = self.tokenize(request.prompt)
        else:
            prompt = list(request.prompt)
            if any(not 0 <= t < self._model.n_vocab for t in prompt):
                raise InvalidInputError(
                    f"prompt token ids must be in 0..{self._model.n_vocab - 1}", field="prompt"
                )
        if not prompt:
            raise InvalidInputError("the prompt is empty", field="prompt")
        if len(prompt) >= self.max_context:
            raise InvalidInputError(
                f"the prompt is {len(prompt)} tokens, but {self._label} takes at most "
                f"{self.max_context - 1} here (context {self.max_context} tokens for prompt and "
                "completion together); shorten the prompt",
                field="prompt",
            )
        return prompt

    def _sampler(self, params: SamplingParams) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if params.response_format is not None:
            grammar = _grammar(params.response_format)
            constrained = lib.llama_sampler_init_grammar(self._model.vocab, grammar.encode(), b"root")
            if not constrained:
                lib.llama_sampler_free(chain)
                raise InvalidInputError(
                    "response_format could not be turned into a decoding grammar", field="response_format"
                )
            lib.llama_sampler_chain_add(chain, constrained)
        if params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
            lib.llama_sampler_chain_add(
                chain,
                lib.llama_sampler_init_penalties(
                    self.max_context, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
                ),
            )
        if params.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(params.min_p, 1))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(params.temperature))
        seed = lib.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(seed))
        return chain

    def stats(self) -> EngineStats:
        used = sum(s.n_past for s in list(self._running))
        return EngineStats(
            running=len(self._running),
            waiting=len(self._waiting),
            kv_cache_usage=min(used / self._cells, 1.0),
            slots=self._slots,
            context_per_slot=self.max_context,
        )

    def close(self) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify()
        self._thread.join()
        lib = self._lib
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._ctx)
        self._model.close()

    # The decoding thread.

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closing and not self._running and not self._waiting:
                        self._cond.wait()
                    if self._closing:
                        break
                    self._expire_waiting()
                    self._admit()
                self._drop_cancelled()
                if self._running:
                    self._step()
        except Exception as exc:  # a failed step must not leave callers waiting forever
            log.exception("llama.cpp scheduler of %s stopped", self._label)
            self._fail_all(f"the engine failed: {type(exc).__name__}")
            return
        self._fail_all(f"{self._label} was unloaded")

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for seq in [s for s in self._waiting if s.cancelled or _expired(s, now)]:
            self._waiting.remove(seq)
            self._lib.llama_sampler_free(seq.sampler)
            seq.done = True
            if not seq.cancelled:
                self._post(seq, self._final(seq, "deadline"))

    def _admit(self) -> None:
        """Move waiting requests into free slots (each slot's stream holds a whole context)."""
        while self._waiting and self._free_slots:
            seq = self._waiting.popleft()
            # The lowest free slot: llama.cpp computes a batch over the range of streams from its
            # lowest to its highest sequence id, so running sequences are kept side by side.
            seq.slot = min(self._free_slots)
            self._free_slots.remove(seq.slot)
            self._reuse_prefix(seq)
            self._running.append(seq)

    def _reuse_prefix(self, seq: _Sequence) -> None:
        """Start `seq` from the cached KV of a prompt that shares its beginning (a system prompt)."""
        cached = self._cache_tokens
        n = 0
        limit = min(len(cached), len(seq.prompt) - 1)  # the last prompt token is decoded for logits
        while n < limit and cached[n] == seq.prompt[n]:
            n += 1
        if n >= _MIN_SHARED_PREFIX:
            # Across streams llama.cpp copies whole streams (context_per_slot cells: cheap for
            # small models, far cheaper than recomputing the prefix for large ones); the unshared
            # tail is then dropped.
            lib = self._lib
            lib.llama_memory_seq_cp(self._memory, self._cache_seq, seq.slot, -1, -1)
            lib.llama_memory_seq_rm(self._memory, seq.slot, n, -1)
            seq.n_past = n
            seq.reused_prefix = True
            self.prefix_tokens_reused += n

    def _drop_cancelled(self) -> None:
        now = time.monotonic()
        for seq in list(self._running):
            if seq.cancelled:
                self._release(seq)
            elif _expired(seq, now):
                self._finish(seq, "deadline")

    def _step(self) -> None:
        lib, batch = self._lib, self._batch
        n = 0
        outputs: list[tuple[_Sequence, int]] = []

        def add(token: int, pos: int, seq: _Sequence, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.slot
            batch.logits[n] = logits
            if logits:
                outputs.append((seq, n))
            n += 1

        # In slot order: llama.cpp splits a batch over separate KV streams into sub-batches of
        # consecutive sequence ids, so out of order the same tokens cost more passes.
        decoding = sorted((s for s in self._running if s.pending is not None), key=lambda s: s.slot)
        prompts = [s for s in self._running if s.pending is None]  # in the order they arrived
        # Between two tokens of a running stream, at most one step's prompt budget is processed.
        waited = self._prefilled_since_decode if decoding else 0  # (the waiting ones may have left)
        budget = self._batch_size - len(decoding) - waited
        # While the next prompt fits in what is left of that budget, the running streams wait a
        # step and the prompt goes alone: it emits its first token without paying for theirs.
        if prompts and len(prompts[0].prompt) - prompts[0].n_past <= budget:
            decoding_now: list[_Sequence] = []
        else:
            decoding_now = decoding
        for seq in decoding_now:
            add(seq.pending or 0, seq.n_past, seq, True)
        prefilled: list[tuple[_Sequence, int]] = []
        for seq in prompts:
            remaining = len(seq.prompt) - seq.n_past
            if budget <= 0 or (prefilled and remaining > max(n // _JOIN_FRACTION, _JOIN_TOKENS)):
                break
            take = min(budget, remaining)
            for i in range(seq.n_past, seq.n_past + take):
                add(seq.prompt[i], i, seq, i == len(seq.prompt) - 1)
            prefilled.append((seq, take))
            budget -= take
        batch.n_tokens = n
        status = lib.llama_decode(self._ctx, batch)
        if status != 0:
            self._decode_failed(status, [s for s, _ in outputs] + [s for s, _ in prefilled])
            return
        self.steps += 1
        self.peak_batch_sequences = max(self.peak_batch_sequences, len(decoding_now))
        if decoding_now or not decoding:
            self._prefilled_since_decode = 0
        else:
            self._prefilled_since_decode += sum(take for _, take in prefilled)
        for seq in decoding_now:
            seq.n_past += 1
        for seq, take in prefilled:
            seq.n_past += take
            if seq.n_past == len(seq.prompt):
                self._cache_prompt(seq)
        for seq, index in outputs:
            self._sample(seq, index)

    def _cache_prompt(self, seq: _Sequence) -> None:
        """Keep this prompt's KV under the cache sequence id, for the next prompts that share its
        beginning. A prompt that already reused the cache leaves it as it is (it still serves the
        shared part), so a common system prompt costs one copy per request, not two."""
        if not self._settings.prefix_cache or seq.reused_prefix or len(seq.prompt) < _MIN_SHARED_PREFIX:
            return
        lib = self._lib
        lib.llama_memory_seq_rm(self._memory, self._cache_seq, -1, -1)
        lib.llama_memory_seq_cp(self._memory, seq.slot, self._cache_seq, -1, -1)
        self._cache_tokens = list(seq.prompt)

    def _decode_failed(self, status: int, involved: list[_Sequence]) -> None:
        message = f"llama.cpp could not decode (status {status})"
        for seq in dict.fromkeys(involved):
            self._finish(seq, "error", error=message)

    def _sample(self, seq: _Sequence, index: int) -> None:
        lib, model = self._lib, self._model
        params = seq.request.params
        token = int(lib.llama_sampler_sample(seq.sampler, self._ctx, index))
        seq.completion += 1
        choices: tuple[TokenChoice, ...] = ()
        if params.logprobs is not None:
            choices = (self._logprobs(index, token, params.logprobs),)
        if model.is_eog(token) and not params.ignore_eos:
            self._finish(seq, "stop", token=token, logprobs=choices)
            return
        text = seq.stop.feed(seq.decoder.decode(model.piece(token)))
        if seq.stop.stopped:
            self._finish(seq, "stop", token=token, text=text, logprobs=choices)
        elif seq.completion >= params.max_tokens or seq.n_past + 1 >= self.max_context:
            self._finish(seq, "length", token=token, text=text, logprobs=choices)
        else:
            seq.pending = token
            self._post(seq, self._chunk(seq, text, (token,), choices))

    def _logprobs(self, index: int, token: int, k: int) -> TokenChoice:
        pointer = self._lib.llama_get_logits_ith(self._ctx, index)
        row = np.ctypeslib.as_array(pointer, shape=(self._model.n_vocab,))
        shifted = row.astype(np.float64) - row.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        top: tuple[TokenLogprob, ...] = ()
        if k > 0:
            best = np.argpartition(-logprobs, k - 1)[:k]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            top = tuple(self._token_logprob(int(t), float(logprobs[t])) for t in best)
        return TokenChoice(chosen=self._token_logprob(token, float(logprobs[token])), top=top)

    def _token_logprob(self, token: int, logprob: float) -> TokenLogprob:
        raw = self._model.piece(token, special=True)
        return TokenLogprob(token=raw.decode("utf-8", errors="replace"), logprob=logprob, bytes=tuple(raw))

    def _chunk(
        self,
        seq: _Sequence,
        text: str,
        tokens: tuple[int, ...],
        logprobs: tuple[TokenChoice, ...] = (),
        finish: FinishReason | None = None,
        error: str | None = None,
    ) -> GenerationChunk:
        return GenerationChunk(
            text=text,
            token_ids=tokens,
            prompt_tokens=len(seq.prompt),
            completion_tokens=seq.completion,
            logprobs=logprobs,
            finish_reason=finish,
            error=error,
        )

    def _final(self, seq: _Sequence, reason: FinishReason, error: str | None = None) -> GenerationChunk:
        return self._chunk(seq, "", (), finish=reason, error=error)

    def _finish(
        self,
        seq: _Sequence,
        reason: FinishReason,
        *,
        token: int | None = None,
        text: str = "",
        logprobs: tuple[TokenChoice, ...] = (),
        error: str | None = None,
    ) -> None:
        """End `seq`: free its slot first, so a caller that sees the last chunk sees the slot free."""
        if reason != "stop" or not seq.stop.stopped:
            text += seq.stop.feed(seq.decoder.decode(b"", final=True))
            text += seq.stop.flush()
        self._release(seq)
        tokens = () if token is None else (token,)
        self._post(seq, self._chunk(seq, text, tokens, logprobs, reason, error))

    def _release(self, seq: _Sequence) -> None:
        lib = self._lib
        lib.llama_memory_seq_rm(self._memory, seq.slot, -1, -1)
        lib.llama_sampler_free(seq.sampler)
        self._running.remove(seq)
        self._free_slots.append(seq.slot)
        seq.done = True

    def _post(self, seq: _Sequence, chunk: GenerationChunk) -> None:
        try:
            seq.loop.call_soon_threadsafe(seq.out.put_nowait, chunk)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening
            seq.cancelled = True

    def _fail_all(self, message: str) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for seq in waiting:
            self._lib.llama_sampler_free(seq.sampler)
            seq.done = True
            self._post(seq, self._final(seq, "error", message))
        for seq in list(self._running):
            self._finish(seq, "error", error=message)


class _Stream(AsyncGenerator[GenerationChunk, None]):
    """The chunks of one sequence, as the caller's async generator. Closing it (or dropping it,
    or cancelling the task awaiting it) cancels the sequence, even before its first chunk (an
    `async def` generator would run no cleanup if closed before it started)."""

    def __init__(self, engine: LlamaCppEngine, seq: _Sequence) -> None:
        self._engine = engine
        self._seq = seq
        self._ended = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._ended:
            raise StopAsyncIteration
        try:
            chunk = await self._seq.out.get()
        except asyncio.CancelledError:
            self._engine._cancel(self._seq)
            raise
        if chunk.finish_reason is not None:
            self._ended = True
        return chunk

    async def asend(self, value: None) -> GenerationChunk:
        return await self.__anext__()

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> GenerationChunk:
        await self.aclose()
        raise typ if val is None else val

    async def aclose(self) -> None:
        self._ended = True
        self._engine._cancel(self._seq)

    def __del__(self) -> None:
        if not self._seq.done:
            self._seq.cancelled = True  # no lock here: the thread sees the flag at its next step


def _expired(seq: _Sequence, now: float) -> bool:
    return seq.request.deadline is not None and now >= seq.request.deadline


def _grammar(response_format: ResponseFormat) -> str:
    """A GBNF grammar that only lets the sampler produce JSON (matching the schema, if given)."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if response_format.kind == "json_object" or response_format.schema is None:
        return str(JSON_GBNF)
    try:
        return str(json_schema_to_gbnf(json.dumps(response_format.schema)))
    except Exception as exc:  # the converter raises bare exceptions for what it does not support
        raise InvalidInputError(
            f"response_format's JSON schema cannot be enforced while decoding: {exc}",
            field="response_format",
        ) from exc

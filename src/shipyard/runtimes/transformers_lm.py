"""Hugging Face causal language models on torch (CPU, or CUDA where present), behind the
`GenerationEngine` protocol.

One decode thread runs continuous batching: every step, each sequence still in its prompt
advances by one chunk of it (alone, with its own KV cache), then every sequence past its prompt
advances by one token in one forward pass over a left-padded batch of their caches
(`_kv_batch.PaddedBatch`). Requests join between steps once their prompt is done, finished ones
leave at once, up to `slots` sequences; beyond them `max_queue` wait. Each sequence samples with
its own seeded generator, so a seed gives the same tokens for the same batch; a different batch
can round differently by the last bit, as in every batching server. `response_format` masks the
logits to what the JSON grammar allows (`_grammar.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import InvalidInputError, OverloadedError
from shipyard.runtimes._grammar import JsonConstraint, grammar_tokenizer
from shipyard.runtimes._kv_batch import PaddedBatch, new_cache
from shipyard.runtimes.base import one_line
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
from shipyard.runtimes.transformers import import_transformers
from shipyard.settings import GenerationSettings, RuntimeSettings
from shipyard.types import ModelVersion

log = logging.getLogger("shipyard.runtimes")
Step = Callable[[list["_Sequence"]], set["_Sequence"]]


def generative_info(version: ModelVersion) -> GenerativeInfo:
    """What the registry recorded at push about a generative version (see packaging/causal_lm.py)."""
    recorded = version.extra.get("generative")
    if not isinstance(recorded, dict):
        raise InvalidInputError(
            f"{version.ref} records no generative model facts; push the folder again", field="model"
        )
    return GenerativeInfo(**recorded)


@dataclass(eq=False)
class _Sequence:
    """One request's state, shared by the event loop (its consumer) and the decode thread."""

    request: GenerationRequest
    prompt: list[int]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[GenerationChunk]
    generator: Any  # torch.Generator
    stop: StopMatcher
    cache: Any = None
    fed: int = 0  # prompt tokens already through the model
    generated: list[int] = field(default_factory=list)
    prefix_offset: int = 0  # incremental detokenization: text of generated[prefix:read] is out
    read_offset: int = 0
    cancelled: bool = False  # set by the consumer (iterator closed); read by the decode thread
    constraint: JsonConstraint | None = None  # response_format, enforced token by token


class TransformersLMEngine:
    """A causal LM served token by token from one decode thread (see the module docstring)."""

    def __init__(
        self, path: Path, version: ModelVersion, runtime: RuntimeSettings, generation: GenerationSettings
    ) -> None:
        transformers = import_transformers()
        import torch

        transformers.utils.logging.disable_progress_bar()
        threads = generation.threads or runtime.intra_op_threads
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        # float32 on CPU (half precision is slow there); the checkpoint's own dtype on a GPU.
        dtype = "auto" if self._device.type == "cuda" else torch.float32
        self.model = (
            transformers.AutoModelForCausalLM.from_pretrained(
                str(path), local_files_only=True, use_safetensors=True, dtype=dtype
            )
            .to(self._device)
            .eval()
        )
        self.info = generative_info(version)
        self.max_context = min(generation.context_per_slot, self.info.context_length)
        self._eos = self._eos_ids()
        # transformers 5.x renames forward's `past_key_values` to `cache` (the old name warns).
        forward = inspect.signature(self.model.forward).parameters
        self._cache_argument = "cache" if "cache" in forward else "past_key_values"
        self._bos = self.tokenizer.bos_token_id
        self._vocab = int(self.model.get_output_embeddings().weight.shape[0])
        self._slots = generation.slots
        self._max_queue = generation.max_queue
        self._chunk = generation.prompt_chunk_tokens
        self._waiting: deque[_Sequence] = deque()
        self._batch = PaddedBatch(torch, self._device)  # the sequences past their prompt
        self._running: list[_Sequence] = []
        self._wake = threading.Condition()
        self._closed = False
        self._grammar: Any = None
        self._grammar_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"generate {version.ref}", daemon=True)
        self._thread.start()

    def _eos_ids(self) -> frozenset[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return frozenset(i for i in ids if i is not None)

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        # A chat template that writes the BOS itself would get a second one added here.
        if special and len(ids) > 1 and ids[0] == ids[1] == self._bos:
            ids = ids[1:]
        return ids

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        if not self.tokenizer.chat_template:
            raise InvalidInputError(
                "this model has no chat template, so it cannot take chat messages; send a prompt "
                "to /v1/completions, or push the model with a tokenizer that has a chat_template",
                field="messages",
            )
        try:
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # the template raising (e.g. roles that must alternate), in Jinja
            raise InvalidInputError(
                f"the model's chat template refused these messages: {one_line(exc)}", field="messages"
            ) from exc
        return str(prompt)

    def stats(self) -> EngineStats:
        with self._wake:
            held = sum(s.fed + len(s.generated) for s in self._running)
            running, waiting = len(self._running), len(self._waiting)
        capacity = self._slots * self.max_context
        return EngineStats(running, waiting, held / capacity, self._slots, self.max_context)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        constraint = None
        if request.params.response_format is not None:
            # Compiling the schema, and on first use walking the vocabulary, takes milliseconds to
            # seconds: off the event loop, which serves every other request meanwhile.
            constraint = await asyncio.to_thread(self._constraint, request.params.response_format)
        sequence = self._admit(request, constraint)
        try:
            while True:
                chunk = await sequence.out.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            sequence.cancelled = True  # the decode thread drops it at its next step
            with self._wake:
                if sequence in self._waiting:
                    self._waiting.remove(sequence)

    def _constraint(self, response_format: ResponseFormat) -> JsonConstraint:
        return JsonConstraint(self._grammar_tokenizer(), response_format, self._device)

    def _admit(self, request: GenerationRequest, constraint: JsonConstraint | None) -> _Sequence:
        params = request.params
        prompt = list(request.prompt) if isinstance(request.prompt, tuple) else self.tokenize(request.prompt)
        if not prompt:
            raise InvalidInputError("the prompt is empty", field="prompt")
        if len(prompt) >= self.max_context:
            raise InvalidInputError(
                f"the prompt has {len(prompt)} tokens; this model takes at most {self.max_context} "
                "tokens of prompt and completion together",
                field="prompt",
            )
        if any(not 0 <= t < self._vocab for t in prompt):
            raise InvalidInputError(f"the prompt has token ids outside 0..{self._vocab - 1}", field="prompt")
        generator = self._torch.Generator(device=self._device)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        generator.manual_seed(seed % (1 << 64))  # torch takes 0 .. 2**64 - 1; OpenAI's seeds are signed
        sequence = _Sequence(
            request, prompt, asyncio.get_running_loop(), asyncio.Queue(), generator, StopMatcher(params.stop)
        )
        sequence.constraint = constraint
        with self._wake:
            if self._closed:
                raise OverloadedError("the model is being unloaded; retry")
            if len(self._waiting) >= self._max_queue:
                raise OverloadedError(
                    f"{len(self._waiting)} requests are waiting for this model already (setting "
                    "generation.max_queue); retry shortly",
                    field="model",
                )
            self._waiting.append(sequence)
            self._wake.notify()
        return sequence

    def _grammar_tokenizer(self) -> Any:
        """llguidance's view of the vocabulary, built on the first structured request."""
        with self._grammar_lock:
            if self._grammar is None:
                self._grammar = grammar_tokenizer(self.tokenizer, self._vocab, sorted(self._eos))
            return self._grammar

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        for sequence in [*self._waiting, *self._running]:
            self._finish(sequence, "", (), (), "error", "the model was unloaded")
        self._waiting.clear()
        self._running.clear()
        self._batch.remove(set(self._batch.rows))

    def _run(self) -> None:
        torch = self._torch
        while True:
            with self._wake:
                while not self._closed and not self._running and not self._waiting:
                    self._wake.wait()
                if self._closed:
                    return
                for sequence in [s for s in self._waiting if self._expired(s)]:
                    self._waiting.remove(sequence)  # its deadline passed in the queue
                while self._waiting and len(self._running) < self._slots:
                    self._running.append(self._waiting.popleft())
                running = list(self._running)
            with torch.inference_mode():
                finished = {s for s in running if self._expired(s)}
                for sequence in running:  # prompts: one chunk each, between decoding steps
                    prompting = sequence not in finished and sequence not in self._batch.rows
                    if prompting and self._guarded([sequence], self._prefill):
                        finished.add(sequence)
                self._batch.remove(finished)
                if self._batch.rows:
                    finished |= self._guarded(list(self._batch.rows), self._decode)
                    self._batch.remove(finished)
            if finished:
                with self._wake:
                    self._running = [s for s in self._running if s not in finished]
                for sequence in finished:
                    sequence.cache = None  # the KV cache is freed now, not when the consumer lets go

    def _guarded(self, sequences: list[_Sequence], step: Step) -> set[_Sequence]:
        """`step(sequences)`, the finished ones; if it raises, all end with an error (one failing
        forward pass must not stop the engine)."""
        try:
            return step(sequences)
        except Exception as exc:
            log.exception("generation failed for %d sequence(s)", len(sequences))
            for sequence in sequences:
                self._finish(sequence, "", (), (), "error", f"generation failed: {one_line(exc)}")
            return set(sequences)

    def _expired(self, sequence: _Sequence) -> bool:
        """Whether the consumer left or the deadline passed (then it is ended here)."""
        if sequence.cancelled:
            return True
        deadline = sequence.request.deadline
        if deadline is not None and time.monotonic() >= deadline:
            self._finish(sequence, "", (), (), "deadline")
            return True
        return False

    def _prefill(self, sequences: list[_Sequence]) -> set[_Sequence]:
        """One chunk of a sequence's prompt; at its end, its first token, and it joins the batch."""
        (sequence,) = sequences
        if sequence.cache is None:
            sequence.cache = new_cache([])
        chunk = sequence.prompt[sequence.fed : sequence.fed + self._chunk]
        input_ids = self._torch.tensor([chunk], dtype=self._torch.long, device=self._device)
        out = self.model(input_ids=input_ids, use_cache=True, **{self._cache_argument: sequence.cache})
        sequence.fed += len(chunk)
        if sequence.fed < len(sequence.prompt):
            return set()
        if self._advance(sequence, out.logits[0, -1]):
            return {sequence}
        self._batch.add(sequence, sequence.cache, sequence.fed)
        sequence.cache = None  # held by the batch now
        return set()

    def _decode(self, sequences: list[_Sequence]) -> set[_Sequence]:
        """One forward pass for every decoding sequence, then each one's next token."""
        logits = self._batch.forward(self.model, self._cache_argument, [s.generated[-1] for s in sequences])
        return {s for i, s in enumerate(sequences) if self._advance(s, logits[i])}

    def _advance(self, sequence: _Sequence, logits: Any) -> bool:
        """Pick the next token from `logits` and emit it; True once the sequence is finished."""
        params = sequence.request.params
        raw = logits.float()
        token = self._sample(sequence, raw, params)
        sequence.generated.append(token)
        if sequence.constraint is not None:
            sequence.constraint.accept(token)
        choices: tuple[TokenChoice, ...] = ()
        if params.logprobs is not None:
            choices = (self._logprobs(raw, token, params.logprobs),)
        ended = token in self._eos and not params.ignore_eos
        ended = ended or (sequence.constraint is not None and sequence.constraint.complete)
        full = len(sequence.generated) >= params.max_tokens or self._held(sequence) >= self.max_context
        # At the end, whatever the detokenizer held back (an incomplete character) goes out too.
        text = sequence.stop.feed(self._detokenize(sequence, final=ended or full))
        if sequence.stop.stopped:
            self._finish(sequence, text, (token,), choices, "stop")
            return True
        if ended or full:
            reason: FinishReason = "stop" if ended else "length"
            self._finish(sequence, text + sequence.stop.flush(), (token,), choices, reason)
            return True
        step = GenerationChunk(text, (token,), len(sequence.prompt), len(sequence.generated), choices)
        self._emit(sequence, step)
        return False

    def _held(self, sequence: _Sequence) -> int:
        return len(sequence.prompt) + len(sequence.generated)

    def _sample(self, sequence: _Sequence, logits: Any, params: SamplingParams) -> int:
        torch = self._torch
        logits = logits.clone()
        if params.repeat_penalty != 1.0:  # over prompt and completion, as transformers and vLLM do
            seen = torch.tensor(sorted(set(sequence.prompt) | set(sequence.generated)), device=self._device)
            picked = logits[seen]
            logits[seen] = torch.where(
                picked > 0, picked / params.repeat_penalty, picked * params.repeat_penalty
            )
        if sequence.generated and (params.presence_penalty or params.frequency_penalty):
            ids, counts = torch.tensor(sequence.generated, device=self._device).unique(return_counts=True)
            logits[ids] -= params.presence_penalty + params.frequency_penalty * counts.to(logits.dtype)
        if sequence.constraint is not None:
            sequence.constraint.restrict(logits)
        if params.temperature == 0:
            return int(logits.argmax())
        logits = logits / params.temperature
        if params.top_k > 0 and params.top_k < logits.numel():
            threshold = torch.topk(logits, params.top_k).values[-1]
            logits[logits < threshold] = -float("inf")
        probs = torch.softmax(logits, dim=-1)
        if params.min_p > 0:
            probs[probs < params.min_p * probs.max()] = 0
        if params.top_p < 1.0:
            ordered, order = probs.sort(descending=True)
            before = ordered.cumsum(0) - ordered  # mass of the likelier tokens: keep while < top_p
            ordered[before >= params.top_p] = 0
            probs = torch.zeros_like(probs).scatter(0, order, ordered)
        return int(torch.multinomial(probs, 1, generator=sequence.generator))

    def _logprobs(self, logits: Any, token: int, k: int) -> TokenChoice:
        """The model's own log-probabilities (before penalties and temperature), as OpenAI reports them."""
        logprobs = self._torch.log_softmax(logits, dim=-1)
        top = self._torch.topk(logprobs, k) if k else None
        alternatives = (
            ()
            if top is None
            else tuple(
                self._token_logprob(int(i), float(v)) for v, i in zip(top.values, top.indices, strict=True)
            )
        )
        return TokenChoice(self._token_logprob(token, float(logprobs[token])), alternatives)

    def _token_logprob(self, token: int, logprob: float) -> TokenLogprob:
        text = str(self.tokenizer.decode([token]))
        return TokenLogprob(text, logprob, tuple(text.encode()))

    def _detokenize(self, sequence: _Sequence, *, final: bool = False) -> str:
        """The text the newest token adds; held back while it ends in an incomplete character
        (unless it is the sequence's last)."""
        ids = sequence.generated
        decode = self.tokenizer.decode
        before = decode(ids[sequence.prefix_offset : sequence.read_offset], skip_special_tokens=True)
        after = decode(ids[sequence.prefix_offset :], skip_special_tokens=True)
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        sequence.prefix_offset, sequence.read_offset = sequence.read_offset, len(ids)
        return str(after[len(before) :])

    def _finish(
        self,
        sequence: _Sequence,
        text: str,
        token_ids: tuple[int, ...],
        choices: tuple[TokenChoice, ...],
        reason: FinishReason,
        error: str | None = None,
    ) -> None:
        chunk = GenerationChunk(
            text, token_ids, len(sequence.prompt), len(sequence.generated), choices, reason, error
        )
        self._emit(sequence, chunk)

    def _emit(self, sequence: _Sequence, chunk: GenerationChunk) -> None:
        if sequence.cancelled:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            sequence.loop.call_soon_threadsafe(sequence.out.put_nowait, chunk)

"""What a generative language model offers the server: an engine that decodes many sequences
together at the token level (continuous batching) and streams each one's text as it comes.

Two engines implement `GenerationEngine`: llama.cpp for GGUF files (`runtimes/llama_cpp.py`) and
transformers for Hugging Face causal-LM folders (`runtimes/transformers_lm.py`). The OpenAI and
Triton `generate` routes speak only to this protocol, so they never know which engine answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "deadline", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """Structured output, enforced while decoding (each engine compiles it its own way)."""

    kind: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None  # for json_schema; already checked to be a valid schema


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one sequence picks its tokens. Greedy when temperature is 0."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None  # same seed, same prompt, same settings: same tokens
    stop: tuple[str, ...] = ()  # matched on the text, across token boundaries; not returned
    logprobs: int | None = None  # None: off; k >= 0: the chosen token's and the k likeliest
    response_format: ResponseFormat | None = None
    ignore_eos: bool = False


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str | tuple[int, ...]  # text (special tokens parsed, BOS added as the model wants) or ids
    params: SamplingParams
    deadline: float | None = None  # time.monotonic() by which generation stops ("deadline")
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TokenChoice:
    """One generated token's log-probability and the likeliest alternatives at its position."""

    chosen: TokenLogprob
    top: tuple[TokenLogprob, ...]


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """What one decoding step added to a sequence. `text` may be empty while the tail could still
    become a stop string (it is released, or dropped with the stop, on a later chunk)."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int  # so far, this chunk included
    logprobs: tuple[TokenChoice, ...] = ()
    finish_reason: FinishReason | None = None  # set on the last chunk only
    error: str | None = None  # with finish_reason "error": one line, no traceback


@dataclass(frozen=True, slots=True)
class GenerativeInfo:
    """What the registry records about a generative model and the server reports."""

    architecture: str  # "llama", "qwen2", …
    parameters: int | None
    context_length: int  # the model's trained context
    quantization: str | None  # "Q4_1", "F16", …; None for full-precision safetensors
    chat_template: str | None  # Jinja template; None: the chat route refuses with the fix named
    tokenizer: str  # "gpt2" (BPE), "llama" (SentencePiece), …
    bos_token: str | None = None
    eos_token: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: int  # sequences decoding now
    waiting: int  # requests queued for a slot
    kv_cache_usage: float  # 0..1 of the KV budget in use
    slots: int
    context_per_slot: int


class GenerationEngine(Protocol):
    """One loaded generative model version, safe to call from the event loop."""

    info: GenerativeInfo
    max_context: int  # prompt + completion tokens one sequence may hold here

    def tokenize(self, text: str, *, special: bool = True) -> list[int]: ...

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt for a chat, by the model's template with the generation prompt added.
        Raises InvalidInputError when the model has no chat template."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Queue the request and stream its chunks. Raises OverloadedError when the queue is
        full. Closing the iterator (client gone) frees the slot at the next decoding step."""
        ...

    def stats(self) -> EngineStats: ...

    def close(self) -> None: ...


class StopMatcher:
    """Finds stop strings in streamed text, across token boundaries.

    `feed` returns the text that is safe to emit now: everything except a tail that is a prefix of
    some stop string. When a stop string completes, the text before it is returned and `stopped`
    becomes True; the stop string and anything after it are dropped, as OpenAI's API does.
    """

    __slots__ = ("_held", "_stops", "stopped")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        held = self._held + text
        first = min((i for i in (held.find(s) for s in self._stops) if i >= 0), default=-1)
        if first >= 0:
            self.stopped = True
            self._held = ""
            return held[:first]
        keep = 0  # the longest tail of `held` that begins some stop string
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(held)), keep, -1):
                if stop.startswith(held[-n:]):
                    keep = n
                    break
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep]

    def flush(self) -> str:
        """What is held back when the sequence ends for another reason."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

"""Structured output for the transformers engine: `response_format` (a JSON object, or JSON that
follows a schema) enforced while decoding with llguidance (the library vLLM and llama.cpp use):
before each token, the logits of every token that would break the grammar are masked out, so the
text always parses, and validates, when the grammar completes."""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, MissingDependencyError
from shipyard.runtimes.generation import ResponseFormat

# Whitespace between JSON tokens only where JSON needs none: a weak model could otherwise spend
# its whole budget on spaces and newlines inside an object that never closes.
_DEFAULTS = {"whitespace_flexible": False}


def _llguidance() -> Any:
    try:
        # Not llguidance.torch: its mask kernel goes through torch.compile, far too heavy here.
        import llguidance
        import llguidance.hf
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(
            "llguidance", "llm", "response_format on the transformers engine"
        ) from exc
    return llguidance


def grammar_tokenizer(hf_tokenizer: Any, vocab: int, eos: list[int]) -> Any:
    """The tokenizer as llguidance sees it (built once per engine: it walks the vocabulary)."""
    return _llguidance().hf.from_tokenizer(hf_tokenizer, n_vocab=vocab, eos_token=eos)


class JsonConstraint:
    """The grammar of one sequence: which tokens may come next, and whether the JSON is complete."""

    def __init__(self, tokenizer: Any, response_format: ResponseFormat, device: Any) -> None:
        llguidance = self._llguidance = _llguidance()
        schema = response_format.schema if response_format.kind == "json_schema" else {"type": "object"}
        grammar = llguidance.LLMatcher.grammar_from_json_schema(dict(schema or {}), defaults=_DEFAULTS)
        self._matcher = llguidance.LLMatcher(tokenizer, grammar)
        error = self._matcher.get_error()
        if error:
            raise InvalidInputError(
                f"the JSON schema cannot be enforced: {error[:300]}",
                field="response_format.json_schema.schema",
            )
        self._vocab = int(tokenizer.vocab_size)
        self._device = device

    def restrict(self, logits: Any) -> None:
        """Mask, in place, the logits ([vocab]) of the tokens the grammar does not allow next."""
        import torch

        bits = np.unpackbits(
            np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8), bitorder="little"
        )
        allowed = torch.from_numpy(bits[: self._vocab].astype(bool)).to(self._device)
        logits[: self._vocab][~allowed] = -float("inf")
        logits[self._vocab :] = -float("inf")  # the model's padding rows, past the tokenizer's words

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self._matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The JSON is whole: nothing may follow it."""
        return bool(self._matcher.is_stopped())

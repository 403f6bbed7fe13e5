"""The sampling fields of an OpenAI chat or text completion request (and of Triton's generate
`parameters`), checked one by one into `SamplingParams`: every refusal names its field, as
OpenAI's `param` does."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shipyard.errors import InvalidInputError, MissingDependencyError
from shipyard.runtimes.generation import GenerationEngine, ResponseFormat, SamplingParams

MAX_N = 8  # choices per request (`n`, times the prompts of a batched completion)
MAX_STOPS = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 20  # chat `top_logprobs`, as OpenAI
MAX_COMPLETION_LOGPROBS = 5  # completions `logprobs`, as OpenAI
MAX_SEED = 2**63 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    """A number field within [low, high] (null: the default)."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInputError(f"'{key}' must be a number", field=key)
    if not low <= value <= high:
        raise InvalidInputError(f"'{key}' must be between {low:g} and {high:g}, got {value:g}", field=key)
    return float(value)


def integer(body: dict[str, Any], key: str, default: int | None, low: int, high: int) -> int | None:
    """An integer field within [low, high] (null: the default)."""
    value = body.get(key)
    if value is None:
        return default
    if not _is_int(value):
        raise InvalidInputError(f"'{key}' must be an integer", field=key)
    if not low <= value <= high:
        raise InvalidInputError(f"'{key}' must be between {low} and {high}, got {value}", field=key)
    return int(value)


def boolean(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidInputError(f"'{key}' must be true or false", field=key)
    return value


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidInputError("'stop' must be a string or a list of strings", field="stop")
    if len(stops) > MAX_STOPS:
        raise InvalidInputError(f"'stop' has {len(stops)} strings; at most {MAX_STOPS}", field="stop")
    return tuple(s for s in stops if s)


def response_format(value: Any) -> ResponseFormat | None:
    """`response_format`: text (none), json_object, or json_schema with a schema that is valid."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    if kind != "json_schema":
        raise InvalidInputError(
            '\'response_format\' must be {"type": "text" | "json_object" | "json_schema"}',
            field="response_format",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name", ""), str):
        raise InvalidInputError(
            "'response_format.json_schema' must be an object with a 'name' and a 'schema'",
            field="response_format.json_schema",
        )
    schema = spec.get("schema", {})
    _check_schema(schema)
    return ResponseFormat("json_schema", schema)


def _check_schema(schema: Any) -> None:
    field = "response_format.json_schema.schema"
    if not isinstance(schema, dict):
        raise InvalidInputError("the JSON schema must be an object", field=field)
    try:
        import jsonschema_rs
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("jsonschema_rs", "llm", "checking JSON schemas") from exc
    try:
        jsonschema_rs.meta.validate(schema)
    except jsonschema_rs.ValidationError as exc:
        first = str(exc).split("\n", 1)[0]
        raise InvalidInputError(f"the JSON schema is not a valid schema: {first}", field=field) from exc
    except (jsonschema_rs.ReferencingError, ValueError) as exc:
        raise InvalidInputError(f"the JSON schema cannot be resolved: {exc}", field=field) from exc


@dataclass(frozen=True, slots=True)
class Limits:
    """What bounds the completion of one prompt: the engine's context and the default length."""

    max_context: int
    max_tokens_default: int


def max_tokens(body: dict[str, Any], keys: tuple[str, ...], prompt_tokens: int, limits: Limits) -> int:
    """The completion length: the first of `keys` given, else the default; within the context."""
    room = limits.max_context - prompt_tokens
    for key in keys:
        if body.get(key) is not None:
            asked = integer(body, key, None, 1, 2**31 - 1)
            assert asked is not None
            if asked > room:
                raise InvalidInputError(
                    f"'{key}' is {asked}, but the prompt's {prompt_tokens} tokens leave room for "
                    f"{room} more in this model's context of {limits.max_context} tokens (prompt "
                    "and completion together); lower it or shorten the prompt",
                    field=key,
                )
            return asked
    return min(limits.max_tokens_default, room)


def check_prompt_length(prompt_tokens: int, max_context: int, field: str) -> None:
    """400 naming the limit when a prompt leaves no room for a single completion token."""
    if prompt_tokens >= max_context:
        raise InvalidInputError(
            f"the prompt has {prompt_tokens} tokens; this model's context holds {max_context} tokens "
            "of prompt and completion together; shorten the prompt",
            field=field,
        )


def sampling(body: dict[str, Any], tokens: int, logprobs: int | None) -> SamplingParams:
    """The sampling settings every generation route shares (max_tokens decided by the caller)."""
    top_k = integer(body, "top_k", 0, -1, 1 << 20)
    return SamplingParams(
        max_tokens=tokens,
        temperature=number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        top_k=max(0, top_k or 0),  # -1 (vLLM's "off") and 0 both mean off
        min_p=number(body, "min_p", 0.0, 0.0, 1.0),
        repeat_penalty=number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        presence_penalty=number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        seed=integer(body, "seed", None, -MAX_SEED - 1, MAX_SEED),
        stop=_stops(body.get("stop")),
        logprobs=logprobs,
        response_format=response_format(body.get("response_format")),
        ignore_eos=boolean(body, "ignore_eos"),
    )


def unsupported(body: dict[str, Any]) -> None:
    """Fields that change what a response means and are not implemented: refused, never ignored."""
    if body.get("tools"):
        raise InvalidInputError("'tools' (function calling) is not supported by this server", field="tools")
    if body.get("echo"):
        raise InvalidInputError("'echo' is not supported by this server", field="echo")
    if body.get("suffix"):
        raise InvalidInputError("'suffix' (insertion) is not supported by this server", field="suffix")
    best_of = body.get("best_of")
    if best_of is not None and best_of != body.get("n", 1):
        raise InvalidInputError("'best_of' is not supported by this server; use 'n'", field="best_of")
    if body.get("logit_bias"):
        raise InvalidInputError("'logit_bias' is not supported by this server", field="logit_bias")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidInputError("'user' must be a string", field="user")


def prompt_ids(engine: GenerationEngine, prompt: str | list[int]) -> tuple[int, ...]:
    """A prompt's token ids (a text tokenized by the engine; ids as given)."""
    if isinstance(prompt, str):
        return tuple(engine.tokenize(prompt))
    return tuple(prompt)

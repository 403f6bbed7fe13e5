"""The inputs of OpenAI's generation requests: chat `messages` (roles, text content or text parts)
in the shape chat templates take, and a completion's `prompt` (texts or token arrays)."""

from __future__ import annotations

from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.serve.protocols.generation_params import MAX_N

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_PROMPTS = MAX_N  # prompts in one batched text completion


def _content(value: Any, index: int, role: str) -> str:
    """A message's content as text: a string, or text parts joined."""
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""
    if isinstance(value, list):
        texts = []
        for part in value:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidInputError(
                    f"messages[{index}].content has a part of type {str(kind)[:40]!r}; this model "
                    'takes text parts only ({"type": "text", "text": …})',
                    field=f"messages[{index}].content",
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise InvalidInputError(
        f"messages[{index}].content must be a string or a list of text parts",
        field=f"messages[{index}].content",
    )


def chat_messages(value: Any) -> list[dict[str, Any]]:
    """`messages` checked, in the shape chat templates take ({role, content} with text content)."""
    if not isinstance(value, list) or not value:
        raise InvalidInputError("'messages' must be a non-empty list of messages", field="messages")
    checked = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidInputError(f"messages[{i}] must be an object", field=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidInputError(
                f"messages[{i}].role is {str(role)[:40]!r}; use one of {', '.join(ROLES)}",
                field=f"messages[{i}].role",
            )
        # Chat templates know system, user and assistant; OpenAI's newer `developer` is a system message.
        entry: dict[str, Any] = {"role": "system" if role == "developer" else role}
        entry["content"] = _content(message.get("content"), i, role)
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise InvalidInputError(f"messages[{i}].name must be a string", field=f"messages[{i}].name")
            entry["name"] = name
        checked.append(entry)
    return checked


def completion_prompts(value: Any) -> list[str | list[int]]:
    """`prompt`: a string, a list of strings, a token array or a list of token arrays."""

    def tokens(item: Any) -> bool:
        return (
            isinstance(item, list)
            and bool(item)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
        )

    if isinstance(value, str):
        given: list[Any] = [value]
    elif tokens(value):
        given = [value]
    elif isinstance(value, list) and value and all(isinstance(p, str) or tokens(p) for p in value):
        given = value
    else:
        raise InvalidInputError(
            "'prompt' must be a string, a list of strings, a token array or a list of token arrays",
            field="prompt",
        )
    if len(given) > MAX_PROMPTS:
        raise InvalidInputError(f"'prompt' has {len(given)} prompts; at most {MAX_PROMPTS}", field="prompt")
    return given

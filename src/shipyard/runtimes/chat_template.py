"""A model's chat template (Jinja, as Hugging Face writes them) rendered into a prompt, in a
sandbox: a template comes with the model file and must not reach Python objects."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from shipyard.errors import InvalidInputError, MissingDependencyError


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("jinja2", "llm", "chat templates") from exc

    def raise_exception(message: str) -> None:
        raise InvalidInputError(
            f"the model's chat template refused the messages: {message}", field="messages"
        )

    def tojson(value: Any, indent: int | None = None, **_: Any) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    # The same settings as transformers' apply_chat_template, so templates render as their
    # authors tested them.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise InvalidInputError(
            f"the model's chat template does not compile: {exc}", field="messages"
        ) from exc


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    bos_token: str | None,
    eos_token: str | None,
    model: str = "the model",
) -> str:
    """The prompt for `messages` by `template`, ending with the assistant's turn opened."""
    if not template:
        raise InvalidInputError(
            f"{model} has no chat template, so it cannot take chat messages; send a plain prompt to "
            "/v1/completions, or push a GGUF whose metadata has tokenizer.chat_template",
            field="messages",
        )
    from jinja2 import TemplateError

    try:
        text: str = _compile(template).render(
            messages=messages,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
            add_generation_prompt=True,
        )
    except TemplateError as exc:
        raise InvalidInputError(
            f"the model's chat template failed on these messages: {exc}", field="messages"
        ) from exc
    return text

"""Chat templates render as transformers renders them, inside Jinja's sandbox."""

from __future__ import annotations

import pytest

from shipyard.errors import InvalidInputError
from shipyard.runtimes.chat_template import render_chat

CHATML = (
    "{{ bos_token }}{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_messages_render_with_the_generation_prompt() -> None:
    prompt = render_chat(CHATML, [{"role": "user", "content": "hi"}], bos_token="<s>", eos_token="</s>")
    assert prompt == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_a_template_can_refuse_messages_with_raise_exception() -> None:
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    with pytest.raises(InvalidInputError, match="refused the messages: first must be user"):
        render_chat(template, [{"role": "assistant", "content": "x"}], bos_token=None, eos_token=None)


def test_a_template_cannot_reach_python_internals() -> None:
    template = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(InvalidInputError, match="chat template failed"):
        render_chat(template, [], bos_token=None, eos_token=None)


def test_no_template_names_the_fix() -> None:
    with pytest.raises(InvalidInputError, match=r"has no chat template.*/v1/completions") as caught:
        render_chat(None, [], bos_token=None, eos_token=None, model="smol:1")
    assert caught.value.field == "messages"

"""Tiny transformer models for tests: one-layer BERTs over the MiniLM vocabulary, built in
milliseconds with random weights (nothing is downloaded). Importable from any test folder."""

from __future__ import annotations

from typing import Any


def tiny_bert_config(tokenizer: Any, labels: list[str] | None = None) -> Any:
    """A one-layer BERT over the MiniLM vocabulary: a few MB, loads in milliseconds."""
    from transformers import BertConfig

    extra: dict[str, Any] = {}
    if labels is not None:
        extra = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        initializer_range=0.5,  # random weights with visibly different scores per class
        **extra,
    )

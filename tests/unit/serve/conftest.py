"""Fixtures for the in-process server tests: the fake runtime and a registry home to push into."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fake_runtime
import pytest
from app_support import Home
from fake_runtime import Controls

from shipyard.registry import Registry
from shipyard.runtimes import RUNTIMES
from shipyard.settings import Settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[Controls]:
    """Every `onnx` version is served by the fake runtime for this test; the registry's files,
    digests and integrity checks stay real."""
    controls = Controls()
    fake_runtime.current = controls
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setitem(RUNTIMES, "onnx", "fake_runtime:ControlledRuntime")
            yield controls
    finally:
        controls.open_all()  # a failed test must not leave a worker thread waiting
        fake_runtime.current = None


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    with Registry(settings=Settings.load(home=tmp_path)) as registry:
        yield Home(tmp_path, registry)

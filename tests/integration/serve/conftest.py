"""Fixtures for the inference server: a registry of small models and real `shipyard serve` processes.

Helpers live in `serve_support.py` so test modules can import them (a conftest cannot be imported
by name: there are several); servers are started by `servers.py`, shared by every test folder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_support import MAX_BODY_BYTES, ServeModels, iris_onnx_bytes, multi_onnx_bytes, push_file

from servers import Server, running
from shipyard.registry import Registry
from shipyard.settings import Settings


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory: pytest.TempPathFactory) -> ServeModels:
    """A registry with iris (skops, v1 = production, v2), iris-onnx and multi."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    v1 = LogisticRegression(max_iter=1000).fit(x, y)
    v2 = LogisticRegression(C=0.01, max_iter=1000).fit(x, y)  # visibly different probabilities
    home = tmp_path_factory.mktemp("serve-home")
    files = tmp_path_factory.mktemp("serve-files")
    models = ServeModels(home, x, v1, v2, iris_onnx_bytes(v1, x), multi_onnx_bytes())
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("iris", v1, sample_input=x[:2], alias="production")
        registry.push("iris", v2, sample_input=x[:2])
        push_file(registry, "iris-onnx", models.onnx_bytes, files)
        push_file(registry, "multi", models.multi_bytes, files)
    return models


@pytest.fixture(scope="session")
def serve_launcher(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """`serve_launcher(home, refs, **kwargs)`: the `running` context manager with its own log folder."""

    def start(home: Path, refs: list[str], **kwargs: Any) -> Any:
        return running(home, refs, tmp_path_factory.mktemp("server-log"), **kwargs)

    return start


@pytest.fixture(scope="session")
def server(serve_models: ServeModels, serve_launcher: Callable[..., Any]) -> Iterator[Server]:
    """The shared server: iris@production (v1) and iris:2 (pinned), iris-onnx and multi."""
    refs = ["iris@production", "iris:2", "iris-onnx", "multi"]
    env = {"SHIPYARD_SERVE__MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    with serve_launcher(serve_models.home, refs, env=env) as srv:
        yield srv


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client

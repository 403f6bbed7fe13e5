"""Fixtures shared by every test folder: an isolated environment and small real models.

The models are trained once per session on scikit-learn's bundled iris data (no downloads) and
written to files in every format the registry accepts, so tests never depend on each other.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from hypothesis import settings as hypothesis_settings

TESTS_ROOT = Path(__file__).parent
FOLDER_MARKERS = ("unit", "integration", "e2e", "cluster")

# No example database: it would write `.hypothesis/` into the checkout. No deadline: the first
# example pays for imports and would be reported as flaky.
hypothesis_settings.register_profile("shipyard", database=None, deadline=None)
hypothesis_settings.load_profile("shipyard")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test unit, integration or e2e from the folder it lives in."""
    for item in items:
        try:
            folder = item.path.relative_to(TESTS_ROOT).parts[0]
        except ValueError:
            continue
        if folder in FOLDER_MARKERS:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads the developer's ~/.shipyard, their SHIPYARD_* or OpenTelemetry variables."""
    for name in list(os.environ):
        if name.startswith(("SHIPYARD_", "OTEL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path_factory.mktemp("default-home")))


@pytest.fixture(scope="session")
def iris() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x, y


@pytest.fixture(scope="session")
def logreg(iris: tuple[np.ndarray, np.ndarray]) -> Any:
    from sklearn.linear_model import LogisticRegression

    x, y = iris
    return LogisticRegression(max_iter=1000).fit(x, y)  # converges well before 1000: no warning


@pytest.fixture(scope="session")
def forest(iris: tuple[np.ndarray, np.ndarray]) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    x, y = iris
    return RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x, y)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def _to_onnx(model: Any, x: np.ndarray, *, zipmap: bool) -> Any:
    from skl2onnx import to_onnx

    options = None if zipmap else {id(model): {"zipmap": False}}
    return to_onnx(model, x[:1].astype(np.float32), options=options, target_opset=17)


@pytest.fixture(scope="session")
def onnx_proto(logreg: Any, iris: tuple[np.ndarray, np.ndarray]) -> Any:
    """The logistic regression as an ONNX ModelProto with plain tensor outputs (no ZipMap)."""
    return _to_onnx(logreg, iris[0], zipmap=False)


@pytest.fixture(scope="session")
def onnx_path(onnx_proto: Any, model_dir: Path) -> Path:
    path = model_dir / "iris.onnx"
    path.write_bytes(onnx_proto.SerializeToString())
    return path


@pytest.fixture(scope="session")
def onnx_zipmap_path(logreg: Any, iris: tuple[np.ndarray, np.ndarray], model_dir: Path) -> Path:
    """skl2onnx's default classifier: probabilities come out as a sequence of maps."""
    path = model_dir / "iris-zipmap.onnx"
    path.write_bytes(_to_onnx(logreg, iris[0], zipmap=True).SerializeToString())
    return path


@pytest.fixture(scope="session")
def onnx_variants(onnx_proto: Any, model_dir: Path) -> Any:
    """`make(i)`: the ONNX model with a different doc string, so each file has its own digest."""
    folder = model_dir / "variants"
    folder.mkdir()

    def make(i: int) -> Path:
        proto = type(onnx_proto)()
        proto.CopyFrom(onnx_proto)
        proto.doc_string = f"variant {i}"
        path = folder / f"variant-{i}.onnx"
        path.write_bytes(proto.SerializeToString())
        return path

    return make


@pytest.fixture(scope="session")
def skops_path(forest: Any, model_dir: Path) -> Path:
    import skops.io as sio

    path = model_dir / "forest.skops"
    sio.dump(forest, path)
    return path


@pytest.fixture(scope="session")
def pickle_path(logreg: Any, model_dir: Path) -> Path:
    path = model_dir / "logreg.pkl"
    path.write_bytes(pickle.dumps(logreg, protocol=pickle.HIGHEST_PROTOCOL))
    return path


@pytest.fixture(scope="session")
def joblib_path(logreg: Any, model_dir: Path) -> Path:
    path = model_dir / "logreg.joblib"
    joblib.dump(logreg, path)
    return path


@pytest.fixture(scope="session")
def joblib_compressed_path(logreg: Any, model_dir: Path) -> Path:
    path = model_dir / "logreg-compressed.joblib"
    joblib.dump(logreg, path, compress=3)
    return path


@pytest.fixture(scope="session")
def truncated_onnx_path(onnx_path: Path, model_dir: Path) -> Path:
    """The first half of a real ONNX file: cut inside the graph, as an interrupted copy would be."""
    data = onnx_path.read_bytes()
    path = model_dir / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    return path


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Corrupt one byte of a file in place (the middle one by default)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


@pytest.fixture
def tamper() -> Any:
    return flip_byte

"""Trust tiers: code-executing formats need `trust=True`; skops refuses types nobody vouched for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.errors import UntrustedArtifactError
from shipyard.registry import Registry

Iris = tuple[np.ndarray, np.ndarray]


def double(x: Any) -> Any:
    """A custom function: skops can only load it by importing and calling this module's code."""
    return x * 2


@pytest.fixture(scope="module")
def custom_pipeline(iris: Iris) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x, y = iris
    return make_pipeline(FunctionTransformer(double), LogisticRegression(max_iter=1000)).fit(x, y)


@pytest.fixture
def custom_skops_path(custom_pipeline: Any, tmp_path: Path) -> Path:
    import skops.io as sio

    path = tmp_path / "custom.skops"
    sio.dump(custom_pipeline, path)
    return path


@pytest.fixture(params=["pickle", "joblib", "joblib-compressed"])
def code_executing_file(request: pytest.FixtureRequest) -> tuple[str, Path]:
    fixture = {
        "pickle": "pickle_path",
        "joblib": "joblib_path",
        "joblib-compressed": "joblib_compressed_path",
    }
    fmt = "pickle" if request.param == "pickle" else "joblib"
    return fmt, request.getfixturevalue(fixture[request.param])


def _nothing_stored(registry: Registry) -> bool:
    staging = registry.store.root / ".staging"  # type: ignore[attr-defined]  # a local store
    return (
        registry.list_models() == []
        and list(registry.store.digests()) == []
        and (not staging.exists() or not any(staging.iterdir()))
    )


def test_code_executing_files_are_refused_without_trust(
    registry: Registry, code_executing_file: tuple[str, Path]
) -> None:
    fmt, path = code_executing_file
    with pytest.raises(UntrustedArtifactError) as info:
        registry.push("iris", path)
    message = info.value.message
    assert f"is a {fmt} file" in message
    assert "runs arbitrary code" in message
    assert "--trust" in message
    assert info.value.status_code == 403
    assert _nothing_stored(registry)


def test_code_executing_files_load_with_trust(
    registry: Registry, code_executing_file: tuple[str, Path], logreg: Any, iris: Iris
) -> None:
    fmt, path = code_executing_file
    version = registry.push("iris", path, trust=True)
    assert version.format == fmt
    assert version.trusted is True
    assert registry.get("iris:1").trusted is True
    assert version.signature.inputs[0].shape == (-1, 4)
    with registry.load("iris:1") as model:
        out = model.predict(iris[0][:5])
    np.testing.assert_array_equal(out["label"], logreg.predict(iris[0][:5]))


def test_safe_formats_are_not_marked_trusted_even_when_trust_is_passed(
    registry: Registry, onnx_path: Path, skops_path: Path
) -> None:
    assert registry.push("iris", onnx_path, trust=True).trusted is False
    assert registry.push("forest", skops_path, trust=True).trusted is False


def test_skops_with_a_custom_function_is_refused_listing_the_type(
    registry: Registry, custom_pipeline: Any, custom_skops_path: Path, iris: Iris
) -> None:
    type_name = f"{__name__}.double"
    with pytest.raises(UntrustedArtifactError) as info:
        registry.push("custom", custom_pipeline, sample_input=iris[0][:3])
    assert type_name in info.value.message
    assert "--trust" in info.value.message
    with pytest.raises(UntrustedArtifactError, match=type_name.replace(".", r"\.")):
        registry.push("custom", custom_skops_path)
    assert _nothing_stored(registry)


def test_skops_with_a_custom_function_is_accepted_with_trust(
    registry: Registry, custom_pipeline: Any, custom_skops_path: Path, iris: Iris
) -> None:
    version = registry.push("custom", custom_pipeline, sample_input=iris[0][:3], trust=True)
    assert version.format == "skops"
    assert version.trusted is True
    assert f"{__name__}.double" in version.extra["trusted_types"]
    from_file = registry.push("custom", custom_skops_path, trust=True)
    assert from_file.trusted is True


def test_trusted_skops_with_a_custom_function_loads(
    registry: Registry, custom_pipeline: Any, iris: Iris
) -> None:
    registry.push("custom", custom_pipeline, sample_input=iris[0][:3], trust=True)
    with registry.load("custom") as model:
        out = model.predict(iris[0][:5])
    np.testing.assert_array_equal(out["label"], custom_pipeline.predict(iris[0][:5]))

"""Pushing: every format, what each version records, version numbering, lineage, loading."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import shipyard
from shipyard.errors import InvalidInputError, NotFoundError
from shipyard.registry import Registry
from shipyard.types import ModelRef, Signature, TensorSpec

Iris = tuple[np.ndarray, np.ndarray]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def git_checkout(tmp_path: Path) -> Path:
    """A throwaway git repository with one commit."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "train.py").write_text("print('training')\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "train")
    return repo


@pytest.fixture
def outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder that git cannot place in any checkout (it stops searching at tmp_path)."""
    folder = tmp_path / "plain"
    folder.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return folder


def test_push_sklearn_estimator_stores_skops_and_records_everything(
    registry: Registry, logreg: Any, iris: Iris, outside_git: Path
) -> None:
    x, _ = iris
    before = datetime.now(UTC)
    version = registry.push(
        "iris",
        logreg,
        sample_input=x[:5],
        metrics={"accuracy": 0.97, "f1": "0.95"},
        params={"C": 1.0, "solver": "lbfgs"},
        tags={"team": "ml"},
        description="baseline",
        cwd=outside_git,
    )
    assert (version.name, version.version, version.ref) == ("iris", 1, ModelRef("iris", version=1))
    assert (version.format, version.framework) == ("skops", "scikit-learn")
    assert version.signature == Signature(
        (TensorSpec("input", "FP64", (-1, 4)),),
        (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP64", (-1, 3))),
    )
    assert version.digest.startswith("sha256:") and len(version.digest) == len("sha256:") + 64
    assert version.size == sum(f["size"] for f in version.files) > 0
    assert [f["path"] for f in version.files] == ["model.skops"]
    assert version.metrics == {"accuracy": 0.97, "f1": 0.95}
    assert version.params == {"C": "1.0", "solver": "lbfgs"}
    assert version.tags == {"team": "ml"}
    assert version.description == "baseline"
    import sklearn
    import skops

    assert version.library_versions["scikit-learn"] == sklearn.__version__
    assert version.library_versions["skops"] == skops.__version__
    assert version.library_versions["numpy"] == np.__version__
    created = datetime.fromisoformat(version.created_at)
    assert created.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC) + timedelta(seconds=1)
    assert version.created_by
    assert version.git_commit is None
    assert version.parent is None and version.recipe is None
    assert version.trusted is False
    assert version.extra["classes"] == [0, 1, 2]
    assert registry.get("iris") == version == registry.resolve("iris:1")


def test_sklearn_estimator_loads_and_predicts_like_the_original(
    registry: Registry, logreg: Any, iris: Iris
) -> None:
    x, _ = iris
    registry.push("iris", logreg, sample_input=x[:5])
    with registry.load("iris") as model:
        assert model.version.version == 1
        assert model.signature.inputs[0].name == "input"
        out = model.predict(x[:10])
        single = model.predict(x[0].tolist())
        named = model.predict({"input": x[:2].tolist()})
    np.testing.assert_array_equal(out["label"], logreg.predict(x[:10]))
    np.testing.assert_allclose(out["probabilities"], logreg.predict_proba(x[:10]))
    assert single["label"].shape == (1,)
    np.testing.assert_array_equal(named["label"], logreg.predict(x[:2]))


def test_push_fitted_estimator_without_sample_takes_signature_from_n_features_in(
    registry: Registry, forest: Any, iris: Iris
) -> None:
    version = registry.push("forest", forest)
    assert version.signature.inputs == (TensorSpec("input", "FP64", (-1, 4)),)
    assert version.signature.outputs == (
        TensorSpec("label", "INT64", (-1,)),
        TensorSpec("probabilities", "FP64", (-1, 3)),
    )
    with registry.load("forest:1") as model:
        out = model.predict(iris[0][:5])
    np.testing.assert_array_equal(out["label"], forest.predict(iris[0][:5]))


def test_push_unfitted_estimator_without_sample_is_refused(registry: Registry) -> None:
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(InvalidInputError, match="not fitted"):
        registry.push("iris", LogisticRegression())
    assert registry.list_models() == []


def test_push_onnx_file(registry: Registry, onnx_path: Path, logreg: Any, iris: Iris) -> None:
    version = registry.push("iris", onnx_path)
    assert (version.format, version.framework) == ("onnx", "onnx")
    assert version.signature == Signature(
        (TensorSpec("X", "FP32", (-1, 4)),),
        (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3))),
    )
    assert [f["path"] for f in version.files] == ["model.onnx"]
    assert version.size == onnx_path.stat().st_size
    assert set(version.library_versions) == {"onnx", "onnxruntime"}
    assert version.extra["opset"]["ai.onnx"] == 17
    assert version.trusted is False
    x = iris[0][:10]
    with registry.load("iris:1") as model:
        out = model.predict(x)  # float64 rows are cast to the model's FP32
        named = model.predict({"X": x.astype(np.float32)})
    np.testing.assert_array_equal(out["label"], logreg.predict(x))
    np.testing.assert_allclose(out["probabilities"], logreg.predict_proba(x), atol=1e-5)
    np.testing.assert_array_equal(named["label"], out["label"])


def test_push_onnx_with_zipmap_gives_a_probability_matrix(
    registry: Registry, onnx_zipmap_path: Path, logreg: Any, iris: Iris
) -> None:
    version = registry.push("iris", onnx_zipmap_path)
    assert version.signature.outputs == (
        TensorSpec("output_label", "INT64", (-1,)),
        TensorSpec("output_probability", "FP32", (-1, -1)),
    )
    x = iris[0][:6]
    with registry.load("iris") as model:
        out = model.predict(x)
    assert out["output_probability"].shape == (6, 3)
    np.testing.assert_allclose(out["output_probability"], logreg.predict_proba(x), atol=1e-5)


def test_push_skops_file(registry: Registry, skops_path: Path, forest: Any, iris: Iris) -> None:
    version = registry.push("forest", skops_path)
    assert version.format == "skops"
    assert version.trusted is False
    assert version.files[0]["path"] == "model.skops"
    with registry.load("forest") as model:
        out = model.predict(iris[0][:5])
    np.testing.assert_array_equal(out["label"], forest.predict(iris[0][:5]))


def test_versions_are_sequential_and_never_reused(registry: Registry, onnx_path: Path) -> None:
    assert [registry.push("iris", onnx_path).version for _ in range(3)] == [1, 2, 3]
    assert [v.version for v in registry.list_versions("iris")] == [3, 2, 1]
    registry.remove("iris:3")
    assert registry.push("iris", onnx_path).version == 4
    for number in (1, 2, 4):
        registry.remove(f"iris:{number}")
    assert registry.push("iris", onnx_path).version == 5
    assert registry.push("other", onnx_path).version == 1  # numbering is per name
    assert [v.version for v in registry.list_versions("iris")] == [5]


def test_identical_content_is_stored_once(registry: Registry, onnx_path: Path) -> None:
    first = registry.push("iris", onnx_path)
    second = registry.push("copy", onnx_path)
    assert first.digest == second.digest
    assert list(registry.store.digests()) == [first.digest]
    registry.remove("copy:1")
    registry.gc(grace_s=0)
    assert registry.verify("iris:1")[0][1] == []  # still referenced by iris:1


def test_list_models_summarises_each_name(registry: Registry, onnx_path: Path, skops_path: Path) -> None:
    registry.push("iris", onnx_path)
    registry.push("iris", onnx_path, alias="production")
    registry.push("forest", skops_path)
    summary = {m["name"]: m for m in registry.list_models()}
    assert list(summary) == ["forest", "iris"]
    assert (summary["iris"]["latest"], summary["iris"]["versions"]) == (2, 2)
    assert summary["iris"]["aliases"] == {"production": 2}
    assert summary["forest"]["aliases"] == {}


def test_git_commit_of_the_working_directory(
    registry: Registry, onnx_path: Path, git_checkout: Path, outside_git: Path
) -> None:
    head = _git(git_checkout, "rev-parse", "HEAD")
    clean = registry.push("iris", onnx_path, cwd=git_checkout)
    assert clean.git_commit == head and len(head) == 40
    assert "git_dirty" not in clean.extra
    (git_checkout / "train.py").write_text("print('changed')\n")
    dirty = registry.push("iris", onnx_path, cwd=git_checkout)
    assert dirty.git_commit == head
    assert dirty.extra["git_dirty"] is True
    assert registry.push("iris", onnx_path, cwd=outside_git).git_commit is None


def test_parent_and_recipe_record_lineage(registry: Registry, onnx_path: Path, skops_path: Path) -> None:
    registry.push("iris", skops_path, alias="production")
    recipe = {"op": "convert", "to": "onnx", "opset": 17, "steps": ["a", "b"]}
    child = registry.push("iris", onnx_path, parent="iris@production", recipe=recipe)
    assert child.parent == "iris:1"
    assert child.recipe == recipe
    grandchild = registry.push("iris-small", onnx_path, parent=ModelRef("iris", version=2))
    assert grandchild.parent == "iris:2"
    assert registry.get("iris-small").parent == "iris:2"


def test_unknown_parent_is_refused_and_nothing_is_stored(registry: Registry, onnx_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no model named 'ghost'"):
        registry.push("iris", onnx_path, parent="ghost:1")
    assert registry.list_models() == []
    assert list(registry.store.digests()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Iris"}, "invalid model name 'Iris'"),
        ({"name": "x" * 65}, "invalid model name"),
        ({"alias": "Prod"}, "invalid alias 'Prod'"),
        ({"metrics": {"accuracy": "high"}}, "metric 'accuracy' must be a number"),
        ({"metrics": {"loss": float("nan")}}, "metric 'loss' must be finite"),
        ({"params": {"": 1}}, "params names must be non-empty"),
        ({"model": {"weights": [1, 2]}}, "cannot push a builtins.dict"),
    ],
    ids=["name-case", "name-length", "alias", "metric-text", "metric-nan", "param-name", "not-a-model"],
)
def test_bad_push_arguments_are_refused_before_anything_is_stored(
    registry: Registry, onnx_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"name": "iris", "model": onnx_path, **kwargs}
    with pytest.raises(InvalidInputError, match=message):
        registry.push(args.pop("name"), args.pop("model"), **args)
    assert registry.list_models() == []
    assert list(registry.store.digests()) == []


def test_module_level_push_and_load_use_the_default_home(
    tmp_path: Path, onnx_path: Path, monkeypatch: pytest.MonkeyPatch, iris: Iris
) -> None:
    home = tmp_path / "home"
    version = shipyard.push("iris", onnx_path, home=home, alias="production")
    assert version.aliases == ("production",)
    assert (home / "registry.db").is_file()
    monkeypatch.setenv("SHIPYARD_HOME", str(home))
    with shipyard.load("iris@production") as model:
        assert isinstance(model, shipyard.Model)
        assert model.version == version
        assert model.predict(iris[0][:3])["label"].shape == (3,)

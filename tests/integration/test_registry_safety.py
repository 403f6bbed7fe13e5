"""Crafted artifacts are refused at push with one line and no side effect: skops files naming
classes that scikit-learn only re-exports, trees whose indices point outside their arrays, and
folders with links or paths that leave the folder."""

from __future__ import annotations

import importlib
import inspect
import io
import json
import os
import pkgutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.errors import InvalidInputError, ShipyardError, UntrustedArtifactError
from shipyard.registry import Registry

Iris = tuple[np.ndarray, np.ndarray]


def _state(registry: Registry) -> tuple[list[Any], list[str]]:
    """Everything a refused push must leave as it was: the versions and the stored files."""
    root = registry.store.root  # type: ignore[attr-defined]  # a local store
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []
    versions = [
        (v.name, v.version, v.digest)
        for m in registry.list_models()
        for v in registry.list_versions(m["name"])
    ]
    return versions, files


def _refused(registry: Registry, model: Any, error: type[ShipyardError] = ShipyardError, **kw: Any) -> str:
    before = _state(registry)
    with pytest.raises(error) as info:
        registry.push("victim", model, **kw)
    assert _state(registry) == before
    message = info.value.message
    assert "\n" not in message
    return message


@pytest.fixture
def baseline(registry: Registry, logreg: Any, iris: Iris) -> Registry:
    """A registry that already holds a version, so 'unchanged' is not trivially 'empty'."""
    registry.push("victim", logreg, sample_input=iris[0][:2])
    return registry


def _json_node(value: Any) -> dict[str, Any]:
    return {
        "__class__": type(value).__name__,
        "__module__": "builtins",
        "__loader__": "JsonNode",
        "content": json.dumps(value),
        "is_json": True,
    }


def _tuple_node(*values: Any) -> dict[str, Any]:
    return {
        "__class__": "tuple",
        "__module__": "builtins",
        "__loader__": "TupleNode",
        "content": [_tuple_node(*v) if isinstance(v, tuple) else _json_node(v) for v in values],
    }


def _with_node(skops_file: Path, target: Path, node: dict[str, Any]) -> Path:
    """A copy of a real skops file whose estimator carries one extra attribute, `node`."""
    with zipfile.ZipFile(skops_file) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    schema = json.loads(entries["schema.json"])
    schema["content"]["content"]["payload_"] = node
    entries["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(target, "w") as zout:
        for name, data in entries.items():
            zout.writestr(name, data)
    return target


@pytest.fixture(scope="module")
def logreg_skops(logreg: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import skops.io as sio

    path = tmp_path_factory.mktemp("skops") / "logreg.skops"
    sio.dump(logreg, path)
    return path


@pytest.fixture(scope="module")
def reexports() -> list[tuple[str, str]]:
    """(module, name) of every class reachable under a sklearn module but defined elsewhere."""
    found: dict[str, tuple[str, str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sklearn

        for info in pkgutil.walk_packages(sklearn.__path__, "sklearn."):
            if ".tests" in info.name or "conftest" in info.name:
                continue
            try:
                module = importlib.import_module(info.name)
            except Exception:  # optional backends (cupy, dask, …) that are not installed
                continue
            for attr, obj in vars(module).items():
                if inspect.isclass(obj) and not (obj.__module__ or "").startswith("sklearn"):
                    found.setdefault(f"{obj.__module__}.{obj.__qualname__}", (info.name, attr))
    assert "numpy.memmap" in found
    return sorted(found.values())


def test_a_reexported_file_writer_is_refused_and_writes_nothing(
    baseline: Registry, logreg_skops: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    node = {
        "__class__": "memmap",
        "__module__": "sklearn.externals.array_api_compat.numpy",
        "__loader__": "ConstructorFromReduceNode",
        "content": _tuple_node(str(canary), "uint8", "w+", 0, (16,)),
    }
    crafted = _with_node(logreg_skops, tmp_path / "memmap.skops", node)

    message = _refused(baseline, crafted, UntrustedArtifactError)

    assert "sklearn.externals.array_api_compat.numpy.memmap" in message
    assert "--trust" in message
    assert not canary.exists()


def test_every_reexported_class_is_refused_without_trust(
    baseline: Registry, logreg_skops: Path, reexports: list[tuple[str, str]], tmp_path: Path
) -> None:
    before = _state(baseline)
    accepted = []
    for module, name in reexports:
        node = {"__class__": name, "__module__": module, "__loader__": "ObjectNode"}
        crafted = _with_node(logreg_skops, tmp_path / "crafted.skops", node)
        try:
            baseline.push("victim", crafted)
        except UntrustedArtifactError as exc:
            assert f"{module}.{name}" in exc.message and "--trust" in exc.message
        else:
            accepted.append(f"{module}.{name}")
    assert accepted == []
    assert _state(baseline) == before


def test_the_cli_refuses_a_reexported_class_with_the_untrusted_exit_code(
    registry_env: dict[str, str], logreg_skops: Path, tmp_path: Path
) -> None:
    node = {
        "__class__": "memmap",
        "__module__": "sklearn.externals.array_api_compat.numpy",
        "__loader__": "ObjectNode",
    }
    crafted = _with_node(logreg_skops, tmp_path / "memmap.skops", node)
    done = subprocess.run(
        [sys.executable, "-c", "from shipyard.cli.main import run; run()", "push", "victim", str(crafted)],
        env=registry_env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == UntrustedArtifactError.exit_code
    assert "Traceback" not in done.stderr
    assert "memmap" in done.stdout + done.stderr


def _patched_tree(skops_file: Path, target: Path, patch: Any) -> Path:
    """A copy of a skops DecisionTree file with its node array changed by `patch`."""
    with zipfile.ZipFile(skops_file) as zin:
        entries = {name: zin.read(name) for name in zin.namelist()}
    schema = json.loads(entries["schema.json"])
    tree = schema["content"]["content"]["tree_"]
    node_file = tree["content"]["content"]["nodes"]["file"]
    nodes = np.load(io.BytesIO(entries[node_file]), allow_pickle=False)
    patch(nodes)
    buffer = io.BytesIO()
    np.save(buffer, nodes, allow_pickle=False)
    entries[node_file] = buffer.getvalue()
    with zipfile.ZipFile(target, "w") as zout:
        for name, data in entries.items():
            zout.writestr(name, data)
    return target


@pytest.fixture(scope="module")
def tree_skops(iris: Iris, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import skops.io as sio
    from sklearn.tree import DecisionTreeClassifier

    path = tmp_path_factory.mktemp("tree") / "tree.skops"
    sio.dump(DecisionTreeClassifier(max_depth=3, random_state=0).fit(*iris), path)
    return path


def _child_far_away(nodes: np.ndarray) -> None:
    nodes["left_child"][0] = nodes["right_child"][0] = 1 << 30


def _child_loops_back(nodes: np.ndarray) -> None:
    nodes["right_child"][nodes["left_child"][0]] = 0
    nodes["left_child"][nodes["left_child"][0]] = 0


def _feature_out_of_range(nodes: np.ndarray) -> None:
    nodes["feature"][0] = 4_000


@pytest.mark.parametrize("patch", [_child_far_away, _child_loops_back, _feature_out_of_range])
def test_a_tree_with_indices_out_of_range_is_refused(
    baseline: Registry, tree_skops: Path, tmp_path: Path, patch: Any
) -> None:
    crafted = _patched_tree(tree_skops, tmp_path / "crafted.skops", patch)

    message = _refused(baseline, crafted, InvalidInputError)

    assert "tree_ is malformed" in message
    assert "could crash" in message


def test_the_crafted_tree_does_crash_scikit_learn(tree_skops: Path, tmp_path: Path) -> None:
    """Why the check exists: the same file, loaded by skops with the tree trusted, kills the
    process that predicts with it (run in a child, so pytest survives)."""
    crafted = _patched_tree(tree_skops, tmp_path / "crafted.skops", _child_far_away)
    script = (
        "import sys, numpy as np, skops.io as sio\n"
        "m = sio.load(sys.argv[1], trusted=['sklearn.tree._tree.Tree'])\n"
        "m.predict(np.ones((64, 4)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(crafted)], check=False, capture_output=True, timeout=120
    )
    assert done.returncode != 0


def test_real_tree_models_still_push_and_predict(registry: Registry, iris: Iris, tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.tree import DecisionTreeClassifier

    x, y = iris
    models = {
        "tree": DecisionTreeClassifier(random_state=0),
        "forest": RandomForestClassifier(n_estimators=5, random_state=0),
        "boosting": GradientBoostingClassifier(n_estimators=5, random_state=0),
        "hist-boosting": HistGradientBoostingClassifier(max_iter=5, random_state=0),
    }
    for name, model in models.items():
        model.fit(x, y)
        path = tmp_path / f"{name}.skops"
        sio.dump(model, path)
        version = registry.push(name, path)
        assert not version.trusted
        loaded = registry.load(f"{name}:{version.version}")
        out = loaded.predict({"input": x[:10]})
        np.testing.assert_array_equal(out["label"], model.predict(x[:10]))


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 32}))
    return folder


def test_a_link_to_a_file_outside_the_folder_is_refused(
    baseline: Registry, hf_folder: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (hf_folder / "vocab.txt").symlink_to(secret)

    message = _refused(baseline, hf_folder, InvalidInputError)

    assert "symbolic link 'vocab.txt'" in message
    assert "cp -L" in message


def test_a_link_to_an_endless_device_is_refused(baseline: Registry, hf_folder: Path) -> None:
    (hf_folder / "sub").mkdir()
    (hf_folder / "sub" / "model.safetensors").symlink_to("/dev/zero")

    message = _refused(baseline, hf_folder, InvalidInputError)

    assert "symbolic link 'sub/model.safetensors'" in message


def test_a_linked_model_file_in_a_plain_folder_is_refused(
    baseline: Registry, onnx_path: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(onnx_path)

    message = _refused(baseline, folder, InvalidInputError)

    assert "symbolic link 'model.onnx'" in message


@pytest.mark.parametrize("escape", ["../outside", "/etc", "1_Pooling/../../outside"])
def test_modules_json_paths_out_of_the_folder_are_refused(
    baseline: Registry, hf_folder: Path, escape: str
) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": escape, "type": "sentence_transformers.models.Pooling"})
    (hf_folder / "modules.json").write_text(json.dumps(modules))

    message = _refused(baseline, hf_folder, InvalidInputError)

    assert "modules.json path" in message
    assert "outside the model folder" in message


def test_the_cli_refuses_a_linked_folder_with_the_input_exit_code(
    registry_env: dict[str, str], hf_folder: Path, tmp_path: Path
) -> None:
    (hf_folder / "tokenizer.json").symlink_to(os.devnull)
    done = subprocess.run(
        [sys.executable, "-c", "from shipyard.cli.main import run; run()", "push", "victim", str(hf_folder)],
        env=registry_env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == InvalidInputError.exit_code
    assert "symbolic link 'tokenizer.json'" in done.stdout + done.stderr

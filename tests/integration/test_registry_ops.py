"""Reading and maintaining a registry: not-found messages, diff, rm, export, verify, gc."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.errors import IntegrityError, InvalidInputError, NotFoundError
from shipyard.registry import Registry
from shipyard.types import ModelRef, ModelVersion


def _stored_file(registry: Registry, version: ModelVersion) -> Path:
    return registry.store.path(version.digest) / str(version.files[0]["path"])  # type: ignore[attr-defined]  # a local store


def test_unknown_name_lists_the_models(registry: Registry, onnx_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"no model named 'iris' in the registry \(models: none yet\)"):
        registry.resolve("iris")
    registry.push("iris", onnx_path)
    registry.push("digits", onnx_path)
    for ref in ("irsi", "irsi:1", "irsi@production"):
        with pytest.raises(NotFoundError, match=r"no model named 'irsi' .*\(models: digits, iris\)") as info:
            registry.resolve(ref)
        assert info.value.exit_code == 3 and info.value.status_code == 404
    with pytest.raises(NotFoundError, match=r"models: digits, iris"):
        registry.list_versions("irsi")


def test_unknown_version_lists_the_versions(registry: Registry, onnx_path: Path) -> None:
    for _ in range(4):
        registry.push("iris", onnx_path)
    registry.remove("iris:3")
    with pytest.raises(NotFoundError) as info:
        registry.resolve("iris:7")
    assert info.value.message == (
        "model 'iris' has no version 7 (versions: 1-2, 4; latest is 4); see `shipyard list iris`"
    )


def test_unknown_alias_lists_the_aliases(registry: Registry, onnx_path: Path) -> None:
    registry.push("iris", onnx_path, alias="production")
    registry.set_alias("iris", "canary", 1)
    with pytest.raises(NotFoundError, match=r"has no alias 'prod' \(aliases: canary, production\); set one"):
        registry.resolve("iris@prod")


@pytest.mark.parametrize("number", [2**31, 2**63, 10**20], ids=["2^31", "2^63", "10^20"])
def test_huge_version_number_is_not_found(
    registry: Registry, onnx_path: Path, backend: str, number: int, request: pytest.FixtureRequest
) -> None:
    registry.push("iris", onnx_path)
    with pytest.raises(InvalidInputError, match="positive integer"):
        registry.resolve(f"iris:{number}")
    with pytest.raises(InvalidInputError, match="out of range"):
        registry.resolve(ModelRef("iris", version=number))


def test_diff_shows_every_field_side_by_side(registry: Registry, onnx_path: Path, skops_path: Path) -> None:
    registry.push("iris", onnx_path, metrics={"accuracy": 0.9}, tags={"team": "ml"})
    registry.push("iris", skops_path, metrics={"accuracy": 0.95}, tags={"team": "ml"}, params={"n": 5})
    diff = registry.diff("iris:1", "iris")
    assert (diff["left"], diff["right"]) == ("iris:1", "iris:2")
    fields = diff["fields"]
    assert {"format", "signature", "metrics", "params", "tags", "size", "digest"} <= set(fields)
    assert fields["format"] == {"left": "onnx", "right": "skops", "same": False}
    assert fields["metrics"] == {"left": {"accuracy": 0.9}, "right": {"accuracy": 0.95}, "same": False}
    assert fields["params"] == {"left": {}, "right": {"n": "5"}, "same": False}
    assert fields["tags"]["same"] is True
    assert fields["signature"]["same"] is False
    assert fields["signature"]["left"]["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert fields["signature"]["right"]["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert fields["size"]["left"] != fields["size"]["right"]


def test_diff_of_identical_artifacts(registry: Registry, onnx_path: Path) -> None:
    registry.push("iris", onnx_path)
    registry.push("iris", onnx_path, description="same bytes")
    fields = registry.diff("iris:1", "iris:2")["fields"]
    assert fields["digest"]["same"] and fields["signature"]["same"] and fields["size"]["same"]
    assert not fields["description"]["same"]


def test_export_a_single_file(registry: Registry, onnx_path: Path, tmp_path: Path) -> None:
    registry.push("iris", onnx_path)
    target = registry.export("iris:1", tmp_path / "out" / "iris.onnx")
    assert target == tmp_path / "out" / "iris.onnx"
    assert target.read_bytes() == onnx_path.read_bytes()
    folder = tmp_path / "folder"
    folder.mkdir()
    assert registry.export("iris", folder) == folder / "model.onnx"
    with pytest.raises(InvalidInputError, match="already exists"):
        registry.export("iris", folder)


def test_export_refuses_a_tampered_artifact(
    registry: Registry, onnx_path: Path, tmp_path: Path, tamper: Callable[[Path], None]
) -> None:
    version = registry.push("iris", onnx_path)
    tamper(_stored_file(registry, version))
    with pytest.raises(IntegrityError, match="artifact of iris:1"):
        registry.export("iris:1", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_verify_detects_a_tampered_file_and_load_refuses_it(
    registry: Registry, onnx_path: Path, skops_path: Path, tamper: Callable[[Path], None]
) -> None:
    tampered = registry.push("iris", onnx_path)
    intact = registry.push("forest", skops_path)
    assert all(problems == [] for _, problems in registry.verify())
    tamper(_stored_file(registry, tampered))

    (result,) = registry.verify("iris:1")
    assert result[0].ref == tampered.ref
    assert result[1] == [f"file 'model.onnx' does not match its digest (size {tampered.size} bytes)"]
    everything = {str(v.ref): problems for v, problems in registry.verify()}
    assert everything["forest:1"] == [] and everything["iris:1"]

    with pytest.raises(IntegrityError) as info:
        registry.load("iris:1")
    assert "iris:1" in info.value.message and "model.onnx" in info.value.message
    assert info.value.exit_code == 7
    with registry.load(intact.ref) as model:
        assert model.version == intact


def test_load_refuses_an_artifact_whose_folder_is_gone(registry: Registry, onnx_path: Path) -> None:
    version = registry.push("iris", onnx_path)
    registry.store.delete(version.digest)
    with pytest.raises(IntegrityError, match=r"artifact of iris:1 .*is missing"):
        registry.load("iris:1")
    assert registry.verify("iris:1")[0][1] == [f"artifact folder for {version.digest} is missing"]


def test_pushing_the_same_bytes_again_repairs_a_damaged_artifact(
    registry: Registry, onnx_path: Path, tamper: Callable[[Path], None]
) -> None:
    version = registry.push("iris", onnx_path)
    tamper(_stored_file(registry, version))
    registry.push("iris", onnx_path)
    assert [problems for _, problems in registry.verify()] == [[], []]


def test_remove_then_gc_frees_the_files(
    registry: Registry,
    onnx_variants: Callable[[int], Path],
    assert_clean_after_gc: Callable[[Registry], None],
) -> None:
    kept = registry.push("iris", onnx_variants(0))
    gone = registry.push("iris", onnx_variants(1))
    removed, aliases = registry.remove("iris:2")
    assert (removed, aliases) == (gone, [])
    with pytest.raises(NotFoundError):
        registry.resolve("iris:2")
    assert registry.gc() == (0, 0)  # the default grace period protects recent files
    assert gone.digest in set(registry.store.digests())
    assert registry.gc(grace_s=0) == (1, gone.size)
    assert list(registry.store.digests()) == [kept.digest]
    assert_clean_after_gc(registry)


def test_remove_latest_by_bare_name(registry: Registry, onnx_path: Path) -> None:
    registry.push("iris", onnx_path)
    registry.push("iris", onnx_path)
    removed, _ = registry.remove("iris")
    assert removed.version == 2
    assert registry.resolve("iris").version == 1


def test_remove_unknown_version_lists_the_versions(registry: Registry, onnx_path: Path) -> None:
    registry.push("iris", onnx_path)
    with pytest.raises(NotFoundError, match=r"has no version 5 \(versions: 1; latest is 1\)"):
        registry.remove("iris:5")

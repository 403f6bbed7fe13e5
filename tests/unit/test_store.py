"""LocalArtifactStore: content addressing, atomic commit, integrity checks and garbage collection."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from shipyard.errors import IntegrityError, InvalidInputError
from shipyard.registry.store import ArtifactInfo, LocalArtifactStore, manifest_digest


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def _commit(store: LocalArtifactStore, files: dict[str, bytes]) -> ArtifactInfo:
    with store.staging() as staging:
        for rel, data in files.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(data)
        return store.commit(staging)


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_commit_is_content_addressed(store: LocalArtifactStore) -> None:
    first = _commit(store, {"model.onnx": b"weights", "sub/config.json": b"{}"})
    hexdigest = first.digest.removeprefix("sha256:")
    assert first.digest.startswith("sha256:") and len(hexdigest) == 64
    assert first.size == len(b"weights") + len(b"{}")
    assert [f["path"] for f in first.files] == ["model.onnx", "sub/config.json"]
    assert first.files[0]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert first.files[0]["size"] == 7
    final = store.root / "sha256" / hexdigest[:2] / hexdigest
    assert (final / "model.onnx").read_bytes() == b"weights"
    assert (final / "sub" / "config.json").read_bytes() == b"{}"
    assert store.path(first.digest) == final


def test_same_bytes_same_digest_stored_once(store: LocalArtifactStore) -> None:
    first = _commit(store, {"model.onnx": b"weights"})
    second = _commit(store, {"model.onnx": b"weights"})
    assert second == first
    assert list(store.digests()) == [first.digest]
    assert list((store.root / ".staging").iterdir()) == []


def test_different_bytes_or_names_give_different_digests(store: LocalArtifactStore) -> None:
    base = _commit(store, {"model.onnx": b"weights"})
    assert _commit(store, {"model.onnx": b"weights!"}).digest != base.digest
    assert _commit(store, {"other.onnx": b"weights"}).digest != base.digest
    assert len(list(store.digests())) == 3


def test_manifest_digest_ignores_file_order() -> None:
    files = [
        {"path": "a.bin", "sha256": "1" * 64, "size": 1},
        {"path": "b/c.bin", "sha256": "2" * 64, "size": 2},
        {"path": "d.json", "sha256": "3" * 64, "size": 3},
    ]
    assert manifest_digest(files) == manifest_digest(list(reversed(files)))
    assert manifest_digest(files) == manifest_digest(tuple(files[1:] + files[:1]))
    renamed = [{**files[0], "path": "z.bin"}, *files[1:]]
    assert manifest_digest(renamed) != manifest_digest(files)


def test_problems_is_empty_for_a_whole_artifact(store: LocalArtifactStore) -> None:
    info = _commit(store, {"model.onnx": b"weights", "extra/vocab.txt": b"a b c"})
    assert store.problems(info.digest, info.files) == []
    assert store.verify(info.digest, info.files, what="artifact of m:1") == store.path(info.digest)


def test_problems_finds_a_tampered_file(store: LocalArtifactStore) -> None:
    info = _commit(store, {"model.onnx": b"weights", "vocab.txt": b"abc"})
    (store.path(info.digest) / "model.onnx").write_bytes(b"weightz")
    assert store.problems(info.digest, info.files) == [
        "file 'model.onnx' does not match its digest (size 7 bytes)"
    ]
    with pytest.raises(
        IntegrityError, match=r"artifact of m:1 failed its integrity check: file 'model.onnx'"
    ):
        store.verify(info.digest, info.files, what="artifact of m:1")


def test_problems_finds_missing_and_extra_files(store: LocalArtifactStore) -> None:
    info = _commit(store, {"model.onnx": b"weights", "vocab.txt": b"abc"})
    folder = store.path(info.digest)
    (folder / "vocab.txt").unlink()
    (folder / "payload.py").write_text("import os")
    assert sorted(store.problems(info.digest, info.files)) == [
        "file 'vocab.txt' is missing",
        "unexpected file 'payload.py'",
    ]


def test_problems_finds_a_missing_folder(store: LocalArtifactStore) -> None:
    info = _commit(store, {"model.onnx": b"weights"})
    store.delete(info.digest)
    assert store.problems(info.digest, info.files) == [f"artifact folder for {info.digest} is missing"]
    with pytest.raises(IntegrityError, match="is missing from the store"):
        store.path(info.digest)


def test_commit_repairs_a_damaged_copy_of_the_same_content(store: LocalArtifactStore) -> None:
    info = _commit(store, {"model.onnx": b"weights"})
    (store.path(info.digest) / "model.onnx").write_bytes(b"rotten!")
    again = _commit(store, {"model.onnx": b"weights"})
    assert again.digest == info.digest
    assert store.problems(info.digest, info.files) == []


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_symlinks_are_refused(store: LocalArtifactStore, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    with store.staging() as staging, pytest.raises(InvalidInputError, match="symbolic link 'link'"):
        (staging / "model.onnx").write_bytes(b"weights")
        (staging / "link").symlink_to(outside / "secret" if kind == "file" else outside)
        store.commit(staging)
    assert list(store.digests()) == []


def test_empty_artifact_is_refused(store: LocalArtifactStore) -> None:
    with store.staging() as staging, pytest.raises(InvalidInputError, match="the artifact is empty"):
        (staging / "empty-folder").mkdir()
        store.commit(staging)
    assert list(store.digests()) == []


def test_staging_folder_is_removed_when_not_committed(store: LocalArtifactStore) -> None:
    with pytest.raises(RuntimeError), store.staging() as staging:
        (staging / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("push interrupted")
    assert not staging.exists()
    assert list((store.root / ".staging").iterdir()) == []


def test_collect_garbage_removes_old_leftovers_and_keeps_fresh_and_referenced(
    store: LocalArtifactStore,
) -> None:
    kept = _commit(store, {"model.onnx": b"referenced"})
    old_orphan = _commit(store, {"model.onnx": b"orphan, old"})
    fresh_orphan = _commit(store, {"model.onnx": b"orphan, fresh"})
    staging_root = store.root / ".staging"
    old_staging = staging_root / "deadbeef.123"
    old_staging.mkdir()
    (old_staging / "model.onnx").write_bytes(b"half-written")
    fresh_staging = staging_root / "cafebabe.456"
    fresh_staging.mkdir()
    for path in (store.path(kept.digest), store.path(old_orphan.digest), old_staging):
        _age(path, 3600)

    removed, freed = store.collect_garbage({kept.digest}, grace_s=600)

    assert removed == 2
    assert freed == len(b"orphan, old") + len(b"half-written")
    assert set(store.digests()) == {kept.digest, fresh_orphan.digest}
    assert sorted(p.name for p in staging_root.iterdir()) == ["cafebabe.456"]

    assert store.collect_garbage({kept.digest}, grace_s=0) == (2, len(b"orphan, fresh"))
    assert list(store.digests()) == [kept.digest]
    assert list(staging_root.iterdir()) == []
    assert store.problems(kept.digest, kept.files) == []


def test_collect_garbage_on_an_empty_store(store: LocalArtifactStore) -> None:
    assert store.collect_garbage(set(), grace_s=0) == (0, 0)


def test_a_path_or_file_url_keeps_the_local_store(tmp_path: Path) -> None:
    from shipyard.registry.registry import open_store
    from shipyard.settings import Settings

    for url in (str(tmp_path / "a"), f"file://{tmp_path / 'a'}"):
        store = open_store(Settings.load(home=tmp_path, artifact_url=url))
        assert isinstance(store, LocalArtifactStore) and store.root == tmp_path / "a"
    assert isinstance(open_store(Settings.load(home=tmp_path)), LocalArtifactStore)

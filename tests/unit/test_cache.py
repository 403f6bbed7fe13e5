"""ArtifactCache: verified entries, one download per digest across concurrent users, LRU bound."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.registry.cache import ArtifactCache
from shipyard.registry.store import manifest_digest


def artifact(content: bytes) -> tuple[str, tuple[dict[str, object], ...]]:
    files = ({"path": "model.bin", "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)},)
    return manifest_digest(files), files


def writer(content: bytes, calls: list[str] | None = None) -> Callable[[Path], None]:
    def fetch(into: Path) -> None:
        if calls is not None:
            calls.append("fetch")
        (into / "model.bin").write_bytes(content)

    return fetch


def test_a_second_get_is_a_verified_hit(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, max_bytes=1 << 20)
    digest, files = artifact(b"weights")
    calls: list[str] = []
    first = cache.get(digest, files, writer(b"weights", calls))
    assert cache.get(digest, files, writer(b"weights", calls)) == first
    assert calls == ["fetch"] and cache.downloads == 1
    assert (first / "model.bin").read_bytes() == b"weights"
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_an_altered_entry_is_fetched_again(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, max_bytes=1 << 20)
    digest, files = artifact(b"weights")
    folder = cache.get(digest, files, writer(b"weights"))
    (folder / "model.bin").write_bytes(b"rotten!")
    cache.get(digest, files, writer(b"weights"))
    assert (folder / "model.bin").read_bytes() == b"weights" and cache.downloads == 2


def test_a_failed_fetch_leaves_no_entry(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, max_bytes=1 << 20)
    digest, files = artifact(b"weights")

    def broken(into: Path) -> None:
        (into / "model.bin").write_bytes(b"half")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        cache.get(digest, files, broken)
    assert not cache.entry(digest).exists()
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_concurrent_users_of_one_digest_download_it_once(tmp_path: Path) -> None:
    # Each thread opens its own lock file description, as separate processes do.
    digest, files = artifact(b"shared")
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow(into: Path) -> None:
        calls.append("fetch")
        started.set()
        release.wait(10)
        (into / "model.bin").write_bytes(b"shared")

    results: list[Path] = []
    first = threading.Thread(
        target=lambda: results.append(ArtifactCache(tmp_path, 1 << 20).get(digest, files, slow))
    )
    first.start()
    assert started.wait(10)
    second = threading.Thread(
        target=lambda: results.append(ArtifactCache(tmp_path, 1 << 20).get(digest, files, slow))
    )
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert calls == ["fetch"] and len(results) == 2 and results[0] == results[1]


def test_eviction_drops_the_least_recently_used_entries_to_fit_the_bound(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, max_bytes=250)
    entries = {name: artifact(name.encode() * 100) for name in "abc"}  # 100 bytes each
    for used_at, name in enumerate("ab", start=1):
        digest, files = entries[name]
        folder = cache.get(digest, files, writer(name.encode() * 100))
        os.utime(folder, (used_at, folder.stat().st_mtime))  # a then b, long ago
    digest_a, files_a = entries["a"]
    cache.get(digest_a, files_a, writer(b"a" * 100))  # a is used again: b is now the oldest
    digest_c, files_c = entries["c"]
    cache.get(digest_c, files_c, writer(b"c" * 100))  # 300 bytes > 250: one must go
    assert {digest for _, _, digest in cache.entries()} == {digest_a, digest_c}
    assert cache.size() == 200


def test_the_entry_just_fetched_is_kept_even_over_the_bound(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path, max_bytes=10)
    digest, files = artifact(b"x" * 100)
    folder = cache.get(digest, files, writer(b"x" * 100))
    assert folder.is_dir() and cache.size() == 100

"""A local cache of artifacts pulled from a remote store, keyed by digest and bounded in size.

Entries live under `<root>/sha256/<hex[:2]>/<hex>/`, laid out as in the local store. Several
processes on one host share the cache: an entry is downloaded into a private temporary folder and
renamed into place (readers never see half an entry), and a lock file per digest (`fcntl.flock`)
makes a second process wait for the first download instead of repeating it. Every use re-hashes
the entry against the version's digest, as loads from the local store do, and marks it used (its
access time), so eviction drops the least recently used entries once the cache is over its bound.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shipyard.registry.store import ArtifactInfo, hash_file

log = logging.getLogger("shipyard.registry")

Fetch = Callable[[Path], None]  # downloads an artifact's files into an empty folder, verified


class ArtifactCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.downloads = 0  # artifacts this process fetched (hits do not count): tests and logs

    def entry(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "sha256" / hexdigest[:2] / hexdigest

    @contextmanager
    def _lock(self, digest: str, *, blocking: bool = True) -> Iterator[bool]:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / digest.removeprefix("sha256:"), "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def is_whole(self, digest: str, files: tuple[dict[str, object], ...]) -> bool:
        """Whether the entry holds exactly the artifact's files with their recorded digests."""
        folder = self.entry(digest)
        if not folder.is_dir():
            return False
        found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if found != sorted(str(f["path"]) for f in files):
            return False
        return all(hash_file(folder / str(f["path"]))[0] == f["sha256"] for f in files)

    def get(self, digest: str, files: tuple[dict[str, object], ...], fetch: Fetch) -> Path:
        """The entry's folder, verified; fetched first (by one process at a time) if absent or bad."""
        folder = self.entry(digest)
        if self.is_whole(digest, files):
            self._touch(folder)
            return folder
        with self._lock(digest):
            if not self.is_whole(digest, files):  # another process may have fetched it meanwhile
                shutil.rmtree(folder, ignore_errors=True)
                self._fill(digest, fetch)
                self.downloads += 1
        self._touch(folder)
        self.evict(keep=digest)
        return folder

    def _fill(self, digest: str, fetch: Fetch) -> None:
        temporary = self.root / ".tmp" / f"{uuid.uuid4().hex}.{os.getpid()}"
        temporary.mkdir(parents=True)
        try:
            fetch(temporary)
            folder = self.entry(digest)
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, folder)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)

    def adopt(self, info: ArtifactInfo, staged: Path) -> None:
        """Keep a just-pushed artifact's staged files as its entry (moved, not copied), so the
        machine that pushed serves it without downloading."""
        with self._lock(info.digest, blocking=False) as locked:
            folder = self.entry(info.digest)
            if not locked or folder.is_dir():
                return
            folder.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # another filesystem: the entry is fetched later
                os.replace(staged, folder)
        self.evict(keep=info.digest)

    @staticmethod
    def _touch(folder: Path) -> None:
        # Access time set by hand: many mounts are noatime/relatime, and mtime stays as written.
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            os.utime(folder, (now, folder.stat().st_mtime))

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, digest) of every entry, least recently used first."""
        base = self.root / "sha256"
        found = []
        for folder in base.glob("*/*") if base.is_dir() else ():
            try:
                used = folder.stat().st_atime
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            found.append((used, size, "sha256:" + folder.name))
        return sorted(found)

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits its bound; the digests removed.
        An entry being fetched or adopted by another process (its lock held) is skipped."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = []
        for _, size, digest in entries:
            if total <= self.max_bytes:
                break
            if digest == keep:
                continue
            with self._lock(digest, blocking=False) as locked:
                if not locked:
                    continue
                shutil.rmtree(self.entry(digest), ignore_errors=True)
            total -= size
            removed.append(digest)
            log.info("cache: evicted %s (%d bytes) to stay within %d bytes", digest, size, self.max_bytes)
        return removed

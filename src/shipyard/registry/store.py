"""Content-addressed artifact store on a local folder, and the interface every store keeps.

An artifact is a folder of files. Its digest is the SHA-256 of a manifest listing each file's
SHA-256 and relative path, so identical content is stored once. Writes are atomic: files are
written into a private staging folder, fsynced, and the folder is renamed into place; a crash
leaves at most a staging folder or an unreferenced artifact, both removed by `gc`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shipyard.errors import IntegrityError, InvalidInputError

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    digest: str  # "sha256:<hex>"
    size: int
    files: tuple[dict[str, object], ...]  # {"path", "sha256", "size"}, sorted by path


Progress = Callable[[int, int], None]  # (bytes done, bytes in all), called as an upload goes


class ArtifactStore(Protocol):
    """Where artifacts live: a local folder (`LocalArtifactStore`) or an fsspec URL
    (`remote.FsspecArtifactStore`). Both address artifacts by manifest digest, make a committed
    artifact whole before any version row names it, and hand out verified local folders."""

    location: str  # for messages: a path, or a URL without its secrets

    def staging(self) -> AbstractContextManager[Path]: ...

    def commit(self, staged: Path, progress: Progress | None = None) -> ArtifactInfo: ...

    def verify(self, digest: str, files: tuple[dict[str, object], ...], what: str) -> Path: ...

    def problems(self, digest: str, files: tuple[dict[str, object], ...]) -> list[str]: ...

    def check(self) -> None: ...

    def digests(self) -> Iterator[str]: ...

    def delete(self, digest: str) -> None: ...

    def disk_bytes(self) -> int: ...

    def collect_garbage(self, referenced: set[str], grace_s: float) -> tuple[int, int]: ...

    def fresh_garbage(self, referenced: set[str], grace_s: float) -> tuple[int, int]: ...


def manifest_digest(files: list[dict[str, object]] | tuple[dict[str, object], ...]) -> str:
    """Digest of an artifact from its file list (independent of file order and location)."""
    lines = sorted(f"{f['sha256']} {f['path']}\n" for f in files)
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def hash_file(path: Path, *, fsync: bool = False) -> tuple[str, int]:
    """SHA-256 and size of one file; optionally fsync it while it is open."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(fh.fileno())
    return digest.hexdigest(), size


def describe(staged: Path, *, fsync: bool = False) -> ArtifactInfo:
    """Hash every file of a staged artifact (optionally fsyncing it): its digest, size and files."""
    files: list[dict[str, object]] = []
    for file in _walk_files(staged):
        sha, size = hash_file(file, fsync=fsync)
        files.append({"path": file.relative_to(staged).as_posix(), "sha256": sha, "size": size})
    if not files:
        raise InvalidInputError("the artifact is empty: there is no file to store", field="path")
    files.sort(key=lambda f: str(f["path"]))
    return ArtifactInfo(manifest_digest(files), sum(int(str(f["size"])) for f in files), tuple(files))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _walk_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if p.is_symlink():
                raise InvalidInputError(
                    f"artifact contains a symbolic link {str(p.relative_to(root))!r}; links are not stored",
                    field="path",
                )
        files.extend(Path(dirpath, name) for name in filenames)
    return sorted(files)


class LocalArtifactStore:
    """Artifacts under `<root>/sha256/<hex[:2]>/<hex>/`, staging under `<root>/.staging/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.location = str(self.root)
        self._staging_root = self.root / ".staging"

    def check(self) -> None:
        """Nothing to reach: a folder is created on the first push."""

    def _final_path(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "sha256" / hexdigest[:2] / hexdigest

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh private folder to write an artifact into; removed afterwards if not committed."""
        self._staging_root.mkdir(parents=True, exist_ok=True)
        path = self._staging_root / f"{uuid.uuid4().hex}.{os.getpid()}"
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, staged: Path, progress: Progress | None = None) -> ArtifactInfo:
        """Hash and fsync the staged files and move them into place under their digest."""
        info = describe(staged, fsync=True)
        digest = info.digest
        final = self._final_path(digest)
        if final.is_dir():
            # Same content stored before: keep the existing copy (after checking it is whole)
            # and refresh its mtime so a concurrent `gc` sees it as fresh.
            if not self.problems(digest, info.files):
                os.utime(final)
                return info
            shutil.rmtree(final)
        for sub in {p.parent for p in staged.rglob("*")} | {staged}:
            _fsync_dir(sub)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staged, final)
        except OSError:
            if not final.is_dir():  # a concurrent writer did not win the race: a real failure
                raise
        _fsync_dir(final.parent)
        return info

    def path(self, digest: str) -> Path:
        """Local folder holding the artifact."""
        final = self._final_path(digest)
        if not final.is_dir():
            raise IntegrityError(
                f"artifact {digest} is missing from the store at {self.root}; "
                "run `shipyard verify` to check the registry"
            )
        return final

    def problems(self, digest: str, files: tuple[dict[str, object], ...]) -> list[str]:
        """Re-hash every file of the artifact; list what is missing, altered or unexpected."""
        final = self._final_path(digest)
        if not final.is_dir():
            return [f"artifact folder for {digest} is missing"]
        found = []
        expected = {str(f["path"]): f for f in files}
        for file in _walk_files(final):
            rel = file.relative_to(final).as_posix()
            if rel not in expected:
                found.append(f"unexpected file {rel!r}")
                continue
            sha, size = hash_file(file)
            if sha != expected[rel]["sha256"]:
                found.append(f"file {rel!r} does not match its digest (size {size} bytes)")
        for rel in expected:
            if not (final / rel).is_file():
                found.append(f"file {rel!r} is missing")
        return found

    def verify(self, digest: str, files: tuple[dict[str, object], ...], what: str) -> Path:
        """The artifact's folder, after checking every file against its digest."""
        problems = self.problems(digest, files)
        if problems:
            raise IntegrityError(f"{what} failed its integrity check: " + "; ".join(problems))
        return self._final_path(digest)

    def digests(self) -> Iterator[str]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for prefix in base.iterdir():
            for entry in prefix.iterdir():
                yield "sha256:" + entry.name

    def disk_bytes(self) -> int:
        """Bytes of every file under the store: artifacts, garbage and pushes in flight."""
        return _tree_size(self.root) if self.root.is_dir() else 0

    def delete(self, digest: str) -> None:
        shutil.rmtree(self._final_path(digest), ignore_errors=True)

    def _garbage(self, referenced: set[str]) -> list[Path]:
        candidates = [self._final_path(d) for d in self.digests() if d not in referenced]
        if self._staging_root.is_dir():
            candidates += list(self._staging_root.iterdir())
        return candidates

    def collect_garbage(self, referenced: set[str], grace_s: float) -> tuple[int, int]:
        """Remove unreferenced artifacts and abandoned staging folders older than `grace_s`.

        The grace period protects pushes in flight: their staging folder or freshly renamed
        artifact is not yet referenced by a committed version row.
        """
        cutoff = time.time() - grace_s
        removed = freed = 0
        for path in self._garbage(referenced):
            try:
                if path.stat().st_mtime > cutoff:
                    continue
                freed += _tree_size(path)
            except FileNotFoundError:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        return removed, freed

    def fresh_garbage(self, referenced: set[str], grace_s: float) -> tuple[int, int]:
        """Unreferenced items that `collect_garbage` keeps for being younger than `grace_s`."""
        cutoff = time.time() - grace_s
        count = size = 0
        for path in self._garbage(referenced):
            try:
                if path.stat().st_mtime > cutoff:
                    size += _tree_size(path)
                    count += 1
            except FileNotFoundError:
                continue
        return count, size


def _tree_size(path: Path) -> int:
    size = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):  # a push or gc may move it meanwhile
                size += os.lstat(os.path.join(dirpath, name)).st_size
    return size

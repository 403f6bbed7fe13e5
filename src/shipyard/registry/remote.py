"""Content-addressed artifact store on any fsspec URL (S3 through s3fs is the tested one).

The layout is the local store's under the URL: an artifact's files are objects
`<url>/sha256/<hex[:2]>/<hex>/<path>`, and `<url>/sha256/<hex[:2]>/<hex>.json` (its manifest,
the file list) is written last, once every file is in place. Object writes are atomic (a large
file goes up as a multipart upload, invisible until completed), and the registry commits the
version row only after `commit` returns, so an interrupted push leaves nothing a reader can see:
objects no version names and uncompleted uploads, which `gc` removes after its grace period.

Reads go through the local `ArtifactCache`: each file is downloaded, hashed and compared with
the version's record before the artifact is used; a mismatch names the version and the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from shipyard.errors import (
    ForbiddenError,
    IntegrityError,
    InvalidInputError,
    MissingDependencyError,
    NotFoundError,
    NotReadyError,
    ShipyardError,
    UnauthorizedError,
)
from shipyard.registry.cache import ArtifactCache
from shipyard.registry.store import ArtifactInfo, Progress, _tree_size, describe, hash_file

_CHUNK = 1 << 20
_CONCURRENCY = 10  # parts in flight, as boto3's transfer manager has threads
_MAX_PARTS = 10_000  # S3's limit per upload: larger files get larger parts
_EXTRAS = {"s3": "s3", "s3a": "s3"}
_BAD_KEYS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")
_CREDENTIALS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"


def safe_url(url: str) -> str:
    """The URL without a user or password in it, for messages and logs."""
    return re.sub(r"(://)[^/@]*@", r"\1***@", url)


class FsspecArtifactStore:
    """Artifacts under an fsspec URL, pulled into `cache` before use."""

    def __init__(
        self, url: str, *, cache: ArtifactCache, options: dict[str, Any] | None = None, part_bytes: int
    ) -> None:
        self.url = url.rstrip("/")
        self.location = safe_url(self.url)
        self.cache = cache
        self.part_bytes = part_bytes
        self.protocol = url.split("://", 1)[0]
        kwargs: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
        if self.protocol in ("s3", "s3a"):
            # Reads of whole objects (verify) in parts as large as uploads'; transfers themselves go
            # through `_multipart` (threads) and `_download`, 10 parts in flight as boto3's.
            kwargs.update(max_concurrency=_CONCURRENCY, default_block_size=part_bytes)
        kwargs.update(options or {})
        try:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.url, **kwargs)
        except ImportError as exc:
            package = "s3fs" if self.protocol in _EXTRAS else (exc.name or "fsspec")
            raise MissingDependencyError(
                package, _EXTRAS.get(self.protocol), f"the artifact store {self.location}"
            ) from exc
        except ValueError as exc:  # an unknown protocol or malformed URL
            raise NotFoundError(
                f"cannot open the artifact store {self.location}: {exc}", field="artifact_url"
            ) from exc
        self.root = self.root.rstrip("/")
        self._staging_root = cache.root / ".staging"
        self._threaded: tuple[Any, Any, Any] | None = None  # (async client, credentials, client)

    # -- layout ------------------------------------------------------------------------------
    def _folder(self, digest: str) -> str:
        hexdigest = digest.removeprefix("sha256:")
        return f"{self.root}/sha256/{hexdigest[:2]}/{hexdigest}"

    def _key(self, digest: str, relative: object) -> str:
        return f"{self._folder(digest)}/{relative}"

    def _digest_of(self, key: str) -> str | None:
        rest = key.removeprefix(f"{self.root}/sha256/").split("/")
        return "sha256:" + rest[1].removesuffix(".json") if len(rest) >= 2 else None

    # -- errors ------------------------------------------------------------------------------
    @contextmanager
    def _reaching(self, doing: str) -> Iterator[None]:
        """Translate the filesystem's and boto's errors into one line naming the store."""
        try:
            yield
        except ShipyardError:
            raise
        except Exception as exc:
            raise self._translate(exc, doing) from exc

    def _translate(self, exc: Exception, doing: str) -> ShipyardError:
        name = type(exc).__name__
        where = f"the artifact store {self.location}"
        if isinstance(exc, TypeError):  # the client rejected an option the user gave
            return InvalidInputError(
                f"invalid options for {where} (SHIPYARD_ARTIFACT_OPTIONS): {exc}", field="artifact_options"
            )
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return UnauthorizedError(
                f"no credentials for {where} ({doing}): set {_CREDENTIALS}", field="artifact_url"
            )
        code = _error_code(exc)
        if code in _BAD_KEYS:
            return UnauthorizedError(
                f"{where} refused the credentials ({code}) while {doing}: check {_CREDENTIALS}",
                field="artifact_url",
            )
        if isinstance(exc, PermissionError):
            return ForbiddenError(
                f"access denied to {where} while {doing}: the credentials may not use this bucket "
                "(it needs list, read, write and delete)",
                field="artifact_url",
            )
        if isinstance(exc, FileNotFoundError):
            return NotFoundError(f"{where} does not exist ({doing}): create the bucket first")
        detail = str(exc).splitlines()[0] if str(exc) else name
        return NotReadyError(f"cannot reach {where} while {doing}: {name}: {safe_url(detail)}")

    # -- the ArtifactStore protocol ----------------------------------------------------------
    def check(self) -> None:
        """Reach the store once (bucket and credentials), so a bad one fails at start."""
        with self._reaching("checking it at start"):
            if self.protocol in ("s3", "s3a"):
                # A listing, not HEAD: its error body names the cause (NoSuchBucket, AccessDenied, …).
                bucket, _, prefix = self.root.partition("/")
                self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
            else:
                self.fs.makedirs(self.root, exist_ok=True)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private local folder to write an artifact into before it is uploaded."""
        self._staging_root.mkdir(parents=True, exist_ok=True)
        path = self._staging_root / uuid.uuid4().hex
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, staged: Path, progress: Progress | None = None) -> ArtifactInfo:
        """Upload the staged files under their digest, manifest last; then cache them here."""
        info = describe(staged)
        folder = self._folder(info.digest)
        manifest = json.dumps({"digest": info.digest, "files": list(info.files)}, sort_keys=True)
        with self._reaching(f"storing {info.digest}"):
            # Whether it is stored already is asked while the first multipart upload is created
            # (two round trips at once, not one after the other); that upload is aborted if so.
            checker = ThreadPoolExecutor(1, thread_name_prefix="shipyard-s3-check")
            try:
                stored = checker.submit(self._complete, info)
                self._upload(staged, info, stored, progress)
            finally:
                checker.shutdown(wait=True)
            # Written (again) last: it marks the artifact whole, and its fresh time tells `gc`
            # that a push is about to name it.
            self.fs.pipe_file(f"{folder}.json", manifest.encode())
        if progress is not None:
            progress(info.size, info.size)
        self.cache.adopt(info, staged)
        return info

    def _upload(
        self, staged: Path, info: ArtifactInfo, stored: Future[bool], progress: Progress | None
    ) -> None:
        """Every file of `info` to its object, unless `stored` says the artifact is there whole."""
        folder = self._folder(info.digest)
        done = 0
        for file in info.files:
            size = int(str(file["size"]))
            callback = _callback(progress, done, info.size)
            source, target = staged / str(file["path"]), f"{folder}/{file['path']}"
            if self.protocol in ("s3", "s3a") and size >= 2 * self.part_bytes:
                if not self._multipart(source, target, size, callback, stored):
                    return
            elif stored.result():
                return
            else:
                self.fs.put_file(str(source), target, callback=callback)
            done += size

    def _multipart(self, source: Path, key: str, size: int, callback: Any, stored: Future[bool]) -> bool:
        """One multipart upload, its parts sent from a pool of threads (`_s3_parts`, 10 in flight
        all along); invisible until completed, aborted if it fails here or if `stored` (awaited
        once the upload is created) says the artifact is there whole. Whether it was sent."""
        from botocore.exceptions import ClientError
        from fsspec.asyn import sync
        from s3fs.errors import translate_boto_error

        from shipyard.registry._s3_parts import send_parts

        bucket, object_key, _ = self.fs.split_path(key)
        part_bytes = max(self.part_bytes, -(-size // _MAX_PARTS))
        client, checksum = sync(self.fs.loop, self._parts_client, bucket)
        named = {"ChecksumAlgorithm": checksum} if checksum else {}
        # Started, completed and aborted through s3fs, which adds the store's options (encryption,
        # requester pays) and translates errors; the parts get the same options.
        started = self.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=object_key, **named)
        ids = {"Bucket": bucket, "Key": object_key, "UploadId": started["UploadId"]}
        options = self.fs._get_s3_method_kwargs(client.upload_part, **ids, **named)

        def upload_part(**part: Any) -> dict[str, Any]:
            try:
                return dict(client.upload_part(**options, **part))
            except ClientError as exc:
                raise translate_boto_error(exc) from exc

        try:
            if stored.result():  # its error, if it failed, aborts the upload here too
                with contextlib.suppress(Exception):  # gc aborts it later if this fails
                    self.fs.call_s3("abort_multipart_upload", **ids)
                return False
            parts = send_parts(
                upload_part, source, size, part_bytes, checksum=checksum, sent=callback.relative_update
            )
            self.fs.call_s3("complete_multipart_upload", MultipartUpload={"Parts": parts}, **ids)
        except BaseException:
            with contextlib.suppress(Exception):  # gc aborts it later if this fails too
                self.fs.call_s3("abort_multipart_upload", **ids)
            raise
        return True

    async def _parts_client(self, bucket: str) -> tuple[Any, str | None]:
        """The threads' client (made again when the credentials change) and the checksum to
        declare the upload with, as boto3's transfer manager does: botocore puts a CRC32 on every
        part by default, and an upload created without naming it gets a second checksum over the
        whole object when completed (moto: one more copy and pass, after the last part) or, on
        S3, may have those parts refused ("Checksum Type mismatch"). None where the client sends
        checksums only when required (for stores that do not know them)."""
        from shipyard.registry._s3_parts import threaded_client

        await self.fs.set_session()
        aio = await self.fs.get_s3(bucket)
        signing = aio._get_credentials()  # botocore's accessor (private; botocore is pinned)
        credentials = await signing.get_frozen_credentials() if signing is not None else None
        if self._threaded is None or self._threaded[:2] != (aio, credentials):
            self._threaded = (aio, credentials, threaded_client(aio, credentials))
        when = aio.meta.config.request_checksum_calculation
        return self._threaded[2], ("CRC32" if when == "when_supported" else None)

    async def _download(self, key: str, target: Path, size: int) -> None:
        """One object into `target`: a large one in ranges, `_CONCURRENCY` in flight all along and
        each written where it belongs as it arrives (s3fs's own waits for each batch)."""
        bucket, object_key, _ = self.fs.split_path(key)
        with open(target, "wb") as fh:
            if size < 2 * self.part_bytes:
                response = await self.fs._call_s3("get_object", Bucket=bucket, Key=object_key)
                try:
                    while chunk := await response["Body"].read(_CHUNK):
                        fh.write(chunk)
                finally:
                    response["Body"].close()
                return
            fh.truncate(size)
            slots = asyncio.Semaphore(_CONCURRENCY)

            async def fetch(offset: int) -> None:
                async with slots:
                    last = min(offset + self.part_bytes, size) - 1
                    response = await self.fs._call_s3(
                        "get_object", Bucket=bucket, Key=object_key, Range=f"bytes={offset}-{last}"
                    )
                    try:
                        os.pwrite(fh.fileno(), await response["Body"].read(), offset)
                    finally:
                        response["Body"].close()

            await asyncio.gather(*(fetch(offset) for offset in range(0, size, self.part_bytes)))

    def _complete(self, info: ArtifactInfo) -> bool:
        """Whether the artifact is stored whole already (manifest present, every file's size)."""
        folder = self._folder(info.digest)
        if not self._exists(f"{folder}.json"):
            return False
        try:
            stored = {
                key.removeprefix(folder + "/"): int(meta["size"])
                for key, meta in self.fs.find(folder, detail=True).items()
            }
        except FileNotFoundError:
            return False
        return all(stored.get(str(f["path"])) == f["size"] for f in info.files)

    def _exists(self, key: str) -> bool:
        """Whether the object `key` exists: on S3 one HEAD (s3fs's `exists` lists the prefix as
        well when the object is missing, the usual case before a push: one more round trip)."""
        if self.protocol not in ("s3", "s3a"):
            return bool(self.fs.exists(key))
        bucket, object_key, _ = self.fs.split_path(key)
        try:
            self.fs.call_s3("head_object", Bucket=bucket, Key=object_key)
        except FileNotFoundError:
            return False
        return True

    def _fetch(self, digest: str, files: tuple[dict[str, object], ...], what: str, into: Path) -> None:
        for file in files:
            relative = str(file["path"])
            target = into / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            key = self._key(digest, relative)
            try:
                with self._reaching(f"downloading {what}"):
                    if self.protocol in ("s3", "s3a"):
                        from fsspec.asyn import sync

                        sync(self.fs.loop, self._download, key, target, int(str(file["size"])))
                    else:
                        self.fs.get_file(key, str(target))
            except NotFoundError as exc:
                raise IntegrityError(
                    f"{what} failed its integrity check: file {relative!r} is missing from {self.location}"
                ) from exc
            except NotReadyError as exc:
                if _error_code(exc) != "InvalidRange":
                    raise
                raise IntegrityError(  # the object is shorter than the file recorded
                    f"{what} failed its integrity check: file {relative!r} does not match its digest "
                    f"(shorter than recorded) in {self.location}"
                ) from exc
            # Not fsynced: the cache re-hashes an entry on every use, so a copy damaged by a crash
            # is fetched again rather than served.
            sha, size = hash_file(target)
            if sha != file["sha256"]:
                raise IntegrityError(
                    f"{what} failed its integrity check: file {relative!r} does not match its digest "
                    f"(size {size} bytes) in {self.location}"
                )

    def verify(self, digest: str, files: tuple[dict[str, object], ...], what: str) -> Path:
        """A local folder holding the artifact: from the cache, or downloaded and checked first."""
        return self.cache.get(digest, files, lambda into: self._fetch(digest, files, what, into))

    def problems(self, digest: str, files: tuple[dict[str, object], ...]) -> list[str]:
        """Re-hash every stored object (streamed, not cached); list what is missing or altered."""
        found = []
        folder = self._folder(digest)
        with self._reaching(f"checking {digest}"):
            try:
                stored = set(self.fs.find(folder))
            except FileNotFoundError:
                stored = set()
            if not stored:
                return [f"artifact folder for {digest} is missing"]
            expected = {f"{folder}/{f['path']}": f for f in files}
            for key in sorted(stored - set(expected)):
                found.append(f"unexpected file {key.removeprefix(folder + '/')!r}")
            for key, file in expected.items():
                if key not in stored:
                    found.append(f"file {file['path']!r} is missing")
                    continue
                sha, size = self._hash_remote(key)
                if sha != file["sha256"]:
                    found.append(f"file {file['path']!r} does not match its digest (size {size} bytes)")
        return found

    def _hash_remote(self, key: str) -> tuple[str, int]:
        digest, size = hashlib.sha256(), 0
        with self.fs.open(key, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size

    def _listing(self) -> dict[str, tuple[float, int, list[str]]]:
        """{digest: (newest object time, bytes, keys)} of everything under the store."""
        found: dict[str, tuple[float, int, list[str]]] = {}
        try:
            listing = self.fs.find(f"{self.root}/sha256", detail=True)
        except FileNotFoundError:
            return found
        for key, meta in listing.items():
            digest = self._digest_of(key)
            if digest is None:
                continue
            newest, size, keys = found.get(digest, (0.0, 0, []))
            found[digest] = (max(newest, _modified(meta)), size + int(meta.get("size") or 0), [*keys, key])
        return found

    def digests(self) -> Iterator[str]:
        with self._reaching("listing it"):
            yield from self._listing()

    def delete(self, digest: str) -> None:
        with self._reaching(f"deleting {digest}"):
            keys = self._listing().get(digest, (0.0, 0, []))[2]
            if keys:
                self.fs.rm(keys)

    def disk_bytes(self) -> int:
        """Bytes on this machine: the cache of pulled artifacts and pushes being staged."""
        return _tree_size(self.cache.root) if self.cache.root.is_dir() else 0

    def _garbage(self, referenced: set[str], cutoff: float, *, old: bool) -> list[tuple[int, list[str]]]:
        return [
            (size, keys)
            for digest, (newest, size, keys) in self._listing().items()
            if digest not in referenced and (newest <= cutoff) == old
        ]

    def collect_garbage(self, referenced: set[str], grace_s: float) -> tuple[int, int]:
        """Remove unreferenced artifacts, uploads never completed and local staging folders older
        than `grace_s` (which protects pushes in flight)."""
        cutoff = time.time() - grace_s
        removed = freed = 0
        with self._reaching("collecting garbage"):
            for size, keys in self._garbage(referenced, cutoff, old=True):
                self.fs.rm(keys)
                removed, freed = removed + 1, freed + size
            for upload, size in self._stale_uploads(cutoff):
                self.fs.call_s3("abort_multipart_upload", **upload)
                removed, freed = removed + 1, freed + size
        for path in self._staging_root.iterdir() if self._staging_root.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= cutoff:
                    freed += _tree_size(path)
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
        return removed, freed

    def _stale_uploads(self, cutoff: float) -> list[tuple[dict[str, str], int]]:
        """Multipart uploads under the store started before `cutoff` and never completed."""
        if self.protocol not in ("s3", "s3a"):
            return []
        bucket, _, prefix = self.root.partition("/")
        listed = self.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        stale = []
        for upload in listed.get("Uploads", []):
            if upload["Initiated"].timestamp() > cutoff:
                continue
            ids = {"Bucket": bucket, "Key": upload["Key"], "UploadId": upload["UploadId"]}
            parts = self.fs.call_s3("list_parts", **ids).get("Parts", [])
            stale.append((ids, sum(int(p["Size"]) for p in parts)))
        return stale

    def fresh_garbage(self, referenced: set[str], grace_s: float) -> tuple[int, int]:
        cutoff = time.time() - grace_s
        with self._reaching("listing it"):
            fresh = self._garbage(referenced, cutoff, old=False)
        return len(fresh), sum(size for size, _ in fresh)


def _callback(report: Progress | None, base: int, total: int) -> Any:
    """An fsspec callback reporting bytes done across all of an artifact's files."""
    from fsspec.callbacks import Callback, NoOpCallback

    if report is None:
        return NoOpCallback()
    send = report

    class _Report(Callback):  # type: ignore[misc]
        def call(self, *args: Any, **kwargs: Any) -> None:
            send(base + int(self.value), total)

    return _Report()


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception, along its chain of causes (s3fs and this module
    each translate botocore's error, keeping it as the cause)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code"))
        seen = seen.__cause__ or seen.__context__
    return None


def _modified(meta: dict[str, Any]) -> float:
    """An object's last change, in seconds, from an fsspec listing (S3 or a local filesystem)."""
    for field in ("LastModified", "mtime", "last_modified", "created"):
        value = meta.get(field)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return time.time()  # unknown: treat as new, so gc keeps it

"""The prediction log's storage: SQLite segments in one folder, read newest first, looked up by id.

Each server process writes its own segment files and no other process ever writes to them, so
several workers never wait on one another's locks and need no coordination; readers merge all
segments. SQLite (in the standard library, no server) gives transactional appends and, in WAL
mode, `shipyard logs` reading while the servers write.

A segment holds chunks: each batch the writer drains (up to 256 entries) is one row, its entries
one columnar document (prediction_chunks.py: a JSON header and raw numeric arrays). A row per entry
with an index on its request id cost about 3x more CPU per request (measured: SQLite's per-row work
and random inserts into the index), which a server logging every request pays on its
request-serving core. The request id index is built in bulk when a segment is closed
(`Segment.seal`); until then, a lookup scans the segment's chunks' id lists (tens of milliseconds
for 50,000 entries). Late feedback is joined to its prediction by that id: see
`PredictionStore.lookup`.

A writer starts a new segment once its current one passes a sixteenth of `max_bytes` or an eighth
of `max_age_s` (at most a day), so retention deletes whole files, oldest first, and never has to
vacuum: entries are kept for `max_age_s`, give or take an eighth of it. A process may delete
another's current segment when the folder is over `max_bytes`; the owner notices that its file is
gone and starts a new one. File names start with the segment's UTC start time, so they sort by age:
`20260131T120000123456-4242-w1.sqlite` (start, process id, worker number).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from shipyard.errors import InvalidInputError, MissingDependencyError

SUFFIX = ".sqlite"
_SIDE_FILES = ("-wal", "-shm", "-journal")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    first REAL NOT NULL,
    last REAL NOT NULL,
    worker INTEGER NOT NULL,
    request_ids TEXT NOT NULL,
    entries BLOB NOT NULL
);
"""
# A chunk's `entries`: its entries, in the format of prediction_chunks.py.
_SEAL = """
BEGIN;
CREATE TABLE ids (request_id TEXT NOT NULL, chunk INTEGER NOT NULL);
INSERT INTO ids SELECT value, chunks.id FROM chunks, json_each(chunks.request_ids);
CREATE INDEX ids_request_id ON ids (request_id);
COMMIT;
"""
# A chunk as the writer hands it over: its first and last entry's time, the entries' request ids
# (a JSON array, which SQLite's json_each reads) and the entries themselves (prediction_chunks.py).
Chunk = tuple[float, float, bytes, bytes]
_LOOKUP_CHUNK = 500  # ids per query: under SQLite's oldest limit on bound variables (999)
_CLOCK_SLACK_S = 60.0  # how far the wall clock may step back between two entries of one segment


@dataclass(frozen=True, slots=True)
class Entry:
    """One logged request: who answered it, how, and what went in and came out."""

    request_id: str
    time: float  # Unix seconds when the response was ready
    model: str
    version: int | None
    protocol: str
    status: int
    latency_ms: float
    worker: int
    summary: dict[str, Any]  # rows; inputs' shape and dtype; outputs' too, with values when small
    payload: dict[str, Any] | None = field(default=None)  # inputs and outputs, when sampled

    @property
    def at(self) -> str:
        """The time as ISO 8601 UTC, to the millisecond."""
        return datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "time": self.at,
            "model": self.model,
            "version": self.version,
            "protocol": self.protocol,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "worker": self.worker,
            "summary": self.summary,
            "payload": self.payload,
        }


def segment_name(started: float, worker: int) -> str:
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{stamp}-{os.getpid()}-w{worker}{SUFFIX}"


class Segment:
    """A segment this process appends to, one chunk per transaction."""

    def __init__(self, path: Path, worker: int) -> None:
        self.path = path
        self.worker = worker
        self._db = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last chunk, never corrupt
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def append(self, chunks: list[Chunk]) -> None:
        """Chunks, in one transaction."""
        rows = [(first, last, self.worker, ids.decode(), entries) for first, last, ids, entries in chunks]
        with self._db:
            self._db.executemany(
                "INSERT INTO chunks (first, last, worker, request_ids, entries) VALUES (?, ?, ?, ?, ?)", rows
            )

    def seal(self) -> None:
        """Index the request ids (in bulk: far cheaper than entry by entry), then close."""
        try:
            self._db.executescript(_SEAL)  # all or nothing: closing rolls back a failed script
        except sqlite3.Error:
            pass  # lookups scan a segment without an index: slower, still right
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


def _decode(blob: bytes, request_ids: str | bytes | None) -> list[list[Any]]:
    """prediction_chunks.decode, imported when first read: the log's writer process imports this
    module for its segments and never reads one, and NumPy (which the chunk format imports) was
    two thirds of its start (0.18 of 0.29 s)."""
    from shipyard.monitor.prediction_chunks import decode

    return decode(blob, request_ids)


def segment_bytes(path: Path) -> int:
    """A segment's size on disk, its write-ahead log included."""
    total = 0
    for suffix in ("", *_SIDE_FILES):
        with contextlib.suppress(OSError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def remove_segment(path: Path) -> None:
    for suffix in ("", *_SIDE_FILES):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def enforce_retention(directory: Path, max_bytes: int, max_age_s: float, keep: Path | None = None) -> int:
    """Delete segments last written over `max_age_s` ago, then the oldest until the folder is under
    `max_bytes` (never `keep`, the caller's current segment); returns how many went."""
    segments = list_segments(directory)
    sizes = {path: segment_bytes(path) for path in segments}
    cutoff = time.time() - max_age_s
    removed = 0
    for path in segments:
        if path != keep and _last_write(path) < cutoff:
            remove_segment(path)
            del sizes[path]
            removed += 1
    total = sum(sizes.values())
    for path in list(sizes):  # oldest first: names start with the start time
        if total <= max_bytes:
            break
        if path != keep:
            remove_segment(path)
            total -= sizes[path]
            removed += 1
    return removed


def _last_write(path: Path) -> float:
    latest = 0.0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            latest = max(latest, os.stat(f"{path}{suffix}").st_mtime)
    return latest


def list_segments(directory: Path) -> list[Path]:
    """Every segment in the folder, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [directory / name for name in sorted(names) if name.endswith(SUFFIX)]


class PredictionStore:
    """Reads the prediction log in `directory`: every worker's segments together.

    `read` lists a model's entries newest first; `lookup` finds entries by request id: one
    indexed query per closed segment (per 500 ids), a scan of the chunks' id lists in a segment
    still being written.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def read(
        self,
        model: str | None = None,
        *,
        version: int | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[Entry]:
        """Entries newest first: of `model` (and `version`), at or after `since` (Unix seconds)."""
        sql = "SELECT worker, request_ids, entries FROM chunks"
        params: list[Any] = []
        if since is not None:
            sql += " WHERE last >= ?"
            params.append(since)
        sql += " ORDER BY id DESC"
        entries: list[Entry] = []
        for path in list_segments(self.directory):
            if since is not None and _last_write(path) < since:
                continue  # written to last before the window opened
            found = 0
            for worker, ids, blob in self._rows(path, sql, params):
                for fields in reversed(_decode(blob, ids)):  # newest first; a chunk is in time order
                    if (model is not None and fields[2] != model) or (
                        version is not None and fields[3] != version
                    ):
                        continue
                    if since is not None and fields[1] < since:
                        continue
                    entries.append(_entry(fields, worker))
                    found += 1
                    if found == limit:
                        break
                if found == limit:
                    break
        entries.sort(key=lambda e: e.time, reverse=True)
        return entries if limit is None else entries[:limit]

    def count(self, model: str, *, since: float | None = None, status: int = 200) -> dict[int | None, int]:
        """How many entries of `model` answered with `status` each version has, at or after `since`
        (the share of predictions that got feedback is measured against it)."""
        sql = "SELECT worker, request_ids, entries FROM chunks" + (
            " WHERE last >= ?" if since is not None else ""
        )
        params: list[Any] = [] if since is None else [since]
        counts: dict[int | None, int] = {}
        for path in list_segments(self.directory):
            if since is not None and _last_write(path) < since:
                continue
            for _, ids, blob in self._rows(path, sql, params):
                for fields in _decode(blob, ids):
                    if fields[2] == model and fields[5] == status and (since is None or fields[1] >= since):
                        counts[fields[3]] = counts.get(fields[3], 0) + 1
        return counts

    def lookup(self, request_ids: Iterable[str]) -> list[Entry]:
        """The entries of these request ids, newest first. An id may match several entries (a
        client that reused one) or none (never logged, not sampled, or deleted by retention)."""
        wanted = sorted(set(request_ids))
        if not wanted:
            return []
        entries: list[Entry] = []
        for path in list_segments(self.directory):
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = (
                    "SELECT worker, request_ids, entries FROM chunks WHERE id IN "
                    f"(SELECT chunk FROM ids WHERE request_id IN ({marks}))"
                    if self._sealed(path)
                    else "SELECT worker, request_ids, entries FROM chunks WHERE EXISTS (SELECT 1 FROM "
                    f"json_each(chunks.request_ids) WHERE value IN ({marks}))"
                )
                keep = set(chunk)
                for worker, ids, blob in self._rows(path, sql, chunk):
                    entries.extend(
                        _entry(fields, worker) for fields in _decode(blob, ids) if fields[0] in keep
                    )
        entries.sort(key=lambda e: e.time, reverse=True)
        return entries

    def _sealed(self, path: Path) -> bool:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ids'"
        return any(True for _ in self._rows(path, sql, []))

    def _rows(self, path: Path, sql: str, params: list[Any]) -> Iterator[tuple[Any, ...]]:
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.OperationalError:
            return  # deleted by retention since it was listed
        try:
            yield from connection.execute(sql, params)
        except sqlite3.DatabaseError:
            return  # just created (no schema yet), deleted meanwhile, or not a segment at all
        finally:
            connection.close()


def _entry(fields: list[Any], worker: int) -> Entry:
    request_id, at, model, version, protocol, status, latency_ms, inputs, outputs, payload, omitted = fields
    summary: dict[str, Any] = {}
    if inputs is not None:
        summary["rows"] = max((shape[0] if shape else 1 for _, shape, _ in inputs), default=0)
        summary["inputs"] = {name: {"shape": shape, "dtype": dtype} for name, shape, dtype in inputs}
    if outputs is not None:
        summary["outputs"] = {
            name: {"shape": shape, "dtype": dtype}
            if values is None
            else {"shape": shape, "dtype": dtype, "values": values}
            for name, shape, dtype, values in outputs
        }
    if omitted:
        summary["payload_omitted_bytes"] = omitted
    return Entry(request_id, at, model, version, protocol, status, latency_ms, worker, summary, payload)


def export(entries: list[Entry], path: Path) -> None:
    """Write entries to `path`: JSON Lines (`.jsonl`), or Parquet (`.parquet`, needs pyarrow) with
    the summary and payload as JSON text columns."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise InvalidInputError(
            f"cannot export to {path.name!r}: name a .parquet or .jsonl file", field="export"
        )
    try:
        if suffix == ".jsonl":
            with path.open("wb") as out:
                for entry in entries:
                    out.write(orjson.dumps(entry.to_dict()) + b"\n")
        else:
            _write_parquet(entries, path)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {str(path)!r}: {exc.strerror or exc}", field="export") from exc


def _write_parquet(entries: list[Entry], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError("pyarrow", "parquet", "exporting the prediction log as Parquet") from exc
    rows = [
        {
            **entry.to_dict(),
            "time": datetime.fromtimestamp(entry.time, UTC),
            "summary": orjson.dumps(entry.summary).decode(),
            "payload": None if entry.payload is None else orjson.dumps(entry.payload).decode(),
        }
        for entry in entries
    ]
    schema = pa.schema(
        [
            ("request_id", pa.string()),
            ("time", pa.timestamp("ms", tz="UTC")),
            ("model", pa.string()),
            ("version", pa.int64()),
            ("protocol", pa.string()),
            ("status", pa.int32()),
            ("latency_ms", pa.float64()),
            ("worker", pa.int32()),
            ("summary", pa.string()),
            ("payload", pa.string()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)

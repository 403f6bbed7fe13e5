"""The prediction log's storage: SQLite segments in one folder, read newest first, looked up by id.

Each server process writes its own segment files and no other process ever writes to them, so
several workers never wait on one another's locks and need no coordination; readers merge all
segments. SQLite (in the standard library, no server) gives a transactional append of a batch of
entries, an index on the request id (late feedback is joined to its prediction by that id, see
`PredictionStore.lookup`) and, in WAL mode, `shipyard logs` reading while the servers write.

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
CREATE TABLE IF NOT EXISTS entries (
    request_id TEXT NOT NULL,
    time REAL NOT NULL,
    model TEXT NOT NULL,
    version INTEGER,
    protocol TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    worker INTEGER NOT NULL,
    summary TEXT NOT NULL,
    payload TEXT
);
CREATE INDEX IF NOT EXISTS entries_request_id ON entries (request_id);
CREATE INDEX IF NOT EXISTS entries_model_time ON entries (model, time);
"""
COLUMNS = "request_id, time, model, version, protocol, status, latency_ms, worker, summary, payload"
INSERT = f"INSERT INTO entries ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_LOOKUP_CHUNK = 500  # ids per query: under SQLite's oldest limit on bound variables (999)


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


def open_segment(path: Path) -> sqlite3.Connection:
    """A segment to append to (created with its schema if new)."""
    connection = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")  # a crash may lose the last batch, never corrupt
        connection.executescript(_SCHEMA)
    except BaseException:
        connection.close()
        raise
    return connection


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

    `read` lists a model's entries newest first; `lookup` finds entries by request id, through an
    index in each segment (cost: one indexed query per segment per 500 ids).
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
        where: list[str] = []
        params: list[Any] = []
        if model is not None:
            where.append("model = ?")
            params.append(model)
        if version is not None:
            where.append("version = ?")
            params.append(version)
        if since is not None:
            where.append("time >= ?")
            params.append(since)
        sql = f"SELECT {COLUMNS} FROM entries"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        entries: list[Entry] = []
        for path in reversed(list_segments(self.directory)):
            if since is not None and _last_write(path) < since:
                continue  # written to last before the window opened
            entries.extend(self._query(path, sql, params))
        entries.sort(key=lambda e: e.time, reverse=True)
        return entries if limit is None else entries[:limit]

    def lookup(self, request_ids: Iterable[str]) -> list[Entry]:
        """The entries of these request ids, newest first. An id may match several entries (a
        client that reused one) or none (never logged, not sampled, or deleted by retention)."""
        wanted = sorted(set(request_ids))
        entries: list[Entry] = []
        for path in list_segments(self.directory):
            for start in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[start : start + _LOOKUP_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT {COLUMNS} FROM entries WHERE request_id IN ({marks})"
                entries.extend(self._query(path, sql, chunk))
        entries.sort(key=lambda e: e.time, reverse=True)
        return entries

    def _query(self, path: Path, sql: str, params: list[Any]) -> Iterator[Entry]:
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.OperationalError:
            return  # deleted by retention since it was listed
        try:
            rows = connection.execute(sql, params).fetchall()
        except sqlite3.DatabaseError:
            return  # just created (no schema yet), deleted meanwhile, or not a segment at all
        finally:
            connection.close()
        for request_id, at, model, version, protocol, status, latency_ms, worker, summary, payload in rows:
            yield Entry(
                request_id,
                at,
                model,
                version,
                protocol,
                status,
                latency_ms,
                worker,
                orjson.loads(summary),
                None if payload is None else orjson.loads(payload),
            )


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

"""The feedback database: each labelled prediction, joined once, kept where every process sees it.

Multi-worker correctness: the label a caller sends is joined with its logged prediction by
whichever process receives it (a worker of `shipyard serve --workers N`, `shipyard feedback`,
`shipyard.feedback()`), and written here, one SQLite file (WAL mode) beside the prediction log.
Nothing about quality is kept in a process's memory: every worker scores /metrics from this
file, and so does `shipyard quality`, so all report the same figures whichever worker took the
feedback, and a restarted or replaced worker loses nothing. The primary key (model, request id)
makes a second label for a request a conflict even when two workers receive both at once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

CLASSIFICATION, REGRESSION = "classification", "regression"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    version INTEGER,
    task TEXT NOT NULL,
    predicted_at REAL NOT NULL,
    received_at REAL NOT NULL,
    predicted TEXT NOT NULL,
    truth TEXT NOT NULL,
    PRIMARY KEY (model, request_id)
);
CREATE INDEX IF NOT EXISTS feedback_window ON feedback (model, predicted_at);
"""
_COLUMNS = "model, request_id, version, task, predicted_at, received_at, predicted, truth"


@dataclass(frozen=True, slots=True)
class Labelled:
    """One request's predictions and the truth given for them, a value per row of each."""

    model: str
    request_id: str
    version: int | None
    task: str  # CLASSIFICATION or REGRESSION
    predicted_at: float  # Unix seconds: when the prediction was answered
    received_at: float  # when its feedback was joined
    predicted: list[Any]
    truth: list[Any]

    @property
    def delay_s(self) -> float:
        return max(0.0, self.received_at - self.predicted_at)


class FeedbackStore:
    """Appends labelled predictions and reads them back, newest prediction first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False

    def add(self, records: list[Labelled]) -> list[bool]:
        """Store `records` in one transaction; False for each whose request had feedback already."""
        if not records:
            return []
        with self._connect(write=True) as db:
            stored = []
            for r in records:
                cursor = db.execute(
                    f"INSERT OR IGNORE INTO feedback ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        r.model,
                        r.request_id,
                        r.version,
                        r.task,
                        r.predicted_at,
                        r.received_at,
                        orjson.dumps(r.predicted).decode(),
                        orjson.dumps(r.truth).decode(),
                    ),
                )
                stored.append(cursor.rowcount == 1)
            return stored

    def read(
        self,
        models: Iterable[str],
        *,
        version: int | None = None,
        since: float | None = None,
        rows: int | None = None,
    ) -> list[Labelled]:
        """Records of `models` (of `version`), prediction at or after `since`, newest first; per
        model and version, the newest until they hold `rows` rows."""
        names = sorted(set(models))
        if not names or not self.path.exists():
            return []
        sql = f"SELECT {_COLUMNS} FROM feedback WHERE model IN ({', '.join('?' * len(names))})"
        params: list[Any] = list(names)
        if version is not None:
            sql += " AND version = ?"
            params.append(version)
        if since is not None:
            sql += " AND predicted_at >= ?"
            params.append(since)
        sql += " ORDER BY predicted_at DESC"
        counted: dict[tuple[str, int | None], int] = {}
        found = []
        with self._connect() as db:
            for row in db.execute(sql, params):
                key = (row[0], row[2])
                if rows is not None and counted.get(key, 0) >= rows:
                    continue
                model, request_id, number, task, predicted_at, received_at, predicted, truth = row
                record = Labelled(
                    model,
                    request_id,
                    number,
                    task,
                    predicted_at,
                    received_at,
                    orjson.loads(predicted),
                    orjson.loads(truth),
                )
                counted[key] = counted.get(key, 0) + len(record.truth)
                found.append(record)
        return found

    def mark(self) -> int:
        """A number that changes whenever a record is added (for caches)."""
        if not self.path.exists():
            return 0
        with self._connect() as db:
            (last,) = db.execute("SELECT coalesce(max(rowid), 0) FROM feedback").fetchone()
            return int(last)

    def prune(self, before: float) -> int:
        """Delete the records of predictions made before `before` (their log entries are gone)."""
        if not self.path.exists():
            return 0
        with self._connect(write=True) as db:
            return db.execute("DELETE FROM feedback WHERE predicted_at < ?", (before,)).rowcount

    @contextlib.contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        if write and not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            if not self._ready:
                db.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
                db.executescript(_SCHEMA)
                self._ready = True
            if write:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            else:
                yield db
        finally:
            db.close()

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
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    version INTEGER,
    task TEXT NOT NULL,
    predicted_at REAL NOT NULL,
    received_at REAL NOT NULL,
    predicted TEXT NOT NULL,
    truth TEXT NOT NULL,
    UNIQUE (model, request_id)
);
CREATE INDEX IF NOT EXISTS feedback_window ON feedback (model, version, predicted_at);
"""
# Ids only grow (AUTOINCREMENT never reuses one, even after deletes), so a reader that saw up to
# id N finds everything added since with `id > N`.
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


def _record(row: tuple[Any, ...]) -> Labelled:
    model, request_id, version, task, predicted_at, received_at, predicted, truth = row
    return Labelled(
        model,
        request_id,
        version,
        task,
        predicted_at,
        received_at,
        orjson.loads(predicted),
        orjson.loads(truth),
    )


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
        models: Iterable[str] | None,
        *,
        version: int | None = None,
        since: float | None = None,
        rows: int | None = None,
        upto: int | None = None,
    ) -> list[Labelled]:
        """Records of `models` (None: all) and `version`, prediction at or after `since`, added
        with an id up to `upto`, newest prediction first; per model and version, the newest
        until they hold `rows` rows."""
        if not self.path.exists():
            return []
        where, params = "1", list[Any]()
        if models is not None:
            names = sorted(set(models))
            if not names:
                return []
            where = f"model IN ({', '.join('?' * len(names))})"
            params += names
        for clause, value in (("version = ?", version), ("predicted_at >= ?", since), ("id <= ?", upto)):
            if value is not None:
                where += f" AND {clause}"
                params.append(value)
        found = []
        with self._connect() as db:
            pairs = db.execute(f"SELECT DISTINCT model, version FROM feedback WHERE {where}", params)
            for model, number in pairs.fetchall():
                # One version at a time, newest first along the index: a window reads its rows
                # only (each record holds a row or more, so `rows` records are enough).
                sql = (
                    f"SELECT {_COLUMNS} FROM feedback WHERE {where} AND model = ? AND version IS ? "
                    "ORDER BY predicted_at DESC" + (" LIMIT ?" if rows is not None else "")
                )
                held = 0
                for row in db.execute(sql, [*params, model, number, *([] if rows is None else [rows])]):
                    record = _record(row)
                    found.append(record)
                    held += len(record.truth)
                    if rows is not None and held >= rows:
                        break
        found.sort(key=lambda r: r.predicted_at, reverse=True)
        return found

    def added(self, after: int, since: float) -> list[Labelled]:
        """Records added with an id over `after`, of predictions made at or after `since`."""
        if not self.path.exists():
            return []
        with self._connect() as db:
            sql = f"SELECT {_COLUMNS} FROM feedback WHERE id > ? AND predicted_at >= ?"
            return [_record(row) for row in db.execute(sql, (after, since))]

    def mark(self) -> int:
        """The id of the last record added (0 for none): it changes whenever one is."""
        if not self.path.exists():
            return 0
        with self._connect() as db:
            (last,) = db.execute(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'feedback'"
            ).fetchone()
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

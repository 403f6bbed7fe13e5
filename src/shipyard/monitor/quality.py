"""Live quality: the labelled predictions of a window, scored as scikit-learn scores them.

Classifiers get accuracy and macro precision, recall and F1 over every class seen in the truth
or the predictions (a class never predicted has precision 0, as sklearn's `zero_division=0`),
and per class the same for the first `max_classes` classes in sorted order (bounded: class
names become metric labels). Regressors get MAE and RMSE. A window is the newest labelled rows
of predictions made in the last `seconds` (by prediction time, so late feedback lands where its
prediction was), at most `rows` of them.

The server scores /metrics from the shared feedback store at scrape time (see
feedback_store.py and `QualityMonitor`), never on a request's path: again when feedback was added
or ten seconds passed (so the time window slides), else from its cache.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.monitor import metrics
from shipyard.monitor.feedback_store import CLASSIFICATION, FeedbackStore, Labelled
from shipyard.monitor.metrics import QualitySeries
from shipyard.monitor.predictions import PredictionStore
from shipyard.settings import Settings

log = logging.getLogger("shipyard.monitor")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MAX_LABEL = 64  # characters of a class name in a metric label
_CACHE_S = 10.0


@dataclass(frozen=True, slots=True)
class ClassScores:
    label: Any
    support: int  # rows whose truth is this class
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class Scores:
    task: str
    rows: int
    metrics: dict[str, float]  # accuracy, precision_macro, recall_macro, f1_macro; or mae, rmse
    classes: list[ClassScores] = field(default_factory=list)

    def metric_series(self) -> list[tuple[str, float]]:
        """(metric label, value) for /metrics: the figures, then `precision:<class>`, … per class."""
        series = list(self.metrics.items())
        for c in self.classes:
            name = str(c.label)[:_MAX_LABEL]
            series += [(f"precision:{name}", c.precision), (f"recall:{name}", c.recall), (f"f1:{name}", c.f1)]
        return series

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "rows": self.rows,
            "metrics": self.metrics,
            "classes": [
                {
                    "class": c.label,
                    "support": c.support,
                    "precision": c.precision,
                    "recall": c.recall,
                    "f1": c.f1,
                }
                for c in self.classes
            ],
        }


def score(task: str, truth: list[Any], predicted: list[Any], max_classes: int = 20) -> Scores:
    """The quality of `predicted` against `truth` (equal lengths, at least one row)."""
    if task == CLASSIFICATION:
        return _classification(truth, predicted, max_classes)
    errors = [float(p) - float(t) for t, p in zip(truth, predicted, strict=True)]
    mae = math.fsum(abs(e) for e in errors) / len(errors)
    rmse = math.sqrt(math.fsum(e * e for e in errors) / len(errors))
    return Scores(task, len(errors), {"mae": mae, "rmse": rmse})


def _classification(truth: list[Any], predicted: list[Any], max_classes: int) -> Scores:
    tp: dict[Any, int] = {}
    fp: dict[Any, int] = {}
    fn: dict[Any, int] = {}
    right = 0
    for t, p in zip(truth, predicted, strict=True):
        if t == p:
            right += 1
            tp[t] = tp.get(t, 0) + 1
        else:
            fn[t] = fn.get(t, 0) + 1
            fp[p] = fp.get(p, 0) + 1
    labels = sorted({*tp, *fp, *fn}, key=_order)
    per_class = []
    for label in labels:
        hit, extra, missed = tp.get(label, 0), fp.get(label, 0), fn.get(label, 0)
        precision = hit / (hit + extra) if hit + extra else 0.0
        recall = hit / (hit + missed) if hit + missed else 0.0
        f1 = 2 * hit / (2 * hit + extra + missed)  # sklearn's form: 0 when hit is 0
        per_class.append(ClassScores(label, hit + missed, precision, recall, f1))
    count = len(per_class)
    figures = {
        "accuracy": right / len(truth),
        "precision_macro": math.fsum(c.precision for c in per_class) / count,
        "recall_macro": math.fsum(c.recall for c in per_class) / count,
        "f1_macro": math.fsum(c.f1 for c in per_class) / count,
    }
    return Scores(CLASSIFICATION, len(truth), figures, per_class[:max_classes])


def _order(label: Any) -> tuple[str, Any]:
    """Sorts classes of one type naturally, and mixed types at all (never raising)."""
    return (
        ("0", label)
        if isinstance(label, int | float) and not isinstance(label, bool)
        else (type(label).__name__, label)
    )


def score_records(records: list[Labelled], rows: int | None, max_classes: int) -> Scores | None:
    """The scores of one version's records (newest first), their first `rows` rows at most."""
    truth: list[Any] = []
    predicted: list[Any] = []
    task = records[0].task if records else None
    for record in records:
        if record.task != task:
            continue  # a version's outputs never change: only a damaged store mixes tasks
        truth += record.truth
        predicted += record.predicted
        if rows is not None and len(truth) >= rows:
            del truth[rows:], predicted[rows:]
            break
    return None if task is None or not truth else score(task, truth, predicted, max_classes)


@dataclass(frozen=True)
class Window:
    """The latest `rows` labelled rows (all if None) of predictions made in the last `seconds`."""

    rows: int | None
    seconds: float
    text: str

    @classmethod
    def parse(cls, text: str | None, settings: Settings) -> Window:
        """`500` (rows) or `90s`, `15m`, `1h`, `1d`; unset: what /metrics scores (quality.window_rows
        and window_s). 400 naming `window` if malformed or longer than the prediction log keeps."""
        kept = settings.prediction_log.max_age_s
        if text is None or not text.strip():
            quality = settings.quality
            return cls(quality.window_rows, min(quality.window_s, kept), "default")
        value = text.strip().lower()
        if value.isdigit() and int(value) >= 1:
            return cls(int(value), kept, value)
        match = _DURATION.match(value)
        if match is None:
            raise InvalidInputError(
                f"window must be a row count (500) or a duration (90s, 15m, 1h, 1d), got {text[:40]!r}",
                field="window",
            )
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
        if not 0 < seconds <= kept:
            raise InvalidInputError(
                f"window {text!r} is longer than the prediction log keeps ({_duration(kept)}, setting "
                "prediction_log.max_age_s): feedback only joins predictions it still holds",
                field="window",
            )
        return cls(None, seconds, value)


def _duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _SECONDS[unit] and seconds % _SECONDS[unit] == 0:
            return f"{int(seconds // _SECONDS[unit])}{unit}"
    return f"{seconds:g}s"


def report(
    settings: Settings, model: str, version: int | None, window: Window, now: float | None = None
) -> dict[str, Any]:
    """`shipyard quality` and the quality route: per version with feedback in the window, its
    scores, how many of its logged predictions got feedback (coverage) and how late (delay)."""
    now = time.time() if now is None else now
    since = now - window.seconds
    records = FeedbackStore(settings.feedback_path).read(
        [model], version=version, since=since, rows=window.rows
    )
    by_version: dict[int | None, list[Labelled]] = {}
    for record in records:
        by_version.setdefault(record.version, []).append(record)
    logged = PredictionStore(settings.predictions_dir).count(model, since=since) if by_version else {}
    versions = []
    for number, held in sorted(by_version.items(), key=lambda item: -(item[0] or 0)):
        scores = score_records(held, window.rows, settings.quality.max_classes)
        if scores is None:
            continue
        oldest = min(r.predicted_at for r in held)
        # Coverage over the span the window covers: all of it, or back to its oldest record.
        seen = logged.get(number, 0) if window.rows is None else _count_since(settings, model, number, oldest)
        delays = sorted(r.delay_s for r in held)
        versions.append(
            {
                "version": number,
                **scores.to_dict(),
                "feedback": {
                    "requests": len(held),
                    "logged": seen,
                    "coverage": len(held) / seen if seen else None,
                    "delay_s": {"median": _quantile(delays, 0.5), "p90": _quantile(delays, 0.9)},
                    "since": _iso(oldest),
                },
            }
        )
    return {
        "model": model,
        "version": version,
        "window": {
            "requested": window.text,
            "rows": window.rows,
            "seconds": window.seconds,
            "since": _iso(since),
        },
        "versions": versions,
    }


def _count_since(settings: Settings, model: str, version: int | None, since: float) -> int:
    return PredictionStore(settings.predictions_dir).count(model, since=since).get(version, 0)


def _quantile(ordered: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not ordered:
        return None
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


class QualityMonitor:
    """The server's live quality in /metrics, scored from the store every process shares.

    It holds each version's window in memory as a cache of the store: the first scrape reads the
    windows, each later one only the feedback added since (ids only grow), so a scrape costs the
    new records and the scoring, not a re-read of every window.
    """

    def __init__(self, settings: Settings, models: Callable[[], Iterable[str]]) -> None:
        self.settings = settings
        self.store = FeedbackStore(settings.feedback_path)
        self._models = models
        self._window = Window.parse(None, settings)
        self._held: dict[tuple[str, int | None], list[Labelled]] | None = None  # newest first
        self._read_upto = 0
        self._cached: tuple[tuple[int, int], list[QualitySeries]] | None = None
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str], tuple[Any, Any]] = {}
        metrics.QUALITY.add_source(self.series)

    def series(self) -> Iterator[QualitySeries]:
        try:
            key = (self.store.mark(), int(time.time() // _CACHE_S))
            with self._lock:
                if self._cached is None or self._cached[0] != key:
                    self._cached = (key, self._compute(key[0]))
                computed = self._cached[1]
        except Exception:  # a damaged store must not take every metric down with it
            log.exception("cannot score live quality for /metrics from %s", self.store.path)
            return iter(())
        served = set(self._models())
        return iter([s for s in computed if s[0] in served])

    def _compute(self, upto: int) -> list[QualitySeries]:
        window, quality = self._window, self.settings.quality
        since = time.time() - window.seconds
        if self._held is None:
            fresh = self.store.read(None, since=since, rows=window.rows, upto=upto)
            self._held = {}
        else:
            fresh = self.store.added(self._read_upto, since)
        self._read_upto = max(self._read_upto, upto)
        for record in fresh:
            self._held.setdefault((record.model, record.version), []).append(record)
        series = []
        for key in sorted(self._held, key=lambda k: (k[0], k[1] or 0)):
            held = self._held[key] = _trimmed(self._held[key], since, window.rows)
            scores = score_records(held, window.rows, quality.max_classes)
            if scores is not None and scores.rows >= quality.min_rows:
                series.append((key[0], str(key[1]), scores.rows, scores.metric_series()))
        return series

    def note(self, records: Iterable[Labelled]) -> None:
        """Count feedback this process accepted, and how late it came."""
        for record in records:
            key = (record.model, str(record.version))
            pair = self._counters.get(key)
            if pair is None:
                pair = self._counters[key] = (
                    metrics.QUALITY_FEEDBACK.labels(*key),
                    metrics.QUALITY_FEEDBACK_DELAY.labels(*key),
                )
            pair[0].inc()
            pair[1].observe(record.delay_s)


def _trimmed(records: list[Labelled], since: float, rows: int | None) -> list[Labelled]:
    """A version's records in the window, newest prediction first: those made since `since`,
    the newest until they hold `rows` rows."""
    records = sorted(
        (r for r in records if r.predicted_at >= since), key=lambda r: r.predicted_at, reverse=True
    )
    if rows is None:
        return records
    held = 0
    for count, record in enumerate(records, 1):
        held += len(record.truth)
        if held >= rows:
            return records[:count]
    return records

"""Live windows of recent inputs, one per served version with a reference profile.

Serving only appends: after each batch a model ran, `DriftMonitor.observe` puts a reference to
the batch's inputs (already validated and merged, never copied) in a ring, about a microsecond
per batch, not per request. Drift is computed when
someone asks (`/metrics`, the drift route) on a snapshot of the ring, and cached until the ring
changes. A snapshot turns only the requests that arrived since the previous one into each
feature's values (text lengths, embeddings, category keys), appended to the previous snapshot's
and kept for the next: a scrape every second costs what arrived in that second, not the whole
window again. Memory is bounded three ways: rows (`max_rows`), age (`max_age_s`) and bytes
(`max_bytes`, for the ring); wide inputs (images) are kept as each row's mean and std only.

With several workers each keeps its own ring, and every `share_s` seconds writes its feature
values, if they changed, to the directory the workers share (`monitor.window_share`); a report
merges its own values with the other workers' latest by time, so every worker answers for the
inputs of all of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from time import monotonic
from typing import Any, Protocol

import numpy as np

from shipyard.errors import InvalidInputError, NotFoundError, ShipyardError
from shipyard.monitor import metrics
from shipyard.monitor.drift import DriftReport, compare_columns, feature_columns
from shipyard.monitor.profile import Profile, output_key, summarise, summary_key
from shipyard.monitor.window_share import SharedWindow, version_folder
from shipyard.settings import DriftSettings
from shipyard.tensors import numpy_dtype
from shipyard.types import ModelVersion, Signature

log = logging.getLogger("shipyard.monitor")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TEXT_ROW_BYTES = 256  # what a row of text is taken to cost (numpy counts only the pointer)


class Served(Protocol):
    """What the monitor needs of a served version (`serve.repository.ServedVersion`)."""

    version: ModelVersion
    state: str
    drift_window: Any  # where the monitor keeps the version's window: an attribute read is cheapest


@dataclass(frozen=True)
class Window:
    """Which recent rows to judge: the last `rows`, or those of the last `seconds`; all if neither."""

    rows: int | None = None
    seconds: float | None = None
    text: str = "all"

    @classmethod
    def parse(cls, text: str | None, settings: DriftSettings) -> Window:
        """`500` (rows) or `90s`, `15m`, `1h`, `1d`; 400 naming `window` if malformed or larger
        than what is kept."""
        if text is None or not text.strip():
            return cls()
        value = text.strip().lower()
        if value.isdigit():
            rows = int(value)
            if not 1 <= rows <= settings.max_rows:
                raise InvalidInputError(
                    f"window {text!r} asks for {rows} rows; this server keeps at most {settings.max_rows} "
                    "per version (setting drift.max_rows)",
                    field="window",
                )
            return cls(rows=rows, text=value)
        match = _DURATION.match(value)
        if match is None:
            raise InvalidInputError(
                f"window must be a row count (500) or a duration (90s, 15m, 1h, 1d), got {text[:40]!r}",
                field="window",
            )
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
        if not 0 < seconds <= settings.max_age_s:
            raise InvalidInputError(
                f"window {text!r} is longer than the {_duration(settings.max_age_s)} of inputs this "
                "server keeps (setting drift.max_age_s)",
                field="window",
            )
        return cls(seconds=seconds, text=value)


def _duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _SECONDS[unit] and seconds % _SECONDS[unit] == 0:
            return f"{int(seconds // _SECONDS[unit])}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Selection:
    """What a window selects: each feature's values, their row count, a key that changes whenever
    they do, and the rows each worker contributed (when workers share their windows)."""

    columns: dict[str, np.ndarray]
    rows: int
    key: tuple[Any, ...]
    workers: tuple[tuple[str, int], ...] = ()


class InputWindow:
    """The recent inputs of one served version: a ring of (time, rows, bytes, arrays, sequence).

    Only the event loop's thread changes the ring (`add`); reports read a copy of it, from any
    thread, so no lock is taken on the request path. Chunks are numbered 1, 2, … as they come, so
    a copy says which chunks a previous merge already holds and which have left the ring.
    """

    def __init__(self, profile: Profile, settings: DriftSettings, signature: Signature | None = None) -> None:
        self.profile = profile
        self.settings = settings
        self.started = time.time()
        self._chunks: deque[tuple[float, int, int, dict[str, np.ndarray], int]] = deque()
        self._summarised = profile.summarised
        self._outputs = profile.outputs  # an embedding model's vectors, kept beside its inputs
        self._text_inputs = frozenset(
            f.input for f in profile.features if f.derive in ("length", "tokens", "embedding")
        )
        self.shared: SharedWindow | None = None  # set by the monitor when workers share windows
        self.rows = 0
        self.bytes = 0
        self.added = 0  # part of the cache key of computed reports
        self._cache: dict[Window, tuple[tuple[Any, ...], float, DriftReport]] = {}  # key, when, report
        self._lock = threading.Lock()  # guards the cache: reports are computed in worker threads
        self._max_rows, self._max_bytes, self._max_age_s = (
            settings.max_rows,
            settings.max_bytes,
            settings.max_age_s,
        )
        self._row_bytes = (
            _row_bytes(signature, self._summarised) if signature is not None and not self._outputs else None
        )
        # The ring's rows as merged by the last snapshot: each feature's values, each row's time and
        # chunk number, and the number of the newest chunk merged. Replaced, never changed in place.
        self._merge_lock = threading.Lock()
        self._merged: dict[str, np.ndarray] = {}
        self._times = np.empty(0)
        self._numbers = np.empty(0, dtype=np.int64)
        self._merged_upto = 0

    def add(
        self, arrays: dict[str, np.ndarray], rows: int, outputs: dict[str, np.ndarray] | None = None
    ) -> None:
        """Keep one batch's inputs, and the watched outputs (the serving path: no copy, no
        computation)."""
        if self._outputs:
            arrays = {**arrays, **{output_key(n): _output(outputs, n, rows) for n in self._outputs}}
        if self._summarised:
            arrays = {
                (summary_key(k) if k in self._summarised else k): (
                    summarise(a) if k in self._summarised else a
                )
                for k, a in arrays.items()
            }
        if self._row_bytes is not None:  # every input has a fixed row size
            size = rows * self._row_bytes
        else:
            size = 0
            for name, array in arrays.items():
                size += array.size * _TEXT_ROW_BYTES if name in self._text_inputs else array.nbytes
        now = monotonic()
        chunks = self._chunks
        self.added += 1
        chunks.append((now, rows, size, arrays, self.added))
        self.rows += rows
        self.bytes += size
        if self.rows > self._max_rows or self.bytes > self._max_bytes or chunks[0][0] < now - self._max_age_s:
            while len(chunks) > 1 and (
                self.rows > self._max_rows
                or self.bytes > self._max_bytes
                or chunks[0][0] < now - self._max_age_s
            ):
                _, dropped_rows, dropped_size, _, _ = chunks.popleft()
                self.rows -= dropped_rows
                self.bytes -= dropped_size

    def snapshot(self, window: Window) -> Selection:
        """The rows `window` selects, the newest of this worker's and (when shared) the other
        workers' together, as each feature's values."""
        merged, times, newest = self.merged()
        key: tuple[Any, ...] = (newest,)
        owners: np.ndarray | None = None
        labels = [self.shared.label if self.shared is not None else ""]
        if self.shared is not None:
            peers = [p for p in self.shared.peers() if len(p.times)]
            if peers:
                sources = [(p.times, p.columns) for p in peers]
                if len(times):
                    sources.insert(0, (times, merged))
                else:  # nothing of its own: rows are the others' only
                    labels = []
                labels += [p.label for p in peers]
                key += tuple(p.stamp for p in peers)
                times = np.concatenate([t for t, _ in sources])
                order = np.argsort(times, kind="stable")
                times = times[order]
                merged = {
                    f.name: np.concatenate([c[f.name] for _, c in sources])[order]
                    for f in self.profile.features
                }
                owners = np.repeat(np.arange(len(sources)), [len(t) for t, _ in sources])[order]
        since = monotonic() - min(window.seconds or self.settings.max_age_s, self.settings.max_age_s)
        limit = window.rows or self.settings.max_rows
        start = max(int(np.searchsorted(times, since)), len(times) - limit)
        rows = len(times) - start
        workers: tuple[tuple[str, int], ...] = ()
        if self.shared is not None:
            counts = np.bincount(owners[start:], minlength=len(labels)) if owners is not None else [rows]
            workers = tuple(sorted((label, int(n)) for label, n in zip(labels, counts, strict=True) if n))
        if not rows:
            return Selection({}, 0, (*key, 0), workers)
        return Selection({name: array[start:] for name, array in merged.items()}, rows, (*key, rows), workers)

    def merged(self) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
        """Every row in the ring as each feature's values, with each row's time, and the number of
        the newest chunk. Rows of chunks that left the ring are cut off the previous merge, and only
        chunks added since are turned into feature values and appended to it."""
        chunks = list(self._chunks)  # one atomic copy: the event loop may append meanwhile
        with self._merge_lock:
            first = chunks[0][4] if chunks else self._merged_upto + 1
            gone = int(np.searchsorted(self._numbers, first))  # rows of chunks no longer in the ring
            new = chunks[max(0, self._merged_upto + 1 - first) :]
            if gone or new:
                counts = np.fromiter(map(itemgetter(1), new), np.int64, len(new))
                times = np.repeat(np.fromiter(map(itemgetter(0), new), np.float64, len(new)), counts)
                numbers = np.repeat(np.fromiter(map(itemgetter(4), new), np.int64, len(new)), counts)
                self._times = np.concatenate([self._times[gone:], times])
                self._numbers = np.concatenate([self._numbers[gone:], numbers])
                old = self._merged
                if new:
                    try:
                        arrays = {
                            name: np.concatenate(list(map(itemgetter(name), map(itemgetter(3), new))))
                            for name in new[0][3]
                        }
                        fresh = feature_columns(self.profile, arrays)
                    except ValueError:  # batches of other widths (a dynamic dimension): one by one
                        parts = [feature_columns(self.profile, chunk[3]) for chunk in new]
                        fresh = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
                    self._merged = {
                        name: np.concatenate([old[name][gone:], values]) if name in old else values
                        for name, values in fresh.items()
                    }
                else:
                    self._merged = {name: values[gone:] for name, values in old.items()}
                self._merged_upto = chunks[-1][4] if chunks else self._merged_upto
            return self._merged, self._times, self._merged_upto

    def report(self, window: Window, reuse_s: float = 0.0) -> DriftReport:
        """Drift of the rows `window` selects: cached until the selection changes, or, with
        `reuse_s`, for that many seconds after it was computed whatever came in since."""
        with self._lock:
            cached = self._cache.get(window)
        if cached is not None and monotonic() - cached[1] < reuse_s:
            return cached[2]
        selected = self.snapshot(window)
        if cached is not None and cached[0] == selected.key:
            return cached[2]
        if selected.rows:
            report = compare_columns(
                self.profile, selected.columns, selected.rows, self.settings, selected.workers
            )
        else:
            report = DriftReport(
                0, self.profile.rows, (), self.settings.drift_share, self.settings.min_rows, selected.workers
            )
        with self._lock:
            if len(self._cache) > 8:
                self._cache.clear()  # windows are chosen by callers: keep a few
            self._cache[window] = (selected.key, monotonic(), report)
        return report


def _output(outputs: dict[str, np.ndarray] | None, name: str, rows: int) -> np.ndarray:
    """A watched output of a batch; rows of NaN (missing) if the batch did not return it."""
    found = None if outputs is None else outputs.get(name)
    return found if found is not None and len(found) == rows else np.full((rows, 1), np.nan)


def _row_bytes(signature: Signature, summarised: frozenset[str]) -> int | None:
    """Bytes a row of the inputs takes, when every input's row has a fixed size."""
    total = 0
    for spec in signature.inputs:
        if spec.name in summarised:
            total += 16  # a row's mean and std
        elif spec.datatype == "BYTES" or any(d < 0 for d in spec.shape[1:]):
            return None
        else:
            total += math.prod(spec.shape[1:]) * numpy_dtype(spec.datatype).itemsize
    return total


class _Off:
    """The window of a version without a usable profile (or with drift off): keeps nothing."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def add(
        self, arrays: dict[str, np.ndarray], rows: int, outputs: dict[str, np.ndarray] | None = None
    ) -> None:
        pass


_OFF = _Off()


class DriftMonitor:
    """Every served version's window; the server's one drift object (built in `serve.app`)."""

    def __init__(
        self,
        settings: DriftSettings,
        fetch_profile: Callable[[ModelVersion], dict[str, Any] | None] | None = None,
        *,
        share_dir: Path | None = None,
        worker: int = 0,
    ) -> None:
        """`share_dir`: where the workers of one server share their windows (None: one process)."""
        self.settings = settings
        self._fetch_profile = fetch_profile
        self.share_dir = share_dir
        self.worker = worker
        self._windows: weakref.WeakKeyDictionary[Any, InputWindow | _Off] = weakref.WeakKeyDictionary()
        self._metrics_window = Window.parse(settings.window, settings)
        self._lock = threading.Lock()
        metrics.DRIFT.add_source(self.series)

    def observe(
        self,
        served: Served,
        arrays: dict[str, np.ndarray],
        rows: int,
        outputs: dict[str, np.ndarray] | None = None,
    ) -> None:
        """After a batch ran: keep its inputs (and an embedding model's vectors, when its profile
        has them); the one call on the serving path."""
        window = served.drift_window
        if window is None:
            window = self._open(served, served.version.data_profile)
        window.add(arrays, rows, outputs)

    def _open(self, served: Served, stored: dict[str, Any] | None) -> InputWindow | _Off:
        window: InputWindow | _Off = _OFF
        if self.settings.enabled and stored is not None:
            try:
                profile = Profile.from_dict(stored).check(served.version.signature, str(served.version.ref))
                window = InputWindow(profile, self.settings, served.version.signature)
                if self.share_dir is not None:
                    folder = self.share_dir / version_folder(served.version.name, served.version.version)
                    window.shared = SharedWindow(folder, self.worker, profile)
            except ShipyardError as exc:
                log.warning("no drift for %s: %s", served.version.ref, exc.message)
                window = _Off(exc.message)
        served.drift_window = window
        with self._lock:  # `series` iterates the windows in the /metrics thread
            self._windows[served] = window
        return window

    def attach(self, served: Served) -> None:
        """A version just loaded: open its window now, so that this worker reports the other
        workers' inputs (and /metrics their drift) before it has run a batch of its own."""
        if served.drift_window is None:
            self._open(served, served.version.data_profile)

    def share(self) -> None:
        """Write each window that changed since it was last shared (a worker thread, every
        `share_s` seconds, with several workers)."""
        with self._lock:
            held = list(self._windows.items())
        for served, window in held:
            if isinstance(window, InputWindow) and window.shared is not None and served.state != "unloaded":
                try:
                    window.shared.write(window)
                except Exception:  # one version's failure must not stop the others sharing
                    log.exception("cannot share the drift window of %s", served.version.ref)

    async def sharing(self) -> None:
        """Share the windows every `share_s` seconds, until cancelled (the server's lifespan)."""
        while True:
            await asyncio.sleep(self.settings.share_s)
            await asyncio.to_thread(self.share)

    async def report(self, served: Served, window: str | None) -> tuple[InputWindow, DriftReport]:
        """The drift of one served version over `window` (see `Window.parse`), computed off the
        event loop. 404 with how to add one if the version has no profile; a profile added since
        the version loaded (`shipyard profile`) is picked up here, its window starting now."""
        selected = Window.parse(window, self.settings)
        live = served.drift_window
        if not isinstance(live, InputWindow):
            ref = served.version.ref
            if not self.settings.enabled:
                raise NotFoundError(
                    f"drift is off on this server (setting drift.enabled), so {ref} has no window",
                    field="drift",
                )
            stored = served.version.data_profile
            if stored is None and self._fetch_profile is not None:
                stored = await asyncio.to_thread(self._fetch_profile, served.version)
            if stored is None:
                raise NotFoundError(
                    f"{ref} has no reference profile; add one with `shipyard profile {ref} FILE` "
                    "(a sample of its training inputs)",
                    field="profile",
                )
            opened = self._open(served, stored)
            if not isinstance(opened, InputWindow):
                raise NotFoundError(f"no drift for {ref}: {opened.reason}", field="profile")
            live = opened
        return live, await asyncio.to_thread(live.report, selected)

    def series(self) -> Iterator[tuple[str, str, int, bool, list[tuple[str, str, float]]]]:
        """Per version with a verdict: (model, version, rows, detected, [(feature, method, score)])
        for `/metrics`, the first `max_metric_features` features of the profile in its order."""
        with self._lock:
            held = list(self._windows.items())
        for served, window in held:
            if not isinstance(window, InputWindow) or served.state == "unloaded":
                continue
            try:
                # Scrapes come every few seconds, from each Prometheus: recomputing every time cost a
                # busy server 6% of its core at one scrape a second (benchmarks/monitoring_cost.py).
                report = window.report(self._metrics_window, self.settings.metrics_refresh_s)
            except Exception:  # one version's failure must not take every metric down with it
                log.exception("cannot compute the drift of %s for /metrics", served.version.ref)
                continue
            if report.detected is None:
                continue
            order = {f.name: i for i, f in enumerate(window.profile.features)}
            scored = sorted((f for f in report.features if f.score is not None), key=lambda f: order[f.name])
            features = [(f.name, f.method, float(f.score or 0.0)) for f in scored]
            version = served.version
            yield (
                version.name,
                str(version.version),
                report.rows,
                report.detected,
                features[: self.settings.max_metric_features],
            )

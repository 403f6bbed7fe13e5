"""Recording the prediction log without slowing requests: sample, queue, encode, write in a thread.

The request path draws one random number and appends to a bounded deque (no lock; a wake-up
only when it is half full). Every 256 entries queued, the event loop encodes them into one chunk
between two of its turns; a writer thread writes the chunks into this process's segment every
second, and encodes itself what the loop has not (the entries of a quiet second, or everything
when the recorder runs without an event loop). Encoding on the loop spares the GIL the round trips
between the loop and a thread encoding beside it: with the writer encoding every entry, in slices
with pauses between, monitoring on cost p99 +20–30% and 8–12.5% of requests/s; with the loop
encoding, +6–12% and 6.5–9.5% (benchmarks/monitoring_cost.py, `--fresh`, interleaved).

An entry refers to its rows of the batch its request ran in (prediction_chunks.Ran), which all that
batch's entries share, rather than holding its own arrays. When the queue is full, or the disk
refuses a write, entries are dropped and counted in
`shipyard_predictionlog_dropped_total{model,reason}`, with a warning at most once a minute: a
request never waits for the log and never fails because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from itertools import repeat, starmap
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from shipyard.monitor import metrics
from shipyard.monitor.prediction_chunks import (
    HELD,
    Pending,
    Ran,
    RanParts,
    describe,
    encode_batched,
    encode_each,
)
from shipyard.monitor.predictions import Chunk, Segment, enforce_retention, segment_bytes, segment_name
from shipyard.settings import PredictionLogSettings, Settings

log = logging.getLogger("shipyard.predictions")

# The writer wakes every second, or once the queue is half full: larger batches cost less CPU
# per entry (measured: about half of what 0.2 s rounds cost).
_INTERVAL_S = 1.0
_CHUNK = 256  # entries per chunk
# Between chunks it encodes, the writer sleeps a moment, which releases the GIL: a second's entries
# are tens of milliseconds of Python, and encoded in one go (the interpreter takes the GIL from a
# thread only every 5 ms) they stall the event loop long enough to double the p99 of a busy
# server; with the pauses, the p99 added was about half (benchmarks/monitoring_cost.py, `off,log`).
_PAUSE_S = 0.001
_WARN_EVERY_S = 60.0
_RETENTION_EVERY_S = 60.0
_MAX_HELD_BYTES = 64 << 20  # arrays queued entries keep alive; past it, entries are summarized at once
QUEUE_FULL, WRITE_FAILED = "queue_full", "write_failed"
_ID, _MODEL, _KEY, _MADE = itemgetter(1), itemgetter(2), itemgetter(7), itemgetter(12)
_WHY = {
    QUEUE_FULL: "the queue was full: the writer fell behind (lower prediction_log.sample_rate)",
    WRITE_FAILED: "the prediction log could not be written",
}


class Sample:
    """What one request ran on, noted as it goes (None where it never got): its inputs by the
    dataplane, then, once answered, its batch (`ran`) and its rows there by the batcher. The
    outputs of a request answered outside a batcher go in `outputs`.

    The defaults are class attributes, with no `__init__`: one is made for every request, and a
    Python `__init__` setting five slots cost more than everything else the log adds before the
    entry is queued (measured with cProfile on benchmarks/prediction_log.py's load)."""

    inputs: dict[str, np.ndarray] | None = None
    outputs: dict[str, np.ndarray] | None = None
    ran: Ran | None = None
    offset = 0
    rows = 0


class PredictionRecorder:
    """One process's prediction log writer. `record` is the only call on the request path."""

    def __init__(self, settings: PredictionLogSettings, directory: Path, worker: int = 0) -> None:
        self.directory = directory
        self.worker = worker
        self._settings = settings
        self._default = _rates(settings.sample_rate, settings.payload_rate)
        self._rates = {
            name: _rates(
                settings.sample_rate if m.sample_rate is None else m.sample_rate,
                settings.payload_rate if m.payload_rate is None else m.payload_rate,
            )
            for name, m in settings.models.items()
        }
        self._segment_bytes = max(1 << 16, settings.max_bytes // 16)
        self._segment_age_s = min(settings.max_age_s / 8, 86400.0)
        self._queue: deque[Pending] = deque()
        # The batches queued entries ran in, in order (an entry holds its batch's number: see
        # `record`); the writer moves them to `_window` (numbered from `_window_first`) as it
        # reaches their entries.
        self._rans: deque[RanParts] = deque()
        self._ran_count = 0
        self._last_ran: Ran | None = None
        self._window: list[RanParts] = []
        self._window_first = 0
        self._queue_size = settings.queue_size
        self._wake_at = settings.queue_size // 2
        self._held_in = 0  # bytes of arrays ever queued (request path) ...
        self._held_out = 0  # ... and ever released by the writer: the difference is held now
        self._appended = 0  # entries ever queued; `flush` waits for the writer to reach it
        self._handled = 0
        self._dropped = {QUEUE_FULL: 0, WRITE_FAILED: 0}
        self._warned = {QUEUE_FULL: 0, WRITE_FAILED: 0}
        self._warned_at = -_WARN_EVERY_S
        self._full_counters: dict[str, Any] = {}
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        # Encoding takes `_encoding` (the loop and the writer both encode; the lock keeps chunks in
        # queue order and the batch window consistent), and the chunks wait in `_encoded` for the
        # writer, with the entries they hold: (chunk or None, entries by model, bytes, entries).
        self._encoding = threading.Lock()
        self._encoded: list[tuple[Chunk | None, Counter[str], int, int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._current: Segment | None = None
        self._started = 0.0
        self._trimmed_at = 0.0
        self._last_error = ""
        # Draws from a generator of its own: the module's shared one belongs to the application (a
        # caller that seeds it for a reproducible run must get the same numbers with the log on).
        self._draw = random.Random().random

    @classmethod
    def create(cls, settings: Settings, worker: int = 0) -> PredictionRecorder | None:
        """The recorder `settings` ask for; None when every rate is 0 (the log costs nothing)."""
        log_settings = settings.prediction_log
        recorder = cls(log_settings, settings.predictions_dir, worker)
        rates = [recorder._default[0], *(r[0] for r in recorder._rates.values())]
        return recorder if any(rates) else None

    def start(self) -> None:
        """Start the writer; called on the event loop `record` runs on, the loop encodes too."""
        try:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        except RuntimeError:  # no loop: the writer encodes everything
            self._loop = None
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shipyard-prediction-log", daemon=True)
            self._thread.start()

    def record(
        self,
        request_id: str,
        model: str,
        version: int | None,
        protocol: str,
        status: int,
        latency_s: float,
        sample: Sample,
    ) -> None:
        """Queue one request's entry if it is drawn, or drop and count it: never blocks."""
        logged, with_payload = self._rates.get(model, self._default)
        draw = self._draw()
        if draw >= logged:
            return
        depth = len(self._queue)
        if depth >= self._queue_size:
            self._dropped[QUEUE_FULL] += 1
            counter = self._full_counters.get(model)
            if counter is None:  # labels() costs microseconds: once per model
                counter = metrics.PREDICTION_LOG_DROPPED.labels(model, QUEUE_FULL)
                self._full_counters[model] = counter
            counter.inc()
            return
        ran = sample.ran
        offset = rows = 0
        if ran is not None:
            offset, rows = sample.offset, sample.rows
            held = ran.nbytes if ran.whole else ran.row_bytes * rows
        elif sample.inputs is not None or sample.outputs is not None:  # never reached a batch
            ran = Ran(sample.inputs, sample.outputs)
            held = ran.nbytes
        else:
            held = 0
        described = None
        if ran is not None and self._held_in - self._held_out + held > _MAX_HELD_BYTES:  # keep memory bounded
            described = describe(*ran.arrays(offset, rows), held if draw < with_payload else 0)
            ran = None
            held = 0
        # The entry names its batch by number: a tuple of numbers and strings only, which the
        # collector stops tracking at its first young collection. Holding the batch itself, every
        # entry stayed tracked until the writer took it (up to a second): ten thousand a second
        # promoted into the old generation, which then was collected ever more often.
        key = -1
        if ran is not None:
            if ran is not self._last_ran:  # a batch's requests answer one after another
                self._last_ran = ran
                # Before the entry, so the writer finds every entry's batch; as a plain tuple, so
                # the collector does not carry it either (a Ran is tracked for good).
                self._rans.append(ran.parts())
                self._ran_count += 1
            key = self._ran_count - 1
        self._held_in += held
        self._appended += 1
        self._queue.append(
            (
                time.time(),
                request_id,
                model,
                version,
                protocol,
                status,
                latency_s,
                key,
                offset,
                rows,
                draw < with_payload,
                held,
                described,
            )
        )
        if depth == self._wake_at:
            self._wake.set()
        # Each time the queue reaches a whole chunk; call_soon is for the loop's own thread only.
        if not (depth + 1) % _CHUNK and self._loop is not None and threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._encode_on_loop)

    def _encode_on_loop(self) -> None:
        """One chunk's entries, encoded on the event loop after the request that queued the last;
        none if the writer is encoding now (it takes them all)."""
        if self._encoding.acquire(blocking=False):
            try:
                self._encode(_CHUNK)
            finally:
                self._encoding.release()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every entry queued so far is written or dropped; False on timeout."""
        target = self._appended
        with self._progress:
            self._wake.set()
            return self._progress.wait_for(lambda: self._handled >= target, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the writer (which a hung disk cannot keep alive)."""
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def dropped(self) -> dict[str, int]:
        """Entries dropped so far, by reason."""
        return dict(self._dropped)

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(_INTERVAL_S)
                self._wake.clear()
                self._drain()
                self._warn()
                if self._closing and not self._queue and not self._encoded:
                    break
                if self._current is not None and time.monotonic() - self._trimmed_at > _RETENTION_EVERY_S:
                    self._trim()
        finally:
            self._close_segment()

    def _encode(self, count: int) -> int:
        """Encode up to `count` queued entries into one chunk for the writer (`_encoding` held).
        The entries are let go here: freeing a whole second's entries (ten thousand on a busy
        server, with their batches' arrays) at once held the GIL for milliseconds. Returns how
        many it took."""
        queue = self._queue
        count = min(len(queue), count)
        if count:
            batch = list(starmap(queue.popleft, repeat((), count)))  # in C: no Python per entry
            models = Counter(map(_MODEL, batch))  # counted in C, for a transaction that fails
            try:
                chunk = self._chunk(batch)
            except Exception as exc:  # noqa: BLE001 -- on the event loop too: lost and counted, never raised
                self._failed(models, exc)
                chunk, models = None, Counter()
            self._encoded.append((chunk, models, sum(map(HELD, batch)), count))
        return count

    def _drain(self) -> None:
        """Encode what the loop has not, then write every chunk waiting in one transaction: every
        call that releases the GIL (a commit, a stat) costs the event loop a switch, so the writer
        makes few of them (one pause per chunk it encodes, so that it never holds the GIL long)."""
        left = len(self._queue)  # what is queued now: the request path goes on queuing meanwhile
        paused = False
        while left > 0 and self._queue:
            if paused:
                time.sleep(_PAUSE_S)  # the event loop runs meanwhile: see _PAUSE_S
            with self._encoding:
                left -= self._encode(_CHUNK)
            paused = True
        with self._encoding:
            waiting, self._encoded = self._encoded, []
        if not waiting:
            return
        chunks: list[Chunk] = []
        models: Counter[str] = Counter()
        handled = held = 0
        for chunk, by_model, chunk_held, count in waiting:
            if chunk is not None:
                chunks.append(chunk)
            models.update(by_model)
            held += chunk_held
            handled += count
        del waiting
        try:
            self._segment().append(chunks)
        except (sqlite3.Error, OSError) as exc:
            self._close_segment(seal=False)  # the next batch starts over: a new segment
            self._failed(models, exc)
        with self._progress:
            self._held_out += held
            self._handled += handled
            self._progress.notify_all()

    def _chunk(self, batch: list[Pending]) -> Chunk | None:
        """Up to 256 entries as one row (see prediction_chunks.py), vectorised when every entry ran
        in a batch of one layout (`encode_batched`); an entry with a value JSON cannot hold is
        dropped alone."""
        keys = list(map(_KEY, batch))
        last = max(keys)
        window, first = self._window, self._window_first
        if first + len(window) <= last:  # `record` queued each batch before its entries
            window.extend(starmap(self._rans.popleft, repeat((), last + 1 - first - len(window))))
        blob = None
        if min(keys) >= 0 and not any(map(_MADE, batch)):  # every entry ran in a batch
            with contextlib.suppress(TypeError):  # a value JSON cannot hold: entry by entry below
                blob = encode_batched(batch, keys, window, first, self._settings.max_payload_bytes)
        written: Sequence[Pending] = batch
        if blob is None:
            restored: dict[int, Ran | None] = {
                key: Ran.restore(window[key - first]) for key in set(keys) if key >= 0
            }
            restored[-1] = None
            rans = list(map(restored.__getitem__, keys))
            written, blob = encode_each(batch, self._settings.max_payload_bytes, self._failed_one, rans)
            del rans, restored
        if last > first:  # later entries name this chunk's last batch or later ones
            del window[: last - first]
            self._window_first = last
        if blob is None:
            return None
        return written[0][0], written[-1][0], orjson.dumps(list(map(_ID, written))), blob

    def _failed_one(self, pending: Pending, exc: Exception) -> None:
        self._failed(Counter([pending[2]]), exc)

    def _segment(self) -> Segment:
        """This process's current segment: a new one when it is full, old, or was deleted."""
        now = time.time()
        segment = self._current
        if segment is not None:
            size = segment_bytes(segment.path)
            if not size or size >= self._segment_bytes or now - self._started >= self._segment_age_s:
                self._close_segment(seal=bool(size))
        if self._current is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._current = Segment(self.directory / segment_name(now, self.worker), self.worker)
            self._started = now
            self._trim()
        return self._current

    def _close_segment(self, *, seal: bool = True) -> None:
        segment, self._current = self._current, None
        if segment is not None:
            if seal:
                segment.seal()
            else:
                segment.close()

    def _trim(self) -> None:
        self._trimmed_at = time.monotonic()
        try:
            keep = None if self._current is None else self._current.path
            enforce_retention(self.directory, self._settings.max_bytes, self._settings.max_age_s, keep)
        except OSError as exc:
            log.warning("prediction log: retention failed in %s: %s", self.directory, exc)

    def _failed(self, models: Counter[str], exc: Exception) -> None:
        """Count entries the log lost, `models` saying how many of each model."""
        self._last_error = f"{type(exc).__name__}: {exc}"
        for model, count in models.items():
            if count:
                metrics.PREDICTION_LOG_DROPPED.labels(model, WRITE_FAILED).inc(count)
        self._dropped[WRITE_FAILED] += sum(models.values())

    def _warn(self) -> None:
        """At most one warning a minute, saying how many entries went and why."""
        now = time.monotonic()
        if now - self._warned_at < _WARN_EVERY_S:
            return
        lost = {reason: count - self._warned[reason] for reason, count in self._dropped.items()}
        if not any(lost.values()):
            return
        self._warned_at = now
        self._warned.update(self._dropped)
        for reason, count in lost.items():
            if count:
                detail = f" ({self._last_error})" if reason == WRITE_FAILED else ""
                log.warning(
                    "prediction log: dropped %d entries: %s%s; requests are unaffected",
                    count,
                    _WHY[reason],
                    detail,
                    extra={"fields": {"dropped": count, "reason": reason}},
                )


def _rates(sample_rate: float, payload_rate: float) -> tuple[float, float]:
    """(share of requests logged, share logged with their payload): one draw decides both."""
    return max(sample_rate, payload_rate), payload_rate

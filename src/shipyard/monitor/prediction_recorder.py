"""Recording the prediction log without slowing requests: queue, sample, encode, write in a thread.

The request path appends one tuple of numbers and strings to a bounded deque (no lock, no draw; a
wake-up only when it is half full). Every 256 entries queued, the event loop cuts them into columns
(one `zip`, in C), draws which are logged and which keep their payload (one numpy call), and
encodes them into one chunk between two of its turns; a writer thread writes the chunks into this
process's segment every second, and encodes itself what the loop has not (the entries of a quiet
second). Encoding on the loop spares the GIL the round trips between the loop and a thread encoding
beside it: with the writer encoding every entry, in slices with pauses between, monitoring on cost
p99 +20–30% and 8–12.5% of requests/s; with the loop encoding, +6–12% and 6.5–9.5%
(benchmarks/monitoring_cost.py, `--fresh`, interleaved). A caller off the loop (a thread of its
own, or no loop at all) encodes its 256th entry's chunk itself, so the queue never holds more than
a chunk's batches' arrays for long.

An entry names the batch its request ran in (prediction_chunks.Ran) by number, a batch all its
entries share, rather than holding arrays of its own. When the queue is full, or the writer has
more than `queue_size` entries waiting, or the disk refuses a write, entries are dropped and
counted in `shipyard_predictionlog_dropped_total{model,reason}`, with a warning at most once a
minute: a request never waits for the log and never fails because of it.
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
from pathlib import Path
from time import time as _now  # a module global: one lookup on the request path, not two

import numpy as np
import orjson

from shipyard.monitor import metrics
from shipyard.monitor.prediction_chunks import Entries, Ran, encode_batched, encode_each
from shipyard.monitor.predictions import Chunk, Segment, enforce_retention, segment_bytes, segment_name
from shipyard.settings import PredictionLogSettings, Settings

log = logging.getLogger("shipyard.predictions")

# The writer wakes every second, or once the queue (or the encoded chunks waiting for it) is half
# full: larger batches cost less CPU per entry (measured: about half of what 0.2 s rounds cost).
_INTERVAL_S = 1.0
_CHUNK = 256  # entries per chunk
# Between chunks it encodes, the writer sleeps a moment, which releases the GIL: a second's entries
# are tens of milliseconds of Python, and encoded in one go (the interpreter takes the GIL from a
# thread only every 5 ms) they stall the event loop long enough to double the p99 of a busy
# server; with the pauses, the p99 added was about half (benchmarks/monitoring_cost.py, `off,log`).
_PAUSE_S = 0.001
_WARN_EVERY_S = 60.0
_RETENTION_EVERY_S = 60.0
QUEUE_FULL, WRITE_FAILED = "queue_full", "write_failed"
_WHY = {
    QUEUE_FULL: "the queue was full: the writer fell behind (lower prediction_log.sample_rate)",
    WRITE_FAILED: "the prediction log could not be written",
}
# What `record` queues: (time, request id, model, version, protocol, status, latency s, the number
# of the batch it ran in (-1: none), its first row there, its rows).
Answered = tuple[float, str, str, "int | None", str, int, float, int, int, int]


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


def _share_attribute_names(cls: type) -> None:
    """Set every attribute of a Sample once, at import. CPython 3.11 keeps one table of attribute
    names for a class's instances, and lets each new instance add fewer names to it, none after
    about thirty instances. Under load some thirty requests are in flight, each with its Sample,
    before the first batch returns and its Samples are told `ran`, `offset` and `rows`: those names
    then missed the table, and every request's Sample got a dictionary of its own (under valgrind,
    32 clients: about 600 instructions a request; in a microbenchmark, a Sample and its four
    attributes took 336 ns once 32 Samples had been made before the first was told its batch,
    against 147 ns with 8)."""
    first = cls()
    for name in ("inputs", "outputs", "ran", "offset", "rows"):
        setattr(first, name, getattr(cls, name))


_share_attribute_names(Sample)
# What `_last_ran` holds before the first batch, and after an entry that ran in none: a Ran no
# request's Sample ever names, so that the next entry is taken for one of a new batch.
_NO_BATCH = Ran(None, None)


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
        self._queue: deque[Answered] = deque()
        # The batches queued entries ran in, by number (see `record`): numbered from 1, each
        # dropped once an encoded chunk's entries were the last to name it.
        self._rans: dict[int, Ran] = {}
        self._ran_count = 0
        self._rans_done = 0
        self._last_ran: Ran = _NO_BATCH  # the batch of the entry queued last (see `record`)
        self._queue_size = settings.queue_size
        self._wake_at = settings.queue_size // 2
        self._taken = 0  # entries ever taken from the queue by an encoder (`_encoding` held) ...
        self._handled = 0  # ... and dealt with by the writer: written, dropped or not drawn
        self._sent = 0  # entries ever encoded for the writer (`_encoding` held) ...
        self._written = 0  # ... and ever written or lost by it: the difference is its backlog
        self._dropped = {QUEUE_FULL: 0, WRITE_FAILED: 0}
        self._warned = {QUEUE_FULL: 0, WRITE_FAILED: 0}
        self._warned_at = -_WARN_EVERY_S
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        # Encoding takes `_encoding` (the loop and the writer both encode; the lock keeps chunks in
        # queue order), and the chunks wait in `_encoded` for the writer, with what they hold:
        # (chunk or None, the models of its entries, entries taken from the queue).
        self._encoding = threading.Lock()
        self._encoded: list[tuple[Chunk | None, Sequence[str], int]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._current: Segment | None = None
        self._started = 0.0
        self._trimmed_at = 0.0
        self._last_error = ""
        # Draws from generators of its own: the modules' shared ones belong to the application (a
        # caller that seeds them for a reproducible run must get the same numbers with the log on).
        self._draws = np.random.default_rng()
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
        except RuntimeError:  # no loop: callers encode every 256th entry, the writer the rest
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
        """Queue one request's entry, or drop and count it: never blocks. Whether it is logged, and
        with its payload, is drawn when its chunk is encoded, for the whole chunk at once."""
        queue = self._queue
        depth = len(queue)
        key = self._ran_count
        # The usual request takes one test: it ran in the same batch as the entry before it (a
        # batch's requests answer one after another), and the queue is short. The rest (a new
        # batch or none, a queue to wake the writer for, or full) goes through `_new_key`.
        if sample.ran is not self._last_ran or depth >= self._wake_at:
            new = self._new_key(depth, model, sample)
            if new is None:
                return
            key = new
        # The entry names its batch by number: a tuple of numbers and strings only, which the
        # collector stops tracking at its first young collection. Holding its Sample (or its
        # batch), every queued entry stayed tracked until its chunk was encoded: the young
        # collections came more often, each walked every entry, and the entries that outlived one
        # were promoted to the older generations (measured under valgrind, 32 clients: 3,500 of
        # the collector's instructions a request, against 200 with these tuples).
        queue.append(
            (_now(), request_id, model, version, protocol, status, latency_s, key, sample.offset, sample.rows)
        )
        if not (depth + 1) % _CHUNK:  # a whole chunk queued
            if self._loop is not None and threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self._encode_chunk)  # after this request, between two turns
            else:
                self._encode_chunk()

    def _new_key(self, depth: int, model: str, sample: Sample) -> int | None:
        """The number an entry names its batch by when `record` cannot take it the short way
        (-1: it has no arrays), having registered a new batch; None when the queue is full (the
        entry dropped and counted). Wakes the writer once the queue is half full."""
        if depth >= self._queue_size:
            self._full(model)
            return None
        if depth == self._wake_at:
            self._wake.set()
        ran = sample.ran
        if ran is None:
            if sample.inputs is None and sample.outputs is None:
                return -1
            # It never reached a batch: its own arrays, a batch of its own (and the next entry's
            # batch, whatever it is, is new).
            ran, self._last_ran = Ran(sample.inputs, sample.outputs), _NO_BATCH
        elif ran is not self._last_ran:
            self._last_ran = ran
        else:  # the same batch, only the queue long
            return self._ran_count
        self._ran_count += 1
        self._rans[self._ran_count] = ran
        return self._ran_count

    def _full(self, model: str) -> None:
        """Count an entry the full queue refused, if it would have been logged."""
        if self._draw() >= self._rates.get(model, self._default)[0]:
            return
        self._dropped[QUEUE_FULL] += 1
        metrics.PREDICTION_LOG_DROPPED.labels(model, QUEUE_FULL).inc()

    def _encode_chunk(self) -> None:
        """One chunk's entries, encoded now; none if the writer is encoding (it takes them all)."""
        if self._encoding.acquire(blocking=False):
            try:
                self._encode(_CHUNK)
            finally:
                self._encoding.release()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every entry queued so far is written or dropped; False on timeout."""
        with self._encoding:  # no entry in between: taken from the queue but not yet counted
            target = self._taken + len(self._queue)
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
        """Encode up to `count` queued entries into one chunk for the writer (`_encoding` held),
        and let them go, and the batches only they named. Returns how many it took."""
        queue = self._queue
        count = min(len(queue), count)
        if not count:
            return 0
        self._taken += count
        taken = list(starmap(queue.popleft, repeat((), count)))  # in C: no Python per entry
        at, ids, models, versions, protocols, statuses, latencies, keys, offsets, rows = zip(
            *taken, strict=True
        )
        del taken
        batches = self._rans
        rans = list(map(batches.get, keys))  # -1, no batch: None
        last = max(keys)
        if last > self._rans_done:  # entries after these name their last batch or later ones
            for key in range(self._rans_done, last):
                batches.pop(key, None)
            self._rans_done = last
        logged, payloads = self._draw_chunk(models)
        entries = Entries(
            at, ids, models, versions, protocols, statuses, latencies, rans, offsets, rows, payloads
        )
        del rans
        if logged is not None:  # sampled: only the drawn go on
            entries = entries.take(logged)
        chunk = None
        if entries.models and self._sent - self._written + len(entries.models) > self._queue_size:
            self._lost(QUEUE_FULL, Counter(entries.models))  # the writer is behind
        elif entries.models:
            try:
                entries, chunk = self._chunk(entries)
            except Exception as exc:  # noqa: BLE001 -- on the event loop too: lost and counted, never raised
                self._lost(WRITE_FAILED, Counter(entries.models), exc)
        kept = () if chunk is None else entries.models
        self._sent += len(kept)
        self._encoded.append((chunk, kept, count))
        if self._sent - self._written >= self._wake_at:
            # The loop encodes most entries, so the queue stays short and never wakes the writer:
            # a busy server's chunks would wait the whole second, past queue_size (measured: a
            # third of the entries dropped at 11,000 requests/s).
            self._wake.set()
        return count

    def _draw_chunk(self, models: Sequence[str]) -> tuple[list[int] | None, list[bool]]:
        """Which of a chunk's entries are logged (their indices; None: all) and which keep their
        payload, by their models' rates: one draw per entry, made at once."""
        count = len(models)
        draws = self._draws.random(count)
        if models.count(models[0]) == count:  # the usual: one model, its rates for all
            logged_rate, payload_rate = self._rates.get(models[0], self._default)
            logged = None if logged_rate >= 1 else draws < logged_rate
            payloads = draws < payload_rate
        else:
            rates = np.array([self._rates.get(model, self._default) for model in models])
            logged, payloads = draws < rates[:, 0], draws < rates[:, 1]
        return None if logged is None else np.flatnonzero(logged).tolist(), payloads.tolist()

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
        chunks = [chunk for chunk, _, _ in waiting if chunk is not None]
        written = sum(len(kept) for _, kept, _ in waiting)
        handled = sum(taken for _, _, taken in waiting)
        if chunks:
            try:
                self._segment().append(chunks)
            except (sqlite3.Error, OSError) as exc:
                self._close_segment(seal=False)  # the next batch starts over: a new segment
                models: Counter[str] = Counter()
                for _, kept, _ in waiting:
                    models.update(kept)
                self._lost(WRITE_FAILED, models, exc)
        del waiting, chunks
        with self._progress:
            self._written += written
            self._handled += handled
            self._progress.notify_all()

    def _chunk(self, entries: Entries) -> tuple[Entries, Chunk | None]:
        """Up to 256 entries as one row (see prediction_chunks.py), vectorised when every entry ran
        in a batch of one layout (`encode_batched`); an entry with a value JSON cannot hold is
        dropped alone. Returns the entries it holds, and the row (None when it holds none)."""
        blob = None
        with contextlib.suppress(TypeError):  # a value JSON cannot hold: entry by entry below
            blob = encode_batched(entries, self._settings.max_payload_bytes)
        if blob is None:
            models = entries.models

            def failed(index: int, exc: Exception) -> None:
                self._lost(WRITE_FAILED, Counter([models[index]]), exc)

            entries, blob = encode_each(entries, self._settings.max_payload_bytes, failed)
        if blob is None:
            return entries, None
        return entries, (entries.at[0], entries.at[-1], orjson.dumps(list(entries.request_ids)), blob)

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

    def _lost(self, reason: str, models: Counter[str], exc: Exception | None = None) -> None:
        """Count entries the log lost, `models` saying how many of each model."""
        if exc is not None:
            self._last_error = f"{type(exc).__name__}: {exc}"
        for model, count in models.items():
            if count:
                metrics.PREDICTION_LOG_DROPPED.labels(model, reason).inc(count)
        self._dropped[reason] += sum(models.values())

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

"""Recording the prediction log without slowing requests: queue, sample, encode, hand to a writer.

The request path appends one tuple of numbers and strings to a bounded deque (no lock, no draw; a
wake-up only when it is half full). Every 256 entries queued, the event loop cuts them into columns
(one `zip`, in C), draws which are logged and which keep their payload (one numpy call), encodes
them into one chunk between two of its turns, and writes the chunk into the pipe of this process's
writer (log_writer.py: a process of its own, which does all of SQLite's and the file system's
work), never waiting for it. A thread of this process starts the writer, reads its answers (once a
second: what it wrote, or could not), and encodes and sends what the loop has not (the entries of
a quiet second). Encoding on the loop spares the GIL the round trips between the loop and a thread
encoding beside it: with the writer thread encoding every entry, in slices with pauses between,
monitoring on cost p99 +20–30% and 8–12.5% of requests/s; with the loop encoding, +6–12% and
6.5–9.5% (benchmarks/monitoring_cost.py, `--fresh`, interleaved); for the writer's process, see
log_writer.py. A caller off the loop (a thread of its own, or no loop at all) encodes and sends its
256th entry's chunk itself, so the queue never holds more than a chunk's batches' arrays for long.

An entry names the batch its request ran in (prediction_chunks.Ran) by number, a batch all its
entries share, rather than holding arrays of its own. When the queue is full, or the writer has
more than `queue_size` entries it has not answered for, or the disk refuses a write, or the writer
dies (it is started again, at most every few seconds), entries are dropped and counted in
`shipyard_predictionlog_dropped_total{model,reason}`, with a warning at most once a minute: a
request never waits for the log and never fails because of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import select
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from itertools import repeat, starmap
from pathlib import Path
from time import time as _now  # a module global: one lookup on the request path, not two
from typing import Any

import numpy as np
import orjson

from shipyard.monitor import metrics
from shipyard.monitor.log_writer import CHUNK, FLUSH, Layout, WriterProcess, frame
from shipyard.monitor.prediction_chunks import Entries, Ran, encode_batched, encode_each
from shipyard.monitor.predictions import Chunk
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
_SEND_WAIT_S = 0.1  # the most the thread waits for room in the writer's pipe (the loop never does)
_RESTART_S = 5.0  # a writer that failed to start, or exited, is started again after this at most
_END_WAIT_S = 10.0  # the most a closing server waits for its writer
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
        self._layout = Layout(
            directory,
            worker,
            segment_bytes=max(1 << 16, settings.max_bytes // 16),
            segment_age_s=min(settings.max_age_s / 8, 86400.0),
            max_bytes=settings.max_bytes,
            max_age_s=settings.max_age_s,
        )
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
        # The writer process (log_writer.py), started by this process's thread when it first has
        # a chunk for it, and the frames it has been sent and not yet answered for, by sequence
        # number: (sequence number, the models of the chunk's entries, entries it settles).
        self._writer: WriterProcess | None = None
        self._writer_failed_at = -_RESTART_S
        self._sequence = 0
        self._in_flight: deque[tuple[int, Sequence[str], int]] = deque()
        self._flush_wanted = False
        self._drain_all = False  # the thread's next round encodes every entry queued, not only chunks
        self._dropped = {QUEUE_FULL: 0, WRITE_FAILED: 0}
        self._warned = {QUEUE_FULL: 0, WRITE_FAILED: 0}
        self._warned_at = -_WARN_EVERY_S
        # The thread waits on the writer's answers and on a pipe of its own, which wakes it (a
        # flush, a close, a half-full queue): an Event could not be waited on beside a file.
        self._wake_read = self._wake_write = -1
        self._progress = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        # Encoding takes `_encoding` (the loop and the thread both encode and send; the lock keeps
        # chunks in queue order), and the chunks the pipe had no room for wait in `_encoded`, with
        # what they hold: (chunk, the models of its entries, entries taken from the queue).
        self._encoding = threading.Lock()
        self._encoded: deque[tuple[Chunk, Sequence[str], int]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
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
        """Start the log's thread (it starts the writer process when it first has a chunk for
        it); called on the event loop `record` runs on, which encodes and sends chunks too."""
        try:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        except RuntimeError:  # no loop: callers encode every 256th entry, the writer the rest
            self._loop = None
        if self._thread is None:
            self._wake_read, self._wake_write = os.pipe()
            os.set_blocking(self._wake_write, False)
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
            self._drain_all = True
            self._wake_thread()
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
        """One chunk's entries, encoded now and handed to the writer; none if the thread is
        encoding (it takes them all)."""
        if self._encoding.acquire(blocking=False):
            try:
                self._encode(_CHUNK)
                self._send()
            finally:
                self._encoding.release()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every entry queued so far is written or dropped; False on timeout."""
        with self._encoding:  # no entry in between: taken from the queue but not yet counted
            target = self._taken + len(self._queue)
            self._flush_wanted = True
        self._wake_thread()
        with self._progress:
            return self._progress.wait_for(lambda: self._handled >= target, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the writer (which a hung disk cannot keep alive)."""
        self._closing = True
        self._wake_thread()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._thread is not None and not self._thread.is_alive():
            fds, self._wake_read, self._wake_write = (self._wake_read, self._wake_write), -1, -1
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _wake_thread(self) -> None:
        with contextlib.suppress(OSError):  # full: it is woken already; -1: not started, or ended
            os.write(self._wake_write, b"\0")

    @property
    def dropped(self) -> dict[str, int]:
        """Entries dropped so far, by reason."""
        return dict(self._dropped)

    def _run(self) -> None:
        """The thread: every second, or when woken, encode what the loop has not and send it (the
        writer started if need be); read the writer's answers as they come."""
        due = time.monotonic() + _INTERVAL_S
        try:
            while True:
                writer = self._writer
                waited = [self._wake_read] if writer is None else [self._wake_read, writer.answers_fd]
                ready = select.select(waited, [], [], max(0.0, due - time.monotonic()))[0]
                woken = self._wake_read in ready
                if woken:
                    os.read(self._wake_read, 4096)
                if writer is not None and writer.answers_fd in ready:
                    self._answered(writer)
                if time.monotonic() >= due or self._drain_all or self._flush_wanted or self._closing:
                    due = time.monotonic() + _INTERVAL_S
                    self._drain_all = False
                    self._drain(everything=True)
                    self._warn()
                elif woken:  # to start the writer, or for chunks the loop could not encode
                    self._drain(everything=False)
                if self._closing and not self._queue and not self._encoded:
                    break
        finally:
            self._end_writer()
            self._warn()

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
        if chunk is None:  # none to write: settled now
            with self._progress:
                self._handled += count
                self._progress.notify_all()
        else:
            self._sent += len(entries.models)
            self._encoded.append((chunk, entries.models, count))
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

    def _drain(self, *, everything: bool) -> None:
        """Encode what the loop has not (`everything`, or only its whole chunks: a round between
        seconds leaves the rest to the loop), and send every chunk waiting (the thread). Between
        chunks it encodes, it pauses, so that it never holds the GIL long."""
        # What is queued now (the request path goes on queuing meanwhile), and any whole chunk
        # queued while this ran: the loop skips its chunk while the thread holds `_encoding`.
        left = len(self._queue) if everything else 0
        paused = False
        while self._queue and (left > 0 or len(self._queue) >= _CHUNK):
            if paused:
                time.sleep(_PAUSE_S)  # the event loop runs meanwhile: see _PAUSE_S
            with self._encoding:
                left -= self._encode(_CHUNK)
            paused = True
        with self._encoding:
            if self._encoded and self._writer is None:
                self._start_writer()
            self._send(_SEND_WAIT_S)
            if self._flush_wanted and self._writer is not None:
                self._sequence += 1
                if _reached(self._writer.send, frame(FLUSH, self._sequence), _SEND_WAIT_S):
                    self._flush_wanted = False
            elif self._flush_wanted and not self._encoded:
                self._flush_wanted = False  # nothing was ever sent: nothing to wait for
        if len(self._queue) >= _CHUNK:  # queued while it started the writer or sent: once more
            self._wake_thread()

    def _send(self, wait_s: float = 0.0) -> None:
        """Hand the chunks waiting to the writer, in order, while its pipe has room (`_encoding`
        held). On the loop, never waits; before the thread has started a writer, leaves them."""
        writer = self._writer
        if writer is None:
            if self._encoded:
                self._wake_thread()
            return
        # A frame the pipe took only part of goes on first, chunks or not: in a quiet second its
        # entries would otherwise wait for the next chunk.
        if not _reached(writer.push, wait_s):
            return
        encoded, in_flight = self._encoded, self._in_flight
        while encoded:
            chunk, models, count = encoded[0]
            sequence = self._sequence + 1
            if not _reached(writer.send, frame(CHUNK, sequence, chunk), wait_s):
                return
            self._sequence = sequence
            encoded.popleft()
            in_flight.append((sequence, models, count))

    def _start_writer(self) -> None:
        """Start the writer process (`_encoding` held); when it cannot start, or failed less than
        `_RESTART_S` ago, the chunks waiting are lost and counted."""
        error = ""
        if time.monotonic() - self._writer_failed_at < _RESTART_S:
            error = self._last_error or "the log writer failed"
        else:
            try:
                self._writer = WriterProcess(self._layout)
            except Exception as exc:  # noqa: BLE001 -- in the log's thread: counted, never raised
                self._writer_failed_at = time.monotonic()
                error = f"the log writer could not start: {type(exc).__name__}: {exc}"
        if error:
            self._settle_all(self._encoded, error)

    def _answered(self, writer: WriterProcess) -> None:
        """The writer's answers: the chunks they cover written, or lost; its end, if it ended."""
        answers = writer.answers()
        if answers is None:  # it ended, unasked: started again when there is a chunk for it
            with self._encoding:
                self._writer = None
            self._writer_failed_at = time.monotonic()
            self._finish(writer, 0.0)
            if self._encoded or self._flush_wanted:
                self._wake_thread()  # what it could not take: to a new writer, or counted lost
            return
        self._apply(answers)
        if self._encoded:  # the pipe had no room for these: it has, now that the writer read it
            with self._encoding:
                self._send()

    def _apply(self, answers: list[tuple[int, bool, str]]) -> None:
        in_flight = self._in_flight
        for sequence, written, error in answers:
            done: Counter[str] = Counter()
            count = 0
            while in_flight and in_flight[0][0] <= sequence:
                _, models, taken = in_flight.popleft()
                done.update(models)
                count += taken
            self._settle(done, count, None if written else error)

    def _finish(self, writer: WriterProcess, wait_s: float) -> None:
        """Wait for a writer no longer in use to exit, then settle what it never answered for."""
        code = writer.end(wait_s)
        self._apply(writer.answers() or [])
        writer.release()
        if self._in_flight:
            self._settle_all(self._in_flight, f"the log writer exited with code {code}")

    def _settle(self, models: Counter[str], count: int, error: str | None) -> None:
        """`count` entries taken from the queue dealt with: those of `models` written, or lost
        (with `error`)."""
        if error is not None:
            self._lost(WRITE_FAILED, models, error)
        with self._progress:
            self._written += sum(models.values())
            self._handled += count
            self._progress.notify_all()

    def _settle_all(self, chunks: deque[tuple[Any, Sequence[str], int]], error: str) -> None:
        """Every chunk of `chunks` (waiting, or in flight) lost, with `error`."""
        lost: Counter[str] = Counter()
        count = 0
        while chunks:
            _, models, taken = chunks.popleft()
            lost.update(models)
            count += taken
        self._settle(lost, count, error)

    def _end_writer(self) -> None:
        """Close the writer's pipe: it writes what it holds, answers and exits (one hung on its
        disk is killed after `_END_WAIT_S`)."""
        with self._encoding:
            writer, self._writer = self._writer, None
        if writer is not None:
            _reached(writer.push, _SEND_WAIT_S)  # the rest of a frame the pipe took part of
            self._finish(writer, _END_WAIT_S)

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

    def _lost(self, reason: str, models: Counter[str], error: Exception | str | None = None) -> None:
        """Count entries the log lost, `models` saying how many of each model."""
        if isinstance(error, Exception):
            self._last_error = f"{type(error).__name__}: {error}"
        elif error:
            self._last_error = error
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


def _reached(send: Callable[..., bool], *args: Any) -> bool:
    """`send(*args)` (to the writer) done; False when its pipe has no room, or it has gone (the
    thread then learns that from the writer's answers' pipe: it ended)."""
    try:
        return send(*args)
    except OSError:
        return False


def _rates(sample_rate: float, payload_rate: float) -> tuple[float, float]:
    """(share of requests logged, share logged with their payload): one draw decides both."""
    return max(sample_rate, payload_rate), payload_rate

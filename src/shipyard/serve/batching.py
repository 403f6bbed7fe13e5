"""Dynamic batching: one queue per loaded version, merged along axis 0, run in a worker thread.

Policy: while the runtime is busy, requests queue up; as soon as it is free, everything queued
(up to `max_batch_size` rows) runs as one batch. Waiting on purpose only pays when the runtime
has a large fixed cost per call and requests arrive faster than that cost, so the batcher fits
latency ≈ a·rows + b from the batches it runs (as BentoML does) and holds a partial batch back
only while the next request is expected sooner than `b`, never longer than `max_batch_delay`.

Overload: a request that finds the queue full waits up to `max_queue_wait_s` for a place, in
arrival order, and only then gets 503. Refusing at once looks cheaper but is not: a client that
retries at once (most do) comes straight back, and answering that stream of refusals costs the
event loop about what serving costs, so the model's own requests starve (measured with 256
connections against a queue of 8: 2% of the unloaded rate served). A waiting request costs no
CPU, and the wait paces each client to at most one refusal per `max_queue_wait_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from shipyard.errors import (
    DeadlineExceededError,
    InvalidInputError,
    OverloadedError,
    QueueFullError,
    ShipyardError,
)
from shipyard.monitor.prediction_chunks import Ran

if TYPE_CHECKING:
    from shipyard.monitor.prediction_recorder import Sample
    from shipyard.monitor.tracing import BatchTrace, RequestTrace

Arrays = dict[str, np.ndarray]
INLINE_BELOW_S = 0.0005  # a batch whose own CPU time is predicted below this runs without a thread hop
INLINE_WALL_BELOW_S = 0.005  # ... unless it takes longer than this by the clock (waiting on other threads)


@dataclass(slots=True)
class _Item:
    inputs: Arrays
    rows: int
    future: asyncio.Future[Arrays]
    enqueued: float = field(default_factory=time.perf_counter)
    deadline: float = math.inf  # event-loop time after which the work is dropped, never run
    trace: RequestTrace | None = None
    sample: Sample | None = None  # with the prediction log on: told the batch and rows it ran in


class LatencyModel:
    """Online least-squares fit of batch latency = a·rows + b, with exponential forgetting."""

    def __init__(self, decay: float = 0.98) -> None:
        self._decay = decay
        self._n = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._seen = 0  # batches observed, undecayed: a fast-forgetting model's weights stay small

    def observe(self, rows: int, seconds: float) -> None:
        d = self._decay
        self._seen += 1
        self._n = self._n * d + 1
        self._sx = self._sx * d + rows
        self._sy = self._sy * d + seconds
        self._sxx = self._sxx * d + rows * rows
        self._sxy = self._sxy * d + rows * seconds

    def fit(self) -> tuple[float, float] | None:
        """(a, b), or None until there is enough spread in batch sizes to tell them apart."""
        if self._seen < 3:
            return None
        mean = self._sy / self._n
        var = self._sxx - self._sx * self._sx / self._n
        if var <= 1e-9:  # every batch had the same size: all cost counts as fixed
            return 0.0, mean
        a = (self._sxy - self._sx * self._sy / self._n) / var
        if a <= 0:  # larger batches were quicker (a first, cold run was small): no slope to fit
            return 0.0, mean
        return a, max((self._sy - a * self._sx) / self._n, 0.0)

    def predict(self, rows: int) -> float | None:
        """The fitted seconds for a batch of `rows`; None until there is a fit."""
        fit = self.fit()
        return None if fit is None else fit[0] * rows + fit[1]


class Batcher:
    """Queues requests for one runtime and runs them in merged batches, one batch at a time."""

    def __init__(
        self,
        predict: Callable[[Arrays], Arrays],
        *,
        max_batch_size: int = 32,
        max_delay_s: float = 0.002,
        max_queue: int = 1024,
        max_queue_wait_s: float = 0.0,
        can_batch: bool = True,
        preferred_batch_sizes: tuple[int, ...] = (),
        on_batch: Callable[[int, float, list[float], Arrays, Arrays], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        trace_batch: Callable[[list[RequestTrace], int, int], BatchTrace | None] | None = None,
        name: str = "model",
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size if can_batch else 1
        self.max_delay_s = max_delay_s
        self.preferred_batch_sizes = preferred_batch_sizes
        self.max_queue = max_queue
        self.max_queue_wait_s = max_queue_wait_s
        self._waiting: deque[asyncio.Future[None]] = deque()  # for a place in a full queue, in order
        self._reserved = 0  # places handed to waiters that have not queued their request yet
        self._on_batch = on_batch
        self._on_idle = on_idle  # the queue ran dry (also when its last requests were withdrawn)
        self._trace_batch = trace_batch  # with tracing on: (traces, requests, rows) -> the batch's trace
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"shipyard-{name}")
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.latency = LatencyModel()
        # The CPU time of the thread that ran each batch, which decides what runs inline: by the
        # clock, a batch in the worker thread also counts its waits for the GIL, which on a busy
        # server are ten times a small model's own time, so a 50 µs model would look too slow to
        # run inline, and which path it took would swing with the load.
        self._cpu = LatencyModel(decay=0.9)
        self._arrival_gap: float | None = None  # EWMA of seconds between requests
        self._last_arrival: float | None = None
        self._idle_since = time.perf_counter()  # when the runtime last became free
        self.busy = False

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        if self._task is None:
            # Kept: asyncio.get_running_loop() makes a getpid() syscall on every call (3.11).
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run())

    async def submit(
        self,
        inputs: Arrays,
        timeout_s: float | None = None,
        trace: RequestTrace | None = None,
        sample: Sample | None = None,
    ) -> Arrays:
        """Run one request (a batch of >= 1 rows along axis 0) and return its own outputs.

        Past `timeout_s` the request fails with DeadlineExceededError at once, even while its
        batch runs; if it is still queued then, its work is dropped, never run. A `sample` is
        told, once the request is answered, its batch's arrays and its rows there (the
        prediction log's entry refers to those rather than to arrays of its own).
        """
        if self._closed:
            raise OverloadedError("the model is shutting down; retry on another replica")
        loop = self._loop or asyncio.get_running_loop()
        if self._waiting or len(self._queue) + self._reserved >= self.max_queue:
            arrived = loop.time()
            await self._wait_for_place(timeout_s)
            if timeout_s is not None:  # the wait counts against the request's deadline
                timeout_s = max(timeout_s - (loop.time() - arrived), 1e-6)
        rows = _rows(inputs)
        now = time.perf_counter()
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._arrival_gap = gap if self._arrival_gap is None else 0.8 * self._arrival_gap + 0.2 * gap
        self._last_arrival = now
        future: asyncio.Future[Arrays] = loop.create_future()
        if trace is not None:
            trace.queued = now
        if timeout_s is None:
            self._queue.append(_Item(inputs, rows, future, now, trace=trace, sample=sample))
            self._wakeup.set()
            return await future  # cancelled if the client goes away; the batch loop skips it
        deadline = loop.time() + timeout_s
        self._queue.append(_Item(inputs, rows, future, now, deadline, trace, sample))
        self._wakeup.set()
        # One timer per request: it fails the future at the deadline, which also takes the
        # item out of the batch loop's reach (done futures are skipped).
        timer = loop.call_at(deadline, _expire, future, timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    async def _wait_for_place(self, timeout_s: float | None) -> None:
        """Wait (in arrival order) until the queue has a place for this request, or refuse it."""
        wait_s = self.max_queue_wait_s if timeout_s is None else min(self.max_queue_wait_s, timeout_s)
        if wait_s <= 0:
            raise self._full()
        loop = self._loop or asyncio.get_running_loop()
        place: asyncio.Future[None] = loop.create_future()
        self._waiting.append(place)
        timer = loop.call_later(wait_s, _give_up, place)
        try:
            await place
        except _QueueWaitOver:
            _discard(self._waiting, place)
            raise self._full() from None
        except BaseException:  # cancelled (the client left), or the model closed
            if place.done() and not place.cancelled() and place.exception() is None:
                self._reserved -= 1  # it had been handed a place: pass that on
                self._hand_out_places()
            else:
                _discard(self._waiting, place)
            raise
        finally:
            timer.cancel()
        self._reserved -= 1
        if self._closed:  # handed a place just before the model was unloaded
            raise OverloadedError("the model was unloaded; retry")

    def _full(self) -> QueueFullError:
        return QueueFullError(
            f"the model's queue is full ({self.max_queue} requests waiting, none left within "
            f"{self.max_queue_wait_s:g} s; settings serve.max_queue and serve.max_queue_wait_s); "
            "retry later"
        )

    def _hand_out_places(self) -> None:
        """Give each free place in the queue to the longest-waiting request."""
        while self._waiting and len(self._queue) + self._reserved < self.max_queue:
            place = self._waiting.popleft()
            if not place.done():
                self._reserved += 1
                place.set_result(None)

    def _hold_back_s(self, rows: int, oldest: float) -> float:
        """How long to wait for more rows before running a partial batch (0 = run now).

        The delay bound counts from when the runtime became free (or the oldest request came,
        if later): requests that queued behind a running batch have waited already, but holding
        the next batch for a moment still merges the clients who are about to send again.
        """
        if rows >= self.max_batch_size or rows in self.preferred_batch_sizes or self.max_delay_s <= 0:
            return 0.0
        remaining = self.max_delay_s - (time.perf_counter() - max(oldest, self._idle_since))
        fit = self.latency.fit()
        if remaining <= 0 or fit is None or self._arrival_gap is None:
            return 0.0
        _, fixed = fit
        if self._arrival_gap >= fixed:  # a whole batch runs before the next request arrives
            return 0.0
        return min(remaining, self._arrival_gap * 1.5)

    def _runs_inline(self, rows: int) -> bool:
        """Tiny models run on the event loop: handing a ~50 µs call to a worker thread and back
        costs more than the call. Only while the fits say the batch is that quick, both in CPU
        time and by the clock: a runtime that hands its work to threads of its own and waits uses
        little CPU of the caller's, yet would hold the loop for as long as it waits."""
        cpu, wall = self._cpu.predict(rows), self.latency.predict(rows)
        return cpu is not None and wall is not None and cpu < INLINE_BELOW_S and wall < INLINE_WALL_BELOW_S

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        now = self._loop.time() if self._loop is not None else 0.0
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # a client that left, or a deadline that passed: drop its work
                self._queue.popleft()
                continue
            if item.deadline <= now:  # expired, but its timer has not run yet (a busy loop)
                self._queue.popleft()
                _expire(item.future, None)
                continue
            if batch and (rows + item.rows > self.max_batch_size or not _compatible(batch[0], item)):
                break
            batch.append(self._queue.popleft())
            rows += item.rows
            if rows >= self.max_batch_size:
                break
        if self._waiting:
            self._hand_out_places()
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._on_idle is not None:
                    self._on_idle()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            queued_rows = sum(i.rows for i in self._queue)
            hold = self._hold_back_s(queued_rows, self._queue[0].enqueued)
            if hold > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), hold)
                    continue  # a request arrived: decide again (the oldest still bounds the delay)
                except TimeoutError:
                    pass
            batch = self._take_batch()
            if not batch:
                continue
            self.busy = True
            trace = None if self._trace_batch is None else self._trace(batch)
            try:
                await self._execute(loop, batch, trace)
            finally:
                self.busy = False
                self._idle_since = time.perf_counter()
                if trace is not None:
                    trace.end()

    def _trace(self, batch: list[_Item]) -> BatchTrace | None:
        """The batch's trace: linked to its traced requests (None if none of them is traced)."""
        start = self._trace_batch
        traces = [item.trace for item in batch if item.trace is not None]
        return None if start is None else start(traces, len(batch), sum(item.rows for item in batch))

    async def _execute(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Item], trace: BatchTrace | None = None
    ) -> None:
        started = time.perf_counter()
        waits = [started - item.enqueued for item in batch]
        merged = batch[0].inputs if len(batch) == 1 else _merge([i.inputs for i in batch])
        rows = sum(i.rows for i in batch)
        try:
            if self._runs_inline(rows):
                outputs, elapsed, cpu = _timed(self._predict, merged)
            else:
                # Timed in the worker thread: timed from here, it would include the wait for the
                # busy event loop to take the result back, so under load a fast model would look
                # slow and never return to the inline path (measured: a third of the throughput).
                run = loop.run_in_executor(self._executor, _timed, self._predict, merged)
                outputs, elapsed, cpu = await run
        except asyncio.CancelledError:  # close() gave up waiting: answer, never strand callers
            _fail(batch, OverloadedError("the model was unloaded while this request ran; retry"))
            raise
        except InvalidInputError as exc:
            if len(batch) > 1:  # one bad request must not fail its neighbours: run each alone
                for item in batch:
                    await self._execute(loop, [item], trace)
                return
            _fail(batch, exc)
            return
        except Exception as exc:  # noqa: BLE001 -- every waiting request gets the error; none hangs
            _fail(batch, exc)
            return
        self.latency.observe(rows, elapsed)
        self._cpu.observe(rows, cpu)
        if trace is not None:
            trace.ran(rows, elapsed)
        if self._on_batch is not None:
            self._on_batch(rows, elapsed, waits, merged, outputs)
        if len(batch) == 1:
            item = batch[0]
            if not item.future.done():
                item.future.set_result(outputs)
                if (sample := item.sample) is not None:
                    sample.ran, sample.offset, sample.rows = Ran(merged, outputs, rows), 0, rows
            return
        try:
            parts = _split(outputs, [i.rows for i in batch])
        except ShipyardError as exc:
            _fail(batch, exc)
            return
        ran = None
        offset = 0
        for item, part in zip(batch, parts, strict=True):
            if not item.future.done():
                item.future.set_result(part)
                if (sample := item.sample) is not None:
                    if ran is None:  # one per batch, shared by its requests' log entries
                        ran = Ran(merged, outputs, rows)
                    sample.ran, sample.offset, sample.rows = ran, offset, item.rows
            offset += item.rows

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, let queued work finish (bounded), then stop the worker thread."""
        self._closed = True
        deadline = time.perf_counter() + timeout_s
        while (self._queue or self.busy) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(OverloadedError("the model was unloaded; retry"))
        self._queue.clear()
        for place in self._waiting:
            if not place.done():
                place.set_exception(OverloadedError("the model was unloaded; retry"))
        self._waiting.clear()
        self._executor.shutdown(wait=False)


def _expire(future: asyncio.Future[Arrays], timeout_s: float | None) -> None:
    if not future.done():
        within = f" of {timeout_s:g} s" if timeout_s is not None else ""
        future.set_exception(
            DeadlineExceededError(
                f"the request's deadline{within} passed before the model answered; its work was "
                "dropped. Send X-Request-Timeout (seconds) to allow more, up to the server's cap "
                "(setting serve.max_timeout_s), or raise the model's timeout_s"
            )
        )


def _give_up(place: asyncio.Future[None]) -> None:
    if not place.done():
        place.set_exception(_QueueWaitOver())


class _QueueWaitOver(Exception):
    """A request's wait for a place in a full queue ran out (turned into the 503 by `submit`)."""


def _discard(waiting: deque[asyncio.Future[None]], place: asyncio.Future[None]) -> None:
    with contextlib.suppress(ValueError):  # already handed out or dropped
        waiting.remove(place)


def _timed(predict: Callable[[Arrays], Arrays], inputs: Arrays) -> tuple[Arrays, float, float]:
    """The outputs, the seconds `predict` took, and the CPU seconds of this thread meanwhile."""
    started, cpu = time.perf_counter(), time.thread_time()
    outputs = predict(inputs)
    return outputs, time.perf_counter() - started, time.thread_time() - cpu


def _rows(inputs: Arrays) -> int:
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1


def _compatible(a: _Item, b: _Item) -> bool:
    """Requests merge only if every input has the same dtype and trailing shape."""
    for name, arr in a.inputs.items():
        other = b.inputs.get(name)
        if other is None or other.dtype != arr.dtype or other.shape[1:] != arr.shape[1:]:
            return False
    return True


def _merge(parts: list[Arrays]) -> Arrays:
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


def _split(outputs: Arrays, counts: list[int]) -> list[Arrays]:
    total = sum(counts)
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            raise ShipyardError(
                f"output {name!r} has {arr.shape[0] if arr.ndim else 0} rows for a batch of "
                f"{total}; this model cannot be batched (set max_batch_size=1)"
            )
    parts = []
    start = 0
    for count in counts:  # plain slices (views): np.split is several times slower here
        parts.append({name: arr[start : start + count] for name, arr in outputs.items()})
        start += count
    return parts


def _fail(batch: list[_Item], exc: BaseException) -> None:
    for item in batch:
        if not item.future.done():
            item.future.set_exception(exc)

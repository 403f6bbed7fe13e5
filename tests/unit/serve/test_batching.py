"""The dynamic batcher, driven directly in asyncio with a fake runtime (no server, no sockets).

The fake's `predict` runs in the batcher's worker thread; a `threading.Event` gate holds the
first batch inside `predict` so that later requests queue up behind it deterministically.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipyard.errors import InvalidInputError, OverloadedError, ShipyardError
from shipyard.serve import batching
from shipyard.serve.batching import Batcher, LatencyModel

T = TypeVar("T")
Arrays = dict[str, np.ndarray]
WAIT_S = 5.0  # upper bound for anything that should happen "at once"; a hang fails, not blocks


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run one async test body on a fresh event loop."""

    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


def rows(*values: float, width: int = 2) -> Arrays:
    """A request with one row per value, every feature of a row equal to that value."""
    return {"x": np.repeat(np.asarray(values, dtype=np.float64)[:, None], width, axis=1)}


class FakeRuntime:
    """Records every batch it sees and returns x * 2; can be held at a gate or made to fail."""

    def __init__(self, *, gated: bool = False, fail_with: BaseException | None = None) -> None:
        self.batches: list[np.ndarray] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.fail_with = fail_with
        self.poison: float | None = None  # a row value that makes predict raise InvalidInputError

    @property
    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]

    def predict(self, inputs: Arrays) -> Arrays:
        x = inputs["x"]
        self.batches.append(x.copy())
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("test gate never opened")
        if self.poison is not None and np.any(x == self.poison):
            raise InvalidInputError(f"row value {self.poison} is not allowed", field="x")
        if self.fail_with is not None:
            raise self.fail_with
        return {"y": x * 2}

    async def wait_entered(self) -> None:
        """Until a batch is inside predict (the worker thread), without blocking the loop."""
        assert await asyncio.to_thread(self.entered.wait, WAIT_S), "predict was never called"


async def busy(fake: FakeRuntime, first: Arrays, **options: Any) -> tuple[Batcher, asyncio.Task[Arrays]]:
    """A started batcher whose runtime is busy with `first` (held at the fake's gate), so the
    requests that follow queue up behind it."""
    batcher = Batcher(fake.predict, **options)
    batcher.start()
    running = asyncio.create_task(batcher.submit(first))
    await fake.wait_entered()
    return batcher, running


async def settle() -> None:
    """Let freshly created tasks run up to their first await (i.e. enqueue their request)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def gather_within(*aws: Awaitable[Any], timeout: float = WAIT_S) -> list[Any]:
    """Gather with return_exceptions, failing the test instead of hanging."""
    return await asyncio.wait_for(asyncio.gather(*aws, return_exceptions=True), timeout)


def test_full_batch_merges_rows_of_several_requests_and_splits_results_back() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        # The runtime is busy with `first`: the rest queue up.
        batcher, first = await busy(fake, rows(1.0), max_batch_size=6, max_delay_s=0.0)
        queued = [asyncio.create_task(batcher.submit(rows(10.0 + i, 20.0 + i))) for i in range(4)]
        await settle()
        assert batcher.depth == 4
        fake.gate.set()
        results = await gather_within(first, *queued)
        await batcher.close()

        # 1 row alone, then 3 requests × 2 rows = 6 (full), then the 4th request's 2 rows
        assert fake.sizes == [1, 6, 2]
        np.testing.assert_array_equal(fake.batches[1][:, 0], [10, 20, 11, 21, 12, 22])
        np.testing.assert_array_equal(results[0]["y"], rows(1.0)["x"] * 2)
        for i, result in enumerate(results[1:]):
            assert set(result) == {"y"}
            np.testing.assert_array_equal(result["y"], rows(10.0 + i, 20.0 + i)["x"] * 2)

    run(body)


def test_samples_are_told_their_rows_of_the_batch_they_ran_in() -> None:
    """The prediction log's entries refer to their rows of a shared batch: those rows must be
    exactly the request's inputs and outputs."""
    from shipyard.monitor.prediction_recorder import Sample

    fake = FakeRuntime(gated=True)

    async def body() -> None:
        alone = Sample()
        batcher = Batcher(fake.predict, max_batch_size=8, max_delay_s=0.0)
        batcher.start()
        first = asyncio.create_task(batcher.submit(rows(1.0), sample=alone))
        await fake.wait_entered()
        requests = [rows(10.0), rows(20.0, 21.0), rows(30.0)]
        samples = [Sample(), None, Sample()]
        queued = [
            asyncio.create_task(batcher.submit(r, sample=s)) for r, s in zip(requests, samples, strict=True)
        ]
        await settle()
        fake.gate.set()
        results = await gather_within(first, *queued)
        await batcher.close()

        assert fake.sizes == [1, 4]
        shared = {id(s.ran) for s in samples if s is not None}
        assert len(shared) == 1  # one batch, one record for all its requests
        for request, sample, result in zip([rows(1.0), *requests], [alone, *samples], results, strict=True):
            if sample is None:
                continue
            assert sample.ran is not None
            inputs, outputs = sample.ran.arrays(sample.offset, sample.rows)
            assert inputs is not None and outputs is not None
            np.testing.assert_array_equal(inputs["x"], request["x"])
            np.testing.assert_array_equal(outputs["y"], result["y"])
            assert sample.ran.held(sample.rows) == request["x"].nbytes + result["y"].nbytes

    run(body)


def test_a_request_larger_than_max_batch_size_runs_alone() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher, first = await busy(fake, rows(0.0), max_batch_size=4, max_delay_s=0.0)
        small_a = asyncio.create_task(batcher.submit(rows(1.0)))
        big = asyncio.create_task(batcher.submit(rows(*range(100, 110))))
        small_b = asyncio.create_task(batcher.submit(rows(2.0)))
        await settle()
        fake.gate.set()
        results = await gather_within(first, small_a, big, small_b)
        await batcher.close()

        assert fake.sizes == [1, 1, 10, 1]
        np.testing.assert_array_equal(fake.batches[2][:, 0], np.arange(100, 110))
        np.testing.assert_array_equal(results[2]["y"][:, 0], np.arange(100, 110) * 2)
        np.testing.assert_array_equal(results[3]["y"], [[4.0, 4.0]])

    run(body)


def test_a_lone_request_on_an_idle_runtime_runs_at_once_not_after_the_delay() -> None:
    fake = FakeRuntime()

    async def body() -> None:
        # A delay far beyond WAIT_S: a request held back for it fails wait_for instead of passing.
        batcher = Batcher(fake.predict, max_batch_size=32, max_delay_s=3600.0)
        batcher.start()
        for i in range(5):  # sparse traffic: each request alone, none waits for company
            result = await asyncio.wait_for(batcher.submit(rows(float(i))), WAIT_S)
            np.testing.assert_array_equal(result["y"], rows(float(i))["x"] * 2)
            await asyncio.sleep(0.02)
        await batcher.close()

    run(body)
    assert fake.sizes == [1] * 5


def test_hold_back_never_exceeds_what_is_left_of_max_delay() -> None:
    async def body() -> None:
        batcher = Batcher(FakeRuntime().predict, max_batch_size=32, max_delay_s=0.05)
        for n in (1, 2, 4, 8):  # a large fixed cost per call (b = 20 ms): waiting pays
            batcher.latency.observe(n, 0.02 + 0.0001 * n)
        batcher._arrival_gap = 0.001  # requests arrive every millisecond
        now = time.perf_counter()
        hold = batcher._hold_back_s(1, now)
        assert 0 < hold <= 0.05
        batcher._idle_since = now - 10.0  # runtime idle for long: the oldest request bounds it
        assert batcher._hold_back_s(1, now - 0.049) <= 0.001 + 1e-6
        assert batcher._hold_back_s(1, now - 1.0) == 0.0  # deadline passed: flush now
        # The runtime just became free: requests that queued behind the last batch get a fresh
        # window, so clients about to send again can join (they would otherwise never merge).
        batcher._idle_since = time.perf_counter()
        assert 0 < batcher._hold_back_s(1, now - 1.0) <= 0.05
        assert batcher._hold_back_s(32, now) == 0.0  # full batch: run now
        batcher._arrival_gap = 1.0  # next request not expected before a batch would finish
        assert batcher._hold_back_s(1, now) == 0.0
        await batcher.close()

    run(body)


def test_a_preferred_batch_size_runs_at_once_where_a_partial_batch_would_wait() -> None:
    async def body() -> None:
        batcher = Batcher(
            FakeRuntime().predict, max_batch_size=32, max_delay_s=0.05, preferred_batch_sizes=(4, 8)
        )
        for n in (1, 2, 4, 8):  # waiting pays, as above
            batcher.latency.observe(n, 0.02 + 0.0001 * n)
        batcher._arrival_gap = 0.001
        now = time.perf_counter()
        assert [n for n in (3, 4, 5, 8) if batcher._hold_back_s(n, now) == 0.0] == [4, 8]
        await batcher.close()

    run(body)


def test_a_failed_batch_fails_every_waiting_request_and_none_hangs() -> None:
    fake = FakeRuntime(gated=True, fail_with=RuntimeError("runtime exploded"))

    async def body() -> None:
        batcher, first = await busy(fake, rows(1.0), max_batch_size=8, max_delay_s=0.0)
        queued = [asyncio.create_task(batcher.submit(rows(float(i)))) for i in range(5)]
        await settle()
        fake.gate.set()
        results = await gather_within(first, *queued)
        assert fake.sizes == [1, 5]
        assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results), results

        fake.fail_with = None  # the batcher survives a failed batch
        ok = await asyncio.wait_for(batcher.submit(rows(3.0)), WAIT_S)
        np.testing.assert_array_equal(ok["y"], [[6.0, 6.0]])
        await batcher.close()

    run(body)


def test_one_bad_request_does_not_fail_its_neighbours() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher, first = await busy(fake, rows(0.0), max_batch_size=8, max_delay_s=0.0)
        fake.poison = -1.0
        good_a = asyncio.create_task(batcher.submit(rows(1.0, 2.0)))
        bad = asyncio.create_task(batcher.submit(rows(3.0, -1.0)))
        good_b = asyncio.create_task(batcher.submit(rows(4.0)))
        await settle()
        fake.gate.set()
        results = await gather_within(first, good_a, bad, good_b)
        await batcher.close()

        # the merged batch (5 rows) fails on the poison row, then each request runs alone
        assert fake.sizes == [1, 5, 2, 2, 1]
        np.testing.assert_array_equal(results[1]["y"][:, 0], [2.0, 4.0])
        assert isinstance(results[2], InvalidInputError)
        assert results[2].status_code == 400
        np.testing.assert_array_equal(results[3]["y"][:, 0], [8.0])

    run(body)


def test_a_cancelled_request_never_reaches_the_runtime() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher, first = await busy(fake, rows(1.0), max_batch_size=8, max_delay_s=0.0)
        kept = asyncio.create_task(batcher.submit(rows(2.0)))
        gone = asyncio.create_task(batcher.submit(rows(99.0, 99.0, 99.0)))  # client disconnects
        await settle()
        gone.cancel()
        await settle()
        fake.gate.set()
        _, kept_result = await gather_within(first, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
        await batcher.close()

        assert fake.sizes == [1, 1]
        assert not any(np.any(b == 99.0) for b in fake.batches)
        np.testing.assert_array_equal(kept_result["y"], [[4.0, 4.0]])
        assert batcher.depth == 0  # nothing of the cancelled request is left behind

    run(body)


def test_on_idle_is_called_when_only_withdrawn_requests_were_left() -> None:
    fake = FakeRuntime(gated=True)
    idle: list[int] = []

    async def body() -> None:
        batcher = Batcher(fake.predict, max_batch_size=1, max_delay_s=0.0, on_idle=lambda: idle.append(1))
        batcher.start()
        await settle()
        first = asyncio.create_task(batcher.submit(rows(1.0)))
        await fake.wait_entered()
        gone = asyncio.create_task(batcher.submit(rows(2.0)))
        await settle()
        idle.clear()
        gone.cancel()
        fake.gate.set()
        await gather_within(first)
        await settle()
        assert fake.sizes == [1]  # the withdrawn request ran no batch, yet the queue reported dry
        assert idle and batcher.depth == 0
        await batcher.close()

    run(body)


def test_a_full_queue_answers_overloaded_at_once() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        # `first` left the queue: it is running.
        batcher, first = await busy(fake, rows(1.0), max_batch_size=8, max_delay_s=0.0, max_queue=2)
        queued = [asyncio.create_task(batcher.submit(rows(float(i)))) for i in (2, 3)]
        await settle()
        with pytest.raises(OverloadedError, match="queue is full") as caught:
            await asyncio.wait_for(batcher.submit(rows(4.0)), WAIT_S)
        assert caught.value.status_code == 503
        fake.gate.set()
        results = await gather_within(first, *queued)
        assert not any(isinstance(r, BaseException) for r in results), results
        await batcher.close()

    run(body)


def test_a_request_finding_the_queue_full_waits_for_a_place_in_arrival_order() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher, first = await busy(
            fake, rows(1.0), max_batch_size=1, max_delay_s=0.0, max_queue=1, max_queue_wait_s=WAIT_S
        )
        queued = asyncio.create_task(batcher.submit(rows(2.0)))
        await settle()
        waiting = [asyncio.create_task(batcher.submit(rows(float(i)))) for i in (3, 4, 5)]
        await settle()
        assert batcher.depth == 1  # the queue holds its one request; the rest wait outside it
        fake.gate.set()
        results = await gather_within(first, queued, *waiting)
        assert not any(isinstance(r, BaseException) for r in results), results
        assert [b[0, 0] for b in fake.batches] == [1.0, 2.0, 3.0, 4.0, 5.0]  # first come, first served
        await batcher.close()

    run(body)


def test_a_request_that_waits_past_max_queue_wait_is_refused_and_leaves_no_place_taken() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher, first = await busy(
            fake, rows(1.0), max_batch_size=1, max_delay_s=0.0, max_queue=1, max_queue_wait_s=0.01
        )
        queued = asyncio.create_task(batcher.submit(rows(2.0)))
        await settle()
        with pytest.raises(OverloadedError, match=r"queue is full .* within 0.01 s") as caught:
            await asyncio.wait_for(batcher.submit(rows(3.0)), WAIT_S)
        assert caught.value.status_code == 503
        fake.gate.set()
        await gather_within(first, queued)
        later = await gather_within(batcher.submit(rows(4.0)))  # the refused one holds no place
        np.testing.assert_array_equal(later[0]["y"], rows(4.0)["x"] * 2)
        await batcher.close()

    run(body)


def test_a_waiting_request_whose_client_left_passes_its_place_on() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher, first = await busy(
            fake, rows(1.0), max_batch_size=1, max_delay_s=0.0, max_queue=1, max_queue_wait_s=WAIT_S
        )
        queued = asyncio.create_task(batcher.submit(rows(2.0)))
        await settle()
        gone = asyncio.create_task(batcher.submit(rows(3.0)))
        stays = asyncio.create_task(batcher.submit(rows(4.0)))
        await settle()
        gone.cancel()
        fake.gate.set()
        results = await gather_within(first, queued, gone, stays)
        assert isinstance(results[2], asyncio.CancelledError)
        np.testing.assert_array_equal(results[3]["y"], rows(4.0)["x"] * 2)
        assert [b[0, 0] for b in fake.batches] == [1.0, 2.0, 4.0]  # the one that left never ran
        await batcher.close()

    run(body)


def test_close_refuses_the_requests_waiting_for_a_place() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher, first = await busy(
            fake, rows(1.0), max_batch_size=1, max_delay_s=0.0, max_queue=1, max_queue_wait_s=WAIT_S
        )
        queued = asyncio.create_task(batcher.submit(rows(2.0)))
        await settle()
        waiting = asyncio.create_task(batcher.submit(rows(3.0)))
        await settle()
        closing = asyncio.create_task(batcher.close(timeout_s=WAIT_S))
        await settle()
        fake.gate.set()
        results = await gather_within(first, queued, waiting, closing)
        assert isinstance(results[2], OverloadedError), results[2]
        assert not isinstance(results[1], BaseException)

    run(body)


def test_close_lets_queued_work_finish_then_refuses_new_requests() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher, first = await busy(fake, rows(1.0), max_batch_size=8, max_delay_s=0.0)
        queued = asyncio.create_task(batcher.submit(rows(2.0)))
        await settle()
        closing = asyncio.create_task(batcher.close(timeout_s=WAIT_S))
        await settle()
        with pytest.raises(OverloadedError, match="shutting down"):
            await batcher.submit(rows(3.0))
        fake.gate.set()
        results = await gather_within(first, queued, closing)
        np.testing.assert_array_equal(results[1]["y"], [[4.0, 4.0]])

    run(body)


def test_close_past_its_deadline_fails_the_queued_requests() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher, first = await busy(fake, rows(1.0), max_batch_size=8, max_delay_s=0.0)
        queued = [asyncio.create_task(batcher.submit(rows(float(i)))) for i in (2, 3)]
        await settle()
        try:
            await asyncio.wait_for(batcher.close(timeout_s=0.05), WAIT_S)  # runtime still stuck
            results = await gather_within(*queued)
        finally:
            fake.gate.set()
        assert all(isinstance(r, OverloadedError) for r in results), results
        first.cancel()

    run(body)


def test_close_past_its_deadline_does_not_leave_the_running_batch_hanging() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher = Batcher(fake.predict, max_batch_size=8, max_delay_s=0.0)
        batcher.start()
        running = asyncio.create_task(batcher.submit(rows(1.0)))
        await fake.wait_entered()
        try:
            await asyncio.wait_for(batcher.close(timeout_s=0.05), WAIT_S)
            # the runtime is stuck past the deadline: its callers must get an error, not hang
            done, _ = await asyncio.wait({running}, timeout=1.0)
        finally:
            fake.gate.set()
        running.cancel()
        assert running in done, "the request whose batch was running at close() never finished"

    run(body)


def test_a_runtime_that_cannot_batch_gets_one_request_at_a_time() -> None:
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher = Batcher(fake.predict, max_batch_size=32, max_delay_s=0.0, can_batch=False)
        assert batcher.max_batch_size == 1
        batcher.start()
        first = asyncio.create_task(batcher.submit(rows(1.0)))
        await fake.wait_entered()
        queued = [asyncio.create_task(batcher.submit(rows(float(i)))) for i in range(3)]
        await settle()
        fake.gate.set()
        await gather_within(first, *queued)
        await batcher.close()

    run(body)
    assert fake.sizes == [1, 1, 1, 1]


def test_outputs_with_the_wrong_row_count_fail_the_merged_batch_clearly() -> None:
    gate = threading.Event()
    calls: list[int] = []

    def predict(inputs: Arrays) -> Arrays:
        calls.append(len(inputs["x"]))
        gate.wait(WAIT_S)
        return {"y": np.zeros(1)}  # one value per call, whatever the batch: not batchable

    async def body() -> None:
        batcher = Batcher(predict, max_batch_size=8, max_delay_s=0.0)
        batcher.start()
        first = asyncio.create_task(batcher.submit(rows(1.0)))
        while not calls:
            await asyncio.sleep(0.001)
        queued = [asyncio.create_task(batcher.submit(rows(float(i)))) for i in range(2)]
        await settle()
        gate.set()
        results = await gather_within(first, *queued)
        await batcher.close()
        assert not isinstance(results[0], BaseException)  # alone: returned as is
        for r in results[1:]:
            assert isinstance(r, ShipyardError)
            assert "cannot be batched" in r.message

    run(body)


def test_on_batch_reports_rows_time_queue_waits_inputs_and_outputs(clock: FakeClock) -> None:
    seen: list[tuple[int, float, list[float], dict[str, np.ndarray], dict[str, np.ndarray]]] = []
    fake = FakeRuntime(gated=True)

    async def body() -> None:
        batcher, first = await busy(
            fake, rows(1.0), max_batch_size=8, max_delay_s=0.0, on_batch=lambda *a: seen.append(a)
        )
        queued = [asyncio.create_task(batcher.submit(rows(2.0, 3.0))) for _ in range(2)]
        await settle()
        clock.advance(20.0)  # the queued requests wait that long behind the first batch
        fake.gate.set()
        await gather_within(first, *queued)
        await batcher.close()

    run(body)
    assert [(n, waits) for n, _, waits, _, _ in seen] == [(1, [0.0]), (4, [20.0, 20.0])]
    assert all(secs >= 0 for _, secs, _, _, _ in seen)
    # The inputs the model ran, merged: drift windows keep one entry per batch.
    assert [inputs["x"][:, 0].tolist() for *_, inputs, _ in seen] == [[1.0], [2.0, 3.0, 2.0, 3.0]]
    # And its outputs for the whole batch (drift keeps an embedding model's vectors).
    assert [len(next(iter(outputs.values()))) for *_, outputs in seen] == [1, 4]


class FakeClock:
    """Stands in for `time` in the batcher: time moves only when a test says so.

    Reads from worker threads are counted, so the test knows when a batch's timing is done.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.cpu = 0.0  # CPU seconds of whichever thread asks (the tests run one batch at a time)
        self.worker_reads = 0
        self.changed = threading.Condition()

    def perf_counter(self) -> float:
        with self.changed:
            if threading.current_thread() is not threading.main_thread():
                self.worker_reads += 1
                self.changed.notify_all()
            return self.now

    def thread_time(self) -> float:
        return self.cpu

    def advance(self, seconds: float, cpu: float | None = None) -> None:
        """Move the clock, and the CPU time by as much unless told otherwise."""
        with self.changed:
            self.now += seconds
            self.cpu += seconds if cpu is None else cpu

    def wait_worker_reads(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.worker_reads >= count, WAIT_S), self.worker_reads


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(batching, "time", fake)
    return fake


def test_batch_time_is_the_runtime_s_not_the_busy_loop_s(clock: FakeClock) -> None:
    """A batch run in the worker thread is timed there: a busy event loop that takes the result
    back late must not make a fast model look slow (it would then never run inline again)."""
    seen: list[float] = []

    def predict(inputs: Arrays) -> Arrays:
        clock.advance(1.0)  # the model's own time
        return {"y": inputs["x"] * 2}

    async def body() -> None:
        batcher = Batcher(predict, max_batch_size=8, max_delay_s=0.0, on_batch=lambda *a: seen.append(a[1]))
        batcher.start()
        for i in range(3):  # no fit yet: each batch goes to the worker thread
            request = asyncio.create_task(batcher.submit(rows(1.0)))
            await settle()
            # The event loop stays busy (this thread blocks it) until the worker has timed the
            # batch (two clock reads), and for 50 more "seconds" before it takes the result back.
            clock.wait_worker_reads(2 * (i + 1))
            clock.advance(50.0)
            await asyncio.wait_for(request, WAIT_S)
        await batcher.close()

    run(body)
    assert seen == [1.0, 1.0, 1.0]


def where_batches_run(clock: FakeClock, steps: list[tuple[float, float]]) -> list[str]:
    """Run one request after another through a model whose n-th batch takes `steps[n]`: (seconds
    by the clock, CPU seconds of the thread running it); where each batch ran, in order."""
    ran: list[str] = []

    def predict(inputs: Arrays) -> Arrays:
        ran.append("inline" if threading.current_thread() is threading.main_thread() else "thread")
        wall, cpu = steps[len(ran) - 1]
        clock.advance(wall, cpu=cpu)
        return {"y": inputs["x"] * 2}

    async def body() -> None:
        batcher = Batcher(predict, max_batch_size=8, max_delay_s=0.0)
        batcher.start()
        for _ in steps:
            await asyncio.wait_for(batcher.submit(rows(1.0)), WAIT_S)
        await batcher.close()

    run(body)
    return ran


def test_a_quick_model_that_looks_slow_by_the_clock_in_the_worker_thread_runs_inline(
    clock: FakeClock,
) -> None:
    """In the worker thread a batch's time by the clock includes its waits for the GIL: on a busy
    server, 2 ms for a model whose own work is 0.1 ms. Its CPU time shows it is quick."""
    ran = where_batches_run(clock, [(0.002, 0.0001)] * 3 + [(0.0001, 0.0001)] * 5)
    assert ran == ["thread"] * 3 + ["inline"] * 5  # a thread until the fits exist


def test_a_model_that_waits_on_threads_of_its_own_never_runs_on_the_event_loop(clock: FakeClock) -> None:
    """Little CPU in the calling thread, 20 ms by the clock: inline it would hold the loop 20 ms."""
    ran = where_batches_run(clock, [(0.02, 0.00001)] * 8)
    assert ran == ["thread"] * 8


def test_a_model_that_becomes_slow_goes_back_to_the_worker_thread(clock: FakeClock) -> None:
    ran = where_batches_run(clock, [(0.0001, 0.0001)] * 6 + [(0.003, 0.003)] * 10)
    assert ran[3:6] == ["inline"] * 3
    assert ran[-5:] == ["thread"] * 5, ran  # the fit forgets the quick batches within a few


def test_latency_model_recovers_slope_and_intercept() -> None:
    model = LatencyModel()
    a, b = 0.0007, 0.004
    for _ in range(3):
        for n in (1, 2, 4, 8, 16, 32, 64):
            model.observe(n, a * n + b)
    fit = model.fit()
    assert fit is not None
    assert fit[0] == pytest.approx(a, rel=1e-6)
    assert fit[1] == pytest.approx(b, rel=1e-6)


def test_latency_model_with_noise_and_forgetting_tracks_a_change() -> None:
    rng = np.random.default_rng(0)
    model = LatencyModel(decay=0.9)
    for n in rng.integers(1, 65, size=300):  # old regime, forgotten by the end
        model.observe(int(n), 0.01 * n + 0.5)
    for n in rng.integers(1, 65, size=300):
        model.observe(int(n), 0.001 * n + 0.002 + rng.normal(0, 1e-5))
    fit = model.fit()
    assert fit is not None
    assert fit[0] == pytest.approx(0.001, rel=0.02)
    assert fit[1] == pytest.approx(0.002, abs=5e-4)


def test_latency_model_needs_data_and_spread() -> None:
    model = LatencyModel()
    assert model.fit() is None
    model.observe(8, 0.01)
    model.observe(8, 0.03)
    assert model.fit() is None  # too few batches to fit anything
    model.observe(8, 0.02)
    a, b = model.fit() or (None, None)
    assert a == 0.0  # every batch the same size: all cost counts as fixed
    assert b == pytest.approx(0.02, rel=0.05)


def test_latency_model_never_returns_negative_costs() -> None:
    model = LatencyModel()
    for n in (1, 2, 4, 8):
        model.observe(n, 0.1 - 0.01 * n)  # bigger batches faster (cold first runs): no slope
    a, b = model.fit() or (None, None)
    assert a == 0.0
    # The mean cost, never more than any batch took (the intercept of the falling line, 0.1, is).
    assert b == pytest.approx(0.0625, abs=0.002)


@given(
    counts=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=8),
    width=st.integers(min_value=1, max_value=4),
)
def test_merge_then_split_round_trips(counts: list[int], width: int) -> None:
    parts: list[dict[str, np.ndarray[Any, Any]]] = []
    start = 0
    for n in counts:
        parts.append(
            {
                "x": np.arange(start * width, (start + n) * width, dtype=np.float32).reshape(n, width),
                "ids": np.arange(start, start + n, dtype=np.int64),
                "text": np.array([f"row {i}" for i in range(start, start + n)], dtype=object),
            }
        )
        start += n
    merged = batching._merge(parts)
    assert {k: v.shape[0] for k, v in merged.items()} == dict.fromkeys(parts[0], sum(counts))
    back = batching._split(merged, counts)
    assert len(back) == len(parts)
    for original, split in zip(parts, back, strict=True):
        assert set(split) == set(original)
        for name in original:
            assert split[name].dtype == original[name].dtype
            np.testing.assert_array_equal(split[name], original[name])


@given(
    counts=st.lists(st.integers(min_value=1, max_value=5), min_size=2, max_size=6), extra=st.integers(1, 3)
)
def test_split_refuses_outputs_whose_rows_do_not_add_up(counts: list[int], extra: int) -> None:
    outputs = {"y": np.zeros((sum(counts) + extra, 2))}
    with pytest.raises(ShipyardError, match="cannot be batched"):
        batching._split(outputs, counts)

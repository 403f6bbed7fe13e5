"""Rate limits per caller key and per model (token buckets), and a concurrency limit per model.

With several workers (`--workers N`, processes sharing the port) a request lands on any of
them, so the counts must be shared. They live in shared memory: a small file the parent creates
in the server's temporary directory, mapped by every worker. The registry database was the
other candidate, but it would cost a write transaction (under SQLite a file lock and a journal
write) on every request, far over a budget of a few microseconds; the mapped file costs a hash,
a struct unpack/pack and, for a bucket shared by workers, one flock/unlock pair (about 1 µs).
With no limit set, nothing is touched at all.

Buckets sit in fixed slots chosen by a stable hash (crc32, the same in every process) of
`model:NAME` or `key:ID`; two names sharing a slot share a bucket, which is stricter, never
looser. In-flight counts are kept per worker: each worker writes only its own cells (no lock)
and readers sum them, so a worker that crashes and is replaced under the same number starts its
cells from zero instead of leaking its in-flight requests forever. With one worker the same
table lives in process memory and takes no lock: the event loop runs one handler at a time.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct
import time
import zlib
from dataclasses import dataclass

from shipyard.errors import OverloadedError, RateLimitedError
from shipyard.settings import ServeSettings

BUCKETS = 4096
MODEL_SLOTS = 512
_BUCKET = struct.Struct("<dd")  # tokens left, time of the last refill (CLOCK_MONOTONIC is system-wide)
_CELL = struct.Struct("<q")


def table_size(workers: int) -> int:
    return BUCKETS * _BUCKET.size + MODEL_SLOTS * (workers + 1) * _CELL.size


def create_table(directory: str, workers: int) -> str:
    """A zeroed table for `workers` processes in `directory`; returns its path (for ServeSpec)."""
    path = os.path.join(directory, "limits.bin")
    with open(path, "wb") as file:
        file.truncate(table_size(workers))
    return path


class Table:
    """The shared counters: token buckets and per-worker in-flight cells."""

    def __init__(self, path: str | None = None, workers: int = 1) -> None:
        self.columns = workers + 1  # worker numbers 1..N; 0 is the single-process server
        size = table_size(workers)
        self._fd: int | None = None
        self._mem: bytearray | mmap.mmap
        if path is None:
            self._mem = bytearray(size)
        else:
            self._fd = os.open(path, os.O_RDWR)
            self._mem = mmap.mmap(self._fd, size)
        self._local: dict[int, list[float]] = {}  # one process: buckets as lists, no packing
        self._cells = struct.Struct(f"<{self.columns}q")
        self._cells_at = BUCKETS * _BUCKET.size

    def bucket(self, key: str) -> int:
        """Where `key`'s token bucket lives (the same in every process)."""
        return (zlib.crc32(key.encode()) % BUCKETS) * _BUCKET.size

    def take(self, offset: int, rate: float, burst: float) -> float:
        """Take one token from the bucket at `offset`: 0 if there was one, else seconds until there is."""
        now = time.monotonic()
        if self._fd is None:  # the hot path of a single-process server: about 0.3 µs
            bucket = self._local.get(offset)
            if bucket is None:
                bucket = self._local[offset] = [burst, now]
            tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if tokens >= 1:
                bucket[0] = tokens - 1
                return 0.0
            bucket[0] = tokens
            return (1 - tokens) / rate
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            tokens, stamp = _BUCKET.unpack_from(self._mem, offset)
            tokens = burst if stamp == 0 else min(burst, tokens + (now - stamp) * rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / rate
            _BUCKET.pack_into(self._mem, offset, tokens - 1 if wait == 0 else tokens, now)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return wait

    def slot(self, name: str) -> int:
        return zlib.crc32(name.encode()) % MODEL_SLOTS

    def add(self, slot: int, worker: int, delta: int) -> None:
        """Add `delta` to this worker's cell of `slot`."""
        cell = self._cells_at + slot * self._cells.size + worker * _CELL.size
        _CELL.pack_into(self._mem, cell, _CELL.unpack_from(self._mem, cell)[0] + delta)

    def total(self, slot: int) -> int:
        """The count of `slot` over every worker."""
        return sum(self._cells.unpack_from(self._mem, self._cells_at + slot * self._cells.size))

    def reset(self, worker: int) -> None:
        """Zero this worker's cells: a replaced worker must not inherit its predecessor's count."""
        for slot in range(MODEL_SLOTS):
            _CELL.pack_into(self._mem, self._cells_at + slot * self._cells.size + worker * _CELL.size, 0)


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """The limits and deadline of one served version (server settings + its serving options)."""

    rate: float | None
    burst: float
    concurrency: int | None
    timeout_s: float

    @classmethod
    def of(cls, serve: ServeSettings) -> ModelPolicy:
        rate = serve.rate_limit_per_model
        burst = serve.rate_burst_per_model or max(1, math.ceil(rate or 1))
        return cls(rate, float(burst), serve.max_concurrency_per_model, serve.timeout_s)


class Admission:
    """One request counted against its model's concurrency limit until `release()`."""

    __slots__ = ("_slot", "_table", "_worker")

    def __init__(self, table: Table, slot: int, worker: int) -> None:
        self._table, self._slot, self._worker = table, slot, worker

    def release(self) -> None:
        self._table.add(self._slot, self._worker, -1)


class Limits:
    """Admits a request (or refuses it with 429 / 503) by its caller's key and its model."""

    def __init__(self, serve: ServeSettings, table: Table | None = None, worker: int = 0) -> None:
        self._table = table or Table()
        if not 0 <= worker < self._table.columns:  # another worker's cells would be overwritten
            raise ValueError(f"worker {worker} has no cells in a table for {self._table.columns - 1} workers")
        self._worker = worker
        self._key_rate = serve.rate_limit_per_key
        self._key_burst = float(serve.rate_burst_per_key or max(1, math.ceil(self._key_rate or 1)))
        self._slots: dict[str, int] = {}  # served model names and key ids: all stay small
        self._buckets: dict[str, int] = {}
        self._key_buckets: dict[str, int] = {}
        self._table.reset(worker)

    def admit(self, model: str, policy: ModelPolicy, caller: str | None) -> Admission | None:
        """Count one request; raises if a limit refuses it. Release the admission when done."""
        if caller is not None and self._key_rate is not None:
            bucket = self._key_buckets.get(caller)
            if bucket is None:  # callers are authenticated key ids: as few as the keys created
                bucket = self._key_buckets[caller] = self._table.bucket(f"key:{caller}")
            wait = self._table.take(bucket, self._key_rate, self._key_burst)
            if wait:
                raise RateLimitedError(
                    f"this API key is over its rate limit of {self._key_rate:g} requests per second "
                    f"(setting serve.rate_limit_per_key); retry in {_seconds(wait)} s",
                    retry_after_s=wait,
                    field="authorization",
                )
        if policy.rate is not None:
            bucket = self._buckets.get(model)
            if bucket is None:
                bucket = self._buckets[model] = self._table.bucket(f"model:{model}")
            wait = self._table.take(bucket, policy.rate, policy.burst)
            if wait:
                raise RateLimitedError(
                    f"model {model!r} is over its rate limit of {policy.rate:g} requests per second "
                    f"(setting serve.rate_limit_per_model); retry in {_seconds(wait)} s",
                    retry_after_s=wait,
                    field="model",
                )
        if policy.concurrency is None:
            return None
        slot = self._slots.get(model)
        if slot is None:
            slot = self._slots[model] = self._table.slot(model)
        # Count first, then check: two workers racing for the last place may both refuse, but
        # never both run past the limit.
        self._table.add(slot, self._worker, 1)
        if self._table.total(slot) > policy.concurrency:
            self._table.add(slot, self._worker, -1)
            raise OverloadedError(
                f"model {model!r} is already running its limit of {policy.concurrency} concurrent "
                "requests (setting serve.max_concurrency_per_model); retry later",
                field="model",
            )
        return Admission(self._table, slot, self._worker)


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))

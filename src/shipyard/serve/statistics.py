"""Per-version inference statistics in Triton's shape (`/v2/models/{m}/stats`, gRPC ModelStatistics).

Counts and cumulative nanoseconds, kept in plain integers on each served version (one process's
requests: with `--workers N`, each worker answers for its own). `perf_analyzer` reads them
around each measurement window; Prometheus metrics remain the cross-worker view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

_PHASES = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class VersionStatistics:
    """What one served version has done since it loaded."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)  # rows -> batch runs and their time
    last_inference_ms: int = 0  # epoch milliseconds of the last success

    def succeeded(self, ns: int) -> None:
        self.success.count += 1
        self.success.ns += ns
        self.last_inference_ms = time.time_ns() // 1_000_000

    def failed(self, ns: int) -> None:
        self.fail.count += 1
        self.fail.ns += ns

    def ran_batch(self, rows: int, seconds: float, waits: list[float]) -> None:
        """One batch of `len(waits)` requests, after those waits in the queue."""
        ns = int(seconds * 1e9)
        self.queue.count += len(waits)
        self.queue.ns += int(sum(waits) * 1e9)
        self.compute_infer.count += len(waits)  # per request, as Triton counts it
        self.compute_infer.ns += ns * len(waits)
        entry = self.batches.get(rows)
        if entry is None:
            entry = self.batches[rows] = Duration()
        entry.count += 1
        entry.ns += ns

    def inference_stats(self) -> dict[str, dict[str, int]]:
        # Input and output handling are part of the measured run: they have its count (clients
        # such as perf_analyzer require the three compute counts to match) and no time of their own.
        uncounted = Duration(self.compute_infer.count).to_dict()
        phases = {
            "success": self.success.to_dict(),
            "fail": self.fail.to_dict(),
            "queue": self.queue.to_dict(),
            "compute_input": uncounted,
            "compute_infer": self.compute_infer.to_dict(),
            "compute_output": uncounted,
        }
        return {name: phases.get(name) or Duration().to_dict() for name in _PHASES}

    def batch_stats(self) -> list[dict[str, Any]]:
        return [
            {
                "batch_size": rows,
                "compute_input": Duration(d.count).to_dict(),
                "compute_infer": d.to_dict(),
                "compute_output": Duration(d.count).to_dict(),
            }
            for rows, d in sorted(self.batches.items())
        ]

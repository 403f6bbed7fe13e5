"""What a server used while a load ran: memory and connections sampled, batches from /metrics."""

from __future__ import annotations

import re
import threading

from harness.procfs import connections_by_pid, rss_mb
from harness.servers import Server, http_call

NOISE_CORES = 0.25  # loopback softirq alone is ~0.1-0.2 core: more means other processes competed


def noise_note(cores: float, detail: str = "") -> str:
    """A summary line's warning when other processes used more than NOISE_CORES during the loads."""
    return f" | NOISY: up to {cores:.1f} cores used by other processes{detail}" if cores > NOISE_CORES else ""


def batch_totals(port: int) -> tuple[float, float] | None:
    """(rows, batches) executed so far, summed across workers by /metrics."""
    answer = http_call(port, "GET", "/metrics")
    if answer is None or answer[0] != 200:
        return None
    text = answer[1].decode()
    rows = sum(
        float(v) for v in re.findall(r"^shipyard_batcher_batch_size_rows_sum\{.*\} (\S+)$", text, re.M)
    )
    count = sum(
        float(v) for v in re.findall(r"^shipyard_batcher_batch_size_rows_count\{.*\} (\S+)$", text, re.M)
    )
    return rows, count


class Sampler(threading.Thread):
    """Every 0.5 s while the load runs: each worker's RSS (peak kept) and connections held."""

    def __init__(self, server: Server, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.server, self.pids = server, pids
        self.rss: dict[int, float] = {}
        self.conns: dict[int, int] = dict.fromkeys(pids, 0)
        self.stop = threading.Event()

    def sample(self) -> None:
        for pid in self.pids:
            if (mb := rss_mb(pid)) is not None:
                self.rss[pid] = max(self.rss.get(pid, 0.0), mb)
        counts = connections_by_pid(self.pids, self.server.port)
        if sum(counts.values()) >= sum(self.conns.values()):
            self.conns = counts

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()

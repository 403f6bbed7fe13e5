"""What a process uses: CPU time, resident memory and open files, read without psutil.

prometheus_client's own process collector reads the process that answers the scrape only, and
is off in multiprocess mode; each worker samples itself here instead, into the per-worker gauges
of `metrics`. Resident memory and open files come from /proc (Linux); elsewhere they are left
unset rather than guessed.
"""

from __future__ import annotations

import os
import resource
import time

from shipyard.monitor import metrics

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """This process's resident set size now (not its peak), or None where /proc is missing."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def open_files() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the descriptor listdir itself opened
    except OSError:
        return None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ProcessSampler:
    """Sets this worker's resource gauges; call `sample()` as often as they should be fresh."""

    def __init__(self, worker: int) -> None:
        label = str(worker)
        self._cpu = metrics.PROCESS_CPU.labels(label)
        self._memory = metrics.PROCESS_MEMORY.labels(label)
        self._files = metrics.PROCESS_FILES.labels(label)
        self._max_files = metrics.PROCESS_MAX_FILES.labels(label)
        # The counter only moves forward: it is fed the CPU time used since the last sample.
        self._cpu_counted = 0.0
        metrics.PROCESS_START.labels(label).set(time.time())  # made as the worker builds its app

    def sample(self) -> None:
        used = cpu_seconds()
        if used > self._cpu_counted:
            self._cpu.inc(used - self._cpu_counted)
            self._cpu_counted = used
        memory, files = resident_bytes(), open_files()
        if memory is not None:
            self._memory.set(memory)
        if files is not None:
            self._files.set(files)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY:
            self._max_files.set(soft)

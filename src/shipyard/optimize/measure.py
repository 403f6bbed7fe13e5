"""Measure one loaded model: load time, latency at batch 1 and 32, throughput, size, and the host.

Every candidate is timed the same way — the same thread count, warm-up first, the same rows —
because a speed-up measured with different thread budgets is not a speed-up. Int8 results hold
only for the CPU they were measured on, so the CPU's instruction-set flags travel with every figure.
"""

from __future__ import annotations

import os
import platform
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

WARMUP_CALLS = 3
MIN_CALLS = 5
MAX_CALLS = 2000
_FLAGS_OF_INTEREST = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "i8mm",
)
_LIBRARIES = ("onnxruntime", "onnx", "skl2onnx", "scikit-learn", "torch", "transformers", "numpy")


@dataclass
class Speed:
    p50_b1_ms: float
    p99_b1_ms: float
    p50_b32_ms: float
    p99_b32_ms: float
    throughput: float  # rows per second at batch 32

    def to_dict(self) -> dict[str, float]:
        return {k: significant(v) for k, v in self.__dict__.items()}


def significant(value: float, digits: int = 5) -> float:
    """`value` rounded to `digits` significant digits: what a timing or a score can claim."""
    return float(f"{value:.{digits}g}")


def _latencies(call: Callable[[int], Any], seconds: float) -> list[float]:
    for i in range(WARMUP_CALLS):
        call(i)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    i = 0
    while len(times) < MIN_CALLS or (time.perf_counter() < deadline and len(times) < MAX_CALLS):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
        i += 1
    return times


def time_model(
    predict: Callable[[dict[str, np.ndarray]], Any], inputs: dict[str, np.ndarray], seconds: float
) -> Speed:
    """Latency of single rows (cycling through the rows) and of batches of 32, then throughput."""
    rows = len(next(iter(inputs.values())))
    batch = min(32, rows)

    def one(i: int) -> Any:
        r = i % rows
        return predict({k: v[r : r + 1] for k, v in inputs.items()})

    starts = max(rows - batch + 1, 1)

    def many(i: int) -> Any:
        s = (i * batch) % starts
        return predict({k: v[s : s + batch] for k, v in inputs.items()})

    single = np.asarray(_latencies(one, seconds / 2)) * 1000
    batched = np.asarray(_latencies(many, seconds / 2)) * 1000
    return Speed(
        p50_b1_ms=float(np.percentile(single, 50)),
        p99_b1_ms=float(np.percentile(single, 99)),
        p50_b32_ms=float(np.percentile(batched, 50)),
        p99_b32_ms=float(np.percentile(batched, 99)),
        throughput=float(batch * len(batched) / (batched.sum() / 1000)),
    )


def folder_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def gzip_size(path: Path) -> int:
    """Bytes after deflate (level 6, what gzip does): what pruned-to-zero weights save when shipped
    compressed. Streamed, so a large model is never held in memory at once."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    total = 0
    for file in files:
        deflate = zlib.compressobj(6)
        with file.open("rb") as src:
            while chunk := src.read(1 << 20):
                total += len(deflate.compress(chunk))
        total += len(deflate.flush())
    return total


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            present = set(line.split(":", 1)[1].split())
            return [f for f in _FLAGS_OF_INTEREST if f in present]
    return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_vnni(flags: list[str]) -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"} & set(flags))


def host_info(threads: int) -> dict[str, Any]:
    libraries = {}
    for name in _LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "flags": flags,
        "int8_dot_product": has_vnni(flags),
        "threads": threads,
        "python": platform.python_version(),
        "libraries": libraries,
        "note": "int8 speed and accuracy hold for this CPU; re-measure on another before trusting them",
    }

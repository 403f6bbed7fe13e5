"""What sharing drift windows between workers costs, off the request path, per version.

With `--workers N` each worker writes its window's feature values every `drift.share_s` (when
they changed) and a report merges the other workers' files with its own. This measures, for a
full window (`--rows`, in batches of `--batch`) of two kinds of input, in one process standing in
for two workers: turning the window's rows into feature values (done once per row, as rows
arrive), writing one worker's file, its size, and a merged report of two workers' windows, first
and again after one worker shared one more batch (its file read again). Times are medians of
`--repeat` runs; nothing here runs on the request path, which only appends a batch to the ring.

    .venv/bin/python benchmarks/drift_share.py
    .venv/bin/python benchmarks/drift_share.py --rows 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shipyard.monitor.profile import build_profile
from shipyard.monitor.windows import DriftMonitor, InputWindow, Window
from shipyard.settings import DriftSettings
from shipyard.types import ModelVersion, Signature, TensorSpec

WORDS = ["ship", "it", "now", "model", "drift", "window", "worker", "merge", "the", "a"]
Make = Callable[[np.random.Generator, int], dict[str, np.ndarray]]


@dataclass(eq=False)
class Served:
    version: ModelVersion
    state: str = "ready"
    drift_window: object = None


def numeric(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"X": rng.normal(size=(n, 4)).astype(np.float32)}


def text(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"t": np.array([" ".join(rng.choice(WORDS, 25)) for _ in range(n)], dtype=object)}


KINDS: dict[str, tuple[Signature, Make]] = {
    "4 numbers": (Signature((TensorSpec("X", "FP32", (-1, 4)),), ()), numeric),
    "1 text of ~100 chars": (Signature((TensorSpec("t", "BYTES", (-1,)),), ()), text),
}


def once(signature: Signature, make: Make, rows: int, batch: int) -> tuple[float, float, float, float, float]:
    """(feature values s, write s, file bytes, merged report s, report after a peer's change s)."""
    rng = np.random.default_rng(0)
    stored = build_profile(make(rng, 2000), signature).to_dict()
    folder = Path(tempfile.mkdtemp(prefix="drift-share-"))
    workers = []
    for number in (1, 2):
        monitor = DriftMonitor(DriftSettings(max_rows=rows), share_dir=folder, worker=number)
        served = Served(ModelVersion("m", 1, "onnx", "d", 0, (), signature, data_profile=stored))
        monitor.attach(served)
        for _ in range(rows // batch):
            monitor.observe(served, make(rng, batch), batch)
        workers.append((monitor, served))
    (one, first), (two, second) = workers
    assert isinstance(first.drift_window, InputWindow) and isinstance(second.drift_window, InputWindow)
    started = time.perf_counter()
    first.drift_window.merged()
    values = time.perf_counter() - started
    started = time.perf_counter()
    one.share()
    write = time.perf_counter() - started
    size = sum(p.stat().st_size for p in folder.glob("*/*.npz"))
    two.share()
    started = time.perf_counter()
    report = first.drift_window.report(Window())
    merged = time.perf_counter() - started
    assert report.rows == rows
    two.observe(second, make(rng, batch), batch)
    two.share()
    started = time.perf_counter()
    first.drift_window.report(Window())
    again = time.perf_counter() - started
    return values, write, float(size), merged, again


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows in each worker's window")
    parser.add_argument("--batch", type=int, default=100, help="rows per batch")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    parts = []
    for name, (signature, make) in KINDS.items():
        runs = [once(signature, make, args.rows, args.batch) for _ in range(args.repeat)]
        values, write, size, merged, again = (statistics.median(r[i] for r in runs) for i in range(5))
        parts.append(
            f"{name}: feature values {values * 1e3:.1f} ms, write {write * 1e3:.1f} ms "
            f"({size / 1024:.0f} KiB), merged report of 2 workers {merged * 1e3:.1f} ms "
            f"({again * 1e3:.1f} ms after a peer's change)"
        )
    print(
        f"drift windows shared, {args.rows:,} rows a worker (medians of {args.repeat}): " + " | ".join(parts)
    )


if __name__ == "__main__":
    main()

"""Windows shared between workers through files: a merged report is exactly the report of one
window that saw every worker's rows; a worker that ended, or a file of another profile, no longer
counts; /metrics answers for all workers from any one."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.monitor import metrics, windows
from shipyard.monitor.drift import compare
from shipyard.monitor.profile import Profile, build_profile
from shipyard.monitor.window_share import forget_worker
from shipyard.monitor.windows import DriftMonitor
from shipyard.settings import DriftSettings
from shipyard.types import ModelVersion, Signature, TensorSpec

# A number, a category and a text: every kind of column a window shares.
SIGNATURE = Signature(
    (
        TensorSpec("x", "FP32", (-1,)),
        TensorSpec("plan", "BYTES", (-1,)),
        TensorSpec("note", "BYTES", (-1,)),
    ),
    (),
)
WORDS = ["ship", "it", "now", "later", "model", "drift", "window", "worker", "merge"]


@dataclass(eq=False)
class FakeServed:
    version: ModelVersion
    state: str = "ready"
    drift_window: object = None


def rows(n: int, seed: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    notes = [" ".join(rng.choice(WORDS, int(rng.integers(2, 8)))) + str(seed * 1000 + i) for i in range(n)]
    plans = rng.choice(np.array(["free", "pro", "team", None], dtype=object), n)
    return {
        "x": (rng.normal(shift, 1, n)).astype(np.float32),
        "plan": np.array(plans, dtype=object),
        "note": np.array(notes, dtype=object),
    }


def joined(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(windows, "monotonic", fake)
    return fake


@pytest.fixture
def stored() -> dict[str, object]:
    return build_profile(joined(rows(300, 1)), SIGNATURE).to_dict()


def worker(tmp_path: Path, stored: dict[str, object], number: int) -> tuple[DriftMonitor, FakeServed]:
    """Worker `number`'s monitor, serving one version, sharing `tmp_path` as a server's workers do."""
    monitor = DriftMonitor(DriftSettings(min_rows=30), share_dir=tmp_path, worker=number)
    served = FakeServed(ModelVersion("notes", 1, "onnx", "d", 0, (), SIGNATURE, data_profile=stored))
    monitor.attach(served)  # as the repository does when the version has loaded
    return monitor, served


def workers(tmp_path: Path, stored: dict[str, object]) -> list[tuple[DriftMonitor, FakeServed]]:
    return [worker(tmp_path, stored, 1), worker(tmp_path, stored, 2)]


def report(monitor: DriftMonitor, served: FakeServed, window: str | None = None) -> Any:
    return asyncio.run(monitor.report(served, window))[1]


def test_a_merged_report_is_the_report_of_every_workers_rows(
    tmp_path: Path, stored: dict[str, object], clock: Clock
) -> None:
    (one, served_one), (two, served_two) = workers(tmp_path, stored)
    first, second, third = rows(40, 2), rows(70, 3, shift=0.8), rows(25, 4)
    one.observe(served_one, first, 40)
    clock.now += 1
    two.observe(served_two, second, 70)
    clock.now += 1
    one.observe(served_one, third, 25)
    assert report(one, served_one).rows == 65  # nothing shared yet: its own rows
    one.share()
    two.share()
    expected = compare(Profile.from_dict(stored), joined(first, second, third), one.settings)
    for monitor, served in ((one, served_one), (two, served_two)):
        merged = report(monitor, served)
        assert merged.rows == 135 and dict(merged.workers) == {"1": 65, "2": 70}
        assert [f.to_dict() for f in merged.features] == [f.to_dict() for f in expected.features]
    # Windows select the newest rows across workers by time: the last 95 are worker 2's and 1's last.
    latest = report(two, served_two, "95")
    assert latest.rows == 95 and dict(latest.workers) == {"1": 25, "2": 70}
    clock.now += 3599  # the first batch is now older than max_age_s (an hour)
    assert dict(report(two, served_two).workers) == {"1": 25, "2": 70}


def test_a_worker_that_ended_stops_counting(tmp_path: Path, stored: dict[str, object]) -> None:
    (one, served_one), (two, served_two) = workers(tmp_path, stored)
    one.observe(served_one, rows(40, 2), 40)
    two.observe(served_two, rows(50, 3), 50)
    two.share()
    assert report(one, served_one).rows == 90
    forget_worker(tmp_path, os.getpid())  # what the supervisor does when a worker's process ends
    assert report(one, served_one).rows == 40
    two.observe(served_two, rows(5, 4), 5)  # its replacement shares again
    two.share()
    assert report(one, served_one).rows == 95


def test_windows_of_another_profile_are_not_merged(tmp_path: Path, stored: dict[str, object]) -> None:
    other = build_profile(joined(rows(300, 9, shift=3.0)), SIGNATURE).to_dict()
    one, served_one = worker(tmp_path, stored, 1)
    two, served_two = worker(tmp_path, other, 2)  # a worker that loaded the profile before it was replaced
    two.observe(served_two, rows(50, 3), 50)
    two.share()
    one.observe(served_one, rows(40, 2), 40)
    assert report(one, served_one).rows == 40


def test_unchanged_windows_are_not_written_again(tmp_path: Path, stored: dict[str, object]) -> None:
    one, served_one = worker(tmp_path, stored, 1)
    one.share()
    assert not list(tmp_path.glob("*/*.npz"))  # nothing seen, nothing written
    one.observe(served_one, rows(40, 2), 40)
    one.share()
    (written,) = tmp_path.glob("notes@1/1-*.npz")
    stamp = written.stat().st_mtime_ns
    one.share()
    assert written.stat().st_mtime_ns == stamp


def test_metrics_from_any_worker_count_every_workers_rows_once(
    tmp_path: Path, stored: dict[str, object]
) -> None:
    """The drift gauges are computed at scrape time by the worker that answers, never summed
    over workers' files: each worker's answer is the merged window, counted once."""
    (one, served_one), (two, served_two) = workers(tmp_path, stored)
    one.observe(served_one, rows(40, 2), 40)
    two.observe(served_two, rows(50, 3), 50)
    one.share()
    two.share()
    del one, served_one  # worker 1 is not the one scraped
    text = metrics.exposition()[0].decode()
    assert text.count('shipyard_drift_window_rows{model="notes",version="1"} 90.0') == 1
    assert 'shipyard_drift_score{feature="note.embedding",method="ks",model="notes",version="1"}' in text


def test_a_worker_that_served_nothing_reports_the_others_rows(
    tmp_path: Path, stored: dict[str, object]
) -> None:
    (one, served_one), (two, served_two) = workers(tmp_path, stored)
    one.share()  # nothing to share: no file
    two.observe(served_two, rows(50, 3), 50)
    two.share()
    merged = report(one, served_one)
    assert merged.rows == 50 and dict(merged.workers) == {"2": 50}
    assert report(one, served_one, "20").rows == 20


def test_a_file_left_by_a_process_that_no_longer_exists_is_skipped(
    tmp_path: Path, stored: dict[str, object]
) -> None:
    import shutil
    import subprocess

    (one, served_one), (two, served_two) = workers(tmp_path, stored)
    two.observe(served_two, rows(50, 3), 50)
    two.share()
    dead = subprocess.Popen(["true"])  # a process that has exited, and been reaped
    dead.wait()
    (written,) = tmp_path.glob("notes@1/2-*.npz")
    shutil.copy(written, written.with_name(f"3-{dead.pid}.npz"))
    assert dict(report(one, served_one).workers) == {"2": 50}

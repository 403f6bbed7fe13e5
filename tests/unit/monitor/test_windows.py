"""Live windows: bounded in rows, bytes and age; selected by count or time; reported lazily and
exported to /metrics only for versions with a verdict."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from shipyard.errors import InvalidInputError, NotFoundError
from shipyard.monitor import metrics, windows
from shipyard.monitor.profile import build_profile
from shipyard.monitor.windows import DriftMonitor, InputWindow, Window
from shipyard.settings import DriftSettings
from shipyard.types import ModelVersion, Signature, TensorSpec

SIGNATURE = Signature((TensorSpec("X", "FP32", (-1, 2)),), (TensorSpec("y", "INT64", (-1,)),))


@dataclass(eq=False)
class FakeServed:
    """What the monitor reads of a served version."""

    version: ModelVersion
    state: str = "ready"
    drift_window: object = None


def version(profile: dict[str, Any] | None, name: str = "iris", number: int = 1) -> ModelVersion:
    return ModelVersion(name, number, "onnx", "sha256:0", 0, (), SIGNATURE, data_profile=profile)


def reference(seed: int = 0, rows: int = 2000) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 2)).astype(np.float32)


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


def window(**settings: object) -> InputWindow:
    return InputWindow(build_profile({"X": reference()}, SIGNATURE), DriftSettings(**settings))


def test_rows_are_bounded_and_the_newest_kept() -> None:
    live = window(max_rows=1000)
    for i in range(100):
        live.add({"X": np.full((50, 2), i, dtype=np.float32)}, 50)
    assert live.rows == 1000
    selected = live.snapshot(Window())
    assert selected.rows == 1000 and selected.columns["X[0]"][0] == 80 and selected.columns["X[0]"][-1] == 99


def test_bytes_are_bounded() -> None:
    live = window(max_bytes=10 * 8 * 20)  # 20 rows of 2 float32 per chunk: 160 bytes each
    for _ in range(30):
        live.add({"X": np.zeros((20, 2), dtype=np.float32)}, 20)
    assert live.bytes <= 1600 and live.rows == 200


def test_old_rows_leave_the_window(clock: Clock) -> None:
    live = window(max_age_s=60)
    live.add({"X": np.zeros((10, 2), dtype=np.float32)}, 10)
    clock.now += 61
    assert live.snapshot(Window()).rows == 0  # too old to report, before any new request
    live.add({"X": np.ones((5, 2), dtype=np.float32)}, 5)
    assert live.rows == 5  # and dropped on the next request


def test_count_and_time_windows_select_the_latest_rows(clock: Clock) -> None:
    live = window()
    for i in range(6):
        live.add({"X": np.full((10, 2), i, dtype=np.float32)}, 10)
        clock.now += 60
    selected = live.snapshot(Window(rows=25))
    assert selected.rows == 25 and selected.columns["X[0]"].tolist() == [3] * 5 + [4] * 10 + [5] * 10
    selected = live.snapshot(Window.parse("150s", DriftSettings()))
    assert selected.rows == 20 and set(selected.columns["X[0]"]) == {4, 5}


def test_snapshots_merge_what_arrived_since_the_last_and_match_the_ring(clock: Clock) -> None:
    """Each snapshot concatenates only new requests onto the previous merge: whatever the order
    of requests, evictions (rows, bytes, age) and snapshots, it holds exactly the ring's rows."""
    rng = np.random.default_rng(7)
    live = window(max_rows=300, max_bytes=3000 * 8, max_age_s=100)
    sent: list[tuple[float, np.ndarray]] = []  # (time, rows) of every request
    for step in range(400):
        rows = int(rng.choice([1, 1, 1, 3, 40, 350]))
        batch = np.column_stack([np.arange(rows) + step * 1000, np.full(rows, clock.now)]).astype(np.float32)
        live.add({"X": batch}, rows)
        sent.append((clock.now, batch))
        clock.now += float(rng.choice([0.0, 1.0, 30.0]))
        if rng.random() < 0.3:
            continue
        for selected in (Window(), Window(rows=50), Window(seconds=45.0)):
            snapshot = live.snapshot(selected)
            ring = np.concatenate([b for _, b in sent])[-live.rows :]  # what the ring holds
            limit = selected.rows or 300
            since = clock.now - (selected.seconds or 100)
            expected = ring[ring[:, 1] >= np.float32(since)][-limit:]
            assert snapshot.rows == len(expected)
            for j in (0, 1):  # each feature's values: the input's columns
                got = snapshot.columns.get(f"X[{j}]", np.empty(0))
                assert np.array_equal(got, expected[:, j].astype(np.float64)), (step, selected)
    first = live.snapshot(Window()).columns["X[0]"]
    assert np.shares_memory(
        first, live.snapshot(Window()).columns["X[0]"]
    )  # nothing new: nothing merged again


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2h", "longer than the 1h of inputs this server keeps (setting drift.max_age_s)"),
        ("20000", "keeps at most 10000 per version (setting drift.max_rows)"),
        ("lots", "window must be a row count (500) or a duration"),
    ],
)
def test_window_beyond_what_is_kept_names_window(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Window.parse(text, DriftSettings())
    assert caught.value.field == "window" and message in caught.value.message


def test_reports_are_computed_once_per_change() -> None:
    live = window()
    live.add({"X": reference(1, 100)}, 100)
    first = live.report(Window())
    assert live.report(Window()) is first
    live.add({"X": reference(2, 100)}, 100)
    assert live.report(Window()) is not first


def test_a_scrape_within_the_refresh_interval_gets_the_last_report_whatever_came_since(clock: Clock) -> None:
    """/metrics passes `metrics_refresh_s`: drift is recomputed at most that often, however often
    Prometheus scrapes and however busy the server is; the drift route always gets fresh figures."""
    live = window()
    live.add({"X": reference(1, 100)}, 100)
    first = live.report(Window(), reuse_s=10)
    live.add({"X": reference(2, 100)}, 100)
    clock.now += 9.9
    assert live.report(Window(), reuse_s=10) is first
    fresh = live.report(Window())  # no reuse: what the drift route and `shipyard drift` ask
    assert fresh.rows == 200 and first.rows == 100
    clock.now += 10
    assert live.report(Window(), reuse_s=10).rows == 200


def test_a_version_without_profile_keeps_nothing_and_says_how_to_add_one() -> None:
    monitor = DriftMonitor(DriftSettings())
    served = FakeServed(version(None))
    monitor.observe(served, {"X": reference(1, 10)}, 10)
    with pytest.raises(NotFoundError, match=r"add one with `shipyard profile iris:1 FILE`"):
        asyncio.run(monitor.report(served, None))


def test_a_profile_added_while_serving_is_picked_up() -> None:
    stored = build_profile({"X": reference()}, SIGNATURE).to_dict()
    monitor = DriftMonitor(DriftSettings(), fetch_profile=lambda v: stored)
    served = FakeServed(version(None))
    monitor.observe(served, {"X": reference(1, 10)}, 10)  # before the profile: not kept
    _, report = asyncio.run(monitor.report(served, None))
    assert report.rows == 0
    monitor.observe(served, {"X": reference(2, 40)}, 40)
    assert asyncio.run(monitor.report(served, None))[1].rows == 40


def test_metrics_show_drift_of_versions_with_a_verdict() -> None:
    stored = build_profile({"X": reference()}, SIGNATURE, names={"X": ["width", "height"]}).to_dict()
    monitor = DriftMonitor(DriftSettings(min_rows=30))
    drifted, quiet, unloaded = (FakeServed(version(stored, name)) for name in ("drifted", "quiet", "gone"))
    monitor.observe(drifted, {"X": reference(3, 200) + 2}, 200)
    monitor.observe(quiet, {"X": reference(4, 10)}, 10)  # under min_rows: no series yet
    monitor.observe(unloaded, {"X": reference(5, 200)}, 200)
    unloaded.state = "unloaded"
    text = metrics.exposition()[0].decode()
    assert 'shipyard_drift_detected{model="drifted",version="1"} 1.0' in text
    assert 'shipyard_drift_window_rows{model="drifted",version="1"} 200.0' in text
    assert 'shipyard_drift_score{feature="width",method="ks",model="drifted",version="1"}' in text
    assert 'model="quiet"' not in text and 'model="gone"' not in text
    del monitor  # a server's monitor that goes stops reporting
    assert 'model="drifted"' not in metrics.exposition()[0].decode()


def test_a_profile_of_other_inputs_is_refused_without_breaking_metrics() -> None:
    other = Signature((TensorSpec("Z", "FP32", (-1, 2)),), ())
    stored = build_profile({"Z": reference()}, other).to_dict()
    monitor = DriftMonitor(DriftSettings())
    served = FakeServed(version(stored))
    monitor.observe(served, {"X": reference(1, 50)}, 50)
    with pytest.raises(NotFoundError) as caught:
        asyncio.run(monitor.report(served, None))
    assert caught.value.message == (
        "no drift for iris:1: the reference profile of iris:1 describes input(s) Z, which it does not "
        "take (X); compute it again with `shipyard profile iris:1 FILE`"
    )
    assert "shipyard_drift_" in metrics.exposition()[0].decode()  # the families, still served


def test_text_categories_come_from_two_dimensional_live_inputs() -> None:
    signature = Signature((TensorSpec("color", "BYTES", (-1, 1)),), ())
    colors = np.array(["red", "green", "blue"] * 100, dtype=object)
    stored = build_profile({"color": colors}, signature).to_dict()
    monitor = DriftMonitor(DriftSettings())
    served = FakeServed(ModelVersion("paint", 1, "onnx", "d", 0, (), signature, data_profile=stored))
    live = np.array([["red"]] * 40 + [["purple"]] * 10, dtype=object)  # as the server coerces them
    monitor.observe(served, {"color": live}, 50)
    (color,) = asyncio.run(monitor.report(served, None))[1].features
    assert (color.kind, color.method, color.drifted) == ("categorical", "chisquare", True)
    assert color.histogram["categories"] == ["blue", "green", "red", "(other)"]
    assert color.histogram["current"] == [0.0, 0.0, 0.8, 0.2]


def test_an_embedding_models_vectors_are_kept_and_a_batch_without_them_counts_as_missing() -> None:
    signature = Signature((TensorSpec("text", "BYTES", (-1,)),), (TensorSpec("embedding", "FP32", (-1, 6)),))
    texts = np.array([f"sentence number {i}" for i in range(200)], dtype=object)
    vectors = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    stored = build_profile({"text": texts}, signature, outputs={"embedding": vectors}).to_dict()
    monitor = DriftMonitor(DriftSettings())
    served = FakeServed(ModelVersion("e", 1, "onnx", "d", 0, (), signature, data_profile=stored))
    monitor.observe(served, {"text": texts[:40]}, 40, {"embedding": vectors[:40] + 3.0})
    monitor.observe(served, {"text": texts[40:50]}, 10, {})  # a batch that did not return them
    report = asyncio.run(monitor.report(served, None))[1]
    vector = next(f for f in report.features if f.name == "output.embedding")
    assert (vector.rows, vector.missing[1], report.rows) == (40, 0.2, 50)

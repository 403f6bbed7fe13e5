"""The prediction log's writer and store: sampling, summaries and payloads, drops counted when the
queue is full or the disk refuses (never an error for the caller), retention by size and age,
lookups by request id across every worker's segments."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import select
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY

from shipyard.errors import InvalidInputError
from shipyard.monitor import prediction_recorder
from shipyard.monitor.log_writer import CHUNK, FLUSH, frame, take_frames
from shipyard.monitor.prediction_chunks import Ran
from shipyard.monitor.prediction_recorder import PredictionRecorder, Sample
from shipyard.monitor.predictions import PredictionStore, Segment, list_segments, segment_bytes, segment_name
from shipyard.settings import PredictionLogSettings, Settings

FLUSH_S = 10.0


def sample(rows: int = 1, width: int = 4) -> Sample:
    noted = Sample()
    noted.inputs = {"X": np.arange(rows * width, dtype=np.float32).reshape(rows, width)}
    noted.outputs = {
        "label": np.arange(rows, dtype=np.int64),
        "probabilities": np.full((rows, 3), 0.5, dtype=np.float32),
    }
    return noted


def dropped(model: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "shipyard_predictionlog_dropped_total", {"model": model, "reason": reason}
    )
    return value or 0.0


@pytest.fixture
def recorders() -> Iterator[list[PredictionRecorder]]:
    """Recorders a test makes; each is closed (its thread stopped) when the test ends."""
    made: list[PredictionRecorder] = []
    yield made
    for recorder in made:
        recorder.close()


def make(
    recorders: list[PredictionRecorder],
    directory: Path,
    worker: int = 0,
    *,
    start: bool = True,
    **options: Any,
) -> PredictionRecorder:
    recorder = PredictionRecorder(PredictionLogSettings(**options), directory, worker)
    recorders.append(recorder)
    if start:
        recorder.start()
    return recorder


def test_an_entry_has_the_request_its_summary_and_no_payload_by_default(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    recorder = make(recorders, tmp_path)
    recorder.record("req-1", "iris", 3, "v2", 200, 0.0012, sample(rows=2))
    assert recorder.flush(FLUSH_S)
    [entry] = PredictionStore(tmp_path).lookup(["req-1"])
    assert (entry.request_id, entry.model, entry.version, entry.protocol, entry.status) == (
        "req-1",
        "iris",
        3,
        "v2",
        200,
    )
    assert entry.latency_ms == 1.2 and abs(entry.time - time.time()) < 60
    assert entry.summary == {
        "rows": 2,
        "inputs": {"X": {"shape": [2, 4], "dtype": "float32"}},
        "outputs": {
            "label": {"shape": [2], "dtype": "int64", "values": [0, 1]},
            "probabilities": {"shape": [2, 3], "dtype": "float32", "values": [[0.5] * 3] * 2},
        },
    }
    assert entry.payload is None
    assert entry.to_dict()["time"].endswith("+00:00")


def test_requests_of_shared_batches_get_their_own_rows(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    """Each request's rows of the batch it ran in: a chunk of batched requests only (encoded
    vectorised), then one with a request refused before any batch (encoded run by run)."""
    recorder = make(recorders, tmp_path)
    for first in (0, 10):  # batches of three requests (1, 2 and 1 rows), as the batcher notes them
        whole = sample(rows=4)
        whole.outputs = {"label": np.arange(first, first + 4, dtype=np.int64)}
        ran = Ran(whole.inputs, whole.outputs, 4)
        if first:
            recorder.record("refused", "iris", 1, "v1", 400, 0.001, Sample())
        for number, (offset, rows) in enumerate([(0, 1), (1, 2), (3, 1)]):
            noted = Sample()
            noted.ran, noted.offset, noted.rows = ran, offset, rows
            recorder.record(f"b{first}-{number}", "iris", 1, "v1", 200, 0.001, noted)
        assert recorder.flush(FLUSH_S)
    entries = {e.request_id: e for e in PredictionStore(tmp_path).read("iris")}
    labels = {rid: e.summary["outputs"]["label"]["values"] for rid, e in entries.items() if rid != "refused"}
    assert labels == {
        "b0-0": [0], "b0-1": [1, 2], "b0-2": [3], "b10-0": [10], "b10-1": [11, 12], "b10-2": [13]
    }  # fmt: skip
    assert entries["b0-1"].summary["inputs"] == {"X": {"shape": [2, 4], "dtype": "float32"}}
    assert entries["b10-1"].summary["inputs"] == {"X": {"shape": [2, 4], "dtype": "float32"}}
    assert entries["refused"].status == 400


def test_on_an_event_loop_the_loop_encodes_whole_chunks_and_the_writer_the_rest(
    tmp_path: Path, recorders: list[PredictionRecorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started on a loop, the recorder has the loop encode every 256 entries between requests, and
    the writer what is left: every entry is written once, in order, with its own rows."""
    recorder = make(recorders, tmp_path, start=False)
    encoders: list[int] = []
    chunk = recorder._chunk

    def noting(batch: Any) -> Any:
        encoders.append(threading.get_ident())
        return chunk(batch)

    monkeypatch.setattr(recorder, "_chunk", noting)

    async def serve() -> int:
        recorder.start()
        for first in range(0, 1000, 4):  # batches of four one-row requests, as the batcher notes them
            ran = Ran({"X": np.zeros((4, 4), dtype=np.float32)}, {"label": np.arange(first, first + 4)}, 4)
            for offset in range(4):
                noted = Sample()
                noted.ran, noted.offset, noted.rows = ran, offset, 1
                recorder.record(f"r{first + offset}", "iris", 1, "v1", 200, 0.001, noted)
            await asyncio.sleep(0)  # the loop's turn: the encoding it was asked for runs
        assert await asyncio.to_thread(recorder.flush, FLUSH_S)
        return threading.get_ident()

    loop_thread = asyncio.run(serve())
    assert encoders.count(loop_thread) >= 1 and len(encoders) >= 4  # 3 whole chunks, then the rest
    entries = PredictionStore(tmp_path).read("iris")[::-1]  # newest first
    assert [e.request_id for e in entries] == [f"r{i}" for i in range(1000)]
    assert [e.summary["outputs"]["label"]["values"] for e in entries] == [[i] for i in range(1000)]


def test_chunks_the_loop_encoded_reach_the_writer_before_the_threads_round(
    tmp_path: Path, recorders: list[PredictionRecorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy server the loop encodes every chunk and hands it to the writer process itself:
    nothing waits for the thread's next round (here an hour away), and none is dropped."""
    monkeypatch.setattr(prediction_recorder, "_INTERVAL_S", 3600.0)
    recorder = make(recorders, tmp_path, start=False, queue_size=1024)
    store = PredictionStore(tmp_path)

    async def serve() -> None:
        recorder.start()
        ran = Ran({"X": np.zeros((4, 4), dtype=np.float32)}, {"label": np.arange(4)}, 4)
        for i in range(768):  # three chunks, and no entry left over for the thread
            noted = Sample()
            noted.ran, noted.offset, noted.rows = ran, i % 4, 1
            recorder.record(f"r{i}", "busy", 1, "v1", 200, 0.001, noted)
            await asyncio.sleep(0)  # the loop's turn: the chunk it was asked for is encoded and sent

        def written() -> bool:  # the writer commits within a second, unasked: no flush() here
            deadline = time.monotonic() + FLUSH_S
            while time.monotonic() < deadline:
                if len(store.read("busy", limit=1000)) == 768:
                    return True
                time.sleep(0.05)
            return False

        assert await asyncio.to_thread(written)

    asyncio.run(serve())
    assert recorder.dropped == {"queue_full": 0, "write_failed": 0}


def writers() -> list[int]:
    """The process ids of this process's prediction log writers."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{name}/status").read_text()
                parent = int(status.split("PPid:")[1].split()[0])
                command = Path(f"/proc/{name}/cmdline").read_bytes()
                if parent == os.getpid() and b"shipyard.monitor.log_writer" in command:
                    found.append(int(name))
    return found


def test_a_writer_that_dies_loses_only_what_it_held_and_is_started_again(
    tmp_path: Path, recorders: list[PredictionRecorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prediction_recorder, "_RESTART_S", 0.0)
    others = set(writers())  # another test's recorder, in this process, may still have its own
    recorder = make(recorders, tmp_path)
    recorder.record("before", "m", 1, "v2", 200, 0.001, sample())
    assert recorder.flush(FLUSH_S)
    [writer] = set(writers()) - others
    os.kill(writer, 9)
    recorder.record("after", "m", 1, "v2", 200, 0.001, sample())
    assert recorder.flush(FLUSH_S)
    assert [e.request_id for e in PredictionStore(tmp_path).read("m")] in (["after", "before"], ["before"])
    # Whatever the dead writer was handed and never answered for is counted, the rest written.
    assert recorder.dropped["write_failed"] + len(PredictionStore(tmp_path).read("m")) == 2
    recorder.record("later", "m", 1, "v2", 200, 0.001, sample())
    assert recorder.flush(FLUSH_S)
    assert PredictionStore(tmp_path).read("m")[0].request_id == "later"
    [again] = set(writers()) - others
    assert again != writer


def test_the_writer_takes_whole_frames_and_keeps_a_partial_one_for_its_rest() -> None:
    chunk = (1.5, 2.5, b'["a"]', b"\x01chunk")
    sent = frame(CHUNK, 1, chunk) + frame(FLUSH, 2)
    received = bytearray(sent[:-3])  # a read ended three bytes into the flush's frame
    assert take_frames(received) == [(1, chunk)]
    received += sent[-3:]
    assert take_frames(received) == [(2, None)]
    assert received == b""


def test_a_chunk_larger_than_the_writers_pipe_reaches_it_whole(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    """A payload of 6 MB makes a frame several times the pipe's 1 MiB: the pipe takes its start,
    the rest follows as the writer reads, and nothing after it overtakes it."""
    recorder = make(recorders, tmp_path, payload_rate=1.0, max_payload_bytes=1 << 24)
    big = Sample()
    big.inputs = {"X": np.arange(1 << 20, dtype=np.float64).reshape(1, -1) % 7}
    recorder.record("big", "m", 1, "v2", 200, 0.001, big)
    recorder.record("small", "m", 1, "v2", 200, 0.001, sample())
    assert recorder.flush(FLUSH_S)
    entries = {e.request_id: e for e in PredictionStore(tmp_path).lookup(["big", "small"])}
    payload = entries["big"].payload
    assert payload is not None and len(payload["inputs"]["X"][0]) == 1 << 20
    assert entries["small"].payload is not None
    assert recorder.dropped == {"queue_full": 0, "write_failed": 0}


def test_a_writer_that_cannot_start_loses_its_entries_counted_and_warned(
    tmp_path: Path,
    recorders: list[PredictionRecorder],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    recorder = make(recorders, tmp_path)
    with caplog.at_level(logging.WARNING, logger="shipyard.predictions"):
        recorder.record("r0", "unstarted", 1, "v2", 200, 0.001, sample())
        assert recorder.flush(FLUSH_S)  # settled: lost and counted, not waited for
        recorder.close()
    assert recorder.dropped["write_failed"] == 1
    assert any("could not start" in r.getMessage() for r in caplog.records)


def test_a_writer_ends_with_its_server_and_writes_what_it_held(tmp_path: Path) -> None:
    """A server killed outright (no close, no flush) leaves no writer behind, and the chunk it had
    just handed over is written: the writer ends when its pipe does, committing what it holds."""
    program = f"""
import os, numpy as np
from pathlib import Path
from shipyard.monitor.prediction_recorder import PredictionRecorder, Sample
from shipyard.settings import PredictionLogSettings
recorder = PredictionRecorder(PredictionLogSettings(), Path({str(tmp_path)!r}))
recorder.start()
for i in range(300):
    noted = Sample()
    noted.inputs = {{"X": np.zeros((1, 2), dtype=np.float32)}}
    recorder.record(f"r{{i}}", "m", 1, "v2", 200, 0.001, noted)
assert recorder.flush(10)
for i in range(256):  # the 256th: its chunk encoded and handed over at once, never committed here
    recorder.record(f"s{{i}}", "m", 1, "v2", 200, 0.001, noted)
print(recorder._writer._process.pid, flush=True)
os.kill(os.getpid(), 9)
"""
    command = [sys.executable, "-c", program]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == -9, done.stderr
    writer = int(done.stdout.split()[0])
    with contextlib.suppress(ProcessLookupError):  # gone already, or readable once it exits
        ended = os.pidfd_open(writer)
        try:
            assert select.select([ended], [], [], FLUSH_S)[0], "the writer outlived its server"
        finally:
            os.close(ended)
    assert len(PredictionStore(tmp_path).read("m", limit=1000)) == 556
    [segment] = list_segments(tmp_path)
    with sqlite3.connect(segment) as db:  # sealed on the way out: its ids indexed
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index'").fetchone()[0] >= 1


def test_sampling_leaves_the_callers_random_numbers_alone(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    """A program that seeds `random` for a reproducible run gets the same numbers with the log on."""
    recorder = make(recorders, tmp_path, sample_rate=0.5)
    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    for number in range(100):
        recorder.record(f"s{number}", "iris", 1, "v1", 200, 0.001, sample())
    assert [random.random() for _ in range(3)] == expected
    assert recorder.flush(FLUSH_S)
    assert 0 < len(PredictionStore(tmp_path).read("iris")) < 100  # sampled, by its own draws


def test_payloads_are_kept_at_their_rate_and_left_out_when_large(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    recorder = make(recorders, tmp_path, payload_rate=1.0, max_payload_bytes=1000)
    text = Sample()
    text.inputs = {"text": np.array(["héllo", b"raw"], dtype=object)}
    text.outputs = {"embedding": np.ones((2, 2), dtype=np.float16)}
    recorder.record("small", "m", 1, "openai", 200, 0.001, text)
    recorder.record("large", "m", 1, "v1", 200, 0.001, sample(rows=100))
    assert recorder.flush(FLUSH_S)
    entries = {e.request_id: e for e in PredictionStore(tmp_path).lookup(["small", "large"])}
    assert entries["small"].payload == {
        "inputs": {"text": ["héllo", "raw"]},
        "outputs": {"embedding": [[1.0, 1.0], [1.0, 1.0]]},
    }
    assert entries["large"].payload is None
    assert entries["large"].summary["payload_omitted_bytes"] == 100 * 4 * 4 + 100 * 8 + 100 * 3 * 4
    # An output over 256 values is summarized by its shape and dtype only.
    assert "values" not in entries["large"].summary["outputs"]["probabilities"]


def test_rates_per_model_sample_requests(tmp_path: Path, recorders: list[PredictionRecorder]) -> None:
    recorder = make(recorders, tmp_path, sample_rate=0.0, models={"kept": {"sample_rate": 1.0}})
    for i in range(50):
        recorder.record(f"kept-{i}", "kept", 1, "v2", 200, 0.001, sample())
        recorder.record(f"other-{i}", "other", 1, "v2", 200, 0.001, sample())
    assert recorder.flush(FLUSH_S)
    store = PredictionStore(tmp_path)
    assert len(store.read("kept")) == 50 and store.read("other") == []
    half = make(recorders, tmp_path / "half", sample_rate=0.5)
    for i in range(400):
        half.record(f"h-{i}", "m", 1, "v2", 200, 0.001, sample())
    assert half.flush(FLUSH_S)
    assert 100 < len(PredictionStore(tmp_path / "half").read("m")) < 300  # ~200; 1e-20 to fail
    assert PredictionRecorder.create(Settings.load(home=tmp_path, prediction_log={"sample_rate": 0})) is None


def test_a_full_queue_drops_and_counts_without_waiting(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    recorder = make(recorders, tmp_path, start=False, queue_size=3)  # no writer yet: nothing drains
    before = dropped("full-model", "queue_full")
    started = time.perf_counter()
    for i in range(5):
        recorder.record(f"r{i}", "full-model", 1, "v2", 200, 0.001, sample())
    assert time.perf_counter() - started < 0.5  # never waited for room
    assert recorder.dropped["queue_full"] == 2
    assert dropped("full-model", "queue_full") - before == 2
    recorder.start()
    assert recorder.flush(FLUSH_S)
    assert [e.request_id for e in PredictionStore(tmp_path).read("full-model")] == ["r2", "r1", "r0"]


def test_a_writer_behind_by_more_than_the_queue_drops_whole_chunks_and_counts_them(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    """Off the event loop, the caller encodes each 256th entry's chunk itself; with no writer yet,
    the second chunk would put 512 entries in its backlog, over queue_size: it is dropped."""
    recorder = make(recorders, tmp_path, start=False, queue_size=300)
    before = dropped("behind", "queue_full")
    for i in range(520):
        recorder.record(f"r{i}", "behind", 1, "v2", 200, 0.001, sample())
    assert recorder.dropped["queue_full"] == 256
    assert dropped("behind", "queue_full") - before == 256
    recorder.start()  # the last 8 are encoded by the writer: 264 waiting, within 300
    assert recorder.flush(FLUSH_S)
    written = [e.request_id for e in PredictionStore(tmp_path).read("behind")][::-1]
    assert written == [f"r{i}" for i in (*range(256), *range(512, 520))]


def test_an_unwritable_folder_drops_counts_and_warns_once(
    tmp_path: Path, recorders: list[PredictionRecorder], caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recorder = make(recorders, blocker / "predictions")  # mkdir fails even for root
    before = dropped("lost", "write_failed")
    with caplog.at_level(logging.WARNING, logger="shipyard.predictions"):
        for i in range(3):
            recorder.record(f"r{i}", "lost", 1, "v2", 200, 0.001, sample())
        assert recorder.flush(FLUSH_S)
        recorder.record("r3", "lost", 1, "v2", 200, 0.001, sample())
        assert recorder.flush(FLUSH_S)
        recorder.close()  # its last loop has warned, if it was going to
    assert recorder.dropped["write_failed"] == 4
    assert dropped("lost", "write_failed") - before == 4
    warnings = [r.getMessage() for r in caplog.records if "prediction log: dropped" in r.getMessage()]
    assert len(warnings) == 1, warnings  # rate-limited: the second failure is counted, not repeated
    assert "could not be written" in warnings[0] and "NotADirectoryError" in warnings[0]


def test_retention_by_size_deletes_the_oldest_segments(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    max_bytes = 256 << 10
    recorder = make(recorders, tmp_path, payload_rate=1.0, max_bytes=max_bytes)
    for i in range(2000):  # ~600 bytes of payload each: about 1.5 MB in all
        recorder.record(f"r{i}", "m", 1, "v2", 200, 0.001, sample(rows=4, width=16))
        if i % 200 == 199:  # the writer rotates and trims as it goes
            assert recorder.flush(FLUSH_S)
    recorder.close()
    segments = list_segments(tmp_path)
    assert len(segments) > 1
    # Over the limit by at most the current segment: a sixteenth of max_bytes and one batch.
    assert sum(segment_bytes(p) for p in segments) <= max_bytes + (max_bytes // 16) + 256 * 2000
    store = PredictionStore(tmp_path)
    assert store.lookup(["r0"]) == [] and len(store.lookup(["r1999"])) == 1


def test_retention_by_age_deletes_old_segments(tmp_path: Path, recorders: list[PredictionRecorder]) -> None:
    old = make(recorders, tmp_path, worker=1)
    old.record("old", "m", 1, "v2", 200, 0.001, sample())
    old.close()
    [segment] = list_segments(tmp_path)
    two_days_ago = time.time() - 2 * 86400
    for path in tmp_path.iterdir():
        os.utime(path, (two_days_ago, two_days_ago))
    new = make(recorders, tmp_path, worker=2, max_age_s=86400)
    new.record("new", "m", 1, "v2", 200, 0.001, sample())
    assert new.flush(FLUSH_S)
    assert segment not in list_segments(tmp_path)
    assert [e.request_id for e in PredictionStore(tmp_path).read("m")] == ["new"]


def test_workers_write_their_own_segments_and_reads_merge_them(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    one, two = make(recorders, tmp_path, worker=1), make(recorders, tmp_path, worker=2)
    for i in range(6):
        (one if i % 2 else two).record(f"r{i}", "m", 1 + i % 2, "v2", 200, 0.001, sample())
    assert one.flush(FLUSH_S) and two.flush(FLUSH_S)
    assert len(list_segments(tmp_path)) == 2
    store = PredictionStore(tmp_path)
    assert [e.request_id for e in store.read("m")] == ["r5", "r4", "r3", "r2", "r1", "r0"]
    assert [e.request_id for e in store.read("m", version=2, limit=2)] == ["r5", "r3"]
    assert {e.worker for e in store.read("m")} == {1, 2}
    found = store.lookup(["r0", "r5", "nope"])
    assert [(e.request_id, e.worker) for e in found] == [("r5", 1), ("r0", 2)]
    assert store.read("m", since=time.time() + 60) == []


def test_a_deleted_current_segment_is_replaced(tmp_path: Path, recorders: list[PredictionRecorder]) -> None:
    recorder = make(recorders, tmp_path)
    recorder.record("a", "m", 1, "v2", 200, 0.001, sample())
    assert recorder.flush(FLUSH_S)
    [first] = list_segments(tmp_path)
    for path in tmp_path.iterdir():  # another worker's retention removed it
        path.unlink()
    recorder.record("b", "m", 1, "v2", 200, 0.001, sample())
    assert recorder.flush(FLUSH_S)
    assert [e.request_id for e in PredictionStore(tmp_path).read("m")] == ["b"]
    assert list_segments(tmp_path) != [first]


def test_a_closed_segment_is_indexed_and_the_current_one_scanned(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    first = make(recorders, tmp_path, worker=1)
    for i in range(300):  # two chunks
        first.record(f"a{i}", "m", 1, "v2", 200, 0.001, sample())
    first.close()
    second = make(recorders, tmp_path, worker=2)
    for i in range(300):
        second.record(f"b{i}", "m", 1, "v2", 200, 0.001, sample())
    assert second.flush(FLUSH_S)
    closed, current = list_segments(tmp_path)
    tables = "SELECT name FROM sqlite_master WHERE type = 'table'"
    with contextlib.closing(sqlite3.connect(closed)) as db:
        assert {name for (name,) in db.execute(tables)} == {"chunks", "ids"}
        assert db.execute("SELECT count(*) FROM ids").fetchone() == (300,)
    with contextlib.closing(sqlite3.connect(current)) as db:
        assert {name for (name,) in db.execute(tables)} == {"chunks"}
    found = PredictionStore(tmp_path).lookup(["a0", "a299", "b0", "b299", "x"])
    assert sorted((e.request_id, e.worker) for e in found) == [("a0", 1), ("a299", 1), ("b0", 2), ("b299", 2)]


def test_a_segment_an_earlier_server_wrote_in_json_reads_beside_binary_ones(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    at = time.time() - 5
    old_chunk = {
        "id": ["old"],
        "time": [at],
        "model": ["m"],
        "version": [1],
        "protocol": ["v2"],
        "status": [200],
        "latency_ms": [1.5],
        "groups": [
            {"at": [0], "inputs": [["X", [1, 4], "float32"]], "outputs": [["y", [1], "int64", [[3]]]]}
        ],
        "payload": [],
        "omitted": [],
    }
    old = Segment(tmp_path / segment_name(at, 0), 0)
    old.append([(at, at, orjson.dumps(["old"]), orjson.dumps(old_chunk))])
    old.seal()
    recorder = make(recorders, tmp_path)
    recorder.record("new", "m", 1, "v2", 200, 0.001, sample())
    assert recorder.flush(FLUSH_S)
    store = PredictionStore(tmp_path)
    assert [e.request_id for e in store.read("m")] == ["new", "old"]
    [found] = store.lookup(["old"])
    assert found.latency_ms == 1.5 and found.summary["outputs"] == {
        "y": {"shape": [1], "dtype": "int64", "values": [3]}
    }
    assert store.count("m") == {1: 2}


def test_a_value_json_cannot_hold_drops_that_entry_only(
    tmp_path: Path, recorders: list[PredictionRecorder]
) -> None:
    recorder = make(recorders, tmp_path)
    odd = sample()
    assert odd.outputs is not None
    odd.outputs["label"] = np.array([object()], dtype=object)
    before = dropped("odd", "write_failed")
    recorder.record("fine-1", "odd", 1, "v2", 200, 0.001, sample())
    recorder.record("odd-1", "odd", 1, "v2", 200, 0.001, odd)
    recorder.record("fine-2", "odd", 1, "v2", 200, 0.001, sample())
    assert recorder.flush(FLUSH_S)
    assert [e.request_id for e in PredictionStore(tmp_path).read("odd")] == ["fine-2", "fine-1"]
    assert dropped("odd", "write_failed") - before == 1


def test_a_bad_rate_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Settings.load(home=tmp_path, prediction_log={"models": {"iris": {"sample_rate": 2}}})
    assert caught.value.message.startswith(
        "invalid settings: prediction_log.models.iris.sample_rate: Input should be less than or equal to 1"
    )

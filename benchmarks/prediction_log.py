"""What request ids and the prediction log cost a request: in-process, no sockets.

The app of `shipyard serve` (create_app, an iris ONNX model, its batcher and runtime) is called as
an ASGI app by 32 concurrent tasks sending single-row V1 JSON, so the figures hold the server's own
work only (no HTTP parsing, which the log does not change): once with the prediction log off
(every rate 0), once with every request's summary logged, once with summaries and 1% of payloads
(the issue's "monitoring on"), in alternating rounds so a shared machine's drift cancels out.
Each round reports requests/s and the process's CPU time per request: the log's encoding runs in
the same process, so its work is in both, and CPU time is what a busy server's core pays (on a
shared host, requests/s swings with the neighbours; CPU per request far less); its writer process's
SQLite work is not (another process, on another core). Then the pieces
on the request path, one by one, with timeit.

Detail goes to stderr; the last line on stdout is the one-line summary.

    .venv/bin/python benchmarks/prediction_log.py                 # 3 rounds of 3 s per setting
    .venv/bin/python benchmarks/prediction_log.py --duration 1 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "iris-onnx"
BODY = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
SETTINGS = {
    "off": {"sample_rate": 0.0},
    "summaries": {"sample_rate": 1.0},
    "summaries+1% payloads": {"sample_rate": 1.0, "payload_rate": 0.01},
}
GOAL_COST = 0.05  # throughput lost with summaries on, at most


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_home(folder: Path) -> Path:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from shipyard.registry import Registry
    from shipyard.settings import Settings

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    onx = to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}}, target_opset=17)
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    home = folder / "home"
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push(MODEL, folder / "model.onnx")
    return home


def scope(extra: tuple[tuple[bytes, bytes], ...] = ()) -> dict[str, Any]:
    """One single-row V1 request's ASGI scope; `extra` headers (e.g. Authorization) appended."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/v1/models/{MODEL}:predict",
        "raw_path": f"/v1/models/{MODEL}:predict".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            *extra,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def request(app: Any, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """One single-row V1 request through the ASGI app; fails unless it answers 200."""
    sent = False
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await never.wait()  # the client never hangs up
        return {"type": "http.disconnect"}

    status, body = 0, b""

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            body += message.get("body", b"")

    await app(scope(extra), receive, send)
    assert status == 200, (status, body)


async def load(
    app: Any, seconds: float, concurrency: int, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> int:
    """Requests answered in `seconds` by `concurrency` tasks, each sending one after another."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await request(app, extra)
            done += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done


async def measure(
    home: Path, rounds: int, duration: float, concurrency: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from shipyard.serve.app import create_app
    from shipyard.settings import Settings

    apps = {}
    contexts = []
    for name, options in SETTINGS.items():
        app = create_app(Settings.load(home=home, prediction_log=options), [MODEL])
        context = app.app.router.lifespan_context(app.app)
        await context.__aenter__()
        contexts.append(context)
        await app.state.loading
        await load(app, 0.5, concurrency)  # warm-up: first batches, caches, the writer's segment
        apps[name] = app
    rates: dict[str, list[float]] = {name: [] for name in apps}
    cpu: dict[str, list[float]] = {name: [] for name in apps}
    try:
        for number in range(rounds):
            order = list(apps) if number % 2 == 0 else list(reversed(apps))
            for name in order:
                used = time.process_time()
                count = await load(apps[name], duration, concurrency)
                if apps[name].state.predictions is not None:  # its writer's work for these requests too
                    assert apps[name].state.predictions.flush(30.0), "the writer fell behind for 30 s"
                cpu_us = (time.process_time() - used) / count * 1e6
                rates[name].append(count / duration)
                cpu[name].append(cpu_us)
                log(f"round {number + 1} {name}: {count / duration:,.0f} req/s, {cpu_us:.1f} µs CPU/request")
        for name, app in apps.items():
            recorder = app.state.predictions
            if recorder is not None:
                assert recorder.flush(30.0), "the writer fell behind for 30 s"
                log(f"{name}: dropped {recorder.dropped}")
    finally:
        for context in contexts:
            await context.__aexit__(None, None, None)
    return rates, cpu


def pieces(directory: Path) -> dict[str, float]:
    """Nanoseconds per call of each thing the request path does for ids and the log."""
    from shipyard.monitor.logs import REQUEST_ID
    from shipyard.monitor.prediction_chunks import Ran
    from shipyard.monitor.prediction_recorder import PredictionRecorder, Sample
    from shipyard.serve.request_ids import request_id
    from shipyard.settings import PredictionLogSettings

    # As the batcher notes a request: its rows of a batch (here of 20 single-row requests).
    shared = Ran(
        {"X": np.zeros((20, 4), dtype=np.float32)},
        {"label": np.zeros(20, dtype=np.int64), "probabilities": np.zeros((20, 3), np.float32)},
        20,
    )
    sample = Sample()
    sample.inputs = {"X": np.zeros((1, 4), dtype=np.float32)}
    sample.ran, sample.offset, sample.rows = shared, 7, 1
    # No writer: every 256th call encodes a chunk (no loop: the caller does), which then waits.
    on = PredictionRecorder(PredictionLogSettings(queue_size=10**9), directory)
    skipped = PredictionRecorder(PredictionLogSettings(sample_rate=0.01, queue_size=10**9), directory)
    calls = {
        "made request id": lambda: request_id(None),
        "client's request id": lambda: request_id("4f9c2e71-0d1b-4a5e-9c3f-8b2d7e6a1c05"),
        "context variable set+reset": lambda: REQUEST_ID.reset(REQUEST_ID.set("x")),
        "Sample()": Sample,
        "record": lambda: on.record("id", MODEL, 1, "v1", 200, 0.001, sample),
        "record at 1%": lambda: skipped.record("id", MODEL, 1, "v1", 200, 0.001, sample),
    }
    out = {}
    for name, call in calls.items():
        number = 200_000
        best = min(timeit.repeat(call, number=number, repeat=5)) / number * 1e9
        out[name] = best
        log(f"{name}: {best:.0f} ns")
    # The writer thread's work per entry: a drain of 1,000 queued entries, described, serialized
    # and appended in one transaction (about what it finds every 0.2 s at 5,000 requests/s), from
    # batches of 20 requests (a busy server) and of 4 (a lighter load: more batches per chunk).
    for size in (20, 4):
        best, _ = writer_per_entry(directory / f"writer-{size}", size)
        name = "writer, per entry" if size == 20 else f"writer, per entry (batches of {size})"
        out[name] = best
        log(f"{name}: {best:.0f} ns")
    return out


def writer_only(directory: Path) -> None:
    """The writer's CPU and bytes per entry alone (--writer), for batches of 20, 4 and 2 requests."""
    figures = []
    for size in (20, 4, 2):
        best, size_bytes = writer_per_entry(directory / f"writer-{size}", size)
        log(f"writer, batches of {size}: {best:.0f} ns, {size_bytes:.0f} bytes per entry")
        figures.append(f"batches of {size} {best:.0f} ns {size_bytes:.0f} B")
    print(f"prediction log writer per entry (CPU, bytes stored): {', '.join(figures)}")


def writer_per_entry(directory: Path, size: int) -> tuple[float, float]:
    """Nanoseconds of the server's CPU per entry spent handing entries to the log's writer process
    (encoding them and writing them into its pipe: the thread's round, in this thread), for entries
    from batches of `size`, and the bytes each entry takes in the segment's rows (its chunk's share
    and its request id). The writer process's own CPU (SQLite's) is another core's, not counted."""
    from shipyard.monitor.prediction_chunks import Ran
    from shipyard.monitor.prediction_recorder import PredictionRecorder, Sample
    from shipyard.settings import PredictionLogSettings

    writer = PredictionRecorder(PredictionLogSettings(queue_size=10**9), directory)
    # The iris model's outputs, with probabilities as a model gives them (not zeros, which JSON
    # wrote in three characters each): what the writer stores is what it costs.
    probabilities = np.random.default_rng(0).dirichlet(np.ones(3), size).astype(np.float32)
    inputs = {"X": np.random.default_rng(1).uniform(0, 8, (size, 4)).astype(np.float32)}
    outputs = {"label": probabilities.argmax(axis=1).astype(np.int64), "probabilities": probabilities}
    with writer._encoding:  # held: `record` only queues (else every 256th entry's chunk is encoded)
        for number in range(1000):
            if number % size == 0:  # a new batch of `size` single-row requests
                shared = Ran(inputs, outputs, size)
            sample = Sample()
            sample.ran, sample.offset, sample.rows = shared, number % size, 1
            latency_s = (
                0.001 + number % 89 * 1.3e-5
            )  # as varied as real ones, which JSON wrote digit by digit
            writer.record(f"{number:016x}-{number:x}", MODEL, 1, "v1", 200, latency_s, sample)
    batch, rans = list(writer._queue), dict(writer._rans)
    writer._queue.clear()

    def drain() -> None:
        writer._queue.extend(batch)
        writer._rans.update(rans)  # the batches the entries name by number, as `record` left them
        writer._rans_done = 0
        writer._drain(everything=True)  # the first round starts the writer process: warm-up

    # CPU time, not the clock: the writer pauses between chunks (for the event loop), which costs
    # the server nothing.
    best = (
        min(timeit.Timer(drain, timer=time.thread_time).repeat(number=10, repeat=5)) / 10 / len(batch) * 1e9
    )
    writer._end_writer()  # it writes what it holds, seals its segment and exits
    stored = [0, 0]
    for path in directory.glob("*.sqlite"):
        with contextlib.closing(sqlite3.connect(path)) as db:
            sql = "SELECT sum(json_array_length(request_ids)), sum(length(entries) + length(request_ids))"
            sql += " FROM chunks"
            entries, size_bytes = db.execute(sql).fetchone()
        stored = [stored[0] + entries, stored[1] + size_bytes]
    return best, stored[1] / stored[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per setting per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--writer", action="store_true", help="only the writer's CPU and bytes per entry (no load, no pieces)"
    )
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith("SHIPYARD_")]:
        del os.environ[name]
    if args.writer:
        with tempfile.TemporaryDirectory() as folder:
            writer_only(Path(folder))
        return
    with tempfile.TemporaryDirectory() as folder:
        home = build_home(Path(folder))
        rates, cpu = asyncio.run(measure(home, args.rounds, args.duration, args.concurrency))
        costs = pieces(Path(folder) / "pieces")
    median = {name: statistics.median(values) for name, values in rates.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    off = cpu_median["off"]
    cost = cpu_median["summaries"] / off - 1
    figures = ", ".join(f"{name} {median[name]:,.0f} req/s {cpu_median[name]:.1f} µs CPU" for name in median)
    verdict = "ok" if cost <= GOAL_COST else "MISS"
    print(
        f"prediction log in-process, {args.concurrency} tasks, median of {args.rounds} rounds: {figures}; "
        f"summaries cost {cost:+.1%} CPU per request (goal ≤ {GOAL_COST:.0%}: {verdict}), "
        f"summaries+1% payloads {cpu_median['summaries+1% payloads'] / off - 1:+.1%}; request path: "
        f"made id {costs['made request id']:.0f} ns, record {costs['record']:.0f} ns "
        f"(at 1% {costs['record at 1%']:.0f} ns; each with a 256th of a chunk's encoding); "
        f"writer {costs['writer, per entry']:.0f} ns "
        f"per entry"
    )


if __name__ == "__main__":
    main()

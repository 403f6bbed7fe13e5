"""`shipyard serve` next to a raw uvicorn + onnxruntime app, under the same wrk load.

Trains iris as ONNX, pushes it into a temporary registry, starts the raw app
(benchmarks/_raw_app.py), `shipyard serve --workers 1` and `--workers 2`, times each start to
ready, then loads them in alternating rounds (a shared machine's drift cancels out) with
single-row V1 JSON requests, reading wrk's figures and, from /proc, each worker's memory, CPU
time, bytes written and connections (the workers' share of the load: /metrics sums them).
What it measures, its goals and the last figures: benchmarks/README.md.

Detail goes to stderr; the last line on stdout is the one-line summary. SHIPYARD_* variables of
the calling shell are ignored so a local config cannot change what is measured.

    .venv/bin/python benchmarks/serve.py                # 20 s per target, in 4 rounds of 5 s
    .venv/bin/python benchmarks/serve.py --duration 4 --rounds 2   # a quick run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from harness.procfs import bytes_written, cpu_seconds, host_cpu, rss_mb
from harness.sampling import Sampler, batch_totals, noise_note
from harness.servers import (
    HOST,
    Server,
    check_announcement,
    free_port,
    http_call,
    launch,
    log,
    run_main,
    start_shipyard,
    stop_on_sigterm,
    stop_server,
    wait_ready,
)
from harness.wrk import LATENCY_HOOK, WrkResult, add_load_options, find_wrk, run_wrk

HERE = Path(__file__).resolve().parent
MODEL_NAME = "iris-onnx"
BODY = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
TARGETS = {"raw": 0, "w1": 1, "w2": 2, "sagemaker": 1, "vertex": 1}  # label → workers (0: raw app)
# The platform targets run `shipyard entrypoint` (what a `shipyard build` image runs) by that
# platform's contract, and are sent the same body on the platform's own predict route.
PLATFORM_ROUTES = {"sagemaker": "/invocations", "vertex": "/predict"}
GOAL_RPS_RATIO = 0.8
GOAL_P99_RATIO = 1.5
GOAL_READY_S = 2.0
GOAL_RSS_MB = 120.0
LUA = f"""wrk.method = "POST"
wrk.body = '{BODY.decode()}'
wrk.headers["Content-Type"] = "application/json"
{LATENCY_HOOK}"""


def build_model(folder: Path) -> Path:
    """A LogisticRegression on iris as ONNX: outputs `label` (int64) and `probabilities`."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    onx = to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}}, target_opset=17)
    path = folder / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def push_model(home: Path, model: Path) -> str:
    from shipyard.registry import Registry
    from shipyard.settings import Settings

    with Registry(settings=Settings.load(home=home)) as registry:
        return str(registry.push(MODEL_NAME, model).ref)


def start_server(label: str, workers: int, model: Path, home: Path, folder: Path) -> Server:
    """The raw app (workers = 0) or `shipyard serve` of the iris model with that many workers."""
    if workers == 0:
        port = free_port()
        cmd = [sys.executable, str(HERE / "_raw_app.py"), str(model), str(port)]
        return launch(label, cmd, 0, port, home, folder)
    if label in PLATFORM_ROUTES:
        return start_entrypoint(label, home, folder)
    return start_shipyard(label, MODEL_NAME, ["--workers", str(workers)], home, folder)


def start_entrypoint(platform: str, home: Path, folder: Path) -> Server:
    """`shipyard entrypoint` as the platform starts an image: the registry is its model folder."""
    port = free_port()
    exe = Path(sys.executable).with_name("shipyard")
    env = {"SHIPYARD_PLATFORM": platform, "SHIPYARD_MODEL_DIR": str(home)}
    env["SHIPYARD_WORK_DIR"] = str(folder / f"{platform}-work")
    if platform == "sagemaker":
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
        cmd = [str(exe), "entrypoint", "serve", MODEL_NAME]
    else:
        env |= {"AIP_HTTP_PORT": str(port), "AIP_PREDICT_ROUTE": "/predict", "AIP_HEALTH_ROUTE": "/health"}
        cmd = [str(exe), "entrypoint", MODEL_NAME]
    return launch(platform, cmd, 1, port, home, folder, env)


@dataclass
class Measured:
    label: str
    workers: int
    wrk: WrkResult
    ready_s: float
    worker_rss: dict[int, float]  # pid → peak MB while serving the load
    worker_cpu: dict[int, float]  # pid → CPU seconds during the load
    worker_bytes: dict[int, int]  # pid → bytes written during the load (responses)
    worker_conns: dict[int, int]  # pid → connections held during the load
    parent_pid: int
    parent_rss: float | None  # the supervising process, when workers are separate processes
    host_busy: float  # fraction of all CPUs busy during the load
    batch: tuple[float, float] | None  # (rows, batches) run during the load (shipyard, /metrics)
    predictions: Any = None  # the answer to the sample request
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)
    helper_cpu: float = 0.0  # CPU seconds of the server's helper processes (its log writers)

    @classmethod
    def merge(cls, parts: list[Measured]) -> Measured:
        """The rounds of one target as one load: sums, peaks, and time-weighted host load."""
        first, walls = parts[0], [p.wrk.wall_s for p in parts]
        batches = [p.batch for p in parts if p.batch is not None]
        parents = [p.parent_rss for p in parts if p.parent_rss is not None]
        # Every round's workers: the same processes, or new ones where each round had its own server.
        pids = list(dict.fromkeys(pid for p in parts for pid in p.worker_cpu))
        return cls(
            first.label,
            first.workers,
            WrkResult.merge([p.wrk for p in parts]),
            first.ready_s,
            {pid: max(p.worker_rss.get(pid, 0.0) for p in parts) for pid in pids},
            {pid: sum(p.worker_cpu.get(pid, 0.0) for p in parts) for pid in pids},
            {pid: sum(p.worker_bytes.get(pid, 0) for p in parts) for pid in pids},
            max((p.worker_conns for p in parts), key=lambda c: sum(c.values())),
            first.parent_pid,
            max(parents) if parents else None,
            sum(p.host_busy * w for p, w in zip(parts, walls, strict=True)) / sum(walls),
            (sum(b[0] for b in batches), sum(b[1] for b in batches)) if batches else None,
            first.predictions,
            problems=[problem for p in parts for problem in p.problems],
            helper_cpu=sum(p.helper_cpu for p in parts),
        )

    @property
    def batch_rows(self) -> float | None:
        """Mean rows per batch."""
        return self.batch[0] / self.batch[1] if self.batch and self.batch[1] else None

    @property
    def shares(self) -> list[float]:
        """Each worker's share of the server's CPU time: the proxy for its share of the work."""
        total = sum(self.worker_cpu.values()) or 1.0
        return [cpu / total for cpu in self.worker_cpu.values()]

    @property
    def byte_shares(self) -> list[float]:
        """Each worker's share of the bytes written: its share of the responses."""
        total = sum(self.worker_bytes.values()) or 1
        return [b / total for b in self.worker_bytes.values()]

    @property
    def other_cores(self) -> float:
        """CPU (in cores) that neither the server nor wrk used: kernel softirq, other processes."""
        used = (sum(self.worker_cpu.values()) + self.helper_cpu + self.wrk.cpu_s) / self.wrk.wall_s
        return max(self.host_busy * (os.cpu_count() or 1) - used, 0.0)

    @property
    def max_rss(self) -> float:
        return max(self.worker_rss.values(), default=0.0)


@dataclass
class Prepared:
    """A target started, ready, checked and warmed up, waiting for its loads."""

    server: Server
    ready_s: float
    url: str
    predictions: Any
    problems: list[str]


def prepare(server: Server, args: argparse.Namespace, wrk: str, lua: Path, expected: Any) -> Prepared:
    problems = []
    ready = wait_ready(server)
    # the platforms' contracts bind 0.0.0.0 (reachable from outside a container), not HOST
    if server.label not in PLATFORM_ROUTES and (note := check_announcement(server)):
        problems.append(note)
    path = PLATFORM_ROUTES.get(server.label, f"/v1/models/{MODEL_NAME}:predict")
    answer = http_call(server.port, "POST", path, BODY)
    if answer is None or answer[0] != 200:
        raise RuntimeError(f"{server.label}: a sample request failed: {answer}\n{server.log_tail()}")
    predictions = orjson.loads(answer[1]).get("predictions")
    if expected is not None and not _same_predictions(predictions, expected):
        problems.append(f"predictions differ from the raw app's: {predictions} vs {expected}")
    url = f"http://{HOST}:{server.port}{path}"
    log(f"{server.label}: ready in {ready:.2f} s on port {server.port}; warming up {args.warmup} s")
    run_wrk(wrk, url, lua, args.warmup, args.connections, args.threads)
    pids = server.worker_pids()
    if server.workers > 1 and len(pids) != server.workers:
        problems.append(f"expected {server.workers} worker processes, found {len(pids)}: {pids}")
    return Prepared(server, ready, url, predictions, problems)


def load(target: Prepared, args: argparse.Namespace, wrk: str, lua: Path, seconds: int) -> Measured:
    """One load of `seconds` with wrk, and what the server used meanwhile."""
    server = target.server
    pids = server.worker_pids()
    helpers = server.helper_pids()
    batches_before = batch_totals(server.port) if server.workers else None
    cpu_before = {pid: cpu_seconds(pid) for pid in pids + helpers}
    bytes_before = {pid: bytes_written(pid) for pid in pids}
    host_before = host_cpu()
    sampler = Sampler(server, pids)
    sampler.start()
    try:
        result = run_wrk(wrk, target.url, lua, seconds, args.connections, args.threads)
    finally:
        sampler.stop.set()
        sampler.join()
    host_after = host_cpu()
    cpu = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in pids}
    helper_cpu = sum(cpu_seconds(pid) - cpu_before[pid] for pid in helpers)
    written = {pid: bytes_written(pid) - bytes_before[pid] for pid in pids}
    sampler.sample()  # one more while still serving (catches a run too short for the timer)
    batches_after = batch_totals(server.port) if server.workers else None
    batch = None
    if batches_before and batches_after:
        batch = (batches_after[0] - batches_before[0], batches_after[1] - batches_before[1])
    busy = (host_after[0] - host_before[0]) / max(host_after[1] - host_before[1], 1)
    parent_rss = rss_mb(server.proc.pid) if pids != [server.proc.pid] else None
    problems = []
    if server.proc.poll() is not None:
        problems.append(f"exited with {server.proc.returncode} during the load")
    return Measured(
        server.label, server.workers, result, target.ready_s, sampler.rss, cpu, written, sampler.conns,
        server.proc.pid, parent_rss, busy, batch, target.predictions, problems=problems,
        helper_cpu=helper_cpu,
    )  # fmt: skip


def _same_predictions(a: Any, b: Any) -> bool:
    try:
        return orjson.dumps(a) == orjson.dumps(b) or bool(np.allclose(_flat(a), _flat(b), atol=1e-6))
    except (TypeError, ValueError):
        return False


def _flat(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _flat(value[k])]
    if isinstance(value, list):
        return [x for item in value for x in _flat(item)]
    return [float(value)]


def describe(m: Measured, args: argparse.Namespace) -> None:
    w = m.wrk
    p = w.percentiles
    sock = ", ".join(f"{k} {v}" for k, v in w.socket_errors.items())
    name = "raw app" if m.workers == 0 else f"shipyard --workers {m.workers}"
    log(
        f"{name}: {w.rps:,.0f} req/s ({w.requests:,} in {w.wall_s:.1f} s); latency p50 {p[50]:.2f} ms, "
        f"p75 {p.get(75, float('nan')):.2f}, p90 {p.get(90, float('nan')):.2f}, p99 {p[99]:.2f} ms; "
        f"non-2xx {w.non_2xx}, socket errors: {sock}; ready {m.ready_s:.2f} s"
        + (f"; exit code after SIGTERM {m.exit_code}" if m.workers else "")  # uvicorn alone re-raises it
    )
    total_cpu = sum(m.worker_cpu.values())
    for pid, cpu_share, byte_share in zip(m.worker_cpu, m.shares, m.byte_shares, strict=True):
        cpu, rss, conns = m.worker_cpu[pid], m.worker_rss.get(pid, float("nan")), m.worker_conns.get(pid, 0)
        log(
            f"  worker pid {pid}: rss {rss:.0f} MB; cpu {cpu:.1f} s ({cpu / w.wall_s:.0%} of a core, "
            f"{cpu_share:.0%} of the server's); {byte_share:.0%} of the bytes written; "
            f"{conns} of {args.connections} connections"
        )
    if m.parent_rss is not None:
        log(f"  supervisor pid {m.parent_pid}: rss {m.parent_rss:.0f} MB")
    batch = f"; mean batch {m.batch_rows:.1f} rows" if m.batch_rows is not None else ""
    cores = os.cpu_count() or 1
    per_request = (total_cpu + m.helper_cpu) / max(w.requests, 1) * 1e6
    helpers = f", its log writers {m.helper_cpu / w.wall_s:.0%} of a core" if m.helper_cpu else ""
    log(
        f"  cpu during the load: server {total_cpu / w.wall_s:.0%} of a core{helpers} ({per_request:.0f} µs"
        f" per request), wrk {w.cpu_s / w.wall_s:.0%} of a core, everything else {m.other_cores:.0%} of a"
        f" core; host {m.host_busy:.0%} busy of {cores} cpus{batch}"
    )
    for problem in m.problems:
        log(f"  PROBLEM: {problem}")


def summary(results: dict[str, Measured], args: argparse.Namespace) -> str:
    raw = results.get("raw")
    parts = []

    def ratio(value: float, base: float | None) -> str:
        return f" ({value / base:.2f}x raw)" if base else ""

    if raw:
        p = raw.wrk.percentiles
        parts.append(f"raw {raw.wrk.rps:.0f} rps p50 {p[50]:.1f}ms p99 {p[99]:.1f}ms errors {raw.wrk.errors}")
    for label in ("w1", "w2", *PLATFORM_ROUTES):
        m = results.get(label)
        if m is None:
            continue
        p = m.wrk.percentiles
        text = (
            f"{label} {m.wrk.rps:.0f} rps{ratio(m.wrk.rps, raw.wrk.rps if raw else None)} "
            f"p50 {p[50]:.1f}ms p99 {p[99]:.1f}ms{ratio(p[99], raw.wrk.percentiles[99] if raw else None)} "
            f"errors {m.wrk.errors} ready {m.ready_s:.2f}s"
        )
        if m.workers > 1:
            text += " shares " + "/".join(f"{s:.0%}" for s in m.shares) + " (cpu) "
            text += "/".join(f"{s:.0%}" for s in m.byte_shares) + " (responses)"
            text += " conns " + "/".join(str(c) for c in m.worker_conns.values())
        text += " rss " + "/".join(f"{v:.0f}" for v in m.worker_rss.values()) + "MB"
        parts.append(("shipyard " if label == "w1" else "") + text)
    line = "serve: " + " | ".join(parts)
    w1 = results.get("w1")
    if w1 is not None:
        checks = {
            "rps>=0.8x": raw is not None and w1.wrk.rps >= GOAL_RPS_RATIO * raw.wrk.rps,
            "p99<=1.5x": raw is not None
            and w1.wrk.percentiles[99] <= GOAL_P99_RATIO * raw.wrk.percentiles[99],
            "errors=0": w1.wrk.errors == 0,
            "ready<2s": all(m.ready_s < GOAL_READY_S for m in results.values() if m.workers),
            "rss<=120MB": all(m.max_rss <= GOAL_RSS_MB for m in results.values() if m.workers),
        }
        line += " | goals: " + " ".join(f"{k} {'ok' if v else 'MISS'}" for k, v in checks.items())
    other = max(m.other_cores for m in results.values())
    line += noise_note(other, " during the loads")
    line += (
        f" | {os.cpu_count()} cpus, wrk -t{args.threads} -c{args.connections}, "
        f"{args.rounds} alternating rounds of {args.round_s}s per target"
    )
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(parser, duration=20, warmup=2)
    parser.add_argument(
        "--targets", default="raw,w1,w2", help="comma-separated subset of raw,w1,w2,sagemaker,vertex"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="loads per target, alternating between targets (default 4)"
    )
    args = parser.parse_args()
    args.round_s = max(1, round(args.duration / args.rounds))
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := [t for t in targets if t not in TARGETS]:
        parser.error(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
    wrk = find_wrk()
    stop_on_sigterm()

    results: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-serve-") as tmp:
        folder = Path(tmp)
        (home := folder / "home").mkdir()
        model = build_model(folder)
        ref = push_model(home, model)
        lua = folder / "post.lua"
        lua.write_text(LUA)
        log(f"pushed {ref} ({model.stat().st_size} bytes of ONNX) into {home}")
        started: dict[str, Prepared] = {}
        expected = None
        try:
            for label in targets:  # one at a time, so each start-up time is its own
                server = start_server(label, TARGETS[label], model, home, folder)
                try:
                    started[label] = prepare(server, args, wrk, lua, expected)
                except BaseException as exc:  # Ctrl-C included: never leave a server behind
                    if isinstance(exc, Exception):
                        log(f"{label}: failed; its log ends with:\n{server.log_tail()}")
                    stop_server(server)
                    raise
                if expected is None:
                    expected = started[label].predictions  # the first target's answer is the reference
            # Loads alternate (raw, w1, w2, then w2, w1, raw, …): the host's speed drifts by tens of
            # percent over minutes on shared machines, and back-to-back rounds cancel a drift.
            rounds: dict[str, list[Measured]] = {label: [] for label in targets}
            for number in range(args.rounds):
                for label in targets if number % 2 == 0 else targets[::-1]:
                    rounds[label].append(load(started[label], args, wrk, lua, args.round_s))
        finally:
            codes = {label: stop_server(target.server) for label, target in started.items()}
        for label, target in started.items():
            measured = Measured.merge(rounds[label])
            measured.problems[:0] = target.problems
            measured.exit_code = codes[label]
            if target.server.workers and codes[label] != 0:
                measured.problems.append(
                    f"exited with {codes[label]} after SIGTERM (expected 0)\n{target.server.log_tail(10)}"
                )
            results[label] = measured
            describe(measured, args)
    print(summary(results, args), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)

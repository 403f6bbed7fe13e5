"""Triton's perf_analyzer over HTTP and gRPC against one `shipyard serve`, beside serve.py's wrk load.

Pushes serve.py's iris ONNX model and Triton's add/sub `simple` example (INT32 [-1,16] inputs
INPUT0/INPUT1, outputs OUTPUT0 = sum, OUTPUT1 = difference) into a temporary registry, serves both
from one `shipyard serve --workers 1` with HTTP and gRPC ports, then in alternating rounds runs
`perf_analyzer -i http` and `-i grpc` (the binary scripts/install-perf-analyzer.sh puts in
.perf_analyzer/, installed on first use) at each concurrency, and serve.py's own wrk load (V1 JSON,
iris) once a round. `grpc-stream` is `-i grpc --streaming` (ModelStreamInfer, one stream per
client); `ceiling` is perf_analyzer -i grpc against a bare grpc.aio server answering
`simple` with fixed bytes (benchmarks/_fixed_grpc.py): what grpcio and perf_analyzer's gRPC client
allow on this host. Each point: inferences/s, p50/p90/p99 latency and the server's CPU per
inference. What it measures, its goal and the last figures: benchmarks/README.md.

    .venv/bin/python benchmarks/perf_analyzer.py                          # 3 rounds, c=1,8,32
    .venv/bin/python benchmarks/perf_analyzer.py --rounds 1 --window-ms 1000  # a quick run
    # before/after: serve main's code instead (PYTHONPATH first on the server's path)
    .venv/bin/python benchmarks/perf_analyzer.py --source ../main/src
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.compare import middle_half, paired_ratio
from harness.procfs import cpu_seconds, host_cpu
from harness.sampling import noise_note
from harness.servers import (
    HOST,
    Server,
    free_port,
    launch,
    log,
    run_main,
    stop_on_sigterm,
    stop_server,
    wait_ready,
)
from harness.wrk import WrkResult, find_wrk, run_wrk
from serve import LUA, MODEL_NAME, build_model

ROOT = Path(__file__).resolve().parent.parent
SIMPLE = "simple"
PROTOCOLS = ("http", "grpc")
STREAM = "grpc-stream"  # perf_analyzer -i grpc --streaming: ModelStreamInfer, one stream per client
CEILING = "ceiling"  # perf_analyzer -i grpc against _fixed_grpc.py
GOAL_GRPC_RATIO = 0.8  # gRPC's inferences/s (unary, streaming) over HTTP's, at the top concurrency
GRPC_READY_S = 30.0


def build_simple(folder: Path) -> Path:
    """Triton's `simple` example as ONNX: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    from onnx import TensorProto, helper

    def info(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["N", 16])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        SIMPLE,
        [info("INPUT0"), info("INPUT1")],
        [info("OUTPUT0"), info("OUTPUT1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "simple.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def push_models(home: Path, models: dict[str, Path]) -> None:
    from shipyard.registry import Registry
    from shipyard.settings import Settings

    with Registry(settings=Settings.load(home=home)) as registry:
        for name, path in models.items():
            log(f"pushed {registry.push(name, path).ref}")


def find_perf_analyzer() -> str:
    """.perf_analyzer/perf_analyzer, installed by scripts/install-perf-analyzer.sh when missing."""
    path = ROOT / ".perf_analyzer" / "perf_analyzer"
    if not path.exists():
        log("installing perf_analyzer into .perf_analyzer/ (scripts/install-perf-analyzer.sh)")
        env = os.environ | {"PIP": str(Path(sys.executable).with_name("pip"))}
        subprocess.run(["bash", "scripts/install-perf-analyzer.sh"], cwd=ROOT, env=env, check=True)
    return str(path)


def start_server(home: Path, folder: Path, grpc_port: int, source: str | None) -> Server:
    """`shipyard serve iris simple --workers 1` with HTTP and gRPC ports on loopback."""
    port = free_port()
    exe = Path(sys.executable).with_name("shipyard")
    cmd = [str(exe), "serve", MODEL_NAME, SIMPLE, "--host", HOST, "--port", str(port), "--workers", "1"]
    cmd += ["--grpc-port", str(grpc_port)]
    env = {"PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])} if source else None
    return launch("shipyard", cmd, 1, port, home, folder, env)


def start_ceiling(folder: Path) -> Server:
    """benchmarks/_fixed_grpc.py on a free port, with this checkout's sources on its path."""
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).with_name("_fixed_grpc.py")), str(port)]
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return launch(CEILING, cmd, 0, port, folder, folder, env)


def wait_grpc(server: Server, port: int) -> None:
    """gRPC starts after HTTP's lifespan: wait until its port accepts a connection."""
    deadline = time.perf_counter() + GRPC_READY_S
    while time.perf_counter() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"the server exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on the gRPC port {port} after {GRPC_READY_S:.0f} s")


@dataclass
class Target:
    """What perf_analyzer loads: `label` (http, grpc, grpc-stream or ceiling) over `protocol` at
    `url`, with perf_analyzer's `flags`; `pid` the process whose CPU is read."""

    label: str
    protocol: str
    url: str
    pid: int
    flags: tuple[str, ...] = ()


@dataclass
class Point:
    """One perf_analyzer run: its client's figures and what the server used meanwhile."""

    ips: float  # inferences/s
    p50: float  # latency percentiles, ms
    p90: float
    p99: float
    requests: int
    server_cpu_s: float
    client_cpu_s: float
    wall_s: float
    host_busy: float  # fraction of all CPUs busy

    @property
    def cpu_us(self) -> float:
        """The server's CPU per inference, µs: steadier than inferences/s on a shared host."""
        return self.server_cpu_s / max(self.requests, 1) * 1e6

    @property
    def client_us(self) -> float:
        """perf_analyzer's own CPU per inference, µs: it shares the host's cores with the server."""
        return self.client_cpu_s / max(self.requests, 1) * 1e6

    @property
    def other_cores(self) -> float:
        """CPU (in cores) that neither the server nor perf_analyzer used."""
        used = (self.server_cpu_s + self.client_cpu_s) / self.wall_s
        return max(self.host_busy * (os.cpu_count() or 1) - used, 0.0)


def run_perf_analyzer(
    pa: str, model: str, target: Target, concurrency: int, window_ms: int, folder: Path
) -> Point:
    """Three measurement windows at one concurrency, their figures averaged by perf_analyzer."""
    report = folder / "perf_analyzer.csv"
    report.unlink(missing_ok=True)
    protocol, pid = target.protocol, target.pid
    cmd = [pa, "-m", model, "-i", protocol, "-u", target.url, *target.flags]
    cmd += ["--concurrency-range", str(concurrency)]
    # -s 999 takes the first three windows as stable: the rounds, not perf_analyzer, handle drift.
    cmd += ["-p", str(window_ms), "-r", "3", "-s", "999", "-f", str(report)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before, host_before, started = cpu_seconds(pid), host_cpu(), time.perf_counter()
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60 + 10 * window_ms / 1000, check=False
    )
    wall, cpu_after, host_after = time.perf_counter() - started, cpu_seconds(pid), host_cpu()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = done.stdout + done.stderr
    if done.returncode != 0 or not report.exists():
        what = f"perf_analyzer -i {protocol} {' '.join(target.flags)} -m {model}"
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{output[-2000:]}")
    row = next(csv.DictReader(report.open()))
    count = re.search(r"Client:\s+Request count: (\d+)", output)
    return Point(
        ips=float(row["Inferences/Second"]),
        p50=int(row["p50 latency"]) / 1e3,
        p90=int(row["p90 latency"]) / 1e3,
        p99=int(row["p99 latency"]) / 1e3,
        requests=int(count[1]) if count else 0,
        server_cpu_s=cpu_after - cpu_before,
        client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        wall_s=wall,
        host_busy=(host_after[0] - host_before[0]) / max(host_after[1] - host_before[1], 1),
    )


Key = tuple[str, str, int]  # (model, target's label, concurrency)


def median_point(points: list[Point]) -> tuple[float, float, float, float, float]:
    """(inferences/s, p50, p90, p99, server µs per inference), each the median over rounds."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    return (
        med([p.ips for p in points]),
        med([p.p50 for p in points]),
        med([p.p90 for p in points]),
        med([p.p99 for p in points]),
        med([p.cpu_us for p in points]),
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating targets (default 3)")
    parser.add_argument("--window-ms", type=int, default=1500, help="measurement window (3 per point)")
    parser.add_argument("--concurrency", default="1,8,32", help="concurrencies (default 1,8,32)")
    parser.add_argument("--models", default=f"{MODEL_NAME},{SIMPLE}", help="models to load (default both)")
    parser.add_argument("--no-wrk", action="store_true", help="leave out serve.py's wrk load")
    parser.add_argument(
        "--no-ceiling", action="store_true", help="leave out _fixed_grpc.py (grpcio's ceiling)"
    )
    parser.add_argument("--source", help="serve the code of this source folder (e.g. ../main/src)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk's threads (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk warm-up (default 1)")
    args = parser.parse_args()
    args.concurrencies = [int(c) for c in args.concurrency.split(",")]
    args.models = [m for m in args.models.split(",") if m]
    if unknown := [m for m in args.models if m not in (MODEL_NAME, SIMPLE)]:
        parser.error(f"--models: {unknown} unknown; choose from {MODEL_NAME},{SIMPLE}")
    args.source = str(Path(args.source).resolve()) if args.source else None
    args.round_s = max(1, round(3 * args.window_ms / 1000))  # wrk loads as long as one point
    return args


def measure(
    args: argparse.Namespace,
    pa: str,
    targets: dict[str, list[Target]],
    wrk: tuple[str, str, Path] | None,
    folder: Path,
) -> tuple[dict[Key, list[Point]], list[WrkResult]]:
    """Every target at every concurrency once a round, in alternating order, so the host's drift
    within a round cancels out; then serve.py's wrk load (`wrk`: its binary, URL and Lua script)."""
    points: dict[Key, list[Point]] = {}
    wrk_rounds: list[WrkResult] = []
    for model, mine in targets.items():  # warm-up
        for t in mine:
            run_perf_analyzer(pa, model, t, max(args.concurrencies), 500, folder)
    if wrk:
        run_wrk(*wrk, args.warmup, args.connections, args.threads)
    for number in range(args.rounds):
        for model, mine in targets.items():
            for concurrency in args.concurrencies:
                for t in mine if number % 2 == 0 else mine[::-1]:
                    point = run_perf_analyzer(pa, model, t, concurrency, args.window_ms, folder)
                    points.setdefault((model, t.label, concurrency), []).append(point)
                    log(
                        f"round {number + 1}: {model} {t.label} c={concurrency}: {point.ips:,.0f}/s "
                        f"p50 {point.p50:.2f} p90 {point.p90:.2f} p99 {point.p99:.2f} ms, "
                        f"server {point.cpu_us:.0f} µs/inference, client {point.client_us:.0f} µs, "
                        f"others {point.other_cores:.2f} cores"
                    )
        if wrk:
            wrk_rounds.append(w := run_wrk(*wrk, args.round_s, args.connections, args.threads))
            log(f"round {number + 1}: wrk V1 JSON: {w.rps:,.0f} req/s p99 {w.percentiles[99]:.2f} ms")
    return points, wrk_rounds


def main() -> int:
    args = parse_args()
    pa = find_perf_analyzer()
    wrk_binary = None if args.no_wrk else find_wrk()
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-perf-analyzer-") as tmp:
        folder = Path(tmp)
        (home := folder / "home").mkdir()
        push_models(home, {MODEL_NAME: build_model(folder), SIMPLE: build_simple(folder)})
        (lua := folder / "post.lua").write_text(LUA)
        grpc_port = free_port()
        server = start_server(home, folder, grpc_port, args.source)
        ceiling = None
        try:
            ready = wait_ready(server)
            wait_grpc(server, grpc_port)
            pid = server.worker_pids()[0]
            targets = {
                model: [
                    Target("http", "http", f"{HOST}:{server.port}", pid),
                    Target("grpc", "grpc", f"{HOST}:{grpc_port}", pid),
                    Target(STREAM, "grpc", f"{HOST}:{grpc_port}", pid, ("--streaming",)),
                ]
                for model in args.models
            }
            if not args.no_ceiling and SIMPLE in targets:
                ceiling = start_ceiling(folder)
                wait_grpc(ceiling, ceiling.port)
                targets[SIMPLE].append(Target(CEILING, "grpc", f"{HOST}:{ceiling.port}", ceiling.proc.pid))
            log(f"serving on HTTP {server.port} and gRPC {grpc_port}, ready in {ready:.2f} s; warming up")
            url = f"http://{HOST}:{server.port}/v1/models/{MODEL_NAME}:predict"
            wrk = None if wrk_binary is None else (wrk_binary, url, lua)
            points, wrk_rounds = measure(args, pa, targets, wrk, folder)
        finally:
            code = stop_server(server)
            if ceiling is not None:
                stop_server(ceiling)
        if code != 0:
            log(f"PROBLEM: the server exited with {code} after SIGTERM:\n{server.log_tail(10)}")
    print(summary(points, wrk_rounds, args), flush=True)
    return 0


def summary(points: dict[Key, list[Point]], wrk_rounds: list[WrkResult], args: argparse.Namespace) -> str:
    models, concurrencies = args.models, args.concurrencies
    top = max(concurrencies)
    parts, ratios = [], {}
    for model in models:
        labels = [label for label in (*PROTOCOLS, STREAM, CEILING) if (model, label, top) in points]
        for label in labels:
            figures = []
            for c in concurrencies:
                ips, p50, p90, p99, cpu = median_point(points[(model, label, c)])
                figures.append(f"c{c} {ips:,.0f}/s p50/p90/p99 {p50:.1f}/{p90:.1f}/{p99:.1f}ms {cpu:.0f}us")
            client = statistics.median(p.client_us for p in points[(model, label, top)])
            parts.append(f"{model} {label}: " + ", ".join(figures) + f" (client {client:.0f}us at c{top})")
        http = [p.ips for p in points[(model, "http", top)]]
        for label in labels[1:]:
            mine = [p.ips for p in points[(model, label, top)]]
            low, high = middle_half(mine, http)
            ratio = paired_ratio(mine, http)
            if label in ("grpc", STREAM):
                ratios[f"{model} {label}"] = ratio
            parts.append(f"{model} {label}/http at c{top} {ratio:.2f}x (rounds {low:.2f}-{high:.2f})")
    if wrk_rounds:
        w = WrkResult.merge(wrk_rounds)
        parts.append(
            f"serve.py's wrk (V1 JSON {MODEL_NAME}, -c{args.connections}) {w.rps:,.0f} req/s "
            f"p50 {w.percentiles[50]:.1f}ms p99 {w.percentiles[99]:.1f}ms errors {w.errors}"
        )
    checks = " ".join(
        f"{name}>={GOAL_GRPC_RATIO}x http at c{top} {'ok' if r >= GOAL_GRPC_RATIO else 'MISS'}"
        for name, r in ratios.items()
    )
    noisy = max(p.other_cores for runs in points.values() for p in runs)
    return (
        "perf_analyzer: " + " | ".join(parts) + f" | goals: {checks}"
        + noise_note(noisy)
        + f" | {os.cpu_count()} cpus, 1 worker, {args.rounds} alternating rounds of 3x{args.window_ms}ms "
        "windows per point (medians over rounds; us = CPU per inference)"
    )  # fmt: skip


if __name__ == "__main__":
    run_main(main)

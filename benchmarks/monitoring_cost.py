"""What monitoring costs the serving hot path, measured like benchmarks/serve.py.

Two `shipyard serve --workers 1` of the same iris ONNX model, pushed with a reference profile (its
training inputs) so the server keeps drift windows, loaded in alternating rounds: `off` (the
prediction log and drift off) and `on` (the prediction log with every request's summary and 1% of
payloads, drift windows); both export their metrics and neither traces. While each load runs,
/metrics is scraped every --scrape-s seconds as Prometheus would (drift is computed at scrape
time). What it measures, its goals and the last figures: benchmarks/README.md.

    .venv/bin/python benchmarks/monitoring_cost.py                          # 4 rounds of 5 s
    .venv/bin/python benchmarks/monitoring_cost.py --duration 6 --rounds 2  # a quick run
    # before/after in one interleaved run: `on@main` is `on` served from another checkout's sources
    .venv/bin/python benchmarks/monitoring_cost.py --targets off,on,on@main --sources main=../main/src
    # a new server for each round: servers of one configuration differ by up to 10% on this host
    .venv/bin/python benchmarks/monitoring_cost.py --fresh --duration 48 --rounds 8
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
from harness.compare import paired_ratio
from harness.sampling import noise_note
from harness.servers import http_call, log, run_main, start_shipyard, stop_on_sigterm, stop_server, wait_ready
from harness.wrk import add_load_options, find_wrk, run_wrk
from serve import BODY, LUA, MODEL_NAME, Measured, Prepared, build_model, describe, load

GOAL_RPS_COST = 0.05
GOAL_P99_COST = 0.10
PATH = f"/v1/models/{MODEL_NAME}:predict"
# label → (prediction log on, drift on); `log` and `drift` (one part alone, for a breakdown) run
# when --targets names them.
TARGETS = {"off": (False, False), "on": (True, True), "log": (True, False), "drift": (False, True)}


def environment(logging: bool, drift: bool, predictions: Path) -> dict[str, str]:
    """The server's settings: the prediction log (every summary, 1% of payloads) and drift windows
    on or off. Tracing is off (an OTEL_ variable of the calling shell would turn it on; SHIPYARD_
    ranks above it, and an empty endpoint means none)."""
    return {
        "SHIPYARD_PREDICTION_LOG__SAMPLE_RATE": "1" if logging else "0",
        "SHIPYARD_PREDICTION_LOG__PAYLOAD_RATE": "0.01" if logging else "0",
        "SHIPYARD_PREDICTION_LOG__PATH": str(predictions),
        "SHIPYARD_DRIFT__ENABLED": "true" if drift else "false",
        "SHIPYARD_TRACING__OTLP_ENDPOINT": "",
    }


def push_with_reference(home: Path, model: Path) -> str:
    """The model, with the profile of iris's 150 training rows stored for drift."""
    from sklearn.datasets import load_iris

    from shipyard.monitor.profile import build_profile
    from shipyard.registry import Registry
    from shipyard.settings import Settings

    x = load_iris(return_X_y=True)[0].astype(np.float32)
    with Registry(settings=Settings.load(home=home)) as registry:
        pushed = registry.push(
            MODEL_NAME, model, data_profile=lambda signature: build_profile({"X": x}, signature).to_dict()
        )
    return str(pushed.ref)


class Scraper(threading.Thread):
    """GET /metrics every `every` seconds until stopped; keeps each scrape's time."""

    def __init__(self, port: int, every: float) -> None:
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.stop = threading.Event()
        self.times: list[float] = []
        self.failed = 0

    def run(self) -> None:
        while not self.stop.wait(self.every):
            started = time.perf_counter()
            answer = http_call(self.port, "GET", "/metrics")
            if answer is None or answer[0] != 200:
                self.failed += 1
            else:
                self.times.append(time.perf_counter() - started)


@contextlib.contextmanager
def scraping(port: int, every: float, into: list[float]) -> Iterator[None]:
    if not every:
        yield
        return
    scraper = Scraper(port, every)
    scraper.start()
    try:
        yield
    finally:
        scraper.stop.set()
        scraper.join()
        into.extend(scraper.times)


def metric(text: str, name: str) -> float | None:
    """The sum of a metric's samples on a /metrics page; None when it has none."""
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return sum(float(v) for v in values) if values else None


def check_monitoring(label: str, port: int, predictions: Path) -> list[str]:
    """What says a server really ran as configured: its drift window and log entries, or none."""
    answer = http_call(port, "GET", "/metrics")
    text = answer[1].decode() if answer and answer[0] == 200 else ""
    rows = metric(text, "shipyard_drift_window_rows") or 0.0
    dropped = metric(text, "shipyard_predictionlog_dropped_total") or 0.0
    logged = sum(p.stat().st_size for p in predictions.glob("*")) if predictions.is_dir() else 0
    log(
        f"  {label}: drift window {rows:.0f} rows, prediction log {logged / 1e6:.1f} MB on disk, "
        f"{dropped:.0f} entries dropped"
    )
    logging, drift = TARGETS[kind(label)]
    problems = []
    if drift != bool(rows):
        problems.append(f"a drift window of {rows:.0f} rows with drift {_on(drift)}")
    if logging != bool(logged):
        problems.append(f"{logged} bytes of prediction log with the log {_on(logging)}")
    if dropped:
        problems.append(f"{dropped:.0f} prediction log entries dropped")
    return problems


def kind(label: str) -> str:
    """A target's kind: `on@main` is `on` (served from the sources named `main`)."""
    return label.partition("@")[0]


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def start_target(
    label: str, home: Path, folder: Path, args: argparse.Namespace, wrk: str, lua: Path
) -> Prepared:
    """`shipyard serve` with the target's monitoring, ready, checked and warmed up."""
    env = environment(*TARGETS[kind(label)], folder / f"predictions-{label}")
    source = label.partition("@")[2]
    if source:  # another checkout's code first on the server's path
        env["PYTHONPATH"] = os.pathsep.join([args.sources[source], os.environ.get("PYTHONPATH", "")])
    server = start_shipyard(label, MODEL_NAME, ["--workers", "1"], home, folder, env)
    try:
        ready = wait_ready(server)
        answer = http_call(server.port, "POST", PATH, BODY)
        if answer is None or answer[0] != 200:
            raise RuntimeError(f"{label}: a sample request failed: {answer}\n{server.log_tail()}")
        url = f"http://127.0.0.1:{server.port}{PATH}"
        run_wrk(wrk, url, lua, args.warmup, args.connections, args.threads)
    except BaseException:  # Ctrl-C included: never leave a server behind
        stop_server(server)
        raise
    return Prepared(server, ready, url, orjson.loads(answer[1]).get("predictions"), [])


def cpu_per_request(m: Measured) -> float:
    """The server's CPU µs per answered request, its log writers' included: steadier than
    requests/s on a shared host."""
    return (sum(m.worker_cpu.values()) + m.helper_cpu) / max(m.wrk.requests, 1) * 1e6


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    """The options, and the targets in their order."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(parser, duration=20, warmup=2)
    parser.add_argument("--rounds", type=int, default=4, help="loads per target, alternating (default 4)")
    parser.add_argument(
        "--targets", default="off,on", help=f"comma-separated subset of {','.join(TARGETS)} (default off,on)"
    )
    parser.add_argument(
        "--sources",
        default="",
        help="NAME=DIR,...: source folders that targets named KIND@NAME are served from (before/after)",
    )
    parser.add_argument(
        "--scrape-s", type=float, default=1.0, help="seconds between scrapes of /metrics (0: none; default 1)"
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="a new server for every round: two servers of one configuration differ by up to 10%%",
    )
    args = parser.parse_args()
    args.round_s = max(1, round(args.duration / args.rounds))
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.sources = dict(s.split("=", 1) for s in args.sources.split(",") if s)
    args.sources = {name: str(Path(folder).resolve()) for name, folder in args.sources.items()}
    unknown = [t for t in targets if kind(t) not in TARGETS or t.partition("@")[2] not in {"", *args.sources}]
    if unknown or (unknown := [t for t in ("off", "on") if t not in targets]):
        parser.error(f"--targets: {unknown} unknown or missing; choose from {list(TARGETS)}, with off and on")
    return args, targets


def main() -> int:
    args, targets = parse_args()
    wrk = find_wrk()
    stop_on_sigterm()
    results: dict[str, Measured] = {}
    scrapes: dict[str, list[float]] = {label: [] for label in targets}
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-monitoring-") as tmp:
        folder = Path(tmp)
        (home := folder / "home").mkdir()
        model = build_model(folder)
        ref = push_with_reference(home, model)
        log(f"pushed {ref} with a reference profile of 150 rows into {home}")
        lua = folder / "post.lua"
        lua.write_text(LUA)
        started: dict[str, Prepared] = {}
        problems: dict[str, list[str]] = {}
        codes: dict[str, int | None] = {}

        def stop(label: str) -> None:
            """Stop the target's server, keeping the first failed exit code of its servers."""
            code = stop_server(started.pop(label).server)
            codes[label] = codes.get(label) or code

        try:
            for label in targets:
                started[label] = start_target(label, home, folder, args, wrk, lua)
            rounds: dict[str, list[Measured]] = {label: [] for label in targets}
            for number in range(args.rounds):  # alternating, so the host's drift cancels out
                for label in targets if number % 2 == 0 else targets[::-1]:
                    if args.fresh and number:  # the process's own luck (layout, cores) averages out too
                        stop(label)
                        started[label] = start_target(label, home, folder, args, wrk, lua)
                    target = started[label]
                    with scraping(target.server.port, args.scrape_s, scrapes[label]):
                        rounds[label].append(load(target, args, wrk, lua, args.round_s))
            for label, target in started.items():
                problems[label] = check_monitoring(label, target.server.port, folder / f"predictions-{label}")
        finally:
            for label in list(started):
                stop(label)
        for label in targets:
            results[label] = measured = Measured.merge(rounds[label])
            measured.exit_code = codes[label]
            measured.problems.extend(problems.get(label, []))
            log(f"monitoring {label}:")
            describe(measured, args)
            if times := scrapes[label]:
                mean, most = np.mean(times) * 1e3, max(times) * 1e3
                log(f"  /metrics: {len(times)} scrapes, mean {mean:.1f} ms, max {most:.1f} ms")
    print(summary(results, rounds, scrapes, args), flush=True)
    return 0


def summary(
    results: dict[str, Measured],
    rounds: dict[str, list[Measured]],
    scrapes: dict[str, list[float]],
    args: argparse.Namespace,
) -> str:
    off = rounds["off"]

    def costs(label: str) -> tuple[float, float, float]:
        """Throughput lost, p99 added and CPU per request added, against `off`: each the median
        over rounds of the ratio within a round (harness/compare.py)."""
        mine = rounds[label]
        return (
            1 - paired_ratio([m.wrk.rps for m in mine], [m.wrk.rps for m in off]),
            paired_ratio([m.wrk.percentiles[99] for m in mine], [m.wrk.percentiles[99] for m in off]) - 1,
            paired_ratio([cpu_per_request(m) for m in mine], [cpu_per_request(m) for m in off]) - 1,
        )

    parts = []
    for label, m in results.items():
        text = (
            f"{label} {m.wrk.rps:,.0f} rps p99 {m.wrk.percentiles[99]:.2f}ms errors {m.wrk.errors} "
            f"cpu {cpu_per_request(m):.0f}us/request"
        )
        if scrapes[label]:
            text += f" scrape {np.mean(scrapes[label]) * 1e3:.0f}ms"
        if label != "off":
            rps, p99, cpu = costs(label)
            text += f" (cost, median of rounds: rps {rps:+.1%} p99 {p99:+.1%} cpu {cpu:+.1%})"
        parts.append(text)
    rps_cost, p99_cost, _ = costs("on")
    checks = {
        f"rps cost<{GOAL_RPS_COST:.0%}": rps_cost < GOAL_RPS_COST,
        f"p99 cost<{GOAL_P99_COST:.0%}": p99_cost < GOAL_P99_COST,
        "errors=0": not any(m.wrk.errors for m in results.values()),
        "as configured": not any(m.problems for m in results.values()),
    }
    noisy = max(m.other_cores for m in results.values())
    scraped = f"/metrics every {args.scrape_s:g}s" if args.scrape_s else "no scrapes"
    return (
        "monitoring cost: " + " | ".join(parts)
        + " | goals (on): " + " ".join(f"{k} {'ok' if v else 'MISS'}" for k, v in checks.items())
        + noise_note(noisy)
        + f" | {os.cpu_count()} cpus, wrk -t{args.threads} -c{args.connections}, "
        f"{args.rounds} alternating rounds of {args.round_s}s per target, {scraped}"
    )  # fmt: skip


if __name__ == "__main__":
    run_main(main)

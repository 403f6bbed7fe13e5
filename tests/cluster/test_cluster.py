"""Several servers, one registry: three hosts in their own network namespaces behind HAProxy.

The cluster (tests/netns_cluster.py, also behind scripts/cluster.sh) is built once for the module;
the tests run in order on it, as an operator's day would: start, move an alias under traffic,
lose a host, bring it back. Needs root and `ip netns` (skips otherwise), PostgreSQL on its unix
socket and haproxy (`make test` installs it).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import netns_cluster
from netns_cluster import Cluster, Host
from shipyard.registry import Registry
from shipyard.types import ModelVersion

SWITCH_DEADLINE_S = 10.0
# Polling far slower than the deadline: a host that follows an alias move in time was woken by
# PostgreSQL's notification of the move (LISTEN/NOTIFY), not by its poller.
FOLLOW = {"SHIPYARD_SERVE__POLL_INTERVAL_S": "120"}
STORE: netns_cluster.Store = "s3"  # S3 (moto) and a cache per host; "local": one shared folder
CLIENTS = 4  # concurrent clients of the balancer

UNAVAILABLE = netns_cluster.unavailable_reason()
pytestmark = pytest.mark.skipif(
    UNAVAILABLE is not None, reason=f"a cluster of network namespaces cannot be built here: {UNAVAILABLE}"
)


@dataclass
class Shared:
    cluster: Cluster
    versions: list[ModelVersion]
    servers: Servers
    body: dict[str, Any]
    cold_downloads: int  # GetObject requests while the hosts started


@pytest.fixture(scope="module")
def shared(onnx_variants: Any) -> Iterator[Shared]:
    netns_cluster.clean(include_kept=False)  # what a crashed earlier run left behind
    cluster = netns_cluster.create(3, owner=os.getpid(), store=STORE)
    started: list[subprocess.Popen[bytes]] = []  # every process, reaped after `destroy` kills it
    try:
        with Registry(settings=cluster.admin_settings()) as registry:
            versions = [registry.push("iris", onnx_variants(i)) for i in (1, 2)]
            registry.set_alias("iris", "production", 1)
        servers = Servers(cluster, started)
        before = downloads(cluster)
        for host in cluster.hosts:
            assert not cluster.cache_dir(host).exists()  # cold
            servers.start(host)
        for host in cluster.hosts:
            netns_cluster.wait_ready(cluster, host, servers[host.name])
        cold_downloads = downloads(cluster) - before
        started.append(netns_cluster.start_balancer(cluster))
        netns_cluster.wait_balancer(cluster, {h.name: "UP" for h in cluster.hosts})
        name = versions[0].signature.inputs[0].name
        body = {"inputs": [{"name": name, "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
        yield Shared(cluster, versions, servers, body, cold_downloads)
    finally:
        try:
            netns_cluster.destroy(cluster)
        finally:
            for proc in started:
                proc.kill()  # already killed by `destroy`, unless it failed half-way
                proc.wait()


class Servers(dict[str, "subprocess.Popen[bytes]"]):
    """Each host's current server process, by host name."""

    def __init__(self, cluster: Cluster, started: list[subprocess.Popen[bytes]]) -> None:
        super().__init__()
        self.cluster, self.started = cluster, started

    def start(self, host: Host) -> subprocess.Popen[bytes]:
        proc = netns_cluster.start_server(self.cluster, host, ["iris@production"], extra=FOLLOW)
        self.started.append(proc)
        self[host.name] = proc
        return proc


def downloads(cluster: Cluster) -> int:
    """Objects fetched from S3 so far (0 with the local store, where nothing is downloaded)."""
    return cluster.s3_counts().get("GetObject", 0) if cluster.store == "s3" else 0


def cached(cluster: Cluster, host: Host, version: ModelVersion) -> bool:
    """Whether the host's cache holds the version's artifact (laid out as the store: by digest)."""
    hexdigest = version.digest.removeprefix("sha256:")
    return (cluster.cache_dir(host) / "sha256" / hexdigest[:2] / hexdigest).is_dir()


def served_digest(host: Host) -> str:
    meta = httpx.get(f"{host.url}/v2/models/iris", timeout=2.0).json()
    return str(meta["parameters"]["digest"])


def request_count(host: Host) -> int:
    stats = httpx.get(f"{host.url}/v2/models/iris/stats", timeout=2.0).json()["model_stats"]
    return sum(int(s["request_count"]) for s in stats)


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer at all
    version: str | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


class Traffic:
    """`CLIENTS` clients posting V2 inference requests through the balancer until stopped."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.url, self.body = url, body
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post("/v2/models/iris/infer", json=self.body)
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    outcome = Outcome(
                        started, time.monotonic(), response.status_code, version, response.text[:200]
                    )
                except httpx.HTTPError as exc:
                    outcome = Outcome(started, time.monotonic(), None, None, repr(exc))
                with self._changed:
                    self.outcomes.append(outcome)
                    self._changed.notify_all()

    def wait_for(self, successes: int, since: float, timeout: float = 15.0) -> None:
        """Until `successes` requests started after `since` have succeeded."""

        def enough() -> bool:
            return sum(1 for o in self.outcomes if o.ok and o.started > since) >= successes

        with self._changed:
            if not self._changed.wait_for(enough, timeout):
                pytest.fail(
                    f"fewer than {successes} successful requests within {timeout}s: {self.failures()[:5]}"
                )

    def failures(self) -> list[Outcome]:
        with self._changed:
            return [o for o in self.outcomes if not o.ok]


def test_every_host_serves_the_digest_the_shared_registry_names(shared: Shared) -> None:
    cluster, first = shared.cluster, shared.versions[0]
    assert {h.name: served_digest(h) for h in cluster.hosts} == {h.name: first.digest for h in cluster.hosts}
    if cluster.store == "s3":  # each host pulled the artifact from the bucket into its own cache
        assert all(cached(cluster, h, first) for h in cluster.hosts)
        assert shared.cold_downloads >= len(cluster.hosts)
    before = {h.name: request_count(h) for h in shared.cluster.hosts}
    with httpx.Client(base_url=shared.cluster.balancer_url, timeout=10.0) as client:
        for _ in range(3 * 5):
            assert client.post("/v2/models/iris/infer", json=shared.body).status_code == 200
    # Round robin: each host took its share.
    assert {h.name: request_count(h) - before[h.name] for h in shared.cluster.hosts} == {
        h.name: 5 for h in shared.cluster.hosts
    }


def test_an_alias_move_reaches_every_host_with_no_failed_request(shared: Shared) -> None:
    cluster, second = shared.cluster, shared.versions[1]
    env = netns_cluster.cli_environment(cluster)
    with Traffic(cluster.balancer_url, shared.body) as traffic:
        traffic.wait_for(20, since=0.0)
        alias = subprocess.run(
            [netns_cluster.shipyard_command(), "alias", "iris", "production", "2"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert alias.returncode == 0, alias.stderr
        moved = time.monotonic()  # committed: the command exits after its transaction
        pending = {h.name: h for h in cluster.hosts}
        while pending:
            for name, host in list(pending.items()):
                if served_digest(host) == second.digest:
                    del pending[name]
            assert time.monotonic() - moved < SWITCH_DEADLINE_S, (
                f"still on the old version: {sorted(pending)}"
            )
            time.sleep(0.05)
        switched = time.monotonic()
        traffic.wait_for(40, since=switched)
    # the README's figures: `pytest tests/cluster -s` prints them
    print(f"alias move: all {len(cluster.hosts)} hosts switched {switched - moved:.2f} s after the commit; "
          f"{len(traffic.outcomes)} requests, {len(traffic.failures())} failed")  # fmt: skip
    assert traffic.failures() == []
    versions = {o.version for o in traffic.outcomes}
    assert versions == {"1", "2"}, versions
    assert {o.version for o in traffic.outcomes if o.started > switched} == {"2"}


def test_a_killed_host_costs_only_its_in_flight_requests(shared: Shared) -> None:
    cluster = shared.cluster
    victim = cluster.hosts[1]
    with Traffic(cluster.balancer_url, shared.body) as traffic:
        traffic.wait_for(20, since=0.0)
        signalled = time.monotonic()
        shared.servers[victim.name].kill()  # SIGKILL: no drain, open connections reset
        shared.servers[victim.name].wait()
        gone = time.monotonic()  # reaped: its sockets are closed
        netns_cluster.wait_balancer(cluster, {victim.name: "DOWN"})
        down = time.monotonic()
        traffic.wait_for(40, since=time.monotonic())
    failures = traffic.failures()
    print(f"SIGKILL: {len(failures)} of {len(traffic.outcomes)} requests failed; the process was gone "
          f"{(gone - signalled) * 1000:.0f} ms after the signal, DOWN {down - gone:.2f} s later")  # fmt: skip
    # Dying takes the kernel a few milliseconds (memory first, sockets last): requests that reach
    # the host meanwhile are accepted and then reset. Each failure is such a request, in flight
    # while the host died; none started once it was gone.
    assert gone - signalled < 1.0
    in_flight = [f for f in failures if f.started < gone and f.ended > signalled]
    assert in_flight == failures, [(f.started - gone, f.detail) for f in failures]


def test_a_restarted_host_starts_from_its_cache_and_rejoins_the_balancer(shared: Shared) -> None:
    cluster, current = shared.cluster, shared.versions[1]  # where the alias points now
    victim = cluster.hosts[1]
    if shared.servers[victim.name].poll() is None:
        pytest.skip("needs the host killed by the test before")
    before = downloads(cluster)
    shared.servers.start(victim)
    netns_cluster.wait_ready(cluster, victim, shared.servers[victim.name])
    netns_cluster.wait_balancer(cluster, {victim.name: "UP"})
    assert served_digest(victim) == current.digest
    if cluster.store == "s3":
        assert cached(cluster, victim, current)
        assert downloads(cluster) == before  # verified from its cache; nothing fetched
    before = request_count(victim)
    with httpx.Client(base_url=cluster.balancer_url, timeout=10.0) as client:
        for _ in range(6):
            assert client.post("/v2/models/iris/infer", json=shared.body).status_code == 200
    assert request_count(victim) - before == 2


def pids_in(namespace: str) -> list[str]:
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    return done.stdout.split()


def test_leftovers_of_a_dead_run_are_removed() -> None:
    """A run whose owner died (a crashed test, a killed script) is removed by the next run's clean-up:
    its processes (those in its namespaces and its S3 endpoint), namespaces, links, database and
    folder."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    cluster = netns_cluster.create(1, owner=dead.pid)
    namespace = cluster.hosts[0].namespace
    orphan = subprocess.Popen(["ip", "netns", "exec", namespace, "sleep", "300"])
    try:
        deadline = time.monotonic() + 10
        while str(orphan.pid) not in pids_in(namespace):  # inside once `ip netns exec` has entered it
            assert time.monotonic() < deadline and orphan.poll() is None, "the process never entered"
            time.sleep(0.02)
        assert cluster.run in netns_cluster.clean(include_kept=False)
        assert orphan.wait(timeout=10) == -9
        assert cluster.s3_pid is not None and not Path(f"/proc/{cluster.s3_pid}").exists()  # moto, reaped
    finally:
        orphan.kill()
        netns_cluster.destroy(cluster)  # idempotent: nothing left to remove
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert cluster.run not in namespaces
    assert cluster.run not in links
    assert not cluster.folder.exists()
    with psycopg.connect(netns_cluster.PG_ADMIN) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [cluster.database]).fetchall()
    assert found == []

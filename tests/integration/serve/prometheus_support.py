"""A real Prometheus for the tests: scraping one server every second on loopback, with its own data
folder and the rules `shipyard monitor export` writes, queried over its HTTP API.

Debian's `prometheus` package provides the binary (`make test` installs it); test modules skip
without it with `pytestmark = needs_prometheus`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from servers import SHIPYARD, free_port, server_env

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus is not installed (Debian's `prometheus` package; `make test` installs it)",
)
DEADLINE_S = 30.0


class Prometheus:
    """A Prometheus process scraping one server every second, queried over its HTTP API."""

    def __init__(self, folder: Path, target: str, rules: Path) -> None:
        self.port = free_port()
        config = folder / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: [{str(rules)!r}]\n"
            "scrape_configs:\n"
            f"  - {{job_name: shipyard, static_configs: [{{targets: [{target!r}]}}]}}\n"
        )
        self.log = (folder / "prometheus.log").open("wb")
        assert PROMETHEUS is not None
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5.0)
        self.folder = folder

    def output(self) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")[-4000:]

    def until(self, what: str, check: Callable[[], Any]) -> Any:
        """Poll `check()` until it returns something truthy (returned), failing after DEADLINE_S."""
        deadline = time.monotonic() + DEADLINE_S
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.output()}")
            try:
                last = check()
            except httpx.TransportError as exc:
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.1)
        pytest.fail(f"never happened within {DEADLINE_S} s: {what}; last: {last!r}\n{self.output()}")

    def ready(self) -> None:
        self.until("prometheus is ready", lambda: self.client.get("/-/ready").status_code == 200)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector: [{"metric": labels, "value": [time, "text"]}]."""
        body = self.client.get("/api/v1/query", params={"query": expr}).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def series(self, expr: str, count: int) -> list[dict[str, Any]]:
        """The query's result once it holds `count` series."""
        return self.until(
            f"{count} series of {expr}", lambda: r if len(r := self.query(expr)) == count else None
        )

    def alerts(self, state: str) -> set[str]:
        body = self.client.get("/api/v1/alerts").json()
        return {a["labels"]["alertname"] for a in body["data"]["alerts"] if a["state"] == state}

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# Rules tuned to fire within seconds: any latency at all is over the p99 threshold, and a
# condition fires after holding 1 s.
TUNED = ["--p99-latency", "0.000001", "--for", "1s", "--window", "30s"]


def export_rules(folder: Path, flags: list[str] = TUNED) -> Path:
    """The alerting rules as `shipyard monitor export --prometheus-rules` writes them."""
    rules = folder / "rules.yml"
    done = subprocess.run(
        [str(SHIPYARD), "monitor", "export", "--prometheus-rules", str(rules), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=server_env(folder),
    )
    assert done.returncode == 0, done.stderr
    return rules


def number(result: list[dict[str, Any]]) -> float:
    """The sum of an instant query's values."""
    return sum(float(item["value"][1]) for item in result)

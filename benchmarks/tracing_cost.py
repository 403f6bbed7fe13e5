"""What tracing costs per request: the serving app in-process, tracing off and on, interleaved.

The app `create_app` builds serves the iris ONNX model and is called directly as an ASGI app
(no socket, no HTTP client: what is left is the server's own work per request), by `--clients`
concurrent callers sending single-row V1 requests. `off` has no OTLP endpoint; `on` exports
every span over OTLP/HTTP to a receiver process on loopback that answers 200. Targets run in
alternating rounds so a shared machine's drift cancels out; the figure is the process's CPU
time per request (the span export thread included), steadier than wall time on a shared host.
What it measures, its goal and the last figures: benchmarks/README.md.

    .venv/bin/python benchmarks/tracing_cost.py                      # 5 rounds of 4,000 requests
    .venv/bin/python benchmarks/tracing_cost.py --requests 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from harness.servers import free_port, log
from serve import BODY, MODEL_NAME, build_model, push_model

GOAL_OFF_US = 1.0  # tracing off may cost at most this much CPU per request over no tracing code
RECEIVER = """
import http.server, sys
class Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
"""
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": f"/v1/models/{MODEL_NAME}:predict",
    "raw_path": f"/v1/models/{MODEL_NAME}:predict".encode(),
    "query_string": b"",
    "root_path": "",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
}
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


@asynccontextmanager
async def serving(home: Path, endpoint: str | None) -> AsyncIterator[Any]:
    from shipyard.serve.app import create_app
    from shipyard.settings import Settings

    settings = Settings.load(home=home, tracing={"otlp_endpoint": endpoint})
    app = create_app(settings, [MODEL_NAME])
    async with app.app.router.lifespan_context(app.app):
        await app.state.loading
        yield app


async def call(app: Any, headers: list[tuple[bytes, bytes]]) -> int:
    status = 0
    sent = False
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await never  # the disconnect watcher waits here; the request ends first
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app({**SCOPE, "headers": headers}, receive, send)
    return status


async def load(app: Any, requests: int, clients: int, traceparent: bool) -> tuple[float, float]:
    """CPU and wall µs per request for `requests` requests from `clients` concurrent callers."""
    headers = list(HEADERS)
    if traceparent:
        headers.append((b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))

    async def client(count: int) -> None:
        for _ in range(count):
            status = await call(app, headers)
            if status != 200:
                raise RuntimeError(f"a request answered {status}")

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client(requests // clients) for _ in range(clients)))
    done = requests // clients * clients
    return (time.process_time() - cpu) / done * 1e6, (time.perf_counter() - wall) / done * 1e6


async def measure(home: Path, endpoint: str, args: argparse.Namespace) -> dict[str, list[float]]:
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    async with serving(home, None) as off, serving(home, endpoint) as on:
        apps = {"off": off, "on": on}
        for app in apps.values():
            await load(app, 500, args.clients, True)  # warm-up: the latency fit, caches
        for round_ in range(args.rounds):
            for label, app in apps.items():
                used, wall = await load(app, args.requests, args.clients, True)
                cpu[label].append(used)
                log(f"round {round_ + 1} {label}: {used:.1f} µs CPU, {wall:.1f} µs wall per request")
    return cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per round and target")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per target, alternating")
    parser.add_argument("--clients", type=int, default=8, help="concurrent callers")
    args = parser.parse_args()
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    try:
        with tempfile.TemporaryDirectory(prefix="shipyard-bench-tracing-") as tmp:
            home = Path(tmp)
            push_model(home, build_model(home))
            cpu = asyncio.run(measure(home, f"http://127.0.0.1:{port}", args))
    finally:
        receiver.terminate()
        receiver.wait()
    off, on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(
        f"tracing cost, CPU µs per request (median of {args.rounds} rounds, {args.clients} clients): "
        f"off {off:.1f}, on {on:.1f} (+{on - off:.1f} µs, {on / off - 1:+.0%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

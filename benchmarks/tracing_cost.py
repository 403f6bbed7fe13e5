"""What tracing costs per request: the serving app in-process, tracing off and on, interleaved.

The app `create_app` builds serves the iris ONNX model and is called directly as an ASGI app
(no socket, no HTTP client: what is left is the server's own work per request), by `--clients`
concurrent callers sending single-row V1 requests. `off` has no OTLP endpoint; `on` traces every
request and exports every span over OTLP/HTTP to a receiver process on loopback that answers 200;
`sampled` traces 1% (OTEL_TRACES_SAMPLER=parentbased_traceidratio). Targets run in alternating
rounds so a shared machine's drift cancels out; the figure is the process's CPU time per request,
the export thread's included (a round ends once its spans are sent), steadier than wall time.
What it measures, its goal and the last figures: benchmarks/README.md.

    .venv/bin/python benchmarks/tracing_cost.py                      # 5 rounds of 4,000 requests
    .venv/bin/python benchmarks/tracing_cost.py --requests 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvloop
from harness.servers import free_port, log
from serve import BODY, MODEL_NAME, build_model, push_model

SAMPLED = 0.01  # the `sampled` target traces this share of requests
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
async def serving(home: Path, endpoint: str | None, ratio: float | None = None) -> AsyncIterator[Any]:
    """The app, tracing to `endpoint` if given, a `ratio` of the traces if given."""
    from shipyard.serve.app import create_app
    from shipyard.settings import Settings

    if ratio is not None:  # read by the SDK as the tracer starts
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = str(ratio)
    settings = Settings.load(home=home, tracing={"otlp_endpoint": endpoint})
    app = create_app(settings, [MODEL_NAME])
    for name in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        os.environ.pop(name, None)
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
    """CPU and wall µs per request for `requests` requests from `clients` concurrent callers,
    the export of their spans included (the round waits until every span has been sent)."""
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
    tracer = getattr(app.state.repository, "tracer", None)  # None before tracing existed
    if tracer is not None:
        await asyncio.to_thread(tracer._processor.force_flush)
    done = requests // clients * clients
    return (time.process_time() - cpu) / done * 1e6, (time.perf_counter() - wall) / done * 1e6


async def measure(home: Path, endpoint: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Per target, the CPU µs per request of each round. `on` requests carry a sampled
    `traceparent` (every one is traced); `sampled` ones none, and 1% of them are traced."""
    cpu: dict[str, list[float]] = {"off": [], "on": [], "sampled": []}
    async with (
        serving(home, None) as off,
        serving(home, endpoint) as on,
        serving(home, endpoint, SAMPLED) as sampled,
    ):
        apps = {"off": off, "on": on, "sampled": sampled}
        for label, app in apps.items():
            await load(app, 500, args.clients, label == "on")  # warm-up: the latency fit, caches
        for round_ in range(args.rounds):
            for label, app in apps.items():
                used, wall = await load(app, args.requests, args.clients, label == "on")
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
    # Every span is kept for export (the default queue of 2,048 would drop most of a round's).
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(args.requests * 8)
    try:
        with tempfile.TemporaryDirectory(prefix="shipyard-bench-tracing-") as tmp:
            home = Path(tmp)
            push_model(home, build_model(home))
            # uvloop, as the server runs
            cpu = uvloop.run(measure(home, f"http://127.0.0.1:{port}", args))
    finally:
        receiver.terminate()
        receiver.wait()
    off, on, sampled = (statistics.median(cpu[label]) for label in ("off", "on", "sampled"))
    print(
        f"tracing cost, CPU µs per request (median of {args.rounds} rounds, {args.clients} clients): "
        f"off {off:.1f}; every request traced {on:.1f} (+{on - off:.1f} µs, {on / off - 1:+.0%}); "
        f"1% traced {sampled:.1f} (+{sampled - off:.1f} µs, {sampled / off - 1:+.0%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

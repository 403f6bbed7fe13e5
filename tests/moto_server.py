"""A real AWS endpoint on loopback: moto in server mode, as its own process (S3, SageMaker, STS…).

Tests point boto3 at it with AWS_ENDPOINT_URL, which boto3 honours like any user's endpoint."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

MOTO = Path(sys.executable).parent / "moto_server"
START_TIMEOUT_S = 60.0
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_server(env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Start moto's server and yield its URL once it answers; stop it afterwards.
    `env` adds settings, e.g. INITIAL_NO_AUTH_ACTION_COUNT=0 to check credentials."""
    port = _free_port()
    process = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                httpx.get(f"{url}/moto-api/", timeout=1.0)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {url}") from None
                time.sleep(0.05)  # polling a starting process: there is no event to wait on
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)

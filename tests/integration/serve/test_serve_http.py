"""What only a real server shows: the bytes on the wire and the docs page in a browser.

Everything else every route shares (errors, limits, probes, metrics, OpenAPI) is tested
in-process in tests/unit/serve/test_http.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import orjson
import pytest

from servers import Server

GOOD = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'


def _v1_request(body: bytes, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return (
        b"POST /v1/models/iris-onnx:predict " + version + b"\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
    )


def _read_responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """`count` whole responses (status line, body) read off a raw socket, by Content-Length."""
    data = b""
    responses: list[tuple[bytes, bytes]] = []
    while len(responses) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode("latin-1").lower()
            length = int(head.split("content-length:")[1].split("\r\n")[0])
            end = head_end + 4 + length
            if len(data) >= end:
                responses.append((data[: data.find(b"\r\n")], data[head_end + 4 : end]))
                data = data[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(responses)} of {count} responses"
        data += chunk
    assert data == b"", "bytes after the last response"
    return responses


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    bad = b'{"instances": [["a", 3.5, 1.4, 0.2]]}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_v1_request(GOOD) + _v1_request(bad) + _v1_request(GOOD))
        answers = _read_responses(sock, 3)
    statuses = [status for status, _ in answers]
    assert statuses == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 200 OK"]
    assert orjson.loads(answers[0][1]) == orjson.loads(answers[2][1])
    assert "expects numbers" in orjson.loads(answers[1][1])["error"]


@pytest.mark.parametrize(
    ("version", "connection"), [(b"HTTP/1.1", b"Connection: close\r\n"), (b"HTTP/1.0", b"")]
)
def test_a_closing_connection_gets_its_whole_response_first(
    server: Server, version: bytes, connection: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(_v1_request(GOOD, connection, version))
        [(status, body)] = _read_responses(sock, 1)
        assert sock.recv(1) == b""  # then the server closes
    assert status.endswith(b"200 OK")
    assert orjson.loads(body)["predictions"][0]["label"] == 0


def test_docs_page_renders_in_a_real_browser(server: Server, tmp_path: Path) -> None:
    """Headless Chromium loads /docs: the page lists each served model's routes and schema."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/install-debian-tool.sh chromium installs it)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", f"{server.url}/docs"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "Shipyard inference server" in dom
    assert "POST /v2/models/iris/infer" in dom and "POST /v1/models/iris-onnx:predict" in dom
    shot = tmp_path / "docs.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,900", f"{server.url}/docs"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one

"""What every route shares: error bodies and statuses, body limits, probes, metrics, OpenAPI, docs."""

from __future__ import annotations

import gzip
import shutil
import socket
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_support import MAX_BODY_BYTES, Server, assert_error

ROW = [5.1, 3.5, 1.4, 0.2]
V2_ROW = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}


# -- malformed requests ---------------------------------------------------------------------


def test_malformed_json_is_400(http: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    assert_error(
        http.post("/v2/models/iris-onnx/infer", content=b'{"inputs": [', headers=headers), 400, "malformed"
    )
    assert_error(
        http.post("/v1/models/iris-onnx:predict", content=b"{nope}", headers=headers), 400, "not valid JSON"
    )
    assert_error(http.post("/invocations", content=b"[1, 2", headers=headers), 400, "not valid JSON")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [("abc", "byte count"), ("-5", "byte count"), ("100000", "outside the body")],
    ids=["not-a-number", "negative", "past-the-end"],
)
def test_bad_binary_header_is_400(http: httpx.Client, header: str, fragment: str) -> None:
    response = http.post(
        "/v2/models/iris-onnx/infer",
        content=orjson.dumps(V2_ROW),
        headers={"Inference-Header-Content-Length": header},
    )
    assert_error(response, 400, "Inference-Header-Content-Length", fragment)


def test_binary_sizes_that_do_not_add_up_are_400(http: httpx.Client) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "X", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
            ]
        }
    )
    response = http.post(
        "/v2/models/iris-onnx/infer",
        content=header + b"\0" * 12,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert_error(response, 400, "binary_data_size 16", "only 12 bytes")


def test_wrong_content_type_is_415(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/iris-onnx:predict", content=b"instances=1", headers={"content-type": "text/plain"}
    )
    assert_error(response, 415, "text/plain", "application/json")


def test_unsupported_content_encoding_is_415(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/iris-onnx:predict",
        content=orjson.dumps({"instances": [ROW]}),
        headers={"content-type": "application/json", "content-encoding": "br"},
    )
    assert_error(response, 415, "'br'")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_bodies_are_accepted(http: httpx.Client, encoding: str) -> None:
    raw = orjson.dumps({"instances": [ROW]})
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    response = http.post(
        "/v1/models/iris-onnx:predict",
        content=body,
        headers={"content-type": "application/json", "content-encoding": encoding},
    )
    assert response.status_code == 200, response.text


def test_corrupt_compressed_body_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/models/iris-onnx:predict",
        content=b"\x1f\x8b not really gzip",
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_error(response, 400, "gzip")


# -- body limit -----------------------------------------------------------------------------


def big_v1_body(size: int) -> bytes:
    row = len(orjson.dumps(ROW)) + 1  # with its comma
    body = orjson.dumps({"instances": [ROW] * (size // row + 1)})
    assert len(body) > size
    return body


@pytest.mark.parametrize(
    "path",
    ["/v1/models/iris-onnx:predict", "/v2/models/iris-onnx/infer", "/invocations"],
    ids=["v1", "v2", "sagemaker"],
)
def test_body_over_the_limit_is_413(http: httpx.Client, path: str) -> None:
    body = big_v1_body(MAX_BODY_BYTES + 1000)
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert_error(response, 413, "limit", str(MAX_BODY_BYTES))


def test_chunked_body_over_the_limit_is_413_while_reading(http: httpx.Client) -> None:
    body = big_v1_body(MAX_BODY_BYTES + 1000)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = http.post(
        "/v1/models/iris-onnx:predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "limit")


def test_compressed_body_that_inflates_over_the_limit_is_413(http: httpx.Client) -> None:
    bomb = gzip.compress(b" " * (MAX_BODY_BYTES * 3))
    assert len(bomb) < MAX_BODY_BYTES // 100
    response = http.post(
        "/v1/models/iris-onnx:predict",
        content=bomb,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert_error(response, 413, "decompressed")


def test_body_just_under_the_limit_is_served(http: httpx.Client) -> None:
    rows = (MAX_BODY_BYTES - 100) // (len(orjson.dumps(ROW)) + 1)
    body = orjson.dumps({"instances": [ROW] * rows})
    assert len(body) < MAX_BODY_BYTES
    response = http.post(
        "/v1/models/iris-onnx:predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text[:200]
    assert len(response.json()["predictions"]) == rows


# -- routes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/nope", "/v2/models/iris/explain", "/v3", "/v2/models/iris/versions/1/x/y"]
)
def test_unknown_route_is_404_json(http: httpx.Client, path: str) -> None:
    assert_error(http.get(path), 404, path)


def test_wrong_method_is_405_json(http: httpx.Client) -> None:
    assert_error(http.get("/v2/models/iris/infer"), 405, "GET")
    assert_error(http.delete("/healthz"), 405)


# -- the wire: responses are gathered into one write, never held back or reordered ----------
GOOD = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'


def _v1_request(body: bytes, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return (
        b"POST /v1/models/iris-onnx:predict " + version + b"\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
    )


def _read_responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """`count` whole responses (status line, body) read off a raw socket, by Content-Length."""
    data, responses = b"", list[tuple[bytes, bytes]]()
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


# -- probes ---------------------------------------------------------------------------------


def test_healthz_and_readyz(http: httpx.Client) -> None:
    live = http.get("/healthz")
    assert live.status_code == 200 and live.json() == {"live": True}
    assert live.headers["content-type"] == "application/json"
    assert "server" not in live.headers and "date" in live.headers  # no software name, RFC 9110 date
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


# -- metrics --------------------------------------------------------------------------------


def scrape(http: httpx.Client) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name → [(labels, value)] from /metrics."""
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def requests_counted(samples: dict[str, list[tuple[dict[str, str], float]]], **labels: str) -> float:
    return sum(
        value
        for sample_labels, value in samples.get("shipyard_server_requests_total", [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


def test_metrics_count_requests_by_model_version_protocol_and_status(http: httpx.Client) -> None:
    ok = {"model": "iris", "version": "2", "protocol": "v2", "status": "200"}
    bad = {"model": "iris-onnx", "version": "1", "protocol": "v1", "status": "400"}
    v2_body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}

    before = scrape(http)
    for _ in range(3):
        assert http.post("/v2/models/iris/versions/2/infer", json=v2_body).status_code == 200
    assert http.post("/v1/models/iris-onnx:predict", json={"instances": [[1, 2]]}).status_code == 400
    after = scrape(http)

    assert requests_counted(after, **ok) - requests_counted(before, **ok) == 3
    assert requests_counted(after, **bad) - requests_counted(before, **bad) == 1
    for labels, _ in after["shipyard_server_requests_total"]:
        assert set(labels) == {"model", "version", "protocol", "status"}
    assert any(k.startswith("shipyard_server_request_duration_seconds") for k in after)
    batch_rows = [lab for lab, _ in after["shipyard_batcher_batch_size_rows_count"]]
    assert {"model": "iris", "version": "2"} in batch_rows
    assert "shipyard_batcher_queue_depth_requests" in after


def test_errors_are_counted_by_kind(http: httpx.Client) -> None:
    def errors(kind: str) -> float:
        rows = scrape(http).get("shipyard_server_errors_total", [])
        return sum(v for labels, v in rows if labels.get("status") == kind and labels["protocol"] == "v1")

    not_found, invalid = errors("not_found"), errors("invalid_input")
    assert http.post("/v1/models/iris/versions/9:predict", json={"instances": [ROW]}).status_code == 404
    assert http.post("/v1/models/iris-onnx:predict", json={"instances": [[1, 2]]}).status_code == 400
    assert errors("not_found") - not_found == 1
    assert errors("invalid_input") - invalid == 1


def test_metrics_never_label_with_user_input(http: httpx.Client) -> None:
    assert http.post("/v2/models/attacker-chosen-name/infer", json=V2_ROW).status_code == 404
    assert http.post("/v1/models/another-made-up-name:predict", json={"instances": [ROW]}).status_code == 404
    text = http.get("/metrics").text
    assert "attacker-chosen-name" not in text and "another-made-up-name" not in text


# -- OpenAPI and docs -------------------------------------------------------------------------


def test_openapi_is_generated_from_the_signatures(http: httpx.Client) -> None:
    import schemathesis

    response = http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] and spec["info"]["version"]
    for name in ("iris", "iris-onnx", "multi"):
        assert f"/v2/models/{name}/infer" in spec["paths"]
        assert f"/v1/models/{name}:predict" in spec["paths"]
    row = spec["paths"]["/v1/models/iris-onnx:predict"]["post"]["requestBody"]["content"]["application/json"]
    items = row["schema"]["properties"]["instances"]["items"]
    assert items["type"] == "array" and items["minItems"] == items["maxItems"] == 4
    assert items["items"]["type"] == "number"
    multi = spec["paths"]["/v1/models/multi:predict"]["post"]["requestBody"]["content"]["application/json"]
    assert set(multi["schema"]["properties"]["instances"]["items"]["required"]) == {"x", "n", "s"}
    # a schema tool loads it and sees every operation
    # (an Err has no .ok(): an operation the tool cannot read fails the test right here)
    operations = [op.ok() for op in schemathesis.openapi.from_dict(spec).get_all_operations()]  # type: ignore[union-attr]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v2/models/iris/infer",
        "POST /v1/models/multi:predict",
        "GET /healthz",
    }


def test_docs_page(http: httpx.Client) -> None:
    response = http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.lstrip().lower().startswith("<!doctype html>")
    assert "/v2/models/iris-onnx/infer" in response.text
    assert "/openapi.json" in response.text
    assert "<script" not in response.text.lower()  # self-contained, nothing from a CDN


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

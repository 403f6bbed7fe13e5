"""`shipyard serve` with tracing on: each worker exports its requests' spans over OTLP/HTTP to a
collector on loopback (`otlp_receiver.py` decodes the real protobuf), a caller's `traceparent` is
the parent of the request's span, and the spans of one request and of its batch link up."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_support import ServeModels

from otlp_receiver import ReceivedSpan, otlp_receiver
from servers import run_to_exit

PHASES = ("receive", "decode", "queue", "encode")
ROW = [5.1, 3.5, 1.4, 0.2]
MAX_ROUNDS = 25  # rounds of 8 fresh connections until both workers answered: never near this


def new_traceparent() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def request_span(spans: list[ReceivedSpan], trace_id: str) -> ReceivedSpan | None:
    return next((s for s in spans if s.trace_id == trace_id and s.kind == "SPAN_KIND_SERVER"), None)


def complete(trace_id: str) -> Callable[[list[ReceivedSpan]], bool]:
    """Whether a request's span, its phases and its batch with the inference have all arrived."""

    def check(spans: list[ReceivedSpan]) -> bool:
        request = request_span(spans, trace_id)
        if request is None or not request.links:
            return False
        batch_trace, batch_span = request.links[0]
        names = {s.name for s in spans if s.trace_id in (trace_id, batch_trace)}
        return {*PHASES, "batch", "inference"} <= names and any(s.span_id == batch_span for s in spans)

    return check


def check_request(spans: list[ReceivedSpan], trace_id: str, caller_span: str, protocol: str) -> ReceivedSpan:
    """A request's spans, as designed (see shipyard.monitor.tracing); returns its span."""
    request = request_span(spans, trace_id)
    assert request is not None
    assert request.name == f"{protocol} {'infer' if protocol == 'v2' else 'predict'}"
    assert request.parent_span_id == caller_span  # the caller's span is its parent
    assert request.scope == "shipyard"
    assert request.attributes["shipyard.protocol"] == protocol
    assert request.attributes["shipyard.model.name"] == "iris-onnx"
    assert request.attributes["shipyard.model.version"] == 1
    assert request.attributes["http.response.status_code"] == 200
    assert request.resource["service.name"] == "shipyard"
    phases = {s.name: s for s in spans if s.parent_span_id == request.span_id}
    assert set(phases) == set(PHASES)
    for before, after in itertools.pairwise(PHASES):
        assert phases[before].end_ns <= phases[after].start_ns
    assert request.start_ns == phases["receive"].start_ns and phases["encode"].end_ns == request.end_ns
    assert all(p.trace_id == trace_id for p in phases.values())

    # The batch: a root span of its own trace, in the same worker, linked both ways.
    ((batch_trace, batch_id),) = request.links
    (batch,) = [s for s in spans if s.span_id == batch_id]
    assert batch.name == "batch" and batch.trace_id == batch_trace != trace_id
    assert batch.parent_span_id == ""
    assert (trace_id, request.span_id) in batch.links
    assert batch.attributes["shipyard.batch.id"] == request.attributes["shipyard.batch.id"]
    assert batch.attributes["shipyard.batch.size"] == request.attributes["shipyard.batch.size"] >= 1
    assert batch.attributes["shipyard.model.name"] == "iris-onnx"
    assert batch.resource["process.pid"] == request.resource["process.pid"]
    (inference,) = [s for s in spans if s.parent_span_id == batch.span_id]
    assert inference.name == "inference" and inference.trace_id == batch.trace_id
    assert batch.start_ns <= inference.start_ns <= inference.end_ns <= batch.end_ns
    assert phases["queue"].end_ns <= inference.start_ns and inference.end_ns <= phases["encode"].start_ns
    return request


def test_each_worker_exports_its_requests_spans(serve_models: ServeModels, serve_launcher: Any) -> None:
    with otlp_receiver() as receiver:
        env = {
            "SHIPYARD_TRACING__OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms (default: 5 s)
        }
        with serve_launcher(serve_models.home, ["iris-onnx"], args=["--workers", "2"], env=env) as server:
            sent = {"v2": new_traceparent(), "v1": new_traceparent()}
            with server.client() as client:
                v2 = client.post(
                    "/v2/models/iris-onnx/infer",
                    json={"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
                    headers={"traceparent": f"00-{sent['v2'][0]}-{sent['v2'][1]}-01"},
                )
                v1 = client.post(
                    "/v1/models/iris-onnx:predict",
                    json={"instances": [ROW]},
                    headers={"traceparent": f"00-{sent['v1'][0]}-{sent['v1'][1]}-01"},
                )
            assert v2.status_code == v1.status_code == 200
            for protocol, response in (("v2", v2), ("v1", v1)):
                trace_id, caller_span = sent[protocol]
                spans = receiver.wait_for(complete(trace_id), f"the spans of the {protocol} request")
                request = check_request(spans, trace_id, caller_span, protocol)
                assert response.headers["traceparent"] == f"00-{trace_id}-{request.span_id}-01"

            # Fresh connections land on either worker (SO_REUSEPORT): each exports its own spans.
            workers: set[Any] = set()
            for _ in range(MAX_ROUNDS):
                for _ in range(8):
                    with server.client() as client:  # a connection of its own
                        assert client.post(
                            "/v1/models/iris-onnx:predict", json={"instances": [ROW]}
                        ).is_success
                spans = receiver.wait_for(lambda s: len(s) > 0, "spans")
                workers = {s.resource.get("shipyard.worker") for s in spans if s.kind == "SPAN_KIND_SERVER"}
                if workers == {1, 2}:
                    break
            assert workers == {1, 2}
            pids = {s.resource["process.pid"] for s in spans}
            assert len(pids) == 2 and server.proc.pid not in pids  # the workers, not the supervisor


def test_tracing_without_its_extra_is_one_line(serve_models: ServeModels, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "opentelemetry"  # before site-packages: as if not installed
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('opentelemetry is not installed here')\n")
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "COLUMNS": "200"}
    done = run_to_exit(serve_models.home, ["iris-onnx"], env=env)
    assert done.returncode == 8, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: tracing (an OTLP endpoint is set")
    assert "'opentelemetry-sdk'" in lines[0] and "pip install 'shipyard[tracing]'" in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""

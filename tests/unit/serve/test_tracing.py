"""Tracing in-process: the spans of requests and batches, `traceparent` in and out, and the trace id
as an exemplar of the latency histogram in the OpenMetrics exposition.

The OTLP exporter is replaced by the SDK's in-memory one (no sockets here); the spans are read
once the app has stopped, which exports everything still buffered. That real OTLP protobuf
reaches a collector is tested against `shipyard serve` in tests/integration/serve.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from app_support import ROW, Home, Served, until
from fake_runtime import WAIT_S, Controls
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shipyard.monitor import _tracer
from shipyard.serve.app import create_app
from shipyard.settings import Settings

pytestmark = pytest.mark.anyio

ENDPOINT = "http://collector.test:4318"
PATH = "/v1/models/m:predict"
BODY = {"instances": [ROW]}
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


@dataclass(frozen=True)
class Seen:
    """An exported span, with the fields an ended span always has."""

    name: str
    kind: SpanKind
    trace_id: int
    span_id: int
    parent: int | None  # the parent's span id
    parent_is_remote: bool
    trace_state: dict[str, str]
    start: int
    end: int
    status: StatusCode
    attributes: dict[str, Any]
    links: set[int]  # the linked spans' ids

    @classmethod
    def of(cls, span: ReadableSpan) -> Seen:
        assert span.context is not None and span.start_time is not None and span.end_time is not None
        return cls(
            span.name,
            span.kind,
            span.context.trace_id,
            span.context.span_id,
            None if span.parent is None else span.parent.span_id,
            span.parent is not None and span.parent.is_remote,
            dict(span.context.trace_state),
            span.start_time,
            span.end_time,
            span.status.status_code,
            dict(span.attributes or {}),
            {link.context.span_id for link in span.links},
        )


class Exported:
    """The spans the app exported, and where it was told to send them."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.urls: list[str] = []

    def create(self, endpoint: str) -> InMemorySpanExporter:
        self.urls.append(endpoint)
        return self.exporter

    @property
    def spans(self) -> list[Seen]:
        return [Seen.of(span) for span in self.exporter.get_finished_spans()]

    def named(self, name: str) -> list[Seen]:
        return [s for s in self.spans if s.name == name]

    def children(self, parent: Seen) -> dict[str, Seen]:
        found = {s.name: s for s in self.spans if s.parent == parent.span_id}
        assert all(s.trace_id == parent.trace_id for s in found.values())
        return found


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[Exported]:
    spans = Exported()
    monkeypatch.setattr(_tracer, "OTLPSpanExporter", spans.create)
    yield spans


@asynccontextmanager
async def traced(home: Home, refs: list[str], **serve: Any) -> AsyncIterator[Served]:
    """The app with tracing on, in-process; its spans are all exported once the block ends."""
    settings = Settings.load(home=home.path, serve=serve, tracing={"otlp_endpoint": ENDPOINT})
    app = create_app(settings, refs)
    async with app.app.router.lifespan_context(app.app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as client:
            served = Served(app, client)
            await asyncio.wait_for(asyncio.shield(served.loading), WAIT_S)
            yield served


async def test_a_batch_links_the_requests_it_ran_and_each_request_links_back(
    fake: Controls, home: Home, exported: Exported
) -> None:
    home.push("m")
    held = fake.hold_predict(1)
    async with traced(home, ["m"]) as served:
        batcher = served.repository.models["m"].versions[1].batcher
        assert batcher is not None
        first = asyncio.create_task(served.client.post(PATH, json=BODY))
        await held.wait_reached()  # the first batch runs; the next three queue behind it
        queued = [asyncio.create_task(served.client.post(PATH, json=BODY)) for _ in range(3)]
        await until(lambda: batcher.depth == 3, "three requests queue")
        held.opened.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *queued), WAIT_S)
        assert [a.status_code for a in answers] == [200] * 4
    assert exported.urls == [f"{ENDPOINT}/v1/traces"]

    requests = exported.named("v1 predict")
    batches = sorted(exported.named("batch"), key=lambda s: int(s.attributes["shipyard.batch.id"]))
    assert len(requests) == 4 and len(batches) == 2
    alone, shared = batches
    assert shared.attributes == {
        "shipyard.model.name": "m",
        "shipyard.model.version": 1,
        "shipyard.batch.id": 2,
        "shipyard.batch.size": 3,
        "shipyard.batch.requests": 3,
    }
    assert alone.attributes["shipyard.batch.size"] == 1
    for batch in batches:  # a batch is shared work: a root span of its own trace
        assert batch.parent is None and batch.kind is SpanKind.INTERNAL
        assert batch.trace_id not in {r.trace_id for r in requests}
        inference = exported.children(batch)
        assert set(inference) == {"inference"}
        assert batch.start <= inference["inference"].start <= inference["inference"].end
        assert inference["inference"].end <= batch.end
    by_batch = {b.span_id: {r.span_id for r in requests if r.links == {b.span_id}} for b in batches}
    assert by_batch == {alone.span_id: alone.links, shared.span_id: shared.links}
    assert len(shared.links) == 3 and len(alone.links) == 1

    for request in requests:
        assert request.kind is SpanKind.SERVER and request.parent is None  # no traceparent sent
        batch = alone if request.links == {alone.span_id} else shared
        assert request.attributes["shipyard.batch.id"] == batch.attributes["shipyard.batch.id"]
        assert request.attributes["shipyard.batch.size"] == batch.attributes["shipyard.batch.size"]
        assert request.attributes["shipyard.protocol"] == "v1"
        assert request.attributes["shipyard.model.name"] == "m"
        assert request.attributes["shipyard.model.version"] == 1
        assert request.attributes["http.response.status_code"] == 200
        phases = exported.children(request)
        order = [phases[name] for name in ("receive", "decode", "queue", "encode")]
        assert set(phases) == {"receive", "decode", "queue", "encode"}
        assert order[0].start == request.start and order[-1].end == request.end
        for before, after in itertools.pairwise(order):
            assert before.end <= after.start  # one after the other, within the request
        # The queue ends as the batch starts, and the answer is encoded once the batch is over.
        assert abs(phases["queue"].end - batch.start) < 5_000_000
        assert phases["encode"].start >= batch.end - 5_000_000
    waited = [exported.children(r)["queue"] for r in requests if r.links == shared.links]
    ran = exported.children(alone)["inference"]
    assert all(q.end >= ran.end - 5_000_000 for q in waited)  # they queued behind it


async def test_a_failed_batch_and_its_requests_are_marked_as_errors(
    fake: Controls, home: Home, exported: Exported
) -> None:
    home.push("m")
    fake.fail_predict.add(1)
    async with traced(home, ["m"]) as served:
        assert (await served.client.post(PATH, json=BODY)).status_code == 500
    (batch,) = exported.named("batch")
    (request,) = exported.named("v1 predict")
    assert batch.status is StatusCode.ERROR
    assert "inference" not in exported.children(batch)  # the runtime never answered
    assert request.status is StatusCode.ERROR
    assert request.attributes["http.response.status_code"] == 500


async def test_a_4xx_is_not_a_server_error_and_has_no_batch(
    fake: Controls, home: Home, exported: Exported
) -> None:
    home.push("m")
    async with traced(home, ["m"]) as served:
        answer = await served.client.post(PATH, json={"instances": [[1, 2]]})
        assert answer.status_code == 400
    (request,) = exported.named("v1 predict")
    assert request.status is StatusCode.UNSET
    assert set(exported.children(request)) == {"receive", "decode"}  # it never reached a queue
    assert not exported.named("batch")


async def test_traceparent_is_honoured_and_returned(fake: Controls, home: Home, exported: Exported) -> None:
    home.push("m")
    async with traced(home, ["m"]) as served:
        sent = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=1"}
        answer = await served.client.post(PATH, json=BODY, headers=sent)
        fresh = await served.client.post(PATH, json=BODY)
        ignored = await served.client.post(PATH, json=BODY, headers={"traceparent": "00-not-a-trace"})
    child, new, unrelated = exported.named("v1 predict")
    assert child.parent_is_remote and f"{child.parent:016x}" == CALLER_SPAN
    assert f"{child.trace_id:032x}" == CALLER_TRACE
    assert child.trace_state == {"vendor": "1"}
    assert answer.headers["traceparent"] == f"00-{CALLER_TRACE}-{child.span_id:016x}-01"
    # Without one (or with a malformed one, as W3C says) the request starts a trace of its own.
    for span, response in ((new, fresh), (unrelated, ignored)):
        assert span.parent is None and f"{span.trace_id:032x}" != CALLER_TRACE
        version, trace, parent, flags = response.headers["traceparent"].split("-")
        assert (version, trace, parent) == ("00", f"{span.trace_id:032x}", f"{span.span_id:016x}")
        assert int(flags, 16) & 1  # sampled (a new trace also sets W3C level 2's "random" flag)


async def test_a_request_the_sampler_drops_leaves_no_span(
    fake: Controls, home: Home, exported: Exported, monkeypatch: pytest.MonkeyPatch
) -> None:
    home.push("m")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")  # no trace of its own is kept
    async with traced(home, ["m"]) as served:
        unsampled = await served.client.post(
            PATH, json=BODY, headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}
        )
        untraced = await served.client.post(PATH, json=BODY)
        sampled = await served.client.post(
            PATH, json=BODY, headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        )
    assert [r.status_code for r in (unsampled, untraced, sampled)] == [200] * 3
    assert "traceparent" not in unsampled.headers and "traceparent" not in untraced.headers
    # The caller's decision stands (parent-based), and its batch is traced with it.
    (request,) = exported.named("v1 predict")
    assert f"{request.trace_id:032x}" == CALLER_TRACE and "traceparent" in sampled.headers
    (batch,) = exported.named("batch")
    assert request.links == {batch.span_id} and batch.links == {request.span_id}


async def test_every_inference_protocol_is_traced(fake: Controls, home: Home, exported: Exported) -> None:
    home.push("m")
    v2 = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]}
    async with traced(home, ["m"]) as served:
        assert (await served.client.post("/v2/models/m/infer", json=v2)).status_code == 200
        assert (await served.client.post("/invocations", json=BODY)).status_code == 200
        metadata = await served.client.get("/v2/models/m")
        assert metadata.status_code == 200 and "traceparent" in metadata.headers
    names = {s.name: s for s in exported.spans if s.kind is SpanKind.SERVER}
    assert set(names) == {"v2 infer", "sagemaker invocations", "v2 model_metadata"}
    assert names["v2 infer"].attributes["shipyard.protocol"] == "v2"
    assert names["sagemaker invocations"].attributes["shipyard.protocol"] == "sagemaker"
    assert set(exported.children(names["v2 infer"])) == {"receive", "decode", "queue", "encode"}
    assert not exported.children(names["v2 model_metadata"])  # no body, no queue: no phases


async def test_the_trace_id_is_an_exemplar_of_the_request_latency(
    fake: Controls, home: Home, exported: Exported
) -> None:
    home.push("exemplars")
    async with traced(home, ["exemplars"]) as served:
        path = "/v1/models/exemplars:predict"
        answer = await served.client.post(path, json=BODY)
        trace = answer.headers["traceparent"].split("-")[1]
        scraped = await served.client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        classic = await served.client.get("/metrics")
    assert scraped.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    lines = [
        line
        for line in scraped.text.splitlines()
        if line.startswith("shipyard_server_request_duration_seconds_bucket") and 'model="exemplars"' in line
    ]
    with_exemplar = [line for line in lines if f'# {{trace_id="{trace}"}}' in line]
    assert len(with_exemplar) == 1, lines  # on the bucket the observation fell into
    assert scraped.text.rstrip().endswith("# EOF")
    assert classic.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'model="exemplars"' in classic.text and "trace_id" not in classic.text


def test_tracing_off_imports_no_opentelemetry(home: Home, tmp_path: Path) -> None:
    """The server's process, serving a request with tracing off, has not imported OpenTelemetry."""
    home.push("m")
    probe = f"""
import asyncio, json, sys
import httpx
from shipyard.serve.app import create_app
from shipyard.settings import Settings

async def main():
    app = create_app(Settings.load(home={str(home.path)!r}), ["m"])
    async with app.app.router.lifespan_context(app.app):
        await app.state.loading
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as client:
            sent = {{"traceparent": "00-{CALLER_TRACE}-{CALLER_SPAN}-01"}}
            answer = await client.post({PATH!r}, json={BODY!r}, headers=sent)
            metrics = await client.get("/metrics", headers={{"Accept": "application/openmetrics-text"}})
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    traced = ["traceparent" in answer.headers, "trace_id" in metrics.text]
    print(json.dumps([answer.status_code, *traced, loaded]))

asyncio.run(main())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPYARD_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    status, traceparent, exemplar, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == 200
    assert (traceparent, exemplar, loaded) == (False, False, [])

"""The OpenTelemetry side of tracing, imported only once an OTLP endpoint is configured.

The request path only notes when each phase ended (`time.perf_counter()`, a few assignments);
the phase spans are made when the request ends, stamped with those moments. So a request holds
one open span, and a phase that never began (a 400 before its body was read) leaves no span.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

import shipyard
from shipyard.monitor.tracing import SCOPE_KEY

_PROPAGATED = (b"traceparent", b"tracestate")


class RequestTrace:
    """One request's span, and when its phases ended (perf_counter seconds; None: not reached)."""

    __slots__ = (
        "_tracer",
        "batch",
        "batch_end",
        "batch_start",
        "begun",
        "begun_ns",
        "queued",
        "received",
        "span",
    )

    def __init__(self, tracer: trace.Tracer, span: Span, begun_ns: int, begun: float) -> None:
        self._tracer = tracer
        self.span = span
        self.begun_ns = begun_ns
        self.begun = begun
        self.received: float | None = None  # the body was read
        self.queued: float | None = None  # decoded, handed to the batcher
        self.batch_start: float | None = None
        self.batch_end: float | None = None
        self.batch: BatchTrace | None = None

    def at(self, moment: float) -> int:
        """A perf_counter moment as the epoch nanoseconds spans are stamped with."""
        return self.begun_ns + int((moment - self.begun) * 1e9)

    def finish(self, response: Any, model: str, version: str) -> dict[str, str]:
        """End the request's span and its phases' spans and put `traceparent` on the response;
        returns the exemplar labels for the request's latency observation."""
        ended = time.perf_counter()
        span = self.span
        parent = trace.set_span_in_context(span)

        def phase(name: str, start: float, end: float) -> None:
            self._tracer.start_span(name, parent, start_time=self.at(start)).end(self.at(end))

        if self.received is not None:
            phase("receive", self.begun, self.received)
            phase("decode", self.received, self.queued or ended)
        if self.queued is not None:
            phase("queue", self.queued, self.batch_start or ended)
        if self.batch_end is not None:
            phase("encode", self.batch_end, ended)
        status = response.status_code
        attributes: dict[str, AttributeValue] = {"http.response.status_code": status}
        if model != "-":
            attributes["shipyard.model.name"] = model
        if version != "-":
            attributes["shipyard.model.version"] = int(version)
        if self.batch is not None:
            attributes["shipyard.batch.id"] = self.batch.number
            attributes["shipyard.batch.size"] = self.batch.rows
            span.add_link(self.batch.span.get_span_context())
        span.set_attributes(attributes)
        if status >= 500:  # a 4xx is the client's error, not the server's (HTTP conventions)
            span.set_status(Status(StatusCode.ERROR))
        span.end(self.at(ended))
        context = span.get_span_context()
        trace_id = f"{context.trace_id:032x}"
        traceparent = f"00-{trace_id}-{context.span_id:016x}-{context.trace_flags:02x}"
        response.raw_headers.append((b"traceparent", traceparent.encode()))
        return {"trace_id": trace_id}


class BatchTrace:
    """The span of one batch, linked to the spans of the requests it runs."""

    __slots__ = ("_ran", "_tracer", "number", "rows", "span", "traces")

    def __init__(
        self,
        tracer: trace.Tracer,
        traces: list[RequestTrace],
        number: int,
        rows: int,
        attributes: dict[str, AttributeValue],
    ) -> None:
        self._tracer = tracer
        self._ran = False
        self.number = number
        self.rows = rows
        self.traces = traces
        started = time.perf_counter()
        self.span = tracer.start_span(
            "batch",
            Context(),  # a root: the batch belongs to no one request
            links=[Link(t.span.get_span_context()) for t in traces],
            attributes={**attributes, "shipyard.batch.id": number, "shipyard.batch.size": rows},
        )
        for request in traces:
            request.batch_start = started
            request.batch = self

    def ran(self, rows: int, seconds: float) -> None:
        """The runtime answered `rows` rows in `seconds` (its own time, measured where it ran)."""
        self._ran = True
        ended = time.time_ns()
        inference = self._tracer.start_span(
            "inference",
            trace.set_span_in_context(self.span),
            start_time=ended - int(seconds * 1e9),
            attributes={"shipyard.batch.size": rows},
        )
        inference.end(ended)

    def end(self) -> None:
        ended = time.perf_counter()
        for request in self.traces:
            request.batch_end = ended
        if not self._ran:
            self.span.set_status(Status(StatusCode.ERROR, "the runtime did not answer this batch"))
        self.span.end()


BatchStarter = Callable[[list[RequestTrace], int, int], BatchTrace | None]


class Tracer:
    """Makes the spans of requests and batches and exports them from a background thread."""

    def __init__(self, url: str, service_name: str, worker: int = 0) -> None:
        attributes: dict[str, AttributeValue] = {
            "service.name": service_name,
            "service.version": shipyard.__version__,
            "process.pid": os.getpid(),
        }
        if worker:
            attributes["shipyard.worker"] = worker
        # The sampler and exporter options (OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_HEADERS, …)
        # are read by the SDK from the environment, as every OpenTelemetry service does.
        self._provider = TracerProvider(resource=Resource.create(attributes))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        self._tracer = self._provider.get_tracer("shipyard", shipyard.__version__)
        self._propagator = TraceContextTextMapPropagator()

    def begin(self, scope: MutableMapping[str, Any], name: str, protocol: str) -> RequestTrace | None:
        """Start a request's span (a child of its `traceparent`); None if it is not sampled."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _PROPAGATED}
        parent = self._propagator.extract(carrier) if carrier else None
        begun_ns, begun = time.time_ns(), time.perf_counter()
        span = self._tracer.start_span(
            name,
            parent,
            SpanKind.SERVER,
            start_time=begun_ns,
            attributes={
                "shipyard.protocol": protocol,
                "http.request.method": scope["method"],
                "url.path": scope["path"],
            },
        )
        if not span.is_recording():
            return None
        request = RequestTrace(self._tracer, span, begun_ns, begun)
        scope[SCOPE_KEY] = request
        return request

    def batches(self, model: str, version: int) -> BatchStarter:
        """What a version's batcher calls as a batch starts: its traced requests, its request and
        row counts; it answers with the batch's trace (None if no request in it is traced)."""
        numbers = itertools.count(1)
        labels: dict[str, AttributeValue] = {"shipyard.model.name": model, "shipyard.model.version": version}

        def start(traces: list[RequestTrace], requests: int, rows: int) -> BatchTrace | None:
            if not traces:
                return None
            attributes = {**labels, "shipyard.batch.requests": requests}
            return BatchTrace(self._tracer, traces, next(numbers), rows, attributes)

        return start

    def shutdown(self) -> None:
        """Export what is still buffered, then stop the exporter (blocks: call it in a thread)."""
        self._provider.shutdown()

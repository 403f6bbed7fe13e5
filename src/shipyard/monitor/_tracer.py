"""The OpenTelemetry side of tracing, imported only once an OTLP endpoint is configured.

The request path only notes when each phase ended (`time.perf_counter()`, one assignment); the
spans are made when the work ends, stamped with those moments, so a phase a request never
reached (a 400 before its body was read) leaves no span.

Spans are made as finished `ReadableSpan`s and handed straight to the span processor, after the
SDK's sampler (OTEL_TRACES_SAMPLER) decided, as its `start_span` would. Every attribute and link
of a span is known by then, and the SDK's live spans (locks, attribute checks, context
look-ups) cost about nine times as much per span: 58 µs against 6.6 µs on a 2-core CI machine.
So an untraced request (a sampler's "drop") costs a sampling decision and nothing more.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

import shipyard
from shipyard.monitor.tracing import SCOPE_KEY

_PROPAGATED = (b"traceparent", b"tracestate")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_ERROR = Status(StatusCode.ERROR)
Attributes = dict[str, AttributeValue]


class Tracer:
    """Makes the spans of requests and batches, exported by a background thread of this process."""

    def __init__(self, url: str, service_name: str, worker: int = 0) -> None:
        attributes: Attributes = {
            "service.name": service_name,
            "service.version": shipyard.__version__,
            "process.pid": os.getpid(),
        }
        if worker:
            attributes["shipyard.worker"] = worker
        # The sampler and the exporter's options (OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_HEADERS,
        # OTEL_BSP_…) are read by the SDK from the environment, as in any OpenTelemetry service.
        self._provider = TracerProvider(resource=Resource.create(attributes))
        self._sampler = self._provider.sampler
        self._processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=url))
        self._provider.add_span_processor(self._processor)
        self._scope = InstrumentationScope("shipyard", shipyard.__version__)
        self._ids = RandomIdGenerator()
        self._propagator = TraceContextTextMapPropagator()

    def begin(self, scope: MutableMapping[str, Any], name: str, protocol: str) -> RequestTrace | None:
        """Start a request's span (a child of its `traceparent`); None if it is not sampled."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _PROPAGATED}
        parent = self._propagator.extract(carrier, Context()) if carrier else Context()
        context = self.sample(name, SpanKind.SERVER, parent)
        if context is None:
            return None
        caller = get_current_span(parent).get_span_context()
        request = RequestTrace(self, name, context, caller if caller.is_valid else None)
        request.attributes.update(
            {"shipyard.protocol": protocol, "http.request.method": scope["method"], "url.path": scope["path"]}
        )
        scope[SCOPE_KEY] = request
        return request

    def sample(self, name: str, kind: SpanKind, parent: Context) -> SpanContext | None:
        """A new span's context, if the sampler keeps it (a root span where `parent` has none)."""
        up = get_current_span(parent).get_span_context()
        trace_id = up.trace_id if up.is_valid else self._ids.generate_trace_id()
        decision = self._sampler.should_sample(parent, trace_id, name, kind)
        if decision.decision is not Decision.RECORD_AND_SAMPLE:  # a drop (or record-only: never sent)
            return None
        return SpanContext(trace_id, self._ids.generate_span_id(), False, _SAMPLED, decision.trace_state)

    def batches(self, model: str, version: int) -> BatchStarter:
        """What a version's batcher calls as a batch starts, with its traced requests and its
        request and row counts; returns the batch's trace (None if none of them is traced)."""
        numbers = itertools.count(1)
        labels: Attributes = {"shipyard.model.name": model, "shipyard.model.version": version}

        def start(traces: list[RequestTrace], requests: int, rows: int) -> BatchTrace | None:
            if not traces:
                return None
            # A root of its own, kept whenever a request it serves is: sampled on its own, most
            # traced requests would lose their batch under a ratio sampler.
            context = SpanContext(
                self._ids.generate_trace_id(), self._ids.generate_span_id(), False, _SAMPLED
            )
            links = [Link(t.context) for t in traces]
            number = next(numbers)
            attributes = {
                **labels,
                "shipyard.batch.id": number,
                "shipyard.batch.size": rows,
                "shipyard.batch.requests": requests,
            }
            return BatchTrace(self, context, links, traces, number, rows, attributes)

        return start

    def record(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        start_ns: int,
        end_ns: int,
        attributes: Attributes | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        links: list[Link] | None = None,
        status: Status | None = None,
    ) -> None:
        """Hand a finished span to the exporter."""
        self._processor.on_end(
            ReadableSpan(
                name,
                context,
                parent,
                self._provider.resource,
                attributes,
                links=links or (),
                kind=kind,
                status=status or Status(StatusCode.UNSET),
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=self._scope,
            )
        )

    def child(
        self, name: str, parent: SpanContext, start_ns: int, end_ns: int, attributes: Attributes | None = None
    ) -> None:
        """Record a finished span under `parent` (sampled, as its parent is)."""
        context = SpanContext(
            parent.trace_id, self._ids.generate_span_id(), False, _SAMPLED, parent.trace_state
        )
        self.record(name, context, parent, start_ns, end_ns, attributes)

    def shutdown(self) -> None:
        """Export what is still buffered, then stop the exporter (blocks: call it in a thread)."""
        self._provider.shutdown()


class RequestTrace:
    """One request's span, and when its phases ended (perf_counter seconds; None: not reached)."""

    __slots__ = (
        "_tracer",
        "attributes",
        "batch",
        "batch_end",
        "batch_start",
        "begun",
        "begun_ns",
        "caller",
        "context",
        "name",
        "queued",
        "received",
    )

    def __init__(self, tracer: Tracer, name: str, context: SpanContext, caller: SpanContext | None) -> None:
        self._tracer = tracer
        self.name = name
        self.context = context
        self.caller = caller  # the parent span, in the caller's process
        self.attributes: Attributes = {}
        self.begun_ns = time.time_ns()
        self.begun = time.perf_counter()
        self.received: float | None = None  # the body was read
        self.queued: float | None = None  # decoded, handed to the batcher
        self.batch_start: float | None = None
        self.batch_end: float | None = None
        self.batch: BatchTrace | None = None

    def at(self, moment: float) -> int:
        """A perf_counter moment as the epoch nanoseconds spans are stamped with."""
        return self.begun_ns + int((moment - self.begun) * 1e9)

    def finish(self, response: Any, model: str, version: str) -> dict[str, str]:
        """Record the request's span and its phases' spans and put `traceparent` on the response;
        returns the exemplar labels for the request's latency observation."""
        ended = time.perf_counter()
        context, at, child = self.context, self.at, self._tracer.child
        if self.received is not None:
            child("receive", context, at(self.begun), at(self.received))
            child("decode", context, at(self.received), at(self.queued or ended))
        if self.queued is not None:
            child("queue", context, at(self.queued), at(self.batch_start or ended))
        if self.batch_end is not None:
            child("encode", context, at(self.batch_end), at(ended))
        status = response.status_code
        attributes = self.attributes
        attributes["http.response.status_code"] = status
        if model != "-":
            attributes["shipyard.model.name"] = model
        if version != "-":
            attributes["shipyard.model.version"] = int(version)
        links = None
        if self.batch is not None:
            attributes["shipyard.batch.id"] = self.batch.number
            attributes["shipyard.batch.size"] = self.batch.rows
            links = [Link(self.batch.context)]
        self._tracer.record(
            self.name,
            context,
            self.caller,
            self.begun_ns,
            at(ended),
            attributes,
            kind=SpanKind.SERVER,
            links=links,
            status=_ERROR if status >= 500 else None,  # a 4xx is the client's error (HTTP conventions)
        )
        trace_id = f"{context.trace_id:032x}"
        traceparent = f"00-{trace_id}-{context.span_id:016x}-{context.trace_flags:02x}"
        response.raw_headers.append((b"traceparent", traceparent.encode()))
        return {"trace_id": trace_id}


class BatchTrace:
    """The span of one batch: a root of its own, linked to the spans of the requests it runs."""

    __slots__ = ("_ran", "_tracer", "attributes", "begun_ns", "context", "links", "number", "rows", "traces")

    def __init__(
        self,
        tracer: Tracer,
        context: SpanContext,
        links: list[Link],
        traces: list[RequestTrace],
        number: int,
        rows: int,
        attributes: Attributes,
    ) -> None:
        self._tracer = tracer
        self._ran = False
        self.context = context
        self.links = links
        self.traces = traces
        self.number = number
        self.rows = rows
        self.attributes = attributes
        self.begun_ns = time.time_ns()
        started = time.perf_counter()
        for request in traces:
            request.batch_start = started
            request.batch = self

    def ran(self, rows: int, seconds: float) -> None:
        """The runtime answered `rows` rows in `seconds` (its own time, measured where it ran)."""
        self._ran = True
        ended = time.time_ns()
        attributes: Attributes = {"shipyard.batch.size": rows}
        self._tracer.child("inference", self.context, ended - int(seconds * 1e9), ended, attributes)

    def end(self) -> None:
        ended = time.perf_counter()
        for request in self.traces:
            request.batch_end = ended
        status = None if self._ran else Status(StatusCode.ERROR, "the runtime did not answer this batch")
        self._tracer.record(
            "batch",
            self.context,
            None,
            self.begun_ns,
            time.time_ns(),
            self.attributes,
            links=self.links,
            status=status,
        )


BatchStarter = Callable[[list[RequestTrace], int, int], BatchTrace | None]

"""OpenTelemetry spans of every request, exported over OTLP/HTTP once an endpoint is configured.

Off by default, and then free: this module imports no OpenTelemetry, the server builds no
tracer, and the request path only finds that it has none. Everything that touches OpenTelemetry
is in `_tracer.py`, imported when tracing starts.

One request's spans, in its own trace (a child of the caller's `traceparent` when it sends one):
`{protocol} {operation}` (kind SERVER, e.g. `v2 infer`) with the children `receive` (its body
read), `decode` (parsed and validated), `queue` (waiting for its batch) and `encode` (the
answer built). The batcher runs several requests at once: a `batch` span, with an `inference`
child for the runtime's own time.

A batch is shared work, so it is no single request's child: it starts a trace of its own that
links to each request span it served, and each request span links back to it. OpenTelemetry's
messaging conventions prescribe the same for a consumer processing a batch of messages (its
span "SHOULD link to the message's creation context"). Making the inference a child of every
request instead would copy one run into N traces, and a sum of time spent in inference would
count it N times. Trace views (Jaeger, Tempo, Grafana) follow links both ways.

The sampler (`OTEL_TRACES_SAMPLER`, default: every request, or as its caller's `traceparent`
says) decides per request; a batch is traced whenever a request in it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shipyard.errors import MissingDependencyError

if TYPE_CHECKING:  # re-exported: other packages name these types from here, not the private module
    from shipyard.monitor._tracer import BatchTrace as BatchTrace  # noqa: PLC0414
    from shipyard.monitor._tracer import RequestTrace as RequestTrace  # noqa: PLC0414
    from shipyard.monitor._tracer import Tracer as Tracer  # noqa: PLC0414
    from shipyard.settings import TracingSettings

SCOPE_KEY = "shipyard.trace"  # a traced request's RequestTrace, in its ASGI scope
_PACKAGES = {
    "opentelemetry.sdk.trace": "opentelemetry-sdk",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter": "opentelemetry-exporter-otlp-proto-http",
}


def start_tracing(settings: TracingSettings, worker: int = 0) -> Tracer | None:
    """This process's tracer, exporting in a thread of its own; None when tracing is off.

    Each server process (every worker of `--workers N`) starts its own: an exporter's thread
    and connections do not survive a fork, and the spans carry the worker's number.
    """
    url = settings.traces_url
    if url is None:
        return None
    require_tracing(settings)
    from shipyard.monitor._tracer import Tracer

    return Tracer(url, settings.service_name, worker)


def require_tracing(settings: TracingSettings) -> None:
    """MissingDependencyError naming the `tracing` extra if tracing is on but not installed."""
    if settings.traces_url is None:
        return
    import importlib

    for module, package in _PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            purpose = "tracing (an OTLP endpoint is set: tracing.otlp_endpoint or OTEL_EXPORTER_OTLP_…)"
            raise MissingDependencyError(package, "tracing", purpose) from exc

"""Every Prometheus object Shipyard exports, named `shipyard_<area>_<what>_<unit>`.

Labels are limited to model, version, protocol, status and (errors only) the error kind: never
request ids or user input. With several worker processes, `PROMETHEUS_MULTIPROC_DIR` is set
before this module is imported and `/metrics` aggregates the workers' files, so figures add up
across them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REQUESTS = Counter(
    "shipyard_server_requests_total",
    "Inference requests by model, version, protocol and HTTP status.",
    ["model", "version", "protocol", "status"],
)
REQUEST_LATENCY = Histogram(
    "shipyard_server_request_duration_seconds",
    "Time from request received to response ready.",
    ["model", "version", "protocol", "status"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_TIME = Histogram(
    "shipyard_batcher_queue_duration_seconds",
    "Time a request waited in its model's queue before its batch started.",
    ["model", "version"],
    buckets=_LATENCY_BUCKETS,
)
INFERENCE_TIME = Histogram(
    "shipyard_batcher_inference_duration_seconds",
    "Runtime time per batch.",
    ["model", "version"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "shipyard_batcher_batch_size_rows",
    "Rows per executed batch.",
    ["model", "version"],
    buckets=_BATCH_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "shipyard_batcher_queue_depth_requests",
    "Requests waiting in a model's queue.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
IN_FLIGHT = Gauge(
    "shipyard_server_in_flight_requests",
    "Inference requests being handled.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
LOADED_MODELS = Gauge(
    "shipyard_server_loaded_models",
    "Model versions loaded and ready.",
    multiprocess_mode="livesum",
)
LOAD_TIME = Histogram(
    "shipyard_server_model_load_duration_seconds",
    "Time to load a model version (verify digest + build runtime).",
    ["model", "version"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ERRORS = Counter(
    "shipyard_server_errors_total",
    "Failed requests by model, version, protocol and error kind (not_found, invalid_input, model_error, …).",
    ["model", "version", "protocol", "kind"],
)
PREDICTION_LOG_DROPPED = Counter(
    "shipyard_predictionlog_dropped_total",
    "Prediction log entries dropped: queue_full (the writer fell behind) or write_failed (the disk refused).",
    ["model", "reason"],
)


def exposition() -> bytes:
    """The text exposition of all metrics, summed over worker processes when there are several."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


def forget_process(pid: int) -> None:
    """Drop the live gauges of a worker process that ended, so sums over workers stop counting it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

"""Every Prometheus object Shipyard exports, named `shipyard_<area>_<what>_<unit>`.

Labels are limited to model, version, protocol, status, the error kind (errors), the refusal
reason (rejections), the worker number (process resources) and (drift only) the feature and
method, capped per version: never request ids or user input. With several worker processes,
`PROMETHEUS_MULTIPROC_DIR` is set before this module is imported and `/metrics` aggregates the
workers' files, so figures add up across them. Gauges use a `live*` mode: a worker that ended
stops counting once `forget_process` drops its files, and a replacement takes over its worker
number, so no series is left behind by a pid.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

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
REJECTED = Counter(
    "shipyard_server_rejected_total",
    "Requests refused before inference, by reason (rate_limited, overloaded, queue_full, too_large, "
    "deadline, not_ready, unauthorized, forbidden).",
    ["model", "reason"],
)
# The error kinds that are refusals (the request was fine or unchecked; the server would not run
# it), and the reason each is counted under.
REJECTION_REASONS = {
    "rate_limited": "rate_limited",
    "overloaded": "overloaded",
    "queue_full": "queue_full",
    "payload_too_large": "too_large",
    "deadline_exceeded": "deadline",
    "not_ready": "not_ready",
    "unauthorized": "unauthorized",
    "forbidden": "forbidden",
}
QUEUE_CAPACITY = Gauge(
    "shipyard_batcher_queue_capacity_requests",
    "Requests a model's queue holds before it refuses more (serve.max_queue), for saturation ratios.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
MODEL_READY = Gauge(
    "shipyard_server_model_ready",
    "1 while a served model name answers requests, 0 while it loads or failed (min over workers).",
    ["model"],
    multiprocess_mode="livemin",
)
MODEL_MEMORY = Gauge(
    "shipyard_model_resident_memory_bytes",
    "Estimate: resident memory a worker grew by while it loaded the version, summed over workers "
    "(0 once unloaded; memory a runtime allocates on first use is not in it).",
    ["model", "version"],
    multiprocess_mode="livesum",
)
MODEL_ARTIFACT = Gauge(
    "shipyard_model_artifact_bytes",
    "Bytes of a served version's artifact in the registry (0 once unloaded).",
    ["model", "version"],
    multiprocess_mode="livemax",
)
REGISTRY_DISK = Gauge(
    "shipyard_registry_disk_bytes",
    "Bytes the registry uses on disk: its artifacts and, for SQLite, its database file.",
    multiprocess_mode="livemax",
)
# Per worker (its number, 0 for a single process), not per pid: a replacement takes over the
# number, so the series stay the same across restarts and a dead worker's value stops counting.
PROCESS_CPU = Counter(
    "shipyard_process_cpu_seconds",
    "CPU time (user + system) of each worker; a replaced worker's time stays counted.",
    ["worker"],
)
PROCESS_MEMORY = Gauge(
    "shipyard_process_resident_memory_bytes",
    "Resident memory of each worker.",
    ["worker"],
    multiprocess_mode="livesum",
)
PROCESS_FILES = Gauge(
    "shipyard_process_open_files",
    "Open file descriptors (connections included) of each worker.",
    ["worker"],
    multiprocess_mode="livesum",
)
PROCESS_MAX_FILES = Gauge(
    "shipyard_process_max_open_files",
    "The open-file limit of each worker.",
    ["worker"],
    multiprocess_mode="livesum",
)
PROCESS_START = Gauge(
    "shipyard_process_start_time_seconds",
    "When each worker started (Unix time): it moves when a worker is replaced.",
    ["worker"],
    multiprocess_mode="livesum",
)
QUALITY_FEEDBACK = Counter(
    "shipyard_quality_feedback",
    "Feedback (true labels or values) joined with a logged prediction, by the version that made it.",
    ["model", "version"],
)
QUALITY_FEEDBACK_DELAY = Histogram(
    "shipyard_quality_feedback_delay_seconds",
    "Time from a prediction to its feedback.",
    ["model", "version"],
    buckets=(1, 10, 60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400),
)
PREDICTION_LOG_DROPPED = Counter(
    "shipyard_predictionlog_dropped_total",
    "Prediction log entries dropped: queue_full (the writer fell behind) or write_failed (the disk refused).",
    ["model", "reason"],
)


# Generative models, with the meaning of vLLM's metrics of the same stem (`vllm:time_to_first_token_
# seconds` …; the README maps them), so dashboards translate: per request and per token.
_TOKEN_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
LLM_TIME_TO_FIRST_TOKEN = Histogram(
    "shipyard_llm_time_to_first_token_seconds",
    "Time from a generation request received to its first token generated (queue and prompt included).",
    ["model", "version"],
    buckets=_TOKEN_LATENCY_BUCKETS,
)
LLM_INTER_TOKEN_LATENCY = Histogram(
    "shipyard_llm_inter_token_latency_seconds",
    "Time between two consecutive tokens of one sequence.",
    ["model", "version"],
    buckets=_TOKEN_LATENCY_BUCKETS,
)
LLM_E2E_LATENCY = Histogram(
    "shipyard_llm_e2e_request_latency_seconds",
    "Time from a generation request received to its last token.",
    ["model", "version"],
    buckets=_REQUEST_LATENCY_BUCKETS,
)
LLM_PROMPT_TOKENS = Counter(
    "shipyard_llm_prompt_tokens", "Prompt tokens processed (prefill).", ["model", "version"]
)
LLM_GENERATION_TOKENS = Counter("shipyard_llm_generation_tokens", "Tokens generated.", ["model", "version"])
LLM_REQUESTS_RUNNING = Gauge(
    "shipyard_llm_requests_running",
    "Sequences decoding now (in a slot).",
    ["model", "version"],
    multiprocess_mode="livesum",
)
LLM_REQUESTS_WAITING = Gauge(
    "shipyard_llm_requests_waiting",
    "Generation requests waiting for a slot.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
LLM_KV_CACHE_USAGE = Gauge(
    "shipyard_llm_kv_cache_usage_ratio",
    "Fraction (0..1) of the KV cache in use (the engine's budget: slots x context per slot).",
    ["model", "version"],
    multiprocess_mode="livemax",
)


def count_error(model: str, version: str, protocol: str, kind: str) -> None:
    """One failed request: by kind, and by reason when it was a refusal."""
    ERRORS.labels(model, version, protocol, kind).inc()
    reason = REJECTION_REASONS.get(kind)
    if reason is not None:
        REJECTED.labels(model, reason).inc()


def count_rejection(model: str, kind: str) -> None:
    """A request refused before it reached a route (authentication)."""
    reason = REJECTION_REASONS.get(kind)
    if reason is not None:
        REJECTED.labels(model, reason).inc()


def forget_model(name: str) -> None:
    """A model name no longer served: its readiness series goes. With several workers it cannot
    (prometheus_client keeps no way to delete a series from the workers' files) and stays at its
    last value until the server restarts."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        with contextlib.suppress(KeyError):
            MODEL_READY.remove(name)


# Per served version: (model, version, window rows, drift detected, [(feature, method, score)]).
DriftSeries = tuple[str, str, int, bool, list[tuple[str, str, float]]]


class _DriftCollector(Collector):
    """Drift gauges, computed when /metrics is read (never on the request path) from the live
    windows: with several workers, the one that answers the scrape merges every worker's window
    (`monitor.window_share`), so any answer covers all the traffic, once. They are not in the
    multiprocess files, so nothing sums them over workers or keeps a dead worker's series.
    Versions no longer served simply stop appearing."""

    def __init__(self) -> None:
        # Weak: a server's drift monitor stops reporting when it goes, with no unregistering.
        self._sources: list[weakref.WeakMethod[Callable[[], Iterable[DriftSeries]]]] = []

    def add_source(self, source: Callable[[], Iterable[DriftSeries]]) -> None:
        """Report what the bound method `source` yields at every scrape, while its object lives."""
        self._sources = [s for s in self._sources if s() is not None]
        self._sources.append(weakref.WeakMethod(source))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        score, detected, rows = families = self._families()
        for reference in list(self._sources):
            source = reference()
            for model, version, count, drifted, features in source() if source is not None else ():
                rows.add_metric([model, version], count)
                detected.add_metric([model, version], 1.0 if drifted else 0.0)
                for feature, method, value in features:
                    score.add_metric([model, version, feature, method], value)
        return iter(families)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "shipyard_drift_score",
                "Input drift per feature: a p-value for tests (ks, chisquare, z; drifted below 0.05 by "
                "default), a distance otherwise (wasserstein, jensenshannon, psi; drifted from 0.1).",
                labels=["model", "version", "feature", "method"],
            ),
            GaugeMetricFamily(
                "shipyard_drift_detected",
                "1 when the share of drifted features reaches drift.drift_share (0.5), else 0.",
                labels=["model", "version"],
            ),
            GaugeMetricFamily(
                "shipyard_drift_window_rows",
                "Rows in the window drift is computed on.",
                labels=["model", "version"],
            ),
        )


DRIFT = _DriftCollector()
REGISTRY.register(DRIFT)

# Per version with enough feedback: (model, version, rows, [(metric, value)]).
QualitySeries = tuple[str, str, int, list[tuple[str, float]]]


class _QualityCollector(Collector):
    """Live quality gauges, scored when /metrics is read from the feedback store every process
    shares: whichever worker answers the scrape reports the same figures. Their `metric` label
    names a figure, or one of at most `quality.max_classes` classes per version."""

    def __init__(self) -> None:
        self._sources: list[weakref.WeakMethod[Callable[[], Iterable[QualitySeries]]]] = []

    def add_source(self, source: Callable[[], Iterable[QualitySeries]]) -> None:
        """Report what the bound method `source` yields at every scrape, while its object lives."""
        self._sources = [s for s in self._sources if s() is not None]
        self._sources.append(weakref.WeakMethod(source))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        score, rows = families = self._families()
        for reference in list(self._sources):
            source = reference()
            for model, version, count, figures in source() if source is not None else ():
                rows.add_metric([model, version], count)
                for metric, value in figures:
                    score.add_metric([model, version, metric], value)
        return iter(families)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "shipyard_quality_score",
                "Live quality measured on feedback over quality.window_s / window_rows: accuracy, "
                "precision_macro, recall_macro, f1_macro and precision:C, recall:C, f1:C per class; "
                "mae, rmse for regressors.",
                labels=["model", "version", "metric"],
            ),
            GaugeMetricFamily(
                "shipyard_quality_window_rows",
                "Labelled rows the live quality is measured on.",
                labels=["model", "version"],
            ),
        )


QUALITY = _QualityCollector()
REGISTRY.register(QUALITY)


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """All metrics and their media type, summed over worker processes when there are several.

    OpenMetrics, which carries exemplars (the trace id of a traced request's latency), when the
    scraper's `accept` asks for it, as Prometheus does with exemplar storage on; else the classic
    text format. prometheus_client keeps no exemplars across worker processes.
    """
    encode, media_type = choose_encoder(accept or "")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(DRIFT)
        registry.register(QUALITY)
        return encode(registry), media_type
    return encode(REGISTRY), media_type


def forget_process(pid: int) -> None:
    """Drop the live gauges of a worker process that ended, so sums over workers stop counting it."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

"""A Grafana dashboard for Shipyard servers: a pure function returning the dashboard's JSON model.

Every query goes to the Prometheus data source chosen in the `datasource` variable and is
filtered by the `model` variable (several or all models at once). Rows follow an operator's
questions: is it answering, how fast, is it keeping up, what does it use, are inputs drifting,
are answers still right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shipyard.monitor.alerts import DRIFT_DISTANCES, DRIFT_TESTS, QUALITY_METRIC

SCHEMA_VERSION = 39  # Grafana 10.x; newer versions migrate it on load
_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_M = 'model=~"$model"'
_WIDTH = 24  # Grafana's grid is 24 columns wide
_SERVER_ERROR = 'status=~"5.."'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    kind: str = "timeseries"


def _rate(metric: str, by: str, extra: str = "") -> str:
    selector = f"{_M}, {extra}" if extra else _M
    return f"sum by ({by}) (rate({metric}{{{selector}}}[$__rate_interval]))"


def _quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{_M}}}[$__rate_interval])))"


def _sections() -> list[tuple[str, list[Chart]]]:
    latency = "shipyard_server_request_duration_seconds"
    requests = "shipyard_server_requests_total"
    return [
        (
            "Traffic and errors",
            [
                Chart(
                    "Throughput",
                    "reqps",
                    (Query(_rate(requests, "model, protocol"), "{{model}} {{protocol}}"),),
                    "Inference requests answered per second, by model and protocol.",
                ),
                Chart(
                    "Latency percentiles",
                    "s",
                    tuple(
                        Query(_quantile(q, latency, "model"), f"{{{{model}}}} p{round(q * 100)}")
                        for q in (0.5, 0.9, 0.99)
                    ),
                    "Time from request received to response ready, from the latency histogram.",
                ),
                Chart(
                    "Error ratio",
                    "percentunit",
                    (
                        Query(
                            _rate(requests, "model", _SERVER_ERROR) + " / " + _rate(requests, "model"),
                            "{{model}}",
                        ),
                    ),
                    "Share of requests answered with a 5xx status.",
                ),
                Chart(
                    "Errors by kind",
                    "reqps",
                    (Query(_rate("shipyard_server_errors_total", "model, kind"), "{{model}} {{kind}}"),),
                ),
                Chart(
                    "Rejected by reason",
                    "reqps",
                    (
                        Query(
                            _rate("shipyard_server_rejected_total", "model, reason"), "{{model}} {{reason}}"
                        ),
                    ),
                    "Requests refused before inference: rate limits, full queues, sizes, deadlines, keys.",
                ),
                Chart(
                    "Models ready",
                    "short",
                    (Query(f"min by (model) (shipyard_server_model_ready{{{_M}}})", "{{model}}"),),
                    "1 when every worker answers for the model, 0 while it loads or failed.",
                    kind="stat",
                ),
            ],
        ),
        (
            "Batching and queues",
            [
                Chart(
                    "Rows per batch",
                    "short",
                    (
                        Query(
                            "sum by (model) (rate(shipyard_batcher_batch_size_rows_sum{"
                            f"{_M}}}[$__rate_interval])) / sum by (model) "
                            f"(rate(shipyard_batcher_batch_size_rows_count{{{_M}}}[$__rate_interval]))",
                            "{{model}} mean",
                        ),
                        Query(_quantile(0.9, "shipyard_batcher_batch_size_rows", "model"), "{{model}} p90"),
                    ),
                ),
                Chart(
                    "Queue depth",
                    "short",
                    (
                        Query(
                            f"sum by (model, version) (shipyard_batcher_queue_depth_requests{{{_M}}})",
                            "{{model}}:{{version}}",
                        ),
                    ),
                    "Requests waiting for their model (a full queue answers 503).",
                ),
                Chart(
                    "In flight",
                    "short",
                    (
                        Query(
                            f"sum by (model, version) (shipyard_server_in_flight_requests{{{_M}}})",
                            "{{model}}:{{version}}",
                        ),
                    ),
                ),
                Chart(
                    "Queue and inference time (p99)",
                    "s",
                    (
                        Query(
                            _quantile(0.99, "shipyard_batcher_queue_duration_seconds", "model"),
                            "{{model}} queue",
                        ),
                        Query(
                            _quantile(0.99, "shipyard_batcher_inference_duration_seconds", "model"),
                            "{{model}} inference",
                        ),
                    ),
                ),
            ],
        ),
        (
            "Resources",
            [
                Chart(
                    "CPU per worker",
                    "percentunit",
                    (
                        Query(
                            "sum by (instance, worker) "
                            "(rate(shipyard_process_cpu_seconds_total[$__rate_interval]))",
                            "{{instance}} worker {{worker}}",
                        ),
                    ),
                    "CPU time per second of each worker: 1 is one core.",
                ),
                Chart(
                    "Memory per worker",
                    "bytes",
                    (
                        Query(
                            "sum by (instance, worker) (shipyard_process_resident_memory_bytes)",
                            "{{instance}} worker {{worker}}",
                        ),
                    ),
                ),
                Chart(
                    "Open files per worker",
                    "short",
                    (
                        Query(
                            "sum by (instance, worker) (shipyard_process_open_files)",
                            "{{instance}} worker {{worker}}",
                        ),
                        Query("max(shipyard_process_max_open_files)", "limit"),
                    ),
                ),
                Chart(
                    "Model memory (estimate)",
                    "bytes",
                    (
                        Query(
                            f"sum by (model, version) (shipyard_model_resident_memory_bytes{{{_M}}})",
                            "{{model}}:{{version}}",
                        ),
                    ),
                    "What the workers grew by while loading each version, summed over workers.",
                ),
                Chart(
                    "Disk",
                    "bytes",
                    (
                        Query(
                            f"max by (model, version) (shipyard_model_artifact_bytes{{{_M}}})",
                            "{{model}}:{{version}}",
                        ),
                        Query("max(shipyard_registry_disk_bytes)", "registry"),
                    ),
                    "The served artifacts and the whole registry.",
                ),
                Chart(
                    "Model load time",
                    "s",
                    (
                        Query(
                            "max by (model, version) ("
                            f"shipyard_server_model_load_duration_seconds_sum{{{_M}}}"
                            f" / shipyard_server_model_load_duration_seconds_count{{{_M}}})",
                            "{{model}}:{{version}}",
                        ),
                    ),
                ),
            ],
        ),
        (
            "Drift",
            [
                Chart(
                    "Drift tests (p-value)",
                    "short",
                    (
                        Query(
                            "max by (model, version, feature, method) "
                            f'(shipyard_drift_score{{{_M}, method=~"{DRIFT_TESTS}"}})',
                            "{{model}}:{{version}} {{feature}} ({{method}})",
                        ),
                    ),
                    "Per feature, the statistical test's p-value against the reference: drifted when low.",
                ),
                Chart(
                    "Drift distances",
                    "short",
                    (
                        Query(
                            "max by (model, version, feature, method) "
                            f'(shipyard_drift_score{{{_M}, method=~"{DRIFT_DISTANCES}"}})',
                            "{{model}}:{{version}} {{feature}} ({{method}})",
                        ),
                    ),
                    "Per feature, the live distribution's distance from the reference: drifted when high.",
                ),
                Chart(
                    "Drift detected",
                    "short",
                    (
                        Query(
                            f"max by (model, version) (shipyard_drift_detected{{{_M}}})",
                            "{{model}}:{{version}}",
                        ),
                    ),
                    "1 when the share of drifted features crosses the dataset-level threshold.",
                    kind="stat",
                ),
                Chart(
                    "Drift window",
                    "short",
                    (
                        Query(
                            f"max by (model, version) (shipyard_drift_window_rows{{{_M}}})",
                            "{{model}}:{{version}}",
                        ),
                    ),
                    "Rows of live inputs drift is judged on.",
                ),
            ],
        ),
        (
            "Live quality",
            [
                Chart(
                    "Live quality",
                    "short",
                    (
                        Query(
                            f"max by (model, version, metric) ({QUALITY_METRIC}{{{_M}}})",
                            "{{model}}:{{version}} {{metric}}",
                        ),
                    ),
                    "Accuracy, precision, recall, F1 (or MAE, RMSE) measured on feedback.",
                ),
                Chart(
                    "Feedback coverage",
                    "percentunit",
                    (
                        Query(
                            _rate("shipyard_quality_feedback_total", "model")
                            + " / "
                            + _rate(requests, "model", 'status="200"'),
                            "{{model}}",
                        ),
                    ),
                    "Labels received per request answered: the share of predictions that get feedback.",
                ),
                Chart(
                    "Feedback delay",
                    "s",
                    tuple(
                        Query(
                            _quantile(q, "shipyard_quality_feedback_delay_seconds", "model"),
                            f"{{{{model}}}} p{round(q * 100)}",
                        )
                        for q in (0.5, 0.9)
                    ),
                    "Time from a prediction to its feedback.",
                ),
            ],
        ),
    ]


def _panel(chart: Chart, panel_id: int, x: int, y: int, width: int, height: int) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "id": panel_id,
        "type": chart.kind,
        "title": chart.title,
        "datasource": _DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": x, "y": y},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": _DATASOURCE, "expr": q.expr, "legendFormat": q.legend}
            for i, q in enumerate(chart.queries)
        ],
        "fieldConfig": {"defaults": {"unit": chart.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if chart.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
    }
    if chart.description:
        panel["description"] = chart.description
    return panel


def render_dashboard(title: str = "Shipyard", uid: str = "shipyard") -> dict[str, Any]:
    """The dashboard's JSON model, as Grafana imports it or provisions it from a folder."""
    panels: list[dict[str, Any]] = []
    y = 0
    for section, charts in _sections():
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": section,
                "collapsed": False,
                "gridPos": {"h": 1, "w": _WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        per_line = 3
        width, height = _WIDTH // per_line, 8
        for index, chart in enumerate(charts):
            x = (index % per_line) * width
            if index and index % per_line == 0:
                y += height
            panels.append(_panel(chart, len(panels) + 1, x, y, width, height))
        y += height
    return {
        "uid": uid,
        "title": title,
        "description": "Shipyard servers: traffic, latency, errors, batching, resources, drift, quality.",
        "tags": ["shipyard", "ml-serving"],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "hide": 0,
                },
                {
                    "name": "model",
                    "label": "Model",
                    "type": "query",
                    "datasource": _DATASOURCE,
                    "query": {"query": "label_values(shipyard_server_model_ready, model)", "refId": "models"},
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".*",
                    "sort": 1,
                    "hide": 0,
                },
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }

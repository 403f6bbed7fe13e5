"""Prometheus alerting rules for a Shipyard server: a pure render function and its thresholds.

The rules read only what `metrics` exports (and the drift and quality gauges of the same
vocabulary), so they work on any Prometheus that scrapes `/metrics`. The file is YAML written by
hand: every scalar is a JSON string, which YAML reads as it is, so no YAML library is needed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shipyard.errors import InvalidInputError

QUALITY_METRIC = "shipyard_quality_score"  # {model, version, metric}: live accuracy, F1, …
# shipyard_drift_score is a p-value for the statistical tests (drift when low) and a distance for
# the other methods (drift when high): each kind is held to its own threshold.
DRIFT_TESTS = "ks|chisquare|z"
DRIFT_DISTANCES = "wasserstein|jensenshannon|psi"
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")  # Prometheus's duration syntax


class AlertConfig(BaseModel):
    """The thresholds of the alerting rules; the defaults suit a small model on one host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    error_rate: float = Field(0.05, gt=0, le=1, description="share of requests answered 5xx")
    p99_latency: float = Field(0.5, gt=0, description="99th percentile of request time, seconds")
    queue_saturation: float = Field(0.8, gt=0, le=1, description="share of a model's queue in use")
    drift_p_value: float = Field(
        0.05, gt=0, lt=1, description="a feature's test p-value under which it drifted"
    )
    drift_distance: float = Field(0.1, gt=0, description="a feature's distance from which it drifted")
    quality_min: float = Field(0.8, gt=0, le=1, description="floor of live accuracy / F1")
    quality_metrics: str = Field("accuracy|f1_macro", description="quality metrics held to the floor")
    open_files_ratio: float = Field(0.9, gt=0, le=1, description="share of a worker's file limit in use")
    window: str = Field("5m", description="the range rates and quantiles are taken over")
    pending: str = Field("5m", description="how long a condition holds before its alert fires")
    job: str = Field("shipyard", description="the scrape job of the servers, for the scrape-down alert")

    @field_validator("window", "pending")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError("expects a Prometheus duration such as 30s, 5m or 1h")
        return value

    @field_validator("quality_metrics", "job")
    @classmethod
    def _label_value(cls, value: str) -> str:
        if not value or '"' in value or "\\" in value or "\n" in value:
            raise ValueError("expects a label value without quotes, backslashes or line breaks")
        return value

    @classmethod
    def of(cls, **values: Any) -> AlertConfig:
        """The config from options given (None: the default); InvalidInputError naming the option."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else "threshold"
            option = "for" if name == "pending" else name.replace("_", "-")
            message = error["msg"].removeprefix("Value error, ")
            raise InvalidInputError(
                f"--{option}: {message[:1].lower()}{message[1:]}, got {error.get('input')!r}",
                field=name,
            ) from None


@dataclass(frozen=True)
class Rule:
    alert: str
    expr: str
    pending: str
    severity: str
    summary: str
    description: str


def alert_rules(config: AlertConfig) -> list[Rule]:
    """The rules, in the order an operator reads them: answers, speed, capacity, models, data."""
    c, w = config, config.window
    requests = "shipyard_server_requests_total"
    return [
        Rule(
            "ShipyardHighErrorRate",
            f'sum by (model) (rate({requests}{{status=~"5.."}}[{w}]))'
            f" / sum by (model) (rate({requests}[{w}])) > {c.error_rate:g}",
            c.pending,
            "critical",
            "Model {{ $labels.model }} fails {{ $value | humanizePercentage }} of its requests",
            f"More than {c.error_rate:.0%} of requests answered 5xx over {w}: see "
            "shipyard_server_errors_total by kind and the server log.",
        ),
        Rule(
            "ShipyardHighLatencyP99",
            "histogram_quantile(0.99, sum by (model, le) "
            f"(rate(shipyard_server_request_duration_seconds_bucket[{w}]))) > {c.p99_latency:g}",
            c.pending,
            "warning",
            "Model {{ $labels.model }} answers in {{ $value | humanizeDuration }} at p99",
            f"The 99th percentile of request time is over {c.p99_latency:g} s: compare queue and "
            "inference time to see whether the model or the queue is slow.",
        ),
        Rule(
            "ShipyardQueueSaturated",
            "sum by (model, version) (shipyard_batcher_queue_depth_requests)"
            " / sum by (model, version) (shipyard_batcher_queue_capacity_requests)"
            f" > {c.queue_saturation:g}",
            c.pending,
            "warning",
            "The queue of {{ $labels.model }}:{{ $labels.version }} is "
            "{{ $value | humanizePercentage }} full",
            "Requests wait for the model and a full queue refuses them with 503: add workers or "
            "replicas, or raise serve.max_queue.",
        ),
        Rule(
            "ShipyardModelNotReady",
            "shipyard_server_model_ready == 0",
            c.pending,
            "critical",
            "Model {{ $labels.model }} is not ready on {{ $labels.instance }}",
            "The model is loading or failed to load: /readyz names the reason.",
        ),
        Rule(
            "ShipyardScrapeDown",
            f'up{{job="{c.job}"}} == 0',
            c.pending,
            "critical",
            "Prometheus cannot scrape the Shipyard server {{ $labels.instance }}",
            "The server is down or /metrics does not answer.",
        ),
        Rule(
            "ShipyardOpenFilesNearLimit",
            f"shipyard_process_open_files / shipyard_process_max_open_files > {c.open_files_ratio:g}",
            c.pending,
            "warning",
            "Worker {{ $labels.worker }} on {{ $labels.instance }} uses "
            "{{ $value | humanizePercentage }} of its file limit",
            "Every connection holds a file: new connections will be refused at the limit.",
        ),
        Rule(
            "ShipyardFeatureDrift",
            f'min by (model, version, feature, method) (shipyard_drift_score{{method=~"{DRIFT_TESTS}"}})'
            f" < {c.drift_p_value:g} or max by (model, version, feature, method) "
            f'(shipyard_drift_score{{method=~"{DRIFT_DISTANCES}"}}) >= {c.drift_distance:g}',
            c.pending,
            "warning",
            "Feature {{ $labels.feature }} of {{ $labels.model }}:{{ $labels.version }} drifted "
            "({{ $labels.method }} {{ $value }})",
            f"Live inputs no longer look like the reference data (a test's p-value under "
            f"{c.drift_p_value:g}, or a distance of {c.drift_distance:g} or more): see `shipyard drift`.",
        ),
        Rule(
            "ShipyardDriftDetected",
            "max by (model, version) (shipyard_drift_detected) > 0",
            c.pending,
            "warning",
            "The inputs of {{ $labels.model }}:{{ $labels.version }} drifted",
            "The server's drift verdict over the share of drifted features: see `shipyard drift`.",
        ),
        Rule(
            "ShipyardQualityDrop",
            f'min by (model, version, metric) ({QUALITY_METRIC}{{metric=~"{c.quality_metrics}"}})'
            f" < {c.quality_min:g}",
            c.pending,
            "critical",
            "Live {{ $labels.metric }} of {{ $labels.model }}:{{ $labels.version }} fell to {{ $value }}",
            f"Measured on feedback, it is under {c.quality_min:g}: see `shipyard quality`.",
        ),
    ]


def render_rules(config: AlertConfig) -> str:
    """The rules file (YAML) that Prometheus's `rule_files` loads."""
    lines = [
        "# Prometheus alerting rules for Shipyard, written by `shipyard monitor export`.",
        "# Thresholds: " + ", ".join(f"{k}={v}" for k, v in config.model_dump().items()),
        "groups:",
        "  - name: shipyard",
        "    rules:",
    ]
    for rule in alert_rules(config):
        lines += [
            f"      - alert: {rule.alert}",
            f"        expr: {json.dumps(rule.expr)}",
            f"        for: {rule.pending}",
            "        labels:",
            f"          severity: {rule.severity}",
            "        annotations:",
            f"          summary: {json.dumps(rule.summary)}",
            f"          description: {json.dumps(rule.description)}",
        ]
    return "\n".join(lines) + "\n"

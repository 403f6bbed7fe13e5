"""The exported alerting rules, checked by Prometheus's own `promtool`: they load (`check rules`)
and fire exactly when their condition has held long enough (`test rules`, on made-up series).

promtool ships with Debian's `prometheus` package, which `make test` installs; without it these
tests skip, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shipyard.errors import InvalidInputError
from shipyard.monitor.alerts import QUALITY_METRIC, AlertConfig, alert_rules, render_rules

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian's `prometheus` package; `make test` installs it)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


def write_rules(folder: Path, config: AlertConfig) -> Path:
    path = folder / "rules.yml"
    path.write_text(render_rules(config))
    return path


@needs_promtool
def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    for config in (AlertConfig(), AlertConfig(error_rate=0.5, window="1m", pending="30s", job="ml")):
        done = promtool("check", "rules", str(write_rules(tmp_path, config)))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"SUCCESS: {len(alert_rules(config))} rules found" in done.stdout


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def fires(
    alert: str,
    labels: dict[str, str] | None = None,
    summary: str = "",
    at: str = "15m",
    config: AlertConfig | None = None,
) -> dict[str, Any]:
    """An expectation that `alert` fires at `at` for `labels` alone, saying `summary` (labels None:
    it does not fire at all)."""
    rule = next(r for r in alert_rules(config or AlertConfig()) if r.alert == alert)
    expected = []
    if labels is not None:
        expected.append(
            {
                "exp_labels": {**labels, "severity": rule.severity},
                "exp_annotations": {"summary": summary, "description": rule.description},
            }
        )
    return {"eval_time": at, "alertname": alert, "exp_alerts": expected}


# Each alert with one set of series that should fire it and one beside it that should not.
INPUT = [
    # 100 good and 10 failed requests a minute: 9% errors; model b fails 1 in 101.
    series("shipyard_server_requests_total", "0+100x30", model="a", status="200"),
    series("shipyard_server_requests_total", "0+10x30", model="a", status="503"),
    series("shipyard_server_requests_total", "0+100x30", model="b", status="200"),
    series("shipyard_server_requests_total", "0+1x30", model="b", status="500"),
    # slow answers between 0.5 s and 1 s; fast ones all under 10 ms.
    series("shipyard_server_request_duration_seconds_bucket", "0+0x30", model="slow", le="0.5"),
    series("shipyard_server_request_duration_seconds_bucket", "0+10x30", model="slow", le="1"),
    series("shipyard_server_request_duration_seconds_bucket", "0+10x30", model="slow", le="+Inf"),
    series("shipyard_server_request_duration_seconds_bucket", "0+10x30", model="fast", le="0.01"),
    series("shipyard_server_request_duration_seconds_bucket", "0+10x30", model="fast", le="+Inf"),
    # two workers' queues, summed: 9 of 10 places taken for a, 1 of 10 for b.
    series("shipyard_batcher_queue_depth_requests", "5x30", model="a", version="1", instance="w1"),
    series("shipyard_batcher_queue_depth_requests", "4x30", model="a", version="1", instance="w2"),
    series("shipyard_batcher_queue_capacity_requests", "5x30", model="a", version="1", instance="w1"),
    series("shipyard_batcher_queue_capacity_requests", "5x30", model="a", version="1", instance="w2"),
    series("shipyard_batcher_queue_depth_requests", "1x30", model="b", version="1", instance="w1"),
    series("shipyard_batcher_queue_capacity_requests", "10x30", model="b", version="1", instance="w1"),
    # a never loads; b is ready; c became ready after 3 minutes (less than the pending time).
    series("shipyard_server_model_ready", "0x30", model="a", instance="h:8000"),
    series("shipyard_server_model_ready", "1x30", model="b", instance="h:8000"),
    series("shipyard_server_model_ready", "0 0 0 1x27", model="c", instance="h:8000"),
    series("up", "0x30", job="shipyard", instance="down:8000"),
    series("up", "1x30", job="shipyard", instance="up:8000"),
    series("up", "0x30", job="other", instance="elsewhere:9100"),
    series("shipyard_process_open_files", "950x30", worker="1", instance="h:8000"),
    series("shipyard_process_max_open_files", "1000x30", worker="1", instance="h:8000"),
    series("shipyard_process_open_files", "10x30", worker="2", instance="h:8000"),
    series("shipyard_process_max_open_files", "1000x30", worker="2", instance="h:8000"),
    # distances drift when high, test p-values when low: each held to its own threshold.
    series("shipyard_drift_score", "0.5x30", model="a", version="1", feature="age", method="psi"),
    series("shipyard_drift_score", "0.05x30", model="a", version="1", feature="income", method="psi"),
    series("shipyard_drift_score", "0.001x30", model="a", version="1", feature="city", method="chisquare"),
    series("shipyard_drift_score", "0.8x30", model="a", version="1", feature="height", method="ks"),
    series("shipyard_drift_detected", "1x30", model="a", version="1"),
    series("shipyard_drift_detected", "0x30", model="b", version="1"),
    series(QUALITY_METRIC, "0.6x30", model="a", version="1", metric="accuracy"),
    series(QUALITY_METRIC, "0.9x30", model="a", version="1", metric="f1_macro"),
    series(QUALITY_METRIC, "0.1x30", model="r", version="1", metric="mae"),  # lower is better: not held
]
A1 = {"model": "a", "version": "1"}
EXPECTED = [
    fires("ShipyardHighErrorRate", {"model": "a"}, "Model a fails 9.091% of its requests"),
    fires("ShipyardHighErrorRate", at="4m"),  # not yet: the condition must hold 5 minutes
    fires("ShipyardHighLatencyP99", {"model": "slow"}, "Model slow answers in 995ms at p99"),
    fires("ShipyardQueueSaturated", A1, "The queue of a:1 is 90% full"),
    fires("ShipyardModelNotReady", {"model": "a", "instance": "h:8000"}, "Model a is not ready on h:8000"),
    fires(
        "ShipyardScrapeDown",
        {"job": "shipyard", "instance": "down:8000"},
        "Prometheus cannot scrape the Shipyard server down:8000",
    ),
    fires(
        "ShipyardOpenFilesNearLimit",
        {"worker": "1", "instance": "h:8000"},
        "Worker 1 on h:8000 uses 95% of its file limit",
    ),
    {
        "eval_time": "15m",
        "alertname": "ShipyardFeatureDrift",
        "exp_alerts": [
            {
                "exp_labels": {**A1, "feature": feature, "method": method, "severity": "warning"},
                "exp_annotations": {
                    "summary": f"Feature {feature} of a:1 drifted ({method} {value})",
                    "description": next(
                        r for r in alert_rules(AlertConfig()) if r.alert == "ShipyardFeatureDrift"
                    ).description,
                },
            }
            for feature, method, value in (("age", "psi", "0.5"), ("city", "chisquare", "0.001"))
        ],
    },
    fires("ShipyardDriftDetected", A1, "The inputs of a:1 drifted"),
    fires("ShipyardQualityDrop", {**A1, "metric": "accuracy"}, "Live accuracy of a:1 fell to 0.6"),
]


@needs_promtool
def test_each_alert_fires_on_its_condition_and_not_beside_it(tmp_path: Path) -> None:
    write_rules(tmp_path, AlertConfig())
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": INPUT, "alert_rule_test": EXPECTED}],
    }
    (tmp_path / "tests.yml").write_text(json.dumps(tests, indent=1))  # JSON is YAML
    done = promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert {e["alertname"] for e in EXPECTED} == {r.alert for r in alert_rules(AlertConfig())}


@needs_promtool
def test_thresholds_move_the_alerts(tmp_path: Path) -> None:
    """At --error-rate 0.2 model a's 9% no longer fires; at --p99-latency 2 the slow one does not."""
    config = AlertConfig(error_rate=0.2, p99_latency=2, pending="1m")
    write_rules(tmp_path, config)
    tests = {
        "rule_files": ["rules.yml"],
        "tests": [
            {
                "interval": "1m",
                "input_series": INPUT,
                "alert_rule_test": [
                    fires("ShipyardHighErrorRate"),
                    fires("ShipyardHighLatencyP99"),
                    fires(
                        "ShipyardModelNotReady",
                        {"model": "a", "instance": "h:8000"},
                        "Model a is not ready on h:8000",
                        at="10m",
                        config=config,
                    ),
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(json.dumps(tests))
    done = promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("values", "option", "words"),
    [
        ({"error_rate": 1.5}, "--error-rate", "less than or equal to 1"),
        ({"queue_saturation": 0}, "--queue-saturation", "greater than 0"),
        ({"p99_latency": -1}, "--p99-latency", "greater than 0"),
        ({"window": "5 minutes"}, "--window", "Prometheus duration"),
        ({"pending": "soon"}, "--for", "Prometheus duration"),
        ({"job": 'a"b'}, "--job", "without quotes"),
        ({"quality_metrics": ""}, "--quality-metrics", "label value"),
    ],
)
def test_a_bad_threshold_names_its_option(values: dict[str, Any], option: str, words: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        AlertConfig.of(**values)
    assert caught.value.message.startswith(f"{option}: "), caught.value.message
    assert words in caught.value.message
    assert "\n" not in caught.value.message


def test_options_not_given_keep_their_defaults() -> None:
    assert AlertConfig.of(error_rate=None, window=None) == AlertConfig()
    assert AlertConfig.of(error_rate=0.1).error_rate == 0.1

"""The exported Grafana dashboard: it conforms to Grafana's dashboard schema (as the
grafana-foundation-sdk encodes it: see grafana_schema.py), lays its panels out on the grid, asks
Prometheus only about metrics Shipyard exports, and every query parses in Prometheus itself."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from grafana_schema import schema_problems
from prometheus_client.metrics import MetricWrapperBase

from shipyard.monitor import metrics
from shipyard.monitor.alerts import QUALITY_METRIC, AlertConfig, alert_rules
from shipyard.monitor.dashboard import render_dashboard

# Gauges other parts of the monitor export (drift, live quality); the dashboard shows them already.
ELSEWHERE = {"shipyard_drift_score", "shipyard_drift_detected", "shipyard_drift_window_rows", QUALITY_METRIC}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every sample name Shipyard's metrics produce (counters end in _total, histograms in three)."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]


def test_the_dashboard_conforms_to_grafanas_schema() -> None:
    assert schema_problems(render_dashboard()) == []


def test_the_schema_check_names_what_departs_from_it() -> None:
    """The check can fail: keys outside the schema, wrong types, values outside an enum."""
    broken = render_dashboard()
    chart = next(i for i, p in enumerate(broken["panels"]) if p["type"] == "timeseries")
    broken["panels"][chart]["gridPos"]["w"] = "8"
    broken["panels"][chart]["colour"] = "red"
    broken["panels"][chart]["options"]["legend"]["placement"] = "middle"
    broken["panels"][chart]["targets"][0]["legendFormat"] = 3
    broken["graphTooltip"] = 7
    problems = schema_problems(broken)
    expected = [
        f"dashboard.panels[{chart}].colour: not in the schema",
        "dashboard.graph_tooltip: 7 is not one of [0, 1, 2]",
        f"dashboard.panels[{chart}].grid_pos.w: '8' is not an integer",
        f"dashboard.panels[{chart}].options.legend.placement: 'middle' is not one of ['bottom', 'right']",
        f"dashboard.panels[{chart}].targets[0].legend_format: 3 is not a string",
    ]
    assert sorted(problems) == sorted(expected)


def test_panels_tile_the_grid_and_query_the_chosen_data_source() -> None:
    dashboard = render_dashboard()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
    source = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(dashboard):
        assert panel["datasource"] == source, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"] == source and t["expr"] for t in panel["targets"]), panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    model = variables["model"]
    assert (
        model["type"] == "query" and model["multi"] and model["includeAll"] and model["datasource"] == source
    )


def test_queries_ask_only_for_metrics_shipyard_exports_and_filter_by_model() -> None:
    known = exported_names() | ELSEWHERE
    dashboard = render_dashboard()
    asked = {name for expr in expressions(dashboard) for name in re.findall(r"\bshipyard_\w+", expr)}
    assert asked <= known, asked - known
    rules = {name for rule in alert_rules(AlertConfig()) for name in re.findall(r"\bshipyard_\w+", rule.expr)}
    assert rules <= known, rules - known
    # What the issue asks a dashboard to show, each in some query.
    for wanted in (
        "shipyard_server_requests_total",
        "shipyard_server_request_duration_seconds_bucket",
        "shipyard_server_errors_total",
        "shipyard_server_rejected_total",
        "shipyard_batcher_batch_size_rows_sum",
        "shipyard_batcher_queue_depth_requests",
        "shipyard_server_in_flight_requests",
        "shipyard_process_cpu_seconds_total",
        "shipyard_process_resident_memory_bytes",
        "shipyard_model_resident_memory_bytes",
        "shipyard_registry_disk_bytes",
        "shipyard_drift_score",
        QUALITY_METRIC,
    ):
        assert wanted in asked, wanted
    # Every query about models honours the model variable.
    per_worker = ("shipyard_process_", "shipyard_registry_")
    for expr in expressions(dashboard):
        if not re.search(rf"\b({'|'.join(per_worker)})", expr):
            assert 'model=~"$model"' in expr, expr


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (`make test` installs it)"
)
def test_every_query_parses_in_prometheus(tmp_path: Path) -> None:
    """Each query as a recording rule, with Grafana's variables filled in, through promtool."""
    queries = [
        expr.replace("$model", ".*").replace("$__rate_interval", "1m")
        for expr in expressions(render_dashboard())
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"query_{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


def test_the_dashboard_is_the_same_each_time() -> None:
    """Written files only change when Shipyard changes, so they diff and review well."""
    first = render_dashboard()
    assert json.dumps(first) == json.dumps(copy.deepcopy(render_dashboard()))

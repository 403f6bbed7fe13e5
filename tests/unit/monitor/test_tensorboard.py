"""A server's latency and live quality as TensorBoard scalars: quantiles from the latency
histogram as Prometheus computes them, and event files TensorBoard reads."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shipyard.errors import InvalidInputError
from shipyard.monitor.alerts import QUALITY_METRIC
from shipyard.monitor.tensorboard import quantile, scalars, write_runs, write_scalars
from tensorboard_events import read_scalars

INF = math.inf


def test_quantiles_interpolate_inside_their_bucket_as_prometheus_does() -> None:
    histogram = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, INF: 40.0}
    assert quantile(0.5, histogram) == pytest.approx(0.1 + 0.4 * 10 / 20)  # rank 20 of (10, 30]
    assert quantile(0.99, histogram) == pytest.approx(0.5 + 0.5 * 9.6 / 10)
    assert quantile(0.05, histogram) == pytest.approx(0.1 * 2 / 10)  # the first bucket starts at 0
    assert quantile(0.99, {0.1: 5.0, INF: 10.0}) == 0.1  # in the open bucket: its lower bound
    assert math.isnan(quantile(0.5, {0.1: 0.0, INF: 0.0}))


def histogram(protocol: str, counts: dict[str, float]) -> list[str]:
    """The exposition lines of iris's latency histogram for one protocol: cumulative counts by bound."""
    labels = f'model="iris",version="1",protocol="{protocol}",status="200"'
    name = "shipyard_server_request_duration_seconds"
    lines = [f'{name}_bucket{{{labels},le="{le}"}} {count}' for le, count in counts.items()]
    return [*lines, f"{name}_count{{{labels}}} {counts['+Inf']}", f"{name}_sum{{{labels}}} 0.1"]


EXPOSITION = "\n".join(
    [
        "# TYPE shipyard_server_request_duration_seconds histogram",
        *histogram("v2", {"0.01": 6.0, "0.1": 8.0, "+Inf": 8.0}),
        *histogram("v1", {"0.01": 0.0, "0.1": 2.0, "+Inf": 2.0}),
        f"# TYPE {QUALITY_METRIC} gauge",
        f'{QUALITY_METRIC}{{model="iris",version="1",metric="accuracy"}} 0.93',
        "",
    ]
)


def test_scalars_sum_a_models_histograms_and_keep_its_quality() -> None:
    values = scalars(EXPOSITION)
    assert values["requests/iris"] == 10
    # 6 of 10 under 10 ms, 4 more under 100 ms: the median is in the first bucket, p90 in the second.
    assert values["latency/iris/p50"] == pytest.approx(0.01 * 5 / 6)
    assert values["latency/iris/p90"] == pytest.approx(0.01 + 0.09 * 3 / 4)
    assert values["quality/iris:1/accuracy"] == 0.93
    assert set(values) == {
        "requests/iris",
        "latency/iris/p50",
        "latency/iris/p90",
        "latency/iris/p99",
        "quality/iris:1/accuracy",
    }


def test_a_page_that_is_not_metrics_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="not a Prometheus metrics page"):
        scalars("<html>\n<body>hello</body>\n")


def test_each_write_adds_a_point_per_series(tmp_path: Path) -> None:
    write_scalars(tmp_path, {"latency/iris/p99": 0.25, "requests/iris": 10}, step=100, wall_time=1e9)
    write_scalars(tmp_path, {"latency/iris/p99": 0.5, "requests/iris": 30}, step=160, wall_time=1e9 + 60)
    assert read_scalars(tmp_path) == {
        "latency/iris/p99": [(100, 1e9, 0.25), (160, 1e9 + 60, 0.5)],
        "requests/iris": [(100, 1e9, 10.0), (160, 1e9 + 60, 30.0)],
    }


def test_runs_are_folders_side_by_side_named_safely(tmp_path: Path) -> None:
    runs = {
        "iris:2": {"speed/p50_b1_ms": 0.5},
        "int8-dynamic": {"speed/p50_b1_ms": 0.25},
        "../up": {"x": 1.0},
    }
    write_runs(tmp_path, runs, 7, 1700000000.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_up", "int8-dynamic", "iris_2"]
    assert read_scalars(tmp_path / "iris_2") == {"speed/p50_b1_ms": [(7, 1700000000.0, 0.5)]}
    assert read_scalars(tmp_path / "int8-dynamic") == {"speed/p50_b1_ms": [(7, 1700000000.0, 0.25)]}

"""A running server's latency and live quality, and optimization candidates' figures, as
TensorBoard scalars, for users who live there.

`scalars` reads a /metrics page (pure); `write_scalars` appends one point per series to a
TensorBoard run folder with tensorboardX (the `tensorboard` extra), `write_runs` to several runs
side by side (one per optimization candidate: TensorBoard draws them in one chart per figure).
Run it periodically (cron, a sidecar) and each run adds a point at the time it was taken.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from shipyard.errors import InvalidInputError, MissingDependencyError
from shipyard.monitor.alerts import QUALITY_METRIC

_LATENCY = "shipyard_server_request_duration_seconds"
QUANTILES = (0.5, 0.9, 0.99)


def quantile(q: float, buckets: dict[float, float]) -> float:
    """The q-quantile of a histogram given as {upper bound: cumulative count}, interpolated inside
    its bucket as Prometheus's histogram_quantile does; NaN without observations."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if not total:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):  # in the open-ended bucket: the highest finite bound
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return lower


def scalars(exposition: str) -> dict[str, float]:
    """Per model, requests answered and p50/p90/p99 latency since the server started; per
    version, the live quality metrics. Tags: `requests/M`, `latency/M/p99`, `quality/M:V/metric`."""
    try:
        families = list(text_string_to_metric_families(exposition))
    except ValueError as exc:
        raise InvalidInputError(f"not a Prometheus metrics page: {exc}", field="url") from exc
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    out: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if sample.name == f"{_LATENCY}_bucket":
                buckets[labels["model"]][float(labels["le"])] += sample.value
            elif sample.name == f"{_LATENCY}_count":
                tag = f"requests/{labels['model']}"
                out[tag] = out.get(tag, 0.0) + sample.value
            elif sample.name == QUALITY_METRIC:
                out[f"quality/{labels['model']}:{labels['version']}/{labels['metric']}"] = sample.value
    for model, histogram in buckets.items():
        for q in QUANTILES:
            value = quantile(q, histogram)
            if not math.isnan(value):
                out[f"latency/{model}/p{round(q * 100)}"] = value
    return out


def require_writer() -> None:
    """MissingDependencyError naming the extra unless tensorboardX is installed: checked before
    minutes of work whose figures it would write."""
    _summary_writer()


def _summary_writer() -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise MissingDependencyError("tensorboardX", "tensorboard", "writing TensorBoard scalars") from exc
    return SummaryWriter


def write_scalars(folder: Path, values: dict[str, float], step: int, wall_time: float) -> None:
    """Append one point per tag to the TensorBoard run in `folder` (a new event file each time,
    which TensorBoard reads together)."""
    # Event files are named by the second and host: a suffix keeps two writes in one second apart.
    writer = _summary_writer()(logdir=str(folder), filename_suffix=f".{uuid.uuid4().hex[:12]}")
    try:
        for tag, value in sorted(values.items()):
            writer.add_scalar(tag, value, global_step=step, walltime=wall_time)
    finally:
        writer.close()


def run_folder(name: str) -> str:
    """A run's folder name: `name` with anything but letters, digits, `.`, `_` and `-` as `_`
    (a candidate may be named after a reference, `iris:2`)."""
    return re.sub(r"[^\w.-]", "_", name).lstrip(".") or "_"


def write_runs(folder: Path, runs: dict[str, dict[str, float]], step: int, wall_time: float) -> None:
    """One point per tag in each run, `folder/<run>` (see `run_folder`)."""
    for name, values in runs.items():
        write_scalars(folder / run_folder(name), values, step, wall_time)

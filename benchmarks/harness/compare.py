"""Comparing targets loaded in alternating rounds on a host whose speed drifts.

This host's throughput moves ±30% within minutes and ±20% between consecutive 2-second loads, so
totals over a run let one slow minute decide. A round's loads run back to back: the ratio of a
target to the baseline within each round cancels most of the drift, and the median over rounds
drops the rounds a neighbour disturbed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def paired_ratio(values: Sequence[float], base: Sequence[float]) -> float:
    """The median over rounds of `values[i] / base[i]`."""
    return statistics.median(v / b for v, b in zip(values, base, strict=True))


def middle_half(values: Sequence[float], base: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles of the per-round ratios: how far rounds disagree."""
    ratios = [v / b for v, b in zip(values, base, strict=True)]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    low, _, high = statistics.quantiles(ratios, n=4)
    return low, high

"""Per-feature drift of current inputs from a reference profile, with the methods users know.

The defaults follow Evidently's documented choice, with one difference: Evidently picks by the
size of the *reference*; a Shipyard reference is a stored profile, usually large, so the size of
the *current window* picks instead (a test's power grows with the smaller sample):

- numeric feature, window of up to `small_window_rows` (1000) values: two-sample
  Kolmogorov–Smirnov test; larger: Wasserstein distance divided by the reference's std;
- categorical feature, small window: chi-square goodness-of-fit against the reference's
  frequencies (two-proportion z-test for two categories); larger: Jensen–Shannon distance
  (natural log) over the categories;
- PSI on request, over the same buckets as Jensen–Shannon;
- a text embedding summary (`monitor.embedding`, kind `embedding`): each of its dimensions is
  judged as a numeric feature (KS or Wasserstein, by the same rule), and the feature's score
  combines them so that it keeps its method's meaning and threshold: for a test the smallest
  p-value times the number of dimensions (Bonferroni: still a p-value, at most 0.05 in 5% of
  undrifted windows), for a distance the largest one. This is Evidently's per-component view of
  embedding drift (its `ratio` method) with the family-wise rule in place of a share, because
  the reference is a profile (no rows for a domain classifier) and because Shipyard's alert
  rules and dashboards read every score as a p-value or a distance.

A test says "drifted" when its p-value is below `p_value` (0.05), a distance when it is at or
above `distance` (0.1); the input as a whole has drifted when the share of drifted features is
at least `drift_share` (0.5). `score` is what is compared with the threshold: the p-value of a
test, the value of a distance (Evidently's convention).

What the profile costs in accuracy: the reference CDF is known exactly at its stored points and
rises by less than 1/RESOLUTION between two of them, so the KS statistic is within
1/RESOLUTION (0.005) of the one on the raw reference, the Wasserstein distance within
(max - min)/RESOLUTION, and both are exact for features with at most RESOLUTION + 1 distinct
values. Histogram methods are exact on the profile's buckets: edges fixed by the reference's
central 99% with a bucket below and above (Evidently bins reference and current together, so
its PSI and Jensen–Shannon values differ slightly). KS p-values are asymptotic, as
`scipy.stats.ks_2samp(method="asymp")`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shipyard.monitor.profile import OTHER, Feature, Profile, category_keys, column
from shipyard.settings import DriftSettings

TESTS = frozenset({"ks", "chisquare", "z"})  # methods whose score is a p-value


# --- the numerics, each checked against scipy in the unit tests -----------------------------


def reference_cdf(feature: Feature, at: np.ndarray, *, right_of: bool = False) -> np.ndarray:
    """The reference's CDF at `at` (or just right of it), from the profile's stored points.

    At a stored point, and everywhere when the points are every distinct value, it is exact.
    Strictly between two quantile points v < w the true CDF lies in [F(v), min(F(v) + 1/R, F(w)))
    (R: the resolution); the middle of that range is returned, so the error is under 1/(2R).
    """
    x, count = feature.cdf_x, feature.cdf_count
    index = np.searchsorted(x, at, side="right") - 1
    clipped = np.maximum(index, 0)
    exact = np.where(index >= 0, count[clipped], 0) / feature.count
    if feature.cdf_exact:
        return exact
    following = count[np.minimum(index + 1, len(x) - 1)] / feature.count
    middle = (exact + np.minimum(exact + 1 / feature.resolution, following)) / 2
    between = (index >= 0) & (index < len(x) - 1)
    if not right_of:
        between &= x[clipped] != at
    return np.where(between, middle, exact)


def ks_statistic(feature: Feature, current: np.ndarray) -> float:
    """sup |F_ref - F_cur| (`current` sorted): both CDFs are steps, so the supremum is taken at
    a current value, at a stored point, or just right of a stored point."""
    m = len(current)
    at_current = reference_cdf(feature, current) - np.searchsorted(current, current, side="right") / m
    cur_at_points = np.searchsorted(current, feature.cdf_x, side="right") / m
    at_points = reference_cdf(feature, feature.cdf_x) - cur_at_points
    right_of_points = reference_cdf(feature, feature.cdf_x, right_of=True) - cur_at_points
    return float(max(np.abs(at_current).max(), np.abs(at_points).max(), np.abs(right_of_points).max()))


def ks_pvalue(statistic: float, n: int, m: int) -> float:
    """Two-sided asymptotic p-value of the two-sample KS statistic for sample sizes n and m."""
    from scipy.stats import kstwo

    big, small = max(n, m), min(n, m)
    effective = round(big * small / (big + small))
    return float(np.clip(kstwo.sf(statistic, effective), 0.0, 1.0))


def wasserstein(feature: Feature, current: np.ndarray) -> float:
    """First Wasserstein distance: the area between the two CDFs (`current` sorted)."""
    points = np.unique(np.concatenate([feature.cdf_x, current]))
    if len(points) < 2:
        return 0.0
    ref = reference_cdf(feature, points[:-1], right_of=True)
    cur = np.searchsorted(current, points[:-1], side="right") / len(current)
    return float(np.sum(np.abs(ref - cur) * np.diff(points)))


def chisquare(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Chi-square goodness of fit of current counts to the reference's frequencies: (statistic,
    p-value). A category the reference never saw makes the statistic infinite (p = 0)."""
    from scipy.special import chdtrc

    keep = (reference > 0) | (current > 0)
    reference, current = reference[keep], current[keep]
    if len(reference) < 2:
        return 0.0, 1.0
    expected = reference * (current.sum() / reference.sum())
    if np.any((expected == 0) & (current > 0)):
        return math.inf, 0.0
    statistic = float(np.sum((current - expected) ** 2 / expected))
    return statistic, float(chdtrc(len(reference) - 1, statistic))


def z_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-proportion z-test on two categories' counts: (z, two-sided p-value)."""
    from scipy.special import ndtr

    n1, n2 = float(reference.sum()), float(current.sum())
    p1, p2 = reference[0] / n1, current[0] / n2
    pooled = (reference[0] + current[0]) / (n1 + n2)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if spread == 0:  # one category only, in both
        return 0.0, 1.0
    z = float((p1 - p2) / spread)
    return z, float(2 * ndtr(-abs(z)))


def jensenshannon(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen–Shannon distance (natural log) between two histograms."""
    p = reference / reference.sum()
    q = current / current.sum()
    m = (p + q) / 2
    divergence = _relative_entropy(p, m) + _relative_entropy(q, m)
    return float(math.sqrt(max(divergence, 0.0) / 2))


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index: sum (r - c) ln(r / c) over shares, empty buckets filled with a
    small share (as Evidently does) so one empty bucket does not make it infinite."""
    r = _filled(reference / reference.sum())
    c = _filled(current / current.sum())
    return float(np.sum((r - c) * np.log(r / c)))


def _relative_entropy(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _filled(shares: np.ndarray) -> np.ndarray:
    nonzero = shares[shares > 0]
    smallest = float(nonzero.min()) if len(nonzero) else 1.0
    return np.where(shares == 0, smallest / 1e6 if smallest <= 1e-4 else 1e-4, shares)


# --- reports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's verdict, and the two distributions behind it (shares per bucket)."""

    name: str
    kind: str
    method: str
    score: float | None  # p-value (tests) or distance; None when there is nothing to compare
    statistic: float | None  # KS D, chi-square, z, or the distance again
    threshold: float
    drifted: bool
    rows: int  # current values compared (missing ones excluded)
    missing: tuple[float, float]  # (reference, current) share of missing values
    histogram: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> float:
        """Over 1 when drifted, larger when worse: comparable across methods, for sorting."""
        if self.score is None:
            return -1.0
        if self.method in TESTS:
            return math.log(max(self.score, 1e-300)) / math.log(self.threshold)
        return self.score / self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "method": self.method,
            "score": _finite(self.score),
            "statistic": _finite(self.statistic),
            "threshold": self.threshold,
            "drifted": self.drifted,
            "rows": self.rows,
            "missing": {"reference": self.missing[0], "current": self.missing[1]},
            "histogram": self.histogram,
        }


@dataclass(frozen=True)
class DriftReport:
    """Every feature's drift, worst first, and the verdict on the input as a whole."""

    rows: int
    reference_rows: int
    features: tuple[FeatureDrift, ...]
    drift_share: float
    min_rows: int
    workers: tuple[tuple[str, int], ...] = ()  # rows from each worker, when several share a window

    @property
    def judged(self) -> int:
        return sum(f.score is not None for f in self.features)

    @property
    def drifted(self) -> int:
        return sum(f.drifted for f in self.features)

    @property
    def share(self) -> float:
        return self.drifted / self.judged if self.judged else 0.0

    @property
    def detected(self) -> bool | None:
        """None until the window has `min_rows` rows."""
        if self.rows < self.min_rows or not self.judged:
            return None
        return self.share >= self.drift_share

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "reference_rows": self.reference_rows,
            "min_rows": self.min_rows,
            "detected": self.detected,
            "drifted_features": self.drifted,
            "judged_features": self.judged,
            "share": self.share,
            "drift_share": self.drift_share,
            "features": [f.to_dict() for f in self.features],
        }


def compare(profile: Profile, arrays: Mapping[str, np.ndarray], settings: DriftSettings) -> DriftReport:
    """Drift of `arrays` (current inputs, rows on axis 0) from `profile`, feature by feature."""
    rows = max((len(a) for a in arrays.values()), default=0)
    return compare_columns(profile, feature_columns(profile, arrays), rows, settings)


def feature_columns(profile: Profile, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each feature's values in `arrays`, by feature name (see `profile.column`)."""
    return {feature.name: column(feature, arrays) for feature in profile.features}


def compare_columns(
    profile: Profile,
    columns: Mapping[str, np.ndarray],
    rows: int,
    settings: DriftSettings,
    workers: tuple[tuple[str, int], ...] = (),
) -> DriftReport:
    """Drift of `rows` current rows, given as `feature_columns`, from `profile`."""
    results = [_feature_drift(feature, columns[feature.name], settings) for feature in profile.features]
    results.sort(key=lambda r: (not r.drifted, -r.severity, r.name))
    return DriftReport(rows, profile.rows, tuple(results), settings.drift_share, settings.min_rows, workers)


def choose_method(kind: str, rows: int, categories: int, settings: DriftSettings) -> str:
    """The method for one feature: the configured one, or Evidently's default for its size."""
    small = rows <= settings.small_window_rows
    if kind == "numeric":
        return (
            settings.numeric_method
            if settings.numeric_method != "auto"
            else ("ks" if small else "wasserstein")
        )
    if settings.categorical_method != "auto":
        return settings.categorical_method
    if small:
        return "z" if categories <= 2 else "chisquare"
    return "jensenshannon"


def _feature_drift(feature: Feature, values: np.ndarray, settings: DriftSettings) -> FeatureDrift:
    if feature.kind == "categorical":
        return _categorical_drift(feature, values, settings)
    if feature.kind == "embedding":
        return _embedding_drift(feature, values, settings)
    present = np.sort(values[np.isfinite(values)])
    missing = (
        _rate(feature.missing, feature.missing + feature.count),
        _rate(len(values) - len(present), len(values)),
    )
    method = choose_method("numeric", len(present), 0, settings)
    threshold = settings.p_value if method in TESTS else settings.distance
    reference_buckets = feature.buckets
    current_buckets = np.bincount(
        np.searchsorted(feature.edges, present, side="right"), minlength=len(feature.edges) + 1
    )
    histogram = {
        "edges": feature.edges.tolist(),
        "reference": _shares(reference_buckets),
        "current": _shares(current_buckets),
    }
    if not feature.count or not len(present):
        return FeatureDrift(
            feature.name, "numeric", method, None, None, threshold, False, len(present), missing, histogram
        )
    if method == "ks":
        statistic = ks_statistic(feature, present)
        score = ks_pvalue(statistic, feature.count, len(present))
    elif method == "wasserstein":
        score = statistic = wasserstein(feature, present) / max(feature.std, 0.001)
    elif method == "psi":
        score = statistic = psi(reference_buckets.astype(np.float64), current_buckets.astype(np.float64))
    else:
        score = statistic = jensenshannon(
            reference_buckets.astype(np.float64), current_buckets.astype(np.float64)
        )
    drifted = score < threshold if method in TESTS else score >= threshold
    return FeatureDrift(
        feature.name,
        "numeric",
        method,
        score,
        statistic,
        threshold,
        bool(drifted),
        len(present),
        missing,
        histogram,
    )


def _categorical_drift(feature: Feature, values: np.ndarray, settings: DriftSettings) -> FeatureDrift:
    keys = category_keys(values)
    known = feature.categories
    current: dict[str, int] = {}
    present = 0
    for key in keys:
        if key is None:
            continue
        present += 1
        bucket = key if key in known else OTHER
        current[bucket] = current.get(bucket, 0) + 1
    names = [*known, *(k for k in current if k not in known)]
    reference_counts = np.array([known.get(k, 0) for k in names], dtype=np.float64)
    current_counts = np.array([current.get(k, 0) for k in names], dtype=np.float64)
    missing = (_rate(feature.missing, feature.missing + feature.count), _rate(len(keys) - present, len(keys)))
    method = choose_method("categorical", present, len(names), settings)
    if method == "z" and len(names) > 2:
        method = "chisquare"  # a z-test compares two proportions only
    threshold = settings.p_value if method in TESTS else settings.distance
    histogram = {
        "categories": names,
        "reference": _shares(reference_counts),
        "current": _shares(current_counts),
    }
    if not feature.count or not present:
        return FeatureDrift(
            feature.name, "categorical", method, None, None, threshold, False, present, missing, histogram
        )
    if method == "chisquare":
        statistic, score = chisquare(reference_counts, current_counts)
    elif method == "z":
        pair_ref = np.pad(reference_counts, (0, 2 - len(names)))
        pair_cur = np.pad(current_counts, (0, 2 - len(names)))
        statistic, score = z_test(pair_ref, pair_cur)
    elif method == "psi":
        score = statistic = psi(reference_counts, current_counts)
    else:
        score = statistic = jensenshannon(reference_counts, current_counts)
    drifted = score < threshold if method in TESTS else score >= threshold
    return FeatureDrift(
        feature.name,
        "categorical",
        method,
        score,
        statistic,
        threshold,
        bool(drifted),
        present,
        missing,
        histogram,
    )


def _embedding_drift(feature: Feature, vectors: np.ndarray, settings: DriftSettings) -> FeatureDrift:
    """Each dimension judged as a numeric feature, combined (module docstring): a Bonferroni
    p-value for tests, the largest distance otherwise. The histogram is the worst dimension's."""
    parts = [_feature_drift(c, vectors[:, d], settings) for d, c in enumerate(feature.components)]
    method, threshold = parts[0].method, parts[0].threshold
    scored = [p for p in parts if p.score is not None]
    worst = max(scored, key=lambda p: p.severity) if scored else parts[0]
    histogram = {**worst.histogram, "component": worst.name}
    if not scored:
        return replace(worst, name=feature.name, kind="embedding", histogram=histogram)
    if method in TESTS:
        score = min(1.0, min(float(p.score or 0.0) for p in scored) * len(parts))
        drifted = score < threshold
    else:
        score = max(float(p.score or 0.0) for p in scored)
        drifted = score >= threshold
    return replace(
        worst,
        name=feature.name,
        kind="embedding",
        score=score,
        drifted=bool(drifted),
        histogram=histogram,
    )


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _shares(counts: np.ndarray) -> list[float]:
    total = float(counts.sum())
    return [float(c) / total if total else 0.0 for c in counts]


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an infinite chi-square statistic is reported as None."""
    return value if value is None or math.isfinite(value) else None

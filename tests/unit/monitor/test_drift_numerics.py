"""Drift numerics against scipy: each method on the profile agrees with scipy on the raw data,
exactly where the profile is exact, and within the documented bound where it keeps quantiles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance
from scipy.special import rel_entr

from shipyard.monitor import drift
from shipyard.monitor.profile import RESOLUTION, Feature, Profile, build_profile
from shipyard.types import Signature, TensorSpec

ONE = Signature((TensorSpec("x", "FP64", (-1,)),), ())


def feature_of(values: np.ndarray) -> Feature:
    """The stored (JSON round-tripped) profile feature of one numeric column."""
    stored = json.loads(json.dumps(build_profile({"x": values}, ONE).to_dict()))
    (feature,) = Profile.from_dict(stored).features
    assert feature.kind == "numeric"
    return feature


def continuous(seed: int, n: int = 20_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, n // 2), rng.gamma(2.0, 1.5, n - n // 2)])


CURRENTS = {
    "same": lambda rng: rng.normal(0, 1, 400),
    "shifted": lambda rng: rng.normal(0.4, 1, 400),
    "scaled": lambda rng: rng.normal(0, 2.5, 3000),
    "outside": lambda rng: rng.normal(12, 1, 50),
}


@pytest.mark.parametrize("case", list(CURRENTS))
def test_ks_is_exact_when_the_profile_holds_every_value(case: str) -> None:
    rng = np.random.default_rng(1)
    reference = np.round(rng.normal(0, 1, 5000), 1)  # about 80 distinct values: all stored
    current = CURRENTS[case](rng)
    feature = feature_of(reference)
    assert feature.cdf_exact
    statistic = drift.ks_statistic(feature, np.sort(current))
    expected = stats.ks_2samp(reference, current, method="asymp")
    assert statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert drift.ks_pvalue(statistic, len(reference), len(current)) == pytest.approx(
        expected.pvalue, rel=1e-9
    )


@pytest.mark.parametrize("seed", [2, 3, 4])
@pytest.mark.parametrize("case", list(CURRENTS))
def test_ks_from_quantiles_is_within_half_a_step_of_scipy(seed: int, case: str) -> None:
    reference = continuous(seed)
    current = CURRENTS[case](np.random.default_rng(seed + 10))
    feature = feature_of(reference)
    assert not feature.cdf_exact and len(feature.cdf_x) == RESOLUTION + 1
    statistic = drift.ks_statistic(feature, np.sort(current))
    expected = stats.ks_2samp(reference, current, method="asymp").statistic
    assert abs(statistic - expected) < 1 / (2 * RESOLUTION)


@pytest.mark.parametrize("case", list(CURRENTS))
def test_wasserstein_is_exact_when_the_profile_holds_every_value(case: str) -> None:
    rng = np.random.default_rng(5)
    reference = rng.integers(-50, 50, 3000).astype(np.float64)
    current = CURRENTS[case](rng)
    feature = feature_of(reference)
    assert drift.wasserstein(feature, np.sort(current)) == pytest.approx(
        stats.wasserstein_distance(reference, current), rel=1e-9
    )


@pytest.mark.parametrize("seed", [6, 7])
@pytest.mark.parametrize("case", list(CURRENTS))
def test_wasserstein_from_quantiles_is_within_the_bound(seed: int, case: str) -> None:
    reference = continuous(seed)
    current = CURRENTS[case](np.random.default_rng(seed))
    feature = feature_of(reference)
    estimate = drift.wasserstein(feature, np.sort(current))
    expected = stats.wasserstein_distance(reference, current)
    bound = (feature.max - feature.min) / (2 * RESOLUTION)
    assert abs(estimate - expected) <= bound
    # In practice far inside the bound: under 0.01 reference std, a tenth of the 0.1 threshold.
    assert abs(estimate - expected) / feature.std < 0.01


def test_histogram_methods_agree_with_scipy_on_the_profile_buckets() -> None:
    rng = np.random.default_rng(8)
    reference = rng.lognormal(0, 1, 8000)
    current = rng.lognormal(0.3, 1.2, 2000)
    feature = feature_of(reference)

    # The stored buckets are the raw reference's counts on the stored edges, tails included.
    def buckets(values: np.ndarray) -> np.ndarray:
        inner = np.histogram(values, feature.edges)[0]
        inner[-1] -= np.count_nonzero(values == feature.edges[-1])  # numpy closes its last bin
        below = np.count_nonzero(values < feature.edges[0])
        above = np.count_nonzero(values >= feature.edges[-1])
        return np.concatenate([[below], inner, [above]]).astype(np.float64)

    assert feature.buckets.tolist() == buckets(reference).tolist()
    ref, cur = buckets(reference), buckets(current)
    assert drift.jensenshannon(ref, cur) == pytest.approx(distance.jensenshannon(ref, cur), rel=1e-12)
    filled_r = drift._filled(ref / ref.sum())
    filled_c = drift._filled(cur / cur.sum())
    expected_psi = rel_entr(filled_r, filled_c).sum() + rel_entr(filled_c, filled_r).sum()
    assert drift.psi(ref, cur) == pytest.approx(expected_psi, rel=1e-12)


def test_psi_fills_an_empty_bucket_instead_of_going_infinite() -> None:
    value = drift.psi(np.array([50.0, 50.0, 0.0]), np.array([40.0, 40.0, 20.0]))
    assert np.isfinite(value) and value > 0.1


@pytest.mark.parametrize(
    ("reference", "current"),
    [([120, 30, 50], [20, 9, 11]), ([500, 499, 1], [30, 31, 2]), ([10, 10, 10, 10], [3, 4, 5, 28])],
)
def test_chisquare_agrees_with_scipy(reference: list[int], current: list[int]) -> None:
    ref, cur = np.array(reference, dtype=np.float64), np.array(current, dtype=np.float64)
    statistic, p_value = drift.chisquare(ref, cur)
    expected = stats.chisquare(cur, ref * cur.sum() / ref.sum())
    assert statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9)


def test_chisquare_calls_an_unseen_category_drift() -> None:
    assert drift.chisquare(np.array([10.0, 5.0, 0.0]), np.array([3.0, 2.0, 1.0])) == (np.inf, 0.0)


@pytest.mark.parametrize(
    ("reference", "current"), [([700, 300], [55, 45]), ([90, 10], [80, 20]), ([5, 5], [5, 5])]
)
def test_z_test_agrees_with_scipy_contingency(reference: list[int], current: list[int]) -> None:
    z, p_value = drift.z_test(np.array(reference, dtype=np.float64), np.array(current, dtype=np.float64))
    expected = stats.chi2_contingency(np.array([reference, current]), correction=False)
    assert z**2 == pytest.approx(expected.statistic, rel=1e-9, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, rel=1e-9)


def test_categorical_jensenshannon_agrees_with_scipy() -> None:
    ref, cur = np.array([40.0, 30.0, 20.0, 10.0]), np.array([10.0, 20.0, 30.0, 40.0])
    assert drift.jensenshannon(ref, cur) == pytest.approx(distance.jensenshannon(ref, cur), rel=1e-12)

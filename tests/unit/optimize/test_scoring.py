"""The one R² of the optimizer agrees with scikit-learn's, argument order included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics

from shipyard.optimize.scoring import METRICS, r2_score

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(50,), (50, 1), (50, 3)])
def test_r2_matches_sklearn(shape: tuple[int, ...]) -> None:
    truth = RNG.standard_normal(shape)
    pred = truth + 0.3 * RNG.standard_normal(shape)
    assert r2_score(truth, pred) == pytest.approx(metrics.r2_score(truth, pred))
    # R² is not symmetric: the argument order matters and is sklearn's (truth, prediction).
    assert r2_score(pred, truth) == pytest.approx(metrics.r2_score(pred, truth))
    assert r2_score(truth, pred) != pytest.approx(r2_score(pred, truth))


def test_r2_of_a_constant_truth_follows_sklearn() -> None:
    truth = np.ones(10)
    assert r2_score(truth, truth) == metrics.r2_score(truth, truth) == 1.0
    assert r2_score(truth, truth + 1) == metrics.r2_score(truth, truth + 1) == 0.0


def test_the_r2_metric_takes_predictions_then_targets() -> None:
    truth = RNG.standard_normal(40)
    pred = 0.5 * truth + RNG.standard_normal(40)
    r2, higher_is_better = METRICS["r2"]
    assert higher_is_better
    assert r2(pred, truth) == pytest.approx(metrics.r2_score(truth, pred))

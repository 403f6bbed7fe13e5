"""Live quality's numbers against scikit-learn's: accuracy, precision, recall and F1 (macro and per
class, a class never predicted or never true included), MAE and RMSE; windows of rows and time."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)

from shipyard.errors import InvalidInputError
from shipyard.monitor.feedback_store import CLASSIFICATION, REGRESSION, Labelled
from shipyard.monitor.quality import Window, _quantile, score, score_records
from shipyard.settings import Settings


def assert_like_sklearn(truth: list[Any], predicted: list[Any], max_classes: int = 20) -> None:
    scores = score(CLASSIFICATION, truth, predicted, max_classes)
    assert scores.rows == len(truth)
    assert scores.metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-12)
    macro = precision_recall_fscore_support(truth, predicted, average="macro", zero_division=0)
    assert scores.metrics["precision_macro"] == pytest.approx(macro[0], abs=1e-12)
    assert scores.metrics["recall_macro"] == pytest.approx(macro[1], abs=1e-12)
    assert scores.metrics["f1_macro"] == pytest.approx(macro[2], abs=1e-12)
    labels = sorted(set(truth) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    assert [c.label for c in scores.classes] == labels[:max_classes]
    for i, c in enumerate(scores.classes):
        assert (c.precision, c.recall, c.f1) == pytest.approx((precision[i], recall[i], f1[i]), abs=1e-12)
        assert c.support == support[i]


@pytest.mark.parametrize("seed", range(8))
def test_classification_agrees_with_sklearn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 9))
    rows = int(rng.integers(1, 400))
    truth = rng.integers(0, classes, rows).tolist()
    # Mostly right, as a model would be, with some rows wrong at random.
    predicted = [t if rng.random() < 0.7 else int(rng.integers(0, classes)) for t in truth]
    assert_like_sklearn(truth, predicted)


def test_classes_never_predicted_or_never_true_count_as_sklearn_counts_them() -> None:
    truth = ["setosa", "setosa", "virginica", "versicolor", "versicolor"]
    predicted = ["setosa", "versicolor", "versicolor", "versicolor", "unseen"]
    assert_like_sklearn(truth, predicted)  # virginica never predicted, unseen never true
    scores = score(CLASSIFICATION, truth, predicted)
    assert {c.label: c.precision for c in scores.classes}["virginica"] == 0.0
    assert {c.label: c.recall for c in scores.classes}["unseen"] == 0.0


def test_all_right_and_all_wrong() -> None:
    assert score(CLASSIFICATION, [1, 2, 3], [1, 2, 3]).metrics == {
        "accuracy": 1.0,
        "precision_macro": 1.0,
        "recall_macro": 1.0,
        "f1_macro": 1.0,
    }
    assert_like_sklearn([0, 0, 1], [1, 1, 0])
    assert_like_sklearn([True, False, True], [True, True, True])


def test_per_class_figures_are_bounded_but_the_macro_counts_every_class() -> None:
    truth = list(range(30)) * 2
    predicted = truth[1:] + truth[:1]
    scores = score(CLASSIFICATION, truth, predicted, max_classes=5)
    assert [c.label for c in scores.classes] == [0, 1, 2, 3, 4]
    assert_like_sklearn(truth, predicted, max_classes=5)
    series = dict(scores.metric_series())
    assert len(series) == 4 + 3 * 5
    assert set(series) >= {"accuracy", "f1_macro", "precision:0", "recall:4", "f1:2"}


@pytest.mark.parametrize("seed", range(5))
def test_regression_agrees_with_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.normal(10, 3, int(rng.integers(1, 300))).tolist()
    predicted = (np.asarray(truth) + rng.normal(0, 1.5, len(truth))).tolist()
    scores = score(REGRESSION, truth, predicted)
    assert scores.metrics["mae"] == pytest.approx(mean_absolute_error(truth, predicted), rel=1e-12)
    assert scores.metrics["rmse"] == pytest.approx(math.sqrt(mean_squared_error(truth, predicted)), rel=1e-12)
    assert scores.classes == []


def record(truth: list[Any], predicted: list[Any], at: float, version: int = 1) -> Labelled:
    return Labelled("m", f"r{at}", version, CLASSIFICATION, at, at + 5, predicted, truth)


def test_a_count_window_scores_the_newest_rows_only() -> None:
    newest_first = [record([1, 1], [1, 1], 30.0), record([0], [1], 20.0), record([0, 0], [1, 1], 10.0)]
    scores = score_records(newest_first, rows=4, max_classes=20)
    assert scores is not None and scores.rows == 4  # the oldest request's second row left out
    assert scores.metrics["accuracy"] == 0.5
    everything = score_records(newest_first, rows=None, max_classes=20)
    assert everything is not None and everything.rows == 5 and everything.metrics["accuracy"] == 0.4
    assert score_records([], rows=None, max_classes=20) is None


def test_delay_quantiles_match_numpy() -> None:
    values = sorted(np.random.default_rng(3).exponential(600, 101).tolist())
    for q in (0.5, 0.9):
        assert _quantile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))
    assert _quantile([], 0.5) is None


def test_windows_parse_rows_and_durations_within_what_the_log_keeps() -> None:
    settings = Settings.load(
        quality={"window_rows": 300, "window_s": 7200}, prediction_log={"max_age_s": 86400}
    )
    assert Window.parse(None, settings) == Window(300, 7200.0, "default")
    assert Window.parse("500", settings) == Window(500, 86400.0, "500")
    assert Window.parse("90m", settings) == Window(None, 5400.0, "90m")
    assert Window.parse("1d", settings).seconds == 86400.0
    with pytest.raises(InvalidInputError) as longer:
        Window.parse("2d", settings)
    assert longer.value.field == "window"
    assert (
        "longer than the prediction log keeps (1d, setting prediction_log.max_age_s)" in longer.value.message
    )
    for bad in ("0", "soon", "-5m", "1w"):
        with pytest.raises(InvalidInputError) as malformed:
            Window.parse(bad, settings)
        assert malformed.value.field == "window", bad
    # The default time window never reaches past the log either.
    short = Settings.load(quality={"window_s": 86400 * 30}, prediction_log={"max_age_s": 3600})
    assert Window.parse(None, short).seconds == 3600.0

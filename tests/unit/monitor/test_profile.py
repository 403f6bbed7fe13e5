"""Reference profiles: what they keep per kind of feature, how they map reference data onto a
signature, and the whole-input verdict of `compare` with the method chosen by window size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shipyard.errors import InvalidInputError
from shipyard.monitor.drift import compare
from shipyard.monitor.profile import MAX_CATEGORIES, OTHER, SCHEMA, Profile, build_profile
from shipyard.monitor.reference import reference_inputs
from shipyard.settings import DriftSettings
from shipyard.types import Signature, TensorSpec

TABULAR = Signature((TensorSpec("X", "FP32", (-1, 3)),), (TensorSpec("y", "INT64", (-1,)),))


def roundtrip(profile: Profile) -> Profile:
    stored = json.loads(json.dumps(profile.to_dict(), allow_nan=False))  # strict JSON: no NaN
    assert stored["schema"] == SCHEMA
    return Profile.from_dict(stored)


def tabular(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(0, 1, n), rng.exponential(1, n), rng.integers(0, 3, n)])


def test_numeric_categorical_and_missing_values() -> None:
    data = tabular(2000, seed=1)
    data[:100, 0] = np.nan
    profile = roundtrip(build_profile({"X": data}, TABULAR, names={"X": ["age", "income", "plan"]}))
    age, income, plan = profile.features
    assert (age.name, age.kind, age.count, age.missing) == ("age", "numeric", 1900, 100)
    assert age.cdf_x[0] == np.float32(np.nanmin(data[:, 0])) and age.cdf_x[-1] == np.float32(
        np.nanmax(data[:, 0])
    )
    assert age.cdf_count[-1] == 1900 and age.buckets.sum() == 1900
    assert income.kind == "numeric" and income.std == pytest.approx(np.std(data[:, 1]), rel=1e-6)
    assert plan.kind == "categorical"  # three distinct numbers: categories, as Evidently decides
    assert plan.categories == {k: int(np.count_nonzero(data[:, 2] == int(k))) for k in ("0", "1", "2")}


def test_rare_categories_are_counted_as_other() -> None:
    signature = Signature((TensorSpec("city", "BYTES", (-1,)),), ())
    values = [f"city{i}" for i in range(MAX_CATEGORIES + 10) for _ in range(3)]
    (city,) = roundtrip(build_profile({"city": np.array(values, dtype=object)}, signature)).features
    assert city.kind == "categorical"
    assert len(city.categories) == MAX_CATEGORIES + 1 and city.categories[OTHER] == 30


def test_text_becomes_length_and_token_counts() -> None:
    signature = Signature((TensorSpec("text", "BYTES", (-1,)),), ())
    counts = np.random.default_rng(2).integers(1, 40, 300)
    texts = np.array([f"{i} " + " ".join(["word"] * int(k)) for i, k in enumerate(counts)], dtype=object)
    length, tokens, embedded = roundtrip(build_profile({"text": texts}, signature)).features
    assert (length.name, length.derive, tokens.name, tokens.derive) == (
        "text.length",
        "length",
        "text.tokens",
        "tokens",
    )
    assert tokens.max == max(len(t.split()) for t in texts) and length.max == max(map(len, texts))
    assert (embedded.name, embedded.kind, embedded.count, embedded.missing) == (
        "text.embedding",
        "embedding",
        300,
        0,
    )
    assert [c.name for c in embedded.components] == [f"text.embedding[{d}]" for d in range(8)]
    assert all(c.kind == "numeric" and c.count == 300 for c in embedded.components)


def test_a_profile_of_schema_1_is_still_read() -> None:
    stored = build_profile({"X": tabular(300, seed=3)}, TABULAR).to_dict()
    assert Profile.from_dict({**stored, "schema": 1}).to_dict() == stored


def test_wide_inputs_are_watched_through_row_summaries() -> None:
    signature = Signature((TensorSpec("image", "FP32", (-1, 3, 16, 16)),), ())
    images = np.random.default_rng(3).normal(size=(50, 3, 16, 16))
    profile = build_profile({"image": images}, signature)
    assert [f.name for f in profile.features] == ["image.mean", "image.std"]
    assert profile.summarised == {"image"}
    assert profile.features[0].mean == pytest.approx(images.reshape(50, -1).mean(axis=1).mean())


def test_profile_of_another_schema_is_refused_with_the_fix() -> None:
    with pytest.raises(InvalidInputError, match="shipyard profile"):
        Profile.from_dict({"schema": 99, "features": []})


def test_records_map_columns_in_file_order_without_the_label() -> None:
    records = [{"a": 1.0, "b": "", "c": 3, "label": 0}, {"a": 2.0, "b": 5.5, "c": 1, "label": 1}]
    inputs, names = reference_inputs(records, TABULAR, "ref.csv")
    assert names == {"X": ["a", "b", "c"]}
    assert np.isnan(inputs["X"][0, 1]) and inputs["X"][1].tolist() == [2.0, 5.5, 1.0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"a": 1, "b": 2}], "has 2 feature columns (a, b) but the model takes 3 features in input X"),
        ([{"a": 1, "b": "x", "c": 2}], "row 1 column 'b' holds 'x', not a number"),
        ({"Z": [[1, 2, 3]]}, "names Z but the model's inputs are X (missing: X)"),
        (np.zeros((4, 5)), "rows of shape [5], the model takes X: FP32[?, 3]"),
    ],
)
def test_reference_that_does_not_fit_the_signature_names_the_columns(data: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=None) as caught:
        reference_inputs(data, TABULAR, "ref.csv")
    assert message in caught.value.message


def test_compare_uses_tests_for_small_windows_and_distances_for_large() -> None:
    profile = build_profile({"X": tabular(5000, seed=4)}, TABULAR)
    settings = DriftSettings()
    small = compare(profile, {"X": tabular(500, seed=5)}, settings)
    assert {(f.kind, f.method) for f in small.features} == {("numeric", "ks"), ("categorical", "chisquare")}
    large = compare(profile, {"X": tabular(3000, seed=6)}, settings)
    assert {(f.kind, f.method) for f in large.features} == {
        ("numeric", "wasserstein"),
        ("categorical", "jensenshannon"),
    }
    assert small.detected is False and large.detected is False


def test_shifted_inputs_drift_and_come_first() -> None:
    profile = build_profile({"X": tabular(5000, seed=7)}, TABULAR, names={"X": ["a", "b", "c"]})
    shifted = tabular(300, seed=8)
    shifted[:, 0] += 1.0
    shifted[:, 1] *= 3
    report = compare(profile, {"X": shifted}, DriftSettings())
    assert {f.name for f in report.features[:2]} == {"a", "b"}  # worst first
    assert [f.drifted for f in report.features] == [True, True, False]
    assert report.detected is True and report.share == pytest.approx(2 / 3)
    assert report.to_dict()["features"][0]["histogram"]["reference"]  # what a picture needs


def test_a_window_under_min_rows_gets_no_verdict() -> None:
    profile = build_profile({"X": tabular(500, seed=9)}, TABULAR)
    report = compare(profile, {"X": tabular(5, seed=10) + 10}, DriftSettings(min_rows=30))
    assert report.detected is None and report.drifted >= 1


def test_methods_can_be_chosen() -> None:
    profile = build_profile({"X": tabular(2000, seed=11)}, TABULAR)
    settings = DriftSettings(numeric_method="psi", categorical_method="jensenshannon")
    report = compare(profile, {"X": tabular(100, seed=12)}, settings)
    assert {f.method for f in report.features} == {"psi", "jensenshannon"}

"""coerce_inputs: user input (rows, one row, named arrays) checked and cast against a signature."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.errors import InvalidInputError
from shipyard.tensors import coerce_inputs, datatype_of, numpy_dtype, to_jsonable
from shipyard.types import DATATYPES, Signature, TensorSpec

IRIS = Signature((TensorSpec("X", "FP32", (-1, 4)),), (TensorSpec("label", "INT64", (-1,)),))
COUNTS = Signature((TensorSpec("counts", "INT64", (-1, 2)),), ())
TEXT = Signature((TensorSpec("text", "BYTES", (-1,)),), ())
TWO = Signature((TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "INT64", (-1,))), ())

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]


def test_rows_become_one_batch_of_the_signature_dtype() -> None:
    out = coerce_inputs(IRIS, ROWS)
    assert list(out) == ["X"]
    assert out["X"].dtype == np.float32
    assert out["X"].shape == (2, 4)
    np.testing.assert_allclose(out["X"], np.array(ROWS, dtype=np.float32))


def test_single_row_gains_a_batch_axis() -> None:
    out = coerce_inputs(IRIS, ROWS[0])
    assert out["X"].shape == (1, 4)


def test_numpy_array_is_cast() -> None:
    out = coerce_inputs(IRIS, np.array(ROWS, dtype=np.float64))
    assert out["X"].dtype == np.float32


def test_named_inputs_mapping() -> None:
    out = coerce_inputs(IRIS, {"X": ROWS})
    assert out["X"].shape == (2, 4)


def test_integers_into_floats_and_whole_floats_into_integers() -> None:
    assert coerce_inputs(IRIS, [[1, 2, 3, 4]])["X"].dtype == np.float32
    out = coerce_inputs(COUNTS, [[1.0, 2.0], [3.0, 4.0]])
    assert out["counts"].dtype == np.int64
    assert out["counts"].tolist() == [[1, 2], [3, 4]]


def test_wrong_feature_count_names_the_expected_signature() -> None:
    with pytest.raises(InvalidInputError) as info:
        coerce_inputs(IRIS, [[1.0, 2.0, 3.0]])
    message = info.value.message
    assert "wrong number of features (expected 4, got 3)" in message
    assert "X: FP32[?, 4]" in message
    assert info.value.field == "X"


def test_wrong_rank_names_the_expected_shape() -> None:
    with pytest.raises(InvalidInputError, match=r"has shape \[1, 1, 4\], expected \[\?, 4\]"):
        coerce_inputs(IRIS, [[[1, 2, 3, 4]]])
    with pytest.raises(InvalidInputError, match=r"expected \[\?, 4\]"):
        coerce_inputs(IRIS, 3.0)


@pytest.mark.parametrize(
    "rows",
    [
        [[1, 2, 3, 4], [1, 2]],
        [[1, 2, 3, 4], 5],
        [[[1, 2], [3]], [[1, 2], [3, 4]]],
    ],
    ids=["short-row", "scalar-row", "nested"],
)
def test_ragged_rows(rows: list[object]) -> None:
    with pytest.raises(InvalidInputError, match="ragged") as info:
        coerce_inputs(IRIS, rows)
    assert "X: FP32[?, 4]" in info.value.message


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param([["a", "b", "c", "d"]], id="strings"),
        pytest.param([[1, "x", 3, 4]], id="mixed-word"),
        pytest.param("1,2,3,4", id="csv-text"),
        pytest.param([[1, "2", 3, 4]], id="mixed-numeric-text"),
        pytest.param([[1, 2, 3, "nan"]], id="nan-text"),
        pytest.param([[None, 1, 2, 3]], id="null"),
    ],
)
def test_text_into_fp32_is_refused(rows: object) -> None:
    with pytest.raises(InvalidInputError, match=r"expects numbers \(FP32\)") as info:
        coerce_inputs(IRIS, rows)
    assert "X: FP32[?, 4]" in info.value.message


@pytest.mark.parametrize("rows", [[[1.5, 2]], [[1, float("nan")]], [[1, float("inf")]]])
def test_fractional_or_non_finite_into_int64_is_refused(rows: object) -> None:
    with pytest.raises(InvalidInputError, match=r"expects integers \(INT64\), got fractional"):
        coerce_inputs(COUNTS, rows)


@pytest.mark.parametrize(
    "rows", [[[1e39, 1, 1, 1]], [[1, 1, 1, -1e39]], np.array([[1e39, 1, 1, 1]])], ids=["json", "neg", "np"]
)
def test_numbers_too_large_for_fp32_are_refused_not_made_infinite(rows: object) -> None:
    with pytest.raises(InvalidInputError, match=r"'X' has values outside the range of FP32") as caught:
        coerce_inputs(IRIS, rows)
    assert caught.value.field == "X"


def test_infinities_and_nans_given_as_floats_pass_through() -> None:
    out = coerce_inputs(IRIS, np.array([[np.inf, np.nan, -np.inf, 3.4e38]]))["X"]
    assert np.isposinf(out[0, 0]) and np.isnan(out[0, 1]) and np.isneginf(out[0, 2])
    assert np.isfinite(out[0, 3])


def test_bytes_input_takes_text_and_refuses_numbers() -> None:
    out = coerce_inputs(TEXT, ["hello", "world"])
    assert out["text"].dtype == object
    assert out["text"].tolist() == ["hello", "world"]
    with pytest.raises(InvalidInputError, match=r"expects text \(BYTES\)"):
        coerce_inputs(TEXT, [1, 2])


def test_unknown_input_name_lists_the_signature() -> None:
    with pytest.raises(InvalidInputError) as info:
        coerce_inputs(IRIS, {"features": ROWS})
    message = info.value.message
    assert "unknown input(s) 'features'" in message
    assert "missing input(s) 'X'" in message
    assert "X: FP32[?, 4]" in message


def test_missing_input_of_several() -> None:
    with pytest.raises(InvalidInputError, match=r"missing input\(s\) 'b'") as info:
        coerce_inputs(TWO, {"a": [[1, 2]]})
    assert info.value.field == "b"


def test_several_inputs_need_a_mapping() -> None:
    with pytest.raises(InvalidInputError, match=r"takes 2 named inputs \('a', 'b'\)"):
        coerce_inputs(TWO, [[1, 2]])


def test_several_inputs_must_agree_on_the_batch() -> None:
    out = coerce_inputs(TWO, {"a": [[1, 2], [3, 4]], "b": [7, 8]})
    assert out["a"].shape == (2, 2) and out["b"].shape == (2,)
    with pytest.raises(InvalidInputError, match=r"disagree on the batch size .*\[2, 3\]"):
        coerce_inputs(TWO, {"a": [[1, 2], [3, 4]], "b": [7, 8, 9]})


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d not in ("BYTES", "BF16")])
def test_datatype_round_trip(datatype: str) -> None:
    assert datatype_of(numpy_dtype(datatype)) == datatype


def test_unknown_datatype_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="unsupported datatype 'FP8'"):
        numpy_dtype("FP8")
    assert datatype_of(np.dtype("U5")) == "BYTES"
    assert datatype_of(np.dtype(">f4")) == "FP32"


def test_to_jsonable_decodes_bytes() -> None:
    assert to_jsonable(np.array([b"caf\xc3\xa9", "x"], dtype=object)) == ["café", "x"]
    assert to_jsonable(np.array([[1.5, 2.0]], dtype=np.float32)) == [[1.5, 2.0]]

"""Eval files: CSV, JSONL and Parquet mapped onto a model's inputs, and every malformed case
refused with a message that names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shipyard.errors import InvalidInputError
from shipyard.optimize.evalset import load_eval
from shipyard.optimize.scoring import bootstrap, default_metric, interpret, label_keys, per_unit, score
from shipyard.types import Signature, TensorSpec

TABULAR = Signature((TensorSpec("input", "FP32", (-1, 2)),), (TensorSpec("label", "INT64", (-1,)),))
TEXT = Signature((TensorSpec("text", "BYTES", (-1,)),), (TensorSpec("embedding", "FP32", (-1, 3)),))


def test_csv_columns_become_features_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    path.write_text("a,b,label\n1,2,0\n3.5,4,1\n")
    evalset = load_eval(path, TABULAR)
    np.testing.assert_array_equal(evalset.inputs["input"], np.array([[1, 2], [3.5, 4]], dtype=np.float32))
    assert list(label_keys(evalset.labels)) == ["0", "1"] and evalset.units == 2


def test_jsonl_with_an_array_column_and_a_named_label(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps({"input": [i, i + 1], "y_true": "cat"}) for i in range(3)))
    evalset = load_eval(path, TABULAR, label="y_true")
    assert evalset.inputs["input"].shape == (3, 2) and list(evalset.labels) == ["cat"] * 3  # type: ignore[arg-type]


def test_parquet_is_read(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0], "label": [1, 0]}), str(path))
    assert load_eval(path, TABULAR).inputs["input"].tolist() == [[1.0, 3.0], [2.0, 4.0]]


def test_sentence_pairs_flatten_into_rows_and_split_by_pair(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text('sentence1,sentence2,score\n"a, b",c,1.5\nd,e,4\nf,g,0\n')
    evalset = load_eval(path, TEXT)
    assert evalset.pairs == 3 and list(evalset.inputs["text"]) == ["a, b", "d", "f", "c", "e", "g"]
    first, rest = evalset.split(1)
    assert list(first.inputs["text"]) == ["a, b", "c"] and rest.scores.tolist() == [4.0, 0.0]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("eval.csv", "a,b,label\n1,2\n", "line 2 has 2 fields but the header has 3"),
        ("eval.csv", "", "has no header row"),
        ("eval.csv", "a,b,c,label\n1,2,3,0\n", "has 3 feature columns"),
        ("eval.csv", "a,b,label\nx,2,0\n", "are not all FP32 numbers"),
        ("eval.jsonl", '{"a": 1}\nnot json\n', "line 2 is not JSON"),
        ("eval.jsonl", "[1, 2]\n", "line 1 is not a JSON object"),
        ("eval.txt", "a\n", "unknown eval file type .txt"),
        ("eval.parquet", "not parquet", "not a readable Parquet file"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        load_eval(path, TABULAR)


def test_missing_file_and_missing_label_column(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_eval(tmp_path / "nope.csv", TABULAR)
    path = tmp_path / "eval.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidInputError, match="no label column 'target'"):
        load_eval(path, TABULAR, label="target")


def test_text_models_need_a_text_column(tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    path.write_text("words,label\nhello,1\n")
    with pytest.raises(InvalidInputError, match="has no text column"):
        load_eval(path, TEXT)


def test_metrics_and_their_intervals(tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    rows = "\n".join(f"{i},{i},{i % 2}" for i in range(100))
    path.write_text("a,b,label\n" + rows + "\n")
    evalset = load_eval(path, TABULAR)
    outputs = interpret({"label": np.array([i % 2 if i < 90 else 1 - i % 2 for i in range(100)])})
    assert default_metric(evalset, outputs) == "accuracy"
    pred, target = per_unit("accuracy", evalset, outputs, outputs)
    assert score("accuracy", pred, target) == pytest.approx(0.9)
    low, high = bootstrap("accuracy", pred, target)
    assert low < 0.9 < high and high - low < 0.2
    assert list(label_keys([1, 1.0, b"1", "1", 2.5])) == ["1", "1", "1", "1", "2.5"]

"""`shipyard feedback` and `shipyard quality` on a registry home, no server: labels from flags and
files joined with the prediction log, the figures as scikit-learn computes them, the Python API
doing the same, and each bad input one line with its exit code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

import shipyard
from shipyard.cli.main import main
from shipyard.errors import ConflictError, InvalidInputError, NotFoundError
from shipyard.monitor.prediction_recorder import PredictionRecorder, Sample
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_models import tiny_onnx

# What iris predicted for requests r0..r9 (its label output), logged as a server would.
PREDICTED = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]


def noted(label: int) -> Sample:
    sample = Sample()
    sample.inputs = {"X": np.full((1, 4), 0.5, dtype=np.float32)}
    sample.outputs = {"label": np.array([label]), "probabilities": np.full((1, 3), 0.25, dtype=np.float32)}
    return sample


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """iris:1 (integer labels beside three probabilities: classes 0, 1, 2) and ten logged requests."""
    home = tmp_path / "home"
    settings = Settings.load(home=home)
    (tmp_path / "iris.onnx").write_bytes(tiny_onnx("iris"))
    with Registry(settings=settings) as registry:
        registry.push("iris", tmp_path / "iris.onnx", alias="prod")
    recorder = PredictionRecorder.create(settings, worker=1)
    assert recorder is not None
    recorder.start()
    for i, label in enumerate(PREDICTED):
        recorder.record(f"r{i}", "iris", 1, "v2", 200, 0.002, noted(label))
    recorder.close()
    return home


def cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_labels_from_flags_and_files_make_the_quality_table(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, home, "feedback", "iris", "--request-id", "r0", "--label", "0")
    assert (code, out, err) == (0, "accepted feedback for request r0 (iris:1)\n", "")
    code, _, err = cli(capsys, home, "feedback", "iris@prod", "--request-id", "r1", "--label", "2")
    assert code == 0, err

    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("request_id,label\nr2,2\nr3,0\nr4,1\nmissing,1\nr5,seven\n")
    code, out, err = cli(capsys, home, "feedback", "iris", "--file", str(csv_file))
    assert code == 3  # the first refusal's: an unknown request id
    assert out == "accepted 3 of 5 feedback items for iris\n"
    lines = err.splitlines()
    assert lines[0].startswith("item 4 (missing): no logged prediction of iris has request id 'missing'")
    assert (
        lines[1]
        == "item 5 (r5): label for 'r5' must be an integer like iris:1's classes (e.g. 0), got 'seven'"
    )
    assert lines[2].startswith("error: 2 of 5 feedback items were refused (first: no logged prediction")
    assert len(lines) == 3

    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_text('{"request_id": "r5", "label": 1}\n\n{"request_id": "r6", "label": 0}\n')
    code, out, _ = cli(capsys, home, "feedback", "iris", "--file", str(jsonl), "--json")
    assert code == 0 and json.loads(out)["accepted"] == 2

    given = [0, 2, 2, 0, 1, 1, 0]  # r0..r6
    code, out, _ = cli(capsys, home, "quality", "iris", "--json")
    assert code == 0
    report = json.loads(out)
    (version,) = report["versions"]
    assert version["version"] == 1 and version["rows"] == 7
    assert version["metrics"]["accuracy"] == pytest.approx(accuracy_score(given, PREDICTED[:7]))
    assert version["metrics"]["f1_macro"] == pytest.approx(f1_score(given, PREDICTED[:7], average="macro"))
    assert version["feedback"]["requests"] == 7 and version["feedback"]["logged"] == 10
    assert version["feedback"]["coverage"] == pytest.approx(0.7)

    code, out, _ = cli(capsys, home, "quality", "iris:1", "--window", "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("iris:1 (classification): 3 labelled rows from 3 of ")
    assert "coverage" in lines[0] and "feedback delay median" in lines[0]
    assert lines[1] == "metric\tvalue" and lines[2].startswith("accuracy\t")
    assert "class\tsupport\tprecision\trecall\tf1" in lines

    # The Python API: the same store, the same figures.
    assert shipyard.feedback("iris", "r7", 1)["status"] == 200
    accepted = shipyard.feedback(
        "iris", items=[{"request_id": "r8", "label": 2}, {"request_id": "r9", "label": 5}]
    )
    assert (accepted["accepted"], accepted["results"][1]["field"]) == (1, "label")
    figures = shipyard.quality("iris@prod", "1h", home=home)["versions"][0]
    given += [1, 2]
    assert figures["rows"] == 9
    assert figures["metrics"]["accuracy"] == pytest.approx(accuracy_score(given, PREDICTED[:9]))


@pytest.fixture(autouse=True)
def _home_for_the_api(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIPYARD_HOME", str(home))


def test_each_refusal_is_one_line_with_its_exit_code(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, home, "feedback", "iris", "--request-id", "r0", "--label", "1")[0] == 0
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id,truth\nr1,1\n")
    cases = [
        (["feedback", "iris", "--request-id", "r0", "--label", "0"], 4, "has feedback already"),
        (["feedback", "iris", "--request-id", "zz", "--label", "0"], 3, "no logged prediction of iris"),
        (["feedback", "iris", "--request-id", "r1", "--label", "7"], 2, "is not a class of iris:1"),
        (["feedback", "iris", "--request-id", "r1"], 2, "give --request-id ID with --label L"),
        (["feedback", "iris", "--file", str(bad_csv)], 2, "needs a header with request_id and one of label"),
        (["feedback", "iris", "--file", str(tmp_path / "x.txt")], 2, "feedback files are .csv, .jsonl"),
        (["feedback", "nope", "--request-id", "r1", "--label", "1"], 3, "nope"),
        (["quality", "iris", "--window", "30d"], 2, "longer than the prediction log keeps (7d"),
        (["quality", "iris", "--window", "soon"], 2, "window must be a row count"),
        (["quality", "nope"], 3, "nope"),
        (["quality", "iris", "--url", "http://127.0.0.1:9"], 6, "nothing answers at http://127.0.0.1:9"),
    ]
    for args, exit_code, message in cases:
        code, _, err = cli(capsys, home, *args)
        assert code == exit_code, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
    with pytest.raises(ConflictError):
        shipyard.feedback("iris", "r0", 2)
    with pytest.raises(NotFoundError):
        shipyard.feedback("iris", "zz", 2)
    with pytest.raises(InvalidInputError) as wrong:
        shipyard.feedback("iris", "r1", "setosa")
    assert wrong.value.field == "label"
    code, _, err = cli(capsys, home, "quality", "iris", "--window", "1m")
    assert code == 0 and err == ""  # r0's prediction is seconds old

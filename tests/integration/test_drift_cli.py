"""`shipyard push --reference`, `shipyard profile` and offline `shipyard drift REF FILE` on a real
registry, run in-process as the console script runs them; bad input is one `error:` line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from shipyard.cli.main import main
from shipyard.registry import Registry
from shipyard.settings import Settings

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def write_csv(
    path: Path, rows: np.ndarray, columns: list[str] = COLUMNS, label: np.ndarray | None = None
) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, *(["label"] if label is not None else [])])
        for i, row in enumerate(rows):
            writer.writerow([*(f"{v:g}" for v in row), *([int(label[i])] if label is not None else [])])
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def shipyard(home: Path, capsys: pytest.CaptureFixture[str]):
    def run(*args: str | Path) -> tuple[int, str, str]:
        code = main(["--home", str(home), *map(str, args)])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_push_profile_and_offline_drift(
    shipyard, home: Path, tmp_path: Path, onnx_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = iris
    reference = write_csv(tmp_path / "reference.csv", x, label=y)  # the label column is left out
    code, out, err = shipyard("push", "iris", onnx_path, "--reference", reference)
    assert code == 0, err
    with Registry(settings=Settings.load(home=home)) as registry:
        stored = registry.resolve("iris:1").data_profile
    assert stored is not None and [f["name"] for f in stored["features"]] == COLUMNS
    assert stored["rows"] == 150 and stored["source"] == "reference.csv"

    code, out, err = shipyard("drift", "iris:1", write_csv(tmp_path / "same.csv", x[::3]))
    assert code == 0, err
    assert "no drift: 0 of 4 features drifted" in out

    shifted = write_csv(tmp_path / "shifted.csv", x + np.array([0.0, 0.0, 2.5, 1.0]))
    code, out, err = shipyard("drift", "iris:1", shifted, "--json")
    body = json.loads(out)
    assert code == 0 and body["detected"] is True and body["drifted_features"] == 2
    assert [f["name"] for f in body["features"][:2]] in (
        ["petal_length", "petal_width"],
        ["petal_width", "petal_length"],
    )

    picture = tmp_path / "drift.png"
    code, out, err = shipyard("drift", "iris:1", shifted, "--png", picture)
    assert code == 0, err
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "drift detected: 2 of 4 features drifted" in out
    assert "petal_length: ks" in out and "reference" in out and "█" in out  # the terminal chart


def test_profile_stores_on_an_existing_version_and_audits_it(
    shipyard, home: Path, tmp_path: Path, onnx_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    assert shipyard("push", "iris", onnx_path)[0] == 0
    code, out, err = shipyard("drift", "iris:1", write_csv(tmp_path / "rows.csv", iris[0]))
    assert code == 3
    assert one_error_line(err) == (
        "error: iris:1 has no reference profile; add one with `shipyard profile iris:1 FILE`"
    )
    np.save(tmp_path / "reference.npy", iris[0])
    code, out, err = shipyard("profile", "iris", tmp_path / "reference.npy")
    assert code == 0, err
    assert out == "profiled iris:1 from reference.npy: 150 rows, 4 features (4 numeric, 0 categorical)\n"
    with Registry(settings=Settings.load(home=home)) as registry:
        version = registry.resolve("iris:1")
        entry = registry.audit_log(action="profile")[-1]
    assert version.data_profile is not None
    assert [f["name"] for f in version.data_profile["features"]] == ["X[0]", "X[1]", "X[2]", "X[3]"]
    assert (entry.target, entry.detail["rows"], entry.detail["features"]) == ("iris:1", 150, 4)


def test_reference_columns_that_do_not_fit_fail_the_push_and_store_nothing(
    shipyard, home: Path, tmp_path: Path, onnx_path: Path, iris: tuple[np.ndarray, np.ndarray]
) -> None:
    wrong = write_csv(tmp_path / "wrong.csv", iris[0][:, :3], COLUMNS[:3])
    code, _, err = shipyard("push", "iris", onnx_path, "--reference", wrong)
    assert code == 2
    assert one_error_line(err) == (
        "error: wrong.csv has 3 feature columns (sepal_length, sepal_width, petal_length) but the model "
        "takes 4 features in input X: FP32[?, 4]; give exactly those columns, in the model's order"
    )
    code, _, err = shipyard("push", "iris", onnx_path, "--reference", tmp_path / "missing.csv")
    assert code == 2 and "reference file" in one_error_line(err) and "does not exist" in err
    code, _, err = shipyard("list")
    assert "is empty" in err  # nothing was stored


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b,c,d\n1,2,x,4\n", "bad.csv row 1 column 'c' holds 'x', not a number"),
        ("a,b,c,d\n1,2,3\n", "bad.csv line 2 has 3 fields but the header has 4"),
    ],
)
def test_unreadable_reference_is_one_line(
    shipyard, tmp_path: Path, onnx_path: Path, content: str, message: str
) -> None:
    assert shipyard("push", "iris", onnx_path)[0] == 0
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    code, _, err = shipyard("profile", "iris:1", bad)
    assert code == 2 and message in one_error_line(err)


def test_drift_without_a_server_says_what_to_do(shipyard, tmp_path: Path) -> None:
    code, _, err = shipyard("drift", "iris", "--url", "http://127.0.0.1:9")
    assert code == 6
    line = one_error_line(err)
    assert "nothing answers at http://127.0.0.1:9" in line and "`shipyard drift REF FILE`" in line

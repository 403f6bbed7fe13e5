# ruff: noqa: F811 -- the cli and home fixtures are imported from test_cli
"""`shipyard optimize` and its single steps as a user runs them: a real process, a real registry,
a table on stdout, one `error:` line and a distinct exit code when something is wrong."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import Cli, assert_one_line_error, cli, home  # noqa: F401 -- fixtures

from shipyard.registry import Registry


@pytest.fixture
def digits_home(home: Path, tmp_path: Path) -> tuple[Path, Path]:
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    with Registry(home) as registry:
        registry.push("digits", MLPClassifier((32,), max_iter=300, random_state=0).fit(x[:1000], y[:1000]))
    eval_file = tmp_path / "eval.csv"
    with eval_file.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"px{i}" for i in range(64)] + ["label"])
        for row, label in zip(x[1000:], y[1000:], strict=True):
            writer.writerow([*np.asarray(row).tolist(), int(label)])
    return home, eval_file


def test_optimize_prints_the_table_and_registers_with_lineage(
    cli: Cli, digits_home: tuple[Path, Path]
) -> None:
    _, eval_file = digits_home
    result = cli("optimize", "digits", "--eval", eval_file, "--seconds", "0.2", "--alias", "fast")
    assert result.code == 0, result.err
    assert "onnx-fp32" in result.out and "int8-dynamic" in result.out and "registered" in result.out
    shown = cli("show", "digits@fast", "--json").json()
    assert shown["parent"] == "digits:1" and shown["recipe"]["steps"][0]["step"] == "convert"
    assert any(f["path"] == "optimization/report.json" for f in shown["files"])

    report = cli(
        "compare", "digits:1", "digits@fast", "--eval", eval_file, "--seconds", "0.2", "--json"
    ).json()
    assert report["candidates"][0]["name"] == f"digits:{shown['version']}"


def test_optimize_errors_are_one_line(cli: Cli, digits_home: tuple[Path, Path], tmp_path: Path) -> None:
    _, eval_file = digits_home
    assert_one_line_error(cli("optimize", "digits", "--eval", tmp_path / "none.csv"), "does not exist")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1\n")
    assert cli("optimize", "digits", "--eval", bad).code == 2
    assert_one_line_error(
        cli("optimize", "digits", "--eval", eval_file, "--metric", "bleu"), "unknown metric"
    )
    assert_one_line_error(cli("optimize", "digits", "--eval", eval_file, "--max-drop", "x"), "not a number")
    assert_one_line_error(cli("optimize", "nope", "--eval", eval_file), "nope")
    assert_one_line_error(cli("prune", "digits", "--sparsity", "1.5"), "--sparsity 1.5")
    assert_one_line_error(cli("quantize", "digits", "--mode", "static"), "needs --calibration")
    assert_one_line_error(cli("distill", "digits", "--student", "{bad", "--data", eval_file), "student")
    assert len(cli("list", "digits", "--json").json()) == 1  # nothing was registered by any of them


def test_budget_not_met_exits_9_with_the_report(cli: Cli, home: Path, tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    model = tmp_path / "lr.onnx"
    model.write_bytes(
        to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}}).SerializeToString()
    )
    assert cli("push", "iris", model).code == 0
    eval_file = tmp_path / "iris.jsonl"
    eval_file.write_text(
        "\n".join(json.dumps({"X": r.tolist(), "label": int(t)}) for r, t in zip(x, y, strict=True))
    )
    result = cli("optimize", "iris", "--eval", eval_file, "--max-drop", "0.05", "--seconds", "0.2")
    assert result.code == 9
    assert "nothing registered" in result.err and "report:" in result.out
    assert len(list((home / "reports").glob("optimize-iris-*.json"))) == 1


def test_a_single_step_beyond_the_budget_exits_9_unless_forced(
    cli: Cli, digits_home: tuple[Path, Path]
) -> None:
    _, eval_file = digits_home
    args = ("prune", "digits", "--sparsity", "0.95", "--eval", eval_file, "--seconds", "0.1")
    refused = cli(*args)
    assert refused.code == 9
    assert "drops accuracy" in refused.err and "--force" in refused.err
    assert "metric change: accuracy" in refused.out and "report:" in refused.out
    assert len(cli("list", "digits", "--json").json()) == 1

    forced = cli(*args, "--force", "--json")
    assert forced.code == 0, forced.err
    report = forced.json()
    assert report["config"]["force"] is True and report["metric_change"]["measured"] is True
    shown = cli("show", report["registered"], "--json").json()
    assert [s["step"] for s in shown["recipe"]["steps"]] == ["convert", "prune"]

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
from tensorboard_events import read_scalars


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


def iris_eval(tmp_path: Path) -> Path:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    eval_file = tmp_path / "iris.csv"
    with eval_file.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["f0", "f1", "f2", "f3", "label"])
        writer.writerows([*row.tolist(), int(label)] for row, label in zip(x, y, strict=True))
    return eval_file


def test_optimize_adds_each_candidates_figures_to_tensorboard(cli: Cli, home: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    with Registry(home) as registry:
        registry.push("iris", LogisticRegression(max_iter=1000).fit(x, y), sample_input=x[:2])
    board = tmp_path / "board"
    result = cli(
        "optimize",
        "iris",
        "--eval",
        iris_eval(tmp_path),
        "--seconds",
        "0.1",
        "--tensorboard",
        board,
        "--json",
    )
    assert result.code == 0, result.err
    report = result.json()
    models = [report["original"], *report["candidates"]]
    assert sorted(p.name for p in board.iterdir()) == sorted(m["name"] for m in models)  # a run each
    for model in models:
        points = read_scalars(board / model["name"])
        assert {len(series) for series in points.values()} == {1}  # one point per figure
        written = {tag: series[0][2] for tag, series in points.items()}
        expected = {
            "size_mb": model["size_bytes"] / 1e6,
            "size_gzip_mb": model["size_gzip_bytes"] / 1e6,
            "load_s": model["load_s"],
            **{f"speed/{name}": value for name, value in model["speed"].items()},
            "metric/accuracy": model["metric"],
            "metric/accuracy_ci95_low": model["interval95"][0],
            "metric/accuracy_ci95_high": model["interval95"][1],
            **{f"agreement/{name}": value for name, value in model["agreement"].items()},
        }
        assert written == pytest.approx(expected, rel=1e-6), model["name"]  # float32 in event files
    steps = {series[0][0] for model in models for series in read_scalars(board / model["name"]).values()}
    assert len(steps) == 1  # the figures of one run share a step: its time


def test_tensorboard_folder_problems_are_one_line_before_any_work(
    cli: Cli, home: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("optimize", "digits", "--eval", tmp_path / "none.csv", "--tensorboard", blocker / "run")
    assert result.code == 2
    assert_one_line_error(result, f"cannot write {str(blocker / 'run')!r} (--tensorboard)")


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
    board = tmp_path / "board"
    args = ("--max-drop", "0.05", "--seconds", "0.2", "--tensorboard", board)
    result = cli("optimize", "iris", "--eval", eval_file, *args)
    assert result.code == 9
    assert "nothing registered" in result.err and "report:" in result.out
    (saved,) = (home / "reports").glob("optimize-iris-*.json")
    report = json.loads(saved.read_text())
    for model in [report["original"], *report["candidates"]]:  # refused, yet measured: in TensorBoard too
        written = read_scalars(board / model["name"])
        assert written["speed/p50_b1_ms"][0][2] == pytest.approx(model["speed"]["p50_b1_ms"], rel=1e-6)


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

"""Optimization through the public API on a real registry: candidates measured on real eval data,
the winner registered with parent, recipe and report, and nothing registered when nothing fits."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.errors import BudgetNotMetError, InvalidInputError
from shipyard.optimize.report import BudgetExceededError
from shipyard.optimize.search import optimize
from shipyard.optimize.steps import compare, convert_version, distill_version, prune_version, quantize_version
from shipyard.registry import Registry

FAST: dict[str, Any] = {"seconds": 0.1, "threads": 1}


def write_csv(path: Path, x: np.ndarray, y: np.ndarray | None, label: str = "label") -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f"f{i}" for i in range(x.shape[1])] + ([label] if y is not None else []))
        for i, row in enumerate(x):
            writer.writerow([*row.tolist(), *([y[i].item()] if y is not None else [])])
    return path


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x[:1000], y[:1000], x[1000:], y[1000:]


@pytest.fixture(scope="module")
def mlp(digits: Any) -> Any:
    from sklearn.neural_network import MLPClassifier

    x, y, _, _ = digits
    return MLPClassifier((64,), max_iter=200, random_state=0).fit(x, y)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "home")


@pytest.fixture
def eval_file(tmp_path: Path, digits: Any) -> Path:
    _, _, x, y = digits
    return write_csv(tmp_path / "eval.csv", x, y)


def test_optimize_registers_the_fastest_variant_within_budget(
    registry: Registry, mlp: Any, digits: Any, eval_file: Path
) -> None:
    original = registry.push("digits", mlp, sample_input=digits[0][:2])
    outcome = optimize(registry, "digits:1", eval_file, max_drop="1%", alias="fast", **FAST)

    version = outcome.version
    assert version is not None and version.format == "onnx"
    assert version.parent == "digits:1" and version.aliases == ("fast",)
    assert version.recipe is not None and version.recipe["source"] == "digits:1"
    assert version.recipe["steps"][0]["step"] == "convert"
    report = outcome.report.to_dict()
    assert version.metrics["accuracy"] >= report["original"]["metric"] * 0.99
    assert report["registered"] == str(version.ref) and report["selected"] == version.params["candidate"]
    assert len(report["candidates"]) <= 8
    assert report["host"]["threads"] == 1 and "flags" in report["host"]
    names = [c["name"] for c in report["candidates"]]
    assert "onnx-fp32" in names and "int8-dynamic" in names
    for candidate in report["candidates"]:
        assert candidate["status"] in ("accepted", "rejected", "selected", "failed")
        if candidate["status"] == "rejected":
            assert candidate["reason"]
        if candidate["status"] != "failed":
            low, high = candidate["interval95"]
            assert low <= candidate["metric"] <= high
            assert candidate["speed"]["p50_b1_ms"] > 0 and candidate["speed"]["throughput"] > 0
    # The report travels inside the immutable artifact (written before the version number exists),
    # and is saved, complete, under the home's reports/.
    stored = json.loads((registry.artifact_path(version) / "optimization" / "report.json").read_text())
    assert stored["selected"] == version.params["candidate"] and stored["ref"] == "digits:1"
    assert json.loads(outcome.report_path.read_text())["registered"] == str(version.ref)
    assert outcome.report_path.is_file() and outcome.report_path.with_suffix(".txt").is_file()
    # The variant answers the original's clients: same input name, same labels. The fastest variant
    # may be a quantized one, chosen within the 1% budget, which may flip a row the original held
    # near a boundary; a float32 conversion answers every row as the original does.
    _, _, x, _ = digits
    with registry.load(version.ref) as model:
        labels = model.predict(x[:50])["label"]
    expected = mlp.predict(x[:50])
    if version.params["candidate"] == "onnx-fp32":
        np.testing.assert_array_equal(labels, expected)
    else:
        assert set(labels.tolist()) <= set(mlp.classes_.tolist())
        assert np.count_nonzero(labels != expected) <= 2  # 96% of the rows, the budget and its noise
    assert original.version == 1


def test_no_candidate_within_budget_registers_nothing_and_keeps_the_report(
    registry: Registry, digits: Any, eval_file: Path, tmp_path: Path
) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y, _, _ = digits
    clf = LogisticRegression(max_iter=500).fit(x, y)
    onnx_file = tmp_path / "lr.onnx"
    onx = to_onnx(clf, x[:1].astype(np.float32), options={id(clf): {"zipmap": False}})
    onnx_file.write_bytes(onx.SerializeToString())
    registry.push("lr", onnx_file)

    with pytest.raises(BudgetNotMetError) as caught:
        optimize(registry, "lr", eval_file, **FAST)
    assert [v.version for v in registry.list_versions("lr")] == [1]
    assert caught.value.report_path is not None and caught.value.report_path.is_file()
    report = caught.value.report
    assert report is not None and report["registered"] is None
    assert any("int8-dynamic skipped" in note for note in report["notes"])  # nothing to quantize


def test_single_steps_register_measured_versions_with_lineage(
    registry: Registry, mlp: Any, digits: Any, eval_file: Path
) -> None:
    registry.push("digits", mlp, sample_input=digits[0][:2])
    converted = convert_version(registry, "digits:1", eval_path=eval_file, **FAST).version
    assert converted is not None and converted.format == "onnx" and converted.parent == "digits:1"
    assert converted.recipe is not None and converted.recipe["steps"][0]["parity"]["label_flip_rate"] == 0.0

    quantized = quantize_version(registry, str(converted.ref), per_channel=True, **FAST).version
    assert quantized is not None and quantized.parent == str(converted.ref)
    assert quantized.recipe is not None and quantized.recipe["steps"][-1]["per_channel"] is True
    assert quantized.size < converted.size

    static = quantize_version(
        registry, str(converted.ref), mode="static", calibration=eval_file, eval_path=eval_file, **FAST
    ).version
    assert static is not None and static.recipe is not None
    assert static.recipe["steps"][-1]["method"] == "static"

    pruned = prune_version(registry, str(converted.ref), sparsity=0.25, structured=True, **FAST).version
    assert pruned is not None and pruned.recipe is not None
    chain = pruned.recipe["steps"][-1]["chains"][0]
    assert chain["units_after"] < chain["units_before"]

    report = compare(registry, ["digits:1", str(converted.ref), str(quantized.ref)], eval_file, **FAST)
    assert [r.name for r in report.candidates] == [str(converted.ref), str(quantized.ref)]
    assert report.candidates[0].agreement["label_flip_rate"] == 0.0

    with pytest.raises(InvalidInputError, match="already served by onnxruntime"):
        convert_version(registry, str(converted.ref), **FAST)
    with pytest.raises(InvalidInputError, match="needs --calibration"):
        quantize_version(registry, str(converted.ref), mode="static", **FAST)


def test_distill_trains_a_student_that_agrees_with_its_teacher(
    registry: Registry, digits: Any, eval_file: Path, tmp_path: Path
) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x, y, _, _ = digits
    registry.push("forest", RandomForestClassifier(50, random_state=0).fit(x, y), sample_input=x[:2])
    data = write_csv(tmp_path / "train.csv", x, None)
    outcome = distill_version(
        registry,
        "forest",
        student='{"hidden": [64]}',
        data=data,
        epochs=20,
        eval_path=eval_file,
        max_drop="5%",
        **FAST,
    )
    student = outcome.version
    assert student is not None and student.parent == "forest:1" and student.format == "onnx"
    step = student.recipe["steps"][-1] if student.recipe else {}
    assert step["step"] == "distill" and step["teacher_agreement"] > 0.9
    assert [o.name for o in student.signature.outputs] == ["label", "probabilities"]
    assert outcome.report.candidates[0].agreement["label_flip_rate"] < 0.15
    change = outcome.report.metric_change
    assert change is not None and change.metric == "accuracy" and change.before is not None
    assert student.recipe is not None and student.recipe["config"]["max_drop"] == "5%"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_drop": "lots"}, "is not a number"),
        ({"max_drop": "-1%"}, "must be at least 0"),
        ({"metric": "bleu"}, "unknown metric 'bleu'"),
        ({"metric": "spearman"}, "does not apply to a classifier"),
        ({"objective": "vibes"}, "unknown objective"),
        ({"label": "missing"}, "no label column 'missing'"),
    ],
)
def test_bad_options_are_clear_errors(
    registry: Registry, mlp: Any, digits: Any, eval_file: Path, kwargs: dict[str, Any], message: str
) -> None:
    registry.push("digits", mlp, sample_input=digits[0][:2])
    with pytest.raises(InvalidInputError, match=message):
        optimize(registry, "digits", eval_file, **{**FAST, **kwargs})
    assert len(registry.list_versions("digits")) == 1


def test_an_eval_set_too_small_for_the_budget_is_refused(
    registry: Registry, mlp: Any, digits: Any, tmp_path: Path
) -> None:
    _, _, x, y = digits
    small = write_csv(tmp_path / "small.csv", x[:40], y[:40])
    registry.push("digits", mlp, sample_input=digits[0][:2])
    with pytest.raises(InvalidInputError, match=r"too small .* 95% interval \["):
        optimize(registry, "digits", small, max_drop="1%", **FAST)


def test_steps_chain_on_versions_that_carry_a_report(registry: Registry, mlp: Any, digits: Any) -> None:
    """convert → prune → quantize, each on the version the previous step registered (which carries
    its own optimization report); pruning after int8 has no float weights left and says so."""
    registry.push("digits", mlp, sample_input=digits[0][:2])
    converted = convert_version(registry, "digits:1", **FAST).version
    assert converted is not None
    pruned = prune_version(registry, str(converted.ref), sparsity=0.25, **FAST).version
    assert pruned is not None and pruned.parent == str(converted.ref)
    assert pruned.recipe is not None and pruned.recipe["config"] == {
        "operation": "prune",
        "max_drop": "1%",
        "force": False,
        "sparsity": 0.25,
        "structured": False,
    }
    quantized = quantize_version(registry, str(pruned.ref), **FAST).version
    assert quantized is not None and quantized.parent == str(pruned.ref)
    with pytest.raises(InvalidInputError, match="nothing to prune"):
        prune_version(registry, str(quantized.ref), sparsity=0.25, **FAST)

    both = quantize_version(registry, "digits:1", per_channel=True, **FAST)
    assert both.version is not None and both.version.recipe is not None
    assert [s["step"] for s in both.version.recipe["steps"]] == ["convert", "quantize"]
    assert both.version.recipe["config"]["per_channel"] is True
    assert both.report.metric_change is not None and both.report.metric_change.metric is None
    assert (
        "not measured" in (registry.artifact_path(both.version) / "optimization" / "report.txt").read_text()
    )


def test_a_single_step_beyond_the_budget_registers_nothing_unless_forced(
    registry: Registry, mlp: Any, digits: Any, eval_file: Path
) -> None:
    registry.push("digits", mlp, sample_input=digits[0][:2])
    converted = convert_version(registry, "digits:1", eval_path=eval_file, **FAST)
    assert converted.report.metric_change is not None and converted.report.metric_change.drop == 0.0
    with pytest.raises(
        BudgetExceededError, match=r"drops accuracy from .* more than the 1% allowed"
    ) as caught:
        prune_version(registry, "digits:2", sparsity=0.95, eval_path=eval_file, **FAST)
    assert sorted(v.version for v in registry.list_versions("digits")) == [1, 2]
    assert caught.value.exit_code == 9 and caught.value.report_path is not None
    change = caught.value.details.metric_change
    assert change is not None and change.after is not None and change.before is not None
    assert change.before - change.after > 0.01 * change.before

    forced = prune_version(registry, "digits:2", sparsity=0.95, eval_path=eval_file, force=True, **FAST)
    assert forced.version is not None and forced.version.recipe is not None
    assert forced.version.recipe["config"]["force"] is True
    assert any("--force" in note for note in forced.report.notes)
    # Quality apart from timings, each with sensible precision.
    metrics = forced.version.metrics
    assert metrics["accuracy"] == pytest.approx(change.after, rel=1e-4)
    assert {"measured.size_bytes", "measured.p50_b1_ms", "measured.throughput_rows_s"} <= set(metrics)
    # Significant digits of the mantissa: `:g` writes 1.2345e+06 for a fast host's rows/s.
    assert all(len(f"{v:.15g}".split("e")[0].replace(".", "").strip("0")) <= 7 for v in metrics.values())


@pytest.mark.parametrize("objective", ["size", "throughput"])
def test_the_objective_picks_the_best_accepted_candidate(
    registry: Registry, mlp: Any, digits: Any, eval_file: Path, objective: str
) -> None:
    registry.push("digits", mlp, sample_input=digits[0][:2])
    try:
        report = optimize(registry, "digits", eval_file, objective=objective, max_drop="5%", **FAST).report
    except BudgetNotMetError as exc:  # throughput gains depend on the CPU: none is a valid verdict
        assert objective == "throughput" and exc.report is not None
        assert all(c["status"] in ("rejected", "failed") for c in exc.report["candidates"])
        return
    assert report.objective == objective and report.selected is not None
    chosen = [c for c in report.candidates if c.status == "selected"]
    assert [c.name for c in chosen] == [report.selected]
    contenders = [c for c in report.candidates if c.status in ("selected", "accepted")]

    def value(c: Any) -> float:
        return float(c.size_bytes) if objective == "size" else -c.speed.throughput

    assert value(chosen[0]) == min(value(c) for c in contenders)
    original = value(report.original)
    assert value(chosen[0]) <= original * 0.95 if original > 0 else value(chosen[0]) <= original * 1.05
    if objective == "size":  # int8 stores weights in a quarter of the bytes
        assert chosen[0].size_bytes < report.original.size_bytes / 2
        assert "int8" in chosen[0].name
    for rejected in (c for c in report.candidates if c.status == "rejected"):
        assert rejected.reason

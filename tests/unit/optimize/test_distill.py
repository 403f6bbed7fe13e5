"""Distillation: small students imitate a forest or a boosted ensemble and stand in for it, ONNX included."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_digits
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from shipyard.errors import InvalidInputError, MissingDependencyError
from shipyard.optimize.distill import Predict, distill_estimator, distill_mlp, parse_student

torch = pytest.importorskip("torch")

FACT_KEYS = {
    "kind", "hidden", "activation", "epochs", "lr", "batch_size", "temperature", "seed",
    "train_rows", "final_loss", "teacher_agreement", "parameters",
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The caller picks the thread count; one keeps these small loops fast on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _classifier(model: Any) -> Predict:
    def predict(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        return {"label": model.predict(x), "probabilities": model.predict_proba(x).astype(np.float32)}

    return predict


@pytest.fixture(scope="module")
def digits() -> dict[str, Any]:
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, _ = train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=0)
    forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(x_train, y_train)
    return {"forest": forest, "teacher": _classifier(forest), "train": x_train, "test": x_test}


@pytest.fixture(scope="module")
def digits_student(digits: dict[str, Any]) -> tuple[Any, dict[str, Any], list[tuple[int, int, float]]]:
    seen: list[tuple[int, int, float]] = []
    module, facts = distill_mlp(
        digits["teacher"],
        digits["train"],
        input_name="x",
        student=parse_student('{"kind": "mlp", "hidden": [64]}'),
        classes=digits["forest"].classes_.tolist(),
        epochs=20,
        progress=lambda *args: seen.append(args),
    )
    return module, facts, seen


@pytest.fixture(scope="module")
def diabetes() -> dict[str, Any]:
    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, _ = train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=0)
    boosted = GradientBoostingRegressor(random_state=0).fit(x_train, y_train)
    return {"model": boosted, "train": x_train, "test": x_test}


def test_mlp_student_agrees_with_the_forest_on_held_out_rows(
    digits: dict[str, Any], digits_student: tuple[Any, dict[str, Any], list[Any]]
) -> None:
    module, facts, seen = digits_student
    with torch.no_grad():
        label, probabilities = module(torch.from_numpy(digits["test"]))
    teacher_label = digits["forest"].predict(digits["test"])
    assert float(np.mean(label.numpy() == teacher_label)) >= 0.9
    assert label.dtype == torch.int64 and set(label.tolist()) <= set(range(10))
    np.testing.assert_allclose(probabilities.sum(dim=1).numpy(), 1.0, rtol=1e-5)
    assert torch.equal(label, probabilities.argmax(dim=1))
    assert module.output_names == ("label", "probabilities")

    assert set(facts) == FACT_KEYS
    assert facts["kind"] == "mlp" and facts["hidden"] == [64] and facts["epochs"] == 20
    assert facts["train_rows"] == len(digits["train"]) and facts["seed"] == 0
    assert facts["teacher_agreement"] >= 0.9
    assert facts["parameters"] == 64 * 64 + 64 + 64 * 10 + 10
    assert [(e, n) for e, n, _ in seen] == [(e, 20) for e in range(1, 21)]
    assert seen[-1][2] == facts["final_loss"] < seen[0][2]


def test_mlp_student_exports_with_dynamo_and_onnxruntime_agrees(
    digits: dict[str, Any], digits_student: tuple[Any, dict[str, Any], list[Any]], tmp_path: Path
) -> None:
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    module, _, _ = digits_student
    sample = torch.from_numpy(digits["test"][:4])
    with warnings.catch_warnings():  # the exporter warns about its own internals
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (sample,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False
        )
    program.save(str(tmp_path / "student.onnx"))
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    for rows in (digits["test"][:7], digits["test"]):  # batch sizes other than the exported one
        got_label, got_probabilities = session.run(None, {session.get_inputs()[0].name: rows})
        with torch.no_grad():
            label, probabilities = module(torch.from_numpy(rows))
        np.testing.assert_array_equal(got_label, label.numpy())
        np.testing.assert_allclose(got_probabilities, probabilities.numpy(), rtol=1e-4, atol=1e-5)


def test_same_seed_gives_the_same_student_and_leaves_the_global_rng_alone(digits: dict[str, Any]) -> None:
    rows = digits["train"][:300]
    spec = parse_student('{"hidden": [16], "epochs": 2}')
    state = torch.random.get_rng_state()
    first, _ = distill_mlp(digits["teacher"], rows, input_name="x", student=spec, classes=None, seed=3)
    second, _ = distill_mlp(digits["teacher"], rows, input_name="x", student=spec, classes=None, seed=3)
    other, _ = distill_mlp(digits["teacher"], rows, input_name="x", student=spec, classes=None, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_mlp_student_imitates_a_boosted_regressor(diabetes: dict[str, Any]) -> None:
    model = diabetes["model"]

    def teacher(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"prediction": model.predict(feeds["x"]).astype(np.float32)}

    module, facts = distill_mlp(
        teacher, diabetes["train"], input_name="x", student=parse_student("{}"), classes=None
    )
    with torch.no_grad():
        got = module(torch.from_numpy(diabetes["test"])).numpy()
    assert got.shape == (len(diabetes["test"]),)
    assert r2_score(model.predict(diabetes["test"]), got) > 0.5
    assert set(facts) == FACT_KEYS and facts["teacher_agreement"] > 0.5 and facts["epochs"] == 30


def test_regressor_student_keeps_the_teachers_output_shape(diabetes: dict[str, Any]) -> None:
    model = diabetes["model"]

    def teacher(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # one float output, any name
        y = model.predict(feeds["x"])
        return {"variable": np.stack([y, -2 * y], axis=1).astype(np.float32)}

    module, facts = distill_mlp(
        teacher, diabetes["train"], input_name="x", student=parse_student("{}"), classes=None, epochs=3
    )
    with torch.no_grad():
        assert module(torch.from_numpy(diabetes["test"][:5])).shape == (5, 2)
    assert facts["epochs"] == 3 and module.output_names == ("variable",)


def test_student_pickles(
    digits: dict[str, Any], digits_student: tuple[Any, dict[str, Any], list[Any]]
) -> None:
    module, _, _ = digits_student
    copy = pickle.loads(pickle.dumps(module))
    assert type(copy) is type(module) and type(module).__name__ == "DistilledMLP"
    x = torch.from_numpy(digits["test"][:20])
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(copy(x), module(x), strict=True))


def test_teacher_is_asked_in_chunks_of_256_rows(digits: dict[str, Any]) -> None:
    sizes: list[int] = []

    def teacher(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes.append(len(feeds["x"]))
        assert feeds["x"].dtype == np.float32
        return digits["teacher"](feeds)

    distill_mlp(teacher, digits["train"][:600], input_name="x", student={"epochs": 1}, classes=None)
    assert sizes == [256, 256, 88]


def test_string_classes_are_rejected(digits: dict[str, Any]) -> None:
    names = np.array([f"digit-{i}" for i in range(10)])

    def teacher(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = digits["teacher"](feeds)
        return {"label": names[out["label"]], "probabilities": out["probabilities"]}

    for classes in (names.tolist(), None):
        with pytest.raises(InvalidInputError, match="numeric class labels") as info:
            distill_mlp(teacher, digits["train"][:50], input_name="x", student={}, classes=classes)
        assert info.value.field == "teacher"


@pytest.mark.parametrize(
    "outputs",
    [
        {"label": np.zeros(4, np.int64)},
        {"a": np.zeros(4), "b": np.zeros(4)},
        {"names": np.array(list("abcd"))},
    ],
)
def test_teacher_outputs_that_are_neither_classifier_nor_regressor(outputs: dict[str, np.ndarray]) -> None:
    with pytest.raises(InvalidInputError) as info:
        distill_mlp(lambda _: outputs, np.ones((4, 3)), input_name="x", student={}, classes=None)
    assert info.value.field == "teacher"


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch, digits: dict[str, Any]) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"shipyard\[torch\]"):
        distill_mlp(digits["teacher"], digits["train"][:10], input_name="x", student={}, classes=None)


def test_module_imports_without_torch_or_sklearn() -> None:
    probe = "import sys, shipyard.optimize.distill; print(sorted({'torch', 'sklearn'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_estimator_student_refits_a_clone_on_the_teachers_labels(digits: dict[str, Any]) -> None:
    prototype = DecisionTreeClassifier(max_depth=8, random_state=0)
    tree, facts = distill_estimator(
        digits["teacher"], digits["train"], input_name="x", student_estimator=prototype
    )
    assert tree is not prototype and not hasattr(prototype, "classes_")
    assert facts["kind"] == "estimator" and facts["estimator"] == "DecisionTreeClassifier"
    assert facts["train_rows"] == len(digits["train"]) and facts["teacher_agreement"] > 0.9
    held_out = float(np.mean(tree.predict(digits["test"]) == digits["forest"].predict(digits["test"])))
    assert held_out > 0.6


def test_estimator_student_of_a_regressor(diabetes: dict[str, Any]) -> None:
    model = diabetes["model"]
    _, facts = distill_estimator(
        lambda feeds: {"prediction": model.predict(feeds["x"])},
        diabetes["train"],
        input_name="x",
        student_estimator=DecisionTreeRegressor(max_depth=6, random_state=0),
    )
    assert facts["teacher_agreement"] > 0.8


@pytest.mark.parametrize("estimator", ["not an estimator", DecisionTreeClassifier(max_depth=-1)])
def test_estimator_that_cannot_be_cloned_or_fitted(digits: dict[str, Any], estimator: Any) -> None:
    with pytest.raises(InvalidInputError, match="cannot fit the student") as info:
        distill_estimator(
            digits["teacher"], digits["train"][:50], input_name="x", student_estimator=estimator
        )
    assert info.value.field == "student"


def test_spec_defaults_and_file(tmp_path: Path) -> None:
    assert parse_student('{"kind": "mlp"}') == {
        "kind": "mlp", "hidden": [64], "activation": "relu", "epochs": 30, "lr": 1e-3,
        "batch_size": 64, "temperature": 2.0, "weight_decay": 0.0,
    }  # fmt: skip
    path = tmp_path / "student.json"
    path.write_text(json.dumps({"hidden": [32, 16], "activation": "gelu", "lr": 1}))
    spec = parse_student(str(path))
    assert spec["hidden"] == [32, 16] and spec["activation"] == "gelu" and spec["lr"] == 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ('{"kind": "mlp", ', "not valid JSON"),
        ("[64]", "does not exist"),
        ('["mlp"]', "does not exist"),
        ('{"kind": "mlp", "depth": 3}', "allowed keys"),
        ('{"alpha": 0.5}', "allowed keys"),
        ('{"kind": "transformer"}', "only kind is 'mlp'"),
        ('{"hidden": [64, 0]}', "positive integers"),
        ('{"hidden": [-8]}', "positive integers"),
        ('{"hidden": 64}', "positive integers"),
        ('{"hidden": [true]}', "positive integers"),
        ('{"activation": "swish"}', "activation"),
        ('{"epochs": 0}', "positive integer"),
        ('{"batch_size": 2.5}', "positive integer"),
        ('{"lr": -1}', "positive number"),
        ('{"temperature": 0}', "positive number"),
        ('{"weight_decay": -0.1}', "non-negative"),
        ("/no/such/student.json", "does not exist"),
    ],
)
def test_bad_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        parse_student(spec)
    assert info.value.field == "student"


def test_spec_file_must_hold_a_json_object(tmp_path: Path) -> None:
    path = tmp_path / "student.json"
    path.write_text("[64]")
    with pytest.raises(InvalidInputError, match="must be a JSON object"):
        parse_student(str(path))
    path.write_text("{oops")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        parse_student(str(path))

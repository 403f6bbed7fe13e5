"""Feedback joined with the prediction log: the prediction read from each kind of output, the truth
checked against its type, rows and classes (each refusal naming its field), and the shared store
that makes a request's second label a conflict whichever process receives it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shipyard.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    ShipyardError,
)
from shipyard.monitor.feedback import FeedbackIntake, Outcome, parse_feedback
from shipyard.monitor.feedback_store import CLASSIFICATION, REGRESSION, FeedbackStore, Labelled
from shipyard.monitor.prediction_recorder import PredictionRecorder, Sample
from shipyard.monitor.predictions import PredictionStore
from shipyard.monitor.quality import QualityMonitor
from shipyard.monitor.truth import Label
from shipyard.settings import PredictionLogSettings, Settings
from shipyard.types import ModelVersion, Signature, TensorSpec

X = TensorSpec("X", "FP32", (-1, 4))
IRIS = Signature((X,), (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 3))))


def version(number: int, signature: Signature = IRIS, **extra: Any) -> ModelVersion:
    return ModelVersion("iris", number, "onnx", "sha256:0", 1, (), signature, extra=extra)


def sample(**outputs: np.ndarray) -> Sample:
    noted = Sample()
    rows = len(next(iter(outputs.values())))
    noted.inputs = {"X": np.zeros((rows, 4), dtype=np.float32)}
    noted.outputs = outputs
    return noted


def iris(labels: list[int]) -> Sample:
    return sample(label=np.array(labels, dtype=np.int64), probabilities=np.full((len(labels), 3), 0.3))


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[PredictionRecorder]:
    made = PredictionRecorder(PredictionLogSettings(), tmp_path / "predictions", worker=1)
    made.start()
    yield made
    made.close()


class Desk:
    """An intake over a real prediction log, with iris:1 (integer labels beside 3 probabilities),
    iris:2 (scikit-learn's text classes), iris:3 (a regressor) and iris:4 (scores only)."""

    def __init__(self, tmp_path: Path, recorder: PredictionRecorder) -> None:
        self.recorder = recorder
        self.versions = {
            1: version(1),
            2: version(2, classes=["setosa", "versicolor", "virginica"]),
            3: version(3, Signature((X,), (TensorSpec("variable", "FP32", (-1, 1)),))),
            4: version(4, Signature((X,), (TensorSpec("scores", "FP32", (-1, 3)),))),
        }
        self.intake = FeedbackIntake(
            FeedbackStore(tmp_path / "predictions" / "feedback.db"),
            PredictionStore(tmp_path / "predictions"),
            lambda name, number: self.versions.get(number),
            retention_s=86400.0,
        )

    def log(
        self, request_id: str, number: int, noted: Sample, status: int = 200, model: str = "iris"
    ) -> None:
        self.recorder.record(request_id, model, number, "v2", status, 0.001, noted)

    def submit(self, *items: Label | ShipyardError, version: int | None = None) -> list[Outcome]:
        assert self.recorder.flush(10.0)
        return self.intake.submit("iris", items, version=version)

    def error(self, item: Label) -> ShipyardError:
        (outcome,) = self.submit(item)
        assert outcome.error is not None, outcome
        return outcome.error


@pytest.fixture
def desk(tmp_path: Path, recorder: PredictionRecorder) -> Desk:
    return Desk(tmp_path, recorder)


def test_a_label_is_joined_with_its_prediction_and_stored(desk: Desk) -> None:
    desk.log("a", 1, iris([2]))
    (outcome,) = desk.submit(Label("a", 1))
    assert outcome.error is None and outcome.record is not None
    record = outcome.record
    assert (record.model, record.version, record.task, record.predicted, record.truth) == (
        "iris",
        1,
        CLASSIFICATION,
        [2],
        [1],
    )
    assert 0 <= record.delay_s < 60
    assert desk.intake.store.read(["iris"]) == [record]


def test_text_classes_and_rows(desk: Desk) -> None:
    desk.log("two-rows", 2, sample(label=np.array(["setosa", "virginica"], dtype=object)))
    error = desk.error(Label("two-rows", "setosa"))
    assert isinstance(error, InvalidInputError) and error.field == "label"
    assert error.message == "request 'two-rows' predicted 2 rows: give label as a list of 2"
    error = desk.error(Label("two-rows", ["setosa"] * 3))
    assert "give label as a list of 2, not 3" in error.message and error.field == "label"
    error = desk.error(Label("two-rows", ["setosa", "daisy"]))
    assert error.field == "label"
    assert error.message == (
        "label 'daisy' for 'two-rows' is not a class of iris:2; its classes are "
        "'setosa', 'versicolor', 'virginica'"
    )
    error = desk.error(Label("two-rows", [0, 1]))
    assert error.message.startswith("label for 'two-rows' must be text like iris:2's classes (e.g. 'setosa')")
    (outcome,) = desk.submit(Label("two-rows", ["setosa", "versicolor"]))
    assert outcome.record is not None and outcome.record.predicted == ["setosa", "virginica"]


def test_integer_classes_come_from_the_width_of_the_probabilities(desk: Desk) -> None:
    desk.log("i", 1, iris([0]))
    assert "its classes are 0, 1, 2" in desk.error(Label("i", 7)).message
    for wrong in ("1", 1.0, True, None, {"class": 1}):
        error = desk.error(Label("i", wrong))
        assert error.field == "label" and "must be an integer like iris:1's classes (e.g. 0)" in error.message
    # Text from a command line or a CSV cell is read as the prediction's type.
    assert desk.error(Label("i", "one", text=True)).field == "label"
    (outcome,) = desk.submit(Label("i", "2", text=True))
    assert outcome.record is not None and outcome.record.truth == [2]


def test_a_regressor_takes_finite_numbers_named_value(desk: Desk) -> None:
    desk.log("r", 3, sample(variable=np.array([[2.5], [4.0]], dtype=np.float32)))
    for wrong in (["x", 1.0], [float("nan"), 1.0], [True, 1.0]):
        error = desk.error(Label("r", wrong, "value"))
        assert (
            error.field == "value" and "must be a finite number (the model is a regressor)" in error.message
        )
    (outcome,) = desk.submit(Label("r", [3, "4.5"], "value", text=True))
    assert outcome.record is not None
    assert (outcome.record.task, outcome.record.predicted, outcome.record.truth) == (
        REGRESSION,
        [2.5, 4.0],
        [3.0, 4.5],
    )


def test_scores_alone_predict_their_top_class(desk: Desk) -> None:
    desk.log("s", 4, sample(scores=np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)))
    (outcome,) = desk.submit(Label("s", [1, 1]))
    assert outcome.record is not None and outcome.record.predicted == [1, 0]
    assert "its classes are 0, 1, 2" in desk.error(Label("s", [1, 3])).message


def test_requests_without_a_comparable_prediction_are_400_naming_request_id(desk: Desk) -> None:
    desk.log("failed", 1, iris([0]), status=400)
    desk.log("wide", 1, iris(list(range(300))))  # over 256 values: the log kept no values
    desk.log("unclear", 4, sample(a=np.zeros(1), b=np.zeros(1)))
    desk.log("nan", 3, sample(variable=np.array([[np.nan]], dtype=np.float32)))
    desk.log("empty", 1, iris([]))
    messages = {
        "nan": "its output 'variable' holds NaN or infinite values, which cannot be compared",
        "empty": "request 'empty' (iris:1) had no rows: there is nothing to compare",
        "failed": "request 'failed' (iris:1) failed with status 400: it has no prediction",
        "wide": "was too large for the prediction log to keep its values (256 at most)",
        "unclear": "cannot tell which of its outputs (a, b) is the prediction",
    }
    for request_id, message in messages.items():
        error = desk.error(Label(request_id, 0))
        assert isinstance(error, InvalidInputError) and error.field == "request_id"
        assert message in error.message


def test_unknown_ids_other_models_and_other_versions_are_404(desk: Desk) -> None:
    desk.log("elsewhere", 1, iris([0]), model="other")
    desk.log("v1", 1, iris([0]))
    for item, number in ((Label("never", 0), None), (Label("elsewhere", 0), None), (Label("v1", 0), 2)):
        (outcome,) = desk.submit(item, version=number)
        assert isinstance(outcome.error, NotFoundError) and outcome.error.field == "request_id"
        assert f"has request id {item.request_id!r}" in outcome.error.message
        assert "older than the log keeps (1d)" in outcome.error.message


def test_a_request_is_labelled_once_across_batches_processes_and_within_a_batch(
    desk: Desk, tmp_path: Path
) -> None:
    desk.log("x", 1, iris([0]))
    desk.log("y", 1, iris([1]))
    first, twice = desk.submit(Label("x", 0), Label("x", 1))
    assert first.record is not None
    assert isinstance(twice.error, ConflictError) and "appears twice in this feedback" in twice.error.message
    # Another process (its own intake and store object over the same files) refuses it too.
    other = FeedbackIntake(
        FeedbackStore(tmp_path / "predictions" / "feedback.db"),
        PredictionStore(tmp_path / "predictions"),
        lambda name, number: None,
        86400.0,
    )
    again, fresh = other.submit("iris", [Label("x", 1), Label("y", 1)])
    assert isinstance(again.error, ConflictError) and again.error.field == "request_id"
    assert again.error.message == "request 'x' has feedback already; a request is labelled once"
    assert fresh.record is not None
    assert [r.request_id for r in desk.intake.store.read(["iris"])] == ["y", "x"]


def test_an_entry_still_queued_in_this_process_is_found_after_a_flush(desk: Desk) -> None:
    desk.log("queued", 1, iris([0]))  # the writer drains about once a second: not written yet
    (outcome,) = desk.intake.submit("iris", [Label("queued", 0)], flush=desk.recorder.flush)
    assert outcome.record is not None


def test_parsing_the_body() -> None:
    items, batch = parse_feedback({"request_id": "a", "value": 2.5}, 10)
    assert items == [Label("a", 2.5, "value")] and batch is False
    items, batch = parse_feedback({"feedback": [{"request_id": "a", "label": 1}, {"label": 1}, 7]}, 10)
    assert batch is True and items[0] == Label("a", 1)
    assert isinstance(items[1], InvalidInputError) and items[1].field == "request_id"
    assert isinstance(items[2], InvalidInputError) and items[2].field == "feedback"
    cases: list[tuple[Any, type[ShipyardError], str]] = [
        ([1], InvalidInputError, "body"),
        ({"feedback": {}}, InvalidInputError, "feedback"),
        ({"feedback": []}, InvalidInputError, "feedback"),
        ({"feedback": [{"request_id": "a", "label": 1}] * 11}, PayloadTooLargeError, "feedback"),
        ({"request_id": "a", "label": 1, "value": 1}, InvalidInputError, "label"),
        ({"request_id": "a"}, InvalidInputError, "label"),
        ({"request_id": "", "label": 1}, InvalidInputError, "request_id"),
        ({"request_id": "a" * 129, "label": 1}, InvalidInputError, "request_id"),
    ]
    for body, kind, field in cases:
        with pytest.raises(kind) as caught:
            parse_feedback(body, 10)
        assert caught.value.field == field, body
    with pytest.raises(PayloadTooLargeError, match="11 feedback items are over the limit of 10"):
        parse_feedback({"feedback": [{"request_id": "a", "label": 1}] * 11}, 10)


def test_the_store_reads_newest_first_per_version_and_prunes(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "new" / "feedback.db")
    assert store.read(["m"]) == [] and store.mark() == 0 and store.prune(time.time()) == 0
    now = time.time()

    def labelled(request_id: str, number: int, at: float, rows: int = 1) -> Labelled:
        return Labelled("m", request_id, number, CLASSIFICATION, at, at + 1, [0] * rows, [1] * rows)

    assert store.add(
        [labelled("a", 1, now - 30, rows=2), labelled("b", 2, now - 20), labelled("c", 1, now - 10)]
    )
    mark = store.mark()
    assert store.add([labelled("c", 1, now), labelled("d", 1, now - 5)]) == [False, True]
    assert store.mark() > mark
    assert [r.request_id for r in store.added(mark, since=0)] == ["d"]
    assert [r.request_id for r in store.read(None, upto=mark)] == ["c", "b", "a"]
    assert [r.request_id for r in store.read(["m"])] == ["d", "c", "b", "a"]
    assert [r.request_id for r in store.read(["m"], version=1)] == ["d", "c", "a"]
    assert [r.request_id for r in store.read(["m"], since=now - 15)] == ["d", "c"]
    assert [r.request_id for r in store.read(["m"], rows=2)] == ["d", "c", "b"]  # per version
    assert store.read(["other"]) == []
    assert store.prune(now - 15) == 2
    assert [r.request_id for r in store.read(["m"])] == ["d", "c"]


def test_the_metrics_follow_new_feedback_as_a_fresh_read_would(tmp_path: Path) -> None:
    """/metrics keeps the windows in memory and reads only what was added since; late feedback
    for old predictions lands in its place, and the count window keeps the newest predictions."""
    settings = Settings.load(home=tmp_path, quality={"window_rows": 6, "window_s": 3600, "min_rows": 1})
    store = FeedbackStore(settings.feedback_path)
    now = time.time()

    def labelled(request_id: str, age_s: float, right: bool) -> Labelled:
        return Labelled("m", request_id, 1, CLASSIFICATION, now - age_s, now, [1], [1 if right else 0])

    store.add([labelled(f"old{i}", 100 + i, right=False) for i in range(4)])
    monitor = QualityMonitor(settings, lambda: ["m"])
    assert dict(next(iter(monitor.series()))[3])["accuracy"] == 0.0
    # Newer predictions, all right; a late label for a prediction older than them; and one
    # older than the window, which never counts.
    store.add([labelled(f"new{i}", 10 + i, right=True) for i in range(4)])
    store.add([labelled("late", 50, right=True), labelled("ancient", 7200, right=True)])
    (model, version, rows, figures) = next(iter(monitor.series()))
    assert (model, version, rows) == ("m", "1", 6)  # new0-3, late, old0
    assert dict(figures)["accuracy"] == pytest.approx(5 / 6)
    assert list(monitor.series()) == list(QualityMonitor(settings, lambda: ["m"]).series())
    assert list(QualityMonitor(settings, lambda: ["other"]).series()) == []  # only models served

"""Feedback: a request's true label (or value) joined with the prediction the log kept for it.

A caller names a request by the `X-Request-ID` of its response. The prediction log finds it (in
any worker's segments, hours later while retention keeps it); its summary holds the outputs'
values when they are small, such as a classifier's labels. The prediction is read from them:
the output called `label` if there is one (scikit-learn, skl2onnx, transformers classifiers),
else the model's only output, else its `probabilities` / `scores` / `logits` (the top class).
Integer, boolean and text predictions make a classifier; float ones a regressor. The truth
must have the prediction's type and, where the version's classes are known (stored with it, or
the width of its probabilities), be one of them. Joined records go to the `FeedbackStore`,
which every process shares (see feedback_store.py).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shipyard.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PayloadTooLargeError,
    ShipyardError,
)
from shipyard.monitor.feedback_store import CLASSIFICATION, REGRESSION, FeedbackStore, Labelled
from shipyard.monitor.predictions import Entry, PredictionStore
from shipyard.types import ModelVersion

_SCORES = ("probabilities", "scores", "logits")
_MAX_ID = 128  # characters: the longest request id the server keeps (serve.request_ids)
_SHOWN = 40  # characters of a caller's value quoted in an error
_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0))


@dataclass(frozen=True, slots=True)
class Label:
    """One item of feedback: the truth for a request's rows (a value, or a list of one per row)."""

    request_id: str
    truth: Any
    field: str = "label"  # what the caller called the truth: "label" or "value", named in errors
    text: bool = False  # given as text (a command-line flag, a CSV cell): read as the prediction's type


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one item: its stored record, or why it was refused."""

    request_id: str | None
    record: Labelled | None = None
    error: ShipyardError | None = None

    def to_dict(self, index: int | None = None) -> dict[str, Any]:
        """The item's answer (with its `index` in a batch)."""
        body: dict[str, Any] = {} if index is None else {"index": index}
        body["request_id"] = self.request_id
        if self.record is not None:
            body.update(status=200, version=self.record.version)
        elif self.error is not None:
            body.update(status=self.error.status_code, error=self.error.message, field=self.error.field)
        return body


def batch_body(model: str, outcomes: list[Outcome]) -> dict[str, Any]:
    """A batch's answer: how many items were accepted, and each item's status, error and field."""
    accepted = sum(1 for o in outcomes if o.record is not None)
    return {
        "model": model,
        "accepted": accepted,
        "failed": len(outcomes) - accepted,
        "results": [o.to_dict(i) for i, o in enumerate(outcomes)],
    }


def parse_feedback(body: Any, max_batch: int) -> tuple[list[Label | ShipyardError], bool]:
    """The items of a feedback body, `{"request_id", "label" | "value"}` or `{"feedback": [...]}`,
    and whether it was a batch. In a batch a malformed item is its own error; the body's shape,
    or more than `max_batch` items, fails the whole request."""
    if not isinstance(body, dict):
        raise InvalidInputError(
            'feedback must be a JSON object: {"request_id": ..., "label": ...} or {"feedback": [...]}',
            field="body",
        )
    if "feedback" not in body:
        return [parse_item(body)], False
    items = body["feedback"]
    if not isinstance(items, list) or not items:
        raise InvalidInputError(
            'feedback must be a non-empty list of {"request_id": ..., "label" or "value": ...}',
            field="feedback",
        )
    if len(items) > max_batch:
        raise PayloadTooLargeError(
            f"{len(items)} feedback items are over the limit of {max_batch} per request (setting "
            "quality.max_batch); send them in smaller batches",
            field="feedback",
        )
    parsed: list[Label | ShipyardError] = []
    for item in items:
        try:
            parsed.append(parse_item(item))
        except ShipyardError as exc:
            parsed.append(exc)
    return parsed, True


def parse_item(item: Any) -> Label:
    if not isinstance(item, dict):
        raise InvalidInputError(
            f'a feedback item must be {{"request_id": ..., "label" or "value": ...}}, got {_show(item)}',
            field="feedback",
        )
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= _MAX_ID:
        raise InvalidInputError(
            "request_id must be the X-Request-ID of a response (text of 1 to 128 characters), got "
            f"{_show(request_id)}",
            field="request_id",
        )
    given = [name for name in ("label", "value") if name in item]
    if len(given) != 1:
        raise InvalidInputError(
            f"feedback for {request_id!r} needs exactly one of label (a class) or value (a number)",
            field="label",
        )
    return Label(request_id, item[given[0]], given[0])


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a logged request predicted, a value per row, and what the truth may be."""

    task: str
    values: list[Any]
    output: str
    classes: list[Any] | None  # a classifier's classes, when known


class FeedbackIntake:
    """Joins feedback with the prediction log and stores it (one call per request or file)."""

    def __init__(
        self,
        store: FeedbackStore,
        predictions: PredictionStore,
        version_of: Callable[[str, int], ModelVersion | None],
        retention_s: float,
    ) -> None:
        self.store = store
        self.predictions = predictions
        self._version_of = version_of
        self._retention_s = retention_s
        self._pruned_at = 0.0

    def submit(
        self,
        model: str,
        items: Sequence[Label | ShipyardError],
        *,
        version: int | None = None,
        flush: Callable[[], object] | None = None,
    ) -> list[Outcome]:
        """Each item's outcome, in order. `version`: the requests must have been answered by it;
        `flush`: writes this process's queued log entries, tried once when an id is not found."""
        wanted = {item.request_id for item in items if isinstance(item, Label)}
        found = self._find(model, version, wanted)
        if flush is not None and len(found) < len(wanted):
            flush()  # the writer drains about once a second: the request may be waiting in it
            found.update(self._find(model, version, wanted - set(found)))
        now = time.time()
        outcomes: list[Outcome] = []
        versions: dict[int, ModelVersion | None] = {}
        taken: set[str] = set()
        for item in items:
            if not isinstance(item, Label):
                outcomes.append(Outcome(None, error=item))
                continue
            try:
                if item.request_id in taken:
                    raise ConflictError(
                        f"request {item.request_id!r} appears twice in this feedback; a request is "
                        "labelled once",
                        field="request_id",
                    )
                entry = found.get(item.request_id)
                if entry is None:
                    raise self._not_found(model, version, item.request_id)
                if entry.version is not None and entry.version not in versions:
                    versions[entry.version] = self._version_of(model, entry.version)
                prediction = prediction_of(entry, versions.get(entry.version or 0))
                truth = judge(item, prediction, f"{model}:{entry.version}")
            except ShipyardError as exc:
                outcomes.append(Outcome(item.request_id, error=exc))
                continue
            taken.add(item.request_id)
            record = Labelled(
                model,
                item.request_id,
                entry.version,
                prediction.task,
                entry.time,
                now,
                prediction.values,
                truth,
            )
            outcomes.append(Outcome(item.request_id, record))
        self._store(outcomes)
        return outcomes

    def _store(self, outcomes: list[Outcome]) -> None:
        """Write the joined records; those labelled already (by anyone, at any time) become 409s."""
        joined = [i for i, o in enumerate(outcomes) if o.record is not None]
        stored = self.store.add([r for i in joined if (r := outcomes[i].record) is not None])
        for i, ok in zip(joined, stored, strict=True):
            if not ok:
                request_id = outcomes[i].request_id
                outcomes[i] = Outcome(
                    request_id,
                    error=ConflictError(
                        f"request {request_id!r} has feedback already; a request is labelled once",
                        field="request_id",
                    ),
                )
        if time.time() - self._pruned_at > 3600:  # records of predictions the log no longer keeps
            self._pruned_at = time.time()
            self.store.prune(self._pruned_at - self._retention_s)

    def _find(self, model: str, version: int | None, request_ids: set[str]) -> dict[str, Entry]:
        """The newest logged entry of `model` (and `version`) for each id found."""
        found: dict[str, Entry] = {}
        for entry in self.predictions.lookup(request_ids):  # newest first
            if entry.model == model and (version is None or entry.version == version):
                found.setdefault(entry.request_id, entry)
        return found

    def _not_found(self, model: str, version: int | None, request_id: str) -> NotFoundError:
        which = model if version is None else f"{model}:{version}"
        kept = next(
            (f"{self._retention_s / size:g}{unit}" for unit, size in _UNITS if self._retention_s >= size),
            f"{self._retention_s:g}s",
        )
        return NotFoundError(
            f"no logged prediction of {which} has request id {request_id!r}: it was not sampled "
            f"(prediction_log.sample_rate), is older than the log keeps ({kept}), was answered by "
            "another model, or was logged less than a second ago by another worker (retry)",
            field="request_id",
        )


def prediction_of(entry: Entry, version: ModelVersion | None) -> Prediction:
    """The prediction a logged request made (see the module's docstring); 400 naming
    `request_id` when it has none that feedback can be compared with."""
    where = f"request {entry.request_id!r} ({entry.model}:{entry.version})"
    if entry.status != 200:
        raise InvalidInputError(
            f"{where} failed with status {entry.status}: it has no prediction", field="request_id"
        )
    outputs: Mapping[str, Any] = entry.summary.get("outputs") or {}
    name = _prediction_output(outputs)
    if name is None:
        raise InvalidInputError(
            f"{where}: cannot tell which of its outputs ({', '.join(outputs) or 'none'}) is the prediction; "
            "feedback needs an output called label, a single output, or probabilities",
            field="request_id",
        )
    about = outputs[name]
    if "values" not in about:
        raise InvalidInputError(
            f"{where}: its output {name!r} ({about['dtype']}{about['shape']}) was too large for the "
            "prediction log to keep its values (256 at most), so it cannot be compared",
            field="request_id",
        )
    shape, dtype, values = about["shape"], about["dtype"], about["values"]
    known = _classes(version)
    if len(shape) == 2 and shape[1] > 1 and dtype.startswith("float"):  # scores per class: the top one
        tops = [max(range(len(row)), key=row.__getitem__) for row in values]
        if known is not None and len(known) == shape[1]:
            return Prediction(CLASSIFICATION, [known[i] for i in tops], name, known)
        return Prediction(CLASSIFICATION, tops, name, list(range(shape[1])))
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInputError(
            f"{where}: its output {name!r} has {shape} values per request; feedback compares one "
            "value per row",
            field="request_id",
        )
    flat = [v[0] if isinstance(v, list) else v for v in values] if shape else [values]
    if name == "label" or not dtype.startswith("float"):
        if known is None and dtype.startswith(("int", "uint")):
            known = _width_classes(version)
        return Prediction(CLASSIFICATION, flat, name, known)
    return Prediction(REGRESSION, flat, name, None)


def _prediction_output(outputs: Mapping[str, Any]) -> str | None:
    if "label" in outputs:
        return "label"
    if len(outputs) == 1:
        return next(iter(outputs))
    scores = [n for n in _SCORES if n in outputs]
    return scores[0] if scores else None


def _classes(version: ModelVersion | None) -> list[Any] | None:
    """The classes stored with a version: scikit-learn's `classes_`, a transformers classifier's labels."""
    if version is None:
        return None
    classes = version.extra.get("classes") or version.extra.get("labels")
    return list(classes) if isinstance(classes, list) and classes else None


def _width_classes(version: ModelVersion | None) -> list[Any] | None:
    """0..C-1 for an integer label beside a probabilities output C wide (skl2onnx classifiers)."""
    if version is None:
        return None
    for spec in version.signature.outputs:
        if spec.name in _SCORES and len(spec.shape) == 2 and spec.shape[1] > 1:
            return list(range(spec.shape[1]))
    return None


def judge(label: Label, prediction: Prediction, where: str) -> list[Any]:
    """The truth for each of the prediction's rows, checked against its type and classes."""
    rows = len(prediction.values)
    given = label.truth
    if isinstance(given, list):
        if len(given) != rows:
            raise InvalidInputError(
                f"request {label.request_id!r} predicted {rows} row(s); give {label.field} as "
                f"{'one value or ' if rows == 1 else ''}a list of {rows}, not {len(given)}",
                field=label.field,
            )
        truths = given
    elif rows == 1:
        truths = [given]
    else:
        raise InvalidInputError(
            f"request {label.request_id!r} predicted {rows} rows: give {label.field} as a list of {rows}",
            field=label.field,
        )
    if prediction.task == REGRESSION:
        return [_number(t, label) for t in truths]
    return [_class(t, label, prediction, where) for t in truths]


def _number(value: Any, label: Label) -> float:
    if label.text and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(
            f"{label.field} for {label.request_id!r} must be a finite number (the model is a regressor), "
            f"got {_show(value)}",
            field=label.field,
        )
    return float(value)


def _class(value: Any, label: Label, prediction: Prediction, where: str) -> Any:
    sample = prediction.classes[0] if prediction.classes else next(iter(prediction.values), None)
    kind = type(sample) if isinstance(sample, bool | int | float | str) else str
    if label.text and isinstance(value, str) and kind is not str:
        value = _from_text(value, kind)
    fits = (
        isinstance(value, bool)
        if kind is bool
        else not isinstance(value, bool)
        and (isinstance(value, int | float) if kind is float else isinstance(value, kind))
    )
    if not fits:
        noun = {bool: "a boolean", int: "an integer", float: "a number", str: "text"}[kind]
        seen = "classes" if prediction.classes else "predictions"
        raise InvalidInputError(
            f"{label.field} for {label.request_id!r} must be {noun} like {where}'s {seen} "
            f"(e.g. {_show(sample)}), got {_show(value)}",
            field=label.field,
        )
    if prediction.classes is not None and value not in prediction.classes:
        shown = ", ".join(_show(c) for c in prediction.classes[:20])
        more = f" and {len(prediction.classes) - 20} more" if len(prediction.classes) > 20 else ""
        raise InvalidInputError(
            f"{label.field} {_show(value)} for {label.request_id!r} is not a class of {where}; "
            f"its classes are {shown}{more}",
            field=label.field,
        )
    return value


def _from_text(text: str, kind: type) -> Any:
    """A command line's or CSV cell's text as `kind`; left as text (and refused) if it is not one."""
    try:
        if kind is bool:
            lowered = text.strip().lower()
            return {"true": True, "false": False, "1": True, "0": False}.get(lowered, text)
        return kind(text.strip())
    except ValueError:
        return text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."

"""What a logged request predicted, and whether the truth a caller gives for it fits.

The prediction is read from the outputs' values the prediction log keeps when they are small:
the output called `label` if there is one (scikit-learn, skl2onnx, transformers classifiers),
else the model's only output, else its `probabilities` / `scores` / `logits` (the top class).
Integer, boolean and text predictions make a classifier; float ones a regressor. The truth must
have the prediction's type and, where the version's classes are known (stored with it, or the
width of its probabilities), be one of them; each refusal names the field.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shipyard.errors import InvalidInputError
from shipyard.monitor.feedback_store import CLASSIFICATION, REGRESSION
from shipyard.monitor.predictions import Entry
from shipyard.types import ModelVersion

_SCORES = ("probabilities", "scores", "logits")
_SHOWN = 40  # characters of a caller's value quoted in an error


@dataclass(frozen=True, slots=True)
class Label:
    """One item of feedback: the truth for a request's rows (a value, or a list of one per row)."""

    request_id: str
    truth: Any
    field: str = "label"  # what the caller called the truth: "label" or "value", named in errors
    text: bool = False  # given as text (a command-line flag, a CSV cell): read as the prediction's type


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a logged request predicted, a value per row, and what the truth may be."""

    task: str
    values: list[Any]
    output: str
    classes: list[Any] | None  # a classifier's classes, when known


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
    if shape and not shape[0]:
        raise InvalidInputError(f"{where} had no rows: there is nothing to compare", field="request_id")
    known = _classes(version)
    if dtype.startswith("float") and None in _flat(values):  # JSON holds NaN and infinity as null
        raise InvalidInputError(
            f"{where}: its output {name!r} holds NaN or infinite values, which cannot be compared",
            field="request_id",
        )
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


def _flat(values: Any) -> list[Any]:
    if not isinstance(values, list):
        return [values]
    return [leaf for value in values for leaf in _flat(value)]


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
            f"got {quoted(value)}",
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
            f"(e.g. {quoted(sample)}), got {quoted(value)}",
            field=label.field,
        )
    if prediction.classes is not None and value not in prediction.classes:
        shown = ", ".join(quoted(c) for c in prediction.classes[:20])
        more = f" and {len(prediction.classes) - 20} more" if len(prediction.classes) > 20 else ""
        raise InvalidInputError(
            f"{label.field} {quoted(value)} for {label.request_id!r} is not a class of {where}; "
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


def quoted(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."

"""Evaluation data: a CSV, JSONL or Parquet file turned into model inputs plus what to score them by.

Two shapes: rows (inputs, optionally a label per row) and sentence pairs (two texts and a
similarity score per pair). Pairs are flattened into rows — all first sentences, then all
second ones — so every model runs the same way; the metric pairs them up again.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError, MissingDependencyError
from shipyard.tensors import numpy_dtype
from shipyard.types import Signature

LABEL_COLUMNS = ("label", "target", "y", "class")
TEXT_COLUMNS = ("text", "sentence", "input")
SCORE_COLUMNS = ("score", "similarity", "label")


@dataclass(frozen=True)
class EvalSet:
    inputs: dict[str, np.ndarray]  # what the model is fed, one entry per row
    labels: np.ndarray | None = None  # rows: the expected label or value of each row
    scores: np.ndarray | None = None  # pairs: the similarity of pair i = rows i and i + pairs
    source: str = ""
    pairs: int = 0  # sentence-pair data: the number of pairs (rows = 2 × pairs)

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def units(self) -> int:
        """What the metric counts: pairs for similarity data, rows otherwise."""
        return self.pairs or self.rows

    def take(self, units: np.ndarray) -> EvalSet:
        """A subset by unit index (pairs keep both sentences); used for splits and bootstrap."""
        if self.pairs:
            rows = np.concatenate([units, units + self.pairs])
            scores = None if self.scores is None else self.scores[units]
            inputs = {k: v[rows] for k, v in self.inputs.items()}
            return EvalSet(inputs, None, scores, self.source, len(units))
        labels = None if self.labels is None else self.labels[units]
        return EvalSet({k: v[units] for k, v in self.inputs.items()}, labels, None, self.source)

    def split(self, count: int) -> tuple[EvalSet, EvalSet]:
        """The first `count` units and the rest (calibration must never see the verdict's data)."""
        index = np.arange(self.units)
        return self.take(index[:count]), self.take(index[count:])


def read_records(path: Path) -> list[dict[str, Any]]:
    """The file's rows as dicts; the format is taken from the suffix (.csv, .jsonl/.json, .parquet)."""
    if not path.is_file():
        raise InvalidInputError(f"eval file {path} does not exist", field="eval")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        records = _read_jsonl(path)
    elif suffix in (".parquet", ".pq"):
        records = _read_parquet(path)
    else:
        raise InvalidInputError(
            f"{path.name}: unknown eval file type {suffix or '(none)'}; use .csv, .jsonl or .parquet",
            field="eval",
        )
    if not records:
        raise InvalidInputError(f"{path.name} has no rows", field="eval")
    return records


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise InvalidInputError(f"{path.name} has no header row", field="eval")
            records = []
            for line, row in enumerate(reader, start=2):
                extra = row.pop(None, None)
                if extra is not None or any(v is None for v in row.values()):
                    fields = sum(v is not None for v in row.values()) + len(extra or [])
                    raise InvalidInputError(
                        f"{path.name} line {line} has {fields} fields but the header has "
                        f"{len(reader.fieldnames)}",
                        field="eval",
                    )
                records.append({k: _cell(v) for k, v in row.items()})
            return records
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path.name} is not UTF-8 text: {exc}", field="eval") from exc
    except csv.Error as exc:
        raise InvalidInputError(f"{path.name} is not valid CSV: {exc}", field="eval") from exc


def _cell(text: str) -> Any:
    """CSV cells are text: numbers become numbers, everything else stays a string."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path.name} is not UTF-8 text: {exc}", field="eval") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                f"{path.name} line {number} is not JSON: {exc.msg}", field="eval"
            ) from exc
        if not isinstance(record, dict):
            raise InvalidInputError(f"{path.name} line {number} is not a JSON object", field="eval")
        records.append(record)
    return records


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("pyarrow", "parquet", "reading Parquet eval files") from exc
    try:
        return list(pq.read_table(str(path)).to_pylist())
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family
        raise InvalidInputError(f"{path.name} is not a readable Parquet file: {exc}", field="eval") from exc


def load_eval(path: str | Path, signature: Signature, *, label: str | None = None) -> EvalSet:
    """Read `path` and map its columns onto the model's inputs (see the module docstring)."""
    path = Path(path).expanduser()
    records = read_records(path)
    columns = list(records[0])
    for number, record in enumerate(records[1:], start=2):
        if set(record) != set(columns):
            raise InvalidInputError(
                f"{path.name} row {number} has columns {sorted(record)}, the first row {sorted(columns)}",
                field="eval",
            )
    text_input = len(signature.inputs) == 1 and signature.inputs[0].datatype == "BYTES"
    if text_input and "sentence1" in columns and "sentence2" in columns:
        return _pairs(path, records, signature, label)
    label_column = _label_column(path, columns, label)
    labels = None
    if label_column is not None:
        labels = np.array([r[label_column] for r in records])
    feature_columns = [c for c in columns if c != label_column]
    if text_input:
        name = signature.inputs[0].name
        column = next((c for c in (name, *TEXT_COLUMNS) if c in feature_columns), None)
        if column is None:
            raise InvalidInputError(
                f"{path.name} has no text column: the model takes text, name the column "
                f"{name!r} or one of {', '.join(TEXT_COLUMNS)} (columns: {', '.join(columns)})",
                field="eval",
            )
        inputs = {name: _text_array([r[column] for r in records])}
    else:
        inputs = _numeric_inputs(path, records, feature_columns, signature)
    return EvalSet(inputs, labels, None, str(path))


def _label_column(path: Path, columns: list[str], label: str | None) -> str | None:
    if label is not None:
        if label not in columns:
            raise InvalidInputError(
                f"{path.name} has no label column {label!r} (columns: {', '.join(columns)})",
                field="label",
            )
        return label
    return next((c for c in LABEL_COLUMNS if c in columns), None)


def _text_array(values: list[Any]) -> np.ndarray:
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise InvalidInputError(f"row {bad[0] + 1} holds {values[bad[0]]!r}, not text", field="eval")
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _pairs(path: Path, records: list[dict[str, Any]], signature: Signature, label: str | None) -> EvalSet:
    columns = list(records[0])
    score_column = label if label is not None else next((c for c in SCORE_COLUMNS if c in columns), None)
    if label is not None and label not in columns:
        raise InvalidInputError(f"{path.name} has no score column {label!r}", field="label")
    first = _text_array([r["sentence1"] for r in records])
    second = _text_array([r["sentence2"] for r in records])
    scores = None
    if score_column is not None:
        try:
            scores = np.array([float(r[score_column]) for r in records], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"{path.name}: the {score_column!r} column must hold numbers: {exc}", field="eval"
            ) from exc
    inputs = {signature.inputs[0].name: np.concatenate([first, second])}
    return EvalSet(inputs, None, scores, str(path), len(records))


def _numeric_inputs(
    path: Path, records: list[dict[str, Any]], columns: list[str], signature: Signature
) -> dict[str, np.ndarray]:
    specs = signature.inputs
    if all(spec.name in columns for spec in specs):  # one column per input, each cell an array
        picked = {spec.name: [r[spec.name] for r in records] for spec in specs}
    elif len(specs) == 1:  # the features are the columns, in file order
        spec = specs[0]
        width = spec.shape[1] if len(spec.shape) == 2 else -1
        if width not in (-1, len(columns)):
            raise InvalidInputError(
                f"{path.name} has {len(columns)} feature columns ({', '.join(columns[:8])}"
                f"{', …' if len(columns) > 8 else ''}) but the model takes {width} features in "
                f"input {spec.name!r}; remove extra columns or name the label column with --label",
                field="eval",
            )
        picked = {spec.name: [[r[c] for c in columns] for r in records]}
    else:
        missing = [s.name for s in specs if s.name not in columns]
        raise InvalidInputError(
            f"{path.name} lacks columns for the model's inputs {', '.join(missing)}", field="eval"
        )
    inputs = {}
    for spec in specs:
        try:
            inputs[spec.name] = np.asarray(picked[spec.name], dtype=numpy_dtype(spec.datatype))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"{path.name}: the values for input {spec.name!r} are not all {spec.datatype} "
                f"numbers of one shape: {exc}",
                field="eval",
            ) from exc
    return inputs

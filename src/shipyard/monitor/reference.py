"""Reference data in the shapes users have it, as one array per model input.

Accepted: a mapping of input names to arrays; rows of records (dicts, as read from CSV, JSON
lines or Parquet); or a plain array (or list of rows) for a model with one input. Records map
onto the signature by input name, or, for a model with one 2-D input, column by column in file
order, with a label column (`label`, `target`, `y`, `class`) left out. Numbers may be missing
(empty, null, NA, NaN): they count in the profile's missing rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError
from shipyard.types import Signature, TensorSpec

LABEL_COLUMNS = ("label", "target", "y", "class")
_MISSING = frozenset({"", "na", "nan", "null", "none"})


def reference_inputs(
    data: Any, signature: Signature, source: str = "the reference"
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """(one array per input, the column names of 2-D inputs where the data named them)."""
    specs = signature.inputs
    if isinstance(data, Mapping):
        return _from_mapping(data, specs, source), {}
    if isinstance(data, np.ndarray) and data.dtype.names is None:
        return {_single(specs, source).name: _array(data, _single(specs, source), source)}, {}
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        rows = list(data)
        if not rows:
            raise InvalidInputError(f"{source} has no rows", field="reference")
        if all(isinstance(r, Mapping) for r in rows):
            return _from_records(rows, specs, source)
        spec = _single(specs, source)
        return {spec.name: _array(rows, spec, source)}, {}
    raise InvalidInputError(
        f"{source} must be rows (a list or array), records (dicts) or a mapping of input names to "
        f"arrays, got {type(data).__name__}",
        field="reference",
    )


def _single(specs: Sequence[TensorSpec], source: str) -> TensorSpec:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise InvalidInputError(
            f"the model takes several inputs ({names}): give {source} as named columns, one per input",
            field="reference",
        )
    return specs[0]


def _from_mapping(data: Mapping[str, Any], specs: Sequence[TensorSpec], source: str) -> dict[str, np.ndarray]:
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in data]
    unknown = [str(n) for n in data if n not in expected]
    if missing or unknown:
        raise InvalidInputError(
            f"{source} names {', '.join(map(str, data)) or 'nothing'} but the model's inputs are "
            f"{', '.join(expected)}" + (f" (missing: {', '.join(missing)})" if missing else ""),
            field="reference",
        )
    return {s.name: _array(data[s.name], s, source) for s in specs}


def _from_records(
    records: list[Mapping[str, Any]], specs: Sequence[TensorSpec], source: str
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    columns = [str(c) for c in records[0]]
    for number, record in enumerate(records[1:], start=2):
        if list(map(str, record)) != columns:
            raise InvalidInputError(
                f"{source} row {number} has columns {', '.join(map(str, record))}, the first row "
                f"{', '.join(columns)}",
                field="reference",
            )
    if all(s.name in columns for s in specs):
        inputs = {s.name: _array([r[s.name] for r in records], s, source) for s in specs}
        return inputs, {}
    if len(specs) > 1:
        missing = [s.name for s in specs if s.name not in columns]
        raise InvalidInputError(
            f"{source} has no column for the model's input(s) {', '.join(missing)} (columns: "
            f"{_listing(columns)})",
            field="reference",
        )
    spec = specs[0]
    features = [c for c in columns if c not in LABEL_COLUMNS] or columns
    width = spec.shape[1] if len(spec.shape) == 2 else (1 if len(spec.shape) == 1 else -1)
    if width not in (-1, len(features)):
        wanted = f"{width} feature{'s' if width != 1 else ''}"
        raise InvalidInputError(
            f"{source} has {len(features)} feature columns ({_listing(features)}) but the model "
            f"takes {wanted} in input {spec.describe()}; give exactly those columns, in the "
            "model's order",
            field="reference",
        )
    if len(spec.shape) == 1:
        return {spec.name: _array([r[features[0]] for r in records], spec, source)}, {}
    rows = [[r[c] for c in features] for r in records]
    return {spec.name: _array(rows, spec, source, features)}, {spec.name: features}


def _listing(columns: Sequence[str]) -> str:
    return ", ".join(columns[:12]) + (f", … ({len(columns)} in all)" if len(columns) > 12 else "")


def _array(values: Any, spec: TensorSpec, source: str, columns: Sequence[str] | None = None) -> np.ndarray:
    """`values` as an array of the spec's rank: text stays text, numbers become float64 with
    missing values as NaN (the model's dtype is not enforced: a profile describes data)."""
    if spec.datatype == "BYTES":
        text = np.empty(len(values), dtype=object)
        text[:] = (
            list(values) if not isinstance(values, np.ndarray) else values.reshape(len(values), -1)[:, 0]
        )
        return text
    array: np.ndarray[Any, Any]
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = _numbers(values, spec, source, columns)
    expected = len(spec.shape)
    if array.ndim == 1 and expected == 2 and spec.shape[1] in (1, -1):
        array = array.reshape(-1, 1)
    if array.ndim != expected or not all(
        want < 0 or want == got for want, got in zip(spec.shape[1:], array.shape[1:], strict=False)
    ):
        raise InvalidInputError(
            f"{source} gives input {spec.name!r} rows of shape {list(array.shape[1:])}, the model "
            f"takes {spec.describe()}",
            field="reference",
        )
    return array


def _numbers(values: Any, spec: TensorSpec, source: str, columns: Sequence[str] | None) -> np.ndarray:
    """Numbers cell by cell, so a missing cell becomes NaN and a word names its row and column."""
    rows = list(values)
    out = []
    for number, row in enumerate(rows, start=1):
        cells = row if isinstance(row, (list, tuple)) else [row]
        parsed = []
        for position, cell in enumerate(cells):
            parsed.append(_number(cell, number, columns[position] if columns else spec.name, source))
        out.append(parsed if isinstance(row, (list, tuple)) else parsed[0])
    try:
        return np.asarray(out, dtype=np.float64)
    except ValueError as exc:  # ragged rows
        raise InvalidInputError(
            f"{source} gives input {spec.name!r} rows of different lengths", field="reference"
        ) from exc


def _number(cell: Any, row: int, column: str, source: str) -> float:
    if cell is None or (isinstance(cell, str) and cell.strip().lower() in _MISSING):
        return math.nan
    try:
        return float(cell)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"{source} row {row} column {column!r} holds {str(cell)[:40]!r}, not a number",
            field="reference",
        ) from None

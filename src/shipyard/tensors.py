"""V2 datatypes as numpy dtypes, and user input turned into arrays that fit a signature.

One place for this so the CLI, the Python API and every protocol adapter accept the same
inputs and reject the same mistakes with the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from shipyard.errors import InvalidInputError
from shipyard.types import Signature, TensorSpec

_TO_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_DTYPES = {name: np.dtype(t) for name, t in _TO_NUMPY.items()}
_FLOAT_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32)}
_FROM_NUMPY = {np.dtype(v).str: k for k, v in _TO_NUMPY.items() if k != "BYTES"}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a V2 datatype (BYTES is an object array of bytes/str)."""
    try:
        dtype: np.dtype[Any] = _DTYPES[datatype]
    except KeyError:
        raise InvalidInputError(f"unsupported datatype {datatype!r}", field="datatype") from None
    return dtype


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The V2 datatype of a numpy dtype; strings and objects are BYTES."""
    if dtype.kind in "OUS":
        return "BYTES"
    try:
        return _FROM_NUMPY[dtype.newbyteorder("=").str if dtype.byteorder == ">" else dtype.str]
    except KeyError:
        raise InvalidInputError(f"unsupported numpy dtype {dtype}", field="datatype") from None


def shape_matches(expected: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    return len(expected) == len(actual) and all(
        e < 0 or e == a for e, a in zip(expected, actual, strict=True)
    )


def _as_array(value: Any, spec: TensorSpec) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        if spec.datatype == "BYTES" and isinstance(value, (list, tuple)):
            # Keep each element as given: numpy would turn ["ok", 1] into the text "1".
            if len(spec.shape) > 1:
                return np.array(value, dtype=object)
            arr = np.empty(len(value), dtype=object)
            arr[:] = list(value)
            return arr
        return np.asarray(value)
    except ValueError as exc:  # numpy refuses inhomogeneous nesting
        raise InvalidInputError(
            f"input {spec.name!r} has ragged rows (rows of different lengths); expected {spec.describe()}",
            field=spec.name,
        ) from exc


def _is_text_or_tokens(item: Any) -> bool:
    """A BYTES element: text, or a non-empty list of token ids (pre-tokenized text)."""
    if isinstance(item, (str, bytes)):
        return True
    return (
        isinstance(item, (list, tuple))
        and bool(item)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
    )


def cast_array(arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """`arr` as the spec's dtype, refusing text for numbers, fractions or overflow for integers."""
    target = numpy_dtype(spec.datatype)
    if spec.datatype == "BYTES":
        if arr.dtype.kind not in "OUS" or (
            arr.dtype.kind == "O" and not all(_is_text_or_tokens(x) for x in arr.flat)
        ):
            raise InvalidInputError(
                f"input {spec.name!r} expects text (BYTES): every element must be a string or "
                f"a list of token ids (numbers, nulls and objects are refused); expected "
                f"{spec.describe()}",
                field=spec.name,
            )
        return arr.astype(object)
    if arr.dtype.kind in "OUS":
        raise InvalidInputError(
            f"input {spec.name!r} expects numbers ({spec.datatype}), got text or mixed values; "
            f"expected {spec.describe()}",
            field=spec.name,
        )
    if arr.dtype == target:
        return arr
    if target.kind in "iu" and arr.dtype.kind in "fiu" and arr.size:
        if arr.dtype.kind == "f" and (not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.trunc(arr))):
            raise InvalidInputError(
                f"input {spec.name!r} expects integers ({spec.datatype}), got fractional values",
                field=spec.name,
            )
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidInputError(
                f"input {spec.name!r} has values outside the range of {spec.datatype} "
                f"({info.min} to {info.max})",
                field=spec.name,
            )
    return _narrowed(arr, target, spec)


def _narrowed(arr: np.ndarray, target: np.dtype[Any], spec: TensorSpec) -> np.ndarray:
    """`arr` as `target`, refusing finite numbers too large for it: 1e39 as FP32 would become
    infinite, and the model would answer NaN instead of the request getting an error."""
    if arr.dtype.kind == "f" and arr.dtype.itemsize > target.itemsize and target.kind == "f" and arr.size:
        limit = _FLOAT_MAX[target]
        if abs(arr).max() > limit and np.isfinite(arr[abs(arr) > limit]).any():  # inf stays inf
            raise InvalidInputError(
                f"input {spec.name!r} has values outside the range of {spec.datatype} (±{limit:.4g})",
                field=spec.name,
            )
    return arr.astype(target, copy=False)


def coerce_input(value: Any, spec: TensorSpec) -> np.ndarray:
    """One input as an array of the spec's dtype and shape (a single row gains a batch axis)."""
    if spec.datatype in _FLOATS and isinstance(value, list):
        # Hot path for JSON numbers; text, nulls, ragged rows or a missing batch axis take the
        # checked path below (numpy would parse "0.2" as a number when given a float dtype).
        try:
            arr = np.asarray(value)
        except ValueError:
            arr = None
        if arr is not None and arr.dtype.kind in "biuf" and shape_matches(spec.shape, arr.shape):
            return _narrowed(arr, numpy_dtype(spec.datatype), spec)
    arr = _as_array(value, spec)
    ragged = arr.dtype == object and spec.datatype != "BYTES" and arr.ndim and arr.size
    if ragged and any(isinstance(x, (list, tuple)) for x in arr.flat):
        raise InvalidInputError(
            f"input {spec.name!r} has ragged rows; expected {spec.describe()}", field=spec.name
        )
    arr = cast_array(arr, spec)
    if len(spec.shape) == arr.ndim + 1 and shape_matches(spec.shape[1:], arr.shape):
        arr = arr[np.newaxis, ...]  # one instance without its batch axis
    if not shape_matches(spec.shape, arr.shape):
        detail = ""
        if len(spec.shape) == arr.ndim == 2 and 0 <= spec.shape[1] != arr.shape[1]:
            detail = f": wrong number of features (expected {spec.shape[1]}, got {arr.shape[1]})"
        expected = ", ".join("?" if d < 0 else str(d) for d in spec.shape)
        raise InvalidInputError(
            f"input {spec.name!r} has shape {list(arr.shape)}, expected [{expected}]{detail}; "
            f"signature {spec.describe()}",
            field=spec.name,
        )
    return arr


def coerce_inputs(signature: Signature, data: Any) -> dict[str, np.ndarray]:
    """Named arrays for `signature` from an array, a list of rows, or a name → value mapping."""
    inputs = signature.inputs
    # The common case first: one input given as rows or an array (no Mapping ABC check needed).
    if len(inputs) == 1 and not isinstance(data, dict) and not isinstance(data, Mapping):
        return {inputs[0].name: coerce_input(data, inputs[0])}
    if not isinstance(data, Mapping):
        if len(signature.inputs) != 1:
            names = ", ".join(repr(t.name) for t in signature.inputs)
            raise InvalidInputError(
                f"this model takes {len(signature.inputs)} named inputs ({names}); "
                "pass a mapping of input name to values",
                field="inputs",
            )
        data = {signature.inputs[0].name: data}
    unknown = [k for k in data if signature.input(k) is None]
    missing = [t.name for t in signature.inputs if t.name not in data]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        raise InvalidInputError(
            "; ".join(parts) + f"; the model's {signature.describe()}",
            field=(unknown or missing)[0],
        )
    arrays = {t.name: coerce_input(data[t.name], t) for t in signature.inputs}
    batch = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(batch) > 1:
        raise InvalidInputError(
            f"inputs disagree on the batch size (axis 0): {sorted(batch)}", field="inputs"
        )
    return arrays


def to_jsonable(arr: np.ndarray) -> Any:
    """A nested list for JSON; bytes become UTF-8 text."""
    if arr.dtype == object or arr.dtype.kind == "S":
        return (
            np.vectorize(
                lambda x: x.decode("utf-8", "replace") if isinstance(x, bytes) else x, otypes=[object]
            )(arr).tolist()
            if arr.size
            else arr.tolist()
        )
    return arr.tolist()

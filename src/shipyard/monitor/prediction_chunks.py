"""The prediction log's chunk format: how up to 256 entries become one row's JSON, and back.

The writer thread runs on the same interpreter as the request path, so every microsecond it
spends per entry is taken from serving (the GIL). A chunk is therefore columnar: the entries'
scalar fields as one list each (made by one `zip`, in C), and their inputs and outputs grouped by
layout (each tensor's name, shape and dtype): a group stores its layout once, and the values of
each small output stacked into one array that orjson writes in C. Per entry, Python only works
out the layout key; an entry-per-array format cost about four times as much CPU (measured with
benchmarks/prediction_log.py).

    {"id": [...], "time": [...], "model": [...], "version": [...], "protocol": [...],
     "status": [...], "latency_ms": [...],
     "groups": [{"at": [entry index, ...], "inputs": [[name, shape, dtype], ...] | null,
                 "outputs": [[name, shape, dtype, values stacked | null], ...] | null}, ...],
     "payload": [[entry index, {"inputs": ..., "outputs": ...}], ...],
     "omitted": [[entry index, payload bytes left out], ...]}

`decode` also reads the earlier format (a JSON array of entries, each an array of the fields
below), so segments written by an older server stay readable. Either way it yields each entry as
[request id, time, model, version, protocol, status, latency ms, inputs, outputs, payload,
payload bytes left out], inputs [[name, shape, dtype], ...] and outputs [[name, shape, dtype,
values or null], ...] (null: the request never got that far).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

MAX_VALUES = 256  # an output of at most this many elements is kept with its values
_JSON = orjson.OPT_SERIALIZE_NUMPY

# What the writer hands over per entry: (time, request id, model, version, protocol, status,
# latency s, inputs, outputs, payload wanted, payload bytes, a description made on the request
# path or None). A description, made when the arrays were too large to hold (see the recorder),
# is (inputs, outputs, payload bytes left out) in the decoded form above, with values as arrays.
Described = tuple[list[list[Any]] | None, list[list[Any]] | None, int]
Pending = tuple[float, str, str, "int | None", str, int, float, Any, Any, bool, int, "Described | None"]

_DTYPE_NAMES: dict[np.dtype[Any], str] = {}  # numpy computes `dtype.name` in Python: microseconds


def dtype_name(dtype: np.dtype[Any]) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = dtype.name
        if len(_DTYPE_NAMES) < 256:  # text dtypes differ by length: keep the cache bounded
            _DTYPE_NAMES[dtype] = name
    return name


def describe(
    inputs: dict[str, np.ndarray] | None, outputs: dict[str, np.ndarray] | None, left_out: int = 0
) -> Described:
    """One entry's inputs and outputs in the decoded form (values as arrays), and `left_out`."""
    described_inputs = None
    if inputs is not None:
        described_inputs = [[name, a.shape, dtype_name(a.dtype)] for name, a in inputs.items()]
    described_outputs = None
    if outputs is not None:
        described_outputs = [
            [name, a.shape, dtype_name(a.dtype), a if a.size <= MAX_VALUES else None]
            for name, a in outputs.items()
        ]
    return described_inputs, described_outputs, left_out


def encode(batch: Sequence[Pending], max_payload_bytes: int) -> bytes:
    """A chunk's JSON. Raises TypeError if a value cannot be written (see `encode_each`)."""
    # The entries' fields, column by column, in C.
    at, ids, models, versions, protocols, statuses, latencies, inputs, outputs, payloads, held, made = zip(
        *batch, strict=True
    )
    groups: dict[Any, list[int]] = {}
    own: list[dict[str, Any]] = []  # entries described on the request path: a group each
    for index, (ins, outs, described) in enumerate(zip(inputs, outputs, made, strict=True)):
        # The layout key, inline: a function call per entry would cost a fifth more.
        if described is None:
            key = (
                None if ins is None else tuple([(n, a.shape, a.dtype) for n, a in ins.items()]),
                None if outs is None else tuple([(n, a.shape, a.dtype) for n, a in outs.items()]),
            )
            members = groups.get(key)
            if members is None:
                groups[key] = [index]
            else:
                members.append(index)
        else:
            stacked = described[1] and [[n, s, d, None if v is None else [v]] for n, s, d, v in described[1]]
            own.append({"at": [index], "inputs": described[0], "outputs": stacked})
    chunk_groups = [_group(key, members, outputs) for key, members in groups.items()]
    kept: list[list[Any]] = []
    omitted: list[list[int]] = []
    for index in (i for i, wanted in enumerate(payloads) if wanted):
        if inputs[index] is not None and held[index] <= max_payload_bytes:
            kept.append([index, {"inputs": inputs[index], "outputs": outputs[index]}])
        elif inputs[index] is not None:
            omitted.append([index, held[index]])
        elif made[index] is not None and made[index][2]:
            omitted.append([index, made[index][2]])
    chunk = {
        "id": ids,
        "time": at,
        "model": models,
        "version": versions,
        "protocol": protocols,
        "status": statuses,
        "latency_ms": np.round(np.array(latencies, dtype=np.float64) * 1000, 3),
        "groups": chunk_groups + own,
        "payload": kept,
        "omitted": omitted,
    }
    return orjson.dumps(chunk, option=_JSON, default=_plain)


def encode_each(
    batch: Sequence[Pending], max_payload_bytes: int, failed: Callable[[Pending, Exception], None]
) -> tuple[Sequence[Pending], bytes | None]:
    """`encode`, and entry by entry once a value could not be written: the entries that fail are
    left out and handed to `failed`. Returns the entries written and their chunk (None if none)."""
    try:
        return batch, encode(batch, max_payload_bytes)
    except TypeError:
        pass
    good = []
    for pending in batch:
        try:
            encode([pending], max_payload_bytes)
        except TypeError as exc:
            failed(pending, exc)
        else:
            good.append(pending)
    return good, encode(good, max_payload_bytes) if good else None


def _group(key: Any, members: list[int], outputs: Sequence[Any]) -> dict[str, Any]:
    input_layout, output_layout = key
    described_inputs = None
    if input_layout is not None:
        described_inputs = [[name, shape, dtype_name(dtype)] for name, shape, dtype in input_layout]
    described_outputs = None
    if output_layout is not None:
        described_outputs = []
        for name, shape, dtype in output_layout:
            values = None
            if math.prod(shape) <= MAX_VALUES:
                arrays = [outputs[index][name] for index in members]
                # One shape throughout (it is in the key): concatenating and reshaping is one C
                # call, where np.stack works array by array in Python.
                values = np.concatenate(arrays).reshape(len(arrays), *shape) if shape else np.array(arrays)
            described_outputs.append([name, shape, dtype_name(dtype), values])
    return {"at": members, "inputs": described_inputs, "outputs": described_outputs}


def decode(blob: bytes) -> list[list[Any]]:
    """A chunk's entries, each as the field list in the module docstring, in time order."""
    chunk = orjson.loads(blob)
    if isinstance(chunk, list):  # the earlier format: already a list of entries
        return chunk
    entries = [
        [request_id, at, model, version, protocol, status, latency, None, None, None, 0]
        for request_id, at, model, version, protocol, status, latency in zip(
            chunk["id"],
            chunk["time"],
            chunk["model"],
            chunk["version"],
            chunk["protocol"],
            chunk["status"],
            chunk["latency_ms"],
            strict=True,
        )
    ]
    for group in chunk["groups"]:
        inputs, outputs = group["inputs"], group["outputs"]
        for position, index in enumerate(group["at"]):
            entry = entries[index]
            entry[7] = inputs
            if outputs is not None:
                entry[8] = [
                    [name, shape, dtype, None if values is None else values[position]]
                    for name, shape, dtype, values in outputs
                ]
    for index, body in chunk["payload"]:
        entries[index][9] = body
    for index, left_out in chunk["omitted"]:
        entries[index][10] = left_out
    return entries


def _plain(value: Any) -> Any:
    """What orjson cannot write itself: text (object) arrays, bytes, numpy scalars."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not serializable")

"""The prediction log's chunk format: how up to 256 entries become one row's bytes, and back.

Chunks are encoded on the server's event loop (or the log's thread, in the same process), so
every microsecond spent per entry is taken from serving. A chunk is therefore columnar: the
entries come as columns (`Entries`, one `zip` of the recorder's queue, in C), the scalar ones
written as they are, and their inputs and outputs grouped by layout (each tensor's name, shape and
dtype): a group stores its layout once, and the values of each small output stacked into one
array. `encode` works per run of a batch's entries; `encode_batched`, for the usual chunk (every
entry ran in a batch, every batch of one layout), per chunk. An entry-per-array format cost about
four times as much CPU (measured with benchmarks/prediction_log.py).

A chunk is one byte (1, the format), its header's length (4 bytes, little-endian), a JSON header,
then the raw bytes of its numeric arrays (the entries' times and latencies, each group's stacked
output values), which the header refers to as {"raw": [dtype, shape, byte offset]}: formatting
those floats as JSON text was most of the writer's JSON work and most of a chunk's bytes. A column
whose entries all share one value (model, version, protocol, status, on most servers) holds it
once, as a list of one. The request ids are not in the chunk: its row holds them already (as a
JSON array, which SQLite's json_each reads for lookups), and they were a third of its bytes.

    {"time": {"raw": ...}, "model": [...], "version": [...], "protocol": [...],
     "status": [...], "latency_ms": {"raw": ...},
     "groups": [{"at": [entry index, ...], "inputs": [[name, shape, dtype], ...] | null,
                 "outputs": [[name, shape, dtype, values stacked | {"raw": ...} | null], ...]
                            | null}, ...],
     "payload": [[entry index, {"inputs": ..., "outputs": ...}], ...],
     "omitted": [[entry index, payload bytes left out], ...]}

`decode` also reads the two earlier formats, so segments written by an older server stay readable:
the same document as JSON with every value inline and the ids in it ("id": [...]), and an array of
entries, each an array of the fields below. Whichever it reads, it yields each entry as
[request id, time, model, version, protocol, status, latency ms, inputs, outputs, payload,
payload bytes left out], inputs [[name, shape, dtype], ...] and outputs [[name, shape, dtype,
values or null], ...] (null: the request never got that far), values as JSON would have them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from itertools import compress, groupby
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

import numpy as np
import orjson

MAX_VALUES = 256  # an output of at most this many elements is kept with its values
_JSON = orjson.OPT_SERIALIZE_NUMPY
# A binary chunk's first byte (format 1); a JSON chunk, written before, starts with "{" or "[".
_BINARY = b"\x01"
_RAW_KINDS = frozenset("biuf")  # dtype kinds kept as raw bytes: booleans, integers, floats

Arrays = dict[str, np.ndarray]


class Ran:
    """The arrays one batch ran on and returned, shared by the log entries of all its requests.

    An entry refers to its rows of a batch (this, an offset and a row count) rather than holding
    its request's own arrays: on a busy server a second of entries held a second of requests'
    arrays and dicts (about seven objects each, ten thousand requests a second), which cost the
    event loop as much as the writer's own work (allocator and cache misses, longer collections),
    and made the writer walk every entry's arrays in Python. A batch's merged inputs and outputs
    exist anyway; its entries' rows are cut from them as a chunk is encoded, one call per chunk.

    `whole`: the arrays are one request's as they are (a batch of one whose outputs are not one row
    per input row, or a request that never reached a batch): its entry takes them all.
    """

    __slots__ = ("inputs", "nbytes", "outputs", "row_bytes", "whole")

    def __init__(self, inputs: Arrays | None, outputs: Arrays | None, rows: int = -1) -> None:
        self.inputs = inputs
        self.outputs = outputs
        arrays = [*(inputs or {}).values(), *(outputs or {}).values()]
        self.nbytes = sum(a.nbytes for a in arrays)
        # Cut into rows only where every array has `rows` rows (the batcher's merged arrays do).
        self.whole = rows < 1 or not arrays or any(a.ndim == 0 or a.shape[0] != rows for a in arrays)
        self.row_bytes = 0 if self.whole else self.nbytes // rows

    def held(self, rows: int) -> int:
        """The bytes of an entry's own arrays (what a payload of its `rows` weighs)."""
        return self.nbytes if self.whole else self.row_bytes * rows

    def arrays(self, offset: int, rows: int) -> tuple[Arrays | None, Arrays | None]:
        """An entry's inputs and outputs, as its request had them."""
        if self.whole:
            return self.inputs, self.outputs
        end = offset + rows
        inputs, outputs = self.inputs, self.outputs
        return (
            None if inputs is None else {name: a[offset:end] for name, a in inputs.items()},
            None if outputs is None else {name: a[offset:end] for name, a in outputs.items()},
        )


class Entries(NamedTuple):
    """A chunk's entries as the recorder hands them over: column by column, each one value per
    entry, in the order they were answered. The recorder cuts its queue into these columns with
    one `zip`, in C, and the encoders read them as they are, where each took a thirteen-field
    tuple per entry apart again (with the plain tuples the recorder queues, the log went from about
    20,700 to 15,700 instructions a request under load; see benchmarks/README.md)."""

    at: Sequence[float]  # when it was answered, seconds since the epoch
    request_ids: Sequence[str]
    models: Sequence[str]
    versions: Sequence[int | None]
    protocols: Sequence[str]
    statuses: Sequence[int]
    latencies: Sequence[float]  # seconds
    rans: Sequence[Ran | None]  # the batch it ran in, or its own arrays; None: it got none
    offsets: Sequence[int]  # its first row in its batch
    rows: Sequence[int]  # its rows there
    payloads: Sequence[bool]  # its payload wanted (drawn at the payload rate)

    def take(self, indices: Sequence[int]) -> Entries:
        """The entries at `indices`, in that order."""
        if len(indices) > 1:  # itemgetter picks in C, and returns a tuple from two indices on
            return Entries(*map(itemgetter(*indices), self))
        return Entries(*([column[i] for i in indices] for column in self))  # type: ignore[arg-type]


_DTYPE_NAMES: dict[np.dtype[Any], str] = {}  # numpy computes `dtype.name` in Python: microseconds


def dtype_name(dtype: np.dtype[Any]) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = dtype.name
        if len(_DTYPE_NAMES) < 256:  # text dtypes differ by length: keep the cache bounded
            _DTYPE_NAMES[dtype] = name
    return name


def _layout(
    arrays: Arrays | None, rows: int
) -> tuple[tuple[str, tuple[int, ...], np.dtype[Any]], ...] | None:
    """(name, shape, dtype) of each array as an entry of `rows` rows has it (-1: as it is)."""
    if arrays is None:
        return None
    if rows < 0:
        return tuple([(name, a.shape, a.dtype) for name, a in arrays.items()])
    return tuple([(name, (rows, *a.shape[1:]), a.dtype) for name, a in arrays.items()])


class _Buffers:
    """A chunk's numeric arrays, written as raw bytes after its JSON header, which refers to each
    as {"raw": [dtype, shape, byte offset]}: `tobytes` is one copy in C, where orjson formatted
    every float as text (most of the writer's JSON work), and the raw bytes are less than half as
    many. Text and object arrays stay JSON, written through `_plain` as before."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, array: np.ndarray) -> Any:
        """What the header holds for `array`: a reference to its bytes, or the array itself."""
        if array.dtype.kind not in _RAW_KINDS:
            return array
        data = array.tobytes()
        reference = {"raw": [array.dtype.str, array.shape, self.size]}
        self.parts.append(data)
        self.size += len(data)
        return reference

    def pack(self, header: dict[str, Any]) -> bytes:
        """The chunk: its format's byte, its header's length and header, then the arrays' bytes.
        Raises TypeError if a value in the header cannot be written."""
        head = orjson.dumps(header, option=_JSON, default=_plain)
        return b"".join([_BINARY, len(head).to_bytes(4, "little"), head, *self.parts])


def _columns(buffers: _Buffers, entries: Entries) -> dict[str, Any]:
    """A chunk's per-entry columns but the request ids: the numbers raw, and a column whose entries
    all have one value (the usual model, version, protocol and status) as that value alone."""
    latency_ms = np.round(numbers(entries.latencies, "d") * 1000, 3)
    return {
        "time": buffers.add(numbers(entries.at, "d")),
        "model": _same(entries.models),
        "version": _same(entries.versions),
        "protocol": _same(entries.protocols),
        "status": _same(entries.statuses),
        "latency_ms": buffers.add(latency_ms),
    }


def numbers(column: Sequence[float], code: str) -> np.ndarray:
    """A column of Python floats (`code` "d") or ints ("q") as a float64 or int64 array. `struct`
    packs them in C without looking at their types first, where `np.array` discovers each one's
    (25 against 7 ns an entry, timed over 256); a value it refuses (a float in an int column, say)
    leaves the column to NumPy."""
    dtype = np.float64 if code == "d" else np.int64
    try:
        return np.frombuffer(struct.pack(f"={len(column)}{code}", *column), dtype=dtype)
    except struct.error:
        return np.array(column, dtype=dtype)


def _same(column: Sequence[Any]) -> Sequence[Any]:
    """`column`, or its one value as a list of one when every entry has it (checked in C)."""
    first = column[0]
    return (first,) if column.count(first) == len(column) else column


# A run: consecutive entries of one batch with the same row count (its batch, the entries' first
# rows there, their row count), the unit the writer works in.
_Run = tuple["Ran | None", list[int], int]


def encode(entries: Entries, max_payload_bytes: int) -> bytes:
    """A chunk of any entries (see `encode_batched` for the usual kind). Raises TypeError if a
    value cannot be written (see `encode_each`)."""
    rans, offsets, rows = entries.rans, entries.offsets, entries.rows
    # Entries come in runs: a batch's requests answer one after another. The runs are found in C
    # (groupby on each entry's batch, compared by identity); Python works once per run.
    groups: dict[Any, tuple[list[int], list[_Run]]] = {}
    for ran, run in groupby(range(len(rans)), rans.__getitem__):
        members = list(run)
        first, end = members[0], members[-1] + 1
        if ran is None:  # never reached the model: rare
            _join(groups, (None, None), members, (None, [], 0))
            continue
        counts = rows[first:end]
        count = counts[0]
        if counts.count(count) == len(counts):  # the usual: every request of the run the same rows
            cut = -1 if ran.whole else count
            key = (_layout(ran.inputs, cut), _layout(ran.outputs, cut))
            _join(groups, key, members, (ran, list(offsets[first:end]), count))
            continue
        for count, same in groupby(members, rows.__getitem__):  # requests of several sizes
            part = list(same)
            key = (_layout(ran.inputs, count), _layout(ran.outputs, count))
            _join(groups, key, part, (ran, [offsets[i] for i in part], count))
    buffers = _Buffers()
    chunk_groups = [_group(buffers, key, members, runs) for key, (members, runs) in groups.items()]
    chunk = _columns(buffers, entries)
    chunk.update(groups=chunk_groups, **_payloads(entries, max_payload_bytes))
    return buffers.pack(chunk)


def _payloads(entries: Entries, max_payload_bytes: int) -> dict[str, list[list[Any]]]:
    """The payloads drawn: kept whole, or left out (with their size) over `max_payload_bytes`."""
    rans, offsets, rows = entries.rans, entries.offsets, entries.rows
    kept: list[list[Any]] = []
    omitted: list[list[Any]] = []
    for index in compress(range(len(rans)), entries.payloads):  # the few with a payload, found in C
        ran = rans[index]
        if ran is None:
            continue
        held = ran.held(rows[index])
        if held <= max_payload_bytes:
            inputs, outputs = ran.arrays(offsets[index], rows[index])
            kept.append([index, {"inputs": inputs, "outputs": outputs}])
        else:
            omitted.append([index, held])
    return {"payload": kept, "omitted": omitted}


def _join(groups: dict[Any, tuple[list[int], list[_Run]]], key: Any, members: list[int], run: _Run) -> None:
    group = groups.get(key)
    if group is None:
        group = groups[key] = ([], [])
    group[0].extend(members)
    group[1].append(run)


def encode_each(
    entries: Entries, max_payload_bytes: int, failed: Callable[[int, Exception], None]
) -> tuple[Entries, bytes | None]:
    """`encode`, and entry by entry once a value could not be written: the entries that fail are
    left out and their index handed to `failed`. Returns the entries written and their chunk (None
    if none)."""
    try:
        return entries, encode(entries, max_payload_bytes)
    except TypeError:
        pass
    good: list[int] = []
    for index in range(len(entries.rans)):
        try:
            encode(entries.take([index]), max_payload_bytes)
        except TypeError as exc:
            failed(index, exc)
        else:
            good.append(index)
    if not good:
        return entries.take([]), None
    written = entries.take(good)
    return written, encode(written, max_payload_bytes)


def _group(buffers: _Buffers, key: Any, members: list[int], runs: list[_Run]) -> dict[str, Any]:
    """A group's layout, with each small output's values for all its members stacked: one
    fancy-indexing call per run of a batch, in C."""
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
                # Every run of the group has these outputs (they are in its key).
                parts = [_rows_of(ran.outputs[name], starts, count, ran.whole) for ran, starts, count in runs]  # type: ignore[union-attr,index]
                values = buffers.add(
                    (parts[0] if len(parts) == 1 else np.concatenate(parts)).reshape(len(members), *shape)
                )
            described_outputs.append([name, shape, dtype_name(dtype), values])
    return {"at": members, "inputs": described_inputs, "outputs": described_outputs}


def _rows_of(array: np.ndarray, starts: list[int], count: int, whole: bool) -> np.ndarray:
    """The rows of `array` that entries starting at `starts`, of `count` rows each, had."""
    if whole:  # one entry, the array as it is
        return array.reshape(1, *array.shape)
    first, size = starts[0], len(starts) * count
    if starts == list(range(first, first + size, count)):  # consecutive rows: a view, no copy
        return array[first : first + size]
    if count == 1:
        return array[starts]
    index = (np.asarray(starts)[:, None] + np.arange(count)).ravel()
    return array[index]


_KIND = attrgetter("dtype", "shape")
_WHOLE = attrgetter("whole")


def encode_batched(entries: Entries, max_payload_bytes: int) -> bytes | None:
    """`encode` for the usual chunk, vectorised: every entry ran in a batch and every batch has the
    same inputs and outputs by name, dtype and shape beyond the rows. The batches' outputs are
    concatenated and each entry's rows taken by one fancy index per row count, so Python works per
    chunk and per batch, not per entry (the general path cost about 1.5 µs per entry of a batch of
    four). The same chunk as `encode`; None when the chunk is not of that kind (use `encode`).
    Raises TypeError if a value cannot be written."""
    rans, offsets, rows = entries.rans, entries.offsets, entries.rows
    if not all(rans):  # an entry that never reached the model (`None in`: a rich comparison each)
        return None
    # The batches in answer order, one per run of their entries (a batch answered in two runs is
    # taken twice: correct, and rare).
    runs = [(ran, len(list(run))) for ran, run in groupby(rans)]  # by identity: Ran has no __eq__
    batches = [ran for ran, _ in runs]
    if any(map(_WHOLE, batches)):
        return None
    input_names = {None if ran.inputs is None else tuple(ran.inputs) for ran in batches}  # type: ignore[union-attr]
    output_names = {None if ran.outputs is None else tuple(ran.outputs) for ran in batches}  # type: ignore[union-attr]
    if len(input_names) != 1 or len(output_names) != 1:
        return None
    (in_names,), (out_names,) = input_names, output_names
    if not in_names or out_names is None:
        return None
    inputs = [tuple(ran.inputs.values()) for ran in batches]  # type: ignore[union-attr]
    outputs = [tuple(ran.outputs.values()) for ran in batches]  # type: ignore[union-attr]
    in_layout = _common_layout(in_names, inputs)
    out_layout = _common_layout(out_names, outputs)
    if in_layout is None or out_layout is None:
        return None
    sizes = np.fromiter(map(len, map(itemgetter(0), inputs)), dtype=np.int64, count=len(batches))
    starts = np.concatenate(([0], np.cumsum(sizes[:-1])))
    # Each entry's first row in the batches' rows end to end.
    lengths = np.fromiter(map(itemgetter(1), runs), dtype=np.int64, count=len(runs))
    begins = np.repeat(starts, lengths) + numbers(offsets, "q")
    counts = set(rows)
    # The usual chunk's entries all have the same rows: no array of them (one conversion of a
    # column fewer, the costliest kind of step per entry that callgrind showed in the encoding).
    row_counts = None if len(counts) == 1 else numbers(rows, "q")
    end = int(begins.max()) + rows[0] if row_counts is None else int((begins + row_counts).max())
    if end > int(sizes.sum()):
        return None  # rows past their batch's end: leave it to `encode`, which says nothing of rows
    stacked: dict[int, np.ndarray] = {}  # outputs concatenated, only those small enough to keep
    buffers = _Buffers()
    groups = []
    for count in sorted(counts):
        if row_counts is None:
            members, picked = list(range(len(rans))), begins
        else:
            mask = row_counts == count
            members, picked = np.flatnonzero(mask).tolist(), begins[mask]
        take = picked if count == 1 else (picked[:, None] + np.arange(count)).ravel()
        described_outputs = []
        for position, (name, tail, dtype) in enumerate(out_layout):
            shape = (count, *tail)
            values = None
            if math.prod(shape) <= MAX_VALUES:
                whole = stacked.get(position)
                if whole is None:
                    arrays = list(map(itemgetter(position), outputs))
                    whole = stacked[position] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
                values = buffers.add(whole[take].reshape(len(members), *shape))
            described_outputs.append([name, shape, dtype, values])
        described_inputs = [[name, (count, *tail), dtype] for name, tail, dtype in in_layout]
        groups.append({"at": members, "inputs": described_inputs, "outputs": described_outputs})
    chunk = _columns(buffers, entries)
    chunk.update(groups=groups, **_payloads(entries, max_payload_bytes))
    return buffers.pack(chunk)


def _common_layout(
    names: tuple[str, ...], arrays: list[tuple[np.ndarray, ...]]
) -> list[tuple[str, tuple[int, ...], str]] | None:
    """Each array's (name, shape beyond the rows, dtype name) if every batch agrees, else None."""
    layout = []
    for position, name in enumerate(names):
        kinds = set(map(_KIND, map(itemgetter(position), arrays)))  # in C; one per batch size
        dtypes = {dtype for dtype, _ in kinds}
        tails = {shape[1:] for _, shape in kinds}
        if len(dtypes) != 1 or len(tails) != 1 or any(not shape for _, shape in kinds):
            return None
        (dtype,), (tail,) = dtypes, tails
        layout.append((name, tail, dtype_name(dtype)))
    return layout


def decode(blob: bytes, request_ids: str | bytes | None = None) -> list[list[Any]]:
    """A chunk's entries, each as the field list in the module docstring, in time order.
    `request_ids`: the entries' ids as a JSON array (its row's `request_ids`), which a binary chunk
    does not repeat; an earlier format's chunk holds them itself."""
    if blob[:1] == _BINARY:
        size = int.from_bytes(blob[1:5], "little")
        chunk = orjson.loads(blob[5 : 5 + size])
        data = memoryview(blob)[5 + size :]
    else:
        chunk = orjson.loads(blob)
        if isinstance(chunk, list):  # the earliest format: already a list of entries
            return chunk
        data = memoryview(b"")
    if "id" in chunk:
        ids = chunk["id"]
    elif request_ids is None:
        raise ValueError("a binary chunk's request ids are in its row: pass them as request_ids")
    else:
        ids = orjson.loads(request_ids)
    count = len(ids)
    columns = [
        _value(chunk[name], data) if name in ("time", "latency_ms") else _broadcast(chunk[name], count)
        for name in ("time", "model", "version", "protocol", "status", "latency_ms")
    ]
    entries = [
        [request_id, at, model, version, protocol, status, latency, None, None, None, 0]
        for request_id, at, model, version, protocol, status, latency in zip(ids, *columns, strict=True)
    ]
    for group in chunk["groups"]:
        inputs, outputs = group["inputs"], group["outputs"]
        if outputs is not None:
            outputs = [[name, shape, dtype, _value(values, data)] for name, shape, dtype, values in outputs]
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


def _broadcast(column: list[Any], count: int) -> list[Any]:
    """A column as `_same` wrote it, one value per entry."""
    return column * count if len(column) == 1 else column


def _value(value: Any, data: memoryview) -> Any:
    """A header's value with its raw array read back as the JSON chunks had it: through orjson,
    so that a float32 reads 0.1, not 0.10000000149011612."""
    if not isinstance(value, dict):
        return value
    dtype, shape, offset = value["raw"]
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
    return orjson.loads(orjson.dumps(array, option=_JSON, default=_plain))


def _plain(value: Any) -> Any:
    """What orjson cannot write itself: text (object) arrays, bytes, numpy scalars."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not serializable")

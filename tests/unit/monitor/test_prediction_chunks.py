"""The prediction log's chunk format: columnar on disk, the same entries back, old chunks readable."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from shipyard.monitor.prediction_chunks import (
    Entries,
    Ran,
    decode,
    encode,
    encode_batched,
    encode_each,
    numbers,
)

# One entry's fields, in the order of Entries' columns.
Row = tuple[float, str, str, int, str, int, float, "Ran | None", int, int, bool]


def pending(
    request_id: str,
    inputs: dict[str, np.ndarray] | None,
    outputs: dict[str, np.ndarray] | None,
    *,
    payload: bool = False,
    status: int = 200,
) -> Row:
    """An entry that ran alone (its arrays as they are), or never reached the model."""
    ran = None if inputs is None and outputs is None else Ran(inputs, outputs)
    return (1e9, request_id, "m", 2, "v2", status, 0.0015, ran, 0, 0, payload)


def row(request_id: str, at: Ran, offset: int, rows: int, payload: bool = False) -> Row:
    """An entry that ran in the batch `at`, as its `rows` rows from `offset`."""
    return (1e9, request_id, "m", 2, "v2", 200, 0.0015, at, offset, rows, payload)


def columns(batch: Sequence[Row]) -> Entries:
    """The entries as the recorder hands them to the encoder: column by column."""
    return Entries(*zip(*batch, strict=True))


def ids(batch: Sequence[Row] | Entries) -> bytes:
    """The entries' request ids as the recorder stores them, beside their chunk."""
    if isinstance(batch, Entries):
        return orjson.dumps(list(batch.request_ids))
    return orjson.dumps([entry[1] for entry in batch])


def iris(rows: int, first: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    x = np.arange(first, first + rows * 4, dtype=np.float32).reshape(rows, 4)
    return {"X": x}, {"label": np.arange(first, first + rows), "scores": np.full((rows, 300), 0.5)}


def test_entries_of_several_layouts_come_back_as_they_went_in() -> None:
    one, two = iris(1, first=7), iris(2, first=3)
    text_in = {"text": np.array(["héllo", b"raw"], dtype=object)}
    text_out = {"embedding": np.ones((2, 2), dtype=np.float16)}
    batch = [
        pending("a", *one),
        pending("b", *two),
        pending("c", *iris(1, first=9)),  # same layout as "a": the same group
        pending("refused", {"X": np.zeros((1, 4), np.float32)}, None, status=400),
        pending("undecoded", None, None, status=400),
        pending("text", text_in, text_out, payload=True),
        pending("big", *two, payload=True),
    ]
    entries = {e[0]: e for e in decode(encode(columns(batch), max_payload_bytes=100), ids(batch))}
    assert list(entries) == ["a", "b", "c", "refused", "undecoded", "text", "big"]
    assert entries["a"] == [
        "a", 1e9, "m", 2, "v2", 200, 1.5,
        [["X", [1, 4], "float32"]],
        [["label", [1], "int64", [7]], ["scores", [1, 300], "float64", None]],  # over 256 values
        None, 0,
    ]  # fmt: skip
    assert entries["b"][8][0] == ["label", [2], "int64", [3, 4]]
    assert entries["c"][8][0] == ["label", [1], "int64", [9]]
    assert entries["refused"][7:9] == [[["X", [1, 4], "float32"]], None]
    assert entries["undecoded"][7:9] == [None, None]
    assert entries["text"][7] == [["text", [2], "object"]]
    assert entries["text"][8] == [["embedding", [2, 2], "float16", [[1.0, 1.0], [1.0, 1.0]]]]
    assert entries["text"][9:] == [
        {"inputs": {"text": ["héllo", "raw"]}, "outputs": {"embedding": [[1.0, 1.0], [1.0, 1.0]]}},
        0,
    ]
    assert entries["big"][9:] == [None, 2 * 4 * 4 + 2 * 8 + 2 * 300 * 8]  # over max_payload_bytes


def test_entries_sharing_a_batch_come_back_with_their_own_rows() -> None:
    inputs, outputs = iris(5, first=10)  # a batch of requests of 1, 3 and 1 rows
    ran = Ran(inputs, outputs, 5)
    other = Ran(*iris(2, first=50), 2)

    # Answered out of order and interleaved with another batch, as a busy server may.
    batch = [row("a", ran, 0, 1), row("x", other, 1, 1), row("c", ran, 4, 1), row("b", ran, 1, 3, True)]
    entries = {e[0]: e for e in decode(encode(columns(batch), max_payload_bytes=10**6), ids(batch))}
    assert list(entries) == ["a", "x", "c", "b"]
    assert entries["a"][7:9] == [
        [["X", [1, 4], "float32"]],
        [["label", [1], "int64", [10]], ["scores", [1, 300], "float64", None]],
    ]
    assert entries["x"][8][0] == ["label", [1], "int64", [51]]
    assert entries["c"][8][0] == ["label", [1], "int64", [14]]
    assert entries["b"][7] == [["X", [3, 4], "float32"]]
    assert entries["b"][8][0] == ["label", [3], "int64", [11, 12, 13]]
    payload = entries["b"][9]
    assert payload["inputs"]["X"] == inputs["X"][1:4].tolist()
    assert payload["outputs"]["label"] == [11, 12, 13]
    assert entries["b"][10] == 0


def test_the_vectorised_path_writes_what_the_general_one_does() -> None:
    def small(rows: int, first: int) -> Ran:  # outputs small enough to keep their values
        inputs, outputs = iris(rows, first)
        scores = np.arange(first, first + rows * 2, dtype=np.float32).reshape(rows, 2)
        return Ran(inputs, {"label": outputs["label"], "scores": scores}, rows)

    ran, other = small(6, first=10), small(2, first=50)  # ran: requests of 1, 3, 1 and 1 rows
    # Answered out of order and interleaved with another batch: `ran` in two runs.
    batch = [
        row("a", ran, 0, 1),
        row("x", other, 1, 1, True),
        row("c", ran, 4, 1),
        row("b", ran, 1, 3, True),
        row("d", ran, 5, 1),
    ]
    fast = encode_batched(columns(batch), max_payload_bytes=40)  # b's payload over it
    assert fast is not None
    assert decode(fast, ids(batch)) == decode(encode(columns(batch), max_payload_bytes=40), ids(batch))
    assert [e[0] for e in decode(fast, ids(batch))] == ["a", "x", "c", "b", "d"]
    assert decode(fast, ids(batch))[3][10] == ran.held(3)  # omitted, with its size


def test_the_vectorised_path_declines_batches_of_different_layouts() -> None:
    one, two = Ran(*iris(1), 1), Ran({"X": np.zeros((1, 5), np.float32)}, iris(1)[1], 1)
    assert encode_batched(columns([row("a", one, 0, 1), row("b", two, 0, 1)]), 100) is None


@pytest.mark.parametrize("sizes", [(2, 2), (1, 3)], ids=["one row count", "two row counts"])
def test_the_vectorised_path_declines_rows_past_their_batch_end(sizes: tuple[int, int]) -> None:
    ran = Ran(*iris(4), 4)
    first, second = sizes
    assert encode_batched(columns([row("a", ran, 0, first), row("b", ran, 5 - second, second)]), 100) is None
    assert encode_batched(columns([row("a", ran, 0, first), row("b", ran, first, second)]), 100) is not None


def test_the_vectorised_path_declines_an_entry_that_ran_in_no_batch() -> None:
    ran = Ran(*iris(2), 2)
    refused = pending("refused", None, None, status=400)  # between two of the batch's requests
    batch = columns([row("a", ran, 0, 1), refused, row("b", ran, 1, 1)])
    assert encode_batched(batch, 100) is None
    assert [e[0] for e in decode(encode(batch, 100), ids(batch))] == ["a", "refused", "b"]


def test_entries_are_taken_by_index_in_any_number() -> None:
    batch = columns([pending(name, None, None) for name in "abc"])
    assert batch.take([2, 0]).request_ids == ("c", "a")
    assert batch.take([1]).request_ids == ["b"]
    assert batch.take([]).request_ids == []


def test_a_value_json_cannot_hold_drops_only_its_entry() -> None:
    odd = {"label": np.array([object()], dtype=object)}
    batch = columns([pending("fine", *iris(1)), pending("odd", {"X": np.zeros((1, 4), np.float32)}, odd)])
    with pytest.raises(TypeError):
        encode(batch, 100)
    failed: list[str] = []
    written, blob = encode_each(batch, 100, lambda index, exc: failed.append(batch.request_ids[index]))
    assert failed == ["odd"] and list(written.request_ids) == ["fine"]
    assert blob is not None and [e[0] for e in decode(blob, ids(written))] == ["fine"]


def test_chunks_written_by_an_earlier_server_are_read() -> None:
    outputs = [["y", [1], "int64", [1]]]
    old = [["r1", 1e9, "m", 1, "v1", 200, 2.0, [["X", [1, 4], "float32"]], outputs, None, 0]]
    assert decode(orjson.dumps(old)) == old


def test_numbers_are_written_raw_and_read_back_as_json_had_them() -> None:
    x = np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    outputs = {"label": np.array([2]), "probabilities": np.array([[0.1, 0.7, 0.2]], dtype=np.float32)}
    batch = [pending("a", {"X": x}, outputs), pending("b", {"X": x}, outputs)]
    blob = encode(columns(batch), 100)
    assert blob[:1] == b"\x01"  # the binary format
    header = orjson.loads(blob[5 : 5 + int.from_bytes(blob[1:5], "little")])
    assert "id" not in header  # the row beside the chunk holds them
    assert header["model"] == ["m"] and header["status"] == [200]  # one value for all: stored once
    assert header["time"]["raw"][:2] == ["<f8", [2]]  # [dtype, shape, byte offset]
    assert b"0.7" not in blob  # the values are raw bytes, not text
    # float32 values read as JSON wrote them (0.7, not 0.699999988079071).
    assert [entry[0] for entry in decode(blob, ids(batch))] == ["a", "b"]
    with pytest.raises(ValueError, match="request ids"):
        decode(blob)
    for entry in decode(blob, ids(batch)):
        assert entry[1:7] == [1e9, "m", 2, "v2", 200, 1.5]
        assert entry[8] == [
            ["label", [1], "int64", [2]],
            ["probabilities", [1, 3], "float32", [[0.1, 0.7, 0.2]]],
        ]


def test_chunks_in_the_json_format_of_an_earlier_server_are_read() -> None:
    outputs = [["y", [1], "int64", [[1], [0]]]]
    old = {
        "id": ["r1", "r2"],
        "time": [1e9, 1e9 + 1],
        "model": ["m", "m"],
        "version": [1, None],
        "protocol": ["v1", "v2"],
        "status": [200, 200],
        "latency_ms": [2.0, 3.5],
        "groups": [{"at": [0, 1], "inputs": [["X", [1, 4], "float32"]], "outputs": outputs}],
        "payload": [[1, {"inputs": {"X": [[1.0, 2.0, 3.0, 4.0]]}, "outputs": {"y": [0]}}]],
        "omitted": [[0, 99]],
    }
    assert decode(orjson.dumps(old)) == [
        ["r1", 1e9, "m", 1, "v1", 200, 2.0, [["X", [1, 4], "float32"]], [["y", [1], "int64", [1]]], None, 99],
        [
            "r2", 1e9 + 1, "m", None, "v2", 200, 3.5, [["X", [1, 4], "float32"]], [["y", [1], "int64", [0]]],
            {"inputs": {"X": [[1.0, 2.0, 3.0, 4.0]]}, "outputs": {"y": [0]}}, 0,
        ],
    ]  # fmt: skip


def test_numeric_columns_become_the_arrays_numpy_would_make() -> None:
    times = (1.7e9, 1.7e9 + 0.25, 1.7e9 + 1e-6)
    assert numbers(times, "d").tolist() == np.array(times, dtype=np.float64).tolist()
    assert numbers((0, 3, 2**40), "q").tolist() == [0, 3, 2**40]
    assert numbers((1, np.float32(2.5)), "d").tolist() == [1.0, 2.5]  # type: ignore[arg-type]  # NumPy scalars too
    assert numbers((1, 2.0), "q").tolist() == [1, 2]  # struct refuses the float: NumPy converts it

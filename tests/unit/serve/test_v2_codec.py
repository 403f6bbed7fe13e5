"""Open Inference Protocol V2 wire format: JSON tensors and the binary-tensor extension.

`decode_request` and `encode_response` are pure functions of bytes, so every case is built here
byte by byte, the way `tritonclient.http` lays out a request (JSON header, then raw tensors in
input order, `Inference-Header-Content-Length` giving the header's size).
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipyard.errors import InvalidInputError
from shipyard.serve.protocols.v2_codec import (
    V2Request,
    decode_bytes_elements,
    decode_request,
    encode_bytes_elements,
    encode_response,
)
from shipyard.types import Signature, TensorSpec

SIG = Signature(
    inputs=(
        TensorSpec("x", "FP32", (-1, 4)),
        TensorSpec("n", "INT64", (-1, 1)),
        TensorSpec("flag", "BOOL", (-1,)),
        TensorSpec("s", "BYTES", (-1, 1)),
    ),
    outputs=(TensorSpec("y", "FP32", (-1, 4)),),
)
X = np.arange(8, dtype=np.float32).reshape(2, 4) / 4


def tensor(name: str, datatype: str, shape: list[int], **rest: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, **rest}


def json_request(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def binary_request(inputs: list[tuple[dict[str, Any], bytes]], **extra: Any) -> tuple[bytes, int]:
    """(body, header length) with each input's raw bytes appended in input order."""
    entries = []
    for entry, raw in inputs:
        params = {**entry.get("parameters", {}), "binary_data_size": len(raw)}
        entries.append({**entry, "parameters": params})
    header = orjson.dumps({"inputs": entries, **extra})
    return header + b"".join(raw for _, raw in inputs), len(header)


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def invalid(body: bytes, header_length: int | None = None, signature: Signature = SIG) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        decode_request(body, header_length, signature)
    assert caught.value.status_code == 400
    return caught.value


@pytest.mark.parametrize("data", [X.ravel().tolist(), X.tolist()], ids=["flat", "nested"])
def test_json_data_flat_or_nested_becomes_the_declared_shape_and_dtype(data: list[Any]) -> None:
    request = decode_request(json_request(tensor("x", "FP32", [2, 4], data=data)), None, SIG)
    arr = request.inputs["x"]
    assert arr.dtype == np.float32
    assert arr.shape == (2, 4)
    np.testing.assert_array_equal(arr, X)


def test_json_request_of_every_kind_of_input() -> None:
    body = json_request(
        tensor("x", "FP32", [1, 4], data=[1, 2, 3, 4]),
        tensor("n", "INT64", [1, 1], data=[[-7]]),
        tensor("flag", "BOOL", [1], data=[True]),
        tensor("s", "BYTES", [1, 1], data=["héllo"]),
        id="req-1",
        parameters={"priority": 1, "binary_data_output": False},
    )
    request = decode_request(body, None, SIG)
    assert request.id == "req-1"
    assert request.parameters == {"priority": 1, "binary_data_output": False}
    assert request.outputs is None
    assert request.inputs["n"].dtype == np.int64 and request.inputs["n"].tolist() == [[-7]]
    assert request.inputs["flag"].dtype == np.bool_ and request.inputs["flag"].tolist() == [True]
    assert request.inputs["s"].dtype == object and request.inputs["s"].tolist() == [["héllo"]]


def test_a_numeric_request_id_is_echoed_as_text() -> None:
    body = json_request(tensor("x", "FP32", [1, 4], data=[0, 0, 0, 0]), id=42)
    assert decode_request(body, None, SIG).id == "42"


def test_requested_outputs_are_kept_in_order() -> None:
    outputs = [{"name": "y", "parameters": {"binary_data": True}}]
    body = json_request(tensor("x", "FP32", [1, 4], data=[0, 0, 0, 0]), outputs=outputs)
    assert decode_request(body, None, SIG).outputs == outputs


def test_binary_fp32_int64_bool_and_bytes_in_one_request() -> None:
    n = np.array([[5], [-6]], dtype=np.int64)
    flags = np.array([True, False])
    body, length = binary_request(
        [
            (tensor("x", "FP32", [2, 4]), X.astype("<f4").tobytes()),
            (tensor("n", "INT64", [2, 1]), n.astype("<i8").tobytes()),
            (tensor("flag", "BOOL", [2]), flags.astype(np.uint8).tobytes()),
            (tensor("s", "BYTES", [2, 1]), bytes_elements("é".encode(), b"\xff\x00raw")),
        ]
    )
    request = decode_request(body, length, SIG)
    np.testing.assert_array_equal(request.inputs["x"], X)
    assert request.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(request.inputs["n"], n)
    assert request.inputs["flag"].dtype == np.bool_
    assert request.inputs["flag"].tolist() == [True, False]
    # valid UTF-8 becomes text, anything else stays bytes
    assert request.inputs["s"].tolist() == [["é"], [b"\xff\x00raw"]]


def test_binary_and_json_inputs_mix() -> None:
    header = orjson.dumps(
        {
            "inputs": [
                tensor("n", "INT64", [1, 1], data=[3]),
                tensor("x", "FP32", [1, 4], parameters={"binary_data_size": 16}),
            ]
        }
    )
    raw = np.array([1, 2, 3, 4], dtype="<f4").tobytes()
    request = decode_request(header + raw, len(header), SIG)
    assert request.inputs["n"].tolist() == [[3]]
    assert request.inputs["x"].tolist() == [[1, 2, 3, 4]]


def test_binary_data_size_that_does_not_fit_the_shape() -> None:
    body, length = binary_request([(tensor("x", "FP32", [2, 4]), X.tobytes()[:16])])
    error = invalid(body, length)
    assert "'x'" in error.message
    assert "16 bytes" in error.message and "needs 32" in error.message
    assert error.field == "x"


def test_binary_data_size_beyond_the_body() -> None:
    header = orjson.dumps({"inputs": [tensor("x", "FP32", [2, 4], parameters={"binary_data_size": 32})]})
    error = invalid(header + b"\0" * 8, len(header))
    assert "binary_data_size 32" in error.message and "only 8 bytes" in error.message


@pytest.mark.parametrize("size", [-1, "32", 1.5])
def test_binary_data_size_must_be_a_byte_count(size: Any) -> None:
    header = orjson.dumps({"inputs": [tensor("x", "FP32", [2, 4], parameters={"binary_data_size": size})]})
    assert "binary_data_size" in invalid(header + X.tobytes(), len(header)).message


def test_leftover_binary_bytes_after_the_inputs_are_refused() -> None:
    body, length = binary_request([(tensor("x", "FP32", [2, 4]), X.tobytes())])
    assert "4 bytes of binary data follow the inputs unused" in invalid(body + b"\0" * 4, length).message


def test_binary_bytes_without_any_binary_input_are_refused() -> None:
    header = json_request(tensor("x", "FP32", [1, 4], data=[0, 0, 0, 0]))
    assert "unused" in invalid(header + b"junk", len(header)).message


@pytest.mark.parametrize("length", [-1, 10_000], ids=["negative", "past-the-end"])
def test_header_length_outside_the_body(length: int) -> None:
    body = json_request(tensor("x", "FP32", [1, 4], data=[0, 0, 0, 0]))
    error = invalid(body, length)
    assert "Inference-Header-Content-Length" in error.message
    assert error.field == "inference-header-content-length"


def test_header_length_that_cuts_the_json_short() -> None:
    body = json_request(tensor("x", "FP32", [1, 4], data=[0, 0, 0, 0]))
    assert "malformed" in invalid(body, len(body) // 2).message


def test_bf16_is_refused_by_name() -> None:
    sig = Signature((TensorSpec("h", "BF16", (-1,)),), ())
    body, length = binary_request([(tensor("h", "BF16", [2]), b"\0" * 4)])
    assert "BF16 is not supported" in invalid(body, length, sig).message


def test_binary_is_little_endian_whatever_the_host() -> None:
    sig = Signature((TensorSpec("v", "UINT16", (-1,)),), ())
    body, length = binary_request([(tensor("v", "UINT16", [2]), b"\x01\x00\x00\x01")])
    assert decode_request(body, length, sig).inputs["v"].tolist() == [1, 256]


def test_bytes_length_prefixes() -> None:
    raw = bytes_elements(b"", b"a", b"bc" * 100)
    assert decode_bytes_elements(memoryview(raw), 3, "s").tolist() == ["", "a", "bc" * 100]


@pytest.mark.parametrize(
    ("raw", "count", "message"),
    [
        (b"\x05\x00", 1, "ends inside a BYTES length prefix"),
        (struct.pack("<I", 10) + b"short", 1, "ends inside a BYTES element"),
        (bytes_elements(b"a"), 2, "ends inside a BYTES length prefix"),
        (bytes_elements(b"a", b"b"), 1, "5 bytes left over"),
        (struct.pack("<I", 0xFFFFFFFF), 1, "ends inside a BYTES element"),
    ],
    ids=["cut-prefix", "cut-element", "too-few-elements", "too-many-elements", "huge-length"],
)
def test_bytes_elements_that_do_not_add_up(raw: bytes, count: int, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as caught:
        decode_bytes_elements(memoryview(raw), count, "s")
    assert caught.value.field == "s"


def test_bytes_count_comes_from_the_shape() -> None:
    body, length = binary_request([(tensor("s", "BYTES", [2, 1]), bytes_elements(b"only one"))])
    assert "'s'" in invalid(body, length).message


@given(st.lists(st.one_of(st.text(), st.binary(max_size=40)), max_size=20))
def test_bytes_elements_round_trip(items: list[str | bytes]) -> None:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    decoded = decode_bytes_elements(memoryview(encode_bytes_elements(arr)), len(items), "s")

    def expected(item: str | bytes) -> str | bytes:
        if isinstance(item, str):
            return item
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            return item

    assert decoded.tolist() == [expected(i) for i in items]


@given(st.integers(0, 4), st.integers(1, 3), st.data())
def test_bytes_tensor_round_trips_through_a_binary_request(rows: int, cols: int, data: st.DataObject) -> None:
    items = data.draw(st.lists(st.text(max_size=10), min_size=rows * cols, max_size=rows * cols))
    arr = np.array(items, dtype=object).reshape(rows, cols)
    body, length = binary_request([(tensor("s", "BYTES", [rows, cols]), encode_bytes_elements(arr))])
    sig = Signature((TensorSpec("s", "BYTES", (-1, -1)),), ())
    decoded = decode_request(body, length, sig).inputs["s"]
    assert decoded.shape == (rows, cols)
    assert decoded.tolist() == arr.tolist()


def test_unknown_input_names_the_expected_signature() -> None:
    error = invalid(json_request(tensor("input0", "FP32", [1, 4], data=[0, 0, 0, 0])))
    assert "unknown input 'input0'" in error.message
    assert "x: FP32[?, 4]" in error.message and "s: BYTES[?, 1]" in error.message
    assert error.field == "input0"


def test_wrong_datatype_names_the_expected_one() -> None:
    error = invalid(json_request(tensor("x", "FP64", [1, 4], data=[0, 0, 0, 0])))
    assert "datatype FP64" in error.message and "x: FP32[?, 4]" in error.message


@pytest.mark.parametrize("datatype", ["FLOAT32", None, 7])
def test_unknown_datatype(datatype: Any) -> None:
    assert "unknown datatype" in invalid(json_request(tensor("x", datatype, [1, 4], data=[0] * 4))).message


@pytest.mark.parametrize(
    ("shape", "data"),
    [([2, 4], [0.0] * 7), ([1, 4], [[0.0] * 4, [0.0] * 4]), ([0, 4], [1.0])],
    ids=["too-few", "too-many", "empty-shape"],
)
def test_element_count_must_match_the_shape(shape: list[int], data: list[Any]) -> None:
    error = invalid(json_request(tensor("x", "FP32", shape, data=data)))
    assert "elements" in error.message and str(shape) in error.message


@pytest.mark.parametrize("shape", [None, "2,4", [2, -1], [2.0, 4], [[2], 4]])
def test_shape_must_be_a_list_of_non_negative_integers(shape: Any) -> None:
    assert "'shape'" in invalid(json_request(tensor("x", "FP32", shape, data=[0] * 8))).message


@pytest.mark.parametrize("data", [["a", "b", "c", "d"], [[1, 2], [3]], [{"v": 1}] * 4])
def test_json_data_that_does_not_fit_the_datatype(data: Any) -> None:
    error = invalid(json_request(tensor("x", "FP32", [1, 4], data=data)))
    assert "'x'" in error.message


@pytest.mark.parametrize("data", [[1.5], ["1"]], ids=["fractional", "string"])
def test_json_integers_are_not_silently_truncated_or_parsed_from_text(data: list[Any]) -> None:
    invalid(json_request(tensor("n", "INT64", [1, 1], data=data)))


def test_json_bytes_with_ragged_nesting_are_refused() -> None:
    invalid(json_request(tensor("s", "BYTES", [2, 1], data=[["a"], ["b", "c"]])))


def test_input_without_data_or_binary_size() -> None:
    assert "neither 'data' nor binary_data_size" in invalid(json_request(tensor("x", "FP32", [1, 4]))).message


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"[1, 2]", b'{"inputs": {}}', b'{"inputs": [5]}', b'{"inputs": [{"shape": [1]}]}'],
    ids=["malformed", "empty", "array", "inputs-object", "input-not-object", "input-without-name"],
)
def test_malformed_request_json(body: bytes) -> None:
    invalid(body)


@pytest.mark.parametrize(
    "extra",
    [{"outputs": {"name": "y"}}, {"outputs": [{"binary_data": True}]}, {"parameters": [1]}],
    ids=["outputs-object", "output-without-name", "parameters-list"],
)
def test_malformed_outputs_or_parameters(extra: dict[str, Any]) -> None:
    invalid(json_request(tensor("x", "FP32", [1, 4], data=[0, 0, 0, 0]), **extra))


@pytest.mark.parametrize(
    "output", [{"name": ["y"]}, {"name": "y", "parameters": [1]}], ids=["name-list", "parameters-list"]
)
def test_malformed_requested_output_is_a_400_not_a_crash(output: dict[str, Any]) -> None:
    body = json_request(tensor("x", "FP32", [1, 4], data=[0, 0, 0, 0]), outputs=[output])
    try:
        request = decode_request(body, None, SIG)
    except InvalidInputError:
        return  # refused while decoding: fine
    with pytest.raises(InvalidInputError):
        encode_response(request, "m", "1", {"y": np.zeros((1, 4), dtype=np.float32)})


OUTPUTS: dict[str, np.ndarray[Any, Any]] = {
    "probabilities": np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32),
    "label": np.array([1, 0], dtype=np.int64),
    "ok": np.array([True, False]),
    "name": np.array([["setosa"], [b"vers\xc3\xadcolor"]], dtype=object),
}


def split_response(body: bytes, header_length: int | None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(JSON header, output name → its raw bytes), cutting blobs by binary_data_size in order."""
    if header_length is None:
        return orjson.loads(body), {}
    header = orjson.loads(body[:header_length])
    blobs, offset = {}, header_length
    for out in header["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            assert "data" not in out
            blobs[out["name"]] = body[offset : offset + size]
            offset += size
    assert offset == len(body)
    return header, blobs


def test_json_response_carries_every_output_with_data() -> None:
    body, length = encode_response(V2Request({}, id="abc"), "iris", "3", OUTPUTS)
    assert length is None
    header, _ = split_response(body, length)
    assert header["model_name"] == "iris" and header["model_version"] == "3" and header["id"] == "abc"
    outs = {o["name"]: o for o in header["outputs"]}
    assert list(outs) == list(OUTPUTS)
    assert outs["probabilities"] == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [2, 3],
        "data": pytest.approx([0.1, 0.7, 0.2, 0.6, 0.3, 0.1]),
    }
    assert outs["label"]["datatype"] == "INT64" and outs["label"]["data"] == [1, 0]
    assert outs["ok"]["datatype"] == "BOOL" and outs["ok"]["data"] == [True, False]
    assert outs["name"]["datatype"] == "BYTES" and outs["name"]["data"] == ["setosa", "versícolor"]


def test_no_id_in_the_request_means_none_in_the_response() -> None:
    body, _ = encode_response(V2Request({}), "m", "1", {"label": OUTPUTS["label"]})
    assert "id" not in orjson.loads(body)


def test_binary_data_output_makes_every_output_binary() -> None:
    request = V2Request({}, parameters={"binary_data_output": True})
    body, length = encode_response(request, "m", "1", OUTPUTS)
    assert length is not None
    header, blobs = split_response(body, length)
    assert list(blobs) == list(OUTPUTS)  # bytes appended in the JSON's output order
    np.testing.assert_array_equal(
        np.frombuffer(blobs["probabilities"], "<f4").reshape(2, 3), OUTPUTS["probabilities"]
    )
    assert np.frombuffer(blobs["label"], "<i8").tolist() == [1, 0]
    assert blobs["ok"] == b"\x01\x00"
    assert decode_bytes_elements(memoryview(blobs["name"]), 2, "name").tolist() == ["setosa", "versícolor"]
    assert all(o["parameters"]["binary_data_size"] == len(blobs[o["name"]]) for o in header["outputs"])


def test_per_output_binary_data_overrides_the_request_default() -> None:
    request = V2Request(
        {},
        parameters={"binary_data_output": True},
        outputs=[{"name": "label", "parameters": {"binary_data": False}}, {"name": "probabilities"}],
    )
    header, blobs = split_response(*encode_response(request, "m", "1", OUTPUTS))
    assert [o["name"] for o in header["outputs"]] == ["label", "probabilities"]
    assert header["outputs"][0]["data"] == [1, 0]
    assert list(blobs) == ["probabilities"]


def test_requested_binary_output_among_json_ones() -> None:
    request = V2Request(
        {}, outputs=[{"name": "ok"}, {"name": "probabilities", "parameters": {"binary_data": True}}]
    )
    header, blobs = split_response(*encode_response(request, "m", "1", OUTPUTS))
    assert header["outputs"][0]["data"] == [True, False]
    assert len(blobs["probabilities"]) == 6 * 4


def test_unknown_requested_output_names_the_real_ones() -> None:
    request = V2Request({}, outputs=[{"name": "nope"}])
    with pytest.raises(InvalidInputError, match=r"unknown output 'nope'.*probabilities, label"):
        encode_response(request, "m", "1", OUTPUTS)


def test_classification_gives_top_k_score_index_label_strings() -> None:
    request = V2Request({}, outputs=[{"name": "probabilities", "parameters": {"classification": 2}}])
    header, _ = split_response(
        *encode_response(request, "m", "1", OUTPUTS, classes=["setosa", "versicolor", "virginica"])
    )
    out = header["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [2, 2]
    assert out["data"] == ["0.7:1:versicolor", "0.2:2:virginica", "0.6:0:setosa", "0.3:1:versicolor"]


def test_classification_without_class_labels() -> None:
    request = V2Request({}, outputs=[{"name": "probabilities", "parameters": {"classification": 1}}])
    header, _ = split_response(*encode_response(request, "m", "1", OUTPUTS))
    assert header["outputs"][0]["data"] == ["0.7:1", "0.6:0"]


def test_classification_of_a_text_output_is_a_400_not_a_crash() -> None:
    request = V2Request({}, outputs=[{"name": "name", "parameters": {"classification": 1}}])
    with pytest.raises(InvalidInputError):
        encode_response(request, "m", "1", OUTPUTS)


def test_zero_size_and_big_endian_outputs() -> None:
    outputs = {"empty": np.zeros((0, 3), dtype=np.float32), "be": np.array([1, 2], dtype=">i4")}
    request = V2Request({}, parameters={"binary_data_output": True})
    header, blobs = split_response(*encode_response(request, "m", "1", outputs))
    assert header["outputs"][0]["shape"] == [0, 3] and blobs["empty"] == b""
    assert header["outputs"][1]["datatype"] == "INT32"
    assert blobs["be"] == struct.pack("<ii", 1, 2)


def test_response_decodes_as_a_request_would() -> None:
    """What the server sends binary, the same codec reads back: the two halves agree."""
    request = V2Request({}, parameters={"binary_data_output": True})
    header, blobs = split_response(*encode_response(request, "m", "1", {"x": X}))
    out = header["outputs"][0]
    body, length = binary_request([(tensor("x", out["datatype"], out["shape"]), blobs["x"])])
    np.testing.assert_array_equal(decode_request(body, length, SIG).inputs["x"], X)


def test_classification_of_a_one_dimensional_batched_output_keeps_every_row() -> None:
    signature = Signature((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("score", "FP32", (-1,)),))
    request = V2Request({}, outputs=[{"name": "score", "parameters": {"classification": 2}}])
    outputs = {"score": np.array([0.25, 0.75], dtype=np.float32)}
    header, _ = split_response(*encode_response(request, "m", "1", outputs, signature=signature))
    assert header["outputs"][0]["shape"] == [2, 1]
    assert header["outputs"][0]["data"] == ["0.25:0", "0.75:0"]
    # An output without a batch dimension is one vector: its top-k, as one row.
    fixed = Signature(signature.inputs, (TensorSpec("score", "FP32", (2,)),))
    header, _ = split_response(*encode_response(request, "m", "1", outputs, signature=fixed))
    assert header["outputs"][0]["data"] == ["0.75:1", "0.25:0"]

"""The V2 gRPC wire format: the service definition against the official client's, the generated
code against the .proto, and protobuf messages to arrays and back (no server)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from google.protobuf import json_format

from shipyard.errors import (
    DeadlineExceededError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    QueueFullError,
    RateLimitedError,
    ShipyardError,
    UnauthorizedError,
)
from shipyard.serve.protocols import grpc_codec, triton_config
from shipyard.serve.protocols.proto import inference_pb2 as pb
from shipyard.types import ModelVersion, Signature, TensorSpec

REPO = Path(__file__).resolve().parents[3]


def _fields(descriptor: Any) -> dict[str, tuple[int, int, bool, str]]:
    return {
        f.name: (f.number, f.type, f.is_repeated, f.message_type.name if f.message_type else "")
        for f in descriptor.fields
    }


def _messages(descriptor: Any, prefix: str = "") -> dict[str, Any]:
    found = {}
    for m in descriptor.message_types_by_name.values() if prefix == "" else descriptor.nested_types:
        found[prefix + m.name] = m
        found.update(_messages(m, prefix + m.name + "."))
    return found


def test_every_field_matches_the_official_clients_definition() -> None:
    """Names and numbers are the wire contract: each field we define has the number, type and
    label of tritonclient's (which may have more fields, read by clients as defaults)."""
    from tritonclient.grpc import model_config_pb2, service_pb2

    theirs = {**_messages(service_pb2.DESCRIPTOR), **_messages(model_config_pb2.DESCRIPTOR)}
    ours = _messages(pb.DESCRIPTOR)
    for name, message in ours.items():
        assert name in theirs, name
        their_fields = _fields(theirs[name])
        for field, spec in _fields(message).items():
            assert their_fields.get(field) == spec, (name, field, spec, their_fields.get(field))
    their_service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        theirs_m = their_service.methods_by_name[method.name]
        assert (method.input_type.name, method.output_type.name) == (
            theirs_m.input_type.name,
            theirs_m.output_type.name,
        )
        assert (method.client_streaming, method.server_streaming) == (
            theirs_m.client_streaming,
            theirs_m.server_streaming,
        )


def test_generated_code_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("generate_protos", REPO / "scripts" / "generate_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_protos"] = module
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run: python scripts/generate_protos.py"


def version(*inputs: TensorSpec, outputs: tuple[TensorSpec, ...] = ()) -> ModelVersion:
    signature = Signature(inputs=tuple(inputs), outputs=outputs)
    return ModelVersion(name="m", version=3, format="onnx", digest="", size=0, files=(), signature=signature)


ALL_TYPED = [
    ("BOOL", "bool_contents", [True, False], np.bool_),
    ("INT8", "int_contents", [-3, 4], np.int8),
    ("INT16", "int_contents", [-300, 4], np.int16),
    ("INT32", "int_contents", [-(2**31), 4], np.int32),
    ("INT64", "int64_contents", [-(2**40), 4], np.int64),
    ("UINT8", "uint_contents", [255, 4], np.uint8),
    ("UINT16", "uint_contents", [65535, 4], np.uint16),
    ("UINT32", "uint_contents", [2**32 - 1, 4], np.uint32),
    ("UINT64", "uint64_contents", [2**63, 4], np.uint64),
    ("FP32", "fp32_contents", [0.5, -1.25], np.float32),
    ("FP64", "fp64_contents", [0.1, -1e300], np.float64),
]


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), ALL_TYPED)
def test_typed_contents_decode_to_their_dtype(
    datatype: str, field: str, values: list[Any], dtype: Any
) -> None:
    request = pb.ModelInferRequest(model_name="m", id="9")
    tensor = request.inputs.add(name="a", datatype=datatype, shape=[2, 1])
    getattr(tensor.contents, field).extend(values)
    decoded = grpc_codec.decode_request(request, version(TensorSpec("a", datatype, (-1, 1))))
    assert decoded.id == "9"
    assert decoded.inputs["a"].dtype == dtype
    np.testing.assert_array_equal(decoded.inputs["a"], np.array(values, dtype=dtype).reshape(2, 1))


def test_bytes_in_typed_and_raw_contents() -> None:
    model = version(TensorSpec("s", "BYTES", (-1,)))
    typed = pb.ModelInferRequest()
    typed.inputs.add(name="s", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"ab", b"\xff"])
    assert grpc_codec.decode_request(typed, model).inputs["s"].tolist() == ["ab", b"\xff"]
    raw = pb.ModelInferRequest(raw_input_contents=[b"\x02\x00\x00\x00ab\x00\x00\x00\x00"])
    raw.inputs.add(name="s", datatype="BYTES", shape=[2])
    assert grpc_codec.decode_request(raw, model).inputs["s"].tolist() == ["ab", ""]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda r: r.inputs.add(name="b", datatype="FP32", shape=[1]), "unknown input 'b'"),
        (lambda r: r.inputs.add(name="a", datatype="INT32", shape=[1]), "has datatype INT32, but the model"),
        (
            lambda r: r.inputs.add(name="a", datatype="FP32", shape=[2]),
            "has 0 elements in contents.fp32_contents",
        ),
        (lambda r: r.inputs.add(name="a", datatype="FP32", shape=[-1]), "non-negative integers"),
        (
            lambda r: (
                r.inputs.add(name="a", datatype="FP32", shape=[1]),
                r.raw_input_contents.extend([b"", b""]),
            ),
            "2 raw_input_contents for 1 inputs",
        ),
        (
            lambda r: (
                r.inputs.add(name="a", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0),
                r.raw_input_contents.append(b"\x00" * 4),
            ),
            "use one or the other",
        ),
        (
            lambda r: (
                r.inputs.add(name="a", datatype="FP32", shape=[1])
                .parameters["shared_memory_region"]
                .string_param
            ),
            "shared memory is not supported",
        ),
    ],
)
def test_bad_requests_name_the_problem(build: Any, fragment: str) -> None:
    request = pb.ModelInferRequest()
    build(request)
    with pytest.raises(InvalidInputError) as refused:
        grpc_codec.decode_request(request, version(TensorSpec("a", "FP32", (-1,))))
    assert fragment in refused.value.message


def test_fp16_needs_raw_contents_and_values_must_fit() -> None:
    half = pb.ModelInferRequest()
    half.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(InvalidInputError, match="FP16 has no typed contents; send it in raw_input_contents"):
        grpc_codec.decode_request(half, version(TensorSpec("h", "FP16", (-1,))))
    small = pb.ModelInferRequest()
    small.inputs.add(name="i", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    with pytest.raises(InvalidInputError, match="does not fit INT8"):
        grpc_codec.decode_request(small, version(TensorSpec("i", "INT8", (-1,))))


def test_outputs_go_raw_in_the_requested_order_with_classification() -> None:
    request = pb.ModelInferRequest(id="r1")
    request.inputs.add(name="a", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1, 2])
    wanted = request.outputs.add(name="p")
    wanted.parameters["classification"].int64_param = 1
    request.outputs.add(name="y")
    parsed = grpc_codec.decode_request(request, version(TensorSpec("a", "FP32", (-1,))))
    outputs: dict[str, np.ndarray] = {
        "y": np.array([[1.5], [2.5]], dtype=np.float16),
        "p": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32),
    }
    response = grpc_codec.encode_response(parsed, "m", "3", outputs, ["no", "yes"])
    assert (response.model_name, response.model_version, response.id) == ("m", "3", "r1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("p", "BYTES", [2, 1]),
        ("y", "FP16", [2, 1]),
    ]
    assert response.raw_output_contents[0] == b"\x09\x00\x00\x000.9:1:yes\x08\x00\x00\x000.8:0:no"
    assert np.frombuffer(response.raw_output_contents[1], "<f2").tolist() == [1.5, 2.5]
    with pytest.raises(InvalidInputError, match="unknown output 'z'"):
        grpc_codec.encode_response(parsed.__class__({}, None, {}, [{"name": "z"}]), "m", "3", outputs)


def test_model_config_leaves_the_batch_dimension_out() -> None:
    model = version(TensorSpec("a", "BYTES", (-1, 4)), outputs=(TensorSpec("b", "FP32", (-1,)),))
    config = grpc_codec.model_config("m", model, 32, 0.002)
    assert config.max_batch_size == 32
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("a", pb.TYPE_STRING, [4])]
    assert list(config.output[0].dims) == []
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert list(config.version_policy.specific.versions) == [3]
    fixed = grpc_codec.model_config("m", version(TensorSpec("a", "FP32", (3, 4))), 32, 0.002)
    assert fixed.max_batch_size == 0
    assert list(fixed.input[0].dims) == [3, 4]


def test_model_config_is_the_same_over_http_and_grpc() -> None:
    """gRPC's message holds exactly what HTTP answers as JSON (int64 dims come back as numbers)."""
    model = version(TensorSpec("a", "FP32", (-1, 4)), outputs=(TensorSpec("b", "FP32", (-1,)),))
    for batch, delay in ((32, 0.002), (0, 0.0)):
        http = triton_config.model_config("m", model, batch, delay, instances=2)
        message = grpc_codec.model_config("m", model, batch, delay, instances=2)
        assert json_format.ParseDict(http, pb.ModelConfig()) == message
        assert orjson.loads(orjson.dumps(http)) == http  # plain JSON, nothing lost
    assert message.platform == "onnxruntime_onnx" and message.backend == "onnxruntime"
    assert list(message.instance_group) == [
        pb.ModelInstanceGroup(name="m", count=2, kind=pb.ModelInstanceGroup.KIND_CPU)
    ]
    assert not message.HasField("dynamic_batching")  # no batching, no batcher settings
    assert triton_config.platform("skops") == ("python", "python")
    assert grpc_codec.model_metadata("m", [3], model).platform == "onnxruntime_onnx"


def test_classification_of_a_one_dimensional_output_keeps_the_batch() -> None:
    model = version(TensorSpec("a", "FP32", (-1,)), outputs=(TensorSpec("y", "FP32", (-1,)),))
    request = pb.ModelInferRequest()
    request.inputs.add(name="a", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1, 2])
    request.outputs.add(name="y").parameters["classification"].int64_param = 2
    parsed = grpc_codec.decode_request(request, model)
    outputs = {"y": np.array([0.5, 2.0], dtype=np.float32)}
    response = grpc_codec.encode_response(parsed, "m", "3", outputs, None, model.signature)
    assert list(response.outputs[0].shape) == [2, 1]
    assert response.raw_output_contents[0] == b"\x05\x00\x00\x000.5:0\x03\x00\x00\x002:0"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInputError("x"), "INVALID_ARGUMENT"),
        (UnauthorizedError("x"), "UNAUTHENTICATED"),
        (ForbiddenError("x"), "PERMISSION_DENIED"),
        (NotFoundError("x"), "NOT_FOUND"),
        (RateLimitedError("x", retry_after_s=1), "RESOURCE_EXHAUSTED"),
        (QueueFullError("x"), "UNAVAILABLE"),
        (DeadlineExceededError("x"), "DEADLINE_EXCEEDED"),
        (ShipyardError("x"), "INTERNAL"),
    ],
)
def test_errors_map_to_grpc_status_codes(error: ShipyardError, code: str) -> None:
    from shipyard.serve.protocols.grpc_v2 import status_code

    assert status_code(error).name == code

"""The Open Inference Protocol over gRPC, through the official `tritonclient.grpc` clients (sync,
asyncio and streaming) against one real `shipyard serve --grpc-port N` with API keys on.

The models are Triton's add/sub `simple` example (INT32 [-1,16] inputs), `multi` (FP32, INT64 and
BYTES) and a slow one for deadlines; what tritonclient cannot send (typed contents, a wrong raw
size, bytes that are not protobuf) goes through a raw channel with tritonclient's own messages.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from serve_support import ServeModels, push_file, slow_onnx_bytes
from serve_support import triton_raises as fails
from tritonclient.grpc import service_pb2, service_pb2_grpc

from servers import Server
from shipyard.registry import Registry
from shipyard.settings import Settings

SIMPLE_A = np.arange(16, dtype=np.int32).reshape(1, 16)
SIMPLE_B = np.ones((1, 16), dtype=np.int32)


def simple_onnx_bytes() -> bytes:
    """Triton's `simple` example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1, INT32 [-1,16]."""
    from onnx import TensorProto, helper

    def info(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["N", 16])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [info("INPUT0"), info("INPUT1")],
        [info("OUTPUT0"), info("OUTPUT1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def grpc_server(
    serve_models: ServeModels, serve_launcher: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, int, dict[str, str]]]:
    """(the server, its gRPC port, API keys by name): its own home, so its keys turn auth on here only."""
    home = tmp_path_factory.mktemp("grpc-home")
    files = tmp_path_factory.mktemp("grpc-files")
    with Registry(settings=Settings.load(home=home)) as registry:
        push_file(registry, "simple", simple_onnx_bytes(), files)
        push_file(registry, "multi", serve_models.multi_bytes, files)
        push_file(registry, "slow", slow_onnx_bytes(rounds=16), files)
        keys = {
            name: registry.create_key(name, scopes)[1]
            for name, scopes in {
                "client": ["infer:*", "read"],
                "multi-only": ["infer:multi", "read"],
                "admin": ["admin"],
            }.items()
        }
    args = ["--max-batch-delay-ms", "0"]
    with serve_launcher(home, ["simple", "multi", "slow"], args=args, grpc=True) as server:
        port = server.grpc_port
        assert port is not None
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield server, port, keys


@pytest.fixture(scope="module")
def url(grpc_server: tuple[Server, int, dict[str, str]]) -> str:
    return f"127.0.0.1:{grpc_server[1]}"


@pytest.fixture(scope="module")
def auth(grpc_server: tuple[Server, int, dict[str, str]]) -> dict[str, str]:
    return {"authorization": f"Bearer {grpc_server[2]['client']}"}


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[tgrpc.InferenceServerClient]:
    c = tgrpc.InferenceServerClient(url=url)
    yield c
    c.close()


def simple_inputs(module: Any = tgrpc) -> list[Any]:
    inputs = [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(SIMPLE_A)
    inputs[1].set_data_from_numpy(SIMPLE_B)
    return inputs


def test_health_and_server_metadata(client: tgrpc.InferenceServerClient, auth: dict[str, str]) -> None:
    assert client.is_server_live()  # a probe: no key needed, as on HTTP
    assert client.is_server_ready()
    assert client.is_model_ready("simple", headers=auth)
    metadata = client.get_server_metadata(headers=auth)
    assert metadata.name == "shipyard"
    assert "binary_tensor_data" in metadata.extensions


def test_standard_grpc_health_service(url: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as refused:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_reflection_lists_the_service(url: str) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=10)))
    names = {s.name for s in answer.list_services_response.service}
    assert "inference.GRPCInferenceService" in names


def test_model_metadata_and_config(client: tgrpc.InferenceServerClient, auth: dict[str, str]) -> None:
    metadata = client.get_model_metadata("simple", headers=auth, as_json=True)
    assert metadata["name"] == "simple"
    assert metadata["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("INPUT0", "INT32", ["-1", "16"]),  # int64 as JSON strings: protobuf's JSON mapping
        ("INPUT1", "INT32", ["-1", "16"]),
    ]
    config = client.get_model_config("simple", headers=auth).config
    assert config.name == "simple"
    assert config.max_batch_size > 0
    assert [(t.name, list(t.dims)) for t in config.input] == [("INPUT0", [16]), ("INPUT1", [16])]
    assert config.input[0].data_type == 8  # TYPE_INT32 in Triton's model_config.proto


def test_infer_int32_add_sub(client: tgrpc.InferenceServerClient, auth: dict[str, str]) -> None:
    outputs = [tgrpc.InferRequestedOutput("OUTPUT0"), tgrpc.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", simple_inputs(), outputs=outputs, request_id="7", headers=auth)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), SIMPLE_A + SIMPLE_B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), SIMPLE_A - SIMPLE_B)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("simple", "1", "7")


def test_infer_fp32_int64_and_bytes(client: tgrpc.InferenceServerClient, auth: dict[str, str]) -> None:
    arrays = {
        "x": np.arange(8, dtype=np.float32).reshape(2, 4) / 3,
        "n": np.array([[-(2**40)], [7]], dtype=np.int64),
        "s": np.array([["setosa"], ["vérsicolor".encode()]], dtype=object),
    }
    inputs = []
    for name, datatype in (("x", "FP32"), ("n", "INT64"), ("s", "BYTES")):
        tensor = tgrpc.InferInput(name, list(arrays[name].shape), datatype)
        tensor.set_data_from_numpy(arrays[name])
        inputs.append(tensor)
    result = client.infer("multi", inputs, headers=auth)
    np.testing.assert_allclose(result.as_numpy("y"), arrays["x"] * 2)
    np.testing.assert_array_equal(result.as_numpy("n_out"), arrays["n"])
    assert result.as_numpy("s_out").tolist() == [[b"setosa"], ["vérsicolor".encode()]]


def raw_stub(url: str) -> Iterator[Any]:
    with grpc.insecure_channel(url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def stub(url: str) -> Iterator[Any]:
    yield from raw_stub(url)


def test_typed_contents_in_and_raw_contents_out(stub: Any, auth: dict[str, str]) -> None:
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name, values in (("INPUT0", SIMPLE_A), ("INPUT1", SIMPLE_B)):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(values.ravel().tolist())
    response = stub.ModelInfer(request, metadata=tuple(auth.items()), timeout=10)
    assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
    total = np.frombuffer(response.raw_output_contents[0], dtype="<i4").reshape(1, 16)
    np.testing.assert_array_equal(total, SIMPLE_A + SIMPLE_B)


def call_fails(call: Callable[[], Any], code: grpc.StatusCode, *fragments: str) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    assert failed.value.code() == code, (failed.value.code(), failed.value.details())
    for fragment in fragments:
        assert fragment in failed.value.details(), (fragment, failed.value.details())


def test_wrong_raw_content_size_is_invalid_argument(stub: Any, auth: dict[str, str]) -> None:
    request = service_pb2.ModelInferRequest(model_name="simple")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    request.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
    request.raw_input_contents.extend([SIMPLE_A.tobytes()[:60], SIMPLE_B.tobytes()])
    call_fails(
        lambda: stub.ModelInfer(request, metadata=tuple(auth.items()), timeout=10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'INPUT0' has 60 bytes of binary data, but shape [1, 16] of INT32 needs 64",
    )


def test_bytes_that_are_not_protobuf_are_invalid_argument(url: str, auth: dict[str, str]) -> None:
    with grpc.insecure_channel(url) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        call_fails(
            lambda: infer(b"\xff\xff\xff\xff", metadata=tuple(auth.items()), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a valid inference.ModelInferRequest protobuf message",
        )


def test_unknown_model_is_not_found_with_tritons_wording(
    client: tgrpc.InferenceServerClient, auth: dict[str, str]
) -> None:
    with fails(
        grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'nope'", "(served: multi, simple, slow)"
    ):
        client.infer("nope", simple_inputs(), headers=auth)
    with fails(grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'nope'"):
        client.get_model_metadata("nope", headers=auth)


def test_missing_or_invalid_key_is_unauthenticated(client: tgrpc.InferenceServerClient) -> None:
    with fails(grpc.StatusCode.UNAUTHENTICATED, "this server needs an API key"):
        client.infer("simple", simple_inputs())
    with fails(grpc.StatusCode.UNAUTHENTICATED):
        client.get_model_metadata("simple", headers={"x-api-key": "sy_0123456789abcdef_" + "A" * 43})


def test_key_without_the_scope_is_permission_denied(
    client: tgrpc.InferenceServerClient, grpc_server: tuple[Server, int, dict[str, str]]
) -> None:
    headers = {"x-api-key": grpc_server[2]["multi-only"]}
    with fails(grpc.StatusCode.PERMISSION_DENIED, "lacks the scope 'infer:simple'"):
        client.infer("simple", simple_inputs(), headers=headers)
    with fails(grpc.StatusCode.PERMISSION_DENIED, "lacks the scope 'admin'"):
        client.get_model_repository_index(headers=headers)


def test_client_deadline_is_deadline_exceeded(
    client: tgrpc.InferenceServerClient, auth: dict[str, str]
) -> None:
    tensor = tgrpc.InferInput("x", [64, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((64, 4), dtype=np.float32))
    with fails(grpc.StatusCode.DEADLINE_EXCEEDED):
        client.infer("slow", [tensor], client_timeout=0.001, headers=auth)
    assert client.is_model_ready("slow", headers=auth)  # and the server goes on serving


def test_streaming_with_the_sync_client(url: str, auth: dict[str, str]) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = tgrpc.InferenceServerClient(url=url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=auth)
    try:
        client.async_stream_infer("simple", simple_inputs(), request_id="1")
        client.async_stream_infer("nope", simple_inputs(), request_id="2")
        client.async_stream_infer("simple", simple_inputs(), request_id="3")
        got = [answers.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
        client.close()
    # Answers come as they are ready, so in any order; clients match them by id.
    results = {result.get_response().id: result for result, error in got if error is None}
    (error,) = [error for result, error in got if error is not None]
    assert sorted(results) == ["1", "3"]
    np.testing.assert_array_equal(results["1"].as_numpy("OUTPUT0"), SIMPLE_A + SIMPLE_B)
    assert "Request for unknown model: 'nope'" in error.message()  # and the stream went on


def test_asyncio_client_and_its_stream(url: str, auth: dict[str, str]) -> None:
    async def run() -> list[Any]:
        async with tgrpc_aio.InferenceServerClient(url=url) as client:
            assert await client.is_server_ready()
            single = await client.infer("simple", simple_inputs(tgrpc_aio), headers=auth)

            async def requests() -> AsyncIterator[dict[str, Any]]:
                for i in range(3):
                    yield {"model_name": "simple", "inputs": simple_inputs(tgrpc_aio), "request_id": str(i)}

            streamed = [item async for item in client.stream_infer(requests(), headers=auth)]
            return [single, *streamed]

    single, *streamed = asyncio.run(run())
    np.testing.assert_array_equal(single.as_numpy("OUTPUT1"), SIMPLE_A - SIMPLE_B)
    assert [error for _, error in streamed] == [None, None, None]
    assert sorted(result.get_response().id for result, _ in streamed) == ["0", "1", "2"]


def test_announced_and_counted_in_metrics(grpc_server: tuple[Server, int, dict[str, str]]) -> None:
    server, port, keys = grpc_server
    assert f"gRPC: 127.0.0.1:{port}" in server.stdout()
    with server.client(headers={"x-api-key": keys["client"]}) as http:
        text = http.get("/metrics").text
    assert 'protocol="grpc"' in text
    assert 'model="simple"' in text


def test_statistics_in_tritons_shape(client: tgrpc.InferenceServerClient, auth: dict[str, str]) -> None:
    client.infer("simple", simple_inputs(), headers=auth)
    (entry,) = client.get_inference_statistics("simple", headers=auth).model_stats
    assert (entry.name, entry.version) == ("simple", "1")
    assert entry.last_inference > 0
    assert entry.inference_count >= entry.inference_stats.success.count >= 1
    assert entry.execution_count >= 1
    stats = entry.inference_stats
    assert stats.success.ns > 0 and stats.compute_infer.ns > 0 and stats.queue.count >= 1
    assert sum(b.compute_infer.count for b in entry.batch_stats) == entry.execution_count


def test_http_statistics_have_the_same_shape(grpc_server: tuple[Server, int, dict[str, str]]) -> None:
    server, _, keys = grpc_server
    with server.client(headers={"x-api-key": keys["client"]}) as http:
        (entry,) = http.get("/v2/models/simple/stats").json()["model_stats"]
    assert set(entry["inference_stats"]) >= {"success", "fail", "queue", "compute_infer", "compute_output"}
    assert entry["inference_stats"]["success"]["count"] >= 1
    assert entry["batch_stats"][0].keys() == {
        "batch_size",
        "compute_input",
        "compute_infer",
        "compute_output",
    }
    assert entry["last_inference"] > 0


def test_repository_rpcs_need_the_admin_scope_and_refuse_overrides(
    client: tgrpc.InferenceServerClient, grpc_server: tuple[Server, int, dict[str, str]]
) -> None:
    admin = {"authorization": f"Bearer {grpc_server[2]['admin']}"}
    index = client.get_model_repository_index(headers=admin, as_json=True)["models"]
    assert {(m["name"], m["state"]) for m in index} >= {("simple", "READY"), ("multi", "READY")}
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "config overrides are not supported"):
        client.load_model("simple", headers=admin, config='{"max_batch_size": 4}')
    with fails(grpc.StatusCode.PERMISSION_DENIED, "uploading model files through load is not allowed"):
        client.load_model("simple", headers=admin, config="{}", files={"file:1/model.onnx": b"x"})

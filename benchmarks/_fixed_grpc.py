"""grpcio's ceiling for benchmarks/perf_analyzer.py: a grpc.aio server that answers Triton's `simple`
model with fixed bytes.

No model, no parsing, no batching, no metrics: each RPC returns a prepared serialized answer, on a
uvloop event loop as `shipyard serve` runs its gRPC server. What perf_analyzer measures against it
is what grpcio itself (and perf_analyzer's gRPC client, on the same cores) allows on this host.
It answers what perf_analyzer asks before its load: server and model metadata, the model's config
and statistics.

    python benchmarks/_fixed_grpc.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

import grpc
import numpy as np
import uvloop

from shipyard.serve.protocols.proto import inference_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
NAMES_IN, NAMES_OUT = ("INPUT0", "INPUT1"), ("OUTPUT0", "OUTPUT1")


def answers() -> dict[str, bytes]:
    """Each method's serialized answer, for the `simple` model (INT32 [-1,16] in and out)."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    metadata = pb.ModelMetadataResponse(
        name="simple",
        versions=["1"],
        platform="onnxruntime_onnx",
        inputs=[tensor(name=n, datatype="INT32", shape=[-1, 16]) for n in NAMES_IN],
        outputs=[tensor(name=n, datatype="INT32", shape=[-1, 16]) for n in NAMES_OUT],
    )
    config = pb.ModelConfig(
        name="simple",
        platform="onnxruntime_onnx",
        max_batch_size=32,
        input=[pb.ModelInput(name=n, data_type=pb.TYPE_INT32, dims=[16]) for n in NAMES_IN],
        output=[pb.ModelOutput(name=n, data_type=pb.TYPE_INT32, dims=[16]) for n in NAMES_OUT],
    )
    output = pb.ModelInferResponse.InferOutputTensor
    infer = pb.ModelInferResponse(
        model_name="simple",
        model_version="1",
        outputs=[output(name=n, datatype="INT32", shape=[1, 16]) for n in NAMES_OUT],
        raw_output_contents=[np.zeros(16, np.int32).tobytes()] * 2,
    )
    statistics = pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(name="simple", version="1")])
    messages: dict[str, Any] = {
        "ServerLive": pb.ServerLiveResponse(live=True),
        "ServerReady": pb.ServerReadyResponse(ready=True),
        "ModelReady": pb.ModelReadyResponse(ready=True),
        "ServerMetadata": pb.ServerMetadataResponse(name="fixed", version="1"),
        "ModelMetadata": metadata,
        "ModelConfig": pb.ModelConfigResponse(config=config),
        "ModelStatistics": statistics,
        "ModelInfer": infer,
    }
    return {name: message.SerializeToString() for name, message in messages.items()}


async def serve(port: int) -> None:
    def method(answer: bytes) -> Any:
        async def handler(request: bytes, context: Any) -> bytes:
            return answer

        return grpc.unary_unary_rpc_method_handler(handler)  # bytes in, bytes out

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    methods = {name: method(answer) for name, answer in answers().items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"serving fixed answers on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))

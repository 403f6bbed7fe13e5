"""Calls through KServe's own Python clients, as a KServe user would write them: run with
.venv-kserve's python by test_serve_kserve_clients.py, never imported by Shipyard's tests (kserve
pins protobuf 6; the main venv has 7).

    python kserve_calls.py < PLAN.json > RESULTS.json

PLAN is {"rest": "http://HOST:PORT", "grpc": "HOST:PORT", "calls": {NAME: CALL, ...}}; each CALL is
{"client": "rest-v1" | "rest-v2" | "grpc", "op": OP, "model": NAME, ...} with OP one of
server_live, server_ready, model_ready, metadata (gRPC only: KServe's generated stub, the client
has no method for it), infer. An infer call carries `instances` (rest-v1) or `inputs`
([{name, shape, datatype, data, binary}]) and optionally `outputs` ([{name, binary}]), `id`,
`parameters` and `version` (gRPC only: the REST client has no way to name one).
RESULTS is {NAME: {"ok": VALUE} or {"error": {type, status, message}}}, the calls made in order.
"""

import asyncio
import json
import sys

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.grpc.grpc_predict_v2_pb2 import ModelMetadataRequest
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.infer_type import RequestedOutput

NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64, "BYTES": np.object_}


def request(call):
    inputs = []
    for spec in call["inputs"]:
        tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
        data = np.array(spec["data"], dtype=NUMPY[spec["datatype"]]).reshape(spec["shape"])
        if spec["datatype"] == "BYTES":
            data = np.array([s.encode() for s in data.flat], dtype=np.object_).reshape(spec["shape"])
        tensor.set_data_from_numpy(data, binary_data=spec.get("binary", True))
        inputs.append(tensor)
    outputs = [
        RequestedOutput(o["name"], parameters={"binary_data": o["binary"]} if "binary" in o else None)
        for o in call.get("outputs", [])
    ]
    return InferRequest(
        call["model"],
        inputs,
        request_id=call.get("id"),
        parameters=call.get("parameters"),
        request_outputs=outputs or None,
        model_version=call.get("version"),
    )


def response(result):
    outputs = []
    for output in result.outputs:
        values = output.as_numpy()
        if output.datatype == "BYTES":
            values = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v, otypes=[object])(
                values
            )
        outputs.append(
            {
                "name": output.name,
                "datatype": output.datatype,
                "shape": list(output.shape),
                "data": values.tolist(),
            }
        )
    return {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "id": result.id,
        "outputs": outputs,
    }


async def run(plan, call, rest, grpc_client):
    kind, op, model = call["client"], call["op"], call.get("model")
    if kind.startswith("rest"):
        client, url = rest[kind], plan["rest"]
        if op == "server_live":
            return await client.is_server_live(url)
        if op == "server_ready":
            return await client.is_server_ready(url)
        if op == "model_ready":
            return await client.is_model_ready(url, model)
        if kind == "rest-v1":
            return await client.infer(url, {"instances": call["instances"]}, model_name=model)
        return response(await client.infer(url, request(call), model_name=model))
    if op == "server_live":
        return await grpc_client.is_server_live()
    if op == "server_ready":
        return await grpc_client.is_server_ready()
    if op == "model_ready":
        return await grpc_client.is_model_ready(model)
    if op == "metadata":
        async with grpc.aio.insecure_channel(plan["grpc"]) as channel:
            answer = await GRPCInferenceServiceStub(channel).ModelMetadata(ModelMetadataRequest(name=model))
        tensors = lambda ts: [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in ts]  # noqa: E731
        return {
            "name": answer.name,
            "versions": list(answer.versions),
            "platform": answer.platform,
            "inputs": tensors(answer.inputs),
            "outputs": tensors(answer.outputs),
        }
    return response(await grpc_client.infer(request(call)))


def failure(exc):
    if isinstance(exc, grpc.RpcError):
        return {"type": "RpcError", "status": exc.code().name, "message": exc.details()}
    status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else None
    return {"type": type(exc).__name__, "status": status, "message": str(exc)}


async def main():
    plan = json.load(sys.stdin)
    rest = {
        "rest-v1": InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=30)),
        "rest-v2": InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30)),
    }
    grpc_client = InferenceGRPCClient(plan["grpc"], timeout=30, retries=0) if plan.get("grpc") else None
    results = {}
    for name, call in plan["calls"].items():
        try:
            results[name] = {"ok": await run(plan, call, rest, grpc_client)}
        except Exception as exc:
            results[name] = {"error": failure(exc)}
    for client in rest.values():
        await client.close()
    if grpc_client is not None:
        await grpc_client.close()
    json.dump(results, sys.stdout)


asyncio.run(main())

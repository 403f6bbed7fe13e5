"""OpenAPI 3.1 document generated from the served models' signatures, and a docs page."""

from __future__ import annotations

import html
import re
from typing import Any

import orjson
from starlette.routing import Route

import shipyard
from shipyard.serve.dataplane import DataPlane
from shipyard.types import TensorSpec

_JSON_TYPES = {"BOOL": "boolean", "BYTES": "string", "FP16": "number", "FP32": "number", "FP64": "number"}
_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
    "required": ["error"],
}


def _element(spec: TensorSpec) -> dict[str, Any]:
    return {"type": _JSON_TYPES.get(spec.datatype, "integer")}


def _nested(spec: TensorSpec, dims: tuple[int, ...]) -> dict[str, Any]:
    schema = _element(spec)
    for d in reversed(dims):
        schema = {"type": "array", "items": schema, **({"minItems": d, "maxItems": d} if d >= 0 else {})}
    return schema


def _errors() -> dict[str, Any]:
    described = {
        "400": "malformed request or input that does not fit the signature",
        "404": "model or version not served",
        "413": "body over the size limit",
        "415": "unsupported content type",
        "405": "method not allowed on this route (the Allow header lists the methods)",
        "500": "the model or its runtime failed (the server log has the details)",
        "503": "not ready or overloaded",
    }
    return {
        code: {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code, text in described.items()
    }


def _v2_infer(specs: tuple[TensorSpec, ...]) -> dict[str, Any]:
    tensor_schemas = []
    for t in specs:
        tensor_schemas.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    "datatype": {"const": t.datatype},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "data": {"type": "array"},
                },
                "required": ["name", "datatype", "shape", "data"],
            }
        )
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": {"oneOf": tensor_schemas}, "minItems": len(specs)},
        },
        "required": ["inputs"],
    }


_SUMMARIES = {
    "/healthz": "Liveness probe",
    "/readyz": "Readiness probe: every served model and its state (503 until all are ready)",
    "/metrics": "Prometheus metrics",
    "/openapi.json": "This document",
    "/docs": "API documentation page",
    "/v2": "Server metadata (Open Inference Protocol V2)",
    "/v2/health/live": "Server live (V2)",
    "/v2/health/ready": "Server ready (V2): the same body as /readyz",
    "/v2/models/stats": "Statistics of every served version (V2)",
    "/v2/models/{model}": "Model metadata (V2)",
    "/v2/models/{model}/ready": "Model ready (V2)",
    "/v2/models/{model}/config": "Model configuration (Triton)",
    "/v2/models/{model}/stats": "Model statistics (V2)",
    "/v2/models/{model}/infer": "Infer (V2): JSON or the binary-tensor extension",
    "/v2/models/{model}/drift": "Input drift per feature vs the version's reference (?window=500 or 15m)",
    "/v2/models/{model}/feedback": "True labels or values of logged requests; 207 when some fail",
    "/v2/models/{model}/quality": "Live accuracy, precision, recall, F1 (or MAE, RMSE) on feedback",
    "/v1/models/{model}": "Model status (TF Serving / KServe V1)",
    "/v1/models/{model}:predict": "Predict (TF Serving / KServe V1)",
    "/v1/models/{model}/metadata": "Model metadata: every signature_def (TF Serving)",
    "/v1/models/{model}:classify": "Classify JSON examples (TF Serving; SavedModel classify signatures)",
    "/v1/models/{model}:regress": "Regress JSON examples (TF Serving; SavedModel regress signatures)",
    "/v1/models": "Served models: OpenAI's object and data, KServe V1's models (names)",
    "/v1/embeddings": "Embeddings (OpenAI-compatible)",
    "/ping": "Health (SageMaker)",
    "/execution-parameters": "Batch transform defaults: concurrency, strategy, payload size (SageMaker)",
    "/invocations": "Predict (SageMaker): JSON, CSV, JSON Lines or .npy, answered as Accept asks",
    "/models": "Multi-model endpoint: list, or load a folder holding a registry (SageMaker)",
    "/models/{model}": "Multi-model endpoint: one loaded model, or unload it (SageMaker)",
    "/models/{model}/invoke": "Multi-model endpoint: predict with a loaded model (SageMaker)",
    "/": "Liveness (KServe V1: status alive); on Azure ML, readiness: Healthy once every model is ready",
    "/score": "Predict (Azure ML): {data} or {input_data} rows → a list of predictions",
    "/v2/repository/index": "Model repository index (admin token)",
    "/v2/repository/models/{model}/load": "Load a model (admin token)",
    "/v2/repository/models/{model}/unload": "Unload a model (admin token)",
    "/v2/systemsharedmemory/status": "Registered shared-memory regions (Triton; admin)",
    "/v2/systemsharedmemory/region/{name}/status": "One shared-memory region (Triton; admin)",
    "/v2/systemsharedmemory/region/{name}/register": "Register a shared-memory region (Triton; admin)",
    "/v2/systemsharedmemory/region/{name}/unregister": "Unregister a shared-memory region (Triton; admin)",
    "/v2/systemsharedmemory/unregister": "Unregister every shared-memory region (Triton; admin)",
}
_EMBEDDINGS_BODY = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "encoding_format": {"enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
    },
    "required": ["model", "input"],
}
_ANY_JSON = {"type": "object"}


def _route_operation(path: str, method: str) -> dict[str, Any]:
    """The operation of one route, described generically (its body is the model's business)."""
    generic = path.replace("/versions/{version}", "").replace("/labels/{label}", "")
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 1} if name == "version" else {"type": "string"},
        }
        for name in _PARAM.findall(path)
    ]
    operation: dict[str, Any] = {
        "summary": _SUMMARIES.get(generic, f"{method} {path}")
        + (", one version" if "{version}" in path else "")
        + (", the version an alias (label) names" if "{label}" in path else ""),
        "operationId": f"{method.lower()}_{_NOT_ID.sub('_', path).strip('_')}",
        "responses": {"200": {"description": "success"}, **_errors()},
    }
    if parameters:
        operation["parameters"] = parameters
    if method == "POST":
        schema = _EMBEDDINGS_BODY if path == "/v1/embeddings" else _ANY_JSON
        operation["requestBody"] = {"content": {"application/json": {"schema": schema}}}
    return operation


_PARAM = re.compile(r"{(\w+)}")
_NOT_ID = re.compile(r"[^A-Za-z0-9]+")


def build_openapi(dataplane: DataPlane, routes: list[Route]) -> dict[str, Any]:
    """Every route the server answers, plus a typed operation per served model's inference."""
    paths: dict[str, Any] = {}
    for route in routes:
        for method in sorted(route.methods or ()):
            if method != "HEAD":  # Starlette adds HEAD to every GET route
                paths.setdefault(route.path, {})[method.lower()] = _route_operation(route.path, method)
    for name in dataplane.served_names():
        served = dataplane.default(name)
        if served is None:
            continue
        sig = served.version.signature
        row = (
            _nested(sig.inputs[0], sig.inputs[0].shape[1:])
            if len(sig.inputs) == 1
            else {
                "type": "object",
                "properties": {t.name: _nested(t, t.shape[1:]) for t in sig.inputs},
                "required": [t.name for t in sig.inputs],
            }
        )
        v1_body = {
            "type": "object",
            "properties": {"instances": {"type": "array", "items": row, "minItems": 1}},
            "required": ["instances"],
        }
        ok = {"description": "predictions", "content": {"application/json": {"schema": {"type": "object"}}}}
        paths[f"/v1/models/{name}:predict"] = {
            "post": {
                "summary": f"Predict with {served.version.ref} (TF Serving / KServe V1)",
                "operationId": f"v1_predict_{name}",
                "requestBody": {"required": True, "content": {"application/json": {"schema": v1_body}}},
                "responses": {"200": ok, **_errors()},
            }
        }
        paths[f"/v2/models/{name}/infer"] = {
            "post": {
                "summary": f"Infer with {served.version.ref} (Open Inference Protocol V2); {sig.describe()}",
                "operationId": f"v2_infer_{name}",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _v2_infer(sig.inputs)}},
                },
                "responses": {"200": ok, **_errors()},
            }
        }
        paths[f"/v2/models/{name}"] = {
            "get": {
                "summary": f"Metadata of {name}",
                "operationId": f"v2_metadata_{name}",
                "responses": {"200": {"description": "model metadata"}, "404": _errors()["404"]},
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Shipyard inference server", "version": shipyard.__version__},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR}},
    }


def docs_page(spec: dict[str, Any]) -> str:
    """A self-contained page (no CDN: works offline) listing every route and its body schema."""
    items = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            body = (
                f"<pre>{html.escape(orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode())}</pre>"
                if schema
                else ""
            )
            items.append(
                f"<section><h2><code>{method.upper()} {html.escape(path)}</code></h2>"
                f"<p>{html.escape(op.get('summary', ''))}</p>{body}</section>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Shipyard API</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto}"
        "pre{background:#f4f4f4;padding:1rem;overflow:auto}</style></head><body>"
        "<h1>Shipyard inference server</h1><p>Machine-readable: <a href='/openapi.json'>"
        "/openapi.json</a></p>" + "".join(items) + "</body></html>"
    )

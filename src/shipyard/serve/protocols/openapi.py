"""OpenAPI 3.1 document generated from the served models' signatures, and a docs page."""

from __future__ import annotations

import html
from typing import Any

import orjson

import shipyard
from shipyard.serve.repository import ModelRepository
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


def build_openapi(repository: ModelRepository) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for name, model in sorted(repository.models.items()):
        served = model.versions.get(model.default) if model.default is not None else None
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
    for path, summary in (
        ("/v2/health/live", "Server live"),
        ("/v2/health/ready", "Server ready"),
        ("/healthz", "Liveness probe"),
        ("/readyz", "Readiness probe"),
    ):
        paths[path] = {
            "get": {
                "summary": summary,
                "operationId": path.strip("/").replace("/", "_"),
                "responses": {"200": {"description": "yes"}, "503": {"description": "no"}},
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

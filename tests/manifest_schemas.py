"""Offline validation of generated manifests, as a cluster's API server would check them.

- Built-in kinds: the Kubernetes OpenAPI schemas `kubernetes-validate` ships, in strict mode
  (an unknown field fails), for every version in `K8S_VERSIONS`.
- ServiceMonitor: the schema of cloudcoil's prometheus-operator models, which are generated from
  the operator's CRDs (field names, types, enums and patterns such as the duration format), made
  strict the same way.
- KServe: no installable package ships KServe's CRDs (the `kserve` SDK ships generated Python
  classes only, and needs protobuf < 7, which Shipyard's gRPC code cannot use), so the fields
  KServe defines are checked against `KSERVE_SCHEMAS` below, written from KServe's API reference,
  and every embedded Kubernetes type (metadata, containers, volumes) against Kubernetes' own.
- Helm: the chart is linted and rendered by Helm's Go SDK (`helm-python-sdk` ships Helm 4 as a
  shared library, libhelm_c, called through ctypes; no `helm` binary).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSIONS = ("1.29", "1.33", "1.37")
CUSTOM_KINDS = ("ServiceMonitor", "InferenceService", "ServingRuntime")

_PROTOCOLS = ["v1", "v2", "grpc-v1", "grpc-v2"]
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJECT = {"type": "object"}  # an embedded Kubernetes type: checked by `_validate_embedded`
KSERVE_SCHEMAS: dict[str, dict[str, Any]] = {
    "InferenceService": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "kind": {"const": "InferenceService"},
            "metadata": _OBJECT,
            "spec": {
                "type": "object",
                "required": ["predictor"],
                "additionalProperties": False,
                "properties": {
                    "predictor": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "minReplicas": {"type": "integer", "minimum": 0},
                            "maxReplicas": {"type": "integer", "minimum": 0},
                            "serviceAccountName": {"type": "string"},
                            "model": {
                                "type": "object",
                                "required": ["modelFormat"],
                                "additionalProperties": False,
                                "properties": {
                                    "modelFormat": {
                                        "type": "object",
                                        "required": ["name"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "name": {"type": "string"},
                                            "version": {"type": "string"},
                                        },
                                    },
                                    "runtime": {"type": "string"},
                                    "protocolVersion": {"enum": _PROTOCOLS},
                                    "storageUri": {"type": "string"},
                                },
                            },
                        },
                    }
                },
            },
        },
    },
    "ServingRuntime": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
            "kind": {"const": "ServingRuntime"},
            "metadata": _OBJECT,
            "spec": {
                "type": "object",
                "required": ["containers"],
                "additionalProperties": False,
                "properties": {
                    "annotations": _STRING_MAP,
                    "supportedModelFormats": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "autoSelect": {"type": "boolean"},
                                "priority": {"type": "integer", "minimum": 1},
                            },
                        },
                    },
                    "protocolVersions": {"type": "array", "items": {"enum": _PROTOCOLS}},
                    "multiModel": {"type": "boolean"},
                    "containers": {"type": "array", "minItems": 1, "items": _OBJECT},
                    "volumes": {"type": "array", "items": _OBJECT},
                },
            },
        },
    },
}


def _strict(schema: Any) -> Any:
    """Every object that names its properties accepts no others (kubernetes-validate's strict)."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def service_monitor_schema() -> dict[str, Any]:
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    schema: dict[str, Any] = _strict(ServiceMonitor.model_json_schema(by_alias=True, mode="validation"))
    return schema


def _validate_builtin(doc: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def _validate_embedded(doc: dict[str, Any]) -> None:
    """The Kubernetes types inside a KServe resource, checked as a Pod holding them."""
    spec = doc["spec"]
    containers = spec.get("containers") or [{"name": "predictor", "image": "checked-by-kserve"}]
    pod_spec: dict[str, Any] = {"containers": containers}
    if "volumes" in spec:
        pod_spec["volumes"] = spec["volumes"]
    predictor = spec.get("predictor", {})
    if "serviceAccountName" in predictor:
        pod_spec["serviceAccountName"] = predictor["serviceAccountName"]
    _validate_builtin({"apiVersion": "v1", "kind": "Pod", "metadata": doc["metadata"], "spec": pod_spec})


def validate(doc: dict[str, Any]) -> None:
    """Raise (kubernetes_validate.ValidationError or jsonschema.ValidationError) if `doc` is not
    a manifest the cluster would accept."""
    kind = doc.get("kind")
    if kind == "ServiceMonitor":
        jsonschema.validate(doc, service_monitor_schema())
        _validate_builtin({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]})
    elif kind in KSERVE_SCHEMAS:
        jsonschema.validate(doc, KSERVE_SCHEMAS[kind])
        _validate_embedded(doc)
    else:
        _validate_builtin(doc)


def load_folder(folder: Path) -> dict[str, dict[str, Any]]:
    """Every YAML file `shipyard k8s` wrote (the chart aside), by its path in the folder."""
    return {
        path.relative_to(folder).as_posix(): yaml.safe_load(path.read_text())
        for path in sorted(folder.rglob("*.yaml"))
        if "chart" not in path.relative_to(folder).parts
    }


def by_identity(
    docs: Iterator[dict[str, Any]] | list[dict[str, Any]],
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if d and d["kind"] != "Kustomization"}


def helm_lint(chart: Path, namespace: str) -> dict[str, Any]:
    import helm_python

    return helm_python.lint(str(chart), strict=True, namespace=namespace)


def helm_render(
    chart: Path, release: str, namespace: str, values: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The documents Helm's engine renders from the chart (as `helm template` prints them)."""
    import helm_python

    with helm_python.Chart.load(str(chart)) as loaded:
        rendered = loaded.render(values, name=release, namespace=namespace)
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]

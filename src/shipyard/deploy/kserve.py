"""Pure render functions for KServe: a ServingRuntime that runs Shipyard, and an InferenceService
that serves the image's own models on it through the Open Inference Protocol (V2).

KServe's storage initializer copies an InferenceService's `storageUri` into /mnt/models before
the runtime starts. Shipyard serves from a registry, so the runtime pushes what it finds there
into a registry of its own (on a writable volume; the push detects the format and checks it as
`shipyard push` always does), then serves it under the InferenceService's name. Without a
`storageUri` (the `shipyard` format) it serves the models inside the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shipyard.deploy.kube import (
    HTTP_PORT,
    PROBE_PERIOD_S,
    KubeSpec,
    config_data,
    container,
    labels,
    model_annotations,
)

MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts a storageUri's files
OWN_FORMAT = "shipyard"  # the image's embedded registry: an InferenceService with no storageUri
# Shipyard's formats (ModelVersion.format) by the name KServe gives them in `modelFormat`.
KSERVE_FORMATS = {
    "onnx": "onnx",
    "transformers-onnx": "onnx",
    "skops": "sklearn",
    "joblib": "sklearn",
    "pickle": "sklearn",
    "transformers": "huggingface",
    "tflite": "tflite",
}
# $1 is the InferenceService's name (KServe fills in {{.Name}}); SHIPYARD_MODEL_DIR and
# SHIPYARD_CACHE_DIR come from the container's environment. A folder holding one file is pushed
# as that file (storage initializers keep the object's own name: model.onnx, model.joblib).
RUNTIME_SCRIPT = """set -eu
if [ -e "$SHIPYARD_MODEL_DIR" ]; then
  model="$SHIPYARD_MODEL_DIR"
  if [ -d "$model" ] && [ "$(ls -A "$model" | wc -l)" -eq 1 ]; then model="$model/$(ls -A "$model")"; fi
  export SHIPYARD_HOME="$SHIPYARD_CACHE_DIR/home"
  unset SHIPYARD_REGISTRY_URL SHIPYARD_ARTIFACT_URL
  shipyard push "$1" "$model"
  exec shipyard serve "$1" --host 0.0.0.0 --insecure
fi
exec shipyard serve $SHIPYARD_REFS --host 0.0.0.0 --insecure
"""


def model_formats(spec: KubeSpec) -> list[str]:
    """The KServe formats the image can load: those of the libraries `shipyard build` installed."""
    return sorted({KSERVE_FORMATS[v.format] for v in spec.versions if v.format in KSERVE_FORMATS})


def runtime_container(spec: KubeSpec) -> dict[str, Any]:
    """The Deployment's container, run as KServe's `kserve-container` with the runtime script."""
    base = container(spec)
    # The settings inline (a ServingRuntime serves many namespaces; a ConfigMap lives in one).
    settings = {**config_data(spec), "SHIPYARD_MODEL_DIR": MODEL_DIR, "SHIPYARD_SERVE__PORT": str(HTTP_PORT)}
    env = [{"name": key, "value": value} for key, value in sorted(settings.items())]
    kept = ("image", "imagePullPolicy", "resources", "securityContext", "volumeMounts")
    # KServe names the container's one port itself, so the probes name its number.
    probe = {"httpGet": {"path": "/readyz", "port": HTTP_PORT}, "periodSeconds": PROBE_PERIOD_S}
    startup = {**base["startupProbe"], "httpGet": {"path": "/healthz", "port": HTTP_PORT}}
    return {
        "name": "kserve-container",
        "command": ["/bin/sh", "-c"],
        "args": [RUNTIME_SCRIPT, "shipyard-runtime", "{{.Name}}"],
        "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": [*env, *base["env"]],
        **{key: base[key] for key in kept},
        "readinessProbe": probe,
        "startupProbe": startup,
    }


def serving_runtime(spec: KubeSpec) -> dict[str, Any]:
    formats = [
        {"name": OWN_FORMAT, "autoSelect": False},
        *({"name": name, "autoSelect": True, "priority": 1} for name in model_formats(spec)),
    ]
    pod = {"volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]}
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels(spec)},
        "spec": {
            "annotations": {
                "prometheus.kserve.io/port": str(HTTP_PORT),
                "prometheus.kserve.io/path": "/metrics",
            },
            "supportedModelFormats": formats,
            "protocolVersions": ["v2"],
            "containers": [runtime_container(spec)],
            **pod,
        },
    }


def inference_service(spec: KubeSpec) -> dict[str, Any]:
    predictor: dict[str, Any] = {
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas,
        "model": {
            "modelFormat": {"name": OWN_FORMAT},
            "runtime": spec.name,
            "protocolVersion": "v2",
        },
    }
    if spec.service_account:
        predictor["serviceAccountName"] = spec.service_account
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": labels(spec),
            "annotations": model_annotations(spec),
        },
        "spec": {"predictor": predictor},
    }


def render_kserve(spec: KubeSpec) -> dict[str, Mapping[str, Any]]:
    """The ServingRuntime first: the InferenceService names it."""
    return {
        "kserve/servingruntime.yaml": serving_runtime(spec),
        "kserve/inferenceservice.yaml": inference_service(spec),
    }

"""Pure render functions for Kubernetes: a `KubeSpec` in, each manifest as a dict out.

The Deployment runs the image `shipyard build` makes (its `generic` platform): the same command,
user, ports and embedded registry (see `contract`). Sizing rules, written down here because the
registry records no measured load time for a version:

- startup: a server loads its models in `STARTUP_BASE_S` plus one second per
  `STARTUP_BYTES_PER_S` of artifact (reading and hashing the files, then building the runtime,
  from a cold disk), so the startup probe allows that long before liveness takes over;
- memory (when not given): `MEMORY_BASE` plus twice the artifacts' size, at least 1 GiB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shipyard.deploy import contract
from shipyard.types import ModelVersion

HTTP_PORT = contract.PLATFORMS["generic"].port  # what the image's entrypoint binds
GRPC_PORT = 8001  # ServeSettings.grpc_port's default, which the image keeps
PROBE_PERIOD_S = 5
STARTUP_BASE_S = 30
STARTUP_BYTES_PER_S = 25 * 1000 * 1000
MEMORY_BASE = 512 * 2**20
MEMORY_MIN = 2**30
PRESTOP_S = 5  # endpoints leave the Service (kube-proxy, ingress) before the server drains
TMP_DIR = "/tmp"  # the image's prediction log lives here (contract.RUNTIME_ENV)
CACHE_DIR = "/var/cache/shipyard"
# Keys of the Secret the pod reads; the Secret itself is never written (its values are yours).
SECRET_KEYS = {
    "SHIPYARD_REGISTRY_URL": "registry-url",
    "AWS_ACCESS_KEY_ID": "aws-access-key-id",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key",
    "SHIPYARD_SERVE__ADMIN_TOKEN": "admin-token",
}
# The metric the HPA's Pods target reads through the Prometheus adapter (monitor/metrics.py).
IN_FLIGHT_METRIC = "shipyard_server_in_flight_requests"
AZURE_WI_PREFIX = "azure.workload.identity/"


@dataclass(frozen=True, slots=True)
class KubeSpec:
    """Everything the manifests depend on."""

    versions: tuple[ModelVersion, ...]
    served: tuple[str, ...]  # the references the pods serve: pinned, or as given with a shared registry
    image: str
    name: str
    namespace: str
    shipyard_version: str
    replicas: int = 2
    min_replicas: int = 2
    max_replicas: int = 10
    cpu: str = "1"
    memory: str | None = None  # None: sized from the artifacts
    grace_period_s: float = 30.0  # ServeSettings.grace_period_s: the server's drain
    target_cpu_percent: int = 70
    target_in_flight: int = 8
    secret: str | None = None  # None: <name>-secrets
    shared_registry: bool = False
    artifact_url: str | None = None
    service_account: str | None = None
    annotations: tuple[tuple[str, str], ...] = ()  # on the ServiceAccount (workload identity)

    @property
    def artifact_bytes(self) -> int:
        return sum(v.size for v in self.versions)

    @property
    def memory_quantity(self) -> str:
        if self.memory is not None:
            return self.memory
        mebibytes = math.ceil(max(MEMORY_MIN, MEMORY_BASE + 2 * self.artifact_bytes) / 2**20)
        return f"{mebibytes // 1024}Gi" if mebibytes % 1024 == 0 else f"{mebibytes}Mi"

    @property
    def startup_failure_threshold(self) -> int:
        budget = STARTUP_BASE_S + math.ceil(self.artifact_bytes / STARTUP_BYTES_PER_S)
        return math.ceil(budget / PROBE_PERIOD_S)

    @property
    def termination_grace_s(self) -> int:
        return math.ceil(self.grace_period_s) + PRESTOP_S

    @property
    def secret_name(self) -> str:
        return self.secret or f"{self.name}-secrets"


def selector(spec: KubeSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "shipyard", "app.kubernetes.io/instance": spec.name}


def labels(spec: KubeSpec) -> dict[str, str]:
    return {
        **selector(spec),
        "app.kubernetes.io/component": "inference-server",
        "app.kubernetes.io/version": spec.shipyard_version,
        "app.kubernetes.io/managed-by": "shipyard",
    }


def _metadata(spec: KubeSpec, name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name or spec.name, "namespace": spec.namespace, "labels": labels(spec), **extra}


def model_annotations(spec: KubeSpec) -> dict[str, str]:
    return {
        "shipyard.io/models": " ".join(spec.served),
        "shipyard.io/digests": " ".join(f"{v.ref}={v.digest}" for v in spec.versions),
    }


def config_data(spec: KubeSpec) -> dict[str, str]:
    """The ConfigMap's settings, as `SHIPYARD_…` variables the server reads."""
    data = {
        "SHIPYARD_SERVE__GRACE_PERIOD_S": f"{spec.grace_period_s:g}",
        "SHIPYARD_SERVE__GRPC_PORT": str(GRPC_PORT),
        "SHIPYARD_SERVE__LOG_JSON": "true",
        **contract.RUNTIME_ENV,
        "SHIPYARD_CACHE_DIR": CACHE_DIR,
        "XDG_CACHE_HOME": CACHE_DIR,  # libraries that cache (numba, huggingface) write there, not $HOME
    }
    if spec.shared_registry:
        data["SHIPYARD_HOME"] = f"{CACHE_DIR}/home"  # the image's home is read-only
    if spec.artifact_url:
        data["SHIPYARD_ARTIFACT_URL"] = spec.artifact_url
    return dict(sorted(data.items()))


def _secret_env(spec: KubeSpec) -> list[dict[str, Any]]:
    """References to the Secret's keys, never values. Only the shared registry's URL is required:
    object-store keys may come from workload identity instead, and the admin token is optional."""
    env = []
    for variable, key in SECRET_KEYS.items():
        if variable == "SHIPYARD_REGISTRY_URL" and not spec.shared_registry:
            continue  # the image's embedded registry
        if variable.startswith("AWS_") and not spec.shared_registry:
            continue
        ref = {"name": spec.secret_name, "key": key, "optional": variable != "SHIPYARD_REGISTRY_URL"}
        env.append({"name": variable, "valueFrom": {"secretKeyRef": ref}})
    return env


def _probe(path: str, period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def container(spec: KubeSpec) -> dict[str, Any]:
    """The server's container: the image's own command, hardened, probed and sized."""
    resources = {"cpu": spec.cpu, "memory": spec.memory_quantity}
    return {
        "name": "shipyard",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(contract.PLATFORMS["generic"].entrypoint),
        "args": list(spec.served),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "envFrom": [{"configMapRef": {"name": f"{spec.name}-config"}}],
        "env": _secret_env(spec),
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        # Liveness waits for the startup probe; with several workers the port opens only once
        # the models have loaded, so the startup probe allows the load's whole budget.
        "startupProbe": _probe("/healthz", PROBE_PERIOD_S, spec.startup_failure_threshold),
        "readinessProbe": _probe("/readyz", PROBE_PERIOD_S, 2),
        "livenessProbe": _probe("/healthz", 10, 3, timeout=5),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_S)]}}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": contract.UID,
            "runAsGroup": contract.UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": TMP_DIR},
            {"name": "cache", "mountPath": CACHE_DIR},
        ],
    }


def _pod_labels(spec: KubeSpec) -> dict[str, str]:
    extra = {}
    if any(key.startswith(AZURE_WI_PREFIX) for key, _ in spec.annotations):
        extra["azure.workload.identity/use"] = "true"  # Azure's webhook injects only into such pods
    return {**labels(spec), **extra}


def deployment(spec: KubeSpec) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the server never calls the Kubernetes API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.termination_grace_s,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": contract.UID,
            "runAsGroup": contract.UID,
            "fsGroup": contract.UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": key,
                # A best effort: a one-node cluster (or zone) still schedules every replica.
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(spec)},
            }
            for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
        ],
        "containers": [container(spec)],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "cache", "emptyDir": {"sizeLimit": "4Gi"}},
        ],
    }
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, annotations=model_annotations(spec)),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector(spec)},
            # A new pod must be ready before an old one goes: capacity never drops in a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": _pod_labels(spec), "annotations": model_annotations(spec)},
                "spec": pod,
            },
        },
    }


def service(spec: KubeSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(spec),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }


def autoscaler(spec: KubeSpec) -> dict[str, Any]:
    """CPU, and requests in flight per pod through the Prometheus adapter. Without the adapter
    the second metric is unavailable: the HPA still scales up on CPU but skips scaling down."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": spec.target_cpu_percent},
                    },
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": IN_FLIGHT_METRIC},
                        "target": {"type": "AverageValue", "averageValue": str(spec.target_in_flight)},
                    },
                },
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def disruption_budget(spec: KubeSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(spec)}},
    }


def service_monitor(spec: KubeSpec) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(spec),
        "spec": {
            "selector": {"matchLabels": selector(spec)},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}],
        },
    }


def network_policy(spec: KubeSpec) -> dict[str, Any]:
    """Ingress only to the server's own ports (HTTP, with /metrics, and gRPC), from anywhere."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(spec),
        "spec": {
            "podSelector": {"matchLabels": selector(spec)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"protocol": "TCP", "port": "http"}, {"protocol": "TCP", "port": "grpc"}]}
            ],
        },
    }


def config_map(spec: KubeSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(spec, f"{spec.name}-config"),
        "data": config_data(spec),
    }


def service_account(spec: KubeSpec) -> dict[str, Any]:
    assert spec.service_account is not None
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(spec, spec.service_account, annotations=dict(spec.annotations)),
        "automountServiceAccountToken": False,
    }


def render_manifests(spec: KubeSpec) -> dict[str, Mapping[str, Any]]:
    """Each manifest by its file name, in the order to apply them."""
    manifests: dict[str, Mapping[str, Any]] = {}
    if spec.service_account:
        manifests["serviceaccount.yaml"] = service_account(spec)
    manifests.update(
        {
            "configmap.yaml": config_map(spec),
            "deployment.yaml": deployment(spec),
            "service.yaml": service(spec),
            "hpa.yaml": autoscaler(spec),
            "pdb.yaml": disruption_budget(spec),
            "networkpolicy.yaml": network_policy(spec),
            "servicemonitor.yaml": service_monitor(spec),
        }
    )
    return manifests

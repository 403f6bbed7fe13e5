"""What `shipyard k8s` writes, run as real pods by `podman kube play` from the image `shipyard
build` makes: the Deployment with its ConfigMap and a Secret, with the security context as
written. It needs podman, runc and that image (`scripts/k8s-podman-check.sh` builds it and runs
this test); without them it skips, saying which is missing.

`podman kube play` (4.3, Debian 12) ignores some fields the manifests carry, so this test cannot
see them at work: replicas (one pod), strategy, topologySpreadConstraints, the readiness and
startup probes, the preStop hook, terminationGracePeriodSeconds, automountServiceAccountToken
and enableServiceLinks. It maps the liveness probe to a health check, but a probe naming its
port (`port: http`) becomes port 0 there, and its health checks need systemd timers, absent here:
no health check runs. The pod's port is reached through a `hostPort` on `hostIP: 127.0.0.1`,
added here to a copy of the Deployment.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from podman_support import IMAGE, podman, podman_environment
from servers import free_port
from shipyard.deploy import contract, yaml_text

ROOT = Path(__file__).resolve().parents[2]
SHIPYARD = Path(sys.executable).with_name("shipyard")
READY_TIMEOUT_S = 180
ADMIN_TOKEN = "a-token-for-this-test-only"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return podman_environment(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`shipyard k8s` of the model the image holds (examples/train_iris.py, as the image's build)."""
    work = tmp_path_factory.mktemp("k8s-podman")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env["SHIPYARD_HOME"] = str(work / "home")
    subprocess.run([sys.executable, str(ROOT / "examples" / "train_iris.py")], env=env, cwd=work, check=True)
    out = work / "manifests"
    command = [
        str(SHIPYARD),
        "k8s",
        "iris@production",
        "--image",
        IMAGE,
        "--out",
        str(out),
        "--replicas",
        "1",
        "--min",
        "1",
    ]
    subprocess.run(command, env=env, check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def pod(manifests: Path, podman_env: dict[str, str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Deployment played with its ConfigMap and a Secret; its URL, and the Deployment."""
    deployment = yaml.safe_load((manifests / "deployment.yaml").read_text())
    port = free_port()
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    for entry in server["ports"]:
        if entry["name"] == "http":
            entry.update(hostIP="127.0.0.1", hostPort=port)
    # podman 4.3 reads a secretKeyRef from its own secret store, where a Kubernetes Secret is
    # its `data` as JSON (a Secret document in the played file is stored in a form it cannot read).
    secret = server["env"][0]["valueFrom"]["secretKeyRef"]["name"]
    data = manifests / "secret.json"
    data.write_text(json.dumps({"admin-token": base64.b64encode(ADMIN_TOKEN.encode()).decode()}))
    podman("secret", "create", secret, str(data), env=podman_env)
    play = manifests / "play.yaml"
    play.write_text(yaml_text.dump(deployment))
    result = podman(
        "kube",
        "play",
        "--configmap",
        str(manifests / "configmap.yaml"),
        str(play),
        env=podman_env,
        check=False,
    )
    try:
        assert result.returncode == 0, result.stderr
        yield f"http://127.0.0.1:{port}", deployment
    finally:
        podman("kube", "down", str(play), env=podman_env, check=False)
        podman("secret", "rm", secret, env=podman_env, check=False)


def _container(deployment: dict[str, Any]) -> str:
    # podman names a Deployment's pod DEPLOYMENT-pod-0, and its containers POD-CONTAINER.
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    return f"{deployment['metadata']['name']}-pod-0-{server['name']}"


def test_the_pod_becomes_ready_once_the_model_loads_and_predicts(pod: tuple[str, dict[str, Any]]) -> None:
    url, _ = pod
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(base_url=url, timeout=5) as client:
        while True:
            try:
                ready = client.get("/readyz")
                if ready.status_code == 200:
                    break
                assert ready.status_code == 503  # up, still loading
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the pod was not ready in time"
            time.sleep(0.5)
        assert ready.json()["models"]["iris"]["state"] == "ready"
        body = {
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]
        }
        response = client.post("/v2/models/iris/infer", json=body)
        assert response.status_code == 200, response.text
        label = next(o for o in response.json()["outputs"] if o["name"] == "label")
        assert label["data"] == [0]


def test_the_security_context_holds_in_the_pod(
    pod: tuple[str, dict[str, Any]], podman_env: dict[str, str]
) -> None:
    _, deployment = pod
    name = _container(deployment)
    uid = podman("exec", name, "id", "-u", env=podman_env).stdout.strip()
    assert uid == str(contract.UID)
    read_only = podman("exec", name, "touch", "/opt/shipyard/x", env=podman_env, check=False)
    assert read_only.returncode != 0 and "Read-only file system" in read_only.stderr
    assert podman("exec", name, "touch", "/tmp/x", env=podman_env).returncode == 0  # the emptyDir
    status = podman("exec", name, "cat", "/proc/1/status", env=podman_env).stdout
    capabilities = {
        line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Cap")
    }
    assert int(capabilities["CapEff"], 16) == 0 and int(capabilities["CapBnd"], 16) == 0
    settings = podman("exec", name, "printenv", "SHIPYARD_SERVE__GRACE_PERIOD_S", env=podman_env).stdout
    assert settings.strip() == "30"  # from the ConfigMap
    token = podman("exec", name, "printenv", "SHIPYARD_SERVE__ADMIN_TOKEN", env=podman_env).stdout
    assert token.strip() == ADMIN_TOKEN  # from the Secret

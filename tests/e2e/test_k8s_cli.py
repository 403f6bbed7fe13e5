"""`shipyard k8s` as a user runs it (in-process): every manifest it writes validated offline as a
cluster would (manifest_schemas.py), the Helm chart linted and rendered by Helm's own engine to
the same manifests, KServe's runtime script run for real, and each bad input one line."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import kubernetes_validate
import pytest

from manifest_schemas import by_identity, helm_lint, helm_render, load_folder, validate
from servers import free_port
from shipyard.cli.main import main
from shipyard.deploy import contract, kserve
from shipyard.monitor import metrics
from shipyard.registry import Registry
from shipyard.settings import ServeSettings

NAMESPACE = "ml-serving"
IMAGE = "registry.example.com/shipyard-iris:2"
INVALID = (kubernetes_validate.ValidationError, jsonschema.ValidationError)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, onnx_path: Path, skops_path: Path) -> Path:
    home = tmp_path_factory.mktemp("k8s-home")
    with Registry(home) as registry:
        registry.push("iris", onnx_path)
        registry.push("iris", onnx_path, alias="production", tags={"copy": "2"})
        registry.push("forest_v2", skops_path)
    return home


def shipyard(home: Path, *args: str | Path) -> tuple[int, str, str]:
    """`shipyard --home HOME ARGS` in-process, with its output captured."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--home", str(home), *map(str, args)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def written(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s-out") / "manifests"
    code, stdout, err = shipyard(
        home, "k8s", "iris@production", "forest_v2", "--image", IMAGE, "--out", out,
        "--namespace", NAMESPACE, "--kserve", "--helm", "--min", "2", "--max", "6", "--cpu", "500m",
    )  # fmt: skip
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}: ")
    return out


@pytest.fixture(scope="module")
def docs(written: Path) -> dict[str, dict[str, Any]]:
    return load_folder(written)


def test_it_writes_every_resource_and_a_kustomization(docs: dict[str, dict[str, Any]]) -> None:
    assert sorted(docs) == [
        "configmap.yaml", "deployment.yaml", "hpa.yaml", "kserve/inferenceservice.yaml",
        "kserve/servingruntime.yaml", "kustomization.yaml", "networkpolicy.yaml", "pdb.yaml",
        "service.yaml", "servicemonitor.yaml",
    ]  # fmt: skip
    kustomization = docs["kustomization.yaml"]
    assert [p for p in kustomization["resources"]] == [
        "configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml",
        "networkpolicy.yaml", "servicemonitor.yaml",
    ]  # fmt: skip
    assert all(d["metadata"]["namespace"] == NAMESPACE for p, d in docs.items() if p != "kustomization.yaml")


@pytest.mark.parametrize(
    "path",
    [
        "configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "networkpolicy.yaml",
        "servicemonitor.yaml", "kserve/servingruntime.yaml", "kserve/inferenceservice.yaml",
    ],
)  # fmt: skip
def test_each_manifest_is_valid_for_every_kubernetes_version_named(
    docs: dict[str, dict[str, Any]], path: str
) -> None:
    validate(docs[path])


def test_the_deployment_runs_the_image_shipyard_build_makes(docs: dict[str, dict[str, Any]]) -> None:
    deployment = docs["deployment.yaml"]
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    generic = contract.PLATFORMS["generic"]
    assert server["image"] == IMAGE
    assert server["command"] == list(generic.entrypoint)  # the image's ENTRYPOINT, binding 0.0.0.0
    assert "0.0.0.0" in server["command"]
    assert server["args"] == ["iris:2", "forest_v2:1"]  # pinned, as the image's CMD
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"http": generic.port, "grpc": 8001}
    assert pod["securityContext"]["runAsUser"] == contract.UID
    assert deployment["metadata"]["annotations"]["shipyard.io/digests"].startswith("iris:2=sha256:")


def test_the_deployment_is_probed_drained_and_hardened(docs: dict[str, dict[str, Any]]) -> None:
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = server["startupProbe"]
    # The documented rule: 30 s plus 1 s per 25 MB of artifact (these are a few kB).
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    pause = server["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] == ServeSettings().grace_period_s + int(pause[1])
    context = server["securityContext"]
    assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert {"/tmp", "/var/cache/shipyard"} <= mounts
    assert (
        server["resources"]["requests"] == server["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}
    )
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} >= {"kubernetes.io/hostname"}


def test_settings_go_in_the_configmap_and_secrets_are_only_referenced(
    docs: dict[str, dict[str, Any]],
) -> None:
    data = docs["configmap.yaml"]["data"]
    assert data["SHIPYARD_SERVE__GRACE_PERIOD_S"] == "30"
    assert all(key.startswith(("SHIPYARD_", "XDG_")) for key in data)
    (server,) = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    assert server["envFrom"] == [{"configMapRef": {"name": "shipyard-iris-forest-v2-config"}}]
    for variable in server["env"]:
        assert "value" not in variable  # never a secret's value
        assert variable["valueFrom"]["secretKeyRef"]["name"] == "shipyard-iris-forest-v2-secrets"


def test_the_autoscaler_reads_metrics_the_server_exports(docs: dict[str, dict[str, Any]]) -> None:
    hpa = docs["hpa.yaml"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    kinds = {m["type"]: m for m in hpa["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Pods"]["pods"]["metric"]["name"] == metrics.IN_FLIGHT._name
    monitor = docs["servicemonitor.yaml"]["spec"]
    assert monitor["endpoints"][0] == {
        "port": "http",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
    }
    assert docs["pdb.yaml"]["spec"]["maxUnavailable"] == 1


def test_kserve_runtime_declares_the_image_formats_and_v2(docs: dict[str, dict[str, Any]]) -> None:
    runtime = docs["kserve/servingruntime.yaml"]["spec"]
    assert runtime["protocolVersions"] == ["v2"]
    assert {f["name"] for f in runtime["supportedModelFormats"]} == {"shipyard", "onnx", "sklearn"}
    service = docs["kserve/inferenceservice.yaml"]["spec"]["predictor"]["model"]
    assert service == {
        "modelFormat": {"name": "shipyard"},
        "runtime": "shipyard-iris-forest-v2",
        "protocolVersion": "v2",
    }


@pytest.mark.parametrize(
    ("path", "corrupt"),
    [
        # A typo'd field name: strict schemas refuse fields Kubernetes does not know.
        (
            "deployment.yaml",
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessprobe={}),
        ),
        ("deployment.yaml", lambda d: d["spec"].update(replicas="two")),
        ("service.yaml", lambda d: d["spec"]["ports"][0].update(port="http")),
        ("hpa.yaml", lambda d: d["spec"]["metrics"][0].update(type=None)),
        ("servicemonitor.yaml", lambda d: d["spec"]["endpoints"][0].update(interval="30 seconds")),
        (
            "kserve/inferenceservice.yaml",
            lambda d: d["spec"]["predictor"]["model"].update(protocolVersion="v3"),
        ),
        ("kserve/servingruntime.yaml", lambda d: d["spec"]["containers"][0].update(imagePullPolicy=1)),
    ],
)
def test_a_corrupted_manifest_fails_validation(
    docs: dict[str, dict[str, Any]], path: str, corrupt: Any
) -> None:
    doc = copy.deepcopy(docs[path])
    corrupt(doc)
    with pytest.raises(INVALID):
        validate(doc)


def test_a_render_change_that_breaks_a_manifest_fails(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check the tests above make catches a broken renderer, not only a hand-edited file."""
    from shipyard.deploy import kube

    original = kube.container
    monkeypatch.setattr(kube, "container", lambda spec: {**original(spec), "readOnlyRootFilesystem": True})
    code, _, err = shipyard(home, "k8s", "iris", "--image", IMAGE, "--out", tmp_path / "broken")
    assert code == 0, err
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesystem"):
        validate(load_folder(tmp_path / "broken")["deployment.yaml"])


def test_the_helm_chart_lints_and_renders_the_same_manifests(
    written: Path, docs: dict[str, dict[str, Any]]
) -> None:
    report = helm_lint(written / "chart", NAMESPACE)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report
    rendered = helm_render(written / "chart", "any-release", NAMESPACE)
    for doc in rendered:
        validate(doc)
    assert by_identity(rendered) == by_identity(list(docs.values()))


def test_the_chart_values_change_what_it_renders(written: Path) -> None:
    values = {"replicas": 4, "resources": {"cpu": "2", "memory": "8Gi"}, "kserve": {"enabled": False}}
    rendered = by_identity(helm_render(written / "chart", "r", NAMESPACE, values))
    assert ("InferenceService", "shipyard-iris-forest-v2") not in rendered
    deployment = rendered[("Deployment", "shipyard-iris-forest-v2")]
    validate(deployment)
    assert deployment["spec"]["replicas"] == 4
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "cpu": "2",
        "memory": "8Gi",
    }
    with pytest.raises(INVALID):  # a value of the wrong type gives a manifest the cluster refuses
        validate(by_identity(helm_render(written / "chart", "r", NAMESPACE, {"replicas": "two"}))[
            ("Deployment", "shipyard-iris-forest-v2")
        ])  # fmt: skip


def test_a_shared_registry_with_workload_identity(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    code, _, err = shipyard(
        home, "k8s", "iris@production", "--image", IMAGE, "--out", out, "--helm", "--shared-registry",
        "--artifact-url", "s3://models/shipyard", "--service-account", "shipyard-reader",
        "--annotation", "azure.workload.identity/client-id=00000000-0000-0000-0000-000000000000",
        "--memory", "2Gi", "--replicas", "3",
    )  # fmt: skip
    assert code == 0, err
    docs = load_folder(out)
    for doc in docs.values():
        if doc["kind"] != "Kustomization":
            validate(doc)
    pod = docs["deployment.yaml"]["spec"]["template"]
    (server,) = pod["spec"]["containers"]
    assert server["args"] == ["iris@production"]  # the alias is followed as it moves
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in server["env"]}
    assert refs["SHIPYARD_REGISTRY_URL"] == {
        "name": "shipyard-iris-secrets",
        "key": "registry-url",
        "optional": False,
    }
    assert refs["AWS_SECRET_ACCESS_KEY"]["optional"] is True
    assert docs["configmap.yaml"]["data"]["SHIPYARD_ARTIFACT_URL"] == "s3://models/shipyard"
    assert pod["spec"]["serviceAccountName"] == "shipyard-reader"
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    account = docs["serviceaccount.yaml"]
    assert account["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": "00000000-0000-0000-0000-000000000000"
    }
    assert helm_lint(out / "chart", "default")["errors"] == []
    assert by_identity(helm_render(out / "chart", "x", "default")) == by_identity(list(docs.values()))


def _one_line(code: int, err: str, expected_code: int, fragment: str) -> None:
    assert code == expected_code, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], err


@pytest.mark.parametrize(
    ("args", "exit_code", "fragment"),
    [
        (["--cpu", "2x"], 2, "--cpu '2x' is not a Kubernetes quantity"),
        (["--memory", "12Q"], 2, "--memory '12Q' is not a Kubernetes quantity"),
        (["--cpu", "0"], 2, "must be more than zero"),
        (["--min", "5", "--max", "3"], 2, "--min 5 is more than --max 3"),
        (["--replicas", "20", "--max", "10"], 2, "outside --min"),
        (["--namespace", "ML_Serving"], 2, "--namespace 'ML_Serving' is not a name Kubernetes accepts"),
        (["--namespace", "a" * 64], 2, "at most 63"),
        (["--name", "9lives"], 2, "starting with a lowercase letter"),
        (["--annotation", "iam.gke.io/gcp-service-account=x@y"], 2, "--service-account"),
        (["--shared-registry"], 2, "--artifact-url"),
    ],
)
def test_bad_options_are_one_line(
    home: Path, tmp_path: Path, args: list[str], exit_code: int, fragment: str
) -> None:
    out = tmp_path / "out"
    code, _, err = shipyard(home, "k8s", "iris", "--image", IMAGE, "--out", out, *args)
    _one_line(code, err, exit_code, fragment)
    assert not out.exists()


def test_an_unknown_reference_is_one_line(home: Path, tmp_path: Path) -> None:
    code, _, err = shipyard(home, "k8s", "irs", "--image", IMAGE, "--out", tmp_path / "out")
    _one_line(code, err, 3, "irs")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging folder left behind


def test_a_folder_that_is_not_empty_needs_force(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = shipyard(home, "k8s", "iris", "--image", IMAGE, "--out", out)
    _one_line(code, err, 4, "exists and is not empty")
    code, _, err = shipyard(home, "k8s", "iris", "--image", IMAGE, "--out", out, "--force")
    _one_line(code, err, 4, "written by `shipyard k8s`, so --force does not replace it")
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert shipyard(home, "k8s", "iris", "--image", IMAGE, "--out", out)[0] == 0
    code, _, err = shipyard(home, "k8s", "iris", "--image", IMAGE, "--out", out, "--replicas", "3", "--force")
    assert code == 0, err
    assert load_folder(out)["deployment.yaml"]["spec"]["replicas"] == 3


@pytest.mark.slow
def test_the_kserve_runtime_serves_a_storage_uri_model(
    docs: dict[str, dict[str, Any]], onnx_path: Path, tmp_path: Path
) -> None:
    """The ServingRuntime's own command, run as KServe runs it after the storage initializer
    copied a user's model.onnx into the model folder: it pushes, serves, and predicts over V2."""
    (runtime,) = docs["kserve/servingruntime.yaml"]["spec"]["containers"]
    models = tmp_path / "mnt-models"
    models.mkdir()
    (models / "model.onnx").write_bytes(onnx_path.read_bytes())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update({e["name"]: e["value"] for e in runtime["env"] if "value" in e})
    env.update(
        SHIPYARD_MODEL_DIR=str(models),
        SHIPYARD_CACHE_DIR=str(tmp_path / "cache"),
        SHIPYARD_PREDICTION_LOG__PATH=str(tmp_path / "predictions"),
        SHIPYARD_SERVE__PORT=str(port),
        SHIPYARD_SERVE__GRPC_PORT="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    args = [a.replace("{{.Name}}", "sklearn-iris") for a in runtime["args"]]
    assert args[0] == kserve.RUNTIME_SCRIPT
    log = tmp_path / "runtime.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([*runtime["command"], *args], env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            body = {
                "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]
            }
            response = client.post("/v2/models/sklearn-iris/infer", json=body)
            assert response.status_code == 200, response.text
            outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
            assert outputs["label"] == [0]
    finally:
        proc.terminate()
        proc.wait(30)


def test_every_chart_value_is_documented(written: Path) -> None:
    """values.yaml says what each top-level value does, in a comment right above it."""
    lines = (written / "chart" / "values.yaml").read_text().splitlines()
    keys = [i for i, line in enumerate(lines) if line[:1].isalpha()]
    assert len(keys) > 20
    assert [lines[i] for i in keys if not lines[i - 1].startswith("#")] == []


def test_json_names_what_was_written(home: Path, tmp_path: Path) -> None:
    import json

    code, stdout, err = shipyard(home, "k8s", "iris:1", "--image", IMAGE, "--out", tmp_path / "o", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["name"] == "shipyard-iris" and result["models"] == ["iris:1"]
    assert sorted(result["files"]) == sorted(
        p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").rglob("*.yaml")
    )

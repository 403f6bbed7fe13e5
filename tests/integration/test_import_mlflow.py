"""`shipyard import mlflow SOURCE`: MLflow models as Shipyard versions, through the CLI.

A model folder written by hand (MLmodel + an ONNX file) needs no MLflow. The rest run against a
real MLflow tracking server (SQLite backend, artifact proxy) on loopback, started from its own
venv (`scripts/install-mlflow.sh`), with models logged by `mlflow_log_models.py` as a user would.
Each bad source is one line, its documented exit code, and leaves the registry as it was.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from import_support import contents, home_with_one_model, run_cli

from servers import free_port
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_models import tiny_onnx

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_VENV = ROOT / ".venv-mlflow"
LOG_SCRIPT = Path(__file__).with_name("mlflow_log_models.py")
ROW = [5.1, 3.5, 1.4, 0.2]

MLMODEL = """\
flavors:
  onnx:
    data: model.onnx
    onnx_version: 1.17.0
  python_function:
    data: model.onnx
    loader_module: mlflow.onnx
mlflow_version: 3.17.2
saved_input_example_info:
  artifact_path: input_example.json
  type: ndarray
signature:
  inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]'
"""


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "iris-model"
    folder.mkdir()
    (folder / "MLmodel").write_text(MLMODEL)
    (folder / "model.onnx").write_bytes(tiny_onnx("mlflow folder"))
    (folder / "input_example.json").write_text(json.dumps({"inputs": [ROW]}))
    return folder


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return home_with_one_model(tmp_path)


# --- a model folder, no MLflow needed ---------------------------------------------------------


def test_model_folder_imports_with_mlmodel_and_input_example(
    model_folder: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, home, "import", "mlflow", model_folder, "--name", "iris", "--json")
    assert code == 0, err
    [pushed] = json.loads(out)
    assert pushed["ref"] == "iris:1"
    assert pushed["tags"]["source"] == "mlflow"
    assert pushed["tags"]["mlflow_flavor"] == "onnx"
    with Registry(settings=Settings.load(home=home)) as registry:
        version = registry.resolve("iris:1")
        root = registry.artifact_path(version)
        assert (root / "mlflow" / "MLmodel").read_text() == MLMODEL
        assert json.loads((root / "mlflow" / "input_example.json").read_text()) == {"inputs": [ROW]}
    code, out, err = run_cli(capsys, home, "predict", "iris:1", "-i", json.dumps({"inputs": [ROW]}))
    assert code == 0, err
    assert json.loads(out)["outputs"]["label"] == [0]


def test_folder_name_is_the_default_model_name(
    model_folder: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, home, "import", "mlflow", model_folder / "MLmodel")
    assert code == 0, err
    assert out.startswith("imported iris-model:1 (onnx, from ")


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (lambda f: (f / "MLmodel").unlink(), 2, "MLmodel is missing"),
        (lambda f: (f / "model.onnx").unlink(), 2, "the onnx model model.onnx that MLmodel names is missing"),
        (
            lambda f: (f / "MLmodel").write_text(
                "flavors:\n  pytorch: {model_data: data}\n  python_function: {}\n"
            ),
            2,
            "flavor pytorch is not supported",
        ),
        (lambda f: (f / "MLmodel").write_text("flavors: [unclosed\n"), 2, "is not valid YAML"),
        (
            lambda f: (f / "MLmodel").write_text(
                "flavors:\n  sklearn: {pickled_model: model.onnx, serialization_format: cloudpickle}\n"
            ),
            5,
            "stored as a pickle",
        ),
        (
            lambda f: (f / "MLmodel").write_text("flavors:\n  onnx: {data: ../../existing.onnx}\n"),
            2,
            "leads out of the model folder",
        ),
        (lambda f: (f / "model.onnx").write_bytes(b"not an onnx file"), 2, "is not a model file"),
    ],
    ids=["no-mlmodel", "no-model-file", "unsupported-flavour", "bad-yaml", "pickle", "escape", "not-onnx"],
)
def test_bad_folder_is_one_line_and_imports_nothing(
    model_folder: Path, home: Path, capsys: pytest.CaptureFixture[str], change, code: int, message: str
) -> None:
    change(model_folder)
    got, out, err = run_cli(capsys, home, "import", "mlflow", model_folder, "--name", "iris")
    assert (got, out) == (code, "")
    assert message in err and err.startswith("error: ") and err.count("\n") == 1
    assert contents(home) == [("existing", 1)]


def test_python_function_model_is_refused_even_trusted(
    model_folder: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (model_folder / "MLmodel").write_text(
        "flavors:\n  python_function: {loader_module: mlflow.pyfunc.model, python_model: model.onnx}\n"
    )
    code, _, err = run_cli(capsys, home, "import", "mlflow", model_folder)
    assert code == 5 and "--trust" in err
    code, _, err = run_cli(capsys, home, "import", "mlflow", model_folder, "--trust")
    assert code == 2 and "runs only inside MLflow" in err
    assert contents(home) == [("existing", 1)]


def test_uri_without_tracking_server(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = run_cli(capsys, home, "import", "mlflow", "models:/iris@champion")
    assert code == 2 and "--tracking-uri" in err
    # Nothing listens on this port: the error names the URL, exit code 6.
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    code, _, err = run_cli(capsys, home, "import", "mlflow", "models:/iris@champion")
    assert code == 6 and f"cannot reach the MLflow tracking server at {url}" in err
    assert contents(home) == [("existing", 1)]


def test_a_remote_server_cannot_name_this_machines_files(tmp_path: Path) -> None:
    """A `file:` artifact location is the tracking server's own disk: read only when that server
    runs on this machine."""
    from shipyard.errors import InvalidInputError
    from shipyard.importers.mlflow import _Tracking
    from shipyard.settings import PushSettings

    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "MLmodel").write_text("flavors: {}\n")
    remote = _Tracking("http://mlflow.example:5000", PushSettings())
    with pytest.raises(InvalidInputError, match="--serve-artifacts"):
        remote.download(secret.as_uri(), tmp_path / "copied")
    assert not (tmp_path / "copied").exists()
    local = _Tracking("http://127.0.0.1:5000", PushSettings())
    assert (local.download(secret.as_uri(), tmp_path / "copied") / "MLmodel").exists()


# --- a real tracking server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A tracking server with `iris` (ONNX, v1 champion, v2 challenger), `iris-skops` and
    `iris-pickle` registered; yields its URL and the run ids."""
    if not (MLFLOW_VENV / "bin" / "mlflow").exists():
        pytest.skip(f"MLflow is not installed in {MLFLOW_VENV}: run scripts/install-mlflow.sh")
    work = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # No telemetry, and no network: the machine may have none.
    env = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "PATH": "/usr/bin:/bin"}
    log = (work / "server.log").open("w")
    server = subprocess.Popen(
        [
            MLFLOW_VENV / "bin" / "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{work / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(work / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        # Its own process group: the server starts uvicorn workers and a job consumer, all
        # stopped together at the end.
        start_new_session=True,
    )
    try:
        _wait_healthy(url, server, work / "server.log")
        runs_file = work / "runs.json"
        subprocess.run(
            [MLFLOW_VENV / "bin" / "python", LOG_SCRIPT, url, runs_file],
            check=True,
            capture_output=True,
            env=env,
            cwd=work,
            timeout=300,
        )
        yield url, json.loads(runs_file.read_text())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited {server.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling for readiness, not waiting in place of an event
    pytest.fail(f"mlflow server not healthy within 120 s: {log.read_text()[-2000:]}")


@pytest.mark.slow
def test_registered_versions_and_aliases_come_along(
    mlflow_server: tuple[str, dict[str, str]], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, runs = mlflow_server
    code, out, err = run_cli(
        capsys, home, "import", "mlflow", "models:/iris", "--tracking-uri", url, "--json"
    )
    assert code == 0, err
    pushed = json.loads(out)
    assert [(v["ref"], v["tags"]["mlflow_version"], v["aliases"]) for v in pushed] == [
        ("iris:1", "1", ["champion"]),
        ("iris:2", "2", ["challenger"]),
    ]
    with Registry(settings=Settings.load(home=home)) as registry:
        first = registry.resolve("iris@champion")
        assert first.version == 1
        assert first.metrics["loss"] == pytest.approx(0.1)  # the latest step's value
        assert first.metrics["accuracy"] > 0.8
        assert first.params == {"C": "0.05", "max_iter": "500"}
        assert first.tags["mlflow_run_id"] == runs["iris-1"]
        assert first.tags["mlflow_run.team"] == "vision"
        assert registry.resolve("iris@challenger").params["C"] == "1.0"
        assert {t.name for t in first.signature.inputs} == {"X"}
    code, out, err = run_cli(capsys, home, "predict", "iris@champion", "-i", json.dumps({"inputs": [ROW]}))
    assert code == 0, err
    assert json.loads(out)["outputs"]["label"] == [0]


@pytest.mark.slow
def test_one_version_by_alias_number_or_run(
    mlflow_server: tuple[str, dict[str, str]], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, runs = mlflow_server
    code, out, err = run_cli(
        capsys, home, "import", "mlflow", "models:/iris@challenger", "--tracking-uri", url
    )
    assert code == 0, err
    assert out.startswith("imported iris:1 (onnx, from models:/iris/2)") and "aliases: challenger" in out
    code, out, err = run_cli(capsys, home, "import", "mlflow", "models:/iris/1", "--tracking-uri", url)
    assert code == 0, err
    assert out.startswith("imported iris:2 (onnx, from models:/iris/1)")
    run = f"runs:/{runs['iris-2']}/model"
    code, out, err = run_cli(
        capsys, home, "import", "mlflow", run, "--name", "from-run", "--tracking-uri", url
    )
    assert code == 0, err
    with Registry(settings=Settings.load(home=home)) as registry:
        version = registry.resolve("from-run:1")
        assert version.params["C"] == "1.0"
        assert version.digest == registry.resolve("iris:1").digest  # the same model as v2's


@pytest.mark.slow
def test_skops_imports_and_pickle_needs_trust(
    mlflow_server: tuple[str, dict[str, str]], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = mlflow_server
    code, _, err = run_cli(capsys, home, "import", "mlflow", "models:/iris-skops", "--tracking-uri", url)
    assert code == 0, err
    code, out, err = run_cli(capsys, home, "predict", "iris-skops:1", "-i", json.dumps({"inputs": [ROW]}))
    assert code == 0, err
    assert np.asarray(json.loads(out)["outputs"]["label"]).tolist() == [0]

    code, out, err = run_cli(capsys, home, "import", "mlflow", "models:/iris-pickle", "--tracking-uri", url)
    assert (code, out) == (5, "") and "--trust" in err and err.count("\n") == 1
    with Registry(settings=Settings.load(home=home)) as registry:
        [refused] = registry.audit_log(action="push.refused")
        assert refused.target == "iris-pickle"
    code, _, err = run_cli(
        capsys, home, "import", "mlflow", "models:/iris-pickle", "--tracking-uri", url, "--trust"
    )
    assert code == 0, err
    with Registry(settings=Settings.load(home=home)) as registry:
        assert registry.resolve("iris-pickle:1").trusted


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("models:/nope", "has no versions of model 'nope'"),
        ("models:/iris@nope", "has no alias 'nope' of model 'iris'"),
        ("models:/iris/7", "has no version 7 of model 'iris'"),
        ("runs:/0123456789abcdef/model", "has no run 0123456789abcdef"),
    ],
)
def test_missing_mlflow_objects_exit_3(
    mlflow_server: tuple[str, dict[str, str]],
    home: Path,
    capsys: pytest.CaptureFixture[str],
    source: str,
    message: str,
) -> None:
    url, _ = mlflow_server
    code, out, err = run_cli(capsys, home, "import", "mlflow", source, "--tracking-uri", url, "--name", "x")
    assert (code, out) == (3, ""), err
    assert message in err and url in err
    assert contents(home) == [("existing", 1)]

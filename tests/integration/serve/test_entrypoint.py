"""`shipyard entrypoint` started as each platform starts a container's ENTRYPOINT: its arguments,
its variables (the port a free one, through the platform's own variable), its probe, a prediction
through its contract, then SIGTERM and exit code 0. The models are a read-only folder holding a
registry, as `shipyard build` embeds one and as platforms mount model data."""

from __future__ import annotations

import csv
import io
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from servers import SHIPYARD, Server, free_port, server_env
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_models import tiny_onnx

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
SCORES = [0.1 * sum(row) for row in ROWS]  # tiny_onnx: every probability is 0.1 * sum(row); label 0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`models/iris/` holds a registry with iris:1, read-only (as SageMaker and Azure mount it)."""
    root = tmp_path_factory.mktemp("entrypoint-models")
    (root / "iris.onnx").write_bytes(tiny_onnx("entrypoint"))
    folder = root / "models" / "iris"
    with Registry(settings=Settings.load(home=folder)) as registry:
        registry.push("iris", root / "iris.onnx")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@contextmanager
def entrypoint(
    tmp_path: Path, args: list[str], env: dict[str, str], port: int, probe: Callable[[httpx.Client], bool]
) -> Iterator[Server]:
    """`shipyard entrypoint ARGS` with `env`; yields once `probe` passes; must exit 0 on SIGTERM."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    command = [str(SHIPYARD), "entrypoint", *args]
    with (log_dir / "stdout.txt").open("wb") as out, (log_dir / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=server_env(tmp_path / "home", **env))
    server = Server(proc, f"http://127.0.0.1:{port}", log_dir)
    try:
        server.wait_until(probe)
        first = server.stdout().splitlines()[0]
        assert first.startswith("shipyard: serving iris:1 on http://0.0.0.0:"), first
        yield server
    except BaseException:
        server.kill()
        raise
    code = server.stop()
    assert code == 0, f"exit code {code} after SIGTERM; stderr:\n{server.stderr()}"
    assert "Traceback" not in server.stderr()


def test_sagemaker(tmp_path: Path, models: Path) -> None:
    port = free_port()
    env = {"SAGEMAKER_BIND_TO_PORT": str(port), "SHIPYARD_MODEL_DIR": str(models)}
    with (
        entrypoint(tmp_path, ["serve"], env, port, lambda c: c.get("/ping").status_code == 200) as server,
        server.client() as http,
    ):
        csv_rows = "".join(",".join(map(str, row)) + "\n" for row in ROWS)
        answer = http.post(
            "/invocations",
            content=csv_rows,
            headers={
                "content-type": "text/csv",
                "accept": "text/csv",
                "x-amzn-sagemaker-custom-attributes": "c=1",
            },
        )
        assert answer.status_code == 200, answer.text
        rows = [[float(v) for v in line] for line in csv.reader(io.StringIO(answer.text))]
        assert [row[0] for row in rows] == [0, 0]
        assert [row[1] for row in rows] == pytest.approx(SCORES, rel=1e-5)
        assert answer.headers["x-amzn-sagemaker-custom-attributes"] == "c=1"
        # SIGTERM with a request in flight (half its body sent): it is answered, then the server exits.
        assert drained(server, port, csv_rows.encode()).startswith(b"HTTP/1.1 200 ")
        server.proc.wait(30)
    assert "platform: sagemaker" in server.stdout()


def drained(server: Server, port: int, body: bytes) -> bytes:
    """The answer to an /invocations request whose body is finished only after SIGTERM."""
    head = (
        f"POST /invocations HTTP/1.1\r\nHost: sagemaker\r\nContent-Type: text/csv\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body[:10])
        time.sleep(0.3)  # the server has read the head and waits for the body
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_vertex(tmp_path: Path, models: Path) -> None:
    port = free_port()
    env = {
        "AIP_MODE": "PREDICTION",
        "AIP_HTTP_PORT": str(port),
        "AIP_HEALTH_ROUTE": "/v1/endpoints/7/deployedModels/3",
        "AIP_PREDICT_ROUTE": "/v1/endpoints/7/deployedModels/3:predict",
        "AIP_STORAGE_URI": str(models),  # a local path: read like a model folder
        "AIP_DEPLOYED_MODEL_ID": "3",
    }
    probe = env["AIP_HEALTH_ROUTE"]
    with (
        entrypoint(tmp_path, [], env, port, lambda c: c.get(probe).status_code == 200) as server,
        server.client() as http,
    ):
        answer = http.post(env["AIP_PREDICT_ROUTE"], json={"instances": ROWS, "parameters": {"t": 0}})
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        assert [p["probabilities"][0] for p in predictions] == pytest.approx(SCORES, rel=1e-5)
    assert "AIP_DEPLOYED_MODEL_ID ignored" in server.stderr()


def test_azure(tmp_path: Path, models: Path) -> None:
    port = free_port()
    # Azure mounts the registered model's folder inside AZUREML_MODEL_DIR.
    env = {"AZUREML_MODEL_DIR": str(models.parent), "SHIPYARD_SERVE__PORT": str(port)}
    with (
        entrypoint(tmp_path, [], env, port, lambda c: c.get("/").text == "Healthy") as server,
        server.client() as http,
    ):
        answer = http.post("/score", json={"input_data": ROWS})
        assert answer.status_code == 200, answer.text
        assert [p["probabilities"][2] for p in answer.json()] == pytest.approx(SCORES, rel=1e-5)


def test_generic(tmp_path: Path, models: Path) -> None:
    port = free_port()
    env = {"PORT": str(port), "SHIPYARD_MODEL_DIR": str(models), "SHIPYARD_SERVE__INSECURE": "true"}
    with (
        entrypoint(tmp_path, [], env, port, lambda c: c.get("/readyz").status_code == 200) as server,
        server.client() as http,
    ):
        answer = http.post("/v1/models/iris:predict", json={"instances": ROWS})
        assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("args", "environ", "fragment"),
    [
        (["--platform", "heroku"], {}, "unknown platform 'heroku'; choose one of sagemaker, vertex"),
        (["train"], {"SAGEMAKER_BIND_TO_PORT": "8080"}, "cannot train"),
        (["serve"], {}, "no models to serve"),
        (["serve", "--model-dir", "{empty}"], {}, "holds no Shipyard registry"),
        (["serve", "iris:9"], {"SHIPYARD_MODEL_DIR": "{models}"}, "iris:9"),
        (["--platform", "vertex"], {"AIP_HTTP_PORT": "http"}, "AIP_HTTP_PORT must be a port"),
        (["--platform", "generic"], {"SHIPYARD_MODEL_DIR": "{models}"}, "--insecure"),
    ],
    ids=["platform", "train", "no-models", "empty-dir", "unknown-ref", "bad-port", "generic-keyless"],
)
def test_refusals_are_one_line(
    tmp_path: Path,
    models: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    environ: dict[str, str],
    fragment: str,
) -> None:
    """Each refusal before anything binds: one `error:` line and a non-zero exit code."""
    from shipyard.cli.main import main

    for name in (
        "SAGEMAKER_BIND_TO_PORT",
        "AIP_HTTP_PORT",
        "AIP_MODE",
        "AZUREML_MODEL_DIR",
        "SHIPYARD_MODEL_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value.format(models=models))
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty") for a in args]
    assert main(["--home", str(tmp_path / "home"), "entrypoint", *argv]) != 0
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and fragment in errors[0], errors

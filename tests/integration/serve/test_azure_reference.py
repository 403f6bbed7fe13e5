"""Shipyard's Azure ML routes side by side with Azure's own inference server
(`azureml-inference-server-http`) running a scoring script over the same model in the same
AZUREML_MODEL_DIR: routes, status codes and bodies.

Optional: Azure's server pins pydantic 2.12 and OpenTelemetry 1.33, so it cannot share the
project's environment. The test runs when it is importable here, or when
AZUREML_SERVER_PYTHON names a Python that has it (with onnxruntime and numpy), e.g.
`python -m venv /tmp/az && /tmp/az/bin/pip install azureml-inference-server-http onnxruntime`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from servers import SHIPYARD, free_port, server_env
from shipyard.registry import Registry
from shipyard.settings import Settings
from tiny_models import tiny_onnx

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]

# The scoring script an Azure user writes for this model: the rows from `data` or `input_data`,
# the predictions returned as a list (Azure's server turns it into the JSON body).
SCORE_PY = """
    import json, os
    import numpy as np
    import onnxruntime

    def init():
        global session
        session = onnxruntime.InferenceSession(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.onnx"))

    def run(raw_data):
        body = json.loads(raw_data)
        rows = body["input_data"] if "input_data" in body else body["data"]
        if isinstance(rows, dict):
            rows = rows["data"]
        label, probabilities = session.run(None, {"X": np.asarray(rows, dtype=np.float32)})
        return [{"label": int(l), "probabilities": p.tolist()} for l, p in zip(label, probabilities)]
"""


def azure_python() -> str:
    python = os.environ.get("AZUREML_SERVER_PYTHON")
    if python:
        return python
    pytest.importorskip("azureml_inference_server_http")
    return sys.executable


@contextmanager
def started(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[httpx.Client]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text(errors="replace")
                try:
                    if client.get("/").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.1)
            yield client
    finally:
        proc.terminate()
        proc.wait(30)


def test_routes_codes_and_bodies_match_azures_server(tmp_path: Path) -> None:
    python = azure_python()
    model_dir = tmp_path / "azureml-models"
    model_dir.mkdir()
    (model_dir / "model.onnx").write_bytes(tiny_onnx("azure reference"))
    with Registry(settings=Settings.load(home=model_dir / "iris")) as registry:
        registry.push("iris", model_dir / "model.onnx")
    (tmp_path / "score.py").write_text(textwrap.dedent(SCORE_PY))

    azure_port, ours_port = free_port(), free_port()
    azure_command = [
        python, "-m", "azureml_inference_server_http", "--entry_script", str(tmp_path / "score.py"),
        "--model_dir", str(model_dir), "--port", str(azure_port), "--health_port", str(free_port()),
    ]  # fmt: skip
    azure_env = {k: v for k, v in os.environ.items() if not k.startswith(("AZUREML_", "AML_"))}
    ours_env = server_env(
        tmp_path / "home", AZUREML_MODEL_DIR=str(model_dir), SHIPYARD_SERVE__PORT=str(ours_port)
    )
    with (
        started(azure_command, azure_env, azure_port, tmp_path / "azure.log") as azure,
        started([str(SHIPYARD), "entrypoint"], ours_env, ours_port, tmp_path / "ours.log") as ours,
    ):
        # Same answers: the probe, and /score for each body shape Azure's clients send.
        for client in (azure, ours):
            probe = client.get("/")
            assert (probe.status_code, probe.text) == (200, "Healthy")
        for body in (
            {"data": ROWS},
            {"input_data": ROWS},
            {"input_data": {"columns": ["a", "b", "c", "d"], "index": [0, 1], "data": ROWS}},
        ):
            theirs, mine = azure.post("/score", json=body), ours.post("/score", json=body)
            assert theirs.status_code == mine.status_code == 200, (theirs.text, mine.text)
            assert theirs.headers["content-type"] == mine.headers["content-type"] == "application/json"
            got, expected = mine.json(), theirs.json()
            assert [r["label"] for r in got] == [r["label"] for r in expected]
            for row, reference in zip(got, expected, strict=True):
                assert row["probabilities"] == pytest.approx(reference["probabilities"], rel=1e-6)
        assert azure.get("/nope").status_code == ours.get("/nope").status_code == 404

        # Where they differ, on purpose: a malformed request is the client's fault here (4xx
        # naming the problem, with Azure's `message` key), where Azure's server can only report
        # that the scoring script raised (500).
        short = {"data": [[1.0, 2.0, 3.0]]}
        theirs, mine = azure.post("/score", json=short), ours.post("/score", json=short)
        assert (theirs.status_code, mine.status_code) == (500, 400)
        assert "message" in theirs.json() and "expected 4" in mine.json()["message"]
        text = {"content-type": "text/plain"}
        theirs, mine = (
            azure.post("/score", content=b"hello", headers=text),
            ours.post("/score", content=b"hello", headers=text),
        )
        assert (theirs.status_code, mine.status_code) == (500, 415)

"""API keys against a real `shipyard serve`, with the clients users have: the official openai
client (`api_key=` sends a Bearer header) and tritonclient (custom headers on each call)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from serve_support import ServeModels, push_file
from tritonclient.utils import InferenceServerException

from http_errors import assert_error
from servers import Server, run_to_exit
from shipyard.registry import Registry
from shipyard.settings import Settings


@pytest.fixture(scope="module")
def secured(
    serve_models: ServeModels, serve_launcher: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict[str, str]]]:
    """Its own home (keys in the shared one would turn auth on for every other test)."""
    home = tmp_path_factory.mktemp("auth-home")
    with Registry(settings=Settings.load(home=home)) as registry:
        push_file(registry, "iris-onnx", serve_models.onnx_bytes, tmp_path_factory.mktemp("auth-files"))
        keys = {
            name: registry.create_key(name, scopes)[1]
            for name, scopes in {
                "client": ["infer:iris-onnx", "read"],
                "reader": ["read"],
            }.items()
        }
    with serve_launcher(home, ["iris-onnx"]) as server:
        yield server, keys


def iris_input(serve_models: ServeModels) -> triton.InferInput:
    data = serve_models.x[:2].astype(np.float32)
    tensor = triton.InferInput("X", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def test_openai_client_sends_its_api_key(secured: tuple[Server, dict[str, str]]) -> None:
    import openai

    server, keys = secured
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["reader"], max_retries=0) as client:
        assert [m.id for m in client.models.list()] == ["iris-onnx"]
    with (
        openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="sy_0123456789abcdef_" + "A" * 43, max_retries=0
        ) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.models.list()


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_tritonclient_with_a_key_header(
    secured: tuple[Server, dict[str, str]], serve_models: ServeModels, header: str
) -> None:
    server, keys = secured
    value = f"Bearer {keys['client']}" if header == "Authorization" else keys["client"]
    client = triton.InferenceServerClient(url=server.host_port)
    try:
        result = client.infer("iris-onnx", [iris_input(serve_models)], headers={header: value})
        assert result.as_numpy("label").tolist() == serve_models.iris_v1.predict(serve_models.x[:2]).tolist()
        with pytest.raises(InferenceServerException, match="infer:iris-onnx"):
            reader = f"Bearer {keys['reader']}" if header == "Authorization" else keys["reader"]
            client.infer("iris-onnx", [iris_input(serve_models)], headers={header: reader})
        with pytest.raises(InferenceServerException, match="API key"):
            client.infer("iris-onnx", [iris_input(serve_models)])
    finally:
        client.close()


def test_probes_stay_open_and_the_rest_is_closed(secured: tuple[Server, dict[str, str]]) -> None:
    server, keys = secured
    with server.client() as http:
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/ping"):
            assert http.get(path).status_code == 200, path
        response = http.get("/metrics")
        assert_error(response, 401, "API key")
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert http.get("/metrics", headers={"Authorization": f"Bearer {keys['reader']}"}).status_code == 200
    for secret in keys.values():
        assert secret not in server.stderr() + server.stdout()


def test_a_non_loopback_address_without_keys_is_refused(tmp_path: Path) -> None:
    done = run_to_exit(tmp_path, ["iris"], args=["--host", "0.0.0.0"])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "shipyard keys create" in lines[0] and "--insecure" in lines[0], lines

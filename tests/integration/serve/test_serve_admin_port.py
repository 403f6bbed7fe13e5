"""`--admin-port`: management and /metrics answer on their own loopback port, and only there."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from serve_support import ADMIN_TOKEN, ServeModels

from http_errors import assert_error
from servers import Server

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
IRIS_ROW = {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}


def admin_url(server: Server) -> str:
    """The admin address the server announced (`  admin: URL (…)`)."""
    lines = [line for line in server.stdout().splitlines() if line.strip().startswith("admin:")]
    assert lines, server.stdout()
    return lines[0].split()[1]


@pytest.fixture(scope="module")
def split_server(serve_models: ServeModels, serve_launcher: Callable[..., Any]) -> Iterator[Server]:
    env = {"SHIPYARD_SERVE__ADMIN_TOKEN": ADMIN_TOKEN}
    with serve_launcher(serve_models.home, ["iris-onnx"], args=["--admin-port", "0"], env=env) as server:
        yield server


def test_the_main_port_serves_inference_but_not_management_or_metrics(split_server: Server) -> None:
    with split_server.client() as main:
        assert main.post("/v2/models/iris-onnx/infer", json=IRIS_ROW).status_code == 200
        assert_error(main.get("/metrics"), 404, "/metrics is served on the admin port")
        assert_error(main.post("/v2/repository/index", headers=AUTH), 404, "served on the admin port")
        load = main.post("/v2/repository/models/iris-onnx/load", headers=AUTH)
        assert_error(load, 404, "served on the admin port")


def test_the_admin_port_serves_management_metrics_and_probes_only(split_server: Server) -> None:
    url = admin_url(split_server)
    assert url.startswith("http://127.0.0.1:") and url != split_server.url
    with httpx.Client(base_url=url, timeout=30.0) as admin:
        metrics = admin.get("/metrics")
        assert metrics.status_code == 200 and "shipyard_" in metrics.text
        index = admin.post("/v2/repository/index", headers=AUTH)
        assert index.status_code == 200, index.text
        assert "iris-onnx" in [entry["name"] for entry in index.json()]
        assert admin.post("/v2/repository/models/iris-onnx/load", headers=AUTH).status_code == 200
        assert admin.get("/readyz").status_code == 200
        assert_error(admin.post("/v2/models/iris-onnx/infer", json=IRIS_ROW), 404, "admin port serves")
        assert_error(admin.post("/v2/repository/index"), 401, "Bearer")  # still behind the token


def test_with_several_workers_the_admin_port_refuses_load_and_unload(
    serve_models: ServeModels, serve_launcher: Callable[..., Any]
) -> None:
    env = {"SHIPYARD_SERVE__ADMIN_TOKEN": ADMIN_TOKEN}
    args = ["--admin-port", "0", "--workers", "2"]
    with serve_launcher(serve_models.home, ["iris-onnx"], args=args, env=env) as server:
        with server.client() as main:
            assert main.post("/v2/models/iris-onnx/infer", json=IRIS_ROW).status_code == 200
        with httpx.Client(base_url=admin_url(server), timeout=30.0) as admin:
            metrics = admin.get("/metrics")
            assert metrics.status_code == 200 and "shipyard_" in metrics.text
            assert admin.post("/v2/repository/index", headers=AUTH).status_code == 200
            unload = admin.post("/v2/repository/models/iris-onnx/unload", headers=AUTH)
            assert_error(unload, 409, "2 workers", "--workers 1")

"""Triton's system shared-memory extension with tritonclient's own utilities, over HTTP and gRPC,
against one real `shipyard serve` with API keys on: Triton's `simple_http_shm_client` and
`simple_grpc_shm_client` examples (inputs and outputs in regions), region status, and the checks
on names, offsets and sizes; registering needs the admin scope, as model management does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.utils.shared_memory as shm
from serve_support import push_file
from serve_support import triton_raises as fails
from test_serve_grpc import simple_onnx_bytes

from servers import Server
from shipyard.registry import Registry
from shipyard.settings import Settings

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)
TENSOR_BYTES = A.nbytes


@pytest.fixture(scope="module")
def shm_server(
    serve_launcher: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, int, dict[str, dict[str, str]]]]:
    """(the server, its gRPC port, headers by key name)."""
    home = tmp_path_factory.mktemp("shm-home")
    with Registry(settings=Settings.load(home=home)) as registry:
        push_file(registry, "simple", simple_onnx_bytes(), tmp_path_factory.mktemp("shm-files"))
        keys = {
            name: {"authorization": f"Bearer {registry.create_key(name, scopes)[1]}"}
            for name, scopes in {"client": ["infer:*", "read"], "admin": ["admin"]}.items()
        }
    with serve_launcher(home, ["simple"], grpc=True) as server:
        yield server, server.grpc_port, keys


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, shm_server: tuple[Server, int, Any]) -> Iterator[Any]:
    server, port, _ = shm_server
    if request.param == "http":
        c: Any = thttp.InferenceServerClient(url=server.host_port)
    else:
        c = tgrpc.InferenceServerClient(url=f"127.0.0.1:{port}")
    yield c
    c.close()


@pytest.fixture
def keys(shm_server: tuple[Server, int, dict[str, dict[str, str]]]) -> dict[str, dict[str, str]]:
    """Fresh copies: tritonclient.http adds its own headers to the dict it is given."""
    return {name: dict(headers) for name, headers in shm_server[2].items()}


@pytest.fixture
def regions(client: Any, keys: dict[str, dict[str, str]]) -> Iterator[Callable[[str, int], tuple[str, Any]]]:
    """`regions(name, size)`: a fresh POSIX shared-memory object, (its key, tritonclient's handle);
    every one destroyed and unregistered after the test."""
    made: list[Any] = []

    def make(name: str, size: int) -> tuple[str, Any]:
        key = f"/shipyard-test-{uuid.uuid4().hex[:12]}"
        made.append(shm.create_shared_memory_region(name, key, size))
        return key, made[-1]

    yield make
    client.unregister_system_shared_memory(headers=keys["admin"])
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _module(client: Any) -> Any:
    return tgrpc if isinstance(client, tgrpc.InferenceServerClient) else thttp


def _inputs(client: Any) -> list[Any]:
    module = _module(client)
    return [module.InferInput("INPUT0", [1, 16], "INT32"), module.InferInput("INPUT1", [1, 16], "INT32")]


def _output(client: Any, name: str) -> Any:
    module = _module(client)
    return (
        module.InferRequestedOutput(name, binary_data=True)
        if module is thttp
        else module.InferRequestedOutput(name)
    )


def test_inputs_and_outputs_in_shared_memory(
    client: Any, keys: dict[str, dict[str, str]], regions: Any
) -> None:
    """What Triton's simple_*_shm_client examples do, step by step."""
    in_key, in_handle = regions("input_data", 2 * TENSOR_BYTES)
    out_key, out_handle = regions("output_data", 2 * TENSOR_BYTES)
    shm.set_shared_memory_region(in_handle, [A, B])
    client.register_system_shared_memory("input_data", in_key, 2 * TENSOR_BYTES, headers=keys["admin"])
    client.register_system_shared_memory("output_data", out_key, 2 * TENSOR_BYTES, headers=keys["admin"])

    inputs = _inputs(client)
    inputs[0].set_shared_memory("input_data", TENSOR_BYTES)
    inputs[1].set_shared_memory("input_data", TENSOR_BYTES, offset=TENSOR_BYTES)
    outputs = [_output(client, "OUTPUT0"), _output(client, "OUTPUT1")]
    outputs[0].set_shared_memory("output_data", TENSOR_BYTES)
    outputs[1].set_shared_memory("output_data", TENSOR_BYTES, offset=TENSOR_BYTES)
    result = client.infer("simple", inputs, outputs=outputs, headers=keys["client"])

    described = result.get_output("OUTPUT0")
    params = described["parameters"] if isinstance(described, dict) else described.parameters
    region = params["shared_memory_region"]
    assert (region if isinstance(region, str) else region.string_param) == "output_data"
    total = np.frombuffer(shm.get_contents_as_numpy(out_handle, np.int32, [2, 16]).tobytes(), np.int32)
    np.testing.assert_array_equal(total[:16], (A + B).ravel())
    np.testing.assert_array_equal(total[16:], (A - B).ravel())

    status = client.get_system_shared_memory_status(headers=keys["admin"])
    listed = status if isinstance(status, list) else list(status.regions.values())
    by_name = {(r["name"] if isinstance(r, dict) else r.name): r for r in listed}
    assert set(by_name) == {"input_data", "output_data"}
    one = client.get_system_shared_memory_status("input_data", headers=keys["admin"])
    assert len(one if isinstance(one, list) else one.regions) == 1

    client.unregister_system_shared_memory("input_data", headers=keys["admin"])
    status = client.get_system_shared_memory_status(headers=keys["admin"])
    assert len(status if isinstance(status, list) else status.regions) == 1


def test_a_mixed_request_sends_one_input_and_reads_the_other_from_shared_memory(
    client: Any, keys: dict[str, dict[str, str]], regions: Any
) -> None:
    key, handle = regions("second", TENSOR_BYTES)
    shm.set_shared_memory_region(handle, [B])
    client.register_system_shared_memory("second", key, TENSOR_BYTES, headers=keys["admin"])
    inputs = _inputs(client)
    inputs[0].set_data_from_numpy(A)
    inputs[1].set_shared_memory("second", TENSOR_BYTES)
    result = client.infer("simple", inputs, headers=keys["client"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)


def test_registering_needs_the_admin_scope(
    client: Any, keys: dict[str, dict[str, str]], regions: Any
) -> None:
    key, _ = regions("refused", TENSOR_BYTES)
    with fails(403 if _module(client) is thttp else grpc.StatusCode.PERMISSION_DENIED, "admin"):
        client.register_system_shared_memory("refused", key, TENSOR_BYTES, headers=keys["client"])
    with fails(401 if _module(client) is thttp else grpc.StatusCode.UNAUTHENTICATED):
        client.get_system_shared_memory_status()


def test_bad_regions_offsets_and_sizes_are_refused_naming_the_parameter(
    client: Any, keys: dict[str, dict[str, str]], regions: Any
) -> None:
    bad = 400 if _module(client) is thttp else grpc.StatusCode.INVALID_ARGUMENT
    admin, user = keys["admin"], keys["client"]
    key, handle = regions("small", TENSOR_BYTES)
    shm.set_shared_memory_region(handle, [A])
    with fails(bad, "no shared-memory object", "/shipyard-test-none"):
        client.register_system_shared_memory("ghost", "/shipyard-test-none", 64, headers=admin)
    with fails(bad, "'key' must be"):
        client.register_system_shared_memory("escape", "/../etc/passwd", 64, headers=admin)
    with fails(bad, f"holds {TENSOR_BYTES} bytes"):
        client.register_system_shared_memory("big", key, TENSOR_BYTES + 1, headers=admin)
    client.register_system_shared_memory("small", key, TENSOR_BYTES, headers=admin)
    with fails(bad, "'small' is already registered"):
        client.register_system_shared_memory("small", key, TENSOR_BYTES, headers=admin)

    inputs = _inputs(client)
    inputs[0].set_data_from_numpy(A)
    inputs[1].set_shared_memory("nowhere", TENSOR_BYTES)
    with fails(bad, "Unable to find system shared memory region: 'nowhere'"):
        client.infer("simple", inputs, headers=user)
    inputs[1].set_shared_memory("small", TENSOR_BYTES, offset=4)
    with fails(bad, "shared_memory_offset 4 + shared_memory_byte_size 64 is past the end", "'small'"):
        client.infer("simple", inputs, headers=user)
    inputs[1].set_shared_memory("small", TENSOR_BYTES // 2)
    with fails(bad, "INPUT1", "32 bytes", "needs 64"):
        client.infer("simple", inputs, headers=user)
    inputs[1].set_data_from_numpy(B)
    output = _output(client, "OUTPUT0")
    output.set_shared_memory("small", TENSOR_BYTES // 2)
    with fails(bad, "'OUTPUT0' is 64 bytes, more than the 32 of shared_memory_byte_size"):
        client.infer("simple", inputs, outputs=[output], headers=user)
    with fails(bad, "Unable to find system shared memory region: 'ghost'"):
        client.get_system_shared_memory_status("ghost", headers=admin)

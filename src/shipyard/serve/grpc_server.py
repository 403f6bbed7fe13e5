"""The gRPC listener: `inference.GRPCInferenceService`, gRPC health and server reflection.

It runs in each serving process's event loop beside the HTTP server, on the same app's
dataplane and Authenticator (`protocols/grpc_v2.py`), so both transports share one batcher per
model, one set of limits and one set of metrics. With several workers, each binds the port with
SO_REUSEPORT, as they do the HTTP port, and starts only once its models are loaded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from grpc_health.v1.health_pb2_grpc import add_HealthServicer_to_server
from grpc_reflection.v1alpha import reflection

from shipyard.errors import ConflictError
from shipyard.serve.auth import GRPC_SERVICE
from shipyard.serve.protocols.grpc_v2 import GrpcV2Protocol
from shipyard.serve.protocols.proto import inference_pb2
from shipyard.settings import ServeSettings

if TYPE_CHECKING:
    from shipyard.serve.app import ShipyardApp
    from shipyard.serve.dataplane import DataPlane

log = logging.getLogger("shipyard.serve")


class _Health(HealthServicer):  # type: ignore[misc]  # grpcio-health-checking has no type information
    """grpc.health.v1: SERVING while every served model is ready (the server's and the service's
    name), as /readyz answers; NOT_SERVING while any loads or once the server drains."""

    def __init__(self, dataplane: DataPlane) -> None:
        super().__init__()
        self._dataplane = dataplane

    async def _current(self, service: str) -> None:
        if service in ("", GRPC_SERVICE) and not self._gracefully_shutting_down:
            ready = self._dataplane.readiness().ready
            serving = (
                health_pb2.HealthCheckResponse.SERVING
                if ready
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            await self.set(service, serving)

    async def Check(self, request: Any, context: Any) -> Any:
        await self._current(request.service)
        return await super().Check(request, context)

    async def Watch(self, request: Any, context: Any) -> Any:
        await self._current(request.service)
        async for response in super().Watch(request, context):
            yield response


class GrpcListener:
    """One process's gRPC server; `start` binds and serves, `stop` drains."""

    def __init__(self, app: ShipyardApp, serve: ServeSettings, *, reuse_port: bool) -> None:
        options = [
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", serve.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
        self._serve = serve
        self._server = grpc.aio.server(options=options)
        dataplane: DataPlane = app.state.dataplane
        protocol = GrpcV2Protocol(
            dataplane,
            serve,
            app.auth,
            workers=serve.workers,
            predictions=app.state.predictions,
            shared_memory=app.state.shared_memory,
        )
        self._server.add_generic_rpc_handlers((protocol.handler(),))
        self._health = _Health(dataplane)
        add_HealthServicer_to_server(self._health, self._server)
        # The service's descriptors live in a pool of their own (see scripts/generate_protos.py).
        reflection.enable_server_reflection(
            (GRPC_SERVICE, reflection.SERVICE_NAME), self._server, pool=inference_pb2.DESCRIPTOR.pool
        )

    async def start(self) -> int:
        serve = self._serve
        host = f"[{serve.host}]" if ":" in serve.host else serve.host
        address = f"{host}:{serve.grpc_port}"
        try:
            if serve.tls_cert and serve.tls_key:
                port = self._server.add_secure_port(address, _credentials(serve))
            else:
                port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConflictError(
                f"cannot listen for gRPC on {address}: the port is in use or the address is not on this "
                "machine; pick another with --grpc-port (0 turns gRPC off)",
                field="grpc_port",
            ) from exc
        await self._server.start()
        return int(port)

    async def stop(self, grace_s: float) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)


def _credentials(serve: ServeSettings) -> Any:
    """TLS as over HTTPS, client certificates required with a client CA (read once, at start:
    unlike HTTPS, a SIGHUP does not reload them)."""
    if serve.tls_key is None or serve.tls_cert is None:
        raise ValueError("TLS needs tls_cert and tls_key")
    pair = (Path(serve.tls_key).read_bytes(), Path(serve.tls_cert).read_bytes())
    ca = Path(serve.tls_client_ca).read_bytes() if serve.tls_client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)

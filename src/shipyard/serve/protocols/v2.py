"""Open Inference Protocol V2 (Triton, KServe) over the dataplane."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import shipyard
from shipyard.errors import InvalidInputError
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols import triton_config, v2_codec
from shipyard.serve.protocols._http import (
    BytesResponse,
    call_options,
    disconnect_watcher,
    endpoint,
    header,
    json_response,
    label,
    parse_version,
    read_body,
    require_json,
)
from shipyard.serve.shared_memory import SystemSharedMemory
from shipyard.settings import ServeSettings

EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_repository",
    "statistics",
    "model_configuration",
    "system_shared_memory",
]


class V2Protocol:
    def __init__(
        self, dataplane: DataPlane, settings: ServeSettings, shared_memory: SystemSharedMemory | None = None
    ) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.shared_memory = shared_memory
        wrap = endpoint("v2", dataplane.is_served, tracer=dataplane.tracer)
        self.infer = wrap(self._infer)
        self.model_metadata = wrap(self._model_metadata)
        self.model_ready = wrap(self._model_ready)
        self.model_config = wrap(self._model_config)
        self.stats = wrap(self._stats)

    def hot_routes(self) -> list[Route]:
        return [
            Route("/v2/models/{model}/infer", self.infer, methods=["POST"]),
            Route("/v2/models/{model}/versions/{version}/infer", self.infer, methods=["POST"]),
        ]

    def routes(self) -> list[Route]:
        versioned = "/v2/models/{model}/versions/{version}"
        return [
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/models/stats", self.stats, methods=["GET"]),
            *self.hot_routes(),
            Route("/v2/models/{model}/ready", self.model_ready, methods=["GET"]),
            Route(f"{versioned}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{model}/config", self.model_config, methods=["GET"]),
            Route(f"{versioned}/config", self.model_config, methods=["GET"]),
            Route("/v2/models/{model}/stats", self.stats, methods=["GET"]),
            Route(f"{versioned}/stats", self.stats, methods=["GET"]),
            Route("/v2/models/{model}", self.model_metadata, methods=["GET"]),
            Route(versioned, self.model_metadata, methods=["GET"]),
        ]

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        readiness = self.dataplane.readiness()
        return json_response(readiness.to_dict(), 200 if readiness.ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response({"name": "shipyard", "version": shipyard.__version__, "extensions": EXTENSIONS})

    async def _model_metadata(self, request: Request) -> Response:
        name = request.path_params["model"]
        served = self.dataplane.model(name, parse_version(request))
        record = served.version
        versions = self.dataplane.versions(name)
        return json_response(
            {
                "name": name,
                "versions": [str(v) for v in versions],
                "platform": triton_config.platform(record.format)[0],
                "inputs": [t.to_dict() for t in record.signature.inputs],
                "outputs": [t.to_dict() for t in record.signature.outputs],
                # Which bytes this server runs: servers sharing a registry can be compared.
                "parameters": {"digest": record.digest},
            }
        )

    async def _model_ready(self, request: Request) -> Response:
        name = request.path_params["model"]
        status = self.dataplane.status(name, parse_version(request))
        # The readiness entry of /readyz, with the name and the verdict; 503 as KServe does.
        body = {"name": name, "ready": status.ready, **status.to_dict()}
        return json_response(body, 200 if status.ready else 503)

    async def _model_config(self, request: Request) -> Response:
        name = request.path_params["model"]
        served = self.dataplane.model(name, parse_version(request))
        batcher = served.batcher
        config = triton_config.model_config(
            name,
            served.version,
            batcher.max_batch_size if batcher else 0,
            batcher.max_delay_s if batcher else 0.0,
            self.settings.workers,
            batcher.preferred_batch_sizes if batcher else (),
        )
        return json_response(config)

    async def _stats(self, request: Request) -> Response:
        stats = self.dataplane.statistics(request.path_params.get("model"), parse_version(request))
        return json_response(
            {
                "model_stats": [
                    {
                        "name": s.name,
                        "version": str(s.version),
                        "last_inference": s.statistics.last_inference_ms,
                        "inference_count": s.rows,
                        "execution_count": s.batches,
                        "request_count": s.requests,
                        "inference_stats": s.statistics.inference_stats(),
                        "batch_stats": s.statistics.batch_stats(),
                    }
                    for s in stats
                ]
            }
        )

    async def _infer(self, request: Request) -> Response:
        # tritonclient sends no Content-Type at all, so none is accepted here; a browser posting
        # a typeless body cross-origin is stopped by the API key it cannot attach unpreflighted.
        require_json(request, "application/octet-stream", "")
        name = request.path_params["model"]
        version = parse_version(request)
        declared = header(request, b"inference-header-content-length")
        header_length = None
        if declared is not None:
            if not declared.strip().isdigit():
                raise InvalidInputError(
                    "Inference-Header-Content-Length must be a byte count",
                    field="inference-header-content-length",
                )
            header_length = int(declared)
        with self.dataplane.acquire(name, version) as served:
            label(request, name, served.version.version)
            body = await read_body(request, self.settings.max_body_bytes)
            parsed = v2_codec.decode_request(
                body, header_length, served.version.signature, self.shared_memory
            )
            result = await self.dataplane.infer(
                served, parsed.inputs, disconnect_watcher(request), **call_options(request)
            )
        payload, json_length = v2_codec.encode_response(
            parsed,
            name,
            str(result.version.version),
            result.outputs,
            result.version.extra.get("classes"),
            result.version.signature,
            self.shared_memory,
        )
        if json_length is None:
            return BytesResponse(payload)
        return BytesResponse(
            payload,
            media_type=b"application/octet-stream",
            extra=[(b"inference-header-content-length", str(json_length).encode())],
        )

"""Triton's system shared-memory extension over HTTP: register, unregister and status of the
regions (serve/shared_memory.py), for admin-scoped keys as model management is."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InvalidInputError
from shipyard.serve.protocols._http import endpoint, json_response, parse_json, read_body
from shipyard.serve.protocols.management import authorize_admin
from shipyard.serve.shared_memory import SystemSharedMemory
from shipyard.settings import ServeSettings

_WHAT = "system shared memory"
_PREFIX = "/v2/systemsharedmemory"


class SystemSharedMemoryProtocol:
    def __init__(self, regions: SystemSharedMemory, settings: ServeSettings) -> None:
        self.regions = regions
        self.settings = settings
        wrap = endpoint("shared_memory", lambda _name: False)
        self.status = wrap(self._status)
        self.register = wrap(self._register)
        self.unregister = wrap(self._unregister)

    def routes(self) -> list[Route]:
        return [
            Route(f"{_PREFIX}/status", self.status, methods=["GET"]),
            Route(f"{_PREFIX}/region/{{name}}/status", self.status, methods=["GET"]),
            Route(f"{_PREFIX}/region/{{name}}/register", self.register, methods=["POST"]),
            Route(f"{_PREFIX}/region/{{name}}/unregister", self.unregister, methods=["POST"]),
            Route(f"{_PREFIX}/unregister", self.unregister, methods=["POST"]),
        ]

    async def _status(self, request: Request) -> Response:
        authorize_admin(request, self.settings, _WHAT)
        return json_response(self.regions.status(request.path_params.get("name")))

    async def _register(self, request: Request) -> Response:
        authorize_admin(request, self.settings, _WHAT)
        raw = await read_body(request, 1 << 16)
        body = parse_json(raw) if raw.strip() else None
        if not isinstance(body, dict):
            raise InvalidInputError('body must be {"key": …, "offset": …, "byte_size": …}', field="body")
        self.regions.register(
            request.path_params["name"], body.get("key"), body.get("offset", 0), body.get("byte_size")
        )
        return json_response({})

    async def _unregister(self, request: Request) -> Response:
        authorize_admin(request, self.settings, _WHAT)
        self.regions.unregister(request.path_params.get("name"))
        return json_response({})

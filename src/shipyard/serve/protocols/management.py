"""Triton's model-repository extension (index, load, unload), for admin-scoped API keys."""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import ForbiddenError, InvalidInputError, UnauthorizedError
from shipyard.serve.auth import caller_id
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols._http import endpoint, json_response, parse_json, read_body
from shipyard.settings import ServeSettings
from shipyard.types import ModelRef

ADMIN_ACTOR = "admin-token"  # who the audit log names for a request carrying the admin token


def _actor(request: Request) -> str:
    """Who the audit log names: the admin key's id, or the deprecated admin token."""
    return caller_id(request) or ADMIN_ACTOR


def check_load_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """A load's parameters (HTTP or gRPC), refusing Triton's file upload and config overrides."""
    for key in params:
        if key.startswith("file:"):  # Triton's model upload: a known code-execution vector
            raise ForbiddenError(
                "uploading model files through load is not allowed; push them to the registry", field=key
            )
    if "config" in params:
        raise InvalidInputError(
            "config overrides are not supported; store serving options with the version", field="config"
        )
    return params


def authorize_admin(request: Request, settings: ServeSettings, what: str = "model management") -> None:
    """Let the request through only with the admin scope: a key's, or the deprecated admin token
    when keys are off (the Authenticator has checked the key already)."""
    if caller_id(request) is not None:
        return  # API keys are on and the app's Authenticator found the admin scope
    token = settings.admin_token
    if not token:
        raise ForbiddenError(
            f"{what} is disabled without an admin key; create one with "
            "`shipyard keys create NAME --scope admin` "
            "(or set the deprecated SHIPYARD_SERVE__ADMIN_TOKEN)"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest: constant time, so the token cannot be guessed byte by byte.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise UnauthorizedError(f"{what} needs 'Authorization: Bearer <admin token>'", field="authorization")


class ManagementProtocol:
    def __init__(self, dataplane: DataPlane, settings: ServeSettings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        wrap = endpoint("management", dataplane.is_served)
        self.index = wrap(self._index)
        self.load = wrap(self._load)
        self.unload = wrap(self._unload)

    def routes(self) -> list[Route]:
        return [
            Route("/v2/repository/index", self.index, methods=["POST"]),
            Route("/v2/repository/models/{model}/load", self.load, methods=["POST"]),
            Route("/v2/repository/models/{model}/unload", self.unload, methods=["POST"]),
        ]

    def _authorize(self, request: Request) -> None:
        authorize_admin(request, self.settings)

    async def _params(self, request: Request) -> dict[str, Any]:
        raw = await read_body(request, 1 << 20)
        body = parse_json(raw) if raw.strip() else {}
        params = (body.get("parameters") or {}) if isinstance(body, dict) else None
        if not isinstance(params, dict):
            raise InvalidInputError('body must be {} or {"parameters": {...}}', field="parameters")
        return check_load_parameters(params)

    async def _index(self, request: Request) -> Response:
        self._authorize(request)
        raw = await read_body(request, 1 << 20)
        body = parse_json(raw) if raw.strip() else {}
        ready = body.get("ready", False) if isinstance(body, dict) else None
        if not isinstance(ready, bool):
            raise InvalidInputError('body must be {} or {"ready": true|false}', field="ready")
        entries = await self.dataplane.index()
        return json_response(
            [
                {
                    "name": e.name,
                    "version": "" if e.version is None else str(e.version),
                    "state": e.state.upper(),
                    "reason": e.reason,
                }
                for e in entries
                if not ready or e.state == "ready"
            ]
        )

    async def _load(self, request: Request) -> Response:
        self._authorize(request)
        params = await self._params(request)
        name = request.path_params["model"]
        ref = ModelRef.parse(str(params.get("ref", name)))
        if ref.name != name:
            raise InvalidInputError(f"parameter ref '{ref}' names another model than {name!r}", field="ref")
        version = await self.dataplane.load(ref, actor=_actor(request))
        return json_response({"name": name, "version": str(version)})

    async def _unload(self, request: Request) -> Response:
        self._authorize(request)
        await self._params(request)
        name = request.path_params["model"]
        await self.dataplane.unload(name, actor=_actor(request))
        return json_response({"name": name, "state": "UNLOADED"})

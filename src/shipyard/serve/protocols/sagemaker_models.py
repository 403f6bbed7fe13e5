"""SageMaker's multi-model API: the platform loads, lists, unloads and invokes models by an opaque
`model_name`, each unpacked from its model.tar.gz into the folder `url` names.

Such a folder holds a Shipyard registry (what `shipyard build` embeds: registry.db, artifacts/);
its latest version is served under `model_name`. Status codes as the contract documents them:
load 200, 409 when the name is loaded already, 507 when memory runs out (SageMaker then unloads
idle models and retries); get, unload and invoke 404 for a name not loaded. Mounted only with
`serve.platform = "sagemaker"`: SageMaker is the only caller that can reach these routes there.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import (
    ConflictError,
    InsufficientStorageError,
    InvalidInputError,
    ModelError,
    NotFoundError,
)
from shipyard.registry import Registry
from shipyard.serve import embedded
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols._http import endpoint, json_response, parse_json, read_body
from shipyard.serve.protocols.sagemaker import SageMakerProtocol
from shipyard.settings import Settings
from shipyard.types import ModelVersion

PAGE = 100  # models per page of the list; `next_page_token` is the offset of the next page


@dataclass(frozen=True)
class _Loaded:
    url: str
    ref: str


class MultiModelProtocol:
    def __init__(self, dataplane: DataPlane, settings: Settings, sagemaker: SageMakerProtocol) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.sagemaker = sagemaker
        self.loaded: dict[str, _Loaded] = {}
        wrap = endpoint("sagemaker", dataplane.is_served, tracer=dataplane.tracer)
        self.load, self.list, self.get = wrap(self._load), wrap(self._list), wrap(self._get)
        self.unload, self.invoke = wrap(self._unload), wrap(self._invoke)

    def hot_routes(self) -> list[Route]:
        return [Route("/models/{model}/invoke", self.invoke, methods=["POST"])]

    def routes(self) -> list[Route]:
        return [
            Route("/models", self.list, methods=["GET"]),
            Route("/models", self.load, methods=["POST"]),
            Route("/models/{model}", self.get, methods=["GET"]),
            Route("/models/{model}", self.unload, methods=["DELETE"]),
            *self.hot_routes(),
        ]

    async def _load(self, request: Request) -> Response:
        body = parse_json(await read_body(request, 1 << 20))
        if not isinstance(body, dict):
            raise InvalidInputError('body must be {"model_name": ..., "url": ...}', field="body")
        name, url = _text(body, "model_name"), _text(body, "url")
        if self.dataplane.is_served(name):
            raise ConflictError(f"model {name!r} is loaded already; unload it first", field="model_name")
        source, version = await asyncio.to_thread(self._open, Path(url))
        try:
            await self.dataplane.load_from(name, source, version)
        except ModelError as exc:
            if "MemoryError" in exc.message:
                raise InsufficientStorageError(
                    f"not enough memory to load {name!r}; unload a model first", field="model_name"
                ) from exc
            raise
        self.loaded[name] = _Loaded(url, str(version.ref))
        return json_response({"modelName": name, "modelUrl": url, "ref": str(version.ref)})

    def _open(self, folder: Path) -> tuple[Registry, ModelVersion]:
        """The registry in `folder` (from a working copy of its database) and its version to serve."""
        if embedded.find([folder]) != folder:
            raise NotFoundError(f"url {str(folder)!r} holds no Shipyard registry (registry.db)", field="url")
        work = Path(tempfile.mkdtemp(prefix="model-", dir=self.settings.home))
        registry_url, artifact_url = embedded.working_copy(folder, work)
        update = {"home": work, "registry_url": registry_url, "artifact_url": artifact_url}
        registry = Registry(settings=self.settings.model_copy(update=update))
        models = registry.list_models()
        if len(models) != 1:
            registry.close()
            names = ", ".join(m["name"] for m in models) or "none"
            raise InvalidInputError(
                f"url {str(folder)!r} must hold exactly one model for multi-model serving (holds: {names})",
                field="url",
            )
        return registry, registry.resolve(models[0]["name"])

    async def _list(self, request: Request) -> Response:
        token = request.query_params.get("next_page_token") or "0"
        if not token.isdigit():
            raise InvalidInputError(
                "next_page_token must be a token from a previous page", field="next_page_token"
            )
        start = int(token)
        names = sorted(n for n in self.loaded if self.dataplane.is_served(n))
        page: dict[str, Any] = {"models": [self._entry(n) for n in names[start : start + PAGE]]}
        if start + PAGE < len(names):
            page["nextPageToken"] = str(start + PAGE)
        return json_response(page)

    async def _get(self, request: Request) -> Response:
        return json_response(self._entry(self._require_loaded(request.path_params["model"])))

    async def _unload(self, request: Request) -> Response:
        name = self._require_loaded(request.path_params["model"])
        await self.dataplane.unload(name, actor="sagemaker")
        self.loaded.pop(name, None)
        return json_response({})

    async def _invoke(self, request: Request) -> Response:
        return await self.sagemaker.invoke(request, self._require_loaded(request.path_params["model"]))

    def _require_loaded(self, name: str) -> str:
        if name not in self.loaded or not self.dataplane.is_served(name):
            raise NotFoundError(f"model {name!r} is not loaded; load it with POST /models", field="model")
        return name

    def _entry(self, name: str) -> dict[str, str]:
        return {"modelName": name, "modelUrl": self.loaded[name].url}


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"{key} must be a non-empty string", field=key)
    return value

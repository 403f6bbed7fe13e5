"""TF Serving / KServe V1: `:predict` with instances or inputs → predictions.

Every model answers `:predict`, model status and metadata; a TensorFlow SavedModel answers as
TF Serving would (`signature_name`, `outputs` for columnar requests, `{"b64": …}` bytes,
`:classify`/`:regress` where its signature's method allows them): see `tf_serving.py`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shipyard.errors import InvalidInputError, NotFoundError
from shipyard.serve.dataplane import DataPlane
from shipyard.serve.protocols import tf_serving
from shipyard.serve.protocols._http import (
    call_options,
    disconnect_watcher,
    endpoint,
    json_response,
    label,
    parse_json,
    parse_version,
    read_body,
    require_json,
)
from shipyard.serve.protocols.rows import inputs_from_body, predictions
from shipyard.serve.protocols.tf_example import parse_example
from shipyard.serve.repository import ModelStatus
from shipyard.settings import ServeSettings

_PREFIXES = (
    "/v1/models/{model}",
    "/v1/models/{model}/versions/{version}",
    "/v1/models/{model}/labels/{label}",
)


class V1Protocol:
    def __init__(self, dataplane: DataPlane, settings: ServeSettings) -> None:
        self.dataplane = dataplane
        self.settings = settings
        wrap = endpoint("v1", dataplane.is_served, tracer=dataplane.tracer)
        self.predict = wrap(self._predict)
        self.classify = wrap(self._classify)
        self.regress = wrap(self._regress)
        self.status = wrap(self._status)
        self.metadata = wrap(self._metadata)

    def hot_routes(self) -> list[Route]:
        return [Route(f"{prefix}:predict", self.predict, methods=["POST"]) for prefix in _PREFIXES]

    def routes(self) -> list[Route]:
        # KServe's V1 server-live check reads `status` at `/`; on Azure, `/` is Azure's probe.
        live = [Route("/", self.live, methods=["GET"])] if self.settings.platform != "azure" else []
        return [
            *live,
            *self.hot_routes(),
            *(Route(f"{prefix}:classify", self.classify, methods=["POST"]) for prefix in _PREFIXES),
            *(Route(f"{prefix}:regress", self.regress, methods=["POST"]) for prefix in _PREFIXES),
            *(Route(f"{prefix}/metadata", self.metadata, methods=["GET"]) for prefix in _PREFIXES),
            *(Route(prefix, self.status, methods=["GET"]) for prefix in _PREFIXES),
        ]

    async def live(self, request: Request) -> Response:
        return json_response({"status": "alive"})

    def _version(self, request: Request) -> int | None:
        """The `{version}` path segment, or the served version whose alias is `{label}`."""
        wanted = request.path_params.get("label")
        if wanted is None:
            return parse_version(request)
        name = request.path_params["model"]
        for number in self.dataplane.versions(name):
            if wanted in self.dataplane.model(name, number).version.aliases:
                return number
        raise NotFoundError(
            f"model {name!r} has no served version labelled {wanted[:64]!r}; labels are the "
            "registry's aliases of the versions this server loaded",
            field="label",
        )

    async def _predict(self, request: Request) -> Response:
        require_json(request)
        name = request.path_params["model"]
        with self.dataplane.acquire(name, self._version(request)) as served:
            label(request, name, served.version.version)
            body = parse_json(await read_body(request, self.settings.max_body_bytes))
            record = served.version
            if not tf_serving.is_tensorflow(record):
                inputs = inputs_from_body(body, record.signature)
                result = await self.dataplane.infer(
                    served, inputs, disconnect_watcher(request), **call_options(request)
                )
                return json_response({"predictions": predictions(result.outputs)})
            if not isinstance(body, dict):
                raise InvalidInputError('body must be {"instances": [...]} or {"inputs": ...}', field="body")
            sig_name, sig, is_default = tf_serving.choose_signature(record, body)
            columnar = "inputs" in body
            fields = {k: v for k, v in body.items() if k in ("instances", "inputs")}
            chosen = None if is_default else sig_name
            extra = served.signatures.get(chosen) if chosen is not None else None
            if chosen is not None and extra is None:
                raise InvalidInputError(
                    f"signature {sig_name!r} of {record.ref} is not loaded", field="signature_name"
                )
            spec = record.signature if extra is None else extra.signature
            if "features" in sig:  # serialized tf.Example protos, parsed here (the graph starts after)
                examples = tf_serving.serialized_examples(sig, body)
                parsed = [parse_example(data, i) for i, data in enumerate(examples)]
                inputs = tf_serving.example_features(sig, {"examples": parsed})
            else:
                inputs = inputs_from_body(tf_serving.decode_b64(fields), spec)
            result = await self.dataplane.infer(
                served, inputs, disconnect_watcher(request), **call_options(request), signature=chosen
            )
        if columnar:
            return json_response({"outputs": tf_serving.columnar_outputs(result.outputs)})
        return json_response({"predictions": tf_serving.row_predictions(result.outputs)})

    async def _classify(self, request: Request) -> Response:
        return await self._examples(request, tf_serving.CLASSIFY, "classify")

    async def _regress(self, request: Request) -> Response:
        return await self._examples(request, tf_serving.REGRESS, "regress")

    async def _examples(self, request: Request, method: str, verb: str) -> Response:
        require_json(request)
        name = request.path_params["model"]
        with self.dataplane.acquire(name, self._version(request)) as served:
            label(request, name, served.version.version)
            body = parse_json(await read_body(request, self.settings.max_body_bytes))
            if not isinstance(body, dict):
                raise InvalidInputError('body must be {"examples": [...]}', field="body")
            sig_name, sig, is_default = tf_serving.choose_signature(served.version, body)
            tf_serving.require_method(sig_name, sig, method, verb)
            features = tf_serving.example_features(sig, body)
            result = await self.dataplane.infer(
                served,
                features,
                disconnect_watcher(request),
                **call_options(request),
                signature=None if is_default else sig_name,
            )
        results: Any = (
            tf_serving.classify_results(result.outputs)
            if verb == "classify"
            else tf_serving.regress_results(result.outputs)
        )
        return json_response({"results": results})

    async def _status(self, request: Request) -> Response:
        name = request.path_params["model"]
        if "version" in request.path_params or "label" in request.path_params:
            current = self.dataplane.status(name, self._version(request))
            others: list[int] = []
        else:  # every version held, the one unversioned requests get first (as TF Serving lists all)
            current = self.dataplane.status(name)
            others = [v for v in reversed(self.dataplane.versions(name)) if v != current.version]
        statuses = [_version_status(current)]
        statuses += [_version_status(self.dataplane.status(name, number)) for number in others]
        return json_response({"name": name, "ready": current.ready, "model_version_status": statuses})

    async def _metadata(self, request: Request) -> Response:
        name = request.path_params["model"]
        served = self.dataplane.model(name, self._version(request))
        return json_response(tf_serving.metadata(served.version))


_STATES = {"ready": "AVAILABLE", "draining": "UNLOADING", "loading": "LOADING", "failed": "END"}


def _version_status(status: ModelStatus) -> dict[str, Any]:
    """One ModelVersionStatus of TF Serving's GetModelStatusResponse."""
    failed = status.state == "failed"
    return {
        "version": str(status.version) if status.version is not None else "",
        "state": _STATES.get(status.state, "UNKNOWN"),
        "status": {
            "error_code": "UNKNOWN" if failed else "OK",
            "error_message": status.reason if failed else "",
        },
    }

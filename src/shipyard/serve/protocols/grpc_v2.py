"""Open Inference Protocol V2 over gRPC (`inference.GRPCInferenceService`) over the dataplane.

The gRPC twin of `v2.py`: each call is checked by the same Authenticator (its metadata read as
headers, its method's path as the path: see `auth.required_scope`), runs through the same
dataplane (limits, batcher, deadline) and is counted in the same metrics with
`protocol="grpc"` and the HTTP status its gRPC code stands for, so one dashboard covers both.
Errors carry the HTTP layer's messages with the matching gRPC status code.

Handlers take and return serialized bytes: a request that is not a valid protobuf message is
refused here with INVALID_ARGUMENT, rather than by grpcio with INTERNAL.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from starlette.requests import Request

import shipyard
from shipyard.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    ModelError,
    NotFoundError,
    RateLimitedError,
    ShipyardError,
    UnauthorizedError,
)
from shipyard.monitor import metrics
from shipyard.monitor.logs import REQUEST_ID
from shipyard.monitor.prediction_recorder import PredictionRecorder, Sample
from shipyard.serve.auth import GRPC_SERVICE, Authenticator, caller_id, require_model
from shipyard.serve.dataplane import ClientDisconnectedError, DataPlane
from shipyard.serve.protocols import grpc_codec
from shipyard.serve.protocols._http import client_message, internal_error, parse_version
from shipyard.serve.protocols.management import check_load_parameters
from shipyard.serve.protocols.proto import inference_pb2 as pb
from shipyard.serve.protocols.v2 import EXTENSIONS
from shipyard.serve.request_ids import HEADER as REQUEST_ID_HEADER
from shipyard.serve.request_ids import request_id, request_id_of
from shipyard.serve.shared_memory import SystemSharedMemory
from shipyard.settings import ServeSettings
from shipyard.types import ModelRef

log = logging.getLogger("shipyard.serve")

PROTOCOL = "grpc"  # the `protocol` label of its metrics
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_CANCELLED = 499  # the status a request whose client went away is counted with, as over HTTP
_STREAM_WINDOW = 64  # requests of one stream in flight at once; the next waits for a place
# Keys of a call's scope: its metric labels (model, version), prediction-log sample and request id.
_LABELS = "shipyard.labels"
_SAMPLE = "shipyard.sample"
_REQUEST_ID = "shipyard.request_id"

Scope = dict[str, Any]
Call = Callable[[Any, Scope, Any], Awaitable[Any]]


def status_code(exc: ShipyardError) -> grpc.StatusCode:
    """The one mapping from an error to a gRPC status code."""
    return _CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)


class GrpcV2Protocol:
    def __init__(
        self,
        dataplane: DataPlane,
        settings: ServeSettings,
        auth: Authenticator,
        *,
        workers: int = 1,
        predictions: PredictionRecorder | None = None,
        shared_memory: SystemSharedMemory | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.shared_memory = shared_memory
        self.settings = settings
        self.auth = auth
        self.workers = workers
        self.predictions = predictions  # the prediction log, when it is on
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def handler(self) -> Any:
        """The service's method handlers, for `grpc.aio.Server.add_generic_rpc_handlers`."""
        unary = {
            "ServerLive": (pb.ServerLiveRequest, self._server_live),
            "ServerReady": (pb.ServerReadyRequest, self._server_ready),
            "ModelReady": (pb.ModelReadyRequest, self._model_ready),
            "ServerMetadata": (pb.ServerMetadataRequest, self._server_metadata),
            "ModelMetadata": (pb.ModelMetadataRequest, self._model_metadata),
            "ModelInfer": (pb.ModelInferRequest, self._infer),
            "ModelConfig": (pb.ModelConfigRequest, self._model_config),
            "ModelStatistics": (pb.ModelStatisticsRequest, self._statistics),
            "RepositoryIndex": (pb.RepositoryIndexRequest, self._index),
            "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, self._load),
            "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, self._unload),
            "SystemSharedMemoryStatus": (pb.SystemSharedMemoryStatusRequest, self._shm_status),
            "SystemSharedMemoryRegister": (pb.SystemSharedMemoryRegisterRequest, self._shm_register),
            "SystemSharedMemoryUnregister": (pb.SystemSharedMemoryUnregisterRequest, self._shm_unregister),
        }
        methods = {
            name: grpc.unary_unary_rpc_method_handler(self._unary(name, message, call))
            for name, (message, call) in unary.items()
        }
        methods["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self._stream)
        return grpc.method_handlers_generic_handler(GRPC_SERVICE, methods)

    # -- the calls' common part: authentication, parsing, errors, metrics -----------------------

    def _unary(self, name: str, message: Any, call: Call) -> Callable[[bytes, Any], Awaitable[bytes]]:
        path = f"/{GRPC_SERVICE}/{name}"

        async def handler(data: bytes, context: Any) -> bytes:
            started = time.perf_counter()
            scope = _scope(path, context)
            request_id = scope[_REQUEST_ID] = request_id_of(scope)
            token = REQUEST_ID.set(request_id)
            context.set_trailing_metadata(((REQUEST_ID_HEADER.decode(), request_id),))
            try:
                await self._authenticate(scope)
                response = await call(_parse(message, data), scope, context)
            except ShipyardError as exc:
                self._observe(scope, exc.status_code, started, exc.kind)
                if isinstance(exc, ModelError):
                    log.error("%s: %s", path, exc.message, exc_info=exc)
                await _abort(context, exc, request_id)
            except (asyncio.CancelledError, ClientDisconnectedError):
                self._observe(scope, _CANCELLED, started)
                raise
            except Exception:
                log.exception("unexpected error on %s", path)
                self._observe(scope, 500, started, "internal_error")
                await _abort(context, internal_error(), request_id)
            finally:
                REQUEST_ID.reset(token)
            self._observe(scope, 200, started)
            return bytes(response.SerializeToString())

        return handler

    async def _stream(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """ModelStreamInfer: one answer per request, each as soon as it is ready. Up to
        `_STREAM_WINDOW` requests of one stream run at once, so they batch as separate calls
        would; clients match answers to requests by `id`. A failed request answers with its
        error message (and its id) and the stream goes on, as Triton's does."""
        scope = _scope(f"/{GRPC_SERVICE}/ModelStreamInfer", context)
        try:
            await self._authenticate(scope)
        except ShipyardError as exc:
            metrics.count_rejection("-", exc.kind)
            await _abort(context, exc, request_id_of(scope))
        answers: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        window = asyncio.Semaphore(_STREAM_WINDOW)
        running: set[asyncio.Task[None]] = set()  # referenced, so none is garbage-collected

        async def answer(data: bytes) -> None:
            try:
                answers.put_nowait(await self._stream_answer(data, dict(scope), context))
            except ClientDisconnectedError:
                pass  # the stream is gone: nobody reads an answer
            finally:
                window.release()

        async def read() -> None:
            try:
                async for data in requests:
                    await window.acquire()
                    task = asyncio.create_task(answer(data))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(set(running))
                answers.put_nowait(None)
            except Exception as exc:  # noqa: BLE001 -- the request stream broke: the handler raises it
                answers.put_nowait(exc)

        reader = asyncio.create_task(read())
        try:
            while (item := await answers.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _stream_answer(self, data: bytes, scope: Scope, context: Any) -> bytes:
        """One request of a stream, answered (an error included) as a serialized message."""
        started = time.perf_counter()
        scope[_REQUEST_ID] = request_id(None)
        request = None
        try:
            request = _parse(pb.ModelInferRequest, data)
            # Each request on the stream is one for the logs: its own `id` when that is safe.
            scope[_REQUEST_ID] = request_id(request.id or None)
            response = pb.ModelStreamInferResponse(infer_response=await self._infer(request, scope, context))
        except ShipyardError as exc:
            self._observe(scope, exc.status_code, started, exc.kind)
            if isinstance(exc, ModelError):
                log.error("ModelStreamInfer: %s", exc.message, exc_info=exc)
            response = _stream_error(request, client_message(exc))
        except (asyncio.CancelledError, ClientDisconnectedError):
            self._observe(scope, _CANCELLED, started)
            raise
        except Exception:
            log.exception("unexpected error on ModelStreamInfer")
            self._observe(scope, 500, started, "internal_error")
            response = _stream_error(request, client_message(internal_error()))
        else:
            self._observe(scope, 200, started)
        return bytes(response.SerializeToString())

    async def _authenticate(self, scope: Scope) -> None:
        if self.auth.admits(scope):
            return
        refused = await self.auth.check(scope)
        if refused is not None:
            raise refused  # counted as an error of its kind (a unary call) or a rejection (a stream)

    def _observe(self, scope: Scope, status: int, started: float, kind: str = "") -> None:
        name, version = scope.get(_LABELS) or ("-", None)
        key = (name, "-" if version is None else str(version), str(status))
        pair = self._children.get(key)
        if pair is None:
            labels = (key[0], key[1], PROTOCOL, key[2])
            pair = self._children[key] = (
                metrics.REQUESTS.labels(*labels),
                metrics.REQUEST_LATENCY.labels(*labels),
            )
        elapsed = time.perf_counter() - started
        pair[0].inc()
        pair[1].observe(elapsed)
        if kind:
            metrics.count_error(key[0], key[1], PROTOCOL, kind)
        sample = scope.get(_SAMPLE)
        if sample is not None and self.predictions is not None:
            self.predictions.record(scope[_REQUEST_ID], name, version, PROTOCOL, status, elapsed, sample)

    # -- health and metadata ---------------------------------------------------------------------

    async def _server_live(self, request: Any, scope: Scope, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def _server_ready(self, request: Any, scope: Scope, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.readiness().ready)

    async def _model_ready(self, request: Any, scope: Scope, context: Any) -> Any:
        version = _version(scope, request.version)
        status = self.dataplane.status(request.name, version)
        _label(self.dataplane, scope, request.name, version)
        return pb.ModelReadyResponse(ready=status.ready)

    async def _server_metadata(self, request: Any, scope: Scope, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="shipyard", version=shipyard.__version__, extensions=EXTENSIONS)

    async def _model_metadata(self, request: Any, scope: Scope, context: Any) -> Any:
        served = self.dataplane.model(request.name, _version(scope, request.version))
        _label(self.dataplane, scope, request.name, served.version.version)
        return grpc_codec.model_metadata(request.name, self.dataplane.versions(request.name), served.version)

    async def _model_config(self, request: Any, scope: Scope, context: Any) -> Any:
        served = self.dataplane.model(request.name, _version(scope, request.version))
        _label(self.dataplane, scope, request.name, served.version.version)
        batcher = served.batcher
        config = grpc_codec.model_config(
            request.name,
            served.version,
            batcher.max_batch_size if batcher else 0,
            batcher.max_delay_s if batcher else 0.0,
            self.settings.workers,
            batcher.preferred_batch_sizes if batcher else (),
        )
        return pb.ModelConfigResponse(config=config)

    async def _statistics(self, request: Any, scope: Scope, context: Any) -> Any:
        version = _version(scope, request.version)
        stats = self.dataplane.statistics(request.name or None, version)
        response = pb.ModelStatisticsResponse()
        for s in stats:
            response.model_stats.append(grpc_codec.model_statistics(s))
        return response

    # -- inference -------------------------------------------------------------------------------

    async def _infer(self, request: Any, scope: Scope, context: Any) -> Any:
        name = request.model_name
        version = _version(scope, request.model_version)
        http = Request(scope)
        with self.dataplane.acquire(name, version) as served:
            record = served.version
            scope[_LABELS] = (name, record.version)
            require_model(http, name)  # 403 unless the caller's key may infer on it
            sample = None if self.predictions is None else Sample()
            scope[_SAMPLE] = sample
            parsed = grpc_codec.decode_request(request, record, self.shared_memory)
            remaining = context.time_remaining()
            result = await self.dataplane.infer(
                served,
                parsed.inputs,
                timeout_s=None if remaining is None else max(remaining, 1e-3),
                caller=caller_id(http),
                sample=sample,
            )
        return grpc_codec.encode_response(
            parsed,
            name,
            str(result.version.version),
            result.outputs,
            result.version.extra.get("classes"),
            result.version.signature,
            self.shared_memory,
        )

    # -- system shared memory (admin, as the model repository) ------------------------------------

    def _regions(self, scope: Scope) -> SystemSharedMemory:
        self._authorize(scope, changes=False, what="system shared memory")
        if self.shared_memory is None:
            raise NotFoundError("system shared memory is not served here", field="name")
        return self.shared_memory

    async def _shm_status(self, request: Any, scope: Scope, context: Any) -> Any:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self._regions(scope).status(request.name or None):
            response.regions[region["name"]].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
            )
        return response

    async def _shm_register(self, request: Any, scope: Scope, context: Any) -> Any:
        self._regions(scope).register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def _shm_unregister(self, request: Any, scope: Scope, context: Any) -> Any:
        self._regions(scope).unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    # -- the model repository (admin) ------------------------------------------------------------

    def _authorize(self, scope: Scope, changes: bool, what: str = "model management") -> str:
        """Who the audit log names; refused as over HTTP (see protocols/management.py)."""
        if self.settings.admin_port is not None and what == "model management":
            # management is kept off the public ports
            raise NotFoundError(
                f"model management is served on the admin port ({self.settings.admin_port}, over HTTP), "
                "not over gRPC",
                field="model_name",
            )
        caller = caller_id(Request(scope))
        if caller is None:
            token = self.settings.admin_token
            if not token:
                raise ForbiddenError(
                    f"{what} is disabled without an admin key; create one with "
                    "`shipyard keys create NAME --scope admin` "
                    "(or set the deprecated SHIPYARD_SERVE__ADMIN_TOKEN)"
                )
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, secret = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(secret, token.encode()):
                raise UnauthorizedError(
                    f"{what} needs 'Authorization: Bearer <admin token>'", field="authorization"
                )
            caller = "admin-token"
        if changes and self.workers > 1:
            raise ConflictError(
                f"load and unload are refused with {self.workers} workers: each would reach only the "
                "worker that took the connection; run management with --workers 1",
                field="model_name",
            )
        return caller

    async def _index(self, request: Any, scope: Scope, context: Any) -> Any:
        self._authorize(scope, changes=False)
        response = pb.RepositoryIndexResponse()
        for e in await self.dataplane.index():
            if request.ready and e.state != "ready":
                continue
            response.models.add(
                name=e.name,
                version="" if e.version is None else str(e.version),
                state=e.state.upper(),
                reason=e.reason,
            )
        return response

    def _repository_params(self, request: Any) -> dict[str, Any]:
        params = {
            key: getattr(p, p.WhichOneof("parameter_choice") or "string_param")
            for key, p in request.parameters.items()
        }
        return check_load_parameters(params)

    async def _load(self, request: Any, scope: Scope, context: Any) -> Any:
        actor = self._authorize(scope, changes=True)
        params = self._repository_params(request)
        name = request.model_name
        ref = ModelRef.parse(str(params.get("ref", name)))
        if ref.name != name:
            raise InvalidInputError(f"parameter ref '{ref}' names another model than {name!r}", field="ref")
        await self.dataplane.load(ref, actor=actor)
        return pb.RepositoryModelLoadResponse()

    async def _unload(self, request: Any, scope: Scope, context: Any) -> Any:
        actor = self._authorize(scope, changes=True)
        self._repository_params(request)
        await self.dataplane.unload(request.model_name, actor=actor)
        return pb.RepositoryModelUnloadResponse()


def _stream_error(request: Any, message: str) -> Any:
    """A stream's answer to a failed request: the message, and the request's model and id."""
    answer = pb.ModelStreamInferResponse(error_message=message)
    if request is not None:
        answer.infer_response.model_name = request.model_name
        answer.infer_response.id = request.id
    return answer


def _scope(path: str, context: Any) -> Scope:
    """The call as the ASGI-shaped scope the Authenticator and request ids read: its metadata
    as headers (gRPC keys are lower-case already; `-bin` values are bytes)."""
    headers = [
        (key.encode("latin-1"), value if isinstance(value, bytes) else value.encode("latin-1"))
        for key, value in context.invocation_metadata() or ()
    ]
    return {"type": "http", "method": "POST", "path": path, "headers": headers, "path_params": {}}


def _parse(message: Any, data: bytes) -> Any:
    try:
        return message.FromString(data)
    except DecodeError as exc:
        raise InvalidInputError(
            f"the request is not a valid {message.DESCRIPTOR.full_name} protobuf message ({exc})",
            field="body",
        ) from exc


def _version(scope: Scope, text: str) -> int | None:
    """A request's `version` field as a version number, with the HTTP layer's check and message."""
    scope["path_params"] = {"version": text}
    return parse_version(Request(scope))


def _label(dataplane: DataPlane, scope: Scope, name: str, version: int | None) -> None:
    if dataplane.is_served(name):
        scope[_LABELS] = (name, version)


async def _abort(context: Any, exc: ShipyardError, request_id: str) -> None:
    """End the call with the error's status code and message (this raises, as grpcio's abort does)."""
    trailing = [(REQUEST_ID_HEADER.decode(), request_id)]
    if isinstance(exc, RateLimitedError):
        trailing.append(("retry-after", str(max(1, math.ceil(exc.retry_after_s)))))
    await context.abort(status_code(exc), client_message(exc), tuple(trailing))

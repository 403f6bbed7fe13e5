"""What every protocol adapter shares: JSON responses, error mapping, bounded body reading,
and the per-request metrics wrapper. The HTTP layer maps errors to responses here only."""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from shipyard.errors import (
    InvalidInputError,
    MethodNotAllowedError,
    ModelError,
    PayloadTooLargeError,
    RateLimitedError,
    ShipyardError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from shipyard.monitor import metrics
from shipyard.monitor.logs import REQUEST_ID
from shipyard.monitor.prediction_recorder import Sample
from shipyard.monitor.tracing import SCOPE_KEY as TRACE
from shipyard.serve.auth import caller_id, require_model
from shipyard.serve.dataplane import ClientDisconnectedError
from shipyard.serve.headers import headers_of
from shipyard.serve.request_ids import HEADER as REQUEST_ID_HEADER
from shipyard.serve.request_ids import request_id as accept_request_id
from shipyard.types import MAX_VERSION

if TYPE_CHECKING:
    from shipyard.monitor.tracing import Tracer

log = logging.getLogger("shipyard.serve")

Handler = Callable[[Request], Awaitable[Response]]
ErrorBody = Callable[[ShipyardError], dict[str, Any]]
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class BytesResponse(Response):
    """A Response with prebuilt raw headers: Starlette's header assembly is measurable per request."""

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        media_type: bytes = b"application/json",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        self.raw_headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", media_type),
            *(extra or []),
        ]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()] if headers else None
    return BytesResponse(orjson.dumps(data, option=_JSON_OPTIONS), status, extra=extra)


def header(request: Request, name: bytes) -> str | None:
    """One request header, from a dict built once per request (no Starlette Headers object)."""
    value = headers_of(request.scope).get(name)
    return None if value is None else value.decode("latin-1")


def parse_version(request: Request) -> int | None:
    """The `{version}` path segment, if any, as a version number (400 if it is not one)."""
    text = request.path_params.get("version")
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or not 1 <= int(text[:12]) <= MAX_VERSION:
        raise InvalidInputError(
            f"model version must be a positive integer, got {text[:20]!r}", field="version"
        )
    return int(text)


def label(request: Request, name: str, version: int | None = None) -> None:
    """Name the model (and version) a request ran on, for its metric labels.

    Routes with a `{model}` path segment are labelled with it already; handlers call this once
    they know more (the model named in the body, the version that answered). The `endpoint`
    wrapper keeps a name only if it is served, so labels never carry arbitrary user input.
    With API keys on, this is also where a model named in the body is authorized (403 unless
    the caller's key may infer on it): every handler names its model here before inference.
    """
    require_model(request, name)
    request.scope[_LABELS] = (name, version)


_LABELS = "shipyard.labels"  # the scope key `label` writes and `endpoint` reads; nothing else
# Characters of an error message and its field: room to explain, none to echo a client's input whole.
MAX_MESSAGE = 500
_MAX_FIELD = 64


def client_message(exc: ShipyardError) -> str:
    """What the caller may read: a model failure's detail stays in the server log, and a message
    quoting the client (a 9 KB model name) keeps its start (what) and end (the next step)."""
    message = exc.public if isinstance(exc, ModelError) else exc.message
    if len(message) <= MAX_MESSAGE:
        return message
    keep = (MAX_MESSAGE - 5) // 2
    return f"{message[:keep]} ... {message[-keep:]}"


def _field(exc: ShipyardError) -> str | None:
    return None if exc.field is None else exc.field[:_MAX_FIELD]


def plain_error(exc: ShipyardError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": client_message(exc)}
    if exc.field:
        body["field"] = _field(exc)
    return body


def openai_error(exc: ShipyardError) -> dict[str, Any]:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return {
        "error": {"message": client_message(exc), "type": kind, "param": _field(exc), "code": exc.status_code}
    }


def error_response(exc: ShipyardError, body: ErrorBody = plain_error) -> Response:
    """The one mapping from an error to an HTTP response (status, JSON body, headers)."""
    headers = None
    if isinstance(exc, RateLimitedError):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    elif exc.status_code == 503:
        headers = {"Retry-After": "1"}
    elif isinstance(exc, MethodNotAllowedError):
        headers = {"Allow": exc.allow}
    elif isinstance(exc, UnauthorizedError):
        headers = {"WWW-Authenticate": 'Bearer realm="shipyard"'}
    return json_response(body(exc), exc.status_code, headers)


def internal_error() -> ShipyardError:
    """What a client sees of an unexpected failure: no traceback, no path (the log has them)."""
    return ShipyardError("internal server error; the server log has the details")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (never buffered)."""
    declared = header(request, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInputError("Content-Length is not a number", field="content-length") from None
        if size > limit:
            raise PayloadTooLargeError(
                f"request body of {size} bytes is over the limit of {limit} bytes", field="body"
            )
    chunks = []
    received = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        received += len(chunk)
        if received > limit:
            raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if (trace := request.scope.get(TRACE)) is not None:
        trace.received = time.perf_counter()
    encoding = (header(request, b"content-encoding") or "identity").lower()
    if encoding in ("gzip", "deflate"):
        body = _decompress(body, encoding, limit)
    elif encoding != "identity":
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {encoding!r} is not supported (use gzip or deflate)",
            field="content-encoding",
        )
    return body


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = 31 if encoding == "gzip" else 15
    decompressor = zlib.decompressobj(wbits)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInputError(f"body is not valid {encoding} data: {exc}", field="body") from exc
    if len(out) > limit or decompressor.unconsumed_tail:
        raise PayloadTooLargeError(f"decompressed body is over the limit of {limit} bytes", field="body")
    return out


def disconnect_watcher(request: Request) -> Callable[[], Awaitable[None]]:
    """Resolves when the client disconnects (call only after the body has been read)."""

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait


def parse_json(data: bytes, what: str = "request body") -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"{what} is not valid JSON: {exc}", field="body") from exc


def require_json(request: Request, *also: str) -> str:
    """The body's media type; 415 unless it is JSON (`application/json` or `…+json`) or one of `also`.

    A missing type is refused too: a web page on another origin may post without a CORS
    preflight only with a form or text/plain type, or with none (a Blob body), so accepting
    none would let any page a user visits run inference here. `curl -d` sends a form type and
    was refused already; `curl --json` and every client library send application/json.
    """
    content_type = header(request, b"content-type") or ""
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json") and media not in also:
        accepted = " or ".join(["application/json (or a +json type)", *filter(None, also)])
        given = (
            f"Content-Type {content_type[:100]!r} is" if content_type else "a request without Content-Type is"
        )
        raise UnsupportedMediaTypeError(f"{given} not supported here; send {accepted}", field="content-type")
    return media


def request_timeout(request: Request) -> float | None:
    """The deadline the client asks for, in seconds: `X-Request-Timeout: 2.5` or gRPC's
    `grpc-timeout: 2500m`; None if it asks for none. 400 if malformed (never silently ignored)."""
    text = header(request, b"x-request-timeout")
    if text is not None:
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds < math.inf:
            raise InvalidInputError(
                f"X-Request-Timeout must be a positive number of seconds, got {text[:40]!r}",
                field="x-request-timeout",
            )
        return seconds
    text = header(request, b"grpc-timeout")
    if text is None:
        return None
    unit = _GRPC_UNITS.get(text[-1:])
    digits = text[:-1]
    if unit is None or not (digits.isascii() and digits.isdigit() and len(digits) <= 8) or not int(digits):
        raise InvalidInputError(
            f"grpc-timeout must be 1 to 8 digits and a unit (H, M, S, m, u, n), got {text[:40]!r}",
            field="grpc-timeout",
        )
    return int(digits) * unit


_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


PREDICTIONS = "shipyard.predictions"  # the scope key of the app's prediction log, when it is on
_SAMPLE = "shipyard.sample"  # what the request ran on, for the prediction log


def call_options(request: Request) -> dict[str, Any]:
    """What a request tells `DataPlane.infer` beyond its inputs: its deadline, its caller, its
    trace (if it is traced) and, with the prediction log on, where to note what it ran on."""
    scope = request.scope
    options: dict[str, Any] = {
        "timeout_s": request_timeout(request),
        "caller": caller_id(request),
        "trace": scope.get(TRACE),
    }
    if PREDICTIONS in scope:
        options["sample"] = scope[_SAMPLE] = Sample()
    return options


def endpoint(
    protocol: str,
    served: Callable[[str], bool],
    errors: ErrorBody = plain_error,
    tracer: Tracer | None = None,
) -> Callable[[Handler], Handler]:
    """Wrap a handler: map errors to JSON responses, record request metrics and, with a `tracer`,
    the request's span (its trace id then goes with the latency observation as an exemplar).

    `served(name)` tells whether a path's model name is served, so the `model` label only ever
    holds served names, never arbitrary user input.
    """

    # Label children are cached: prometheus_client's labels() costs microseconds per call.
    children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def wrap(fn: Handler) -> Handler:
        span_name = f"{protocol} {fn.__name__.strip('_')}"

        async def handler(request: Request) -> Response:
            started = time.perf_counter()
            trace = None if tracer is None else tracer.begin(request.scope, span_name, protocol)
            request_id = accept_request_id(header(request, REQUEST_ID_HEADER))
            token = REQUEST_ID.set(request_id)  # on every line logged about this request
            kind = ""
            try:
                response = await fn(request)
            except ShipyardError as exc:
                kind = exc.kind
                if isinstance(exc, ModelError):
                    log.error("%s %s: %s", request.method, request.url.path, exc.message, exc_info=exc)
                response = error_response(exc, errors)
            except ClientDisconnectedError:
                response = Response(status_code=499)  # nobody reads it; counted in metrics
            except Exception:
                log.exception("unexpected error on %s %s", request.method, request.url.path)
                kind = "internal_error"
                response = error_response(internal_error(), errors)
            finally:
                REQUEST_ID.reset(token)
            response.raw_headers.append((REQUEST_ID_HEADER, request_id.encode()))
            scope = request.scope
            name, version = scope.get(_LABELS) or (scope["path_params"].get("model"), None)
            model = name if name and served(name) else "-"
            key = (model, "-" if version is None else str(version), str(response.status_code))
            pair = children.get(key)
            if pair is None:
                labels = (key[0], key[1], protocol, key[2])
                pair = children[key] = (
                    metrics.REQUESTS.labels(*labels),
                    metrics.REQUEST_LATENCY.labels(*labels),
                )
            elapsed = time.perf_counter() - started
            pair[0].inc()
            exemplar = None if trace is None else trace.finish(response, key[0], key[1])
            pair[1].observe(elapsed, exemplar)
            if kind:  # errors by kind (not_found, invalid_input, overloaded, …), never by message
                metrics.count_error(key[0], key[1], protocol, kind)
            sample = scope.get(_SAMPLE)
            if sample is not None:  # an inference ran, or was refused, with the prediction log on
                scope[PREDICTIONS].record(
                    request_id, model, version, protocol, response.status_code, elapsed, sample
                )
            return response

        handler.__name__ = fn.__name__
        handler.__doc__ = fn.__doc__
        return handler

    return wrap

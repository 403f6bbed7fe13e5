"""Talking to a running server for a command given `--url`: its JSON answers and its errors as
Shipyard errors of the same kind (so the exit code matches the HTTP status)."""

from __future__ import annotations

import json
from typing import Any

from shipyard.errors import InvalidInputError, NotReadyError, ShipyardError

DEFAULT_URL = "http://127.0.0.1:8000"


def base_url(url: str) -> str:
    """`url` without its trailing slash, `http://` added when it names no scheme."""
    base = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
    if not base.startswith(("http://", "https://")):
        raise InvalidInputError(f"URL {url!r} is not an http(s) address", field="url")
    return base


def call_json(
    base: str, path: str, api_key: str | None, body: Any = None, *, hint: str = ""
) -> tuple[int, dict[str, Any]]:
    """(status, JSON answer) of GET `path`, or POST with `body` as JSON; a 4xx or 5xx with a
    Shipyard error body is raised as that error, any 2xx returned. `hint` ends the message when
    nothing answers."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        raise server_error(exc.code, exc.read(), base) from exc
    except (urllib.error.URLError, OSError) as exc:
        why = getattr(exc, "reason", exc)
        raise NotReadyError(
            f"nothing answers at {base} ({why}); start a server with `shipyard serve REF`, give its "
            f"address with --url{hint}"
        ) from exc
    answer = json_or_none(raw)
    if not isinstance(answer, dict):
        raise ShipyardError(f"{base}{path} did not answer with JSON: is a Shipyard server listening there?")
    return status, answer


def server_error(status: int, raw: bytes, base: str) -> ShipyardError:
    """The server's JSON error as the error of the matching kind (so the exit code matches)."""
    body = json_or_none(raw)
    message = body.get("error") if isinstance(body, dict) else None
    if not isinstance(message, str):
        return ShipyardError(f"{base} answered {status}: is a Shipyard server listening there?")
    field = body.get("field") if isinstance(body, dict) else None
    return error_of(status)(f"{base}: {message}", field=field if isinstance(field, str) else None)


def error_of(status: int) -> type[ShipyardError]:
    """The Shipyard error class an HTTP status stands for."""
    from shipyard import errors

    kinds: dict[int, type[ShipyardError]] = {
        400: errors.InvalidInputError,
        401: errors.UnauthorizedError,
        403: errors.ForbiddenError,
        404: errors.NotFoundError,
        409: errors.ConflictError,
        413: errors.PayloadTooLargeError,
        503: errors.NotReadyError,
    }
    return kinds.get(status, ShipyardError)


def json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None

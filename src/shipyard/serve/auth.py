"""Who may call what: API keys from the registry, checked once per request before any route runs.

Authentication is on once any key exists in the registry (or with `serve.auth = "required"`);
until then the server answers everyone, which is why it then binds loopback only. Probes stay
open so orchestrators need no key.

Lookups are cached for `serve.auth_cache_ttl_s`, keyed by the credential header's value, in this
process's memory only (the registry stores only a hash of each secret): per request, a dict and a
set lookup on a synchronous path (`admits`) taken before any coroutine is made, under a
microsecond. (A SHA-256 of the header as the cache's key cost as much again: a fifth of the 3%
that auth and limits together may cost.) A revocation stops a key within the TTL, bar the
requests that arrive while the one lookup after it runs: an entry past its TTL keeps answering,
for one more TTL at most, while one lookup refreshes it in the background, so a busy server
neither stalls its requests every TTL nor sends every request in flight to the registry at once
(32 concurrent lookups, each with a write, every 5 s, were a tenth of the throughput).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.types import Scope

from shipyard.errors import ForbiddenError, InvalidInputError, ShipyardError, UnauthorizedError
from shipyard.registry.keys import ADMIN, WRITE, ApiKey, allows, key_id_of
from shipyard.serve.headers import headers_of
from shipyard.types import NAME_PATTERN

if TYPE_CHECKING:
    from shipyard.registry import Registry
    from shipyard.settings import ServeSettings, Settings

log = logging.getLogger("shipyard.auth")

ADMIN_TOKEN_CALLER = "admin-token"  # the caller id of the deprecated SHIPYARD_SERVE__ADMIN_TOKEN
_CALLER = "shipyard.caller"  # scope key: the authenticated key's record
_BODY_MODEL = "infer:?"  # the model is named in the body: checked by `require_model`
_CACHE_LIMIT = 10_000  # entries; random keys sent by an attacker cannot grow it past this
_AUDIT_EVERY_S = 10.0  # one audit entry per event and key at most this often
# A flood of random keys names a new key id each time, so per-key spacing alone would not bound
# it: these cap what all security events together may cost per second (lines, database writes).
_LOG_LINES_PER_S = 20
_AUDIT_ENTRIES_PER_S = 5
_INFER_PATH = re.compile(
    r"^/v2/models/(?P<v2>[^/]+)(?:(?:/versions/[^/]+)?/(?:infer|generate|generate_stream)|/feedback)$"
    r"|^/v1/models/(?P<v1>[^/:]+)(?:/versions/[^/:]+|/labels/[^/:]+)?:(?:predict|classify|regress)$"
)
# gRPC calls are checked by their method's path, as HTTP/2 carries it (serve/protocols/grpc_v2.py).
GRPC_SERVICE = "inference.GRPCInferenceService"
_BODY_MODEL_PATHS = frozenset(
    {
        "/v1/embeddings",
        "/v1/completions",
        "/v1/chat/completions",
        "/invocations",
        f"/{GRPC_SERVICE}/ModelInfer",
        f"/{GRPC_SERVICE}/ModelStreamInfer",
    }
)
_GRPC_PROBES = frozenset({f"/{GRPC_SERVICE}/ServerLive", f"/{GRPC_SERVICE}/ServerReady"})
_PROBES = frozenset({"/healthz", "/readyz", "/ping"})
_NEVER = float("inf")
_NAME = re.compile(NAME_PATTERN)
_ALLOWED_LIMIT = 64  # scopes remembered per key: paths name models, and anyone can name many


@dataclass(slots=True)
class _Lookup:
    """The registry's answer for one credential, as cached."""

    valid_until: float  # monotonic seconds
    key: ApiKey | str  # the key's record, or why it is refused (a message without the key)
    expires: float  # the key's own expiry, as epoch seconds (inf: never)
    allowed: set[str] = field(default_factory=set)  # scopes it was found to carry, up to _ALLOWED_LIMIT


@functools.lru_cache(maxsize=4096)  # a path's scope never changes; a hit costs ~0.1 µs, the regex ~1
def required_scope(method: str, path: str, probes: frozenset[str] = _PROBES) -> str | None:
    """The scope a request needs: None for probes, `admin` for management, `infer:<model>` for
    inference and its feedback, `read` for everything else (metadata, docs, metrics, /openapi.json)."""
    if path in probes or path.startswith("/v2/health/") or path in _GRPC_PROBES:
        return None
    if path.startswith(
        (
            "/v2/repository/",
            f"/{GRPC_SERVICE}/Repository",
            "/v2/systemsharedmemory",
            f"/{GRPC_SERVICE}/SystemSharedMemory",
        )
    ):
        return ADMIN
    if method == "POST":
        match = _INFER_PATH.match(path)
        if match is not None:
            return f"infer:{match.group('v2') or match.group('v1')}"
        if path in _BODY_MODEL_PATHS:
            return _BODY_MODEL
    return "read"


def caller_id(request: Request) -> str | None:
    """The id of the key that authenticated this request; None when authentication is off."""
    key: ApiKey | str | None = request.scope.get(_CALLER)
    return key if isinstance(key, str) or key is None else key.id


def require_model(request: Request, model: str) -> None:
    """403 unless the caller may infer on `model` (for routes whose body names the model)."""
    scope = request.scope
    key = scope.get(_CALLER)
    if isinstance(key, ApiKey) and not key.allows(f"infer:{model}"):
        authenticator: Authenticator = scope[_AUTHENTICATOR]
        authenticator.report("forbidden", key.id, scope=f"infer:{model}", path=scope["path"])
        raise _forbidden(key.id, f"infer:{model}")


_AUTHENTICATOR = "shipyard.authenticator"  # scope key: set for routes whose body names the model


class _Budget:
    """At most `per_s` events per second; counts the ones it turns away."""

    __slots__ = ("_left", "_per_s", "_second", "suppressed")

    def __init__(self, per_s: int) -> None:
        self._per_s, self._left, self._second, self.suppressed = per_s, per_s, 0, 0

    def allow(self, now: float) -> bool:
        second = int(now)
        if second != self._second:
            self._second, self._left = second, self._per_s
        if self._left <= 0:
            self.suppressed += 1
            return False
        self._left -= 1
        return True


def _forbidden(key_id: str, needed: str) -> ForbiddenError:
    if needed.startswith("infer:") and not _NAME.fullmatch(needed[6:]):
        # The name came from a request body: a name no model can have is not echoed (it could
        # hold a newline or a terminal escape), and no key could carry a scope for it anyway.
        return ForbiddenError(
            f"API key {key_id} may not infer on a model of that name (no model can have it)",
            field="authorization",
        )
    return ForbiddenError(
        f"API key {key_id} lacks the scope {needed!r}; create a key with "
        f"`shipyard keys create NAME --scope {needed}`",
        field="authorization",
    )


class Authenticator:
    """Checks each request's key against the registry, through a short-lived cache."""

    def __init__(self, registry: Registry, settings: ServeSettings, probes: frozenset[str] = _PROBES) -> None:
        self._registry = registry
        self._ttl = settings.auth_cache_ttl_s
        self._probes = probes
        self._enabled = settings.auth == "required"
        self._recheck_at = float("-inf")
        token = settings.admin_token
        self._admin_token = hashlib.sha256(token.encode()).digest() if token else None
        # the credential header's value -> the lookup's answer
        self._cache: dict[bytes, _Lookup] = {}
        self._lookups: dict[bytes, asyncio.Future[_Lookup]] = {}
        self._audited: dict[tuple[str, str | None], float] = {}  # (event, key id) -> last entry
        self._log_budget = _Budget(_LOG_LINES_PER_S)
        self._audit_budget = _Budget(_AUDIT_ENTRIES_PER_S)
        self._pending: set[asyncio.Task[None]] = set()  # referenced, so none is garbage-collected

    def admits(self, scope: Scope) -> bool:
        """True if the request may go on and that is known without the registry or a report (a
        fresh cached key with the scope, or no authentication at all): no coroutine, about a
        microsecond. False means: ask `check`, which also refuses."""
        if not self._enabled:
            return time.monotonic() < self._recheck_at
        needed = required_scope(scope["method"], scope["path"], self._probes)
        if needed is None:
            return True
        if needed in (ADMIN, WRITE):  # every use is reported
            return False
        credential = _credential(scope)
        if credential is None:
            return False
        hit = self._cache.get(credential)
        if hit is None or hit.valid_until <= time.monotonic() or hit.expires <= time.time():
            return False
        key = hit.key
        if not isinstance(key, ApiKey):
            return False
        if needed == _BODY_MODEL:
            scope[_CALLER], scope[_AUTHENTICATOR] = key, self  # `require_model` reports through it
            return True
        if needed not in hit.allowed:
            if not allows(key.scopes, needed):
                return False
            if len(hit.allowed) < _ALLOWED_LIMIT:
                hit.allowed.add(needed)
        scope[_CALLER] = key
        return True

    async def check(self, scope: Scope) -> ShipyardError | None:
        """None if the request may go on (its caller recorded in the scope), else the refusal."""
        if not self._enabled:
            if time.monotonic() < self._recheck_at:
                return None  # authentication is off: the whole cost is this comparison
            # Keys are never deleted, only revoked, so once on it stays on: no more checks.
            self._enabled = await asyncio.to_thread(self._registry.auth_enabled)
            self._recheck_at = time.monotonic() + self._ttl
            if not self._enabled:
                return None
        needed = required_scope(scope["method"], scope["path"], self._probes)
        if needed is None:
            return None
        credential = _credential(scope)
        presented = _presented(scope)
        if credential is None or presented is None:
            self.report("refused", None, reason="no key", path=scope["path"])
            return UnauthorizedError(
                "this server needs an API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                field="authorization",
            )
        if (
            needed == ADMIN
            and self._admin_token is not None
            and hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._admin_token)
        ):
            scope[_CALLER] = ADMIN_TOKEN_CALLER
            self.report("used", ADMIN_TOKEN_CALLER, scope=ADMIN, path=scope["path"])
            return None
        hit = self._cache.get(credential)
        now = time.monotonic()
        if hit is None or hit.valid_until <= now:
            if hit is not None and isinstance(hit.key, ApiKey) and now < hit.valid_until + self._ttl:
                self._lookup_once(presented, credential)  # answer from the entry while it refreshes
            else:
                hit = await self._lookup_once(presented, credential)
        key = hit.key
        if isinstance(key, ApiKey) and hit.expires <= time.time():  # expired while cached
            key = f"API key {key.id} expired at {key.expires_at}"
        if isinstance(key, str):
            self.report("refused", key_id_of(presented), reason=key, path=scope["path"])
            return UnauthorizedError(key, field="authorization")
        scope[_CALLER] = key
        if needed == _BODY_MODEL:
            scope[_AUTHENTICATOR] = self  # `require_model` reports through it
        elif not allows(key.scopes, needed):
            self.report("forbidden", key.id, scope=needed, path=scope["path"])
            return _forbidden(key.id, needed)
        if needed in (ADMIN, WRITE):
            self.report("used", key.id, scope=needed, path=scope["path"])
        return None

    def report(self, event: str, key_id: str | None, **detail: str | None) -> None:
        """A security event (refused key, missing scope, admin or write use): logged as one
        structured line and appended to the registry's audit log off the request path. Never
        given the secret, only the key's id.

        A flood of bad keys must not become a flood of log lines or database writes: refusals
        get at most `_LOG_LINES_PER_S` lines (the next one says how many were left out) and
        `_AUDIT_ENTRIES_PER_S` audit entries in all; every event gets at most one audit entry
        per event and key per `_AUDIT_EVERY_S`. The use of a valid key is never crowded out."""
        now = time.monotonic()
        refusal = event != "used"  # what anyone can cause, unlike the use of a valid key
        if not refusal or self._log_budget.allow(now):
            if self._log_budget.suppressed:
                detail = {**detail, "suppressed": str(self._log_budget.suppressed)}
                self._log_budget.suppressed = 0
            # repr(): a path is the client's text, and a newline in it must not forge a log line.
            log.warning(
                "auth %s key=%s %s", event, key_id or "-", " ".join(f"{k}={v!r}" for k, v in detail.items())
            )
        if now - self._audited.get((event, key_id), float("-inf")) < _AUDIT_EVERY_S:
            return
        if refusal and not self._audit_budget.allow(now):
            return
        if len(self._audited) >= _CACHE_LIMIT:
            self._audited.clear()
        self._audited[(event, key_id)] = now
        task = asyncio.get_running_loop().create_task(self._audit(event, key_id, detail))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _audit(self, event: str, key_id: str | None, detail: dict[str, str | None]) -> None:
        try:
            await asyncio.to_thread(
                self._registry.audit,
                f"auth.{event}",
                target=detail.get("path") or "-",
                actor=key_id or "anonymous",
                detail=detail,
            )
        except Exception:  # the audit log failing must not fail the request
            log.exception("cannot append auth.%s to the audit log", event)

    def _lookup_once(self, presented: str, credential: bytes) -> asyncio.Future[_Lookup]:
        """The registry's answer for a key, cached: one lookup at a time per key, however many
        requests are waiting for it."""
        pending = self._lookups.get(credential)
        if pending is None:
            pending = asyncio.ensure_future(self._lookup(presented, credential))
            self._lookups[credential] = pending
            pending.add_done_callback(lambda done: self._looked_up(credential, done))
        return pending

    def _looked_up(self, credential: bytes, done: asyncio.Future[_Lookup]) -> None:
        self._lookups.pop(credential, None)
        if not done.cancelled() and (exc := done.exception()) is not None:  # a waiter sees it too
            log.warning("API key lookup failed: %s", exc)

    async def _lookup(self, presented: str, credential: bytes) -> _Lookup:
        """Look the key up in the registry and cache the answer."""
        result: ApiKey | str
        try:
            result = await asyncio.to_thread(self._registry.authenticate, presented)
        except UnauthorizedError as exc:
            result = exc.message
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        expires = _NEVER
        if isinstance(result, ApiKey) and result.expires_at is not None:
            expires = datetime.fromisoformat(result.expires_at).timestamp()
        hit = self._cache[credential] = _Lookup(time.monotonic() + self._ttl, result, expires)
        return hit


def _credential(scope: Scope) -> bytes | None:
    """The raw value of the `Authorization` header, else of `X-API-Key` (what the cache is keyed by)."""
    headers = headers_of(scope)
    value = headers.get(b"authorization")
    return value if value is not None else headers.get(b"x-api-key")


def _presented(scope: Scope) -> str | None:
    """The key sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    headers = headers_of(scope)
    value = headers.get(b"authorization")
    if value is not None:
        scheme, _, key = value.decode("latin-1").partition(" ")
        return key.strip() or None if scheme.lower() == "bearer" else None
    api_key = headers.get(b"x-api-key")
    return api_key.decode("latin-1").strip() or None if api_key is not None else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


def require_safe_bind(settings: Settings, registry: Registry) -> None:
    """Refuse to serve a non-loopback address without keys, unless told `--insecure`."""
    serve = settings.serve
    if is_loopback(serve.host) or serve.insecure or serve.auth == "required" or registry.auth_enabled():
        return
    raise InvalidInputError(
        f"refusing to serve on {serve.host} without API keys: anyone who can reach it could use and "
        "manage its models; create a key first (`shipyard keys create NAME --scope 'infer:*'`), "
        "or pass --insecure to serve without keys",
        field="host",
    )

"""schemathesis over the server's own /openapi.json, in-process: every operation (management
included) with no key, a key holding every scope, a key lacking them and a forged key.

Each answer must be below 500, carry no traceback, filesystem path or secret in its body or
headers, and, when an error, be one line of JSON in the protocol's error shape. The app runs in
a blocking portal (its own event-loop thread) so hypothesis drives it from a plain function.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
import schemathesis
from app_support import Home, Served, serve
from fake_runtime import Controls
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

import shipyard

MAX_MESSAGE = 500  # characters: room for the explanation and short excerpts, not for an echo
CASES = 3_000  # the least the run must send, over all operations and credentials
ADMIN_TOKEN = "deprecated-admin-token-8d1f0c"  # a secret no answer may show
OPENAI_ROUTES = frozenset({"/v1/models", "/v1/embeddings", "/v1/completions", "/v1/chat/completions"})
READINESS = ("/readyz", "/v2/health/ready")


@dataclass
class Fuzzed:
    """The served app and what the run saw."""

    served: Served
    portal: anyio.from_thread.BlockingPortal
    secrets: list[str]
    forbidden: list[str]  # substrings no response may contain
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    async def send_all(self, cases: list[tuple[str, dict[str, Any]]]) -> None:
        """Send every generated case in order, and record what is wrong with each answer."""
        for path, kwargs in cases:
            body = kwargs.get("data")
            response = await self.served.client.request(
                kwargs["method"],
                kwargs["url"],
                headers=kwargs.get("headers"),
                params=kwargs.get("params") or None,
                content=body.encode() if isinstance(body, str) else body,
                json=kwargs.get("json"),
            )
            self.statuses[response.status_code] += 1
            problem = _check(self, path, response)
            if problem is not None:
                self.failures.append(f"{kwargs['method']} {kwargs['url']}: {problem}")


@pytest.fixture
def fuzzed(fake: Controls, home: Home) -> Iterator[Fuzzed]:
    home.push("iris")
    _, full = home.registry.create_key("full", ["read", "write", "admin", "infer:*"])
    _, lacking = home.registry.create_key("lacking", ["infer:other"])
    package = str(Path(shipyard.__file__).parent.parent)
    forbidden = [str(home.path), package, sys.prefix, "site-packages", "Traceback", 'File "']
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(
            serve(home, ["iris"], admin_token=ADMIN_TOKEN, auth_cache_ttl_s=60)
        ) as served,
    ):
        yield Fuzzed(served, portal, [full, lacking, ADMIN_TOKEN], forbidden)


def _operations(fuzzed: Fuzzed, key: str) -> list[Any]:
    spec = fuzzed.portal.call(lambda: fuzzed.served.client.get("/openapi.json", headers=_bearer(key)))
    assert spec.status_code == 200, spec.text
    operations = [op.ok() for op in schemathesis.openapi.from_dict(spec.json()).get_all_operations()]  # type: ignore[union-attr]
    # management last: a generated unload may take the model away from the operations after it
    return sorted(operations, key=lambda op: op.path.startswith("/v2/repository/"))


def _bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


def _check(fuzzed: Fuzzed, path: str, response: httpx.Response) -> str | None:
    """Why this answer is wrong, or None."""
    status = response.status_code
    ready_probe = path in READINESS or path.endswith("/ready")
    if status >= 500 and not (status == 503 and ready_probe):
        return f"server error {status}: {response.text[:300]}"
    shown = response.text + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
    for needle in (*fuzzed.forbidden, *fuzzed.secrets):
        if needle in shown:
            return f"the answer shows {needle[:12]!r}…: {shown[:300]}"
    if status < 400 or ready_probe:
        return None
    if response.headers.get("content-type") != "application/json":
        return f"{status} error is {response.headers.get('content-type')}, not application/json"
    try:
        body = response.json()
    except ValueError:
        return f"{status} error is not JSON: {response.text[:300]}"
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if path in OPENAI_ROUTES and isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        return f"{status} error has no message in the protocol's shape: {response.text[:300]}"
    if "\n" in message:
        return f"{status} error spans several lines: {message[:300]!r}"
    if len(message) > MAX_MESSAGE or any(ord(c) < 0x20 for c in message):
        return f"{status} error echoes the request unbounded or unescaped: {message[:300]!r}"
    return None


def _generate(
    operation: Any, key: str | None, mode: GenerationMode, examples: int, model: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """Up to `examples` distinct requests for `operation` sent with `key`, as (path template,
    request); `model`: the served model put in the path, so the case gets past the lookup."""
    pinned = {"model": model} if model is not None and "{model}" in operation.path else None
    cases: list[tuple[str, dict[str, Any]]] = []

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=True,  # the same cases on every run: CI failures reproduce
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode, path_parameters=pinned))
    def run(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url="http://shipyard.test", headers=_bearer(key))
        cases.append((operation.path, kwargs))

    try:
        run()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # nothing to make invalid: no parameters, no body
    return cases


@pytest.mark.slow
def test_every_operation_with_and_without_credentials_finds_no_defect(fuzzed: Fuzzed) -> None:
    full, lacking, _ = fuzzed.secrets
    forged = "sy_0123456789abcdef_" + "A" * 43  # shaped like a key, in no registry
    operations = _operations(fuzzed, full)
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v2/models/iris/infer",
        "POST /v1/models/iris:predict",
        "POST /v2/repository/models/{model}/load",
        "POST /v2/repository/models/{model}/unload",
        "POST /v2/repository/index",
        "POST /v1/embeddings",
    }
    # A valid key with every scope reaches the handlers: most cases go there, valid and invalid.
    # Half of those name the served model, so they get past the model lookup to the handler.
    runs: list[tuple[str | None, GenerationMode, int, str | None]] = [
        (full, GenerationMode.POSITIVE, 2, None),
        (full, GenerationMode.NEGATIVE, 2, None),
    ]
    runs += [(full, GenerationMode.POSITIVE, 2, "iris"), (full, GenerationMode.NEGATIVE, 2, "iris")]
    runs += [(None, GenerationMode.POSITIVE, 1, None), (lacking, GenerationMode.NEGATIVE, 1, "iris")]
    runs += [(forged, GenerationMode.POSITIVE, 1, None), (ADMIN_TOKEN, GenerationMode.NEGATIVE, 1, "iris")]
    per_weight = math.ceil(CASES / (len(operations) * sum(run[2] for run in runs)) * 2)
    started = time.monotonic()
    # Generated first, then sent in one go: hypothesis is synchronous, the app is not, and one
    # hop into the app's event loop per case would cost more than the case itself.
    cases = [
        case
        for operation in operations
        for key, mode, weight, model in runs
        for case in _generate(operation, key, mode, per_weight * weight, model)
    ]
    fuzzed.portal.call(fuzzed.send_all, cases)
    elapsed = time.monotonic() - started
    sent = sum(fuzzed.statuses.values())
    print(
        f"schemathesis in-process: {sent} cases, {len(operations)} operations, "
        f"{elapsed:.1f} s, statuses {dict(fuzzed.statuses)}"
    )
    assert not fuzzed.failures, "\n".join(fuzzed.failures[:20])
    assert sent >= CASES, dict(fuzzed.statuses)
    # every kind of caller was answered: success, refused (401), lacking a scope (403)
    assert {200, 401, 403} <= set(fuzzed.statuses), dict(fuzzed.statuses)

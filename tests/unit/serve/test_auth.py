"""API keys in the server, in-process: who may call which route, with which key, and what a
refusal looks like (401 with WWW-Authenticate, 403 naming the scope, never the key itself)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from typing import Any, cast

import anyio
import httpx
import pytest
import sqlalchemy as sa
from app_support import ROW, V2_ROW, Home, serve
from fake_runtime import Controls

from http_errors import assert_error
from shipyard.registry import Registry
from shipyard.registry.tables import api_keys
from shipyard.serve import auth as auth_module
from shipyard.serve.auth import Authenticator, _Budget, caller_id, required_scope
from shipyard.settings import Settings

pytestmark = pytest.mark.anyio

PROBES = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/v2/health/ready"), ("GET", "/ping")]
ROUTES: dict[str, list[tuple[str, str, Any]]] = {
    "read": [
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
        ("GET", "/docs", None),
        ("GET", "/v2/models/iris", None),
    ],
    "infer:iris": [
        ("POST", "/v2/models/iris/infer", V2_ROW),
        ("POST", "/v1/models/iris:predict", {"instances": [ROW]}),
    ],
    "admin": [("POST", "/v2/repository/index", {})],
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers)


def expire(home: Home, key_id: str) -> None:
    """Move a key's expiry into the past (keys cannot be created expired)."""
    with home.registry.metadata.engine.begin() as conn:
        conn.execute(
            api_keys.update().where(api_keys.c.id == key_id).values(expires_at="2020-01-01T00:00:00+00:00")
        )


@pytest.fixture
def keys(fake: Controls, home: Home) -> dict[str, str]:
    """iris served; one key per case of the matrix."""
    home.push("iris")
    made = {}
    for name, scopes in {
        "reader": ["read"],
        "inferrer": ["infer:iris"],
        "any-model": ["infer:*"],
        "other-model": ["infer:other", "read"],
        "admin": ["admin"],
        "expired": ["infer:*", "read", "admin"],
        "revoked": ["infer:*", "read", "admin"],
    }.items():
        record, secret = home.registry.create_key(name, scopes)
        made[name] = secret
        if name == "expired":
            expire(home, record.id)
    home.registry.revoke_key("revoked")
    return made


async def test_every_route_class_against_every_kind_of_key(
    keys: dict[str, str], home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    right = {"read": "reader", "infer:iris": "inferrer", "admin": "admin"}
    seen: list[str] = []
    async with serve(home, ["iris"], auth_cache_ttl_s=0) as served:
        client = served.client
        for method, path in PROBES:
            response = await client.request(method, path)
            assert response.status_code == 200, (path, response.text)
        for needed, routes in ROUTES.items():
            for method, path, body in routes:
                for headers, why in [
                    ({}, "needs an API key"),
                    (bearer("not-a-key"), "malformed"),
                    (bearer("sy_0123456789abcdef_" + "A" * 43), "not valid"),
                    (bearer(keys["expired"]), "expired"),
                    (bearer(keys["revoked"]), "revoked"),
                    ({"Authorization": f"Basic {keys['admin']}"}, "needs an API key"),
                ]:
                    response = await call(client, method, path, body, headers)
                    assert_error(response, 401, why)
                    assert response.headers["www-authenticate"].startswith("Bearer")
                    seen.append(response.text + str(response.headers))
                wrong = "reader" if needed != "read" else "inferrer"
                response = await call(client, method, path, body, bearer(keys[wrong]))
                assert_error(response, 403, repr(needed), "--scope")
                seen.append(response.text)
                for headers in (bearer(keys[right[needed]]), {"X-API-Key": keys[right[needed]]}):
                    response = await call(client, method, path, body, headers)
                    assert response.status_code == 200, (path, response.text)
            if needed.startswith("infer:"):
                for method, path, body in routes:
                    response = await call(client, method, path, body, bearer(keys["any-model"]))
                    assert response.status_code == 200, response.text
    everything = "\n".join([caplog.text, *seen])
    for secret in keys.values():
        assert secret not in everything
        assert secret.split("_", 2)[2] not in everything  # sy_<id>_<secret>: the secret may hold "_"
    assert "auth refused" in caplog.text and "auth used" in caplog.text  # the audit's events


async def test_a_model_named_in_the_body_needs_its_own_infer_scope(keys: dict[str, str], home: Home) -> None:
    async with serve(home, ["iris"], auth_cache_ttl_s=0) as served:
        body = {"model": "iris", "input": ["hello"]}
        response = await served.client.post("/v1/embeddings", json=body, headers=bearer(keys["other-model"]))
        assert response.status_code == 403 and "infer:iris" in response.text
        # With the scope the request reaches the route (which says iris is no embedding model).
        response = await served.client.post("/v1/embeddings", json=body, headers=bearer(keys["inferrer"]))
        assert response.status_code == 400 and "not an embedding model" in response.text


async def test_revocation_reaches_the_server_within_the_cache_time(keys: dict[str, str], home: Home) -> None:
    async with serve(home, ["iris"], auth_cache_ttl_s=0) as served:
        headers = bearer(keys["inferrer"])
        assert (
            await served.client.post("/v2/models/iris/infer", json=V2_ROW, headers=headers)
        ).status_code == 200
        home.registry.revoke_key("inferrer")
        response = await served.client.post("/v2/models/iris/infer", json=V2_ROW, headers=headers)
        assert_error(response, 401, "revoked")


async def test_a_cached_key_is_answered_without_the_registry(keys: dict[str, str], home: Home) -> None:
    async with serve(home, ["iris"], auth_cache_ttl_s=3600) as served:
        headers = bearer(keys["inferrer"])
        assert (
            await served.client.post("/v2/models/iris/infer", json=V2_ROW, headers=headers)
        ).status_code == 200
        home.registry.revoke_key("inferrer")  # not seen until the cached entry is an hour old
        assert (
            await served.client.post("/v2/models/iris/infer", json=V2_ROW, headers=headers)
        ).status_code == 200


async def test_a_key_created_while_serving_turns_authentication_on(fake: Controls, home: Home) -> None:
    home.push("iris")
    async with serve(home, ["iris"], auth_cache_ttl_s=0) as served:
        assert (await served.client.get("/v2/models/iris")).status_code == 200  # no key yet: open
        _, secret = home.registry.create_key("first", ["read"])
        assert_error(await served.client.get("/v2/models/iris"), 401)
        assert (await served.client.get("/v2/models/iris", headers=bearer(secret))).status_code == 200
        home.registry.revoke_key("first")  # revoking the last key never turns authentication off
        assert_error(await served.client.get("/v2/models/iris"), 401)


async def test_required_auth_refuses_everyone_until_a_key_exists(fake: Controls, home: Home) -> None:
    home.push("iris")
    async with serve(home, ["iris"], auth="required") as served:
        assert_error(await served.client.get("/metrics"), 401, "API key")
        assert (await served.client.get("/healthz")).status_code == 200


async def test_the_deprecated_admin_token_still_manages_models(keys: dict[str, str], home: Home) -> None:
    async with serve(home, ["iris"], admin_token="old-token", auth_cache_ttl_s=0) as served:
        index = await served.client.post("/v2/repository/index", headers=bearer("old-token"))
        assert index.status_code == 200
        assert_error(await served.client.get("/metrics", headers=bearer("old-token")), 401)  # admin only


async def test_insecure_is_shown_on_readyz(fake: Controls, home: Home) -> None:
    home.push("iris")
    async with serve(home, ["iris"], insecure=True) as served:
        assert (await served.client.get("/readyz")).json()["insecure"] is True
    async with serve(home, ["iris"]) as served:
        assert "insecure" not in (await served.client.get("/readyz")).json()


def test_a_key_is_checked_with_a_constant_time_compare(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    """Known id with a wrong secret, and an unknown id, both go through compare_digest."""
    compared: list[tuple[int, int]] = []
    original = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((len(a), len(b)))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    record, secret = home.registry.create_key("k", ["read"])
    assert home.registry.authenticate(secret).id == record.id
    forged = f"sy_{record.id}_{'B' * 43}"
    for presented in (forged, "sy_0123456789abcdef_" + "C" * 43):
        with pytest.raises(Exception, match="not valid"):
            home.registry.authenticate(presented)
    assert compared == [(64, 64)] * 3


def test_a_keys_last_use_is_written_at_most_once_a_minute(home: Home) -> None:
    """Every server looks each key up every TTL: a write each time would be a write per key per
    server every 5 s. The first use is recorded, then only once the recorded one is a minute old."""
    record, secret = home.registry.create_key("k", ["read"])

    def last_used() -> str | None:
        return next(k.last_used_at for k in home.registry.list_keys() if k.id == record.id)

    home.registry.authenticate(secret)
    first = last_used()
    assert first is not None
    home.registry.authenticate(secret)
    assert last_used() == first
    with home.registry.metadata.engine.begin() as conn:  # as if the use were two minutes old
        conn.execute(
            api_keys.update()
            .where(api_keys.c.id == record.id)
            .values(last_used_at="2020-01-01T00:00:00.000+00:00")
        )
    home.registry.authenticate(secret)
    assert (last_used() or "") > first


def test_keys_carry_256_random_bits_and_only_their_hash_is_stored(home: Home) -> None:
    record, secret = home.registry.create_key("k", ["read"])
    prefix, key_id, random_part = secret.split("_", 2)
    assert (prefix, key_id) == ("sy", record.id) and len(random_part) == 43  # 32 bytes, base64url
    with home.registry.metadata.engine.connect() as conn:
        row = conn.execute(sa.select(api_keys)).one()
    assert random_part not in str(tuple(row)) and secret not in str(tuple(row))


def test_required_scopes_by_route() -> None:
    assert required_scope("GET", "/v2/health/live") is None
    assert required_scope("POST", "/v2/models/iris/versions/2/infer") == "infer:iris"
    assert required_scope("POST", "/v1/models/iris/versions/2:predict") == "infer:iris"
    # TF Serving's other inference verbs, and a version named by its label (alias), infer too.
    assert required_scope("POST", "/v1/models/iris:classify") == "infer:iris"
    assert required_scope("POST", "/v1/models/iris/versions/2:regress") == "infer:iris"
    assert required_scope("POST", "/v1/models/iris/labels/production:predict") == "infer:iris"
    assert required_scope("GET", "/v1/models/iris/labels/production/metadata") == "read"
    assert required_scope("POST", "/v2/models/lm/generate") == "infer:lm"  # Triton's generate extension
    assert required_scope("POST", "/v2/models/lm/versions/1/generate_stream") == "infer:lm"
    assert required_scope("POST", "/v2/repository/models/iris/load") == "admin"
    assert required_scope("GET", "/v2/models/iris/versions/2") == "read"
    assert required_scope("GET", "/no/such/route") == "read"


async def test_caller_id_names_the_key(keys: dict[str, str], home: Home) -> None:
    from starlette.requests import Request

    async with serve(home, ["iris"], auth_cache_ttl_s=0) as served:
        record = next(k for k in home.registry.list_keys() if k.name == "reader")
        scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": "/v2/models/iris",
            "headers": [(b"authorization", f"Bearer {keys['reader']}".encode())],
        }
        assert await served.app.auth.check(scope) is None
        assert caller_id(Request(scope)) == record.id
        probe: dict[str, Any] = {"type": "http", "method": "GET", "path": "/healthz", "headers": []}
        assert await served.app.auth.check(probe) is None
        assert caller_id(Request(probe)) is None


async def audited(home: Home, action: str, count: int) -> list[Any]:
    """The audit entries of `action`, once there are `count` (they are written off the request path)."""
    for _ in range(500):
        entries = home.registry.audit_log(action=action)
        if len(entries) >= count:
            return entries
        await anyio.sleep(0.01)
    raise AssertionError(f"{count} {action} audit entries never came: {entries}")


async def test_key_changes_refusals_and_admin_use_reach_the_audit_log(
    keys: dict[str, str], home: Home
) -> None:
    created = home.registry.audit_log(action="key.create")
    assert len(created) == 7 and {e.detail["name"] for e in created} >= {"reader", "admin"}
    assert [e.detail["name"] for e in home.registry.audit_log(action="key.revoke")] == ["revoked"]
    async with serve(home, ["iris"]) as served:
        forged = "sy_0123456789abcdef_" + "x" * 43
        for _ in range(3):  # a flood of one bad key is one entry, not three
            response = await served.client.post("/v2/models/iris/infer", json=V2_ROW, headers=bearer(forged))
            assert response.status_code == 401
        index = await served.client.post("/v2/repository/index", json={}, headers=bearer(keys["admin"]))
        assert index.status_code == 200
        refused = await audited(home, "auth.refused", 1)
        used = await audited(home, "auth.used", 1)
    assert len(refused) == 1 and refused[0].actor == "0123456789abcdef"
    assert refused[0].target == "/v2/models/iris/infer"
    assert used[0].detail["scope"] == "admin" and used[0].actor != "anonymous"
    assert all(forged not in str(e.detail) and keys["admin"] not in str(e.detail) for e in refused + used)
    home.registry.verify_audit()


async def test_a_model_named_in_the_body_refused_for_want_of_scope_is_audited(
    keys: dict[str, str], home: Home
) -> None:
    async with serve(home, ["iris"]) as served:
        body = {"model": "iris", "input": ["hello"]}
        response = await served.client.post("/v1/embeddings", json=body, headers=bearer(keys["other-model"]))
        assert response.status_code == 403
        forbidden = await audited(home, "auth.forbidden", 1)
    assert forbidden[0].detail["scope"] == "infer:iris" and forbidden[0].target == "/v1/embeddings"


async def test_a_flood_of_random_keys_costs_a_bounded_number_of_log_lines_and_audit_entries(
    keys: dict[str, str], home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    flood = 300
    async with serve(home, ["iris"]) as served:
        started = anyio.current_time()
        with caplog.at_level(logging.WARNING, logger="shipyard.auth"):
            for i in range(flood):  # every one a different key id: per-key spacing cannot bound them
                forged = f"sy_{i:016x}_" + "x" * 43
                response = await served.client.post(
                    "/v2/models/iris/infer", json=V2_ROW, headers=bearer(forged)
                )
                assert response.status_code == 401
        elapsed = anyio.current_time() - started
        seconds = int(elapsed) + 2  # the flood may span this many clock seconds
        await anyio.wait_all_tasks_blocked()
        pending = list(served.app.auth._pending)
        for task in pending:
            await task
        unreported = served.app.auth._log_budget.suppressed  # for the next line, in a later second
    lines = [r for r in caplog.records if r.getMessage().startswith("auth refused")]
    assert len(lines) <= 20 * seconds
    if flood / seconds > 20:  # faster than the budget (not on a host too busy to flood at all)
        reported = any("suppressed=" in r.getMessage() for r in lines)
        assert len(lines) < flood and (reported or unreported > 0)
    assert 1 <= len(home.registry.audit_log(action="auth.refused")) <= 5 * seconds


def test_the_refusal_budget_counts_per_clock_second_and_what_it_turned_away() -> None:
    budget = _Budget(3)
    assert [budget.allow(10.1), budget.allow(10.2), budget.allow(10.3), budget.allow(10.9)] == [
        True,
        True,
        True,
        False,
    ]
    assert budget.suppressed == 1
    assert budget.allow(11.0) and budget.suppressed == 1  # a new second, the count kept for the next line


async def test_a_body_named_model_no_model_can_have_is_refused_without_echoing_it(
    keys: dict[str, str], home: Home
) -> None:
    async with serve(home, ["iris"]) as served:
        body = {"model": "evil\nname\x1b[31m", "input": ["hello"]}
        response = await served.client.post("/v1/embeddings", json=body, headers=bearer(keys["other-model"]))
    assert response.status_code == 403  # in OpenAI's error shape
    assert "may not infer on a model of that name" in response.json()["error"]["message"]
    assert "evil" not in response.text


class FakeTime:
    """Stands in for `time` in the authenticator: it moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.8e9 + self.now


class CountingRegistry:
    """The real registry, counting key lookups; `gate` holds them so that requests pile up."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.lookups = 0
        self.gate = threading.Event()
        self.gate.set()

    def authenticate(self, presented: str) -> Any:
        self.lookups += 1
        assert self.gate.wait(5), "the test never opened the gate"
        return self.registry.authenticate(presented)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.registry, name)


def infer_scope(key: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/iris/infer",
        "headers": [(b"authorization", f"Bearer {key}".encode())],
    }


async def test_an_expired_cache_entry_answers_while_one_lookup_refreshes_it(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its TTL a key is looked up again once, however many requests are in flight: they go
    on with the cached record meanwhile (for one more TTL at most), and then wait for one lookup."""
    clock = FakeTime()
    monkeypatch.setattr(auth_module, "time", clock)
    _, key = home.registry.create_key("k", ["infer:*"])
    registry = CountingRegistry(home.registry)
    authenticator = Authenticator(cast(Registry, registry), Settings.load(home=home.path).serve)  # TTL 5 s
    assert await authenticator.check(infer_scope(key)) is None
    assert registry.lookups == 1
    assert authenticator.admits(infer_scope(key))  # fresh: no coroutine, no registry

    clock.now += 6  # past the TTL, within twice it
    assert not authenticator.admits(infer_scope(key))
    registry.gate.clear()
    answers = await asyncio.gather(*(authenticator.check(infer_scope(key)) for _ in range(32)))
    assert answers == [None] * 32 and len(authenticator._lookups) == 1  # one refresh, in the background
    registry.gate.set()
    await asyncio.gather(*authenticator._lookups.values())
    assert registry.lookups == 2

    clock.now += 11  # past twice the TTL: the entry is too old to answer
    registry.gate.clear()
    waiting = [asyncio.create_task(authenticator.check(infer_scope(key))) for _ in range(32)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)
    registry.gate.set()
    assert await asyncio.gather(*waiting) == [None] * 32
    assert registry.lookups == 3


async def test_a_revoked_key_is_refused_once_the_refresh_after_its_ttl_has_run(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeTime()
    monkeypatch.setattr(auth_module, "time", clock)
    _, key = home.registry.create_key("k", ["infer:*"])
    authenticator = Authenticator(home.registry, Settings.load(home=home.path).serve)
    assert await authenticator.check(infer_scope(key)) is None
    home.registry.revoke_key("k")
    clock.now += 6
    assert await authenticator.check(infer_scope(key)) is None  # the stale entry, while it refreshes
    await asyncio.gather(*authenticator._lookups.values())
    refused = await authenticator.check(infer_scope(key))
    assert refused is not None and refused.kind == "unauthorized" and "revoked" in refused.message
    assert not authenticator.admits(infer_scope(key))

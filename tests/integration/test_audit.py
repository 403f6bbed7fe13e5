"""The audit log: one hash-chained entry per registry write, readable and checkable from the CLI.

Tampering is done as an attacker with write access to the database would: plain SQL on the
`audit_log` table, bypassing Shipyard.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.cli.audit import parse_since
from shipyard.cli.main import main
from shipyard.errors import IntegrityError, InvalidInputError, UntrustedArtifactError
from shipyard.registry import Registry
from shipyard.registry.tables import audit_log
from shipyard.serve.app import create_app
from shipyard.settings import Settings

SHIPYARD = Path(sys.executable).parent / "shipyard"


def _actions(registry: Registry) -> list[tuple[str, str]]:
    return [(e.action, e.target) for e in registry.audit_log()]


def _sql(registry: Registry, statement: Any) -> None:
    with registry.metadata.engine.begin() as conn:
        conn.execute(statement)


@pytest.fixture
def history(registry: Registry, onnx_variants: Callable[[int], Path]) -> Registry:
    """A registry with five audited writes: push, push, alias, alias, rollback."""
    registry.push("iris", onnx_variants(0))
    registry.push("iris", onnx_variants(1))
    registry.set_alias("iris", "prod", 1)
    registry.set_alias("iris", "prod", 2)
    registry.rollback("iris", "prod")
    assert registry.verify_audit()[0] == 5
    return registry


def test_each_registry_write_is_one_entry(registry: Registry, onnx_variants: Callable[[int], Path]) -> None:
    steps: list[tuple[Callable[[], object], list[tuple[str, str]]]] = [
        (lambda: registry.push("iris", onnx_variants(0)), [("push", "iris:1")]),
        (lambda: registry.push("iris", onnx_variants(1)), [("push", "iris:2")]),
        (lambda: registry.set_alias("iris", "prod", 1), [("alias.set", "iris@prod")]),
        (lambda: registry.set_alias("iris", "prod", 1), []),  # no move, no entry
        (lambda: registry.set_alias("iris", "prod", 2), [("alias.set", "iris@prod")]),
        (lambda: registry.rollback("iris", "prod"), [("alias.rollback", "iris@prod")]),
        (lambda: registry.delete_alias("iris", "prod"), [("alias.delete", "iris@prod")]),
        (lambda: registry.remove("iris:2"), [("rm", "iris:2")]),
        (lambda: registry.gc(grace_s=0), [("gc", "artifacts")]),
        (lambda: registry.gc(grace_s=0), []),  # nothing to collect: not a change
        (lambda: registry.audit("serve.load", target="iris:1", actor="key-7"), [("serve.load", "iris:1")]),
    ]
    seen = 0
    for step, expected in steps:
        step()
        entries = _actions(registry)
        assert entries[seen:] == expected
        seen = len(entries)
    assert registry.verify_audit()[0] == seen


def test_entries_name_actor_time_and_detail(registry: Registry, onnx_path: Path) -> None:
    registry.push("iris", onnx_path, alias="prod", actor="alice")
    registry.audit(
        "key.use", target="iris:1", actor="key-3f2a", detail={"scope": "write", "path": Path("/x")}
    )
    push, alias, use = registry.audit_log()
    assert (push.actor, push.action, alias.actor, alias.action) == ("alice", "push", "alice", "alias.set")
    assert push.detail["trusted"] is False and push.detail["digest"].startswith("sha256:")
    assert alias.detail == {"version": 1, "previous": None}
    assert use.detail == {"scope": "write", "path": "/x"}  # made JSON before hashing
    assert datetime.fromisoformat(use.at).tzinfo is not None
    json.dumps([e.to_dict() for e in registry.audit_log()])


def test_trust_decisions_are_recorded(registry: Registry, pickle_path: Path) -> None:
    with pytest.raises(UntrustedArtifactError):
        registry.push("risky", pickle_path)
    registry.push("risky", pickle_path, trust=True)
    refused, accepted = registry.audit_log()
    assert (refused.action, refused.target) == ("push.refused", "risky")
    assert refused.detail["trusted"] is False and "--trust" in refused.detail["reason"]
    assert (accepted.action, accepted.target) == ("push", "risky:1")
    assert accepted.detail["trusted"] is True and accepted.detail["trust_flag"] is True


def test_bad_action_is_refused(registry: Registry) -> None:
    with pytest.raises(InvalidInputError, match="audit action"):
        registry.audit("Drop Table", target="x")
    assert registry.audit_log() == []


def test_intact_chain_verifies(history: Registry) -> None:
    count, head = history.verify_audit()
    assert count == 5 and head == history.audit_log()[-1].hash


@pytest.mark.parametrize(
    "change",
    [
        {"actor": "mallory"},
        {"at": "2020-01-01T00:00:00.000+00:00"},
        {"detail": {"version": 1, "previous": 7}},
    ],
    ids=["actor", "time", "detail"],
)
def test_altered_entry_is_named(history: Registry, change: dict[str, Any]) -> None:
    _sql(history, audit_log.update().where(audit_log.c.seq == 3).values(**change))
    with pytest.raises(IntegrityError, match=r"broken at entry 3 \(alias.set iris@prod"):
        history.verify_audit()


def test_altered_entry_with_recomputed_hash_breaks_the_next_link(history: Registry) -> None:
    from shipyard.registry.audit import entry_hash

    third = history.audit_log()[2]
    forged = {**third.to_dict(), "actor": "mallory"}
    del forged["hash"]
    _sql(
        history,
        audit_log.update().where(audit_log.c.seq == 3).values(actor="mallory", hash=entry_hash(**forged)),
    )
    with pytest.raises(IntegrityError, match="broken at entry 4: it does not follow from entry 3"):
        history.verify_audit()


def test_deleted_middle_entry_is_detected(history: Registry) -> None:
    _sql(history, audit_log.delete().where(audit_log.c.seq == 3))
    with pytest.raises(IntegrityError, match="broken at entry 4: entry 3 before it is missing"):
        history.verify_audit()


def test_reordered_entries_are_detected(history: Registry) -> None:
    _sql(history, audit_log.update().where(audit_log.c.seq == 2).values(seq=-2))
    _sql(history, audit_log.update().where(audit_log.c.seq == 3).values(seq=2))
    _sql(history, audit_log.update().where(audit_log.c.seq == -2).values(seq=3))
    with pytest.raises(IntegrityError, match="broken at entry 2"):
        history.verify_audit()


def test_concurrent_writers_keep_one_linear_chain(
    registry: Registry, registry_settings: Settings, onnx_variants: Callable[[int], Path]
) -> None:
    """Writers with their own connections (as separate processes have) append at once."""
    pushes, events = 6, 25
    files = [onnx_variants(100 + i) for i in range(2 * pushes)]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def pusher(mine: list[Path]) -> None:
        with Registry(settings=registry_settings) as own:
            start.wait()
            for path in mine:
                own.push("shared", path)

    def recorder(who: str) -> None:
        with Registry(settings=registry_settings) as own:
            start.wait()
            for i in range(events):
                own.audit("key.use", target="shared", actor=who, detail={"i": i})

    def guarded(work: Callable[..., None], *args: Any) -> Callable[[], None]:
        def run() -> None:
            try:
                work(*args)
            except BaseException as exc:
                errors.append(exc)
                start.abort()

        return run

    threads = [
        threading.Thread(target=guarded(pusher, files[:pushes])),
        threading.Thread(target=guarded(pusher, files[pushes:])),
        threading.Thread(target=guarded(recorder, "key-a")),
        threading.Thread(target=guarded(recorder, "key-b")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    entries = registry.audit_log()
    assert [e.seq for e in entries] == list(range(1, 2 * pushes + 2 * events + 1))
    assert sorted(e.target for e in entries if e.action == "push") == sorted(
        f"shared:{n}" for n in range(1, 2 * pushes + 1)
    )
    assert registry.verify_audit()[0] == len(entries)


@pytest.fixture
def cli_home(tmp_path: Path, onnx_variants: Callable[[int], Path]) -> Path:
    home = tmp_path / "home"
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("iris", onnx_variants(0), alias="prod")
        registry.push("iris", onnx_variants(1), alias="prod")
        registry.rollback("iris", "prod")
    return home


def _cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_lists_filters_and_prints_json(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, cli_home, "audit")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split("\t") == ["#", "when", "actor", "action", "target", "detail"]
    assert [line.split("\t")[3] for line in lines[1:]] == [
        "push",
        "alias.set",
        "push",
        "alias.set",
        "alias.rollback",
    ]

    code, out, _ = _cli(capsys, cli_home, "audit", "--action", "alias", "--json")
    entries = json.loads(out)
    assert [(e["seq"], e["action"], e["target"]) for e in entries] == [
        (2, "alias.set", "iris@prod"),
        (4, "alias.set", "iris@prod"),
        (5, "alias.rollback", "iris@prod"),
    ]
    assert set(entries[0]) == {"seq", "at", "actor", "action", "target", "detail", "prev_hash", "hash"}

    code, out, _ = _cli(capsys, cli_home, "audit", "--action", "push", "--since", "1h", "--json")
    assert [e["target"] for e in json.loads(out)] == ["iris:1", "iris:2"]

    third = json.loads(_cli(capsys, cli_home, "audit", "--json")[1])[2]["at"]
    code, out, _ = _cli(capsys, cli_home, "audit", "--since", third, "--json")
    assert [e["seq"] for e in json.loads(out)] == [3, 4, 5]

    code, out, err = _cli(capsys, cli_home, "audit", "--since", "yesterday")
    assert code == 2 and err.startswith("error: --since expects") and len(err.splitlines()) == 1

    code, out, _ = _cli(capsys, cli_home, "audit", "--verify", "--json")
    assert code == 0 and json.loads(out)["entries"] == 5


def test_parse_since() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == "2026-03-01T10:30:00.000+00:00"
    assert parse_since("2d", now) == "2026-02-27T12:00:00.000+00:00"
    assert parse_since("2026-02-01T08:00", now) == "2026-02-01T08:00:00.000+00:00"
    assert parse_since("2026-02-01T09:00+01:00", now) == "2026-02-01T08:00:00.000+00:00"


def test_cli_verify_exits_7_naming_the_altered_entry(cli_home: Path) -> None:
    """As a user runs it: the console script in its own process."""
    with Registry(settings=Settings.load(home=cli_home)) as registry:
        _sql(registry, audit_log.update().where(audit_log.c.seq == 2).values(actor="mallory"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    done = subprocess.run(
        [str(SHIPYARD), "--home", str(cli_home), "audit", "--verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 7, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: audit log broken at entry 2 (alias.set iris@prod at ")
    assert line.endswith("its content no longer matches its hash (altered or moved)")


def test_management_load_and_unload_are_audited(cli_home: Path) -> None:
    settings = Settings.load(home=cli_home, serve={"admin_token": "s3cret-admin-token"})
    headers = {"authorization": "Bearer s3cret-admin-token"}

    async def scenario() -> None:
        app = create_app(settings, [])
        async with app.app.router.lifespan_context(app.app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as client:
                loaded = await client.post("/v2/repository/models/iris/load", headers=headers, json={})
                assert loaded.status_code == 200, loaded.text
                unloaded = await client.post("/v2/repository/models/iris/unload", headers=headers, json={})
                assert unloaded.status_code == 200, unloaded.text

    asyncio.run(scenario())
    with Registry(settings=settings) as registry:
        entries = registry.audit_log(action="serve")
    assert [(e.action, e.target, e.actor) for e in entries] == [
        ("serve.load", "iris:2", "admin-token"),
        ("serve.unload", "iris", "admin-token"),
    ]
    assert all("s3cret" not in json.dumps(e.to_dict()) for e in entries)

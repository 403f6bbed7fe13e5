"""`shipyard keys create|list|revoke` as a user runs them: the key is printed once, listed
never, and every mistake is one `error:` line with its documented exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SHIPYARD = Path(sys.executable).with_name("shipyard")


def shipyard(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    return subprocess.run(
        [str(SHIPYARD), "--home", str(home), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_create_prints_the_key_once_and_list_never_shows_it(tmp_path: Path) -> None:
    created = shipyard(
        tmp_path, "keys", "create", "ci", "--scope", "infer:iris", "--scope", "read", "--expires", "30d"
    )
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("sy_") and len(secret.split("_", 2)[2]) == 43
    assert "not shown again" in created.stderr
    listed = shipyard(tmp_path, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (record,) = json.loads(listed.stdout)
    assert record["name"] == "ci" and record["scopes"] == ["infer:iris", "read"]
    assert record["expires_at"] and not record["revoked"] and secret.startswith(f"sy_{record['id']}_")
    table = shipyard(tmp_path, "keys", "list")
    for output in (listed.stdout, table.stdout, table.stderr):
        assert secret.split("_", 2)[2] not in output
    assert "ci" in table.stdout and "active" in table.stdout


def test_create_json_carries_the_key(tmp_path: Path) -> None:
    created = shipyard(tmp_path, "keys", "create", "ops", "--scope", "admin", "--json")
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["key"].startswith(f"sy_{body['id']}_") and body["scopes"] == ["admin"]


def test_revoke_by_name_or_id(tmp_path: Path) -> None:
    first = json.loads(shipyard(tmp_path, "keys", "create", "a", "--scope", "read", "--json").stdout)
    shipyard(tmp_path, "keys", "create", "b", "--scope", "read")
    assert shipyard(tmp_path, "keys", "revoke", first["id"]).returncode == 0
    revoked = shipyard(tmp_path, "keys", "revoke", "b", "--json")
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked"] is True
    states = {
        k["name"]: k["revoked"] for k in json.loads(shipyard(tmp_path, "keys", "list", "--json").stdout)
    }
    assert states == {"a": True, "b": True}


def test_mistakes_are_one_line_with_their_exit_code(tmp_path: Path) -> None:
    shipyard(tmp_path, "keys", "create", "taken", "--scope", "read")
    for args, code, fragment in [
        (["create", "x"], 2, "--scope"),
        (["create", "x", "--scope", "everything"], 2, "unknown scope"),
        (["create", "x", "--scope", "read", "--expires", "soon"], 2, "--expires"),
        (["create", "x", "--scope", "read", "--expires", "2001-01-01"], 2, "in the past"),
        (["create", "bad name", "--scope", "read"], 2, "invalid key name"),
        (["create", "taken", "--scope", "read"], 4, "exists already"),
        (["revoke", "nobody"], 3, "shipyard keys list"),
    ]:
        done = shipyard(tmp_path, "keys", *args)
        assert done.returncode == code, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (args, lines)

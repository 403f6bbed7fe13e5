"""Signed versions: `shipyard keygen` and `sign`, `verify --signed-by`, and a server started with
`--require-signed` that loads only versions the key vouched for (in-process app, real runtime)."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.cli.main import main
from shipyard.registry import Registry
from shipyard.registry.tables import signatures
from shipyard.serve.app import create_app
from shipyard.settings import Settings

ROWS = [[5.1, 3.5, 1.4, 0.2]]


@pytest.fixture
def home(tmp_path: Path, onnx_path: Path) -> Path:
    home = tmp_path / "home"
    with Registry(settings=Settings.load(home=home)) as registry:
        registry.push("iris", onnx_path)
    return home


def _cli(capsys: pytest.CaptureFixture[str], home: Path, *args: str | Path) -> tuple[int, str, str]:
    code = main(["--home", str(home), *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def keys(tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> Callable[[str], Path]:
    """`keys(name)`: a fresh key pair made with `shipyard keygen`; returns the private key's path."""

    def make(name: str) -> Path:
        code, out, err = _cli(capsys, home, "keygen", "--out", tmp_path / "keys" / name, "--json")
        assert code == 0, err
        return Path(json.loads(out)["private_key"])

    return make


def _pub(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def _serve(home: Path, refs: list[str], pubkey: Path) -> dict[str, Any]:
    """Start the app with `require_signed`, wait for the loads, and report what it answers."""
    settings = Settings.load(home=home, serve={"require_signed": pubkey})

    async def scenario() -> dict[str, Any]:
        app = create_app(settings, refs)
        async with app.app.router.lifespan_context(app.app):
            await asyncio.wait_for(asyncio.shield(app.state.loading), 60)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shipyard.test") as client:
                ready = await client.get("/readyz")
                infer = await client.post("/v1/models/iris:predict", json={"instances": ROWS})
                return {"ready": ready.status_code, "readyz": ready.json(), "infer": infer}

    result: dict[str, Any] = asyncio.run(scenario())
    return result


def test_keygen_writes_a_private_key_only_its_owner_reads(
    keys: Callable[[str], Path], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys("release")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in _pub(key).read_bytes()
    code, _, err = _cli(capsys, home, "keygen", "--out", key)
    assert code == 2 and err.strip() == f"error: {key} already exists; choose another --out"


def test_signed_version_is_served(
    keys: Callable[[str], Path], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys("release")
    code, out, err = _cli(capsys, home, "sign", "iris:1", "--key", key, "--json")
    assert code == 0, err
    signed = json.loads(out)
    assert signed["ref"] == "iris:1" and signed["fingerprint"].startswith("sha256:")

    served = _serve(home, ["iris"], _pub(key))
    assert served["ready"] == 200, served["readyz"]
    assert served["infer"].status_code == 200, served["infer"].text

    with Registry(settings=Settings.load(home=home)) as registry:
        [entry] = registry.audit_log(action="sign")
    assert (entry.target, entry.detail["fingerprint"]) == ("iris:1", signed["fingerprint"])


def _refused(served: dict[str, Any], fragment: str) -> None:
    assert served["ready"] == 503
    status = served["readyz"]["models"]["iris"]
    assert status["state"] == "failed" and fragment in status["reason"], status
    assert served["infer"].status_code == 503
    assert fragment in served["infer"].json()["error"]


def test_unsigned_version_is_not_loaded(
    keys: Callable[[str], Path], home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = keys("release")
    served = _serve(home, ["iris"], _pub(key))
    _refused(served, "iris:1 is not signed by key sha256:")
    refusals = [r.getMessage() for r in caplog.records if "is not signed by key" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].startswith("cannot load iris:1: ")


def test_version_signed_by_another_key_is_not_loaded(
    keys: Callable[[str], Path], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs, ours = keys("theirs"), keys("ours")
    assert _cli(capsys, home, "sign", "iris", "--key", theirs)[0] == 0
    served = _serve(home, ["iris"], _pub(ours))
    _refused(served, "is not signed by key")
    assert "it is signed by sha256:" in served["readyz"]["models"]["iris"]["reason"]


def test_tampered_signature_is_refused(
    keys: Callable[[str], Path], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys("release")
    assert _cli(capsys, home, "sign", "iris:1", "--key", key)[0] == 0
    with Registry(settings=Settings.load(home=home)) as registry:
        [stored] = registry.signatures("iris:1")
        raw = bytearray(base64.b64decode(stored["signature"]))
        raw[0] ^= 0x01
        with registry.metadata.engine.begin() as conn:
            conn.execute(signatures.update().values(signature=base64.b64encode(bytes(raw)).decode()))
    _refused(_serve(home, ["iris"], _pub(key)), "does not match its name, version and digest")


def test_verify_signed_by_from_the_cli(
    keys: Callable[[str], Path], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, other = keys("release"), keys("other")
    assert _cli(capsys, home, "sign", "iris:1", "--key", key)[0] == 0
    code, out, _ = _cli(capsys, home, "verify", "iris:1", "--signed-by", _pub(key))
    assert code == 0 and out.startswith("ok     iris:1")

    code, out, err = _cli(capsys, home, "verify", "iris:1", "--signed-by", _pub(other))
    assert code == 7
    assert "FAILED iris:1: iris:1 is not signed by key" in out
    assert err.strip() == "error: 1 of 1 version(s) failed verification"

    code, _, err = _cli(capsys, home, "verify", "iris:1", "--signed-by", key)
    assert code == 2 and "give its .pub file" in err and len(err.splitlines()) == 1


def test_serve_refuses_an_unreadable_key_before_starting(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _cli(capsys, home, "serve", "iris", "--require-signed", tmp_path / "missing.pub")
    assert code == 2 and out == ""
    assert err.startswith("error: cannot read the public key") and len(err.splitlines()) == 1


def test_sign_refuses_a_damaged_artifact(
    keys: Callable[[str], Path],
    home: Path,
    capsys: pytest.CaptureFixture[str],
    tamper: Callable[[Path], None],
) -> None:
    key = keys("release")
    with Registry(settings=Settings.load(home=home)) as registry:
        version = registry.resolve("iris:1")
        stored = registry.store.root / "sha256" / version.digest[7:9] / version.digest[7:]  # type: ignore[attr-defined]  # a local store
        tamper(next(p for p in stored.rglob("*") if p.is_file()))
    code, _, err = _cli(capsys, home, "sign", "iris:1", "--key", key)
    assert code == 7, err
    with Registry(settings=Settings.load(home=home)) as registry:
        assert registry.signatures("iris:1") == [] and registry.audit_log(action="sign") == []

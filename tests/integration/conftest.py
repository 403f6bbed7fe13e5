"""Registry fixtures: every registry test runs on SQLite and on PostgreSQL.

Each PostgreSQL test gets its own schema (selected with `search_path` in the URL), so tests
never see each other's rows and the server needs no per-test database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.registry import Registry
from shipyard.settings import Settings

PG_HOST, PG_PORT, PG_DATABASE, PG_USER = "127.0.0.1", 5432, "test", "postgres"
PG_URL = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{PG_DATABASE}"


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Any]:
    """An autocommit connection for creating and dropping schemas; skips if no server answers."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the [dev] extra installs it
        pytest.skip(f"PostgreSQL tests need psycopg (pip install 'shipyard[postgres]'): {exc}")
    try:
        conn = psycopg.connect(
            host=PG_HOST,
            port=PG_PORT,
            dbname=PG_DATABASE,
            user=PG_USER,
            connect_timeout=3,
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        pytest.skip(f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT}: {reason}")
    yield conn
    conn.close()


@pytest.fixture
def postgres_url(postgres_admin: Any) -> Iterator[str]:
    """A registry URL whose tables live in a fresh schema, dropped after the test."""
    schema = f"shipyard_test_{uuid.uuid4().hex[:12]}"
    postgres_admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        postgres_admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], ids=["sqlite", "postgres"]
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def registry_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings for a fresh registry: artifacts under a temporary home, metadata in `backend`."""
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    return Settings.load(home=tmp_path / "home", registry_url=url)


@pytest.fixture
def registry(registry_settings: Settings) -> Iterator[Registry]:
    """An empty registry on SQLite or PostgreSQL (the test runs once on each)."""
    with Registry(settings=registry_settings) as reg:
        yield reg


@pytest.fixture
def registry_env(registry_settings: Settings, registry: Registry) -> dict[str, str]:
    """Environment that points a child process's `Registry()` at the test's registry.

    Depends on `registry` so the schema is migrated before any child starts.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env["SHIPYARD_HOME"] = str(registry_settings.home)
    if registry_settings.registry_url:
        env["SHIPYARD_REGISTRY_URL"] = registry_settings.registry_url
    return env


def _staging_entries(registry: Registry) -> list[Path]:
    staging = registry.store.root / ".staging"  # type: ignore[attr-defined]
    return sorted(staging.iterdir()) if staging.is_dir() else []


def _assert_clean_after_gc(registry: Registry) -> None:
    registry.gc(grace_s=0)
    assert _staging_entries(registry) == []
    assert set(registry.store.digests()) == registry.metadata.referenced_digests()
    problems = [(str(v.ref), p) for v, p in registry.verify() if p]
    assert problems == []


@pytest.fixture
def staging_entries() -> Callable[[Registry], list[Path]]:
    """`staging_entries(registry)`: what interrupted pushes left in the staging folder."""
    return _staging_entries


@pytest.fixture
def assert_clean_after_gc() -> Callable[[Registry], None]:
    """`assert_clean_after_gc(registry)`: after `gc(grace_s=0)` there are no staging leftovers,
    every artifact folder is referenced by a version, and every version's files verify."""
    return _assert_clean_after_gc


@dataclass
class S3Endpoint:
    """moto's S3 server on loopback (tests/integration/moto_runner.py), with its request counts."""

    url: str
    process: subprocess.Popen[str]

    def env(self) -> dict[str, str]:
        """What a process needs to reach it: the standard AWS variables, no Shipyard setting."""
        return {
            "AWS_ACCESS_KEY_ID": "testing-key",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.url,
        }

    def client(self) -> Any:
        import boto3

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket(self) -> str:
        """A fresh, empty bucket."""
        name = f"shipyard-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def counts(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/_counts", timeout=10).json())

    def wait_for(self, op: str, count: int) -> None:
        """Block until the server has received `count` requests of `op` (e.g. UploadPart)."""
        seen = httpx.get(f"{self.url}/_wait", params={"op": op, "count": count}, timeout=40).json()
        assert seen.get(op, 0) >= count, f"no {op} within 30 s: {seen}"


def start_moto(env: dict[str, str] | None = None) -> S3Endpoint:
    runner = Path(__file__).with_name("moto_runner.py")
    process = subprocess.Popen(
        [sys.executable, str(runner)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until it listens (or dies: empty line)
    if not line.startswith("PORT "):
        process.kill()
        pytest.fail(f"moto's S3 server did not start (exit {process.wait()})")
    return S3Endpoint(f"http://127.0.0.1:{int(line.split()[1])}", process)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Endpoint]:
    """One S3 endpoint for the session; each test takes its own bucket."""
    pytest.importorskip("s3fs", reason="S3 tests need the [s3] extra")
    pytest.importorskip("moto", reason="S3 tests need moto (the [dev] extra)")
    endpoint = start_moto()
    yield endpoint
    endpoint.stop()

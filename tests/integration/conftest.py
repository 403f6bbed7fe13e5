"""Registry fixtures: every registry test runs on SQLite and on PostgreSQL.

Each PostgreSQL test gets its own schema (selected with `search_path` in the URL), so tests
never see each other's rows and the server needs no per-test database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from s3_support import S3Endpoint, start_moto
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


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Endpoint]:
    """One S3 endpoint for the session; each test takes its own bucket."""
    pytest.importorskip("s3fs", reason="S3 tests need the [s3] extra")
    pytest.importorskip("moto", reason="S3 tests need moto (the [dev] extra)")
    endpoint = start_moto()
    yield endpoint
    endpoint.stop()

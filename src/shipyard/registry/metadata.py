"""Version records in SQLite or PostgreSQL through SQLAlchemy Core.

Every write runs in one transaction that takes the write lock up front (SQLite `BEGIN
IMMEDIATE`; a row lock on `models` in PostgreSQL), so concurrent pushers never receive the
same version number and a failed write leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from shipyard.errors import ConflictError, InvalidInputError, NotFoundError, ShipyardError
from shipyard.registry import audit
from shipyard.registry.audit import AuditEntry
from shipyard.registry.keys import ApiKey
from shipyard.registry.tables import alias_history, aliases, api_keys, models, signatures, versions
from shipyard.types import ModelVersion, Signature

log = logging.getLogger("shipyard.registry")

# PostgreSQL channel a write that moves a reference notifies (payload: the model's name), in the
# same transaction, so a listening server hears of it exactly when the move is visible.
CHANNEL = "shipyard_refs"
SCHEMA_HEAD = "0003"  # newest migration; a test keeps it equal to Alembic's head
_MIGRATIONS = Path(__file__).parent / "migrations"
_SQLITE_BUSY_TIMEOUT_MS = 60_000


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "unknown"


@dataclass(frozen=True, slots=True)
class AliasChange:
    alias: str
    action: str
    version: int | None
    previous: int | None
    changed_at: str
    changed_by: str


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):  # file: is a URI (uri=true)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("shipyard_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise InvalidInputError(f"invalid registry URL {_safe(url)!r}: {exc}", field="registry_url") from exc
    except ModuleNotFoundError as exc:
        from shipyard.errors import MissingDependencyError

        raise MissingDependencyError(exc.name or "psycopg", "postgres", "a PostgreSQL registry") from exc


def _safe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"


class MetadataStore:
    """Queries and writes of version records, aliases and alias history."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self._dialect = self.engine.dialect.name
        try:
            self._migrate()
        except sa.exc.OperationalError as exc:
            raise ShipyardError(f"cannot open the registry database {_safe(url)}: {exc.orig}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as raw:
            conn = raw.execution_options(shipyard_write=True)
            with conn.begin():
                yield conn

    def _insert(self, table: sa.Table) -> Any:
        if self._dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)

    def _migrate(self) -> None:
        if self._revision() == SCHEMA_HEAD:
            return
        with self._write() as conn:
            if self._dialect == "postgresql":  # one migrator at a time across processes
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7212007)"))
            if self._revision(conn) == SCHEMA_HEAD:
                return
            from alembic import command
            from alembic.config import Config

            cfg = Config()
            cfg.set_main_option("script_location", str(_MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def _revision(self, conn: Connection | None = None) -> str | None:
        if conn is None:
            with self._read() as c:
                return self._revision(c)
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()

    def close(self) -> None:
        self.engine.dispose()

    def add_version(
        self,
        record: dict[str, Any],
        alias: str | None = None,
        *,
        actor: str | None = None,
        audit_detail: dict[str, Any] | None = None,
    ) -> int:
        """Allocate the next version number, insert the row, move `alias` and record the push
        in the audit log, all atomically."""
        name = record["name"]
        with self._write() as conn:
            conn.execute(
                self._insert(models)
                .values(name=name, last_version=0, created_at=utc_now())
                .on_conflict_do_nothing(index_elements=["name"])
            )
            number = conn.execute(
                models.update()
                .where(models.c.name == name)
                .values(last_version=models.c.last_version + 1)
                .returning(models.c.last_version)
            ).scalar_one()
            conn.execute(versions.insert().values(**record, version=number))
            self._notify(conn, name)  # the latest version moved
            self._audit(conn, "push", f"{name}:{number}", actor, audit_detail)
            if alias is not None:
                previous = self._current_alias(conn, name, alias)
                self._change_alias(conn, name, alias, number, "set", previous=previous, actor=actor)
        return int(number)

    def import_version(
        self,
        record: dict[str, Any],
        aliases_to_set: tuple[str, ...] = (),
        *,
        actor: str | None = None,
        audit_detail: dict[str, Any] | None = None,
    ) -> None:
        """Insert a version copied from another registry under its own number (never reused:
        the model's counter moves up to it), set `aliases_to_set` on it and audit the import."""
        name, number = record["name"], int(record["version"])
        with self._write() as conn:
            conn.execute(
                self._insert(models)
                .values(name=name, last_version=0, created_at=utc_now())
                .on_conflict_do_nothing(index_elements=["name"])
            )
            taken = conn.execute(
                sa.select(versions.c.version).where(versions.c.name == name, versions.c.version == number)
            ).first()
            if taken is not None:
                raise ConflictError(f"model {name!r} already has a version {number}", field="ref")
            last = models.c.last_version
            conn.execute(
                models.update()
                .where(models.c.name == name)
                .values(last_version=sa.case((last < number, number), else_=last))
            )
            conn.execute(versions.insert().values(**record))
            self._notify(conn, name)
            self._audit(conn, "import", f"{name}:{number}", actor, audit_detail)
            for alias in aliases_to_set:
                previous = self._current_alias(conn, name, alias)
                self._change_alias(conn, name, alias, number, "set", previous=previous, actor=actor)

    def set_data_profile(
        self,
        name: str,
        version: int,
        profile: dict[str, Any],
        *,
        actor: str | None = None,
        audit_detail: dict[str, Any] | None = None,
    ) -> None:
        """Replace one version's reference profile and audit it, atomically."""
        with self._write() as conn:
            updated = conn.execute(
                versions.update()
                .where(versions.c.name == name, versions.c.version == version)
                .values(data_profile=profile)
            ).rowcount
            if not updated:
                raise NotFoundError(f"model {name!r} has no version {version}", field="ref")
            self._audit(conn, "profile", f"{name}:{version}", actor, audit_detail)

    def get(self, name: str, version: int) -> ModelVersion | None:
        with self._read() as conn:
            row = conn.execute(
                versions.select().where(versions.c.name == name, versions.c.version == version)
            ).first()
            if row is None:
                return None
            return self._to_version(row, self._aliases_of(conn, name).get(version, ()))

    def latest_version(self, name: str) -> int | None:
        with self._read() as conn:
            return conn.execute(
                sa.select(sa.func.max(versions.c.version)).where(versions.c.name == name)
            ).scalar()

    def version_numbers(self, name: str) -> list[int]:
        with self._read() as conn:
            return list(
                conn.execute(
                    sa.select(versions.c.version).where(versions.c.name == name).order_by(versions.c.version)
                ).scalars()
            )

    def list_versions(self, name: str) -> list[ModelVersion]:
        with self._read() as conn:
            names = self._aliases_of(conn, name)
            rows = conn.execute(
                versions.select().where(versions.c.name == name).order_by(versions.c.version.desc())
            )
            return [self._to_version(r, names.get(r.version, ())) for r in rows]

    def list_models(self) -> list[dict[str, Any]]:
        """One summary per model name: latest version, count, aliases, last push time."""
        with self._read() as conn:
            summary = conn.execute(
                sa.select(
                    versions.c.name,
                    sa.func.max(versions.c.version).label("latest"),
                    sa.func.count().label("count"),
                    sa.func.max(versions.c.created_at).label("updated_at"),
                )
                .group_by(versions.c.name)
                .order_by(versions.c.name)
            ).all()
            alias_rows = conn.execute(aliases.select().order_by(aliases.c.alias)).all()
        by_name: dict[str, dict[str, int]] = {}
        for a in alias_rows:
            by_name.setdefault(a.name, {})[a.alias] = a.version
        return [
            {
                "name": s.name,
                "latest": s.latest,
                "versions": s.count,
                "aliases": by_name.get(s.name, {}),
                "updated_at": s.updated_at,
            }
            for s in summary
        ]

    def model_names(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(sa.select(versions.c.name).distinct()).scalars())

    def all_versions(self) -> list[ModelVersion]:
        with self._read() as conn:
            rows = conn.execute(versions.select().order_by(versions.c.name, versions.c.version))
            return [self._to_version(r, ()) for r in rows]

    def referenced_digests(self) -> set[str]:
        with self._read() as conn:
            return set(conn.execute(sa.select(versions.c.digest).distinct()).scalars())

    def delete_version(self, name: str, version: int, *, force: bool, actor: str | None = None) -> list[str]:
        """Delete one version row; returns the aliases that pointed at it (removed with --force)."""
        with self._write() as conn:
            pointing = list(
                conn.execute(
                    sa.select(aliases.c.alias).where(aliases.c.name == name, aliases.c.version == version)
                ).scalars()
            )
            if pointing and not force:
                raise ConflictError(
                    f"{name}:{version} is the target of alias(es) {', '.join(pointing)}; move the "
                    f"alias first or pass --force to remove them too",
                    field="ref",
                )
            for alias in pointing:
                self._change_alias(conn, name, alias, None, "delete", previous=version, actor=actor)
            conn.execute(
                signatures.delete().where(signatures.c.name == name, signatures.c.version == version)
            )
            deleted = conn.execute(
                versions.delete().where(versions.c.name == name, versions.c.version == version)
            ).rowcount
            if not deleted:
                raise NotFoundError(f"model {name!r} has no version {version}", field="ref")
            self._notify(conn, name)
            self._audit(conn, "rm", f"{name}:{version}", actor, {"aliases_removed": pointing})
        return pointing

    def _aliases_of(self, conn: Connection, name: str) -> dict[int, tuple[str, ...]]:
        found: dict[int, list[str]] = {}
        for row in conn.execute(aliases.select().where(aliases.c.name == name).order_by(aliases.c.alias)):
            found.setdefault(row.version, []).append(row.alias)
        return {v: tuple(a) for v, a in found.items()}

    def aliases(self, name: str) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(aliases.select().where(aliases.c.name == name))
            return {r.alias: r.version for r in rows}

    def resolve_alias(self, name: str, alias: str) -> int | None:
        with self._read() as conn:
            return self._current_alias(conn, name, alias)

    def _current_alias(self, conn: Connection, name: str, alias: str) -> int | None:
        return conn.execute(
            sa.select(aliases.c.version).where(aliases.c.name == name, aliases.c.alias == alias)
        ).scalar()

    def _change_alias(
        self,
        conn: Connection,
        name: str,
        alias: str,
        target: int | None,
        action: str,
        *,
        previous: int | None,
        actor: str | None,
    ) -> None:
        if target is None:
            conn.execute(aliases.delete().where(aliases.c.name == name, aliases.c.alias == alias))
        else:
            conn.execute(
                self._insert(aliases)
                .values(name=name, alias=alias, version=target)
                .on_conflict_do_update(index_elements=["name", "alias"], set_={"version": target})
            )
        self._notify(conn, name)
        conn.execute(
            alias_history.insert().values(
                name=name,
                alias=alias,
                action=action,
                version=target,
                previous=previous,
                changed_at=utc_now(),
                changed_by=actor or current_user(),
            )
        )
        self._audit(
            conn, f"alias.{action}", f"{name}@{alias}", actor, {"version": target, "previous": previous}
        )

    def _notify(self, conn: Connection, name: str) -> None:
        if self._dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_notify(CHANNEL, name)))

    def listen(self, on_change: Callable[[str], None], stop: threading.Event) -> bool:
        """Call `on_change(name)` from a thread whenever a reference of `name` moves, until `stop`
        is set; `on_change("")` after each (re)connection, as moves may have been missed. False
        (and nothing started) where the database cannot notify (SQLite): callers poll."""
        if self._dialect != "postgresql":
            return False
        dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        thread = threading.Thread(
            target=_listen, args=(dsn, on_change, stop), name="shipyard-registry-listen", daemon=True
        )
        thread.start()
        return True

    def set_alias(self, name: str, alias: str, version: int, *, actor: str | None = None) -> int | None:
        """Point `alias` at `version`; returns the previous target."""
        with self._write() as conn:
            exists = conn.execute(
                sa.select(versions.c.version).where(versions.c.name == name, versions.c.version == version)
            ).first()
            if exists is None:
                raise NotFoundError(f"model {name!r} has no version {version}", field="version")
            previous = self._current_alias(conn, name, alias)
            if previous != version:
                self._change_alias(conn, name, alias, version, "set", previous=previous, actor=actor)
            return previous

    def delete_alias(self, name: str, alias: str, *, actor: str | None = None) -> int:
        with self._write() as conn:
            previous = self._current_alias(conn, name, alias)
            if previous is None:
                raise NotFoundError(self._no_alias_message(conn, name, alias), field="alias")
            self._change_alias(conn, name, alias, None, "delete", previous=previous, actor=actor)
            return previous

    def rollback_alias(self, name: str, alias: str, *, actor: str | None = None) -> tuple[int | None, int]:
        """Move `alias` back to the target it had before its last move; (from, to)."""
        with self._write() as conn:
            current = self._current_alias(conn, name, alias)
            existing = set(
                conn.execute(sa.select(versions.c.version).where(versions.c.name == name)).scalars()
            )
            target = _rollback_target(self._history(conn, name, alias), existing)
            if target is None:
                raise ConflictError(
                    f"alias {name}@{alias} has no earlier target to roll back to; "
                    f"see `shipyard history {name} {alias}`",
                    field="alias",
                )
            self._change_alias(conn, name, alias, target, "rollback", previous=current, actor=actor)
            return current, target

    def _history(self, conn: Connection, name: str, alias: str) -> list[AliasChange]:
        rows = conn.execute(
            alias_history.select()
            .where(alias_history.c.name == name, alias_history.c.alias == alias)
            .order_by(alias_history.c.id)
        )
        return [
            AliasChange(r.alias, r.action, r.version, r.previous, r.changed_at, r.changed_by) for r in rows
        ]

    def history(self, name: str, alias: str) -> list[AliasChange]:
        with self._read() as conn:
            found = self._history(conn, name, alias)
            if not found:
                raise NotFoundError(self._no_alias_message(conn, name, alias), field="alias")
            return found

    def _no_alias_message(self, conn: Connection, name: str, alias: str) -> str:
        known = sorted(conn.execute(sa.select(aliases.c.alias).where(aliases.c.name == name)).scalars())
        listing = ", ".join(known) if known else "none"
        return f"model {name!r} has no alias {alias!r} (aliases: {listing})"

    def _audit(
        self, conn: Connection, action: str, target: str, actor: str | None, detail: dict[str, Any] | None
    ) -> AuditEntry:
        return audit.append(
            conn, action=action, target=target, actor=actor or current_user(), at=utc_now(), detail=detail
        )

    def record(
        self, action: str, target: str, *, actor: str | None = None, detail: dict[str, Any] | None = None
    ) -> AuditEntry:
        """Append one audit entry in a transaction of its own."""
        with self._write() as conn:
            return self._audit(conn, action, target, actor, detail)

    def audit_entries(self, *, since: str | None = None, action: str | None = None) -> list[AuditEntry]:
        with self._read() as conn:
            return audit.read(conn, since=since, action=action)

    def verify_audit(self) -> tuple[int, str]:
        """(entries, head hash) of an intact chain; IntegrityError naming the first bad entry."""
        with self._read() as conn:
            return audit.verify_chain(audit.read(conn))

    def add_signature(self, row: dict[str, Any], *, actor: str | None = None) -> None:
        """Store (or replace) one key's signature of a version and audit it, atomically."""
        with self._write() as conn:
            conn.execute(
                self._insert(signatures)
                .values(**row)
                .on_conflict_do_update(
                    index_elements=["name", "version", "fingerprint"],
                    set_={k: row[k] for k in ("digest", "signature", "signed_at", "signed_by")},
                )
            )
            self._audit(
                conn,
                "sign",
                f"{row['name']}:{row['version']}",
                actor,
                {"fingerprint": row["fingerprint"], "digest": row["digest"]},
            )

    def signatures_of(self, name: str, version: int) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                signatures.select()
                .where(signatures.c.name == name, signatures.c.version == version)
                .order_by(signatures.c.signed_at)
            )
            return [dict(row._mapping) for row in rows]

    def add_key(self, record: dict[str, Any]) -> None:
        with self._write() as conn:
            taken = conn.execute(sa.select(api_keys.c.id).where(api_keys.c.name == record["name"])).first()
            if taken is not None:
                raise ConflictError(
                    f"a key named {record['name']!r} exists already (names stay taken after "
                    "revocation); pick another name, see `shipyard keys list`",
                    field="name",
                )
            conn.execute(api_keys.insert().values(**record))

    def keys(self) -> list[ApiKey]:
        with self._read() as conn:
            rows = conn.execute(api_keys.select().order_by(api_keys.c.created_at, api_keys.c.name)).all()
        return [self._to_key(row) for row in rows]

    def key_with_hash(self, key_id: str) -> tuple[ApiKey, str] | None:
        """A key's record and its stored hash, by id."""
        with self._read() as conn:
            row = conn.execute(api_keys.select().where(api_keys.c.id == key_id)).first()
        return None if row is None else (self._to_key(row), row.key_hash)

    def any_key(self) -> bool:
        """Whether a key was ever created: revoked and expired ones count, so revoking the last
        key never turns authentication off."""
        with self._read() as conn:
            return conn.execute(sa.select(api_keys.c.id).limit(1)).first() is not None

    def revoke_key(self, id_or_name: str) -> ApiKey | None:
        with self._write() as conn:
            where = sa.or_(api_keys.c.id == id_or_name, api_keys.c.name == id_or_name)
            row = conn.execute(api_keys.select().where(where)).first()
            if row is None:
                return None
            conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(revoked=True))
            return dataclasses.replace(self._to_key(row), revoked=True)

    def touch_key(self, key_id: str, when: str) -> None:
        with self._write() as conn:
            conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(last_used_at=when))

    @staticmethod
    def _to_key(row: Any) -> ApiKey:
        return ApiKey(
            id=row.id,
            name=row.name,
            scopes=tuple(row.scopes),
            created_at=row.created_at,
            created_by=row.created_by,
            expires_at=row.expires_at,
            last_used_at=row.last_used_at,
            revoked=bool(row.revoked),
        )

    @staticmethod
    def _to_version(row: Any, alias_names: tuple[str, ...]) -> ModelVersion:
        return ModelVersion(
            name=row.name,
            version=row.version,
            format=row.format,
            digest=row.digest,
            size=row.size,
            files=tuple(row.files),
            signature=Signature.from_dict(row.signature),
            framework=row.framework,
            library_versions=row.library_versions,
            metrics=row.metrics,
            params=row.params,
            tags=row.tags,
            description=row.description,
            created_at=row.created_at,
            created_by=row.created_by,
            git_commit=row.git_commit,
            parent=row.parent,
            recipe=row.recipe,
            data_profile=row.data_profile,
            serving=row.serving,
            extra=row.extra,
            trusted=bool(row.trusted),
            aliases=alias_names,
        )


def _listen(dsn: str, on_change: Callable[[str], None], stop: threading.Event) -> None:
    """LISTEN on a dedicated connection; reconnect with backoff when it drops (polling covers the gap)."""
    import psycopg

    backoff = 0.5
    while not stop.is_set():
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                backoff = 0.5
                on_change("")
                while not stop.is_set():
                    for notice in conn.notifies(timeout=1.0):
                        on_change(notice.payload)
        except psycopg.Error as exc:
            log.warning("registry notifications lost (%s); polling until reconnected", type(exc).__name__)
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)


def _rollback_target(history: list[AliasChange], existing: set[int]) -> int | None:
    """Replay the alias's moves as a stack: each `set` pushes, each rollback pops.

    So rolling back twice goes back two deployments, not back and forth. Targets whose version
    has since been removed are skipped.
    """
    stack: list[int | None] = []
    for change in history:
        if change.action == "rollback":
            # Pop back to the target it restored (it may have skipped removed versions).
            while stack and stack[-1] != change.version:
                stack.pop()
            if not stack:
                stack.append(change.version)
        else:
            stack.append(change.version)
    if stack:
        stack.pop()  # the current target
    while stack:
        candidate = stack.pop()
        if candidate is not None and candidate in existing:
            return candidate
    return None

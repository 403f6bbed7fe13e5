"""The audit log: append-only entries, each carrying the SHA-256 of the one before it.

An entry's hash covers a canonical JSON encoding of all its fields, the previous entry's hash
included, so altering, deleting or reordering any entry breaks the chain at that point and
`verify_chain` names it. Removing entries from the end cannot be seen from the chain alone: keep
the head hash `shipyard audit --verify` prints somewhere else to detect that too.

Appends run inside the caller's write transaction, after taking the chain's lock: SQLite's
`BEGIN IMMEDIATE` already holds the database's write lock; PostgreSQL takes a transaction-level
advisory lock (a `SELECT … FOR UPDATE` of the newest row would let a waiter go on with the row
it first saw, not the one the winner just added, and would lock nothing in an empty log).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shipyard.errors import IntegrityError, InvalidInputError
from shipyard.registry.tables import audit_log

GENESIS = "0" * 64  # the "previous hash" of the first entry
_CHAIN_LOCK = 7212011  # PostgreSQL advisory lock key of the chain
_ACTION = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: str
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def entry_hash(
    seq: int, at: str, actor: str, action: str, target: str, detail: dict[str, Any], prev_hash: str
) -> str:
    """SHA-256 (hex) of the entry's canonical JSON: sorted keys, no spaces, UTF-8."""
    fields = {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "target": target,
        "detail": detail,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _plain(detail: dict[str, Any] | None) -> dict[str, Any]:
    """`detail` as the JSON the database will give back, so the hash is over what is stored."""
    try:
        plain = json.loads(json.dumps(detail or {}, default=str, allow_nan=False))
    except ValueError as exc:
        raise InvalidInputError(f"audit detail is not JSON: {exc}", field="detail") from exc
    if not isinstance(plain, dict):
        raise InvalidInputError("audit detail must be a JSON object", field="detail")
    return plain


def append(
    conn: Connection,
    *,
    action: str,
    target: str,
    actor: str,
    at: str,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add one entry at the head of the chain, inside the caller's write transaction."""
    if not _ACTION.match(action):
        raise InvalidInputError(
            f"audit action {action!r} must be 1-32 lowercase letters, digits, '.', '-' or '_'",
            field="action",
        )
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    head = conn.execute(
        sa.select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    seq, prev_hash = (head.seq + 1, head.hash) if head is not None else (1, GENESIS)
    entry = AuditEntry(
        seq=seq,
        at=at,
        actor=actor[:128],
        action=action,
        target=target[:200],
        detail=_plain(detail),
        prev_hash=prev_hash,
        hash="",
    )
    fields = entry.to_dict()
    del fields["hash"]
    entry = AuditEntry(**fields, hash=entry_hash(**fields))
    conn.execute(audit_log.insert().values(**entry.to_dict()))
    return entry


def read(conn: Connection, *, since: str | None = None, action: str | None = None) -> list[AuditEntry]:
    """Entries oldest first; `action` matches exactly or as a prefix before a dot (`alias`
    selects `alias.set`, `alias.delete`, …)."""
    query = audit_log.select().order_by(audit_log.c.seq)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    if action is not None:
        query = query.where(sa.or_(audit_log.c.action == action, audit_log.c.action.startswith(f"{action}.")))
    return [_entry(row) for row in conn.execute(query)]


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        detail=row.detail,
        prev_hash=row.prev_hash,
        hash=row.hash,
    )


def verify_chain(entries: Iterable[AuditEntry]) -> tuple[int, str]:
    """(entries checked, head hash); IntegrityError naming the first entry that breaks the chain."""
    expected_seq, expected_prev, count = 1, GENESIS, 0
    for entry in entries:
        if entry.seq != expected_seq:
            raise IntegrityError(
                f"audit log broken at entry {entry.seq}: entry {expected_seq} before it is missing "
                "(deleted or renumbered)"
            )
        fields = entry.to_dict()
        del fields["hash"]
        if entry_hash(**fields) != entry.hash:
            raise IntegrityError(
                f"audit log broken at entry {entry.seq} ({entry.action} {entry.target} at {entry.at}): "
                "its content no longer matches its hash (altered or moved)"
            )
        if entry.prev_hash != expected_prev:
            raise IntegrityError(
                f"audit log broken at entry {entry.seq}: it does not follow from entry {entry.seq - 1} "
                "(an entry was deleted, reordered or altered)"
            )
        expected_seq, expected_prev, count = entry.seq + 1, entry.hash, count + 1
    return count, expected_prev

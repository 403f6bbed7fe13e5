"""API keys: their format, scopes, expiry and the hash that is all the registry keeps of them.

A key reads `sy_<id>_<secret>`: the id finds the row without a scan, and the secret is 32 random
bytes (256 bits). Only SHA-256 of the secret is stored. A slow KDF (bcrypt, scrypt) protects
secrets a person chose, which an attacker can guess; a 256-bit random secret cannot be guessed,
so a single fast hash is as strong and keeps the server's per-request cost at one hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shipyard.errors import InvalidInputError, UnauthorizedError

PREFIX = "sy"
ADMIN, READ, WRITE = "admin", "read", "write"
# `write` guards registry changes (push, alias, rollback) for HTTP routes that do not exist yet.
_SCOPE = re.compile(r"^(admin|read|write|infer:(\*|[a-z0-9][a-z0-9._-]{0,63}))$")
_KEY = re.compile(r"^sy_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ID = re.compile(r"^[0-9a-f]{16}$")
_DURATION = re.compile(r"^(\d{1,6})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's record: everything but the secret, which is never stored."""

    id: str
    name: str
    scopes: tuple[str, ...]
    created_at: str
    created_by: str
    expires_at: str | None
    last_used_at: str | None
    revoked: bool

    def expired(self, now: datetime | None = None) -> bool:
        if self.expires_at is None:
            return False
        return datetime.fromisoformat(self.expires_at) <= (now or datetime.now(UTC))

    def allows(self, needed: str) -> bool:
        """Whether this key carries `needed` (`admin`, `read`, `write` or `infer:<model>`)."""
        return allows(self.scopes, needed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
            "revoked": self.revoked,
            "expired": self.expired(),
        }


def allows(scopes: tuple[str, ...] | frozenset[str], needed: str) -> bool:
    if needed in scopes:
        return True
    return needed.startswith("infer:") and "infer:*" in scopes


def new_key() -> tuple[str, str, str]:
    """(id, full key shown once, hash of its secret to store)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{PREFIX}_{key_id}_{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str]:
    """(id, secret) of a presented key; 401 if it is not shaped like one (never echoing it)."""
    match = _KEY.match(key)
    if match is None:
        raise UnauthorizedError(
            "the API key is malformed; keys look like sy_<id>_<secret>", field="authorization"
        )
    return match.group(1), match.group(2)


def key_id_of(key: str) -> str | None:
    """The id part of a presented key, for logs (the id is not secret)."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def validate_key_name(name: str) -> str:
    if not _NAME.match(name) or _ID.match(name):
        raise InvalidInputError(
            f"invalid key name {name!r}: use 1-64 letters, digits, '-', '_' or '.' (not 16 hex digits, "
            "which read as a key id)",
            field="name",
        )
    return name


def parse_scopes(values: list[str]) -> tuple[str, ...]:
    if not values:
        raise InvalidInputError(
            "a key needs at least one --scope (admin, read, write, infer:MODEL or infer:*)", field="scope"
        )
    for value in values:
        if not _SCOPE.match(value):
            raise InvalidInputError(
                f"unknown scope {value!r}; use admin, read, write, infer:MODEL or infer:*", field="scope"
            )
    return tuple(dict.fromkeys(values))


def parse_expiry(value: str | None, now: datetime | None = None) -> str | None:
    """`30d`, `12h`, `2w`, `90m` from now, or an ISO date/time (UTC if no zone); None: never."""
    if value is None or value.lower() == "never":
        return None
    now = now or datetime.now(UTC)
    match = _DURATION.match(value.strip().lower())
    if match:
        when = now + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    else:
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInputError(
                f"--expires {value!r} is neither a duration (30d, 12h, 2w, 90m) nor a date (2027-01-31)",
                field="expires",
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    if when <= now:
        raise InvalidInputError(f"--expires {value!r} is in the past", field="expires")
    return when.astimezone(UTC).isoformat(timespec="seconds")

"""Database tables (SQLAlchemy Core). The schema is created and changed only by migrations."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

models = sa.Table(
    "models",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    # Highest version ever allocated: versions are never reused, even after `rm`.
    sa.Column("last_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("name", sa.String(64), sa.ForeignKey("models.name"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("framework", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(80), nullable=False, index=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("files", sa.JSON, nullable=False),
    sa.Column("signature", sa.JSON, nullable=False),
    sa.Column("library_versions", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("tags", sa.JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("git_commit", sa.String(64)),
    sa.Column("parent", sa.String(80)),
    sa.Column("recipe", sa.JSON),
    sa.Column("data_profile", sa.JSON),
    sa.Column("serving", sa.JSON, nullable=False),
    sa.Column("extra", sa.JSON, nullable=False),
    sa.Column("trusted", sa.Boolean, nullable=False),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("name", sa.String(64), sa.ForeignKey("models.name"), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

alias_history = sa.Table(
    "alias_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # set | delete | rollback
    sa.Column("version", sa.Integer),  # target after the change; NULL once deleted
    sa.Column("previous", sa.Integer),  # target before the change
    sa.Column("changed_at", sa.String(32), nullable=False),
    sa.Column("changed_by", sa.String(128), nullable=False),
    sa.Index("ix_alias_history_name_alias", "name", "alias"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # the public part of `sy_<id>_<secret>`
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("key_hash", sa.String(64), nullable=False),  # SHA-256 of the secret; never the secret
    sa.Column("scopes", sa.JSON, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("created_by", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.String(32)),
    sa.Column("last_used_at", sa.String(32)),
    sa.Column("revoked", sa.Boolean, nullable=False),
)

# Append-only and hash-chained (see audit.py): `seq` is allocated by the appender under the
# chain's lock, so two appenders that somehow read the same head collide on the primary key
# instead of forking the chain.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.String(32), nullable=False, index=True),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(32), nullable=False, index=True),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

signatures = sa.Table(
    "signatures",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("fingerprint", sa.String(80), primary_key=True),  # of the public key
    sa.Column("digest", sa.String(80), nullable=False),  # the artifact digest that was signed
    sa.Column("signature", sa.Text, nullable=False),  # base64 Ed25519 signature
    sa.Column("signed_at", sa.String(32), nullable=False),
    sa.Column("signed_by", sa.String(128), nullable=False),
)

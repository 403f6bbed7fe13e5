"""The initial registry schema: models, versions, aliases and their history.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("last_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "versions",
        sa.Column("name", sa.String(64), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("framework", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
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
    op.create_index("ix_versions_digest", "versions", ["digest"])
    op.create_table(
        "aliases",
        sa.Column("name", sa.String(64), sa.ForeignKey("models.name"), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "alias_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer),
        sa.Column("previous", sa.Integer),
        sa.Column("changed_at", sa.String(32), nullable=False),
        sa.Column("changed_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_alias_history_name_alias", "alias_history", ["name", "alias"])


def downgrade() -> None:
    op.drop_table("alias_history")
    op.drop_table("aliases")
    op.drop_table("versions")
    op.drop_table("models")

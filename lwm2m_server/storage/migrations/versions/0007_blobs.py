"""Blobs in the database: the ``blob`` table (release images and packages, content-addressed), which a server on
PostgreSQL uses so that every node reads the same bytes (SQLite keeps them as files). Made only where missing.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if "blob" not in sa.inspect(op.get_bind()).get_table_names():
        op.create_table("blob",
            sa.Column("sha256", sa.String(length=64), nullable=False),
            sa.Column("size", sa.BigInteger(), nullable=False),
            sa.Column("data", sa.LargeBinary(), nullable=False),
            sa.PrimaryKeyConstraint("sha256"),
        )


def downgrade() -> None:
    op.drop_table("blob")

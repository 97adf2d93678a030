"""System releases and differential packages: ``release_image.kind/.version/.install_after``, ``release_delta``,
``release_delta_approval``

The three nullable columns describe a component of a ``system`` release (NULL for the images of older releases:
read as an ``image`` with no version of its own and no dependency); ``release_delta`` holds a system release's
differential packages (one per base release), ``release_delta_approval`` their countersigned copies. Each step runs
only where it is missing (a database made by ``create_all`` of a later release has them all).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-14
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IMAGE_COLUMNS = (sa.Column("kind", sa.String(length=16), nullable=True),
                 sa.Column("version", sa.Text(), nullable=True),
                 sa.Column("install_after", sa.Text(), nullable=True))


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    present = {c["name"] for c in inspector.get_columns("release_image")}
    missing = [c for c in IMAGE_COLUMNS if c.name not in present]
    if missing:
        with op.batch_alter_table("release_image") as batch:  # SQLite and PostgreSQL both ADD COLUMN in place
            for column in missing:
                batch.add_column(column)
    tables = inspector.get_table_names()
    if "release_delta" not in tables:
        op.create_table("release_delta",
            sa.Column("release_id", sa.String(length=32), nullable=False),
            sa.Column("base_release_id", sa.String(length=32), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("base_version", sa.Text(), nullable=False),
            sa.Column("package_sha256", sa.String(length=64), nullable=False),
            sa.Column("package_size", sa.BigInteger(), nullable=False),
            sa.Column("base_digests", sa.Text(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("release_id", "base_release_id")
        )
    if "release_delta_approval" not in tables:
        op.create_table("release_delta_approval",
            sa.Column("release_id", sa.String(length=32), nullable=False),
            sa.Column("base_release_id", sa.String(length=32), nullable=False),
            sa.Column("key_name", sa.String(length=64), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("package_sha256", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("release_id", "base_release_id", "key_name")
        )


def downgrade() -> None:
    op.drop_table("release_delta_approval")
    op.drop_table("release_delta")
    with op.batch_alter_table("release_image") as batch:
        for column in reversed(IMAGE_COLUMNS):
            batch.drop_column(column.name)

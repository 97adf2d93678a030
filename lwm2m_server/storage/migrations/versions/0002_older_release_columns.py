"""Bring a database of an older release up to 0001's tables

A database made by an older release (before migrations, by ``create_all``) gets what it lacks: the
nullable columns added since a table first shipped (``campaign_job.deadline``, ``.package_name``, ``.via``;
``release.origin_tenant``), ``signing_key.sealed_private`` made nullable (public-only keys; SQLite rebuilds the
table, rows kept), and the index ``ix_credential_revoked_at``. Each step runs only where it is missing: on a database
made by 0001 this revision changes nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ADDED_COLUMNS = {  # table -> nullable columns added after the table first shipped
    "campaign_job": (sa.Column("deadline", sa.Float(), nullable=True),
                     sa.Column("package_name", sa.String(length=32), nullable=True),
                     sa.Column("via", sa.String(length=255), nullable=True)),
    "release": (sa.Column("origin_tenant", sa.String(length=64), nullable=True),),
}


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table, columns in ADDED_COLUMNS.items():
        present = {c["name"] for c in inspector.get_columns(table)}
        missing = [c for c in columns if c.name not in present]
        if missing:
            with op.batch_alter_table(table) as batch:  # SQLite and PostgreSQL both ADD COLUMN in place
                for column in missing:
                    batch.add_column(column)
    sealed = next(c for c in inspector.get_columns("signing_key") if c["name"] == "sealed_private")
    if not sealed["nullable"]:
        with op.batch_alter_table("signing_key") as batch:  # SQLite: a new table, the rows copied
            batch.alter_column("sealed_private", existing_type=sa.LargeBinary(), nullable=True)
    if "ix_credential_revoked_at" not in {i["name"] for i in inspector.get_indexes("credential")}:
        op.create_index("ix_credential_revoked_at", "credential", ["revoked_at"], unique=False)


def downgrade() -> None:
    """Nothing: 0001 has these columns and this index already."""

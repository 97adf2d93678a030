"""Several server nodes on one database: the ``node`` table and ``campaign_job.owner``

``node`` holds one row per server node (when it started, when it was last seen, where it is reached);
``campaign_job.owner`` (nullable) names the node running a job's current try. Each step runs only where it is
missing (a database made by ``create_all`` of a later release has both).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "owner" not in {c["name"] for c in inspector.get_columns("campaign_job")}:
        with op.batch_alter_table("campaign_job") as batch:  # SQLite and PostgreSQL both ADD COLUMN in place
            batch.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
    if "node" not in inspector.get_table_names():
        op.create_table("node",
            sa.Column("node_id", sa.String(length=64), nullable=False),
            sa.Column("started_at", sa.Float(), nullable=False),
            sa.Column("seen_at", sa.Float(), nullable=False),
            sa.Column("coap_uri", sa.Text(), nullable=True),
            sa.Column("coaps_uri", sa.Text(), nullable=True),
            sa.Column("api_url", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("node_id")
        )


def downgrade() -> None:
    op.drop_table("node")
    with op.batch_alter_table("campaign_job") as batch:
        batch.drop_column("owner")

"""The event outbox: the ``event_outbox`` table (metering and webhooks read every event from it, once)

Made only where it is missing (a database made by ``create_all`` of a later release has it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if "event_outbox" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table("event_outbox",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=255), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("metered_at", sa.Float(), nullable=True),
        sa.Column("notify_owner", sa.String(length=64), nullable=True),
        sa.Column("notify_until", sa.Float(), nullable=True),
        sa.Column("notified_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_event_outbox_metered", "event_outbox", ["metered_at", "seq"], unique=False)
    op.create_index("ix_event_outbox_notified", "event_outbox", ["notified_at", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_event_outbox_notified", table_name="event_outbox")
    op.drop_index("ix_event_outbox_metered", table_name="event_outbox")
    op.drop_table("event_outbox")

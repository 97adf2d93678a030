"""Multi-component and differential updates: ``campaign_job.delivery`` and ``campaign_job.components``

``delivery`` says what a job's last try sent (``full``: the release's package; ``delta``: a delta package from the
version the device ran); ``components`` holds, as JSON, the device's components (object 32700) as last read. Both
nullable; each is added only where missing (a database made by ``create_all`` of a later release has both).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("campaign_job")}
    with op.batch_alter_table("campaign_job") as batch:  # SQLite and PostgreSQL both ADD COLUMN in place
        if "delivery" not in columns:
            batch.add_column(sa.Column("delivery", sa.String(length=8), nullable=True))
        if "components" not in columns:
            batch.add_column(sa.Column("components", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("campaign_job") as batch:
        batch.drop_column("components")
        batch.drop_column("delivery")

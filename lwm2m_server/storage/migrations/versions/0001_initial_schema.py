"""Every table, as the last release before migrations made them

The schema ``create_all`` made in the last release without migrations: the server's tables and the bootstrap
credential tables, indexes included. On a database made by an older release (tables present, no
``alembic_version``) a table that exists is left alone: the next revision brings it up to date.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOT_REVOKED = sa.column("revoked", sa.Boolean) == sa.false()  # the partial index's condition, in each dialect
TABLES = (  # in the order they are created; dropped in reverse
    "api_token", "audit_entry", "campaign", "campaign_job", "device", "device_class", "device_tag", "registration",
    "release", "release_approval", "release_grant", "release_image", "signing_key", "tenant", "usage_day",
    "usage_endpoint", "user_account", "web_session", "webhook", "webhook_delivery", "credential",
    "credential_psk_fingerprint",
)


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    if "api_token" not in present:
        op.create_table("api_token",
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("roles", sa.String(length=128), nullable=False),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("salt", sa.LargeBinary(), nullable=False),
            sa.Column("digest", sa.LargeBinary(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("created_by", sa.String(length=128), nullable=False),
            sa.Column("expires_at", sa.Float(), nullable=True),
            sa.Column("revoked_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("id")
        )
        op.create_index("ix_api_token_tenant_id", "api_token", ["tenant_id"], unique=False)
    if "audit_entry" not in present:
        op.create_table("audit_entry",
            sa.Column("seq", sa.Integer(), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.Column("subject", sa.String(length=128), nullable=False),
            sa.Column("roles", sa.String(length=128), nullable=False),
            sa.Column("action", sa.String(length=64), nullable=False),
            sa.Column("target", sa.Text(), nullable=False),
            sa.Column("outcome", sa.String(length=16), nullable=False),
            sa.Column("detail", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("seq")
        )
        op.create_index("ix_audit_tenant_seq", "audit_entry", ["tenant_id", "seq"], unique=False)
    if "campaign" not in present:
        op.create_table("campaign",
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("releases", sa.Text(), nullable=False),
            sa.Column("policy", sa.Text(), nullable=False),
            sa.Column("method", sa.String(length=8), nullable=True),
            sa.Column("waves", sa.Integer(), nullable=False),
            sa.Column("opened_at", sa.Text(), nullable=False),
            sa.Column("approved_by", sa.String(length=255), nullable=True),
            sa.Column("targets_from", sa.Text(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("started_at", sa.Float(), nullable=True),
            sa.Column("finished_at", sa.Float(), nullable=True),
            sa.Column("report", sa.LargeBinary(), nullable=True),
            sa.PrimaryKeyConstraint("id")
        )
        op.create_index("ix_campaign_tenant_id", "campaign", ["tenant_id"], unique=False)
    if "campaign_job" not in present:
        op.create_table("campaign_job",
            sa.Column("campaign_id", sa.String(length=32), nullable=False),
            sa.Column("endpoint", sa.String(length=255), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("position", sa.Integer(), nullable=False),
            sa.Column("wave", sa.Integer(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("not_before", sa.Float(), nullable=True),
            sa.Column("deadline", sa.Float(), nullable=True),
            sa.Column("release_id", sa.String(length=32), nullable=True),
            sa.Column("package_sha256", sa.String(length=64), nullable=True),
            sa.Column("package_name", sa.String(length=32), nullable=True),
            sa.Column("sequence_number", sa.Integer(), nullable=True),
            sa.Column("method", sa.String(length=8), nullable=True),
            sa.Column("version_before", sa.Text(), nullable=True),
            sa.Column("version_after", sa.Text(), nullable=True),
            sa.Column("update_result", sa.Integer(), nullable=True),
            sa.Column("started_at", sa.Float(), nullable=True),
            sa.Column("finished_at", sa.Float(), nullable=True),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("via", sa.String(length=255), nullable=True),
            sa.PrimaryKeyConstraint("campaign_id", "endpoint")
        )
        op.create_index("ix_campaign_job_endpoint", "campaign_job", ["tenant_id", "endpoint"], unique=False)
        op.create_index("ix_campaign_job_state", "campaign_job", ["campaign_id", "state"], unique=False)
    if "device" not in present:
        op.create_table("device",
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("endpoint", sa.String(length=255), nullable=False),
            sa.Column("first_seen", sa.Float(), nullable=False),
            sa.Column("last_seen", sa.Float(), nullable=False),
            sa.Column("last_address", sa.Text(), nullable=False),
            sa.Column("lwm2m_version", sa.String(length=8), nullable=False),
            sa.Column("registration_count", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("tenant_id", "endpoint")
        )
    if "device_class" not in present:
        op.create_table("device_class",
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("vendor_id", sa.String(length=36), nullable=False),
            sa.Column("class_id", sa.String(length=36), nullable=False),
            sa.Column("vendor", sa.Text(), nullable=False),
            sa.Column("class_name", sa.Text(), nullable=False),
            sa.Column("require_approval", sa.Boolean(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("tenant_id", "vendor_id", "class_id")
        )
    if "device_tag" not in present:
        op.create_table("device_tag",
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("endpoint", sa.String(length=255), nullable=False),
            sa.Column("tag", sa.String(length=64), nullable=False),
            sa.PrimaryKeyConstraint("tenant_id", "endpoint", "tag")
        )
        op.create_index("ix_device_tag_tenant_tag", "device_tag", ["tenant_id", "tag"], unique=False)
    if "registration" not in present:
        op.create_table("registration",
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("endpoint", sa.String(length=255), nullable=False),
            sa.Column("lifetime", sa.BigInteger(), nullable=False),
            sa.Column("lwm2m_version", sa.String(length=8), nullable=False),
            sa.Column("binding", sa.String(length=8), nullable=False),
            sa.Column("queue_mode", sa.Boolean(), nullable=False),
            sa.Column("links", sa.Text(), nullable=False),
            sa.Column("address", sa.Text(), nullable=False),
            sa.Column("registered_at", sa.Float(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.Column("sms", sa.Text(), nullable=True),
            sa.Column("extra", sa.Text(), nullable=False),
            sa.Column("node_id", sa.String(length=64), nullable=False),
            sa.Column("parent_id", sa.String(length=64), nullable=True),
            sa.Column("path_prefix", sa.Text(), nullable=False),
            sa.Column("secure", sa.Boolean(), nullable=False),
            sa.Column("identity", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("tenant_id", "endpoint", name="uq_registration_tenant_endpoint")
        )
        op.create_index("ix_registration_node_id", "registration", ["node_id"], unique=False)
    if "release" not in present:
        op.create_table("release",
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("vendor", sa.Text(), nullable=False),
            sa.Column("vendor_id", sa.String(length=36), nullable=False),
            sa.Column("class_name", sa.Text(), nullable=False),
            sa.Column("class_id", sa.String(length=36), nullable=False),
            sa.Column("version", sa.Text(), nullable=False),
            sa.Column("sequence_number", sa.BigInteger(), nullable=False),
            sa.Column("package_format", sa.String(length=16), nullable=False),
            sa.Column("key_name", sa.String(length=64), nullable=True),
            sa.Column("signed_by", sa.String(length=64), nullable=True),
            sa.Column("origin_tenant", sa.String(length=64), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("tenant_id", "vendor_id", "class_id", "sequence_number", name="uq_release_sequence")
        )
        op.create_index("ix_release_tenant_created", "release", ["tenant_id", "created_at"], unique=False)
    if "release_approval" not in present:
        op.create_table("release_approval",
            sa.Column("release_id", sa.String(length=32), nullable=False),
            sa.Column("key_name", sa.String(length=64), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("kid", sa.String(length=64), nullable=False),
            sa.Column("packages", sa.Text(), nullable=False),
            sa.Column("approved_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("release_id", "key_name")
        )
    if "release_grant" not in present:
        op.create_table("release_grant",
            sa.Column("oem_tenant", sa.String(length=64), nullable=False),
            sa.Column("operator_tenant", sa.String(length=64), nullable=False),
            sa.Column("class_name", sa.String(length=128), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("created_by", sa.String(length=128), nullable=False),
            sa.PrimaryKeyConstraint("oem_tenant", "operator_tenant", "class_name")
        )
    if "release_image" not in present:
        op.create_table("release_image",
            sa.Column("release_id", sa.String(length=32), nullable=False),
            sa.Column("position", sa.Integer(), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("size", sa.BigInteger(), nullable=False),
            sa.Column("image_sha256", sa.String(length=64), nullable=False),
            sa.Column("package_sha256", sa.String(length=64), nullable=False),
            sa.Column("package_size", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("release_id", "position")
        )
    if "signing_key" not in present:
        op.create_table("signing_key",
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("name", sa.String(length=64), nullable=False),
            sa.Column("role", sa.String(length=16), nullable=False),
            sa.Column("alg", sa.String(length=16), nullable=False),
            sa.Column("kid", sa.String(length=64), nullable=False),
            sa.Column("public_pem", sa.Text(), nullable=False),
            sa.Column("sealed_private", sa.LargeBinary(), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("tenant_id", "name")
        )
        op.create_index("ix_signing_key_kid", "signing_key", ["kid"], unique=False)
    if "tenant" not in present:
        op.create_table("tenant",
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("kind", sa.String(length=16), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("brand", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("id")
        )
    if "usage_day" not in present:
        op.create_table("usage_day",
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("day", sa.String(length=10), nullable=False),
            sa.Column("devices_registered", sa.BigInteger(), nullable=False),
            sa.Column("deliveries_started", sa.BigInteger(), nullable=False),
            sa.Column("deliveries_succeeded", sa.BigInteger(), nullable=False),
            sa.Column("deliveries_failed", sa.BigInteger(), nullable=False),
            sa.Column("bytes_delivered", sa.BigInteger(), nullable=False),
            sa.Column("campaigns_started", sa.BigInteger(), nullable=False),
            sa.Column("campaigns_finished", sa.BigInteger(), nullable=False),
            sa.Column("prev_hash", sa.String(length=64), nullable=True),
            sa.Column("hash", sa.String(length=64), nullable=True),
            sa.PrimaryKeyConstraint("tenant_id", "day")
        )
    if "usage_endpoint" not in present:
        op.create_table("usage_endpoint",
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("day", sa.String(length=10), nullable=False),
            sa.Column("endpoint", sa.String(length=255), nullable=False),
            sa.PrimaryKeyConstraint("tenant_id", "day", "endpoint")
        )
    if "user_account" not in present:
        op.create_table("user_account",
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("login", sa.String(length=128), nullable=False),
            sa.Column("roles", sa.String(length=128), nullable=False),
            sa.Column("password_hash", sa.Text(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("created_by", sa.String(length=128), nullable=False),
            sa.Column("disabled_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("login")
        )
        op.create_index("ix_user_account_tenant_id", "user_account", ["tenant_id"], unique=False)
    if "web_session" not in present:
        op.create_table("web_session",
            sa.Column("digest", sa.LargeBinary(), nullable=False),
            sa.Column("user_id", sa.String(length=32), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("csrf", sa.String(length=64), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("expires_at", sa.Float(), nullable=False),
            sa.Column("revoked_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("digest")
        )
        op.create_index("ix_web_session_user_id", "web_session", ["user_id"], unique=False)
    if "webhook" not in present:
        op.create_table("webhook",
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("url", sa.Text(), nullable=False),
            sa.Column("sealed_secret", sa.LargeBinary(), nullable=True),
            sa.Column("kinds", sa.Text(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("active", sa.Boolean(), nullable=False),
            sa.PrimaryKeyConstraint("id")
        )
        op.create_index("ix_webhook_tenant_active", "webhook", ["tenant_id", "active"], unique=False)
    if "webhook_delivery" not in present:
        op.create_table("webhook_delivery",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("webhook_id", sa.String(length=32), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("event_kind", sa.String(length=255), nullable=False),
            sa.Column("event_id", sa.String(length=32), nullable=False),
            sa.Column("attempt", sa.Integer(), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.Column("status_code", sa.Integer(), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.Column("delivered", sa.Boolean(), nullable=False),
            sa.Column("duration", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id")
        )
        op.create_index("ix_webhook_delivery_tenant_webhook", "webhook_delivery", ["tenant_id", "webhook_id", "id"],
                        unique=False)
    if "credential" not in present:
        op.create_table("credential",
            sa.Column("identity", sa.String(length=255), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("endpoint", sa.String(length=255), nullable=False),
            sa.Column("kind", sa.String(length=16), nullable=False),
            sa.Column("sealed_psk", sa.LargeBinary(), nullable=True),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("revoked", sa.Boolean(), nullable=False),
            sa.Column("revoked_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("identity")
        )
        op.create_index("ix_credential_revoked_at", "credential", ["revoked_at"], unique=False)
        op.create_index("ix_credential_tenant_endpoint", "credential", ["tenant_id", "endpoint"], unique=False)
        op.create_index("uq_credential_active", "credential", ["tenant_id", "endpoint", "kind"], unique=True,
                        sqlite_where=_NOT_REVOKED, postgresql_where=_NOT_REVOKED)
    if "credential_psk_fingerprint" not in present:
        op.create_table("credential_psk_fingerprint",
            sa.Column("fingerprint", sa.LargeBinary(length=32), nullable=False),
            sa.Column("tenant_id", sa.String(length=64), nullable=False),
            sa.Column("identity", sa.String(length=255), nullable=False),
            sa.Column("issued_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("fingerprint")
        )


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)

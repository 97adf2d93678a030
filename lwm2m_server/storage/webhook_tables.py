"""SQL tables of the webhooks (sqlmodel). Same invariants as :mod:`lwm2m_server.storage.tables`: tenant-scoped,
portable SQL, times as float seconds.

A subscription's secret is stored only sealed by the vault (AES-GCM, bound to the subscription's id and tenant) and
erased when the subscription is removed. A delivery row records one attempt (or one event that was never attempted:
dropped on a full queue, or left when the notifier stopped; ``attempt`` 0 or the attempts made so far); it never
holds a secret, a signature or a request body.
"""

# No ``from __future__ import annotations`` here: sqlmodel reads the field annotations at class creation.

from sqlalchemy import Index, LargeBinary, Text
from sqlmodel import Field, SQLModel

__all__ = ["WebhookDeliveryRow", "WebhookRow"]


class WebhookRow(SQLModel, table=True):
    """One webhook subscription: ``url`` receives the events whose kind passes one of ``kinds`` (comma list of
    prefixes, see :func:`lwm2m_server.events.kind_matches`)."""

    __tablename__ = "webhook"
    __table_args__ = (Index("ix_webhook_tenant_active", "tenant_id", "active"),)

    id: str = Field(primary_key=True, max_length=32)
    tenant_id: str = Field(default="default", max_length=64)
    url: str = Field(sa_type=Text)
    sealed_secret: bytes | None = Field(default=None, sa_type=LargeBinary)  # NULL once removed
    kinds: str = Field(sa_type=Text)
    created_at: float
    active: bool = True


class WebhookDeliveryRow(SQLModel, table=True):
    """One delivery attempt of one event to one webhook (``event_id`` is the delivery id the receiver sees)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (Index("ix_webhook_delivery_tenant_webhook", "tenant_id", "webhook_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: str = Field(max_length=32)
    tenant_id: str = Field(default="default", max_length=64)
    event_kind: str = Field(max_length=255)
    event_id: str = Field(max_length=32)
    attempt: int = 0
    at: float
    status_code: int | None = None
    error: str | None = Field(default=None, sa_type=Text)
    delivered: bool = False
    duration: float = 0.0

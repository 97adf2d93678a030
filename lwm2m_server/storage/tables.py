"""The SQL schema (sqlmodel tables). Portable SQL only: SQLite by default, PostgreSQL by URL.

Invariants: every table has ``tenant_id`` (default ``"default"``) and every query is scoped by it; times are
wall-clock seconds (float, double precision); integers that may exceed 2**31 are BIGINT; nothing here holds a
transport handle. A registration row's identity is its id and ``(tenant_id, endpoint)`` is unique; its links
are link-format text (:func:`~lwm2m_server.core.codec.link.format_links`) and its extra query attributes a
JSON list of ``[name, value-or-null]`` pairs (order kept).
"""

# No ``from __future__ import annotations`` here: sqlmodel reads the field annotations at class creation.

from sqlalchemy import BigInteger, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = ["DeviceRow", "RegistrationRow"]


class RegistrationRow(SQLModel, table=True):
    """One live registration (see :class:`~lwm2m_server.core.registration.Registration`)."""

    __tablename__ = "registration"
    __table_args__ = (
        UniqueConstraint("tenant_id", "endpoint", name="uq_registration_tenant_endpoint"),
        Index("ix_registration_node_id", "node_id"),
    )

    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(default="default", max_length=64)
    endpoint: str = Field(max_length=255)
    lifetime: int = Field(sa_type=BigInteger)
    lwm2m_version: str = Field(max_length=8)
    binding: str = Field(max_length=8)
    queue_mode: bool = False
    links: str = Field(default="", sa_type=Text)
    address: str = Field(default="", sa_type=Text)
    registered_at: float
    updated_at: float
    sms: str | None = Field(default=None, sa_type=Text)
    extra: str = Field(default="[]", sa_type=Text)
    node_id: str = Field(default="", max_length=64)
    parent_id: str | None = Field(default=None, max_length=64)
    path_prefix: str = Field(default="", sa_type=Text)
    secure: bool = False
    identity: str | None = Field(default=None, sa_type=Text)


class DeviceRow(SQLModel, table=True):
    """A device known to the server (it has registered at least once)."""

    __tablename__ = "device"

    tenant_id: str = Field(default="default", primary_key=True, max_length=64)
    endpoint: str = Field(primary_key=True, max_length=255)
    first_seen: float
    last_seen: float
    last_address: str = Field(default="", sa_type=Text)
    lwm2m_version: str = Field(default="1.0", max_length=8)
    registration_count: int = Field(default=0, sa_type=BigInteger)

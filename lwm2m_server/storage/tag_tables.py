"""SQL table of the device tags (sqlmodel). Same invariants as :mod:`lwm2m_server.storage.tables`: tenant-scoped,
portable SQL.

A row says that one endpoint of one tenant carries one tag; the three columns are the primary key, so a tag is on
a device at most once. The endpoint need not be registered (nor ever have been): an operator tags its inventory
ahead of time. Tags are validated by :mod:`lwm2m_server.registry.tags` before they are stored.
"""

# No ``from __future__ import annotations`` here: sqlmodel reads the field annotations at class creation.

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

__all__ = ["MAX_TAG_LENGTH", "DeviceTagRow"]

MAX_TAG_LENGTH = 64


class DeviceTagRow(SQLModel, table=True):
    """One tag of one device of one tenant."""

    __tablename__ = "device_tag"
    __table_args__ = (Index("ix_device_tag_tenant_tag", "tenant_id", "tag"),)

    tenant_id: str = Field(default="default", primary_key=True, max_length=64)
    endpoint: str = Field(primary_key=True, max_length=255)
    tag: str = Field(primary_key=True, max_length=MAX_TAG_LENGTH)

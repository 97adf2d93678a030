"""SQL tables of usage metering (sqlmodel). Same invariants as :mod:`lwm2m_server.storage.tables`: tenant-scoped,
portable SQL.

``usage_day`` holds one tenant's day: its counters, and once sealed its ``prev_hash`` and ``hash`` (NULL while
the day is open; a sealed row is never written again). ``usage_endpoint`` holds the endpoints counted as
registered on a day: the three columns are the primary key, so an endpoint counts once per tenant and day, also
when several server nodes see it. See :mod:`lwm2m_server.metering.usage` for the chain.
"""

# No ``from __future__ import annotations`` here: sqlmodel reads the field annotations at class creation.

from sqlalchemy import BigInteger
from sqlmodel import Field, SQLModel

__all__ = ["UsageDayRow", "UsageEndpointRow"]


class UsageDayRow(SQLModel, table=True):
    """One tenant's day of usage."""

    __tablename__ = "usage_day"

    tenant_id: str = Field(primary_key=True, max_length=64)
    day: str = Field(primary_key=True, max_length=10)  # YYYY-MM-DD, UTC
    # devices_registered is set when the day is sealed (until then it is the count of its usage_endpoint rows)
    devices_registered: int = Field(default=0, sa_type=BigInteger)
    deliveries_started: int = Field(default=0, sa_type=BigInteger)
    deliveries_succeeded: int = Field(default=0, sa_type=BigInteger)
    deliveries_failed: int = Field(default=0, sa_type=BigInteger)
    bytes_delivered: int = Field(default=0, sa_type=BigInteger)
    campaigns_started: int = Field(default=0, sa_type=BigInteger)
    campaigns_finished: int = Field(default=0, sa_type=BigInteger)
    prev_hash: str | None = Field(default=None, max_length=64)
    hash: str | None = Field(default=None, max_length=64)


class UsageEndpointRow(SQLModel, table=True):
    """An endpoint counted as registered on one tenant's day."""

    __tablename__ = "usage_endpoint"

    tenant_id: str = Field(primary_key=True, max_length=64)
    day: str = Field(primary_key=True, max_length=10)
    endpoint: str = Field(primary_key=True, max_length=255)

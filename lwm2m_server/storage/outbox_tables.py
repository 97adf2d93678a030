"""SQL table of the event outbox (sqlmodel): every event the metering and the webhooks consume, written once by the
node that published it, read by every node. Portable SQL, times as float seconds.

A row is *pending for metering* while ``metered_at`` is NULL and *pending for webhooks* while ``notified_at`` is
NULL; each consumer sets its column once, in the transaction that consumes the row, and never clears it. A row
neither consumer needs is written with both set (so it is only kept until pruned). ``notify_owner`` and
``notify_until`` are the webhook lease: the node delivering the event, until when (a lease past its time is free,
its node presumed dead). Read and written through :mod:`lwm2m_server.storage.outbox_store` and the metering store
(:meth:`lwm2m_server.metering.store.UsageStore.count_outbox`) only.

The schema is made and upgraded by the migrations (:mod:`lwm2m_server.storage.migrations`, revision 0004).
"""

# No ``from __future__ import annotations`` here: sqlmodel reads the field annotations at class creation.

from sqlalchemy import BigInteger, Column, Index, Integer, Text
from sqlmodel import Field, SQLModel

__all__ = ["SEQ_TYPE", "OutboxRow"]

SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements an INTEGER PRIMARY KEY only


class OutboxRow(SQLModel, table=True):
    """One event, in publication order (``seq``) per writer; ``event_id`` names it everywhere (uuid4 hex)."""

    __tablename__ = "event_outbox"
    __table_args__ = (
        Index("ix_event_outbox_metered", "metered_at", "seq"),
        Index("ix_event_outbox_notified", "notified_at", "seq"),
    )

    seq: int | None = Field(default=None, sa_column=Column(SEQ_TYPE, primary_key=True, autoincrement=True))
    event_id: str = Field(max_length=32, unique=True)
    kind: str = Field(max_length=255)
    at: float
    tenant_id: str = Field(max_length=64)
    endpoint: str | None = Field(default=None, max_length=255)
    data: str = Field(sa_type=Text)  # JSON object
    node_id: str = Field(max_length=64)
    metered_at: float | None = None
    notify_owner: str | None = Field(default=None, max_length=64)
    notify_until: float | None = None
    notified_at: float | None = None

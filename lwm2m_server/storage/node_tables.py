"""SQL table of the server nodes sharing one database (sqlmodel). Portable SQL, times as float seconds; not
tenant-scoped: a node is infrastructure, it serves every tenant.

A node writes its row at start and refreshes ``seen_at`` at every beat; a node whose ``seen_at`` is older than the
timeout is dead, and another node takes its active campaign jobs over (``campaign_job.owner`` names a node). Read
and written through :class:`~lwm2m_server.storage.node_store.SqlNodeStore` only.

The schema is made and upgraded by the migrations (:mod:`lwm2m_server.storage.migrations`): a change to the table
here comes with a new revision there.
"""

# No ``from __future__ import annotations`` here: sqlmodel reads the field annotations at class creation.

from sqlalchemy import Text
from sqlmodel import Field, SQLModel

__all__ = ["MAX_NODE_ID", "NodeRow"]

MAX_NODE_ID = 64


class NodeRow(SQLModel, table=True):
    """One server node: when it started, when it was last seen, and where it is reached."""

    __tablename__ = "node"

    node_id: str = Field(primary_key=True, max_length=MAX_NODE_ID)
    started_at: float
    seen_at: float
    coap_uri: str | None = Field(default=None, sa_type=Text)
    coaps_uri: str | None = Field(default=None, sa_type=Text)
    api_url: str | None = Field(default=None, sa_type=Text)

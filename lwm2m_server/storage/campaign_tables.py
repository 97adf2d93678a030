"""SQL tables of the campaigns (sqlmodel). Same invariants as :mod:`lwm2m_server.storage.tables`: tenant-scoped,
portable SQL, times as float seconds.

A campaign row holds its plan (policy, waves opened) and state; one job row per target holds that device's progress.
They are read and written through :class:`~lwm2m_server.storage.campaign_store.SqlCampaignStore` only.
A job row is written *before* the action it announces (a delivery starts only once its row says ``delivering``),
so after a crash the rows say what may have happened and the engine reconciles them with what the device reports.
Several server nodes may share these tables: a job's ``owner`` names the node that runs its current try.

The schema is made and upgraded by the migrations (:mod:`lwm2m_server.storage.migrations`): a change to a table
here comes with a new revision there.
"""

# No ``from __future__ import annotations`` here: sqlmodel reads the field annotations at class creation.

from sqlalchemy import Index, LargeBinary, Text
from sqlmodel import Field, SQLModel

__all__ = ["CampaignJobRow", "CampaignRow"]


class CampaignRow(SQLModel, table=True):
    """One campaign: releases to deliver, how (policy, method), and where it stands."""

    __tablename__ = "campaign"

    id: str = Field(primary_key=True, max_length=32)
    tenant_id: str = Field(default="default", max_length=64, index=True)
    name: str = Field(default="", sa_type=Text)
    state: str = Field(max_length=16)
    reason: str | None = Field(default=None, sa_type=Text)
    releases: str = Field(sa_type=Text)  # JSON list of release ids
    policy: str = Field(sa_type=Text)  # JSON (firmware_object.campaign.Policy.as_dict)
    method: str | None = Field(default=None, max_length=8)  # push, pull or None (the device's choice)
    waves: int = 0
    opened_at: str = Field(default="[]", sa_type=Text)  # JSON list: when each opened wave opened
    approved_by: str | None = Field(default=None, max_length=255)  # the deployment key that countersigned
    targets_from: str = Field(default="", sa_type=Text)  # how the targets were chosen (file name or filter)
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    report: bytes | None = Field(default=None, sa_type=LargeBinary)  # the signed final report (COSE_Sign1)


class CampaignJobRow(SQLModel, table=True):
    """One target of a campaign."""

    __tablename__ = "campaign_job"
    __table_args__ = (Index("ix_campaign_job_state", "campaign_id", "state"),
                      Index("ix_campaign_job_endpoint", "tenant_id", "endpoint"))

    campaign_id: str = Field(primary_key=True, max_length=32)
    endpoint: str = Field(primary_key=True, max_length=255)
    tenant_id: str = Field(default="default", max_length=64)
    position: int = 0  # order in the target list
    wave: int = 0
    state: str = Field(max_length=16)
    attempts: int = 0
    not_before: float | None = None
    deadline: float | None = None  # an active job's phase must have ended by then (else it is timed out)
    release_id: str | None = Field(default=None, max_length=32)
    package_sha256: str | None = Field(default=None, max_length=64)
    # the file server name of this try's package (Package URI /fw/<name>): published again after a restart while
    # the job is delivering or downloaded; a capability, never shown in a status or report
    package_name: str | None = Field(default=None, max_length=32)
    sequence_number: int | None = None
    method: str | None = Field(default=None, max_length=8)
    version_before: str | None = Field(default=None, sa_type=Text)
    version_after: str | None = Field(default=None, sa_type=Text)
    update_result: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    reason: str | None = Field(default=None, sa_type=Text)
    via: str | None = Field(default=None, max_length=255)  # the gateway the last try went through (None: directly)
    # the server node running the job's current try (node.node_id; None: no try yet, or one from before owners):
    # a node writes a job only while it owns it, and adopts an active job whose owner is no longer alive
    owner: str | None = Field(default=None, max_length=64)
    delivery: str | None = Field(default=None, max_length=8)  # the last try sent "full" or "delta"
    components: str | None = Field(default=None, sa_type=Text)  # JSON: the device's components (object 32700)

"""The campaign store: campaigns and their jobs (one aggregate), as a Protocol with a memory and a SQL implementation.

Every implementation passes tests/unit/test_campaign_store_contract.py. Invariants:

* a campaign and its jobs belong to one tenant, and every method is scoped by ``tenant_id`` (a required keyword):
  another tenant's campaign or job is not found (``None``, ``[]``), and a write aimed at it changes nothing. Only
  the server's restart query (:meth:`CampaignStore.in_states`, :meth:`CampaignStore.postpone_deadlines`) may pass
  ``tenant_id=None``: every tenant;
* a campaign id is unique across tenants; a job is keyed by ``(campaign id, endpoint)``;
* every call is atomic, and durable once it returns (the SQL store commits at once): what a crash leaves is what
  the calls that returned wrote. :meth:`CampaignStore.create` writes a campaign with all its jobs, or nothing;
* a guarded update (``expect``, ``holder``, ``unreported``) checks the current row and writes in one transaction;
* several server nodes may share one database: a job's ``owner`` is the node running its current try.
  :meth:`CampaignStore.claim_jobs` starts jobs under the campaign's lock (PostgreSQL: its row ``FOR UPDATE``;
  SQLite: ``BEGIN IMMEDIATE``, the database's write lock), so the jobs active at once never exceed the limit the
  nodes pass together, and no job is claimed twice; a node writes a job with ``holder=`` its own id, so a node that
  lost a job to another writes nothing; :meth:`CampaignStore.adopt_jobs` takes over the active jobs of dead nodes;
  ``update(..., unreported=True)`` lets one node only write a campaign's final report;
* jobs come back in ``position`` order, campaigns listed newest first (``created_at`` descending, then id);
* records are frozen; a read returns what was written (floats, bytes and text unchanged);
* a database failure raises :class:`~lwm2m_server.core.errors.StorageError`, a duplicate campaign id or job
  endpoint its subclass :class:`~lwm2m_server.storage.stores.StorageConflictError`.
"""

from __future__ import annotations

import builtins
import functools
import json
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypedDict, Unpack, runtime_checkable

from sqlalchemy import Connection, Float, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from firmware_object.campaign import ACTIVE, CampaignState, InvalidPolicyError, JobState, JobView, Policy
from lwm2m_server.core.errors import StorageError
from lwm2m_server.storage.campaign_tables import CampaignJobRow, CampaignRow
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.sql import chunks
from lwm2m_server.storage.stores import StorageConflictError

__all__ = [
    "CampaignChanges",
    "CampaignRecord",
    "CampaignStore",
    "JobChanges",
    "JobRecord",
    "MemoryCampaignStore",
    "SqlCampaignStore",
]


@dataclass(frozen=True, slots=True)
class CampaignRecord:
    """One campaign: the releases it delivers, how (policy, method), its waves and where it stands."""

    id: str
    tenant_id: str
    state: CampaignState
    releases: tuple[str, ...]
    policy: Policy
    waves: int
    created_at: float
    name: str = ""
    method: str | None = None  # push, pull or None (each device's choice)
    reason: str | None = None
    opened_at: tuple[float, ...] = ()  # when each opened wave opened
    approved_by: str | None = None  # the deployment key that countersigned
    targets_from: str = ""  # how the targets were chosen (file name or filter)
    started_at: float | None = None
    finished_at: float | None = None
    report: bytes | None = None  # the signed final report (COSE_Sign1)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One target of a campaign: that device's progress (``package_name`` is a capability: never shown)."""

    campaign_id: str
    endpoint: str
    tenant_id: str
    state: JobState
    position: int = 0  # order in the target list
    wave: int = 0
    attempts: int = 0
    not_before: float | None = None
    deadline: float | None = None
    release_id: str | None = None
    package_sha256: str | None = None
    package_name: str | None = None
    sequence_number: int | None = None
    method: str | None = None
    version_before: str | None = None
    version_after: str | None = None
    update_result: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    reason: str | None = None
    via: str | None = None  # the gateway the last try went through (None: directly)
    owner: str | None = None  # the server node running the current try (None: none yet, or from before owners)
    delivery: str | None = None  # what the last try sent: "full" (the release's package) or "delta" (from a base)
    components: str | None = None  # JSON list of the device's components (object 32700) as last read, or None


class CampaignChanges(TypedDict, total=False):
    """The fields of a campaign an update may set (a field left out keeps its value)."""

    state: CampaignState
    reason: str | None
    opened_at: tuple[float, ...]
    approved_by: str | None
    started_at: float | None
    finished_at: float | None
    report: bytes | None


class JobChanges(TypedDict, total=False):
    """The fields of a job an update may set (a field left out keeps its value)."""

    state: JobState
    attempts: int
    not_before: float | None
    deadline: float | None
    release_id: str | None
    package_sha256: str | None
    package_name: str | None
    sequence_number: int | None
    method: str | None
    version_before: str | None
    version_after: str | None
    update_result: int | None
    started_at: float | None
    finished_at: float | None
    updated_at: float
    reason: str | None
    via: str | None
    owner: str | None
    delivery: str | None
    components: str | None


_CAMPAIGN_FIELDS = frozenset(CampaignChanges.__annotations__)
_JOB_FIELDS = frozenset(JobChanges.__annotations__)


def _checked(changes: Mapping[str, object], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(changes) - allowed)
    if unknown:
        raise TypeError(f"a {what} update cannot set {', '.join(unknown)}")


def _check_create(campaign: CampaignRecord, jobs: Sequence[JobRecord]) -> None:
    for job in jobs:
        if job.campaign_id != campaign.id or job.tenant_id != campaign.tenant_id:
            raise StorageError(f"job {job.endpoint!r} does not belong to campaign {campaign.id!r} of its tenant")


@runtime_checkable
class CampaignStore(Protocol):
    """Campaigns keyed by id, their jobs by ``(campaign id, endpoint)``; see the module docstring."""

    def create(self, campaign: CampaignRecord, jobs: Sequence[JobRecord]) -> None:
        """Store a new campaign with its jobs (each of its campaign and tenant), all or nothing: a campaign id
        already taken or an endpoint given twice raises :class:`StorageConflictError`, a job of another campaign
        or tenant :class:`StorageError`; nothing is written then."""
        ...

    def get(self, campaign_id: str, *, tenant_id: str) -> CampaignRecord | None: ...

    def list(self, *, tenant_id: str) -> builtins.list[CampaignRecord]:
        """The tenant's campaigns, newest first (``created_at`` descending, then id)."""
        ...

    def in_states(self, states: Collection[CampaignState], *, job_states: Collection[JobState],
                  tenant_id: str | None) -> builtins.list[tuple[CampaignRecord, builtins.list[JobRecord]]]:
        """The campaigns in one of ``states`` (of every tenant when ``tenant_id`` is None; oldest first), each with
        its jobs in one of ``job_states`` (in position order): what a restarting server picks up."""
        ...

    def update(self, campaign_id: str, *, tenant_id: str, expect: Collection[CampaignState] | None = None,
               unreported: bool = False, **changes: Unpack[CampaignChanges]) -> bool:
        """Set ``changes`` on the campaign when it exists in the tenant (and, with ``expect``, is in one of those
        states; with ``unreported``, has no report yet); whether it did."""
        ...

    def job(self, campaign_id: str, endpoint: str, *, tenant_id: str) -> JobRecord | None: ...

    def jobs(self, campaign_id: str, *, tenant_id: str, state: JobState | None = None) -> builtins.list[JobRecord]:
        """The campaign's jobs (those in ``state`` when given), in position order."""
        ...

    def job_views(self, campaign_id: str, *, tenant_id: str) -> tuple[JobView, ...]:
        """What the pure core decides on, for every job in position order (cheaper than whole records: the
        driver reads them at every decision, a status at every poll)."""
        ...

    def update_job(self, campaign_id: str, endpoint: str, *, tenant_id: str,
                   expect: Collection[JobState] | None = None, holder: str | None = None,
                   **changes: Unpack[JobChanges]) -> bool:
        """Set ``changes`` on the job when it exists in the tenant (and, with ``expect``, is in one of those
        states; with ``holder``, is owned by that node); whether it did."""
        ...

    def claim_jobs(self, campaign_id: str, endpoints: Sequence[str], *, tenant_id: str, owner: str, limit: int,
                   now: float, deadline: float | None) -> builtins.list[str]:
        """In one transaction holding the campaign's lock: of ``endpoints``, the jobs still ``pending``, in position
        order, as many as ``limit`` leaves beside the campaign's jobs already active (of any node), become
        ``delivering``, owned by ``owner``, ``updated_at=now``, with ``deadline``; their endpoints, in position
        order. An unknown endpoint, a job not pending, another tenant's campaign: nothing claimed."""
        ...

    def adopt_jobs(self, campaign_id: str, endpoints: Sequence[str], *, tenant_id: str, owner: str,
                   alive: Collection[str]) -> builtins.list[str]:
        """In one transaction: of ``endpoints``, the active jobs owned by no node or by one not in ``alive`` (and
        not ``owner``) become owned by ``owner``; their endpoints, in position order."""
        ...

    def update_jobs(self, campaign_id: str, *, tenant_id: str, in_state: JobState,
                    **changes: Unpack[JobChanges]) -> int:
        """Set ``changes`` on every job of the campaign in ``in_state``, in one transaction; how many."""
        ...

    def postpone_deadlines(self, deadlines: Sequence[tuple[str, str, float]], *, tenant_id: str | None) -> None:
        """For each ``(campaign id, endpoint, earliest)``: the job's deadline becomes ``earliest`` when it has none
        or an earlier one (a deadline only moves later), all in one transaction."""
        ...


# ------------------------------------------------------------------------------------------------------- memory


class MemoryCampaignStore:
    """Campaigns in a dict by id; each campaign's jobs in a dict by endpoint, kept in position order."""

    def __init__(self) -> None:
        self._campaigns: dict[str, CampaignRecord] = {}
        self._jobs: dict[str, dict[str, JobRecord]] = {}
        self._lock = threading.Lock()

    def _mine(self, campaign_id: str, tenant_id: str | None) -> CampaignRecord | None:
        found = self._campaigns.get(campaign_id)
        return found if found is not None and tenant_id in (None, found.tenant_id) else None

    def create(self, campaign: CampaignRecord, jobs: Sequence[JobRecord]) -> None:
        _check_create(campaign, jobs)
        by_endpoint: dict[str, JobRecord] = {}
        for job in sorted(jobs, key=lambda j: j.position):
            if job.endpoint in by_endpoint:
                raise StorageConflictError(f"campaign {campaign.id!r} lists {job.endpoint!r} twice")
            by_endpoint[job.endpoint] = job
        with self._lock:
            if campaign.id in self._campaigns:
                raise StorageConflictError(f"campaign {campaign.id!r} exists already")
            self._campaigns[campaign.id] = campaign
            self._jobs[campaign.id] = by_endpoint

    def get(self, campaign_id: str, *, tenant_id: str) -> CampaignRecord | None:
        with self._lock:
            return self._mine(campaign_id, tenant_id)

    def list(self, *, tenant_id: str) -> builtins.list[CampaignRecord]:
        with self._lock:
            mine = [c for c in self._campaigns.values() if c.tenant_id == tenant_id]
        return sorted(mine, key=lambda c: (-c.created_at, c.id))

    def in_states(self, states: Collection[CampaignState], *, job_states: Collection[JobState],
                  tenant_id: str | None) -> builtins.list[tuple[CampaignRecord, builtins.list[JobRecord]]]:
        with self._lock:
            found = [(c, [j for j in self._jobs[c.id].values() if j.state in job_states])
                     for c in self._campaigns.values()
                     if c.state in states and tenant_id in (None, c.tenant_id)]
        return sorted(found, key=lambda pair: (pair[0].created_at, pair[0].id))

    def update(self, campaign_id: str, *, tenant_id: str, expect: Collection[CampaignState] | None = None,
               unreported: bool = False, **changes: Unpack[CampaignChanges]) -> bool:
        _checked(changes, _CAMPAIGN_FIELDS, "campaign")
        with self._lock:
            found = self._mine(campaign_id, tenant_id)
            if (found is None or (expect is not None and found.state not in expect)
                    or (unreported and found.report is not None)):
                return False
            self._campaigns[campaign_id] = replace(found, **changes)
            return True

    def job(self, campaign_id: str, endpoint: str, *, tenant_id: str) -> JobRecord | None:
        with self._lock:
            if self._mine(campaign_id, tenant_id) is None:
                return None
            return self._jobs[campaign_id].get(endpoint)

    def jobs(self, campaign_id: str, *, tenant_id: str, state: JobState | None = None) -> builtins.list[JobRecord]:
        with self._lock:
            if self._mine(campaign_id, tenant_id) is None:
                return []
            return [j for j in self._jobs[campaign_id].values() if state is None or j.state is state]

    def job_views(self, campaign_id: str, *, tenant_id: str) -> tuple[JobView, ...]:
        return tuple(JobView(j.endpoint, j.wave, j.state, j.attempts, j.not_before, j.deadline)
                     for j in self.jobs(campaign_id, tenant_id=tenant_id))

    def update_job(self, campaign_id: str, endpoint: str, *, tenant_id: str,
                   expect: Collection[JobState] | None = None, holder: str | None = None,
                   **changes: Unpack[JobChanges]) -> bool:
        _checked(changes, _JOB_FIELDS, "job")
        with self._lock:
            if self._mine(campaign_id, tenant_id) is None:
                return False
            jobs = self._jobs[campaign_id]
            found = jobs.get(endpoint)
            if (found is None or (expect is not None and found.state not in expect)
                    or (holder is not None and found.owner != holder)):
                return False
            jobs[endpoint] = replace(found, **changes)
            return True

    def claim_jobs(self, campaign_id: str, endpoints: Sequence[str], *, tenant_id: str, owner: str, limit: int,
                   now: float, deadline: float | None) -> builtins.list[str]:
        with self._lock:
            if self._mine(campaign_id, tenant_id) is None:
                return []
            jobs = self._jobs[campaign_id]
            room = limit - sum(1 for j in jobs.values() if j.state in ACTIVE)
            wanted = set(endpoints)
            chosen = [ep for ep, j in jobs.items() if ep in wanted and j.state is JobState.PENDING][:max(room, 0)]
            for ep in chosen:
                jobs[ep] = replace(jobs[ep], state=JobState.DELIVERING, owner=owner, updated_at=now,
                                   deadline=deadline)
            return chosen

    def adopt_jobs(self, campaign_id: str, endpoints: Sequence[str], *, tenant_id: str, owner: str,
                   alive: Collection[str]) -> builtins.list[str]:
        with self._lock:
            if self._mine(campaign_id, tenant_id) is None:
                return []
            jobs = self._jobs[campaign_id]
            wanted = set(endpoints)
            chosen = [ep for ep, j in jobs.items() if ep in wanted and j.state in ACTIVE
                      and (j.owner is None or (j.owner != owner and j.owner not in alive))]
            for ep in chosen:
                jobs[ep] = replace(jobs[ep], owner=owner)
            return chosen

    def update_jobs(self, campaign_id: str, *, tenant_id: str, in_state: JobState,
                    **changes: Unpack[JobChanges]) -> int:
        _checked(changes, _JOB_FIELDS, "job")
        with self._lock:
            if self._mine(campaign_id, tenant_id) is None:
                return 0
            jobs = self._jobs[campaign_id]
            chosen = [ep for ep, j in jobs.items() if j.state is in_state]
            for ep in chosen:
                jobs[ep] = replace(jobs[ep], **changes)
            return len(chosen)

    def postpone_deadlines(self, deadlines: Sequence[tuple[str, str, float]], *, tenant_id: str | None) -> None:
        with self._lock:
            for campaign_id, endpoint, earliest in deadlines:
                if self._mine(campaign_id, tenant_id) is None:
                    continue
                jobs = self._jobs[campaign_id]
                found = jobs.get(endpoint)
                if found is not None and (found.deadline is None or found.deadline < earliest):
                    jobs[endpoint] = replace(found, deadline=earliest)


# ---------------------------------------------------------------------------------------------------------- SQL

_CAMPAIGN = CampaignRow.__table__  # type: ignore[attr-defined]
_JOB = CampaignJobRow.__table__  # type: ignore[attr-defined]
def _campaign_columns(changes: Mapping[str, Any]) -> dict[str, Any]:
    columns = dict(changes)
    if "state" in columns:
        columns["state"] = CampaignState(columns["state"]).value
    if "opened_at" in columns:
        columns["opened_at"] = json.dumps(list(columns["opened_at"]))
    return columns


@functools.lru_cache(maxsize=256)
def _job_update(columns: frozenset[str], expecting: bool, holding: bool = False) -> Any:
    """The UPDATE of one job setting ``columns``, with bound parameters (``v_<column>``, ``w_campaign``,
    ``w_endpoint``, ``w_tenant``, ``w_expect``, ``w_holder``): built once per set of columns and guards, so
    SQLAlchemy computes its cache key once (building a fresh statement per job change was a quarter of the
    server's CPU in a large campaign)."""
    j = _JOB.c
    where = [j.campaign_id == bindparam("w_campaign"), j.endpoint == bindparam("w_endpoint"),
             j.tenant_id == bindparam("w_tenant")]
    if expecting:
        where.append(j.state.in_(bindparam("w_expect", expanding=True)))
    if holding:
        where.append(j.owner == bindparam("w_holder"))
    return update(_JOB).where(*where).values({c: bindparam(f"v_{c}") for c in sorted(columns)})


def _job_columns(changes: Mapping[str, Any]) -> dict[str, Any]:
    columns = dict(changes)
    if "state" in columns:
        columns["state"] = JobState(columns["state"]).value
    return columns


def _campaign_row(c: CampaignRecord) -> dict[str, Any]:
    return {"id": c.id, "tenant_id": c.tenant_id, "name": c.name, "state": c.state.value, "reason": c.reason,
            "releases": json.dumps(list(c.releases)), "policy": json.dumps(c.policy.as_dict()), "method": c.method,
            "waves": c.waves, "opened_at": json.dumps(list(c.opened_at)), "approved_by": c.approved_by,
            "targets_from": c.targets_from, "created_at": c.created_at, "started_at": c.started_at,
            "finished_at": c.finished_at, "report": c.report}


def _job_row(j: JobRecord) -> dict[str, Any]:
    return {"campaign_id": j.campaign_id, "endpoint": j.endpoint, "tenant_id": j.tenant_id, "position": j.position,
            "wave": j.wave, "state": j.state.value, "attempts": j.attempts, "not_before": j.not_before,
            "deadline": j.deadline, "release_id": j.release_id, "package_sha256": j.package_sha256,
            "package_name": j.package_name, "sequence_number": j.sequence_number, "method": j.method,
            "version_before": j.version_before, "version_after": j.version_after, "update_result": j.update_result,
            "started_at": j.started_at, "finished_at": j.finished_at, "updated_at": j.updated_at, "reason": j.reason,
            "via": j.via, "owner": j.owner, "delivery": j.delivery, "components": j.components}


def _campaign_from_row(row: Mapping[str, Any]) -> CampaignRecord:
    """The campaign a row holds. Raises :class:`StorageError` on a corrupt row."""
    try:
        return CampaignRecord(
            id=row["id"], tenant_id=row["tenant_id"], state=CampaignState(row["state"]),
            releases=tuple(json.loads(row["releases"])), policy=Policy.from_dict(json.loads(row["policy"])),
            waves=row["waves"], created_at=row["created_at"], name=row["name"], method=row["method"],
            reason=row["reason"], opened_at=tuple(json.loads(row["opened_at"])), approved_by=row["approved_by"],
            targets_from=row["targets_from"], started_at=row["started_at"], finished_at=row["finished_at"],
            report=None if row["report"] is None else bytes(row["report"]))
    except (InvalidPolicyError, ValueError, TypeError) as e:
        raise StorageError(f"campaign {row['id']!r}: corrupt stored value: {e}") from e


def _job_from_row(row: Mapping[str, Any]) -> JobRecord:
    try:
        state = JobState(row["state"])
    except ValueError as e:
        raise StorageError(f"campaign {row['campaign_id']!r}: job {row['endpoint']!r} is in no known state") from e
    return JobRecord(
        campaign_id=row["campaign_id"], endpoint=row["endpoint"], tenant_id=row["tenant_id"], state=state,
        position=row["position"], wave=row["wave"], attempts=row["attempts"], not_before=row["not_before"],
        deadline=row["deadline"], release_id=row["release_id"], package_sha256=row["package_sha256"],
        package_name=row["package_name"], sequence_number=row["sequence_number"], method=row["method"],
        version_before=row["version_before"], version_after=row["version_after"],
        update_result=row["update_result"], started_at=row["started_at"], finished_at=row["finished_at"],
        updated_at=row["updated_at"], reason=row["reason"], via=row["via"], owner=row["owner"],
        delivery=row["delivery"], components=row["components"])


class SqlCampaignStore:
    """Campaigns in the ``campaign`` table, their jobs in ``campaign_job`` (SQLAlchemy Core, portable SQL: see
    :mod:`lwm2m_server.storage.sql`). Every call runs in its own transaction, committed before it returns."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def _read(self, query: Any, what: str) -> builtins.list[Any]:
        try:
            with self._engine.connect() as conn:
                return builtins.list(conn.execute(query).mappings().all())
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read {what}: {e}") from e

    def _write(self, statement: Any, what: str, params: Any = None) -> int:
        try:
            with self._engine.begin() as conn:
                return int(conn.execute(statement, params).rowcount)
        except SQLAlchemyError as e:
            raise StorageError(f"cannot write {what}: {e}") from e

    def create(self, campaign: CampaignRecord, jobs: Sequence[JobRecord]) -> None:
        _check_create(campaign, jobs)
        row, job_rows = _campaign_row(campaign), [_job_row(j) for j in jobs]
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(_CAMPAIGN), row)
                if job_rows:
                    conn.execute(insert(_JOB), job_rows)
        except IntegrityError as e:
            raise StorageConflictError(f"campaign {campaign.id!r}: its id or a job endpoint is taken: {e.orig}") from e
        except SQLAlchemyError as e:
            raise StorageError(f"cannot write campaign {campaign.id!r}: {e}") from e

    def get(self, campaign_id: str, *, tenant_id: str) -> CampaignRecord | None:
        c = _CAMPAIGN.c
        rows = self._read(select(_CAMPAIGN).where(c.id == campaign_id, c.tenant_id == tenant_id), "campaigns")
        return _campaign_from_row(rows[0]) if rows else None

    def list(self, *, tenant_id: str) -> builtins.list[CampaignRecord]:
        c = _CAMPAIGN.c
        query = select(_CAMPAIGN).where(c.tenant_id == tenant_id).order_by(c.created_at.desc(), c.id)
        return [_campaign_from_row(r) for r in self._read(query, "campaigns")]

    def in_states(self, states: Collection[CampaignState], *, job_states: Collection[JobState],
                  tenant_id: str | None) -> builtins.list[tuple[CampaignRecord, builtins.list[JobRecord]]]:
        c, j = _CAMPAIGN.c, _JOB.c
        query = (select(_CAMPAIGN).where(c.state.in_([s.value for s in states]))
                 .order_by(c.created_at, c.id))
        if tenant_id is not None:
            query = query.where(c.tenant_id == tenant_id)
        campaigns = [_campaign_from_row(r) for r in self._read(query, "campaigns")]
        jobs: dict[str, builtins.list[JobRecord]] = {cp.id: [] for cp in campaigns}
        wanted = [s.value for s in job_states]
        for chunk in chunks(builtins.list(jobs)):
            rows = self._read(select(_JOB).where(j.campaign_id.in_(chunk), j.state.in_(wanted))
                              .order_by(j.campaign_id, j.position), "campaign jobs")
            for r in rows:
                jobs[r["campaign_id"]].append(_job_from_row(r))
        return [(cp, jobs[cp.id]) for cp in campaigns]

    def update(self, campaign_id: str, *, tenant_id: str, expect: Collection[CampaignState] | None = None,
               unreported: bool = False, **changes: Unpack[CampaignChanges]) -> bool:
        _checked(changes, _CAMPAIGN_FIELDS, "campaign")
        c = _CAMPAIGN.c
        where = [c.id == campaign_id, c.tenant_id == tenant_id]
        if expect is not None:
            where.append(c.state.in_([s.value for s in expect]))
        if unreported:
            where.append(c.report.is_(None))
        if not changes:  # nothing to set: whether it would have applied
            return bool(self._read(select(c.id).where(*where), "campaigns"))
        return self._write(update(_CAMPAIGN).where(*where).values(_campaign_columns(changes)),
                           f"campaign {campaign_id!r}") > 0

    def job(self, campaign_id: str, endpoint: str, *, tenant_id: str) -> JobRecord | None:
        j = _JOB.c
        rows = self._read(select(_JOB).where(j.campaign_id == campaign_id, j.endpoint == endpoint,
                                             j.tenant_id == tenant_id), "campaign jobs")
        return _job_from_row(rows[0]) if rows else None

    def jobs(self, campaign_id: str, *, tenant_id: str, state: JobState | None = None) -> builtins.list[JobRecord]:
        j = _JOB.c
        query = select(_JOB).where(j.campaign_id == campaign_id, j.tenant_id == tenant_id).order_by(j.position)
        if state is not None:
            query = query.where(j.state == state.value)
        return [_job_from_row(r) for r in self._read(query, "campaign jobs")]

    def job_views(self, campaign_id: str, *, tenant_id: str) -> tuple[JobView, ...]:
        j = _JOB.c
        query = (select(j.endpoint, j.wave, j.state, j.attempts, j.not_before, j.deadline)
                 .where(j.campaign_id == campaign_id, j.tenant_id == tenant_id).order_by(j.position))
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
            return tuple(JobView(ep, wave, JobState(state), attempts, not_before, deadline)
                         for ep, wave, state, attempts, not_before, deadline in rows)
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read campaign jobs: {e}") from e
        except ValueError as e:
            raise StorageError(f"campaign {campaign_id!r}: a job is in no known state: {e}") from e

    def update_job(self, campaign_id: str, endpoint: str, *, tenant_id: str,
                   expect: Collection[JobState] | None = None, holder: str | None = None,
                   **changes: Unpack[JobChanges]) -> bool:
        _checked(changes, _JOB_FIELDS, "job")
        j = _JOB.c
        if not changes:
            where = [j.campaign_id == campaign_id, j.endpoint == endpoint, j.tenant_id == tenant_id]
            if expect is not None:
                where.append(j.state.in_([s.value for s in expect]))
            if holder is not None:
                where.append(j.owner == holder)
            return bool(self._read(select(j.endpoint).where(*where), "campaign jobs"))
        columns = _job_columns(changes)
        params = {f"v_{k}": v for k, v in columns.items()}
        params.update(w_campaign=campaign_id, w_endpoint=endpoint, w_tenant=tenant_id)
        if expect is not None:
            params["w_expect"] = [s.value for s in expect]
        if holder is not None:
            params["w_holder"] = holder
        statement = _job_update(frozenset(columns), expect is not None, holder is not None)
        return self._write(statement, "campaign job", params) > 0

    def _locked(self, conn: Connection) -> None:
        """Begin ``conn``'s transaction holding SQLite's write lock at once (pysqlite begins lazily, at the first
        write: two transactions that both read first would then fail to write); PostgreSQL locks rows instead
        (``FOR UPDATE``, which SQLite's SQL has not: SQLAlchemy leaves it out there)."""
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    def claim_jobs(self, campaign_id: str, endpoints: Sequence[str], *, tenant_id: str, owner: str, limit: int,
                   now: float, deadline: float | None) -> builtins.list[str]:
        c, j = _CAMPAIGN.c, _JOB.c
        mine = (j.campaign_id == campaign_id, j.tenant_id == tenant_id)
        pending = JobState.PENDING.value
        try:
            with self._engine.begin() as conn:
                self._locked(conn)
                lock = select(c.id).where(c.id == campaign_id, c.tenant_id == tenant_id).with_for_update()
                if conn.execute(lock).first() is None:
                    return []
                active = conn.execute(select(func.count()).select_from(_JOB).where(
                    *mine, j.state.in_([s.value for s in ACTIVE]))).scalar_one()
                room = limit - int(active)
                if room <= 0 or not endpoints:
                    return []
                found: builtins.list[tuple[int, str]] = []
                for chunk in chunks(builtins.list(dict.fromkeys(endpoints))):
                    query = (select(j.position, j.endpoint).where(*mine, j.state == pending, j.endpoint.in_(chunk))
                             .order_by(j.position, j.endpoint).limit(room).with_for_update(skip_locked=True))
                    found.extend((position, endpoint) for position, endpoint in conn.execute(query))
                chosen = [endpoint for _, endpoint in sorted(found)[:room]]
                for chunk in chunks(chosen):
                    conn.execute(update(_JOB).where(*mine, j.state == pending, j.endpoint.in_(chunk)).values(
                        state=JobState.DELIVERING.value, owner=owner, updated_at=now, deadline=deadline))
                return chosen
        except SQLAlchemyError as e:
            raise StorageError(f"cannot claim jobs of campaign {campaign_id!r}: {e}") from e

    def adopt_jobs(self, campaign_id: str, endpoints: Sequence[str], *, tenant_id: str, owner: str,
                   alive: Collection[str]) -> builtins.list[str]:
        j = _JOB.c
        strays = (j.campaign_id == campaign_id, j.tenant_id == tenant_id, j.state.in_([s.value for s in ACTIVE]),
                  or_(j.owner.is_(None), and_(j.owner != owner, j.owner.not_in(sorted(alive)))))
        try:
            with self._engine.begin() as conn:
                self._locked(conn)
                found: builtins.list[tuple[int, str]] = []
                for chunk in chunks(builtins.list(dict.fromkeys(endpoints))):
                    query = (select(j.position, j.endpoint).where(*strays, j.endpoint.in_(chunk))
                             .with_for_update(skip_locked=True))
                    found.extend((position, endpoint) for position, endpoint in conn.execute(query))
                chosen = [endpoint for _, endpoint in sorted(found)]
                for chunk in chunks(chosen):
                    conn.execute(update(_JOB).where(*strays, j.endpoint.in_(chunk)).values(owner=owner))
                return chosen
        except SQLAlchemyError as e:
            raise StorageError(f"cannot adopt jobs of campaign {campaign_id!r}: {e}") from e

    def update_jobs(self, campaign_id: str, *, tenant_id: str, in_state: JobState,
                    **changes: Unpack[JobChanges]) -> int:
        _checked(changes, _JOB_FIELDS, "job")
        j = _JOB.c
        where = [j.campaign_id == campaign_id, j.tenant_id == tenant_id, j.state == in_state.value]
        if not changes:
            return len(self._read(select(j.endpoint).where(*where), "campaign jobs"))
        return self._write(update(_JOB).where(*where).values(_job_columns(changes)), "campaign jobs")

    def postpone_deadlines(self, deadlines: Sequence[tuple[str, str, float]], *, tenant_id: str | None) -> None:
        if not deadlines:
            return
        j = _JOB.c
        earliest = bindparam("b_earliest", type_=Float)
        where = [j.campaign_id == bindparam("b_campaign"), j.endpoint == bindparam("b_endpoint"),
                 or_(j.deadline.is_(None), j.deadline < earliest)]
        if tenant_id is not None:
            where.append(j.tenant_id == tenant_id)
        statement = update(_JOB).where(and_(*where)).values(deadline=earliest)
        params = [{"b_campaign": cid, "b_endpoint": ep, "b_earliest": when} for cid, ep, when in deadlines]
        self._write(statement, "campaign job deadlines", params)

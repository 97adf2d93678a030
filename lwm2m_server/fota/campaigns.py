"""Campaigns: releases + a target list -> a staged rollout run inside the server, persisted, with a signed report.

The decisions (which wave opens, which device starts, when to halt) are the pure functions of
:mod:`firmware_object.campaign`; this module is their I/O shell. It keeps the campaign and its jobs in a
:class:`~lwm2m_server.storage.campaign_store.CampaignStore`, runs one
driver task per running campaign and one task per device being updated (through :class:`FirmwareService`), and
turns what each update ends with into the job's state: succeeded, rolled-back (the device reported a failed update
and runs its previous version), failed, or pending again with a back-off for a transient failure (a timeout, a lost
connection, a device gone offline) while attempts remain. Integrity and signature failures are never retried.

Crash safety (the server may be killed at any moment):

- a job row is committed *before* the action it announces: ``delivering`` before the first byte, and the other
  states as the device reports them; a terminal state is never left;
- at start, a campaign's jobs found in an active state (delivering, downloaded, updating) are *orphans*: nothing is
  sent to such a device until it is reachable again (it registers or updates), then its /5/0/3, /5/0/5 and /3/0/3
  are read: running the target version credits it (succeeded), a failed update with the old version is a
  rollback, an integrity failure fails it, a device still installing is asked again later, a device Downloading
  or Downloaded is followed to its end in the same try (see below), and anything else puts the job back to
  pending so that delivery starts over. A device is therefore never sent Update twice for one successful
  delivery, and no reported result is lost;
- a pulling device holds a Package URI (``/fw/<name>``) and may ask for its next block before anything else. Each
  try gets a fresh random name (:meth:`FileServer.new_name`), committed with the job row (``package_name``)
  before the URI is written to the device; at start, before anything here awaits (so before the server reads
  a datagram, unless its own start awaited after binding a listener), the package of every job in delivering or
  downloaded is published again under its name from the release's blob, so the device resumes its download with
  the same ETag. The name is withdrawn when the try ends (the update ends, the orphan is reconciled otherwise,
  its deadline passes). Why a persisted random name and not one derived by a keyed hash of tenant, endpoint and
  digest: it stays scoped to one try (a later try or campaign for the same device and package gets another
  name), and no secret has to outlive a restart or a vault key rotation;
- a device registered over plain CoAP is asked to come back at once: the server executes its Registration Update
  Trigger (/1/x/8) at the address its registration was persisted with, and the Update that follows makes it
  reachable. Over DTLS there is no session to send on until the device talks: its next Update or Register brings
  it back (the registry's ``registration.updated`` / ``registration.registered`` events wake the campaign).

Deadlines: a job entering delivering, downloaded or updating gets ``deadline = now + phase_timeout(...)``
(:func:`firmware_object.campaign.phase_timeout`, per campaign policy); a job still in that phase at its deadline is
*overdue*: its update is abandoned and the try ends as a timeout (retried after a back-off while tries remain; in a
halted or cancelled campaign it fails), which frees its ``max_parallel`` slot. After a restart an orphan keeps its
deadline, pushed to at least one whole phase after the restart (the server was not there to hear the device).

Several nodes on one database (``nodes``, a :class:`~lwm2m_server.storage.node_store.NodeStore`, given): every node
runs a driver for every running campaign (each finds campaigns started elsewhere within a ``tick``) and decides on
what the database says (no job views cached). A job is started by the node that holds its device's session: pending
jobs are *claimed* (:meth:`CampaignStore.claim_jobs`: one transaction under the campaign's lock, so ``max_parallel``
holds across nodes, the jobs taken with ``SKIP LOCKED``), which records the node as the job's ``owner``; every
later write of an active job is fenced by that owner. When a node dies (its heartbeat older than ``node_timeout``),
its active jobs are *adopted* by the node their device reaches next (it registers there) and reconciled like the
orphans of a restart; an overdue job of a dead node is timed out by whichever node sees it first. Which node holds a
device is what the registration table says (the newest Register wins the row): a node claims or adopts only the jobs
of devices registered there, so a device that moved while its node lives (a new source port, hashed by the balancer
to another node) is taken over too, and its old node, whose writes are now refused, abandons the update. The final
report is written once (``unreported``), by whichever node ends the campaign. One node alone is the same code with
itself as the only live node.

Events (``campaign.*``) feed the webhooks, the CLI's ``watch`` stream and the audit log.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fnmatch
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from firmware_object.campaign import (
    ACTIVE,
    FINAL_CAMPAIGN_STATES,
    TERMINAL,
    CampaignState,
    CampaignView,
    FailureKind,
    InvalidPolicyError,
    JobState,
    JobView,
    Policy,
    choose_delivery,
    classify_failure,
    decide,
    phase_timeout,
    plan_waves,
    retry_at,
    unverified_components,
    wave_stats,
)
from firmware_object.errors import State, UpdateResult
from lwm2m_server.core.errors import CoapCode, InvalidRequestError, Lwm2mError, NotFoundError, dotted_code
from lwm2m_server.core.model.firmware_component import FIRMWARE_COMPONENT_ID
from lwm2m_server.core.nodes import Instance, SingleResource, device_text
from lwm2m_server.core.operations import ExecuteRequest, ReadRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.events import REGISTRATION_REGISTERED, REGISTRATION_UPDATED, Event, EventBus
from lwm2m_server.fota.components import read_components
from lwm2m_server.fota.release_import import check_deploy_grant
from lwm2m_server.fota.service import FirmwareService, Method, UpdateInProgressError, UpdateJob, result_label
from lwm2m_server.management import DeviceManagement
from lwm2m_server.storage.campaign_store import (
    CampaignChanges,
    CampaignRecord,
    CampaignStore,
    JobRecord,
    SqlCampaignStore,
)
from lwm2m_server.tenancy.brand import PRODUCT_NAME
from lwm2m_server.tenancy.model import ForbiddenError

log = logging.getLogger(__name__)

FIRMWARE = LwM2mPath.of(5, 0)
CANCEL = LwM2mPath.of(5, 0, 10)
FIRMWARE_VERSION = LwM2mPath.of(3, 0, 3)
MODEL_NUMBER = LwM2mPath.of(3, 0, 1)

CAMPAIGN_CREATED = "campaign.created"
CAMPAIGN_STARTED = "campaign.started"
CAMPAIGN_PAUSED = "campaign.paused"
CAMPAIGN_RESUMED = "campaign.resumed"
CAMPAIGN_CANCELLED = "campaign.cancelled"
CAMPAIGN_WAVE_OPENED = "campaign.wave_opened"
CAMPAIGN_HALTED = "campaign.halted"
CAMPAIGN_FINISHED = "campaign.finished"
CAMPAIGN_DEVICE = "campaign.device."  # + progress, succeeded, failed, skipped
MAX_TARGETS = 100_000

_PHASE_STATES = {"delivering": JobState.DELIVERING, "downloaded": JobState.DOWNLOADED,
                 "updating": JobState.UPDATING, "rebooted": JobState.UPDATING}
_RESUMED = (CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.HALTED, CampaignState.CANCELLED)
_NOT_TERMINAL = frozenset(JobState) - TERMINAL
_VIEW_FIELDS = frozenset(("wave", "state", "attempts", "not_before", "deadline"))
_TRANSIENT_ERRORS = {"timeout", "unreachable", "RequestFailedError", "UpdateInProgressError", "NetworkError"}


DECISION_GAP = 0.1  # seconds: the least time between two decisions of a campaign's driver
NUDGE_INTERVAL = 30.0  # seconds between two Registration Update Triggers sent to one silent plain-CoAP device
SERVER_OBJECT, REGISTRATION_UPDATE_TRIGGER = 1, 8


class CampaignStateError(InvalidRequestError):
    """The operation does not fit the campaign's state (start a finished campaign, pause a paused one...)."""

    coap_code = CoapCode.CONFLICT


class UnknownCampaignError(NotFoundError):
    """No campaign with that id in this tenant."""


@dataclass(frozen=True)
class DeltaTarget:
    """A delta package of a target release, for devices that run ``base_version``; ``bases`` maps each component
    name to the SHA-256 hex of the image the delta expects installed."""

    base_version: str
    package_sha256: str
    package: bytes
    bases: Mapping[str, str]


@dataclass(frozen=True)
class Target:
    """A release chosen for one device: what it gets and how it will be recognised once installed; ``deltas``
    (by base version) are the release's delta packages (a system release's only)."""

    release_id: str
    version: str
    sequence_number: int | None
    package_sha256: str
    package: bytes
    deltas: Mapping[str, DeltaTarget] = field(default_factory=dict)
    components: Mapping[str, str] = field(default_factory=dict)
    """A system release's components: name -> SHA-256 hex of the content a device must report once updated."""

    def package_of(self, sha256: str | None) -> bytes | None:
        """The full or delta package whose SHA-256 hex is ``sha256`` (None: neither)."""
        if sha256 == self.package_sha256:
            return self.package
        return next((d.package for d in self.deltas.values() if d.package_sha256 == sha256), None)


class CampaignService:
    """Creates, runs and reports campaigns; one driver task per running campaign (see the module docstring)."""

    def __init__(self, store: CampaignStore, firmware: FirmwareService, management: DeviceManagement,
                 events: EventBus, releases: Any, keys: Any, *, clock: Callable[[], float] = time.time,
                 node: str = "node-1", tick: float = 1.0, job_timeout: float = 600.0,
                 attestation_key: str = "attestation", tags: Any = None, tenancy: Any = None,
                 nodes: Any = None, node_timeout: float = 10.0) -> None:
        """``store`` keeps the campaigns and their jobs (each change committed when the call returns: a restart
        resumes from it); ``releases`` is a :class:`~lwm2m_server.fota.releases.Releases`, ``keys`` its
        :class:`~lwm2m_server.fota.releases.SigningKeys` (the attestation key is made on first use), ``tags`` the
        :class:`~lwm2m_server.registry.tags.DeviceTags` that ``tag=`` filter terms look in (None: such terms are
        refused), ``tenancy`` the :class:`~lwm2m_server.tenancy.service.TenancyService` whose grants a release
        imported from another tenant (an OEM) needs at creation and at start, and whose brands name the issuer of
        reports (None: only a tenant's own releases are deployed). ``nodes`` is the
        :class:`~lwm2m_server.storage.node_store.NodeStore` of several nodes sharing the database (None: this node
        alone); a node not heard of for ``node_timeout`` seconds is dead and its active jobs may be adopted."""
        self.store = store
        self.firmware = firmware
        self.management = management
        self.events = events
        self.releases = releases
        self.keys = keys
        self.clock = clock
        self.node = node
        self.tick = tick
        self.job_timeout = job_timeout
        self.attestation_key = attestation_key
        self.tags = tags
        self.tenancy = tenancy
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._jobs: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._orphans: set[tuple[str, str]] = set()
        self._targets: dict[str, dict[str, Target]] = {}  # campaign -> release id -> what is delivered
        self._nudged: dict[tuple[str, str], float] = {}  # (tenant, endpoint) -> when its Update was last triggered
        self._nudges: set[asyncio.Task[None]] = set()
        self._probing: set[tuple[str, str]] = set()  # overdue jobs behind a gateway whose gateway is being probed
        self._views: dict[tuple[str, str], dict[str, JobView]] = {}  # (tenant, campaign) -> endpoint -> view
        self._unsubscribe: Callable[[], None] | None = None
        self._closing = False
        self.nodes = nodes
        self.node_timeout = node_timeout
        self._alive_at, self._alive_nodes = -math.inf, frozenset((node,))
        self._discovery: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Pick up the campaigns that were running when the server stopped (their active jobs become orphans)."""
        self._unsubscribe = self.events.subscribe(self._on_registration, (REGISTRATION_REGISTERED,
                                                                          REGISTRATION_UPDATED))
        resumed = self.store.in_states(_RESUMED, job_states=ACTIVE, tenant_id=None)  # every tenant's
        now = self.clock()
        later: list[tuple[str, str, float]] = []
        for row, active in resumed:
            # this node's jobs, and those of no node (written before jobs had owners); a dead node's are adopted
            # when their devices reach this node (see _adopt), a live node's are left to it
            unowned = [j.endpoint for j in active if j.owner is None]
            taken = set(self.store.adopt_jobs(row.id, unowned, tenant_id=row.tenant_id, owner=self.node,
                                              alive=())) if unowned else set()
            active = [j for j in active if j.owner == self.node or j.endpoint in taken]
            if not active:  # an ended campaign's packages are not loaded for nothing
                continue
            size = self._package_size(row)
            for job in active:
                self._orphans.add((row.id, job.endpoint))
                self._publish_again(row, job)
                # the server was away: the device gets a whole phase from now to be heard of again
                earliest = now + phase_timeout(row.policy, job.state, size)
                if job.deadline is None or job.deadline < earliest:
                    later.append((row.id, job.endpoint, earliest))
        self.store.postpone_deadlines(later, tenant_id=None)
        self._views.clear()
        for row, _ in resumed:
            if row.state not in FINAL_CAMPAIGN_STATES or row.report is None:
                log.info("campaign %s: picked up in state %s", row.id, row.state.value)
                self._spawn_driver(row.id, row.tenant_id)
        if self.nodes is not None:
            self._discovery = asyncio.get_running_loop().create_task(self._discover(), name="campaign-discovery")

    async def _discover(self) -> None:
        """Several nodes: every ``tick``, run a driver here for each campaign started (or resumed) elsewhere."""
        while not self._closing:
            await asyncio.sleep(self.tick)
            try:
                rows = self.store.in_states(_RESUMED, job_states=(), tenant_id=None)
            except Exception as e:  # a database hiccup: the next look tries again
                log.warning("cannot look for campaigns run by other nodes: %s", e)
                continue
            for row, _ in rows:
                running = self._drivers.get(row.id)
                if (running is None or running.done()) and (row.state not in FINAL_CAMPAIGN_STATES
                                                             or row.report is None):
                    self._spawn_driver(row.id, row.tenant_id)

    def _alive(self) -> frozenset[str]:
        """The nodes alive now, this one always (read at most once per ``tick``): an active job owned by one of
        them is left to it."""
        if self.nodes is None:
            return self._alive_nodes
        now = self.clock()
        if now - self._alive_at >= self.tick:
            alive = self.nodes.alive(now=now, timeout=self.node_timeout)
            self._alive_at, self._alive_nodes = now, frozenset(alive) | {self.node}
        return self._alive_nodes

    def _publish_again(self, row: CampaignRecord, job: JobRecord) -> None:
        """Serve an open delivery's package under the name its device holds (see the module docstring)."""
        if job.package_name is None or job.state not in (JobState.DELIVERING, JobState.DOWNLOADED):
            return
        target = next((t for t in self._targets_of(row).values() if t.release_id == job.release_id), None)
        package = None if target is None else target.package_of(job.package_sha256)
        if package is None:
            log.warning("campaign %s: the package of %s is gone; its download cannot go on", row.id, job.endpoint)
            return
        self.firmware.files.publish(package, job.package_name)

    def _withdraw(self, cid: str, ep: str, tenant_id: str) -> None:
        """The try of (cid, ep) ended: its package name resolves no more."""
        job = self._job(cid, ep, tenant_id)
        if job is not None and job.package_name is not None:
            self.firmware.files.withdraw(job.package_name)

    def _drop_orphan(self, cid: str, ep: str, tenant_id: str) -> None:
        self._orphans.discard((cid, ep))
        self._withdraw(cid, ep, tenant_id)

    async def close(self) -> None:
        """Stop the drivers and the device tasks; what they have committed stays (a restart resumes)."""
        self._closing = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        tasks = [*self._drivers.values(), *self._jobs.values(), *self._nudges,
                 *([self._discovery] if self._discovery is not None else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # ------------------------------------------------------------------ operations

    async def create(self, release_ids: Sequence[str], *, tenant_id: str, targets: Sequence[str] | None = None,
                     target_filter: str | None = None, policy: Policy | None = None, name: str = "",
                     method: str | None = None, targets_from: str = "") -> dict[str, Any]:
        """A new campaign in state ``created``; its targets are the given endpoints or those the filter picks among
        the registered devices (``endpoint=GLOB``, ``tag=T``, ``class=C``, ``version=X``, each also with ``!=``,
        joined by ``and``: see :meth:`select_targets`)."""
        if not release_ids:
            raise InvalidRequestError("a campaign needs at least one release")
        if (targets is None) == (target_filter is None):
            raise InvalidRequestError("give a target list or a filter (one of them)")
        if method not in (None, "push", "pull"):
            raise InvalidRequestError("method is push or pull (or none: each device's choice)")
        policy = policy or Policy()
        releases = [self._release(rid, tenant_id) for rid in release_ids]
        self._check_grants(releases, tenant_id, "campaign refused")
        for rel in releases:
            if len(rel.images) != 1 and rel.package_format != "system":
                raise InvalidRequestError(f"release {rel.id} has {len(rel.images)} images, each its own package; a "
                                          "campaign delivers one package per release (make it a system release: "
                                          "one envelope of several components)")
        if targets is None:
            assert target_filter is not None
            targets = await self.select_targets(target_filter, tenant_id=tenant_id)
            targets_from = targets_from or f"filter: {target_filter}"
        targets = [t.strip() for t in targets if t.strip()]
        if len(targets) > MAX_TARGETS:
            raise InvalidRequestError(f"{len(targets)} targets; a campaign may have at most {MAX_TARGETS}")
        if not targets:
            raise InvalidRequestError("the campaign has no target")
        try:
            waves = plan_waves(targets, policy)
        except InvalidPolicyError as e:
            raise InvalidRequestError(str(e)) from None
        now = self.clock()
        cid = "cmp-" + secrets.token_hex(5)
        campaign = CampaignRecord(id=cid, tenant_id=tenant_id, state=CampaignState.CREATED,
                                  releases=tuple(r.id for r in releases), policy=policy, waves=len(waves),
                                  created_at=now, name=name, method=method, targets_from=targets_from)
        jobs = [JobRecord(cid, ep, tenant_id, JobState.PENDING, position=position, wave=w, updated_at=now)
                for position, (w, ep) in enumerate((w, ep) for w, endpoints in enumerate(waves) for ep in endpoints)]
        self.store.create(campaign, jobs)
        self._emit(CAMPAIGN_CREATED, tenant_id, None, {"campaign": cid, "targets": len(targets), "waves": len(waves)})
        return self.status(cid, tenant_id=tenant_id)

    async def select_targets(self, expression: str, *, tenant_id: str) -> list[str]:
        """The registered devices of the tenant the filter picks (sorted by endpoint). A tagged device that is not
        registered is never picked: candidates are the tenant's registrations only.

        The cheap terms go first (``endpoint`` globs, then ``tag`` looked up in the tag store); then, for the
        candidates left and concurrently across devices, ``class`` terms read /3/0/1 (the model number, which is
        how a device is matched to a release of its class) and ``version`` terms read /3/0/3, so these need the
        devices reachable. A device whose model number cannot be read matches no ``class`` term (neither ``=``
        nor ``!=``); one whose version cannot be read has version None (it matches ``version!=X``)."""
        terms = _parse_filter(expression)
        candidates = sorted(r.endpoint for r in self.management.registrations.all(tenant_id=tenant_id))
        for key, op, value in terms:
            if key == "endpoint":
                candidates = [ep for ep in candidates if fnmatch.fnmatchcase(ep, value) == (op == "=")]
        for key, op, value in terms:
            if key == "tag":
                if self.tags is None:
                    raise InvalidRequestError("tag filters need the device tag store, which this server lacks")
                tagged = self.tags.endpoints_with(value, tenant_id=tenant_id)
                candidates = [ep for ep in candidates if (ep in tagged) == (op == "=")]
        class_terms = [(op, value) for key, op, value in terms if key == "class"]
        version_terms = [(op, value) for key, op, value in terms if key == "version"]

        async def read(ep: str, path: LwM2mPath) -> str | None:
            with contextlib.suppress(Lwm2mError):
                node = (await self.management.send(ep, ReadRequest(path), tenant_id=tenant_id)).content
                if isinstance(node, SingleResource):
                    return str(node.value)
            return None

        async def picked(ep: str) -> bool:  # class first: a device of another class is not asked its version
            if class_terms:
                model = await read(ep, MODEL_NUMBER)
                if model is None or not all((model == value) == (op == "=") for op, value in class_terms):
                    return False
            if version_terms:
                version = await read(ep, FIRMWARE_VERSION)
                return all((version == value) == (op == "=") for op, value in version_terms)
            return True

        if class_terms or version_terms:
            keep = await asyncio.gather(*(picked(ep) for ep in candidates))
            candidates = [ep for ep, k in zip(candidates, keep, strict=True) if k]
        return candidates

    async def start_campaign(self, cid: str, *, tenant_id: str, approve_with: str | None = None) -> dict[str, Any]:
        """Start a created campaign. ``approve_with`` names a deployment key: each release is countersigned with it
        and devices get the countersigned packages; a device class that requires approval needs it."""
        row = self._row(cid, tenant_id)
        if row.state is not CampaignState.CREATED:
            raise CampaignStateError(f"campaign {cid} is {row.state.value}; only a created campaign starts")
        release_ids = row.releases
        now = self.clock()
        self._check_grants([self._release(rid, tenant_id) for rid in release_ids], tenant_id, "start refused")
        if approve_with is not None:
            for rid in release_ids:
                self.releases.approve(rid, approve_with, tenant_id=tenant_id, now=now)
        for rid in release_ids:
            rel = self._release(rid, tenant_id)
            policy = self._class_policy(rel, tenant_id)
            if policy is not None and getattr(policy, "require_approval", False) and approve_with is None:
                raise CampaignStateError(f"release {rid} is for class {rel.class_name!r}, which requires a deployment "
                                         "key's approval: start the campaign with one")
        if not self.store.update(cid, tenant_id=tenant_id, expect={CampaignState.CREATED},
                                 state=CampaignState.RUNNING, started_at=now, approved_by=approve_with):
            raise CampaignStateError(f"campaign {cid} changed state meanwhile; only a created campaign starts")
        self._targets.pop(cid, None)
        self._emit(CAMPAIGN_STARTED, tenant_id, None, {"campaign": cid, "approved_by": approve_with})
        self._spawn_driver(cid, tenant_id)
        return self.status(cid, tenant_id=tenant_id)

    def pause(self, cid: str, *, tenant_id: str) -> dict[str, Any]:
        """No device starts while paused; updates under way finish."""
        self._transition(cid, tenant_id, {CampaignState.RUNNING}, CampaignState.PAUSED, CAMPAIGN_PAUSED)
        return self.status(cid, tenant_id=tenant_id)

    def resume(self, cid: str, *, tenant_id: str) -> dict[str, Any]:
        self._transition(cid, tenant_id, {CampaignState.PAUSED}, CampaignState.RUNNING, CAMPAIGN_RESUMED)
        self._spawn_driver(cid, tenant_id)
        return self.status(cid, tenant_id=tenant_id)

    async def cancel(self, cid: str, *, tenant_id: str) -> dict[str, Any]:
        """Cancel: pending devices are skipped; a device still downloading gets Cancel (/5/0/10) where it has it
        and is skipped; a device already installing is left to finish and its result is recorded."""
        self._transition(cid, tenant_id, {CampaignState.CREATED, CampaignState.RUNNING, CampaignState.PAUSED},
                         CampaignState.CANCELLED, CAMPAIGN_CANCELLED, reason="cancelled by the operator")
        for (c, ep), task in list(self._jobs.items()):
            if c != cid:
                continue
            job = self._job(cid, ep, tenant_id)
            if job is not None and job.state in (JobState.DELIVERING, JobState.DOWNLOADED):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                cancelled = await self._cancel_on_device(ep, tenant_id)
                self._set_job(cid, ep, tenant_id, JobState.SKIPPED, reason="campaign cancelled during delivery"
                              + (" (Cancel /5/0/10 executed)" if cancelled else ""), finished=True)
        now = self.clock()
        self.store.update_jobs(cid, tenant_id=tenant_id, in_state=JobState.PENDING, state=JobState.SKIPPED,
                               reason="campaign cancelled before this device started", finished_at=now, updated_at=now)
        self._views.pop((tenant_id, cid), None)
        self._spawn_driver(cid, tenant_id)  # it reports once the installs under way have ended
        return self.status(cid, tenant_id=tenant_id)

    # ------------------------------------------------------------------ views

    def list(self, *, tenant_id: str) -> list[dict[str, Any]]:
        """The tenant's campaigns, newest first (each as :meth:`status` shows it)."""
        return [self._status(row) for row in self.store.list(tenant_id=tenant_id)]

    def status(self, cid: str, *, tenant_id: str, jobs: bool = False) -> dict[str, Any]:
        return self._status(self._row(cid, tenant_id), jobs=jobs)

    def _status(self, row: CampaignRecord, *, jobs: bool = False) -> dict[str, Any]:
        view = self._view(row, self._job_views(row.id, row.tenant_id))
        counts = {state.value: 0 for state in JobState}
        for j in view.jobs:
            counts[j.state.value] += 1
        opened = row.opened_at
        out: dict[str, Any] = {
            "id": row.id, "name": row.name, "tenant": row.tenant_id, "state": row.state.value, "reason": row.reason,
            "releases": list(row.releases), "policy": row.policy.as_dict(), "method": row.method,
            "approved_by": row.approved_by, "targets_from": row.targets_from, "targets": len(view.jobs),
            "created_at": row.created_at, "started_at": row.started_at, "finished_at": row.finished_at,
            "counts": counts, "report_ready": row.report is not None,
            "waves": [{"wave": w.wave, "size": w.size, "opened_at": opened[w.wave] if w.wave < len(opened) else None,
                       "pending": w.pending, "active": w.active, "succeeded": w.succeeded, "failed": w.failed,
                       "rolled_back": w.rolled_back, "skipped": w.skipped} for w in wave_stats(view)],
        }
        if jobs:
            out["jobs"] = [_job_dict(j) for j in self._job_rows(row.id, row.tenant_id)]
        return out

    def report(self, cid: str, *, tenant_id: str) -> tuple[dict[str, Any], bytes]:
        """The signed report: the final one once the campaign has ended, else one made now (``state`` says)."""
        from lwm2m_server.fota import attestation

        row = self._row(cid, tenant_id)
        if row.report is not None:
            key = self._attestation_public(tenant_id)
            return attestation.verify_report(row.report, key), row.report
        return self._make_report(row)

    def attestation_public_pem(self, *, tenant_id: str) -> str:
        key = self.keys.get_or_create(self.attestation_key, "attestation", tenant_id=tenant_id, now=self.clock())
        return str(key.public_pem)

    # ------------------------------------------------------------------ the driver

    def _spawn_driver(self, cid: str, tenant_id: str) -> None:
        wake = self._wakes.setdefault(cid, asyncio.Event())
        wake.set()
        running = self._drivers.get(cid)
        if running is None or running.done():
            self._drivers[cid] = asyncio.get_running_loop().create_task(self._drive(cid, tenant_id),
                                                                        name=f"campaign-{cid}")

    def _wake_all(self) -> None:
        for wake in self._wakes.values():
            wake.set()

    def _on_registration(self, event: Event) -> None:
        if self._drivers:
            self._wake_all()

    async def _drive(self, cid: str, tenant_id: str) -> None:
        wake = self._wakes[cid]
        try:
            while not self._closing:
                wake.clear()
                row = self._row(cid, tenant_id)
                state = row.state
                if state is CampaignState.CREATED:
                    return
                self._reconcile_orphans(cid, tenant_id)
                decision = self._decide(cid, row)  # in every state: active jobs time out at their deadline
                if state in FINAL_CAMPAIGN_STATES:
                    if not self._busy(cid, tenant_id):
                        if row.report is None:
                            self._finalise(cid, tenant_id)
                        return
                elif decision is not None and decision.state in FINAL_CAMPAIGN_STATES:
                    continue
                if decision is not None and decision.next_wakeup is not None:
                    delay = max(0.0, min(self.tick, decision.next_wakeup - self.clock()))
                else:
                    delay = self.tick
                # wakes (job ends, registrations) that come within the gap are taken by one decision: each
                # reads every job of the campaign
                gap = min(DECISION_GAP, delay)
                await asyncio.sleep(gap)
                delay -= gap
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("campaign %s: the driver failed; it restarts with the next event", cid)
            self._drivers.pop(cid, None)

    def _decide(self, cid: str, row: CampaignRecord) -> Any:
        tenant = row.tenant_id
        if self.nodes is not None:  # other nodes write jobs too: decide on what the database says
            self._views.pop((tenant, cid), None)
        view = self._view(row, self._job_views(cid, tenant))
        alive = self._alive()
        self._adopt(row, view, alive)
        now = self.clock()
        orphans = {ep for c, ep in self._orphans if c == cid}
        decision = decide(view, lambda ep: ep not in orphans and self._reachable(ep, tenant), now)
        for ep in decision.overdue:
            self._time_out(cid, ep, tenant, view.policy, final=decision.state in FINAL_CAMPAIGN_STATES, alive=alive)
        for ep in decision.expire:
            self._set_job(cid, ep, tenant, JobState.FAILED, finished=True,
                          reason="the device did not come online within the device timeout")
            self._emit_device(cid, tenant, ep, JobState.FAILED)
        if decision.open_waves != view.opened_at or row.state is not decision.state:
            changes: CampaignChanges = {"opened_at": tuple(decision.open_waves)}
            if decision.state is not row.state:
                changes["state"], changes["reason"] = decision.state, decision.reason
                if decision.state in FINAL_CAMPAIGN_STATES:
                    changes["finished_at"] = now
            if not self.store.update(cid, tenant_id=tenant, expect={row.state}, **changes):
                return None  # paused or cancelled meanwhile: decide again
            for w in range(len(view.opened_at), len(decision.open_waves)):
                self._emit(CAMPAIGN_WAVE_OPENED, tenant, None, {"campaign": cid, "wave": w})
            if decision.state is CampaignState.HALTED:
                log.warning("campaign %s halted: %s", cid, decision.reason)
                self._emit(CAMPAIGN_HALTED, tenant, None, {"campaign": cid, "reason": decision.reason})
        if decision.start:
            self._launch(row, decision.start)
        return decision

    def _held_here(self, endpoints: Sequence[str], tenant_id: str) -> Sequence[str]:
        """Those of ``endpoints`` whose stored registration is this node's (several nodes: a registration held in
        memory here may be stale, its device registered elsewhere since)."""
        if not endpoints:
            return endpoints
        held = self.management.registrations.stored_holders(endpoints, tenant_id=tenant_id)
        return [ep for ep in endpoints if held.get(ep) == self.node]

    def _busy(self, cid: str, tenant_id: str) -> bool:
        """Whether an update of this campaign is still under way (here, or on another node) or waits to be
        reconciled."""
        return (any(c == cid and not t.done() for (c, _), t in self._jobs.items())
                or any(c == cid for c, _ in self._orphans)
                or any(v.state in ACTIVE for v in self._job_views(cid, tenant_id)))

    def _adopt(self, row: CampaignRecord, view: CampaignView, alive: frozenset[str]) -> None:
        """Take over the active jobs whose devices reach this node now (several nodes: registered here last; one node:
        jobs of no node, from before owners): each becomes an orphan here, reconciled with what its device reports,
        with a whole phase from now to be heard of."""
        cid, tenant = row.id, row.tenant_id
        candidates: Sequence[str] = [
            v.endpoint for v in view.jobs if v.state in ACTIVE and (cid, v.endpoint) not in self._jobs
            and (cid, v.endpoint) not in self._orphans and self._reachable(v.endpoint, tenant)]
        if not candidates:
            return
        if self.nodes is not None:  # the device registered here last: whoever ran its job lost it (dead or not)
            candidates = self._held_here(candidates, tenant)
            alive = frozenset()
        adopted = self.store.adopt_jobs(cid, candidates, tenant_id=tenant, owner=self.node, alive=alive)
        if not adopted:
            return
        now, size = self.clock(), self._package_size(row)
        later: list[tuple[str, str, float]] = []
        for ep in adopted:
            job = self._job(cid, ep, tenant)
            if job is None:
                continue
            log.info("campaign %s: %s: its %s job is taken over by node %s (the device is registered here now)",
                     cid, ep, job.state.value, self.node)
            self._orphans.add((cid, ep))
            self._publish_again(row, job)
            earliest = now + phase_timeout(row.policy, job.state, size)
            if job.deadline is None or job.deadline < earliest:
                later.append((cid, ep, earliest))
        self.store.postpone_deadlines(later, tenant_id=tenant)
        self._views.pop((tenant, cid), None)

    def _reachable(self, endpoint: str, tenant_id: str) -> bool:
        """Whether requests can be sent to the device now; a plain-CoAP device not heard from since the server
        started is asked to send an Update (:meth:`_nudge`)."""
        try:
            reg = self.management.reachable(endpoint, tenant_id=tenant_id)
        except Lwm2mError:
            return False
        if reg.parent_id is not None:  # an end device: reachable while its gateway is
            gateway = self.management.registrations.get(reg.parent_id)
            end_devices = self.management.end_devices
            if gateway is None or (end_devices is not None and end_devices.offline(reg)):
                return False
            reg = gateway
        if reg.remote is None:
            self._nudge(reg)
            return False
        return True

    def _nudge(self, reg: Any) -> None:
        """Execute the Registration Update Trigger (/1/x/8) of a device registered over plain CoAP, at the
        address its persisted registration holds, at most every NUDGE_INTERVAL seconds: its Update makes it
        reachable again (and wakes the campaigns). Nothing is sent to a DTLS device: there is no session."""
        if reg.secure or self._closing:
            return
        key, now = (reg.tenant_id, reg.endpoint), self.clock()
        if now - self._nudged.get(key, -math.inf) < NUDGE_INTERVAL:
            return
        self._nudged[key] = now
        task = asyncio.get_running_loop().create_task(self._trigger_update(reg), name=f"nudge-{reg.endpoint}")
        self._nudges.add(task)
        task.add_done_callback(self._nudges.discard)

    async def _trigger_update(self, reg: Any) -> None:
        instance = next((p.instance_id for p in reg.summary.instances
                         if p.object_id == SERVER_OBJECT and p.instance_id is not None), 0)
        uri = f"coap://{reg.address}{reg.root_path}{SERVER_OBJECT}/{instance}/{REGISTRATION_UPDATE_TRIGGER}"
        try:
            code = await self.management.sender.post_to_address(uri, reg.endpoint)
        except Exception as e:  # a device that does not answer stays unreachable: it is nudged again later
            log.info("%s: the Registration Update Trigger got no answer (%s)", reg.endpoint, type(e).__name__)
            return
        log.info("%s: Registration Update Trigger sent after a restart: %s", reg.endpoint, dotted_code(code))

    # ------------------------------------------------------------------ one device

    def _launch(self, row: CampaignRecord, endpoints: Sequence[str]) -> None:
        """Claim the jobs of ``endpoints`` (pending, within ``max_parallel`` across every node) and start them.
        The claim (state delivering, this node the owner, the phase's deadline) is committed before anything is
        sent: see the module docstring."""
        cid, tenant = row.id, row.tenant_id
        fresh: Sequence[str] = [ep for ep in endpoints if (cid, ep) not in self._jobs or self._jobs[(cid, ep)].done()]
        if self.nodes is not None:
            fresh = self._held_here(fresh, tenant)
        if not fresh:
            return
        now = self.clock()
        deadline = now + phase_timeout(row.policy, JobState.DELIVERING, self._package_size(row))
        claimed = self.store.claim_jobs(cid, fresh, tenant_id=tenant, owner=self.node,
                                        limit=row.policy.max_parallel, now=now, deadline=deadline)
        views = self._views.get((tenant, cid))
        if views is not None and len(claimed) < len(fresh):
            self._views.pop((tenant, cid), None)  # not what we thought (another node): read the jobs again
        elif views is not None:
            for ep in claimed:
                views[ep] = replace(views[ep], state=JobState.DELIVERING, deadline=deadline)
        loop = asyncio.get_running_loop()
        for ep in claimed:
            self._jobs[(cid, ep)] = loop.create_task(self._run_job(cid, ep, tenant), name=f"campaign-{cid}-{ep}")

    async def _run_job(self, cid: str, ep: str, tenant_id: str, *, going_on: bool = False) -> None:
        try:
            await self._update_device(cid, ep, tenant_id, going_on=going_on)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never leave a job in an active state behind a dead task
            log.exception("campaign %s: the update of %s failed", cid, ep)
            self._after_failure(cid, ep, tenant_id, None, f"internal error: {type(e).__name__}", "internal")
        finally:
            self._withdraw(cid, ep, tenant_id)
            self._task_ended(cid, ep)

    async def _update_device(self, cid: str, ep: str, tenant_id: str, *, going_on: bool = False) -> None:
        """One try of a device's update; ``going_on``: the try under way when the server stopped (an orphan whose
        device was found downloading), carried on under its package name."""
        row = self._row(cid, tenant_id)
        job = self._job(cid, ep, tenant_id)
        assert job is not None
        try:
            reg = self.management.reachable(ep, tenant_id=tenant_id)
        except Lwm2mError as e:  # gone since the decision: not a try, wait for it
            self._set_job(cid, ep, tenant_id, JobState.PENDING, not_before=self.clock() + self.tick,
                          reason=f"waiting for the device: {e}")
            return
        if not reg.supports_object(5):
            self._finish_job(cid, ep, tenant_id, JobState.SKIPPED,
                             reason="the device has no Firmware Update object (/5)")
            return
        target = await self._target_for(row, ep, tenant_id)
        if target is None:
            self._finish_job(cid, ep, tenant_id, JobState.SKIPPED,
                             reason="no release of this campaign is for the device's class (/3/0/1 model number)")
            return
        version = await self._version(ep, tenant_id)
        if version is not None and version == target.version and job.attempts > 0:
            # an earlier try of ours installed it and its end was not seen (a timeout, a lost answer): credit it
            self._finish_job(cid, ep, tenant_id, JobState.SUCCEEDED, version_after=version,
                             reason="the device runs the target version (installed by an earlier try)")
            return
        if version is not None and version == target.version:
            self._finish_job(cid, ep, tenant_id, JobState.SKIPPED, version_after=version,
                             reason=f"already at version {version}",
                             **({"version_before": version} if job.version_before is None else {}))
            return
        if going_on and job.package_name is not None:
            attempt, name = job.attempts, job.package_name
            package = target.package_of(job.package_sha256) or target.package
        else:
            package, package_sha256, delivery = await self._choose_package(ep, tenant_id, target, version, job, reg)
            attempt, name = job.attempts + 1, self.firmware.files.new_name()
            first: dict[str, Any] = {}  # what only the first try records
            if job.version_before is None:
                first["version_before"] = version
            if job.started_at is None:
                first["started_at"] = self.clock()
            gateway = self.management.registrations.get(reg.parent_id) if reg.parent_id is not None else None
            self._set_job(cid, ep, tenant_id, JobState.DELIVERING, attempts=attempt, release_id=target.release_id,
                          package_sha256=package_sha256, sequence_number=target.sequence_number,
                          package_name=name, via=None if gateway is None else gateway.endpoint,
                          delivery=delivery, **first)
        method = Method(row.method) if row.method else None
        try:
            # the phase deadlines decide when a job is overdue; the whole update's own limit is never shorter
            policy = row.policy
            whole = sum(phase_timeout(policy, state, len(package))
                        for state in (JobState.DELIVERING, JobState.DOWNLOADED, JobState.UPDATING))
            update = self.firmware.start(ep, package, method=method, timeout=max(self.job_timeout, whole),
                                         tenant_id=tenant_id, previous_version=version, package_name=name)
        except UpdateInProgressError as e:
            self._after_failure(cid, ep, tenant_id, None, str(e), "UpdateInProgressError")
            return
        except Lwm2mError as e:
            if not await self._paused_by_gateway(cid, ep, tenant_id, attempt):
                self._after_failure(cid, ep, tenant_id, None, f"{type(e).__name__}: {e}", "unreachable")
            return
        self._emit(CAMPAIGN_DEVICE + "progress", tenant_id, ep, {"campaign": cid, "state": "delivering",
                                                                 "attempt": attempt})
        await self._follow(cid, ep, tenant_id, update, job.state if going_on else JobState.DELIVERING)
        last = update.last
        components = await self._components_json(ep, tenant_id)
        seen = {} if components is None else {"components": components}
        if update.succeeded:
            after = last.version
            for _ in range(3):  # the read after the install may have been lost: the report needs the version
                if after is not None:
                    break
                after = await self._version(ep, tenant_id)
            for _ in range(2):  # a system release is credited on what the device holds: read it again if lost
                if components is not None or not target.components:
                    break
                components = await self._components_json(ep, tenant_id)
            wrong = unverified_components(target.components,
                                          None if components is None else json.loads(components))
            if wrong:  # the device says it succeeded but does not hold what the release holds
                self._finish_job(cid, ep, tenant_id, JobState.FAILED, version_after=after, update_result=last.result,
                                 method=update.method, reason=f"the device reports {wrong}", **seen)
                return
            self._finish_job(cid, ep, tenant_id, JobState.SUCCEEDED, version_after=after,
                             update_result=last.result, method=update.method, reason=None, **seen)
            return
        if (last.result == UpdateResult.UPDATE_FAILED and last.version is not None
                and last.version == (job.version_before or version)):
            failed = _failed_components(components)
            what = f"component {', '.join(failed)} failed" if failed else "the new image failed"
            self._finish_job(cid, ep, tenant_id, JobState.ROLLED_BACK, version_after=last.version,
                             update_result=last.result, method=update.method,
                             reason=f"{what}; the device rolled back to {last.version}", **seen)
            return
        if update.error in _TRANSIENT_ERRORS and await self._paused_by_gateway(cid, ep, tenant_id, attempt):
            return
        self._after_failure(cid, ep, tenant_id, last.result, last.message, update.error, method=update.method,
                            version_after=last.version, **seen)

    async def _choose_package(self, ep: str, tenant_id: str, target: Target, version: str | None, job: JobRecord,
                              reg: Any) -> tuple[bytes, str, str]:
        """(package, its SHA-256 hex, ``full`` or ``delta``) for this try (:func:`choose_delivery`): a device that
        reports its components' digests is asked for them first, so a device whose installed image is not a
        delta's base gets the full package at once."""
        full = (target.package, target.package_sha256, "full")
        if version is None or version not in target.deltas:
            return full
        delta_failed = job.delivery == "delta" and job.attempts > 0
        installed: dict[str, str] | None = None
        if not delta_failed and reg.supports_object(FIRMWARE_COMPONENT_ID):
            reported: builtins.list[dict[str, Any]] = await self._components(ep, tenant_id) or []
            installed = {c["name"]: c["digest"] for c in reported if isinstance(c.get("digest"), str)}
        bases = {base: dict(d.bases) for base, d in target.deltas.items()}
        chosen = choose_delivery(version, bases, installed, delta_failed=delta_failed)
        if chosen is None:
            return full
        delta = target.deltas[chosen]
        return delta.package, delta.package_sha256, "delta"

    async def _components(self, ep: str, tenant_id: str) -> builtins.list[dict[str, Any]] | None:
        """The device's components (object 32700), or None when it has none or the read fails."""
        try:
            return await read_components(self.management, ep, tenant_id=tenant_id)
        except Lwm2mError:
            return None

    async def _components_json(self, ep: str, tenant_id: str) -> str | None:
        """:meth:`_components` as the JSON a job keeps."""
        found = await self._components(ep, tenant_id)
        return None if found is None else json.dumps(found, separators=(",", ":"))

    async def _paused_by_gateway(self, cid: str, ep: str, tenant_id: str, attempt: int) -> bool:
        """A try of a device behind a gateway failed for want of an answer (or outlived its deadline): when that
        gateway is gone or does not answer either, the job is paused (pending, the try not counted, reason
        ``paused: ...``) until the gateway is back, and True; False for a direct device or a live gateway."""
        end_devices = self.management.end_devices
        job = self._job(cid, ep, tenant_id)
        if end_devices is None or job is None or job.via is None:
            return False
        registrations = self.management.registrations
        gateway = registrations.by_endpoint(job.via, tenant_id=tenant_id)
        device = registrations.by_endpoint(ep, tenant_id=tenant_id)
        if gateway is None:
            down: str | None = job.via  # gone (expired, de-registered): its end devices went with it
        elif device is not None and device.parent_id == gateway.id:
            down = await end_devices.gateway_down(device)
        else:
            down = None  # the device left that gateway: its own failure
        if down is None:
            return False
        reason = f"paused: its gateway {down} is offline; the update goes on when the gateway is back"
        log.info("campaign %s: %s: %s", cid, ep, reason)
        self._set_job(cid, ep, tenant_id, JobState.PENDING, attempts=max(0, attempt - 1),
                      not_before=self.clock() + self.tick, reason=reason)
        self._emit(CAMPAIGN_DEVICE + "progress", tenant_id, ep, {"campaign": cid, "state": "paused",
                                                                 "reason": reason})
        return True

    async def _follow(self, cid: str, ep: str, tenant_id: str, update: UpdateJob, state: JobState) -> None:
        """Mirror the update's phases into the job row (in ``state`` now) until it ends."""
        while not update.done.is_set():
            changed = update.changed()
            phase = update.last.phase if update.history else "preparing"
            new = _PHASE_STATES.get(phase)
            if new is not None and new is not state and not update.done.is_set():
                state = new
                self._set_job(cid, ep, tenant_id, state, method=update.method)
                self._emit(CAMPAIGN_DEVICE + "progress", tenant_id, ep, {"campaign": cid, "state": state.value})
            waiter = asyncio.ensure_future(changed.wait())
            done = asyncio.ensure_future(update.done.wait())
            try:
                await asyncio.wait([waiter, done], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                done.cancel()

    def _task_ended(self, cid: str, ep: str) -> None:
        """The device task of (cid, ep) ends: forget it (unless another one replaced it) and wake the driver."""
        if self._jobs.get((cid, ep)) is asyncio.current_task():
            del self._jobs[(cid, ep)]
        wake = self._wakes.get(cid)
        if wake is not None:
            wake.set()

    def _time_out(self, cid: str, ep: str, tenant_id: str, policy: Policy, *, final: bool,
                  alive: frozenset[str]) -> None:
        """An active job's deadline passed: abandon the update (or the wait for an orphan) and end the try as a
        timeout: retried while tries remain, failed when none is left or the campaign has ended. Another live
        node's job is left to it; a dead node's is adopted first."""
        job = self._job(cid, ep, tenant_id)
        if job is None or job.state not in ACTIVE:
            return
        if job.owner != self.node and (job.owner in alive or not self.store.adopt_jobs(
                cid, [ep], tenant_id=tenant_id, owner=self.node, alive=alive)):
            return
        task = self._jobs.pop((cid, ep), None)
        if task is not None:  # only an update this campaign runs (an orphan has none: another's is left alone)
            task.cancel()
            self.firmware.abort(ep, tenant_id=tenant_id)
        self._drop_orphan(cid, ep, tenant_id)
        state = job.state
        allowed = phase_timeout(policy, state, self._package_size(self._row(cid, tenant_id)))
        message = f"the device did not get past {state.value} within its deadline ({allowed:g} s)"
        log.info("campaign %s: %s: %s", cid, ep, message)
        if final:
            self._finish_job(cid, ep, tenant_id, JobState.FAILED, reason=message)
        elif job.via is not None and self.management.end_devices is not None:  # behind a gateway: is it there?
            if (cid, ep) in self._probing:
                return
            self._probing.add((cid, ep))
            task = asyncio.get_running_loop().create_task(self._timed_out_behind_gateway(cid, ep, tenant_id,
                                                                                         job.attempts, message))
            self._nudges.add(task)
            task.add_done_callback(self._nudges.discard)
        else:
            self._after_failure(cid, ep, tenant_id, None, message, "timeout")

    async def _timed_out_behind_gateway(self, cid: str, ep: str, tenant_id: str, attempt: int, message: str) -> None:
        try:
            if not await self._paused_by_gateway(cid, ep, tenant_id, attempt):
                self._after_failure(cid, ep, tenant_id, None, message, "timeout")
        finally:
            self._probing.discard((cid, ep))

    def _after_failure(self, cid: str, ep: str, tenant_id: str, result: int | None, message: str,
                       error: str | None, **fields: Any) -> None:
        """A failed try: pending again after a back-off when it is transient and tries remain, else failed."""
        kind = classify_failure(result, timed_out=error == "timeout",
                                connection_lost=error in _TRANSIENT_ERRORS and error != "timeout")
        job = self._job(cid, ep, tenant_id)
        assert job is not None
        policy = self._row(cid, tenant_id).policy
        attempts = job.attempts
        label = f" ({result_label(result)})" if result not in (None, 0) else ""
        if job.delivery == "delta" and kind is FailureKind.PERMANENT:
            # the device refused or could not use the delta (its base differs, the patch failed): the full
            # package next, at once; choose_delivery never picks a delta again for this job
            self._set_job(cid, ep, tenant_id, JobState.PENDING, not_before=self.clock(), update_result=result,
                          attempts=attempts, reason=f"the delta failed: {message}{label}; sending the full package",
                          **fields)
            self._emit(CAMPAIGN_DEVICE + "progress", tenant_id, ep, {"campaign": cid, "state": "pending",
                                                                     "reason": "delta failed: full package next"})
            return
        when = retry_at(max(1, attempts), policy, self.clock(), ep) if kind is FailureKind.TRANSIENT else None
        if when is not None:
            self._set_job(cid, ep, tenant_id, JobState.PENDING, not_before=when, update_result=result,
                          attempts=attempts, reason=f"try {attempts} failed: {message}{label}; retrying", **fields)
            self._emit(CAMPAIGN_DEVICE + "progress", tenant_id, ep, {"campaign": cid, "state": "pending",
                                                                     "retry_at": when, "reason": message})
            return
        why = message if kind is FailureKind.PERMANENT else f"{message} (after {attempts} tries)"
        self._finish_job(cid, ep, tenant_id, JobState.FAILED, update_result=result, reason=f"{why}{label}", **fields)

    def _finish_job(self, cid: str, ep: str, tenant_id: str, state: JobState, **fields: Any) -> None:
        self._set_job(cid, ep, tenant_id, state, finished=True, **fields)
        self._emit_device(cid, tenant_id, ep, state)

    def _emit_device(self, cid: str, tenant_id: str, ep: str, state: JobState) -> None:
        job = self._job(cid, ep, tenant_id)
        kind = {JobState.SUCCEEDED: "succeeded", JobState.SKIPPED: "skipped"}.get(state, "failed")
        self._emit(CAMPAIGN_DEVICE + kind, tenant_id, ep, {"campaign": cid, **(_job_dict(job) if job else {})})

    async def _cancel_on_device(self, ep: str, tenant_id: str) -> bool:
        """Execute Cancel (/5/0/10, Object 5 version 1.1) where the device has it; False when it has not."""
        try:
            await self.management.send(ep, ExecuteRequest(CANCEL), tenant_id=tenant_id, timeout=5.0)
        except Lwm2mError:
            return False
        return True

    # ------------------------------------------------------------------ orphans (after a restart)

    def _reconcile_orphans(self, cid: str, tenant_id: str) -> None:
        for c, ep in list(self._orphans):
            if c != cid or (c, ep) in self._jobs or not self._reachable(ep, tenant_id):
                continue
            self._jobs[(c, ep)] = asyncio.get_running_loop().create_task(
                self._reconcile(cid, ep, tenant_id), name=f"campaign-{cid}-{ep}-reconcile")

    async def _reconcile(self, cid: str, ep: str, tenant_id: str) -> None:
        """Find out what became of an update under way when the server stopped (see the module docstring)."""
        try:
            job = self._job(cid, ep, tenant_id)
            row = self._row(cid, tenant_id)
            if job is None or job.state not in ACTIVE:
                self._drop_orphan(cid, ep, tenant_id)
                return
            try:
                fw = await self.management.send(ep, ReadRequest(FIRMWARE), tenant_id=tenant_id, timeout=10.0)
                version = await self._version(ep, tenant_id)
            except Lwm2mError as e:
                log.info("campaign %s: %s not readable yet (%s); asking again later", cid, ep, e)
                return
            values = _instance_values(fw.content)
            state, result = values.get(3), values.get(5)
            target = await self._target_for(row, ep, tenant_id)
            if target is not None and version is not None and version == target.version:
                self._finish_job(cid, ep, tenant_id, JobState.SUCCEEDED, version_after=version, update_result=result,
                                 reason="credited after a server restart: the device runs the target version")
            elif state == State.UPDATING:
                return  # still installing: its next registration brings us back
            elif (state in (State.DOWNLOADING, State.DOWNLOADED) and job.package_name is not None
                  and job.state in (JobState.DELIVERING, JobState.DOWNLOADED)):
                self._orphans.discard((cid, ep))  # the try goes on: its update takes the published name over
                await self._run_job(cid, ep, tenant_id, going_on=True)
                return
            elif result == UpdateResult.UPDATE_FAILED and version is not None and version == job.version_before:
                self._finish_job(cid, ep, tenant_id, JobState.ROLLED_BACK, version_after=version,
                                 update_result=result, reason="the new image failed (found after a server restart); "
                                                              f"the device rolled back to {version}")
            elif (isinstance(result, int) and result not in (UpdateResult.INITIAL, UpdateResult.SUCCESS)
                  and classify_failure(result) is FailureKind.PERMANENT):
                self._finish_job(cid, ep, tenant_id, JobState.FAILED, update_result=result, version_after=version,
                                 reason=f"{result_label(result)} (found after a server restart)")
            else:  # nothing was installed: deliver again (not counted as a new try)
                self._set_job(cid, ep, tenant_id, JobState.PENDING, attempts=max(0, job.attempts - 1),
                              reason="delivery interrupted by a server restart; starting over")
            self._drop_orphan(cid, ep, tenant_id)
        finally:
            self._task_ended(cid, ep)

    # ------------------------------------------------------------------ report

    def _finalise(self, cid: str, tenant_id: str) -> None:
        row = self._row(cid, tenant_id)
        if row.state is not CampaignState.COMPLETED:  # what never started says why
            now = self.clock()
            self.store.update_jobs(cid, tenant_id=tenant_id, in_state=JobState.PENDING, state=JobState.SKIPPED,
                                   reason=f"not updated: the campaign {row.state.value}"
                                   + (f" ({row.reason})" if row.reason else ""), finished_at=now, updated_at=now)
            self._views.pop((tenant_id, cid), None)
        report, cose = self._make_report(row)
        changes: CampaignChanges = {"report": cose}
        if row.finished_at is None:
            changes["finished_at"] = self.clock()
        if not self.store.update(cid, tenant_id=tenant_id, unreported=True, **changes):
            return  # another node wrote the report first
        summary = report["summary"]
        log.info("campaign %s %s: %s", cid, row.state.value, summary)
        self._emit(CAMPAIGN_FINISHED, tenant_id, None, {"campaign": cid, "state": row.state.value,
                                                        "reason": row.reason, "summary": summary})

    def _check_grants(self, releases: Sequence[Any], tenant_id: str, what: str) -> None:
        """A release signed by another tenant (an OEM) is deployed only under that OEM's grant for its class, checked
        at creation and again at start (a revoked grant stops a rollout that has not begun)."""
        for rel in releases:
            origin = getattr(rel, "origin_tenant", None)
            if origin is None or origin == tenant_id:
                continue
            if self.tenancy is None:
                raise ForbiddenError(f"{what}: release {rel.id} was signed by tenant {origin!r}; this server checks "
                                     "no grants")
            check_deploy_grant(self.tenancy, oem_tenant=origin, operator_tenant=tenant_id, vendor_id=rel.vendor_id,
                               class_id=rel.class_id, what=f"{what} for release {rel.id}")

    def _make_report(self, row: CampaignRecord) -> tuple[dict[str, Any], bytes]:
        from lwm2m_server.fota import attestation

        tenant = row.tenant_id
        key = self.keys.get_or_create(self.attestation_key, "attestation", tenant_id=tenant, now=self.clock())
        private = self.keys.private_key(self.attestation_key, tenant_id=tenant)
        releases = []
        for rid in row.releases:
            rel = self._release(rid, tenant)
            packages = [img.package_sha256 for img in rel.images]
            if row.approved_by:
                packages = [_approved_sha(img, row.approved_by) or img.package_sha256 for img in rel.images]
            releases.append({"id": rel.id, "version": rel.version, "sequence_number": rel.sequence_number,
                             "vendor_id": str(rel.vendor_id), "class_id": str(rel.class_id), "packages": packages})
        campaign = {"id": row.id, "name": row.name, "tenant": tenant, "state": row.state.value, "reason": row.reason,
                    "created_at": row.created_at, "started_at": row.started_at, "finished_at": row.finished_at,
                    "policy": row.policy.as_dict(), "releases": releases}
        targets = []
        for j in self._job_rows(row.id, tenant):
            targets.append({"endpoint": j.endpoint, "wave": j.wave, "state": j.state.value,
                            "version_before": j.version_before, "version_after": j.version_after,
                            "release": j.release_id, "manifest_digest": j.package_sha256,
                            "sequence_number": j.sequence_number, "update_result": j.update_result,
                            "attempts": j.attempts, "started_at": j.started_at, "finished_at": j.finished_at,
                            "reason": j.reason, "path": _path(j), "delivery": j.delivery,
                            "components": None if j.components is None else json.loads(j.components)})
        brand = self.tenancy.brand(tenant) if self.tenancy is not None else None
        issuer = brand.issuer if brand is not None else PRODUCT_NAME
        report = attestation.build_report(campaign, targets, generated_at=self.clock(), node=self.node, kid=key.kid,
                                          issuer=issuer)
        return report, attestation.sign_report(report, private)

    def _attestation_public(self, tenant_id: str) -> Any:
        from firmware_object.suit.keys import load_public_key

        key = self.keys.get_or_create(self.attestation_key, "attestation", tenant_id=tenant_id, now=self.clock())
        return load_public_key(key.public_pem.encode() if isinstance(key.public_pem, str) else key.public_pem)

    # ------------------------------------------------------------------ storage

    def _row(self, cid: str, tenant_id: str) -> CampaignRecord:
        row = self.store.get(cid, tenant_id=tenant_id)
        if row is None:
            raise UnknownCampaignError(f"no campaign {cid!r}")
        return row

    def _job(self, cid: str, ep: str, tenant_id: str) -> JobRecord | None:
        return self.store.job(cid, ep, tenant_id=tenant_id)

    def _job_rows(self, cid: str, tenant_id: str) -> Sequence[JobRecord]:
        return self.store.jobs(cid, tenant_id=tenant_id)

    def _set_job(self, cid: str, ep: str, tenant_id: str, state: JobState, *, finished: bool = False,
                 **fields: Any) -> None:
        """Record a job's new state; entering an active phase (or starting a new try) sets its deadline, leaving
        the active phases clears it."""
        now = self.clock()
        job = self._job(cid, ep, tenant_id)
        if job is None:
            return
        if job.state in TERMINAL:  # a terminal state is never left
            log.info("campaign %s: %s is %s already; %s not recorded", cid, ep, job.state.value, state.value)
            return
        changes: dict[str, Any] = {"state": state, "updated_at": now}
        if state not in ACTIVE:
            changes["deadline"] = None
        elif job.state is not state or "attempts" in fields or job.deadline is None:
            row = self._row(cid, tenant_id)
            changes["deadline"] = now + phase_timeout(row.policy, state, self._package_size(row))
        if finished:
            changes["finished_at"] = now
            changes["not_before"] = None
        changes.update(fields)
        # an active job is written by its owner only (a node that lost it to another must not)
        holder = self.node if job.state in ACTIVE else None
        if self.store.update_job(cid, ep, tenant_id=tenant_id, expect=_NOT_TERMINAL, holder=holder, **changes):
            views = self._views.get((tenant_id, cid))
            if views is not None and ep in views:
                views[ep] = replace(views[ep], **{k: v for k, v in changes.items() if k in _VIEW_FIELDS})
            return
        self._views.pop((tenant_id, cid), None)  # not what we thought: read the jobs again
        now_owner = None if holder is None else getattr(self._job(cid, ep, tenant_id), "owner", None)
        if holder is not None and now_owner != self.node:  # another node took the job over: let go of it here
            log.info("campaign %s: %s: its job is now node %s's; the update here is abandoned", cid, ep, now_owner)
            self.firmware.abort(ep, tenant_id=tenant_id)
            task = self._jobs.get((cid, ep))
            if task is not None and not task.done():
                task.cancel()
            self._orphans.discard((cid, ep))

    def _job_views(self, cid: str, tenant_id: str) -> tuple[JobView, ...]:
        """What the pure core needs of every job (the driver reads them at every decision, a status at every
        poll): from the store once, then kept here, changed by :meth:`_set_job` as it writes (reading 10,000 rows
        per decision was a quarter of the server's CPU in a 10,000-device campaign). Writes that do not go through
        ``_set_job`` (bulk updates, deadlines postponed at start) drop the campaign's views (read again)."""
        key = (tenant_id, cid)
        views = self._views.get(key)
        if views is None:
            views = self._views[key] = {v.endpoint: v for v in self.store.job_views(cid, tenant_id=tenant_id)}
        return tuple(views.values())

    def _view(self, row: CampaignRecord, jobs: tuple[JobView, ...]) -> CampaignView:
        return CampaignView(state=row.state, policy=row.policy, waves=row.waves, opened_at=row.opened_at, jobs=jobs)

    def _transition(self, cid: str, tenant_id: str, allowed: set[CampaignState], to: CampaignState, kind: str,
                    reason: str | None = None) -> None:
        row = self._row(cid, tenant_id)
        if row.state not in allowed:
            raise CampaignStateError(f"campaign {cid} is {row.state.value}: cannot go {to.value}")
        changes: CampaignChanges = {"state": to}
        if reason is not None:
            changes["reason"] = reason
        if to in FINAL_CAMPAIGN_STATES:
            changes["finished_at"] = self.clock()
        if not self.store.update(cid, tenant_id=tenant_id, expect=allowed, **changes):
            raise CampaignStateError(f"campaign {cid} changed state meanwhile: cannot go {to.value}")
        self._emit(kind, tenant_id, None, {"campaign": cid})
        wake = self._wakes.get(cid)
        if wake is not None:
            wake.set()

    # ------------------------------------------------------------------ releases

    def _release(self, rid: str, tenant_id: str) -> Any:
        return self.releases.get(rid, tenant_id=tenant_id)

    def _class_policy(self, rel: Any, tenant_id: str) -> Any:
        getter = getattr(self.releases, "class_policy", None)
        if getter is None:
            return None
        with contextlib.suppress(Lwm2mError, LookupError):
            return getter(rel.class_name, rel.vendor, tenant_id=tenant_id)
        return None

    async def _target_for(self, row: CampaignRecord, ep: str, tenant_id: str) -> Target | None:
        """The release a device gets: the only one, or (several) the one whose class the device's model number
        (/3/0/1) names; None when no release fits."""
        targets = self._targets_of(row)
        if len(targets) == 1:
            return next(iter(targets.values()))
        model: str | None = None
        with contextlib.suppress(Lwm2mError):
            node = (await self.management.send(ep, ReadRequest(MODEL_NUMBER), tenant_id=tenant_id)).content
            if isinstance(node, SingleResource):
                model = str(node.value)
        return targets.get(model) if model is not None else None

    def _package_size(self, row: CampaignRecord) -> int:
        """The largest package the campaign delivers (what the delivering deadline is sized for)."""
        return max((len(t.package) for t in self._targets_of(row).values()), default=0)

    def _targets_of(self, row: CampaignRecord) -> dict[str, Target]:
        """The campaign's targets by class name, loaded once."""
        targets = self._targets.get(row.id)
        if targets is None:
            targets = {}
            for rid in row.releases:
                rel = self._release(rid, row.tenant_id)
                image = rel.images[0]
                sha = _approved_sha(image, row.approved_by) if row.approved_by else None
                package = (self.releases.package(rid, tenant_id=row.tenant_id, approved_by=row.approved_by)
                           if sha else self.releases.package(rid, tenant_id=row.tenant_id))
                system = rel.package_format == "system"
                targets[rel.class_name] = Target(rid, rel.version, rel.sequence_number,
                                                 sha or image.package_sha256, package,
                                                 self._deltas_of(rel, row.approved_by),
                                                 {i.name: i.image_sha256 for i in rel.images} if system else {})
            self._targets[row.id] = targets
        return targets

    def _deltas_of(self, rel: Any, approved_by: str | None) -> dict[str, DeltaTarget]:
        """The delta packages of a system release by base version (countersigned by ``approved_by`` if given)."""
        if getattr(rel, "package_format", None) != "system":
            return {}
        deltas: dict[str, DeltaTarget] = {}
        for d in self.releases.deltas(rel.id, tenant_id=rel.tenant_id):
            package = self.releases.delta_package(rel.id, d.base_release_id, tenant_id=rel.tenant_id,
                                                  approved_by=approved_by)
            deltas[d.base_version] = DeltaTarget(d.base_version, hashlib.sha256(package).hexdigest(), package,
                                                 dict(d.base_digests))
        return deltas

    async def _version(self, ep: str, tenant_id: str) -> str | None:
        with contextlib.suppress(Lwm2mError):
            node = (await self.management.send(ep, ReadRequest(FIRMWARE_VERSION), tenant_id=tenant_id)).content
            if isinstance(node, SingleResource):
                return device_text(node.value)
        return None

    def _emit(self, kind: str, tenant_id: str, endpoint: str | None, data: dict[str, Any]) -> None:
        self.events.emit(kind, self.clock(), tenant_id=tenant_id, endpoint=endpoint, data=data)


def _approved_sha(image: Any, key_name: str) -> str | None:
    approved = getattr(image, "approved_package_sha256", None) or {}
    return approved.get(key_name) if isinstance(approved, dict) else None


def _instance_values(node: object) -> dict[int, object]:
    if not isinstance(node, Instance):
        return {}
    return {rid: res.value for rid, res in node.resources.items() if isinstance(res, SingleResource)}


def _job_dict(j: JobRecord) -> dict[str, Any]:
    return {"endpoint": j.endpoint, "wave": j.wave, "state": j.state.value, "attempts": j.attempts,
            "not_before": j.not_before, "deadline": j.deadline, "release": j.release_id,
            "package_sha256": j.package_sha256,
            "sequence_number": j.sequence_number, "method": j.method, "version_before": j.version_before,
            "version_after": j.version_after, "update_result": j.update_result, "started_at": j.started_at,
            "finished_at": j.finished_at, "reason": j.reason, "path": _path(j), "delivery": j.delivery,
            "components": None if j.components is None else json.loads(j.components)}


def _failed_components(components: str | None) -> list[str]:
    """The names of the components a device reports in state ``failed``."""
    if components is None:
        return []
    return [c["name"] for c in json.loads(components) if c.get("state") == "failed"]


def _path(j: JobRecord) -> str | None:
    """How the job's device was reached: ``direct``, ``via <gateway>``, or None before any try."""
    if j.attempts == 0 and j.via is None:
        return None
    return "direct" if j.via is None else f"via {j.via}"


def _parse_filter(expression: str) -> list[tuple[str, str, str]]:
    """``key=value`` / ``key!=value`` terms joined by ``and`` (or commas); keys: endpoint (a glob), tag (a device
    tag, validated here), class (the model number /3/0/1), version (/3/0/3)."""
    from lwm2m_server.registry.tags import validate_tag

    terms: list[tuple[str, str, str]] = []
    for part in expression.replace(",", " and ").split(" and "):
        part = part.strip()
        if not part:
            continue
        op = "!=" if "!=" in part else "="
        key, sep, value = part.partition(op)
        key, value = key.strip(), value.strip()
        if not sep or key not in ("endpoint", "tag", "class", "version") or not value:
            raise InvalidRequestError(f"cannot read the filter term {part!r}: use endpoint=GLOB, tag=T, class=C or "
                                      "version=X (each also with !=), joined by 'and'")
        if key == "tag":
            try:
                validate_tag(value)
            except InvalidRequestError as e:
                raise InvalidRequestError(f"in the filter term {part!r}: {e}") from None
        terms.append((key, op, value))
    if not terms:
        raise InvalidRequestError("the filter is empty")
    return terms


def open_campaigns(server: Any, vault: Any) -> CampaignService:
    """The campaign service of a started :class:`~lwm2m_server.server.Lwm2mServer`: a SQL campaign store over its
    database, its firmware service and events, the releases and blobs of its data directory, signing keys opened
    with ``vault``."""
    from lwm2m_server.fota.releases import Releases, SigningKeys

    keys = SigningKeys.over(server.database, vault)
    releases = Releases.over(server.database, server.settings.data_dir, keys)
    return CampaignService(SqlCampaignStore(server.database), server.firmware, server.management, server.events,
                           releases, keys, node=server.settings.node_id, tick=server.settings.campaign_tick,
                           job_timeout=server.settings.campaign_job_timeout, tags=getattr(server, "tags", None),
                           tenancy=getattr(server, "tenancy", None), nodes=getattr(server, "nodes", None),
                           node_timeout=server.settings.node_timeout)

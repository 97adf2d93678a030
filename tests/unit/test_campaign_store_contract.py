"""One contract for every campaign store: the memory store and the SQL store (a real SQLite file, PostgreSQL).

A new backend joins by adding a case to the ``backend`` fixture; it must pass every test here unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_object.campaign import ACTIVE, CampaignState, JobState, JobView, Policy
from lwm2m_server.core.errors import StorageError
from lwm2m_server.storage.campaign_store import (
    CampaignRecord,
    CampaignStore,
    JobRecord,
    MemoryCampaignStore,
    SqlCampaignStore,
)
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.stores import StorageConflictError
from tests.store_backends import BACKENDS, SQL_BACKENDS, database_opener, shared_database

T0 = 1_700_000_000.125


class Backend:
    """A store, and ``second()``: the same data seen through another connection (SQL: another engine on the same
    database, so only what was committed shows; memory: the store itself)."""

    def __init__(self, kind: str, open_database: Callable[[], Database] | None) -> None:
        self.kind = kind
        self._open_database = open_database
        self.dbs: list[Database] = []
        self.store: CampaignStore = self._open()

    def _open(self) -> CampaignStore:
        if self._open_database is None:
            return MemoryCampaignStore()
        db = self._open_database()
        self.dbs.append(db)
        return SqlCampaignStore(db)

    def second(self) -> CampaignStore:
        return self.store if self.kind == "memory" else self._open()

    def close(self) -> None:
        for db in self.dbs:
            db.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    b = Backend(kind, None if kind == "memory" else database_opener(request, kind, tmp_path / "data"))
    yield b
    b.close()


def make_campaign(cid: str = "cmp-1", tenant: str = "acme", **changes: object) -> CampaignRecord:
    record = CampaignRecord(id=cid, tenant_id=tenant, state=CampaignState.CREATED, releases=("rel-1", "rel-2"),
                            policy=Policy(canary=2, waves=2, max_parallel=7, success_threshold=0.75,
                                          delivering_timeout=12.5),
                            waves=2, created_at=T0, name="Frühling · €", method="pull",
                            targets_from="filter: tag=beta")
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def make_jobs(cid: str = "cmp-1", tenant: str = "acme", n: int = 4) -> list[JobRecord]:
    return [JobRecord(cid, f"urn:dev:ünï-{i}", tenant, JobState.PENDING, position=i, wave=0 if i < 2 else 1,
                      updated_at=T0) for i in range(n)]


# ------------------------------------------------------------------------------------------------ create and read


def test_a_campaign_and_its_jobs_come_back_as_stored_jobs_in_position_order(backend: Backend) -> None:
    store = backend.store
    assert isinstance(store, CampaignStore)
    campaign = make_campaign(state=CampaignState.HALTED, reason="wave 0: 1 of 2 failed", opened_at=(T0, T0 + 0.5),
                             approved_by="deploy", started_at=T0 + 1, finished_at=T0 + 2, report=b"\xd2\x84\x00\xff")
    jobs = make_jobs()
    jobs[1] = dataclasses.replace(jobs[1], state=JobState.UPDATING, attempts=2, not_before=T0 + 3, deadline=T0 + 4.25,
                                  release_id="rel-1", package_sha256="ab" * 32, package_name="n" * 32,
                                  sequence_number=7, method="push", version_before="1.0", version_after=None,
                                  update_result=0, started_at=T0 + 5, reason="try 1 failed: « timeout »",
                                  owner="node-ä")
    store.create(campaign, [jobs[2], jobs[0], jobs[3], jobs[1]])  # given in any order

    assert store.get("cmp-1", tenant_id="acme") == campaign
    assert store.jobs("cmp-1", tenant_id="acme") == jobs
    assert store.jobs("cmp-1", tenant_id="acme", state=JobState.UPDATING) == [jobs[1]]
    assert store.job("cmp-1", jobs[1].endpoint, tenant_id="acme") == jobs[1]
    assert store.job("cmp-1", "nobody", tenant_id="acme") is None
    assert store.job_views("cmp-1", tenant_id="acme") == tuple(
        JobView(j.endpoint, j.wave, j.state, j.attempts, j.not_before, j.deadline) for j in jobs)
    assert store.list(tenant_id="acme") == [campaign]
    assert store.get("cmp-2", tenant_id="acme") is None


def test_a_failing_create_leaves_nothing(backend: Backend) -> None:
    store = backend.store
    twice = make_jobs(n=3)
    twice.append(dataclasses.replace(twice[0], position=3))
    with pytest.raises(StorageConflictError):
        store.create(make_campaign(), twice)
    assert store.get("cmp-1", tenant_id="acme") is None and store.jobs("cmp-1", tenant_id="acme") == []

    stray = [*make_jobs(n=2), dataclasses.replace(make_jobs(n=3)[2], campaign_id="cmp-9")]
    foreign = [*make_jobs(n=2), dataclasses.replace(make_jobs(n=3)[2], tenant_id="globex")]
    for jobs in (stray, foreign):
        with pytest.raises(StorageError):
            store.create(make_campaign(), jobs)
        assert store.get("cmp-1", tenant_id="acme") is None and store.list(tenant_id="acme") == []
        assert store.jobs("cmp-1", tenant_id="acme") == [] and store.jobs("cmp-9", tenant_id="acme") == []

    store.create(make_campaign(), make_jobs())
    with pytest.raises(StorageConflictError):  # the id is taken, even from another tenant
        store.create(make_campaign(tenant="globex", name="other"), make_jobs(tenant="globex", n=1))
    assert store.get("cmp-1", tenant_id="acme") == make_campaign()
    assert store.jobs("cmp-1", tenant_id="acme") == make_jobs()
    assert store.get("cmp-1", tenant_id="globex") is None and store.list(tenant_id="globex") == []


def test_another_tenants_campaign_is_not_found_and_not_changed(backend: Backend) -> None:
    store = backend.store
    store.create(make_campaign(), make_jobs())
    ep = make_jobs()[0].endpoint
    assert store.get("cmp-1", tenant_id="globex") is None
    assert store.list(tenant_id="globex") == []
    assert store.job("cmp-1", ep, tenant_id="globex") is None
    assert store.jobs("cmp-1", tenant_id="globex") == []
    assert store.job_views("cmp-1", tenant_id="globex") == ()
    assert store.in_states([CampaignState.CREATED], job_states=[JobState.PENDING], tenant_id="globex") == []
    assert not store.update("cmp-1", tenant_id="globex", state=CampaignState.RUNNING)
    assert not store.update("cmp-1", tenant_id="globex")
    assert not store.update_job("cmp-1", ep, tenant_id="globex", state=JobState.FAILED)
    assert store.update_jobs("cmp-1", tenant_id="globex", in_state=JobState.PENDING, state=JobState.SKIPPED) == 0
    store.postpone_deadlines([("cmp-1", ep, T0)], tenant_id="globex")
    assert store.get("cmp-1", tenant_id="acme") == make_campaign()
    assert store.jobs("cmp-1", tenant_id="acme") == make_jobs()


def test_campaigns_are_listed_newest_first_then_by_id(backend: Backend) -> None:
    store = backend.store
    for cid, created in (("c-b", T0), ("c-d", T0 + 5), ("c-a", T0), ("c-c", T0 - 5)):
        store.create(make_campaign(cid, created_at=created), make_jobs(cid, n=1))
    store.create(make_campaign("c-x", "globex"), [])
    assert [c.id for c in store.list(tenant_id="acme")] == ["c-d", "c-a", "c-b", "c-c"]
    assert [c.id for c in store.list(tenant_id="globex")] == ["c-x"]


# ------------------------------------------------------------------------------------------------------- updates


def test_a_guarded_campaign_update_applies_only_in_an_expected_state(backend: Backend) -> None:
    store = backend.store
    store.create(make_campaign(reason="old"), make_jobs(n=1))
    assert not store.update("cmp-1", tenant_id="acme", expect={CampaignState.RUNNING}, state=CampaignState.PAUSED)
    assert not store.update("cmp-1", tenant_id="acme", expect={CampaignState.RUNNING})
    assert store.get("cmp-1", tenant_id="acme") == make_campaign(reason="old")

    assert store.update("cmp-1", tenant_id="acme", expect={CampaignState.CREATED, CampaignState.PAUSED},
                        state=CampaignState.RUNNING, started_at=T0 + 1, approved_by="deploy", reason=None)
    assert store.update("cmp-1", tenant_id="acme", opened_at=(T0 + 1, T0 + 2.5))
    assert store.update("cmp-1", tenant_id="acme", expect=[CampaignState.RUNNING])  # nothing to set: it would apply
    assert store.get("cmp-1", tenant_id="acme") == make_campaign(state=CampaignState.RUNNING, started_at=T0 + 1,
                                                                 approved_by="deploy", opened_at=(T0 + 1, T0 + 2.5))
    assert store.update("cmp-1", tenant_id="acme", state=CampaignState.COMPLETED, finished_at=T0 + 9,
                        report=bytes(range(256)))
    done = store.get("cmp-1", tenant_id="acme")
    assert done is not None and done.report == bytes(range(256)) and done.finished_at == T0 + 9
    assert not store.update("cmp-2", tenant_id="acme", state=CampaignState.RUNNING)
    with pytest.raises(TypeError):
        store.update("cmp-1", tenant_id="acme", id="cmp-3")  # type: ignore[call-arg]


def test_a_job_update_sets_what_it_names_and_its_guard_holds(backend: Backend) -> None:
    store = backend.store
    store.create(make_campaign(), make_jobs())
    ep = make_jobs()[1].endpoint
    everything = dict(state=JobState.DELIVERING, attempts=3, not_before=T0 + 1, deadline=T0 + 2.5, release_id="rel-2",
                      package_sha256="cd" * 32, package_name="p" * 32, sequence_number=9, method="pull",
                      version_before="1.0", version_after="2.0", update_result=1, started_at=T0 + 3,
                      finished_at=T0 + 4, updated_at=T0 + 5, reason="ok", owner="node-b")
    assert store.update_job("cmp-1", ep, tenant_id="acme", expect={JobState.PENDING}, **everything)  # type: ignore[arg-type]
    assert store.job("cmp-1", ep, tenant_id="acme") == dataclasses.replace(make_jobs()[1], **everything)  # type: ignore[arg-type]

    assert not store.update_job("cmp-1", ep, tenant_id="acme", expect={JobState.PENDING}, state=JobState.FAILED)
    assert store.update_job("cmp-1", ep, tenant_id="acme", expect=ACTIVE, state=JobState.PENDING, deadline=None,
                            reason=None, package_name=None)
    job = store.job("cmp-1", ep, tenant_id="acme")
    assert job is not None and (job.state, job.deadline, job.reason, job.package_name) == (JobState.PENDING, None,
                                                                                           None, None)
    assert not store.update_job("cmp-1", "nobody", tenant_id="acme", state=JobState.FAILED)
    assert store.jobs("cmp-1", tenant_id="acme")[0] == make_jobs()[0]  # the others are untouched
    with pytest.raises(TypeError):
        store.update_job("cmp-1", ep, tenant_id="acme", wave=3)  # type: ignore[call-arg]


def test_a_bulk_job_update_changes_the_jobs_in_one_state_only(backend: Backend) -> None:
    store = backend.store
    store.create(make_campaign(), make_jobs())
    store.create(make_campaign("cmp-2"), make_jobs("cmp-2"))
    first = make_jobs()[0].endpoint
    assert store.update_job("cmp-1", first, tenant_id="acme", state=JobState.SUCCEEDED)
    n = store.update_jobs("cmp-1", tenant_id="acme", in_state=JobState.PENDING, state=JobState.SKIPPED,
                          reason="campaign cancelled", finished_at=T0 + 1, updated_at=T0 + 1)
    assert n == 3
    assert [j.state for j in store.jobs("cmp-1", tenant_id="acme")] == [JobState.SUCCEEDED] + [JobState.SKIPPED] * 3
    assert all(j.reason == "campaign cancelled" and j.finished_at == T0 + 1
               for j in store.jobs("cmp-1", tenant_id="acme", state=JobState.SKIPPED))
    assert store.jobs("cmp-2", tenant_id="acme") == make_jobs("cmp-2")  # another campaign's are untouched
    assert store.update_jobs("cmp-1", tenant_id="acme", in_state=JobState.PENDING, state=JobState.FAILED) == 0


# ------------------------------------------------------------------------------------- several nodes, one database


def states(store: CampaignStore, cid: str = "cmp-1") -> list[tuple[JobState, str | None]]:
    return [(j.state, j.owner) for j in store.jobs(cid, tenant_id="acme")]


def test_a_claim_takes_pending_jobs_in_position_order_within_the_limit_counting_active_ones(
        backend: Backend) -> None:
    store = backend.store
    store.create(make_campaign(), make_jobs(n=6))
    eps = [j.endpoint for j in make_jobs(n=6)]
    assert store.update_job("cmp-1", eps[1], tenant_id="acme", state=JobState.UPDATING, owner="node-x")
    assert store.update_job("cmp-1", eps[4], tenant_id="acme", state=JobState.SUCCEEDED)

    claimed = store.claim_jobs("cmp-1", [*reversed(eps), "nobody", eps[0]], tenant_id="acme", owner="node-a",
                               limit=3, now=T0 + 1, deadline=T0 + 13.5)
    assert claimed == [eps[0], eps[2]]  # one active already: room for two; position order
    for ep in claimed:
        assert store.job("cmp-1", ep, tenant_id="acme") == dataclasses.replace(
            make_jobs(n=6)[eps.index(ep)], state=JobState.DELIVERING, owner="node-a", updated_at=T0 + 1,
            deadline=T0 + 13.5)
    assert store.claim_jobs("cmp-1", eps, tenant_id="acme", owner="node-b", limit=3, now=T0, deadline=None) == []
    assert store.claim_jobs("cmp-1", eps, tenant_id="globex", owner="node-b", limit=9, now=T0, deadline=None) == []
    assert store.claim_jobs("cmp-9", eps, tenant_id="acme", owner="node-b", limit=9, now=T0, deadline=None) == []
    assert store.claim_jobs("cmp-1", [eps[1], eps[4], eps[5]], tenant_id="acme", owner="node-b", limit=9, now=T0,
                            deadline=None) == [eps[5]]  # only pending jobs are claimed
    assert store.claim_jobs("cmp-1", [], tenant_id="acme", owner="node-b", limit=9, now=T0, deadline=None) == []
    assert states(store) == [(JobState.DELIVERING, "node-a"), (JobState.UPDATING, "node-x"),
                             (JobState.DELIVERING, "node-a"), (JobState.PENDING, None),
                             (JobState.SUCCEEDED, None), (JobState.DELIVERING, "node-b")]
    second = backend.second()  # committed: another node sees the claims
    assert states(second) == states(store)


def test_two_nodes_claiming_at_once_never_take_a_job_twice_nor_exceed_the_limit_together(
        backend: Backend) -> None:
    limit, n = 5, 40
    store = backend.store
    store.create(make_campaign(), make_jobs(n=n))
    nodes = {"node-a": store, "node-b": backend.second()}
    eps = [j.endpoint for j in make_jobs(n=n)]
    start = threading.Barrier(len(nodes), timeout=60)

    def claim(owner: str, ordered: list[str]) -> list[str]:
        start.wait()
        return nodes[owner].claim_jobs("cmp-1", ordered, tenant_id="acme", owner=owner, limit=limit, now=T0,
                                       deadline=None)

    with ThreadPoolExecutor(len(nodes)) as pool:
        for round_ in range(12):
            active = [j for j in store.jobs("cmp-1", tenant_id="acme") if j.state in ACTIVE]
            pending = [j.endpoint for j in store.jobs("cmp-1", tenant_id="acme", state=JobState.PENDING)]
            orders = {"node-a": eps, "node-b": eps[::-1] if round_ % 2 else eps}
            claims = {owner: f.result(timeout=120) for owner, f in
                      {o: pool.submit(claim, o, orders[o]) for o in nodes}.items()}
            taken = claims["node-a"] + claims["node-b"]
            assert len(taken) == len(set(taken)) == min(limit - len(active), len(pending))  # exact, and no twice
            assert set(taken) <= set(pending)
            for owner, endpoints in claims.items():
                assert all(store.job("cmp-1", ep, tenant_id="acme").owner == owner  # type: ignore[union-attr]
                           for ep in endpoints)
            now_active = [j for j in store.jobs("cmp-1", tenant_id="acme") if j.state in ACTIVE]
            assert len(now_active) <= limit
            for job in now_active[: 1 + round_ % 3]:  # some finish, which makes room for the next round
                assert store.update_job("cmp-1", job.endpoint, tenant_id="acme", holder=job.owner,
                                        state=JobState.SUCCEEDED)


def test_a_job_is_written_with_holder_only_by_its_owner(backend: Backend) -> None:
    store = backend.store
    store.create(make_campaign(), make_jobs())
    eps = [j.endpoint for j in make_jobs()]
    assert not store.update_job("cmp-1", eps[0], tenant_id="acme", holder="node-a", state=JobState.FAILED)  # no owner
    assert store.claim_jobs("cmp-1", eps[:1], tenant_id="acme", owner="node-a", limit=7, now=T0 + 1,
                            deadline=None) == eps[:1]
    assert store.update_job("cmp-1", eps[0], tenant_id="acme", holder="node-a")  # nothing to set: it would apply
    assert not store.update_job("cmp-1", eps[0], tenant_id="acme", holder="node-b")
    assert not store.update_job("cmp-1", eps[0], tenant_id="acme", holder="node-b", state=JobState.FAILED)
    assert not store.update_job("cmp-1", eps[0], tenant_id="acme", holder="node-a", expect={JobState.UPDATING},
                                state=JobState.FAILED)
    assert store.update_job("cmp-1", eps[0], tenant_id="acme", holder="node-a", expect=ACTIVE,
                            state=JobState.DOWNLOADED, attempts=1)
    assert store.update_job("cmp-1", eps[0], tenant_id="acme", owner="node-b")  # taken over by another node
    assert not store.update_job("cmp-1", eps[0], tenant_id="acme", holder="node-a", state=JobState.FAILED)
    assert not store.update_job("cmp-1", eps[0], tenant_id="globex", holder="node-b", state=JobState.FAILED)
    assert store.update_job("cmp-1", eps[0], tenant_id="acme", holder="node-b", state=JobState.UPDATING)
    job = store.job("cmp-1", eps[0], tenant_id="acme")
    assert job is not None and (job.state, job.attempts, job.owner) == (JobState.UPDATING, 1, "node-b")
    assert store.jobs("cmp-1", tenant_id="acme")[1:] == make_jobs()[1:]


def test_adopting_takes_the_active_jobs_of_dead_nodes_and_of_no_node_only(backend: Backend) -> None:
    store = backend.store
    jobs = make_jobs(n=7)
    plan = [(JobState.DELIVERING, "node-dead"), (JobState.UPDATING, "node-live"), (JobState.DOWNLOADED, None),
            (JobState.DELIVERING, "node-me"), (JobState.PENDING, None), (JobState.SUCCEEDED, "node-dead"),
            (JobState.UPDATING, "node-dead")]
    store.create(make_campaign(), [dataclasses.replace(j, state=state, owner=owner)
                                   for j, (state, owner) in zip(jobs, plan, strict=True)])
    eps = [j.endpoint for j in jobs]
    assert store.adopt_jobs("cmp-1", eps, tenant_id="globex", owner="node-me", alive=set()) == []
    assert store.adopt_jobs("cmp-9", eps, tenant_id="acme", owner="node-me", alive=set()) == []
    adopted = store.adopt_jobs("cmp-1", [*reversed(eps[:6]), "nobody"], tenant_id="acme", owner="node-me",
                               alive={"node-live"})  # node-me itself not listed alive: its own jobs stay its own
    assert adopted == [eps[0], eps[2]]
    assert states(store) == [(JobState.DELIVERING, "node-me"), (JobState.UPDATING, "node-live"),
                             (JobState.DOWNLOADED, "node-me"), (JobState.DELIVERING, "node-me"),
                             (JobState.PENDING, None), (JobState.SUCCEEDED, "node-dead"),
                             (JobState.UPDATING, "node-dead")]  # the last one was not asked for
    assert store.adopt_jobs("cmp-1", eps[:6], tenant_id="acme", owner="node-other",
                            alive={"node-me", "node-live", "node-other"}) == []
    assert store.adopt_jobs("cmp-1", eps, tenant_id="acme", owner="node-live", alive=()) == [eps[0], eps[2], eps[3],
                                                                                           eps[6]]
    assert states(backend.second()) == states(store)


def test_an_unreported_update_writes_only_a_campaign_without_report(backend: Backend) -> None:
    store = backend.store
    store.create(make_campaign(state=CampaignState.RUNNING), make_jobs(n=1))
    assert store.update("cmp-1", tenant_id="acme", unreported=True)  # nothing to set: it would apply
    assert store.update("cmp-1", tenant_id="acme", unreported=True, expect={CampaignState.RUNNING},
                        state=CampaignState.COMPLETED, finished_at=T0 + 1, report=b"first")
    assert not store.update("cmp-1", tenant_id="acme", unreported=True)
    assert not store.update("cmp-1", tenant_id="acme", unreported=True, state=CampaignState.COMPLETED,
                            finished_at=T0 + 2, report=b"second")
    assert not store.update("cmp-1", tenant_id="globex", unreported=True, report=b"third")
    assert store.get("cmp-1", tenant_id="acme") == make_campaign(state=CampaignState.COMPLETED, finished_at=T0 + 1,
                                                                 report=b"first")
    assert store.update("cmp-1", tenant_id="acme", reason="noted")  # without the guard a report is no obstacle


# ------------------------------------------------------------------------------------------------------- restart


def test_the_restart_query_finds_campaigns_in_the_states_with_their_jobs_in_the_states(backend: Backend) -> None:
    store = backend.store
    plan = {"c-old": ("acme", CampaignState.RUNNING, T0 - 10), "c-new": ("globex", CampaignState.PAUSED, T0),
            "c-done": ("acme", CampaignState.COMPLETED, T0 - 20), "c-idle": ("acme", CampaignState.HALTED, T0 + 1)}
    for cid, (tenant, state, created) in plan.items():
        store.create(make_campaign(cid, tenant, state=state, created_at=created), make_jobs(cid, tenant))
        if cid != "c-idle":  # its jobs all stay pending
            for i, job_state in ((3, JobState.DELIVERING), (0, JobState.UPDATING), (1, JobState.SUCCEEDED)):
                assert store.update_job(cid, make_jobs(cid, tenant)[i].endpoint, tenant_id=tenant, state=job_state)
    wanted = [CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.HALTED, CampaignState.CANCELLED]

    found = store.in_states(wanted, job_states=ACTIVE, tenant_id=None)
    assert [(c.id, [j.endpoint for j in jobs]) for c, jobs in found] == [
        ("c-old", ["urn:dev:ünï-0", "urn:dev:ünï-3"]),  # oldest first, jobs in position order
        ("c-new", ["urn:dev:ünï-0", "urn:dev:ünï-3"]),
        ("c-idle", []),
    ]
    assert found[0][1][0] == store.job("c-old", "urn:dev:ünï-0", tenant_id="acme")
    assert [c.id for c, _ in store.in_states(wanted, job_states=ACTIVE, tenant_id="globex")] == ["c-new"]
    assert store.in_states([CampaignState.CANCELLED], job_states=ACTIVE, tenant_id=None) == []


def test_a_postponed_deadline_only_moves_later(backend: Backend) -> None:
    store = backend.store
    store.create(make_campaign(), make_jobs())
    store.create(make_campaign("cmp-g", "globex"), make_jobs("cmp-g", "globex"))
    eps = [j.endpoint for j in make_jobs()]
    assert store.update_job("cmp-1", eps[0], tenant_id="acme", deadline=T0 + 100)
    assert store.update_job("cmp-1", eps[1], tenant_id="acme", deadline=T0 + 1)
    store.postpone_deadlines([("cmp-1", eps[0], T0 + 50), ("cmp-1", eps[1], T0 + 50), ("cmp-1", eps[2], T0 + 60),
                              ("cmp-1", "nobody", T0), ("cmp-9", eps[0], T0)], tenant_id="acme")
    assert [j.deadline for j in store.jobs("cmp-1", tenant_id="acme")] == [T0 + 100, T0 + 50, T0 + 60, None]
    store.postpone_deadlines([("cmp-g", eps[0], T0 + 7), ("cmp-1", eps[3], T0 + 8)], tenant_id=None)  # every tenant
    assert store.job("cmp-g", eps[0], tenant_id="globex") == dataclasses.replace(make_jobs("cmp-g", "globex")[0],
                                                                                deadline=T0 + 7)
    assert store.job("cmp-1", eps[3], tenant_id="acme") == dataclasses.replace(make_jobs()[3], deadline=T0 + 8)
    store.postpone_deadlines([], tenant_id=None)


def test_every_write_is_committed_when_it_returns(backend: Backend) -> None:
    """What a crash would leave: a second connection sees each change as soon as the call has returned."""
    store = backend.store
    ep = make_jobs()[0].endpoint
    store.create(make_campaign(), make_jobs())
    assert backend.second().jobs("cmp-1", tenant_id="acme") == make_jobs()
    store.update("cmp-1", tenant_id="acme", state=CampaignState.RUNNING, opened_at=(T0,))
    seen = backend.second().get("cmp-1", tenant_id="acme")
    assert seen is not None and seen.state is CampaignState.RUNNING and seen.opened_at == (T0,)
    store.update_job("cmp-1", ep, tenant_id="acme", state=JobState.DELIVERING, package_name="x" * 32, deadline=T0)
    job = backend.second().job("cmp-1", ep, tenant_id="acme")
    assert job is not None and (job.state, job.package_name) == (JobState.DELIVERING, "x" * 32)
    store.postpone_deadlines([("cmp-1", ep, T0 + 30)], tenant_id=None)
    assert [j.deadline for j in backend.second().jobs("cmp-1", tenant_id="acme", state=JobState.DELIVERING)] == [
        T0 + 30]
    store.update_jobs("cmp-1", tenant_id="acme", in_state=JobState.PENDING, state=JobState.SKIPPED)
    assert [j.state for j in backend.second().jobs("cmp-1", tenant_id="acme")] == [JobState.DELIVERING] + [
        JobState.SKIPPED] * 3


# ------------------------------------------------------------------------- the two stores agree on any history

_ids = itertools.count()
_EPS = [f"d{i}" for i in range(5)]
_NO_NUL = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")  # PostgreSQL text holds no NUL
_NODES = ["n-a", "n-b", "n-c"]
_operation = st.one_of(
    st.tuples(st.just("job"), st.sampled_from(_EPS), st.sampled_from(list(JobState)),
              st.none() | st.frozensets(st.sampled_from(list(JobState)), min_size=1),
              st.none() | st.floats(0, 1e10), st.integers(0, 5), st.none() | st.sampled_from(_NODES)),
    st.tuples(st.just("claim"), st.lists(st.sampled_from([*_EPS, "nobody"]), max_size=7),
              st.sampled_from(_NODES), st.integers(0, 6)),
    st.tuples(st.just("adopt"), st.lists(st.sampled_from([*_EPS, "nobody"]), max_size=7),
              st.sampled_from(_NODES), st.frozensets(st.sampled_from(_NODES))),
    st.tuples(st.just("bulk"), st.sampled_from(list(JobState)), st.sampled_from(list(JobState)),
              st.text(_NO_NUL, max_size=8)),
    st.tuples(st.just("postpone"), st.lists(st.tuples(st.sampled_from(_EPS), st.floats(0, 1e10)), max_size=4)),
)


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def shared_sql(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[SqlCampaignStore]:
    db = shared_database(request, request.param, tmp_path_factory)
    yield SqlCampaignStore(db)
    db.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(_operation, max_size=12))
def test_memory_and_sql_agree_on_any_history_of_job_changes(shared_sql: SqlCampaignStore,
                                                           history: list[tuple[object, ...]]) -> None:
    memory: CampaignStore = MemoryCampaignStore()
    cid = f"cmp-h{next(_ids)}"  # a fresh campaign per example in the shared SQL file
    jobs = [JobRecord(cid, ep, "acme", JobState.PENDING, position=i, wave=i // 3) for i, ep in enumerate(_EPS)]
    for store in (memory, shared_sql):
        store.create(make_campaign(cid), jobs)
    for op in history:
        results = []
        for store in (memory, shared_sql):
            if op[0] == "job":
                _, ep, state, expect, deadline, attempts, holder = op
                results.append(store.update_job(cid, ep, tenant_id="acme", expect=expect,  # type: ignore[arg-type]
                                                holder=holder, state=state,  # type: ignore[arg-type]
                                                deadline=deadline, attempts=attempts))  # type: ignore[arg-type]
            elif op[0] == "claim":
                _, eps, owner, limit = op
                results.append(store.claim_jobs(cid, eps, tenant_id="acme", owner=owner,  # type: ignore[arg-type]
                                                limit=limit, now=T0, deadline=T0 + 1))  # type: ignore[arg-type]
            elif op[0] == "adopt":
                _, eps, owner, alive = op
                results.append(store.adopt_jobs(cid, eps, tenant_id="acme", owner=owner,  # type: ignore[arg-type]
                                                alive=alive))  # type: ignore[arg-type]
            elif op[0] == "bulk":
                _, in_state, state, reason = op
                results.append(store.update_jobs(cid, tenant_id="acme", in_state=in_state,  # type: ignore[arg-type]
                                                 state=state, reason=reason))  # type: ignore[arg-type]
            else:
                store.postpone_deadlines([(cid, ep, when) for ep, when in op[1]],  # type: ignore[attr-defined]
                                         tenant_id="acme")
        assert results[:1] == results[1:]
        assert memory.jobs(cid, tenant_id="acme") == shared_sql.jobs(cid, tenant_id="acme")
    assert memory.job_views(cid, tenant_id="acme") == shared_sql.job_views(cid, tenant_id="acme")

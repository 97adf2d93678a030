"""One contract for both usage stores: the memory store and the SQL store (SQLite and PostgreSQL).

A new backend joins by adding a case to the ``backend`` fixture; it must pass every test here unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from lwm2m_server.core.errors import CoapCode
from lwm2m_server.metering.store import MemoryUsageStore, SealedDayError, SqlUsageStore, UsageStore
from lwm2m_server.metering.usage import GENESIS_HASH, DayCounts, Tally, day_start, verify
from lwm2m_server.storage.database import Database
from tests.store_backends import BACKENDS, database_opener


class Backend:
    """A usage store plus ``reopen()`` (a server restart) and ``other()`` (a second server node, same data)."""

    def __init__(self, kind: str, open_database: Callable[[], Database] | None) -> None:
        self.kind, self._open_database = kind, open_database
        self.dbs: list[Database] = []
        self.store: UsageStore = self._new()

    def _new(self) -> UsageStore:
        if self._open_database is None:
            return MemoryUsageStore()
        db = self._open_database()
        self.dbs.append(db)
        return SqlUsageStore(db)

    def reopen(self) -> None:
        if self.kind != "memory":
            for db in self.dbs:
                db.close()
            self.dbs.clear()
            self.store = self._new()

    def other(self) -> UsageStore:
        return self.store if self.kind == "memory" else self._new()

    def close(self) -> None:
        for db in self.dbs:
            db.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    b = Backend(kind, None if kind == "memory" else database_opener(request, kind, tmp_path / "data"))
    try:
        yield b
    finally:
        b.close()


D1, D2, D3, D4 = "2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"
ONE = DayCounts(deliveries_started=1, bytes_delivered=100)


def after(day: str) -> float:
    """A time when ``day`` is over (the first instant of the next day)."""
    return day_start(day) + 86400


def test_the_stores_are_usage_stores(backend: Backend) -> None:
    assert isinstance(backend.store, UsageStore)


def test_adds_are_relative_and_scoped_by_tenant_and_day(backend: Backend) -> None:
    s = backend.store
    s.add(ONE, tenant_id="a", day=D1)
    s.add(ONE, tenant_id="a", day=D1)
    s.add(DayCounts(deliveries_succeeded=1, campaigns_started=1, campaigns_finished=2), tenant_id="a", day=D1)
    s.add(ONE, tenant_id="b", day=D1)
    s.add(ONE, tenant_id="a", day=D2)
    assert s.counts(tenant_id="a", day=D1) == DayCounts(deliveries_started=2, deliveries_succeeded=1,
                                                        bytes_delivered=200, campaigns_started=1, campaigns_finished=2)
    assert s.counts(tenant_id="b", day=D1) == ONE
    assert s.counts(tenant_id="a", day=D2) == ONE
    assert s.counts(tenant_id="a", day=D3) == DayCounts()
    assert s.counts(tenant_id="c", day=D1) == DayCounts()


def test_an_endpoint_counts_once_per_tenant_and_day(backend: Backend) -> None:
    s = backend.store
    for ep in ("x", "y", "x", "x"):
        s.add(DayCounts(), tenant_id="a", day=D1, endpoint=ep)
    s.add(DayCounts(devices_registered=5), tenant_id="a", day=D1, endpoint="y")  # the count given is ignored
    s.add(DayCounts(), tenant_id="a", day=D2, endpoint="x")
    s.add(DayCounts(), tenant_id="b", day=D1, endpoint="x")
    assert s.counts(tenant_id="a", day=D1).devices_registered == 2
    assert s.counts(tenant_id="a", day=D2).devices_registered == 1
    assert s.counts(tenant_id="b", day=D1).devices_registered == 1


def test_seal_seals_only_days_that_are_over_and_chains_them(backend: Backend) -> None:
    s = backend.store
    s.add(ONE, tenant_id="a", day=D1, endpoint="x")
    s.add(ONE, tenant_id="a", day=D3)  # D2 is quiet
    s.add(ONE, tenant_id="a", day=D4)
    assert s.seal(tenant_id="a", now=after(D1) - 0.001) == []  # D1 is not over yet
    assert s.days(tenant_id="a") == []
    sealed = s.seal(tenant_id="a", now=after(D3))  # D4 is still open
    assert [d.day for d in sealed] == [D1, D2, D3]
    assert sealed[0].prev_hash == GENESIS_HASH and verify(sealed) == []
    assert sealed[0].counts == DayCounts(devices_registered=1, deliveries_started=1, bytes_delivered=100)
    assert sealed[1].counts == DayCounts()
    assert s.days(tenant_id="a") == sealed
    assert s.seal(tenant_id="a", now=after(D3)) == []  # idempotent
    assert s.seal(tenant_id="b", now=after(D4)) == []  # another tenant: nothing
    more = s.seal(tenant_id="a", now=after(D4) + 5 * 86400)
    assert [d.day for d in more] == [D4] and more[0].prev_hash == sealed[-1].hash
    assert verify(s.days(tenant_id="a")) == []
    assert [d.day for d in s.days(tenant_id="a", first=D2, last=D3)] == [D2, D3]
    assert [d.day for d in s.days(tenant_id="a", first=D4)] == [D4]
    assert s.counts(tenant_id="a", day=D1) == sealed[0].counts  # a sealed day reads as it was sealed


def test_a_sealed_day_never_changes(backend: Backend) -> None:
    s = backend.store
    s.add(ONE, tenant_id="a", day=D2, endpoint="x")
    s.seal(tenant_id="a", now=after(D2))
    before = s.days(tenant_id="a")
    for day in (D2, D1):  # the sealed day, and a day before the chain's last day
        with pytest.raises(SealedDayError, match=f"usage of {day} is sealed") as e:
            s.add(ONE, tenant_id="a", day=day)
        assert e.value.coap_code is CoapCode.CONFLICT
        with pytest.raises(SealedDayError):
            s.add(DayCounts(), tenant_id="a", day=day, endpoint="new")
    s.add(ONE, tenant_id="b", day=D1)  # another tenant's chain is its own
    s.add(ONE, tenant_id="a", day=D3)  # a later day is open
    assert s.days(tenant_id="a") == before


def test_usage_survives_a_restart(backend: Backend) -> None:
    s = backend.store
    s.add(ONE, tenant_id="a", day=D1, endpoint="x")
    s.add(ONE, tenant_id="a", day=D2, endpoint="x")
    s.seal(tenant_id="a", now=after(D1))
    backend.reopen()
    s = backend.store
    s.add(DayCounts(), tenant_id="a", day=D2, endpoint="x")
    assert s.counts(tenant_id="a", day=D2) == DayCounts(devices_registered=1, deliveries_started=1,
                                                        bytes_delivered=100)
    assert [d.day for d in s.days(tenant_id="a")] == [D1]
    with pytest.raises(SealedDayError):
        s.add(ONE, tenant_id="a", day=D1)
    assert [d.day for d in s.seal(tenant_id="a", now=after(D2))] == [D2]
    assert verify(s.days(tenant_id="a")) == []


def test_two_nodes_adding_at_once_lose_no_count(backend: Backend) -> None:
    stores = [backend.store, backend.other()]
    per_thread, threads = 40, 4

    def work(n: int) -> None:
        store = stores[n % 2]
        for i in range(per_thread):
            store.add(ONE, tenant_id="a", day=D1, endpoint=f"ep-{i % 10}")

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers)
    total = per_thread * threads
    assert stores[1].counts(tenant_id="a", day=D1) == DayCounts(devices_registered=10, deliveries_started=total,
                                                                bytes_delivered=100 * total)
    sealed = stores[1].seal(tenant_id="a", now=after(D1))
    assert sealed == backend.store.days(tenant_id="a") and sealed[0].deliveries_started == total



NONE = DayCounts()


def tally(tenant: str, day: str, counts: DayCounts = NONE, *endpoints: str) -> Tally:
    return Tally(tenant, day, replace(counts, devices_registered=len(set(endpoints))), frozenset(endpoints))


def test_a_batch_adds_as_its_tallies_added_one_by_one(backend: Backend) -> None:
    s = backend.store
    s.add(DayCounts(), tenant_id="a", day=D1, endpoint="x")  # counted already: the batch does not count it again
    moved = s.add_batch([
        tally("a", D1, ONE, "x", "y"),
        tally("a", D1, ONE, "y", "z"),  # the same day twice: summed
        tally("b", D1, DayCounts(campaigns_started=1)),
        tally("a", D2, DayCounts(), *(f"e{i}" for i in range(2500))),  # more than one lookup's worth
        tally("c", D1),  # nothing counted: the day exists all the same
    ], today=D2)
    assert moved == []
    assert s.counts(tenant_id="a", day=D1) == DayCounts(devices_registered=3, deliveries_started=2,
                                                        bytes_delivered=200)
    assert s.counts(tenant_id="b", day=D1) == DayCounts(campaigns_started=1)
    assert s.counts(tenant_id="a", day=D2) == DayCounts(devices_registered=2500)
    assert s.add_batch([], today=D2) == []
    s.add_batch([tally("a", D2, ONE, "e1", "new")])
    assert s.counts(tenant_id="a", day=D2) == DayCounts(devices_registered=2501, deliveries_started=1,
                                                        bytes_delivered=100)
    sealed = s.seal(tenant_id="c", now=after(D1))
    assert [d.day for d in sealed] == [D1] and sealed[0].counts == DayCounts()


def test_a_batch_counts_a_sealed_days_tallies_on_the_first_open_day(backend: Backend) -> None:
    s = backend.store
    s.add(ONE, tenant_id="a", day=D2, endpoint="x")
    s.seal(tenant_id="a", now=after(D2))
    before = s.days(tenant_id="a")
    with pytest.raises(SealedDayError, match=f"usage of {D1} is sealed"):  # no today: refused, nothing added
        s.add_batch([tally("b", D1, ONE), tally("a", D1, ONE, "y")])
    assert s.counts(tenant_id="b", day=D1) == DayCounts()
    moved = s.add_batch([tally("a", D1, ONE, "y"), tally("a", D2, ONE, "x"), tally("b", D1, ONE)], today=D4)
    assert sorted(moved) == [("a", D1, D4), ("a", D2, D4)]
    assert s.counts(tenant_id="a", day=D4) == DayCounts(devices_registered=2, deliveries_started=2,
                                                        bytes_delivered=200)
    assert s.counts(tenant_id="b", day=D1) == ONE  # another tenant's chain is its own
    assert s.add_batch([tally("a", D2, ONE)], today=D2) == [("a", D2, D3)]  # today sealed too: the day after
    assert s.counts(tenant_id="a", day=D3) == ONE
    assert s.days(tenant_id="a") == before


def test_two_nodes_adding_batches_at_once_lose_no_count(backend: Backend) -> None:
    stores = [backend.store, backend.other()]
    rounds, threads = 10, 4

    failed: list[BaseException] = []

    def work(n: int) -> None:
        store = stores[n % 2]
        try:
            for i in range(rounds):
                store.add_batch([tally("a", D1, ONE, *(f"ep-{(i + k) % 30}" for k in range(10))),
                                 tally("b", D1, ONE)], today=D1)
        except BaseException as e:  # a lost batch (PostgreSQL once chose one as a deadlock's victim, unretried)
            failed.append(e)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers) and failed == []
    total = rounds * threads
    assert stores[1].counts(tenant_id="a", day=D1) == DayCounts(devices_registered=19, deliveries_started=total,
                                                                bytes_delivered=100 * total)
    assert stores[0].counts(tenant_id="b", day=D1) == DayCounts(deliveries_started=total, bytes_delivered=100 * total)

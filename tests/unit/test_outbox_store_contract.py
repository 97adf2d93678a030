"""One contract for every event outbox store: memory, SQLite (a real file) and PostgreSQL; and the metering store's
exactly-once count of it (:meth:`UsageStore.count_outbox`) on the same backends.

"Two nodes" are two stores on one database (SQL: two engines; memory: one store seen twice). The races run on
real threads through a barrier: two notifiers leasing at once never hold the same event, two meters counting at
once never count an event twice.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lwm2m_server.metering.store import MemoryUsageStore, SqlUsageStore, UsageStore
from lwm2m_server.metering.usage import DayCounts, day_of, day_start
from lwm2m_server.storage.outbox_store import MemoryOutboxStore, OutboxEvent, OutboxStore, SqlOutboxStore
from tests.store_backends import BACKENDS, StoreBackend

DAY = "2024-04-01"
T0 = day_start(DAY) + 3600.0


class Node:
    """One node's view of the shared outbox and usage."""

    def __init__(self, outbox: OutboxStore, usage: UsageStore) -> None:
        self.outbox, self.usage = outbox, usage


Backend = StoreBackend[Node]


def _memory_node() -> Node:
    outbox = MemoryOutboxStore()
    return Node(outbox, MemoryUsageStore(outbox))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = StoreBackend(request, request.param, tmp_path / "data", _memory_node,
                     lambda db: Node(SqlOutboxStore(db), SqlUsageStore(db)))
    yield b
    b.close()


def event(kind: str = "campaign.device.succeeded", *, at: float = T0, tenant: str = "acme",
          endpoint: str | None = "dev-1", data: dict[str, Any] | None = None, metered: bool = False,
          notified: bool = False, node: str = "node-a") -> OutboxEvent:
    return OutboxEvent(uuid.uuid4().hex, kind, at, tenant, endpoint, {"n": 1} if data is None else data, node,
                       metered_at=T0 if metered else None, notified_at=T0 if notified else None)


def ids(events: list[OutboxEvent]) -> list[str]:
    return [e.event_id for e in events]


def test_appended_events_come_back_in_order_with_their_fields(backend: Backend) -> None:
    store = backend.store.outbox
    a = event(data={"campaign": "c1", "nested": {"x": [1, 2.5, None, True]}, "text": "Frühling €"})
    b = event("firmware.finished", endpoint=None, data={"success": True, "bytes": 4096}, notified=True)
    store.append([a, b])
    store.append([])
    got = store.unmetered(limit=10)
    assert ids(got) == [a.event_id, b.event_id] and got[0].seq < got[1].seq
    assert (got[0].kind, got[0].at, got[0].tenant_id, got[0].endpoint, dict(got[0].data), got[0].node_id) == (
        a.kind, a.at, a.tenant_id, a.endpoint, a.data, a.node_id)
    assert dict(got[1].data) == {"success": True, "bytes": 4096} and got[1].endpoint is None
    assert got[1].notified_at == T0 and got[0].notified_at is None
    assert ids(backend.second().outbox.unmetered(limit=10)) == ids(got)  # committed: another node sees them
    assert ids(store.unmetered(limit=1)) == [a.event_id]


def test_append_is_idempotent_per_event_id(backend: Backend) -> None:
    store = backend.store.outbox
    a, b = event(), event()
    store.append([a])
    store.append([a, b])  # a retried batch whose first commit went through
    assert ids(store.unmetered(limit=10)) == [a.event_id, b.event_id]


def test_a_lease_takes_free_rows_in_order_and_expires(backend: Backend) -> None:
    store = backend.store.outbox
    events = [event() for _ in range(4)] + [event(notified=True)]
    store.append(events)
    first = store.lease_for_webhooks(owner="a", now=T0, lease=60, limit=3)
    assert ids(first) == ids(events[:3]) and {(e.notify_owner, e.notify_until) for e in first} == {("a", T0 + 60)}
    assert ids(backend.second().outbox.lease_for_webhooks(owner="b", now=T0 + 1, lease=60, limit=10)) == [
        events[3].event_id]  # the rest is leased already, the notified one needs nothing
    assert store.lease_for_webhooks(owner="b", now=T0 + 59, lease=60, limit=10) == []
    taken = store.lease_for_webhooks(owner="b", now=T0 + 60, lease=60, limit=10)  # a's leases expired
    assert ids(taken) == ids(events[:3])
    assert store.notified(ids(events[:3]), owner="a", now=T0 + 61) == 0  # a lost them
    assert store.notified(ids(events[:2]), owner="b", now=T0 + 61) == 2
    assert store.notified(ids(events[:2]), owner="b", now=T0 + 62) == 0  # once
    left = store.lease_for_webhooks(owner="d", now=T0 + 10_000, lease=60, limit=10)
    assert ids(left) == [events[2].event_id, events[3].event_id]


def test_only_the_holder_renews_and_releases(backend: Backend) -> None:
    store = backend.store.outbox
    a, b = event(), event()
    store.append([a, b])
    store.lease_for_webhooks(owner="x", now=T0, lease=10, limit=1)
    assert store.renew([a.event_id, b.event_id], owner="x", until=T0 + 100) == [a.event_id]
    assert store.renew([a.event_id], owner="y", until=T0 + 1000) == []
    assert ids(store.lease_for_webhooks(owner="y", now=T0 + 50, lease=10, limit=10)) == [b.event_id]  # a renewed
    assert store.release(owner="x") == 1
    assert ids(store.lease_for_webhooks(owner="z", now=T0 + 51, lease=10, limit=10)) == [a.event_id]
    assert store.release(owner="x") == 0


def test_prune_removes_only_rows_both_consumers_are_done_with(backend: Backend) -> None:
    store = backend.store.outbox
    done = event(at=T0, metered=True, notified=True)
    recent = event(at=T0 + 100, metered=True, notified=True)
    unmetered = event(at=T0, notified=True)
    unnotified = event(at=T0, metered=True)
    store.append([done, recent, unmetered, unnotified])
    assert store.prune(before=T0 + 50) == 1
    assert ids(store.unmetered(limit=10)) == [unmetered.event_id]
    assert ids(store.lease_for_webhooks(owner="a", now=T0, lease=1, limit=10)) == [unnotified.event_id]
    store.append([done])  # its id is free again once pruned (a writer never reuses one: uuid4)
    assert store.prune(before=T0 + 1000) == 2


def metered_events(n: int, tenant: str = "acme") -> list[OutboxEvent]:
    out = []
    for i in range(n):
        out.append(event("registration.registered", tenant=tenant, endpoint=f"ep-{i % 7}", notified=True))
        out.append(event("firmware.delivered", tenant=tenant, endpoint=f"ep-{i}", data={"bytes": 10}, notified=True))
        out.append(event("campaign.device.progress", tenant=tenant, metered=True))  # nothing to meter
    return out


def test_counting_the_outbox_counts_each_row_once_and_marks_it(backend: Backend) -> None:
    node = backend.store
    late = event("firmware.finished", tenant="other", data={"success": True}, notified=True)
    node.outbox.append([*metered_events(5), late])
    counted = node.usage.count_outbox(limit=3, now=T0, today=DAY)
    assert counted.events == 3 and counted.tenants == {"acme"}
    counted = node.usage.count_outbox(limit=100, now=T0, today=DAY)
    assert counted.events == 8 and counted.tenants == {"acme", "other"}
    assert node.usage.count_outbox(limit=100, now=T0, today=DAY).events == 0
    assert node.outbox.unmetered(limit=100) == []
    assert node.usage.counts(tenant_id="acme", day=DAY) == DayCounts(devices_registered=5, bytes_delivered=50)
    assert node.usage.counts(tenant_id="other", day=DAY) == DayCounts(deliveries_succeeded=1)


def test_a_count_for_a_sealed_day_goes_to_the_open_day(backend: Backend) -> None:
    node = backend.store
    node.outbox.append([event("campaign.started", at=T0, endpoint=None, notified=True)])
    node.usage.count_outbox(limit=10, now=T0, today=DAY)
    node.usage.seal(tenant_id="acme", now=T0 + 86400)
    node.outbox.append([event("campaign.finished", at=T0, endpoint=None, notified=True)])  # late
    counted = node.usage.count_outbox(limit=10, now=T0 + 86400, today=day_of(T0 + 86400))
    assert counted.moved == (("acme", DAY, day_of(T0 + 86400)),)
    assert node.usage.counts(tenant_id="acme", day=day_of(T0 + 86400)) == DayCounts(campaigns_finished=1)


def race(nodes: list[Node], work: Callable[[Node], Any]) -> list[Any]:
    start = threading.Barrier(len(nodes), timeout=60)

    def run(node: Node) -> Any:
        start.wait()
        return work(node)

    with ThreadPoolExecutor(len(nodes)) as pool:
        return list(pool.map(run, nodes))


def test_two_nodes_leasing_at_once_never_hold_the_same_event(backend: Backend) -> None:
    events = [event() for _ in range(300)]
    backend.store.outbox.append(events)
    nodes = [backend.store, backend.second()]

    def lease_all(node: Node) -> list[str]:
        owner = f"owner-{id(node)}-{threading.get_ident()}"
        got: list[str] = []
        while batch := node.outbox.lease_for_webhooks(owner=owner, now=T0, lease=60, limit=7):
            got += ids(batch)
            assert node.outbox.notified(ids(batch), owner=owner, now=T0) == len(batch)
        return got

    a, b = race(nodes, lease_all)
    assert sorted(a + b) == sorted(ids(events)) and not set(a) & set(b)


def test_two_meters_counting_at_once_never_count_an_event_twice(backend: Backend) -> None:
    events = metered_events(200)
    backend.store.outbox.append(events)
    nodes = [backend.store, backend.second()]

    def count_all(node: Node) -> int:
        total = 0
        while (counted := node.usage.count_outbox(limit=13, now=T0, today=DAY)).events:
            total += counted.events
        return total

    assert sum(race(nodes, count_all)) == len([e for e in events if e.metered_at is None]) == 400
    assert backend.store.usage.counts(tenant_id="acme", day=DAY) == DayCounts(devices_registered=7,
                                                                             bytes_delivered=2000)

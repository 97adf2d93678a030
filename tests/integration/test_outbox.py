"""Several nodes, one database, one event outbox (SQLite file and PostgreSQL): each node has its own event bus,
outbox writer, usage meter and webhook notifier; a real HTTP receiver on 127.0.0.1 checks every signature.

- events published on both nodes' buses are delivered once to each subscribed webhook (one delivery id each) and
  counted once by metering, while both meters and both notifiers race on the same rows;
- a node SIGKILLed in the middle of its deliveries (a real process, its requests held by the receiver, its leases
  left behind): once its leases expire the other node delivers those events, under the same delivery ids, and
  counts them.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bootstrap.vault import Vault
from lwm2m_server.events import EventBus
from lwm2m_server.fota.webhooks import WebhookNotifier, Webhooks
from lwm2m_server.metering.meter import UsageMeter
from lwm2m_server.metering.store import SqlUsageStore
from lwm2m_server.metering.usage import DayCounts, day_of
from lwm2m_server.outbox import OutboxWriter
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.outbox_store import SqlOutboxStore
from lwm2m_server.storage.webhook_store import SqlWebhookStore
from tests.harness import die_with_parent, eventually
from tests.integration.test_webhooks import receiving
from tests.store_backends import SQL_BACKENDS, database_opener

FLUSH_S = 30.0
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=SQL_BACKENDS)
def open_database(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Database]:
    """Opens the one database again at every call: a node each."""
    return database_opener(request, request.param, tmp_path / "data")


class Node:
    """One server node's event path: bus -> outbox writer -> (usage meter, webhook notifier)."""

    def __init__(self, db: Database, name: str, vault: Vault) -> None:
        self.db = db
        self.bus = EventBus()
        self.writer = OutboxWriter(SqlOutboxStore(db), self.bus, node_id=name)
        self.usage = SqlUsageStore(db)
        self.meter = UsageMeter(self.usage, self.writer, flush_interval=0.01)
        self.webhooks = Webhooks(SqlWebhookStore(db), vault)
        self.notifier = WebhookNotifier(self.webhooks, self.writer, backoff_base=0.01, backoff_max=0.05,
                                        poll_interval=0.05, lease=5.0)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.notifier.start()
        self._tasks = [asyncio.create_task(self.writer.run()), asyncio.create_task(self.meter.run())]

    async def stop(self) -> None:
        async with asyncio.timeout(15):
            await self.notifier.stop()
        self.writer.close()
        self.meter.close()
        await asyncio.wait_for(asyncio.gather(*self._tasks), 10)
        self.db.close()


def unnotified(db: Database) -> int:
    """Rows no notifier has marked notified (leased or not): a look that takes every lease, far in the future."""
    return len(SqlOutboxStore(db).lease_for_webhooks(owner="checker", now=time.time() + 10**6, lease=1, limit=10**6))


async def test_events_of_two_nodes_are_delivered_and_counted_once_each(open_database: Callable[[], Database]
                                                                       ) -> None:
    vault = Vault.generate()
    n = 40
    at = time.time()
    async with receiving() as rx:
        nodes = [Node(open_database(), "node-a", vault), Node(open_database(), "node-b", vault)]
        every, every_secret = nodes[0].webhooks.add(rx.url("/every"), tenant_id="acme", now=at)
        started, started_secret = nodes[1].webhooks.add(rx.url("/started"), kinds="campaign.started",
                                                         tenant_id="acme", now=at)
        rx.secrets.update({"/every": every_secret, "/started": started_secret})
        rx.scripts["/every"] = [500] * 5  # a few retries on the way (by whichever node holds the event)
        for node in nodes:
            node.start()
        try:
            for node, name in zip(nodes, ("a", "b"), strict=True):
                for k in range(n):
                    node.bus.emit("campaign.started", at, tenant_id="acme", data={"campaign": f"{name}-{k}"})
                    node.bus.emit("campaign.device.succeeded", at, tenant_id="acme", endpoint=f"{name}-{k}")
                    node.bus.emit("firmware.started", at, tenant_id="acme", endpoint=f"{name}-{k}")
                    node.bus.emit("registration.registered", at, tenant_id="acme", endpoint=f"{name}-{k % 5}")
                    node.bus.emit("campaign.device.succeeded", at, tenant_id="globex", endpoint=f"{name}-{k}")
                await asyncio.sleep(0)  # interleave: both nodes' writers and meters run meanwhile
            await eventually(lambda: len(rx.on("/every")) >= 4 * n + 5 and len(rx.on("/started")) >= 2 * n,
                             timeout=FLUSH_S)
            for node in nodes:
                assert await node.notifier.flush(FLUSH_S)
        finally:
            for node in nodes:
                await node.stop()

        db = open_database()
        try:
            assert unnotified(db) == 0 and SqlOutboxStore(db).unmetered(limit=10) == []
            assert SqlUsageStore(db).counts(tenant_id="acme", day=day_of(at)) == DayCounts(
                devices_registered=10, deliveries_started=2 * n, campaigns_started=2 * n)
            webhooks = Webhooks(SqlWebhookStore(db), vault)
            delivered = [d for d in webhooks.deliveries(tenant_id="acme", limit=10_000) if d.delivered]
        finally:
            db.close()
    assert all(r.signed for r in rx.requests)
    ok = {path: [r.headers["x-scratch-delivery"] for r in rx.on(path)] for path in ("/every", "/started")}
    assert len(ok["/every"]) == 4 * n + 5 and len(set(ok["/every"])) == 4 * n  # the 5 refused were retried
    assert len(ok["/started"]) == len(set(ok["/started"])) == 2 * n
    assert sorted(d.event_id for d in delivered) == sorted({*ok["/every"], *ok["/started"]})
    assert {d.webhook_id for d in delivered} == {every.id, started.id}
    kinds = [r.headers["x-scratch-event"] for r in rx.on("/every")]
    assert kinds.count("campaign.started") >= 2 * n and kinds.count("campaign.device.succeeded") >= 2 * n


NODE_A = """
import asyncio, sys, time
from bootstrap.vault import Vault
from lwm2m_server.events import EventBus
from lwm2m_server.fota.webhooks import WebhookNotifier, Webhooks
from lwm2m_server.outbox import OutboxWriter
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.outbox_store import SqlOutboxStore
from lwm2m_server.storage.webhook_store import SqlWebhookStore

async def main(url, key, n):
    db = Database(url)
    bus = EventBus()
    writer = OutboxWriter(SqlOutboxStore(db), bus, node_id="node-a")
    notifier = WebhookNotifier(Webhooks(SqlWebhookStore(db), Vault.open(key, environ={})), writer, lease=1.0,
                               timeout=60.0, poll_interval=0.05)
    notifier.start()
    for i in range(n):
        bus.emit("campaign.started", time.time(), tenant_id="acme", data={"campaign": f"c-{i}"})
    writer.flush()
    await asyncio.Event().wait()  # delivering until killed

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_a_dead_nodes_leased_events_are_delivered_by_another_under_the_same_ids(
        open_database: Callable[[], Database], tmp_path: Path) -> None:
    key = tmp_path / "vault.key"
    vault = Vault.open(key, environ={})
    n = 3
    db = open_database()
    async with receiving() as rx:
        hook, secret = Webhooks(SqlWebhookStore(db), vault).add(rx.url("/hook"), tenant_id="acme", now=time.time())
        rx.secrets["/hook"] = bytes(secret)
        rx.scripts["/hook"] = [None] * n  # node A's requests are held: it dies in the middle of them
        node_a = await asyncio.create_subprocess_exec(sys.executable, "-c", NODE_A, db.url, str(key), str(n),
                                                      cwd=REPO, preexec_fn=die_with_parent)
        try:
            await eventually(lambda: len(rx.requests) == n, timeout=60)
        finally:
            node_a.kill()
            await node_a.wait()
        held = [r.headers["x-scratch-delivery"] for r in rx.requests]
        assert len(set(held)) == n
        assert unnotified_without_taking(db) == n  # written, leased by the dead node, not notified

        node_b = Node(open_database(), "node-b", vault)
        node_b.start()
        try:
            await eventually(lambda: len(rx.requests) == 2 * n, timeout=FLUSH_S)  # once A's leases expired
            assert await node_b.notifier.flush(FLUSH_S)
        finally:
            await node_b.stop()
    again = [r.headers["x-scratch-delivery"] for r in rx.requests[n:]]
    assert sorted(again) == sorted(held) and all(r.signed for r in rx.requests[n:])
    log = Webhooks(SqlWebhookStore(db), vault).deliveries(tenant_id="acme", webhook_id=hook.id)
    assert sorted((d.event_id, d.attempt, d.delivered) for d in log) == sorted((i, 1, True) for i in held)
    assert unnotified(db) == 0
    total = sum((SqlUsageStore(db).counts(tenant_id="acme", day=d) for d in {day_of(time.time() - 60),
                                                                          day_of(time.time())}), DayCounts())
    assert total == DayCounts(campaigns_started=n)  # node A had no meter: node B counted its events, once
    db.close()


def unnotified_without_taking(db: Database) -> int:
    """Rows not notified, read without leasing them (what an operator would query)."""
    from sqlalchemy import func, select

    from lwm2m_server.storage.outbox_tables import OutboxRow

    table = OutboxRow.__table__  # type: ignore[attr-defined]
    with db.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table).where(table.c.notified_at.is_(None)))
                   .scalar_one())

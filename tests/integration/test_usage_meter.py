"""The usage meter on a real event bus and a real SQLite store.

- write-behind through the outbox: a burst of 10,000 registrations costs no statement until the flush, which is
  a few transactions (the outbox writer's batches, then one count of the outbox); a count the database
  refuses leaves the events in the outbox and the next one counts them once; the :meth:`run` loop retries until
  the database takes them; sealing counts what is pending first;
- the events a campaign produces, fed by hand with a controlled clock: the figures of each tenant's day, repeat
  registrations counted once, the day sealed once midnight (plus the grace) has passed, a late event counted on
  the current day;
- a real campaign on 127.0.0.1 (simulated devices over plain CoAP, one whose new image fails to boot): the usage
  figures agree with the campaign's signed report, and the sealed days verify.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from bootstrap.vault import Vault
from client_sim.firmware import Faults, FirmwareOptions
from client_sim.fleet import Fleet
from firmware_object.campaign import Policy
from firmware_object.suit.keys import load_public_key
from lwm2m_server import outbox
from lwm2m_server.core.errors import StorageError
from lwm2m_server.events import EventBus
from lwm2m_server.fota import attestation, campaigns, service
from lwm2m_server.metering import usage
from lwm2m_server.metering.meter import UsageMeter
from lwm2m_server.metering.store import SqlUsageStore
from lwm2m_server.metering.usage import DayCounts, day_of, day_start, next_day, verify
from lwm2m_server.outbox import OutboxWriter
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.outbox_store import SqlOutboxStore
from tests.harness import eventually, running_server

DAY = "2024-04-01"
PACKAGE = 4096


def writer(db: Database, bus: EventBus, clock: Any = time.time) -> OutboxWriter:
    """The node's outbox writer (its run loop not started: every meter flush flushes it)."""
    return OutboxWriter(SqlOutboxStore(db), bus, node_id="node-1", clock=clock)


def test_the_meter_reads_the_kinds_the_services_emit() -> None:
    assert (usage.FIRMWARE_STARTED, usage.FIRMWARE_DELIVERED, usage.FIRMWARE_FINISHED) == (
        service.FIRMWARE_STARTED, service.FIRMWARE_DELIVERED, service.FIRMWARE_FINISHED)
    assert (usage.CAMPAIGN_STARTED, usage.CAMPAIGN_FINISHED) == (campaigns.CAMPAIGN_STARTED,
                                                                 campaigns.CAMPAIGN_FINISHED)


def test_a_campaigns_events_are_counted_per_tenant_and_day_then_sealed(tmp_path: Path) -> None:
    now = [day_start(DAY) + 3600.0]
    bus = EventBus()
    with Database.for_data_dir(tmp_path / "data") as db:
        store = SqlUsageStore(db)
        producer = writer(db, bus, lambda: now[0])
        meter = UsageMeter(store, producer, clock=lambda: now[0], seal_grace=60.0)

        def emit(kind: str, ep: str | None = None, tenant: str = "op", **data: Any) -> None:
            bus.emit(kind, now[0], tenant_id=tenant, endpoint=ep, data=data)

        for ep in ("a", "b", "c"):
            emit("registration.registered", ep)
        emit("registration.registered", "a", tenant="other")
        emit("campaign.started", campaign="k1")
        for ep in ("a", "b", "c"):
            emit("firmware.started", ep, bytes=PACKAGE, method="pull")
        for ep in ("a", "b"):
            emit("firmware.delivered", ep, bytes=PACKAGE, method="pull")
        emit("firmware.finished", "c", success=False, bytes=PACKAGE)  # never got its package
        for ep in ("a", "b"):
            emit("registration.registered", ep)  # the reboot into the new image
            emit("registration.updated", ep)
        emit("firmware.finished", "a", success=True, bytes=PACKAGE)
        emit("firmware.finished", "b", success=False, bytes=PACKAGE)  # rolled back
        emit("campaign.finished", campaign="k1", summary={"succeeded": 1, "rolled-back": 1, "failed": 1})

        assert store.counts(tenant_id="op", day=DAY) == DayCounts()  # write-behind: nothing written yet
        meter.flush()
        assert store.counts(tenant_id="op", day=DAY) == DayCounts(
            devices_registered=3, deliveries_started=3, deliveries_succeeded=1, deliveries_failed=2,
            bytes_delivered=2 * PACKAGE, campaigns_started=1, campaigns_finished=1)
        assert store.counts(tenant_id="other", day=DAY) == DayCounts(devices_registered=1)

        day2 = next_day(DAY)
        now[0] = day_start(day2) + 30  # past midnight, within the grace: the day stays open
        emit("registration.registered", "a")
        meter.flush()
        assert store.days(tenant_id="op") == []
        now[0] = day_start(day2) + 61
        emit("registration.registered", "b")  # the first flush past the grace seals yesterday
        meter.flush()
        sealed = store.days(tenant_id="op")
        assert [d.day for d in sealed] == [DAY] and verify(sealed) == []
        assert sealed[0].counts == store.counts(tenant_id="op", day=DAY)
        assert [d.day for d in store.days(tenant_id="other")] == [DAY]

        bus.emit("firmware.finished", day_start(DAY) + 7200, tenant_id="op", endpoint="c",
                 data={"success": True})  # stamped yesterday, arriving now: counted today
        meter.flush()
        assert store.counts(tenant_id="op", day=day2) == DayCounts(devices_registered=2, deliveries_succeeded=1)
        assert store.days(tenant_id="op") == sealed

        producer.close()
        meter.close()
        emit("campaign.started", campaign="k2")  # nobody takes it any more
        meter.flush()
        assert store.counts(tenant_id="op", day=day2).campaigns_started == 0
        assert SqlOutboxStore(db).unmetered(limit=10) == []  # everything written was counted


async def test_the_usage_of_a_real_campaign_agrees_with_its_report(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    async with running_server(data, coap_port=0, vault=Vault.open(data / "vault.key"), campaign_tick=0.2,
                              request_timeout=20.0, campaign_job_timeout=60.0) as srv:
        assert srv.campaigns is not None and srv.usage is not None
        store = srv.usage.view  # the server's own meter, on the server's event bus (reads flush it first)
        first_day = day_of(time.time())
        v2 = srv.campaigns.releases.create([("app.bin", bytes(range(256)) * 16)], vendor="acme.example",
                                           class_name="sensor", version="2.0.0", now=time.time(), tenant_id="default")
        key = srv.campaigns.keys.get_or_create("release", "release", tenant_id="default", now=time.time())
        anchor = load_public_key(key.public_pem.encode() if isinstance(key.public_pem, str) else key.public_pem)
        endpoints = [f"u-{i}" for i in range(4)]

        def options_for(i: int) -> dict[str, Any]:
            return {"firmware": FirmwareOptions(trust_anchors=(anchor,), vendor_id=v2.vendor_id,
                                                class_id=v2.class_id, version="1.0.0"),
                    "faults": Faults(fail_boot=i == 3)}

        fleet = Fleet(srv.coap_uri, 4, prefix="u-", lifetime=600, concurrency=4, drift_interval=0,
                      options_for=options_for)
        try:
            await asyncio.wait_for(fleet.start(timeout_per_device=30), 60)
            await eventually(lambda: fleet.status.registered == 4, timeout=30)
            status = await srv.campaigns.create([v2.id], tenant_id="default", targets=endpoints,
                                                policy=Policy(canary=1, waves=1, max_parallel=4,
                                                              success_threshold=0.5, error_threshold=1.0))
            cid = status["id"]
            await srv.campaigns.start_campaign(cid, tenant_id="default")
            await eventually(lambda: srv.campaigns.status(cid, tenant_id="default")["report_ready"],  # type: ignore[union-attr]
                             timeout=120, interval=0.2)
            report, cose = srv.campaigns.report(cid, tenant_id="default")
            public = load_public_key(srv.campaigns.attestation_public_pem(tenant_id="default").encode())
            assert attestation.verify_report(cose, public) == report
        finally:
            await fleet.stop(deregister=False)

        last_day = day_of(time.time())
        days = [first_day] if last_day == first_day else [first_day, last_day]  # a run across midnight
        total = sum((store.counts(tenant_id="default", day=d) for d in days), DayCounts())
        summary = report["summary"]
        assert summary["targets"] == 4 and summary["succeeded"] == 3 and summary["rolled-back"] == 1, summary
        package = srv.campaigns.releases.package(v2.id, tenant_id="default")
        assert total.campaigns_started == total.campaigns_finished == 1
        assert total.deliveries_succeeded == summary["succeeded"]
        assert total.deliveries_failed == summary["rolled-back"] + summary["failed"]
        assert total.deliveries_started == total.deliveries_succeeded + total.deliveries_failed
        assert total.bytes_delivered == 4 * len(package)  # the device that rolled back got its package too
        assert total.devices_registered == 4  # a reboot's registration is the same device

        sealed = store.seal(tenant_id="default", now=day_start(last_day) + 86400)
        assert [d.day for d in sealed] == days and verify(sealed) == []
        assert sum((d.counts for d in sealed), DayCounts()) == total


class Statements:
    """Counts the statements (cursor executions) and transactions a SQLAlchemy engine runs."""

    def __init__(self, db: Database) -> None:
        self.statements = self.transactions = 0
        event.listen(db.engine, "before_cursor_execute", self._statement)
        event.listen(db.engine, "begin", self._begin)

    def _statement(self, *args: Any) -> None:
        self.statements += 1

    def _begin(self, *args: Any) -> None:
        self.transactions += 1


REFUSE = "CREATE TRIGGER refuse BEFORE INSERT ON usage_endpoint BEGIN SELECT RAISE(ABORT, 'refused'); END"


def refuse_endpoints(db: Database, refuse: bool) -> None:
    """A real database failure: while on, inserting into usage_endpoint fails (the whole transaction with it)."""
    with db.engine.begin() as c:
        c.execute(text(REFUSE if refuse else "DROP TRIGGER refuse"))


def test_a_burst_of_registrations_is_written_in_one_transaction(tmp_path: Path) -> None:
    now = [day_start(DAY) + 3600.0]
    bus = EventBus()
    with Database.for_data_dir(tmp_path / "data") as db:
        store = SqlUsageStore(db)
        meter = UsageMeter(store, writer(db, bus, lambda: now[0]), clock=lambda: now[0], batch=25_000)
        seen = Statements(db)
        for i in range(10_000):
            bus.emit("registration.registered", now[0], tenant_id="op", endpoint=f"ep-{i}")
            bus.emit("registration.registered", now[0], tenant_id="op", endpoint=f"ep-{i}")  # a repeat: not written
        bus.emit("firmware.started", now[0], tenant_id="op", endpoint="ep-1")
        assert seen.statements == 0 and meter.pending == 10_001
        meter.flush()
        # the outbox written: the 10,000 first registrations as rows of REGISTRATIONS_PER_ROW endpoints, and the
        # one firmware event (one executemany per batch), then counted and marked in one transaction (its
        # endpoint look-ups and its UPDATE of the outbox rows in IN lists of 500)
        rows = -(-10_000 // outbox.REGISTRATIONS_PER_ROW) + 1
        written = -(-rows // outbox.BATCH)
        assert seen.transactions == written + 1 and seen.statements <= written + 100, vars(seen)
        assert meter.pending == 0
        meter.flush()  # nothing pending: only the look for unmetered rows
        assert seen.transactions == written + 2 and meter.pending == 0
        with db.engine.connect() as c:
            assert c.exec_driver_sql("SELECT count(*) FROM event_outbox").scalar() == rows
        assert store.counts(tenant_id="op", day=DAY) == DayCounts(devices_registered=10_000, deliveries_started=1)
        now[0] += 86_400  # the next day: the same endpoints are written (and counted) again
        bus.emit("registration.registered", now[0], tenant_id="op", endpoint="ep-1")
        bus.emit("registration.registered", now[0], tenant_id="op", endpoint="ep-1")
        assert meter.pending == 1
        meter.close()


def test_a_refused_flush_keeps_its_counts_and_the_next_writes_them_once(tmp_path: Path) -> None:
    now = [day_start(DAY) + 3600.0]
    bus = EventBus()
    with Database.for_data_dir(tmp_path / "data") as db:
        store = SqlUsageStore(db)
        meter = UsageMeter(store, writer(db, bus, lambda: now[0]), clock=lambda: now[0])
        bus.emit("registration.registered", now[0], tenant_id="op", endpoint="a")
        bus.emit("firmware.started", now[0], tenant_id="op", endpoint="a")
        refuse_endpoints(db, True)
        with pytest.raises(StorageError):
            meter.flush()
        assert store.counts(tenant_id="op", day=DAY) == DayCounts()  # all or nothing
        bus.emit("registration.registered", now[0], tenant_id="op", endpoint="a")  # written already: not again
        bus.emit("registration.registered", now[0], tenant_id="op", endpoint="b")
        bus.emit("firmware.started", now[0], tenant_id="op", endpoint="b")
        with pytest.raises(StorageError):
            meter.close()  # the last flush fails too: close raises
        assert len(SqlOutboxStore(db).unmetered(limit=10)) == 4  # all there, none counted
        refuse_endpoints(db, False)
        meter.flush()
        meter.flush()
        assert store.counts(tenant_id="op", day=DAY) == DayCounts(devices_registered=2, deliveries_started=2)


def test_sealing_writes_what_is_pending_first(tmp_path: Path) -> None:
    now = [day_start(DAY) + 3600.0]
    bus = EventBus()
    with Database.for_data_dir(tmp_path / "data") as db:
        store = SqlUsageStore(db)
        meter = UsageMeter(store, writer(db, bus, lambda: now[0]), clock=lambda: now[0], seal_grace=60.0)
        bus.emit("registration.registered", now[0], tenant_id="op", endpoint="a")
        now[0] = day_start(next_day(DAY)) + 61  # past midnight and the grace, no event since
        sealed = meter.seal()
        assert [(d.day, d.devices_registered) for d in sealed] == [(DAY, 1)] and verify(sealed) == []

        bus.emit("firmware.started", now[0], tenant_id="op", endpoint="a")
        now[0] = day_start(next_day(next_day(DAY))) + 61
        meter.flush()  # a flush past the next midnight writes, then seals
        days = store.days(tenant_id="op")
        assert [(d.day, d.deliveries_started) for d in days] == [(DAY, 0), (next_day(DAY), 1)]
        assert verify(days) == []
        meter.close()


async def test_the_run_loop_retries_until_the_database_takes_the_counts(tmp_path: Path) -> None:
    bus = EventBus()
    with Database.for_data_dir(tmp_path / "data") as db:
        store = SqlUsageStore(db)
        meter = UsageMeter(store, writer(db, bus), flush_interval=0.01, max_retry_delay=0.05)
        task = asyncio.create_task(meter.run())
        try:
            today = day_of(time.time())
            refuse_endpoints(db, True)
            for ep in ("a", "b", "a"):
                bus.emit("registration.registered", time.time(), tenant_id="op", endpoint=ep)
            bus.emit("campaign.started", time.time(), tenant_id="op")
            seen = Statements(db)
            # written to the outbox (the writer's buffer empty), counting it refused (one pending: the failed count)
            await eventually(lambda: meter.pending == 1 and seen.transactions >= 2)
            tried = seen.transactions
            await eventually(lambda: seen.transactions > tried)  # tried again, refused again
            unmetered = SqlOutboxStore(db).unmetered(limit=10)  # one row for a and b's registrations, the campaign
            kinds = {r.kind: r for r in unmetered}
            assert meter.pending == 1 and len(unmetered) == 2 and set(kinds) == {usage.REGISTRATIONS_SEEN,
                                                                                 "campaign.started"}
            assert kinds[usage.REGISTRATIONS_SEEN].data == {"endpoints": ["a", "b"]}
            refuse_endpoints(db, False)
            await eventually(lambda: meter.pending == 0)
            days = {today, day_of(time.time())}  # a run across midnight
            total = sum((store.counts(tenant_id="op", day=d) for d in days), DayCounts())
            assert total == DayCounts(devices_registered=2, campaigns_started=1)
        finally:
            meter.close()
            await asyncio.wait_for(task, 5)

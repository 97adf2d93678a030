"""RegistrationService over the real stores (memory, and SQL on a SQLite file): no mocks.

Time is an injected mutable clock; write-behind is driven by ``await service.flush()`` (or ``run()``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import SQLModel

from lwm2m_server.core.codec.link import Link
from lwm2m_server.core.errors import CoapCode, StorageError, UnknownRegistrationError
from lwm2m_server.core.registration import RegisterParams, Registration, UpdateParams, parse_register
from lwm2m_server.events import Event, EventBus
from lwm2m_server.registry.service import RegistrationService, RegistryFullError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.memory import MemoryDeviceStore, MemoryRegistrationStore
from lwm2m_server.storage.sql import SqlDeviceStore, SqlRegistrationStore
from lwm2m_server.storage.stores import DeviceRecord, DeviceStore, RegistrationStore

T0 = 1_700_000_000.0


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Stores:
    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind, self.data_dir = kind, data_dir
        self.db: Database | None = None
        self.registrations: RegistrationStore
        self.devices: DeviceStore
        self.open()

    def open(self) -> None:
        if self.kind == "memory":
            self.registrations, self.devices = MemoryRegistrationStore(), MemoryDeviceStore()
        else:
            self.db = Database.for_data_dir(self.data_dir)
            self.registrations, self.devices = SqlRegistrationStore(self.db), SqlDeviceStore(self.db)

    def restart(self) -> None:
        """What a server restart does to the stores (memory stores survive only as objects)."""
        if self.db is not None:
            self.db.close()
            self.open()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


@pytest.fixture(params=["memory", "sql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    s = Stores(request.param, tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def sql_stores(tmp_path: Path) -> Iterator[Stores]:
    s = Stores("sql", tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def events(bus: EventBus) -> list[Event]:
    got: list[Event] = []
    bus.subscribe(got.append)
    return got


def sequential_ids(prefix: str = "r") -> Iterator[str]:
    return (f"{prefix}{i}" for i in itertools.count(1))


def make_service(stores: Stores, bus: EventBus, clock: Clock, **kw: object) -> RegistrationService:
    ids = sequential_ids(str(kw.pop("prefix", "r")))
    kw.setdefault("id_factory", lambda: next(ids))
    return RegistrationService(stores.registrations, stores.devices, bus, clock, **kw)  # type: ignore[arg-type]


def params(endpoint: str = "dev-1", lifetime: int = 60, **kw: object) -> RegisterParams:
    return RegisterParams(endpoint, lifetime, **kw)  # type: ignore[arg-type]


LINKS = parse_register(["ep=x"], b'</>;rt="oma.lwm2m";ct="60 110",</1/0>,</3/0>;ver=1.1,</5/0>').links


def kinds(events: list[Event]) -> list[tuple[str, str | None, object]]:
    return [(e.kind, e.endpoint, e.data.get("id")) for e in events]


# ---------------------------------------------------------------- register / update / deregister


def test_register_creates_a_live_registration(stores: Stores, bus: EventBus, clock: Clock,
                                              events: list[Event]) -> None:
    svc = make_service(stores, bus, clock, node_id="node-a")
    remote = object()
    reg = svc.register(params(lifetime=120, links=LINKS, lwm2m_version="1.1"), address="10.0.0.1:5684",
                       remote=remote, secure=True, identity="psk-1", tenant_id="default")
    assert reg.id == "r1"
    assert (reg.endpoint, reg.lifetime, reg.lwm2m_version, reg.address) == ("dev-1", 120, "1.1", "10.0.0.1:5684")
    assert (reg.registered_at, reg.updated_at, reg.node_id, reg.tenant_id) == (T0, T0, "node-a", "default")
    assert reg.remote is remote and reg.secure and reg.identity == "psk-1"
    assert reg.links == LINKS
    assert svc.get("r1") is reg
    assert svc.by_endpoint("dev-1", tenant_id="default") is reg
    assert svc.all() == [reg] and svc.count() == 1
    assert svc.expires_at(reg) == T0 + 120 + 10
    assert events == [Event("registration.registered", T0, "default", "dev-1", {
        "id": "r1", "address": "10.0.0.1:5684", "lifetime": 120, "lwm2m_version": "1.1", "binding": "U",
        "queue_mode": False, "secure": True, "identity": "psk-1", "node_id": "node-a", "replaced": None})]


def test_update_refreshes_and_keeps_or_replaces_the_remote(stores: Stores, bus: EventBus, clock: Clock,
                                                           events: list[Event]) -> None:
    svc = make_service(stores, bus, clock)
    first_remote = object()
    reg = svc.register(params(links=LINKS), address="a:1", remote=first_remote, tenant_id="default")
    clock.now += 30
    upd = svc.update(reg.id, UpdateParams(lifetime=300), address="a:2", remote=None)
    assert (upd.lifetime, upd.updated_at, upd.registered_at, upd.address) == (300, T0 + 30, T0, "a:2")
    assert upd.remote is first_remote  # None keeps the live handle
    new_remote = object()
    clock.now += 1
    upd2 = svc.update(reg.id, UpdateParams(links=(Link("/3/0"),), binding="UQ"), address="b:1", remote=new_remote)
    assert upd2.remote is new_remote and upd2.links == (Link("/3/0"),) and upd2.binding == "UQ"
    assert svc.get(reg.id) is upd2 and svc.by_endpoint("dev-1", tenant_id="default") is upd2
    assert [e.kind for e in events] == ["registration.registered", "registration.updated", "registration.updated"]
    assert events[1].data["lifetime"] == 300 and events[1].data["links_changed"] is False
    assert events[2].data["links_changed"] is True


def test_unknown_registration_is_4_04(stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(stores, bus, clock)
    with pytest.raises(UnknownRegistrationError) as info:
        svc.update("nope", UpdateParams(), address="x", remote=None)
    assert info.value.coap_code == CoapCode.NOT_FOUND and info.value.coap_code.dotted == "4.04"
    with pytest.raises(UnknownRegistrationError):
        svc.deregister("nope")
    assert svc.get("nope") is None and svc.by_endpoint("nope", tenant_id="default") is None


def test_deregister(stores: Stores, bus: EventBus, clock: Clock, events: list[Event]) -> None:
    svc = make_service(stores, bus, clock)
    reg = svc.register(params(), address="a", remote=None, tenant_id="default")
    clock.now += 5
    gone = svc.deregister(reg.id)
    assert gone == reg
    assert svc.get(reg.id) is None and svc.by_endpoint("dev-1", tenant_id="default") is None and svc.count() == 0
    with pytest.raises(UnknownRegistrationError):
        svc.deregister(reg.id)
    assert kinds(events) == [("registration.registered", "dev-1", "r1"),
                             ("registration.deregistered", "dev-1", "r1")]
    assert events[1].data["reason"] == "requested" and events[1].at == T0 + 5


def test_register_again_replaces_the_old_registration(stores: Stores, bus: EventBus, clock: Clock,
                                                      events: list[Event]) -> None:
    svc = make_service(stores, bus, clock)
    old = svc.register(params(), address="a", remote=None, tenant_id="default")
    svc.register(params(endpoint="other"), address="o", remote=None, tenant_id="default")
    new = svc.register(params(lifetime=90), address="b", remote=None, tenant_id="default")
    assert new.id != old.id
    assert svc.by_endpoint("dev-1", tenant_id="default") is new and svc.count() == 2
    with pytest.raises(UnknownRegistrationError):  # the old id stops working
        svc.update(old.id, UpdateParams(), address="a", remote=None)
    assert kinds(events) == [
        ("registration.registered", "dev-1", "r1"),
        ("registration.registered", "other", "r2"),
        ("registration.deregistered", "dev-1", "r1"),
        ("registration.registered", "dev-1", "r3"),
    ]
    assert events[2].data == {"id": "r1", "reason": "replaced", "replaced_by": "r3"}
    assert events[3].data["replaced"] == "r1"


def test_id_factory_collisions_are_skipped(stores: Stores, bus: EventBus, clock: Clock) -> None:
    ids = iter(["same", "same", "same", "next"])
    svc = RegistrationService(stores.registrations, stores.devices, bus, clock, id_factory=lambda: next(ids))
    assert svc.register(params("a"), address="", remote=None, tenant_id="default").id == "same"
    assert svc.register(params("b"), address="", remote=None, tenant_id="default").id == "next"


def test_default_ids_are_short_and_url_safe(stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = RegistrationService(stores.registrations, stores.devices, bus, clock)
    got = {svc.register(params(f"e{i}"), address="", remote=None, tenant_id="default").id for i in range(200)}
    assert len(got) == 200
    assert all(len(i) == 8 and all(c.isalnum() or c in "-_" for c in i) for i in got)


def test_failing_subscriber_does_not_break_the_service(stores: Stores, bus: EventBus, clock: Clock) -> None:
    def broken(_e: Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(broken)
    svc = make_service(stores, bus, clock)
    reg = svc.register(params(), address="a", remote=None, tenant_id="default")
    svc.update(reg.id, UpdateParams(), address="a", remote=None)
    svc.deregister(reg.id)
    assert svc.count() == 0


def test_subscriber_may_call_back_into_the_service(stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(stores, bus, clock)
    bus.subscribe(lambda e: svc.deregister(str(e.data["id"])) if e.endpoint == "evil" else None,
                  "registration.registered")
    svc.register(params("evil"), address="a", remote=None, tenant_id="default")
    svc.register(params("good"), address="a", remote=None, tenant_id="default")
    assert [r.endpoint for r in svc.all()] == ["good"]


def test_identical_object_links_are_shared(stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(stores, bus, clock)
    a = svc.register(params("a", links=parse_register(["ep=a"], b"</1/0>,</3/0>,</5/0>").links), address="",
                     remote=None, tenant_id="default")
    b = svc.register(params("b", links=parse_register(["ep=b"], b"</1/0>,</3/0>,</5/0>").links), address="",
                     remote=None, tenant_id="default")
    assert a.links is b.links
    c = svc.update(b.id, UpdateParams(links=parse_register(["ep=b"], b"</1/0>,</3/0>,</5/0>").links),
                   address="", remote=None)
    assert c.links is a.links


# ---------------------------------------------------------------- tenants


def test_tenant_scoping(stores: Stores, bus: EventBus, clock: Clock, events: list[Event]) -> None:
    svc = make_service(stores, bus, clock)
    d = svc.register(params("shared"), address="a", remote=None, tenant_id="default")
    a = svc.register(params("shared"), address="b", remote=None, tenant_id="acme")
    assert d.id != a.id and svc.count() == 2
    assert svc.by_endpoint("shared", tenant_id="default") is d and svc.by_endpoint("shared", tenant_id="acme") is a
    assert svc.by_endpoint("shared", tenant_id="nobody") is None
    assert svc.all("acme") == [a] and svc.all("default") == [d] and svc.all("nobody") == []
    assert svc.count("acme") == 1 and svc.count("nobody") == 0
    assert [e.kind for e in events] == ["registration.registered"] * 2  # no replacement across tenants
    assert events[1].tenant_id == "acme"
    svc.deregister(a.id)
    assert svc.by_endpoint("shared", tenant_id="default") is d and svc.count("acme") == 0


async def test_tenant_rows_are_persisted_separately(stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(stores, bus, clock)
    svc.register(params("shared"), address="a", remote=None, tenant_id="default")
    svc.register(params("shared"), address="b", remote=None, tenant_id="acme")
    await svc.flush()
    assert len(stores.registrations.load_all()) == 2
    assert [d.tenant_id for d in stores.devices.list(tenant_id=None)] == ["acme", "default"]


# ---------------------------------------------------------------- expiry


def test_expiry_with_grace(stores: Stores, bus: EventBus, clock: Clock, events: list[Event]) -> None:
    svc = make_service(stores, bus, clock)
    short = svc.register(params("short", lifetime=60), address="", remote=None,
                         tenant_id="default")  # grace: the 10 s floor
    long = svc.register(params("long", lifetime=86400), address="", remote=None,
                        tenant_id="default")  # grace: 5 % = 4320 s
    assert svc.expires_at(short) == T0 + 70 and svc.expires_at(long) == T0 + 86400 + 4320
    assert svc.expire_due(T0 + 70) == []  # expired means strictly past expires_at
    assert svc.expire_due(T0 + 70.5) == [short]
    assert svc.get(short.id) is None and svc.by_endpoint("short", tenant_id="default") is None
    assert svc.expire_due(T0 + 86400 + 4000) == []
    assert svc.expire_due(T0 + 86400 + 4321) == [long]
    assert svc.count() == 0
    expired = [e for e in events if e.kind == "registration.expired"]
    assert [(e.endpoint, e.at) for e in expired] == [("short", T0 + 70.5), ("long", T0 + 86400 + 4321)]
    assert expired[0].data == {"id": short.id, "expired_at": T0 + 70, "updated_at": T0}


def test_update_postpones_expiry_and_stale_heap_entries_are_skipped(stores: Stores, bus: EventBus,
                                                                     clock: Clock) -> None:
    svc = make_service(stores, bus, clock)
    reg = svc.register(params(lifetime=60), address="", remote=None, tenant_id="default")
    for _ in range(5):
        clock.now += 50
        svc.update(reg.id, UpdateParams(), address="", remote=None)
    assert svc.expire_due(clock.now + 69) == []
    clock.now += 30
    svc.update(reg.id, UpdateParams(lifetime=10), address="", remote=None)  # shorter: expires sooner
    assert svc.expire_due(clock.now + 19) == []
    assert [r.id for r in svc.expire_due(clock.now + 21)] == [reg.id]
    assert svc.expire_due(clock.now + 10_000) == []  # every remaining heap entry is stale


def test_update_or_deregister_after_expiry_is_4_04_even_before_the_sweep(stores: Stores, bus: EventBus,
                                                                         clock: Clock, events: list[Event]) -> None:
    svc = make_service(stores, bus, clock)
    a = svc.register(params("a", lifetime=60), address="", remote=None, tenant_id="default")
    b = svc.register(params("b", lifetime=60), address="", remote=None, tenant_id="default")
    clock.now += 71
    with pytest.raises(UnknownRegistrationError):
        svc.update(a.id, UpdateParams(), address="", remote=None)
    assert svc.count() == 0  # that sweep expired both
    with pytest.raises(UnknownRegistrationError):
        svc.deregister(b.id)
    assert sorted(e.endpoint or "" for e in events if e.kind == "registration.expired") == ["a", "b"]


def test_grace_is_configurable(stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(stores, bus, clock, grace=0.0, grace_ratio=0.0)
    reg = svc.register(params(lifetime=60), address="", remote=None, tenant_id="default")
    assert svc.expires_at(reg) == T0 + 60 and svc.grace_for(1000) == 0
    with pytest.raises(ValueError):
        make_service(stores, bus, clock, grace=-1.0)


def test_heap_stays_bounded_under_many_updates(stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(stores, bus, clock)
    regs = [svc.register(params(f"e{i}", lifetime=86400), address="", remote=None,
                         tenant_id="default") for i in range(10)]
    for _ in range(1000):
        clock.now += 1
        for r in regs:
            svc.update(r.id, UpdateParams(), address="", remote=None)
    assert len(svc._heap) <= 2 * 10 + 1024 + 1
    assert svc.expire_due(clock.now + 86400 + 4320 - 1) == []
    assert len(svc.expire_due(clock.now + 86400 + 4321)) == 10


def test_ten_thousand_registrations_register_update_and_expire(stores: Stores, bus: EventBus,
                                                               clock: Clock) -> None:
    counts: dict[str, int] = {}
    bus.subscribe(lambda e: counts.__setitem__(e.kind, counts.get(e.kind, 0) + 1))
    svc = make_service(stores, bus, clock)
    n = 10_000
    regs = [svc.register(params(f"urn:dev:{i:05d}", lifetime=60 + i % 20, links=LINKS), address=f"h{i}",
                         remote=None, tenant_id="default") for i in range(n)]
    assert svc.count() == n
    clock.now += 30
    for r in regs[::2]:  # half of them send an Update
        svc.update(r.id, UpdateParams(), address=r.address, remote=None)
    assert svc.expire_due(T0 + 70) == []
    first = svc.expire_due(T0 + 90)  # every one that did not update: they expire in T0 + 70 .. T0 + 89
    assert len(first) == n // 2
    assert {r.id for r in first} == {r.id for r in regs[1::2]}
    assert svc.count() == n // 2
    assert svc.expire_due(T0 + 100) == []  # the updated ones expire in T0 + 100 .. T0 + 119
    assert len(svc.expire_due(T0 + 120)) == n // 2
    assert svc.count() == 0
    assert counts == {"registration.registered": n, "registration.updated": n // 2, "registration.expired": n}


# ---------------------------------------------------------------- write-behind persistence


async def test_flush_persists_registrations_and_devices(stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(stores, bus, clock, node_id="n1")
    reg = svc.register(params(links=LINKS, lwm2m_version="1.1"), address="a:1", remote=object(), secure=True,
                       identity="id-1", tenant_id="default")
    assert stores.registrations.load_all() == []  # write-behind: nothing written yet
    clock.now += 10
    svc.update(reg.id, UpdateParams(lifetime=100), address="a:2", remote=None)
    svc.update(reg.id, UpdateParams(sms="+1"), address="a:3", remote=None)
    assert svc.pending_count == 1  # coalesced per registration id
    await svc.flush()
    assert svc.pending_count == 0
    stored = stores.registrations.get(reg.id)
    live = svc.get(reg.id)
    assert stored is not None and live is not None
    assert stored == live and stored.remote is None and live.remote is not None
    assert (stored.lifetime, stored.sms, stored.address, stored.node_id) == (100, "+1", "a:3", "n1")
    assert stores.devices.get("dev-1", tenant_id="default") == DeviceRecord("dev-1", "default", T0, T0 + 10, "a:3",
                                                                            "1.1", 1)
    svc.deregister(reg.id)
    await svc.flush()
    assert stores.registrations.load_all() == []
    assert stores.devices.get("dev-1", tenant_id="default") == DeviceRecord("dev-1", "default", T0, T0 + 10, "a:3",
                                                                            "1.1", 1)


async def test_replacement_and_expiry_are_persisted(stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(stores, bus, clock)
    svc.register(params(), address="a", remote=None, tenant_id="default")
    await svc.flush()
    clock.now += 1
    new = svc.register(params(), address="b", remote=None,
                       tenant_id="default")  # replaces: delete + insert in one batch
    short = svc.register(params("short", lifetime=1), address="c", remote=None, tenant_id="default")
    await svc.flush()
    assert {r.id for r in stores.registrations.load_all()} == {new.id, short.id}
    assert stores.registrations.by_endpoint("dev-1", tenant_id="default") == new
    device = stores.devices.get("dev-1", tenant_id="default")
    assert device is not None and device.registration_count == 2 and device.last_address == "b"
    svc.expire_due(clock.now + 12)
    await svc.flush()
    assert [r.id for r in stores.registrations.load_all()] == [new.id]


async def test_register_then_deregister_before_flush_writes_nothing_but_counts_the_device(
        stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(stores, bus, clock)
    reg = svc.register(params(), address="a", remote=None, tenant_id="default")
    svc.deregister(reg.id)
    await svc.flush()
    assert stores.registrations.load_all() == []
    device = stores.devices.get("dev-1", tenant_id="default")
    assert device is not None and device.registration_count == 1


async def test_restart_reloads_live_registrations(stores: Stores, bus: EventBus, clock: Clock,
                                                  events: list[Event]) -> None:
    svc = make_service(stores, bus, clock, node_id="node-a")
    kept = svc.register(params("kept", lifetime=3600, links=LINKS), address="a:1", remote=object(), tenant_id="default")
    short = svc.register(params("short", lifetime=60), address="b:1", remote=object(), tenant_id="default")
    left = svc.register(params("left"), address="c:1", remote=object(), tenant_id="default")
    svc.deregister(left.id)
    await svc.close()

    stores.restart()
    clock.now += 600  # "short" expired while the server was down
    events.clear()
    svc2 = make_service(stores, bus, clock, node_id="node-b", prefix="s")
    assert svc2.count() == 2
    loaded = svc2.get(kept.id)
    assert loaded is not None and loaded == kept and loaded.remote is None
    assert svc2.by_endpoint("kept", tenant_id="default") == kept
    # the device's Update after the restart is accepted and brings its new remote
    remote = object()
    upd = svc2.update(kept.id, UpdateParams(), address="a:9", remote=remote)
    assert upd.remote is remote and upd.node_id == "node-b" and upd.address == "a:9"
    assert [r.id for r in svc2.expire_due(clock.now)] == [short.id]
    with pytest.raises(UnknownRegistrationError):
        svc2.update(left.id, UpdateParams(), address="", remote=None)
    # a re-registration of a reloaded endpoint replaces it, and persists without a conflict
    again = svc2.register(params("kept"), address="a:10", remote=object(), tenant_id="default")
    await svc2.close()
    assert [r.id for r in stores.registrations.load_all()] == [again.id]
    assert [e.kind for e in events] == ["registration.updated", "registration.expired",
                                        "registration.deregistered", "registration.registered"]
    assert svc2.load() == 1  # nothing pending: a reload is safe ...
    reloaded = svc2.get(again.id)
    assert reloaded is not None and reloaded.remote is not None  # ... and keeps the live handles
    svc2.update(again.id, UpdateParams(), address="a:11", remote=None)
    with pytest.raises(RuntimeError):
        svc2.load()  # ... but not while changes wait to be written


async def test_ten_thousand_registrations_flush_and_reload(sql_stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(sql_stores, bus, clock)
    n = 10_000
    for i in range(n):
        svc.register(params(f"urn:dev:{i:05d}", links=LINKS), address=f"h{i}", remote=None, tenant_id="default")
    await svc.flush()
    assert len(sql_stores.devices.list(tenant_id="default")) == n
    sql_stores.restart()
    svc2 = make_service(sql_stores, bus, clock, prefix="s")
    assert svc2.count() == n
    assert svc2.by_endpoint("urn:dev:04242", tenant_id="default") is not None
    assert len(svc2.expire_due(clock.now + 71)) == n
    await svc2.flush()
    assert sql_stores.registrations.load_all() == []


async def test_failed_flush_keeps_changes_and_newer_wins(sql_stores: Stores, bus: EventBus, clock: Clock) -> None:
    db = sql_stores.db
    assert db is not None
    svc = make_service(sql_stores, bus, clock)
    reg = svc.register(params(), address="a", remote=None, tenant_id="default")
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE registration"))
    with pytest.raises(StorageError):
        await svc.flush()
    assert svc.pending_count == 1
    svc.update(reg.id, UpdateParams(lifetime=999), address="b", remote=None)  # newer than the failed batch
    SQLModel.metadata.create_all(db.engine)  # the database is back
    await svc.flush()
    stored = sql_stores.registrations.get(reg.id)
    assert stored is not None and (stored.lifetime, stored.address) == (999, "b")
    device = sql_stores.devices.get("dev-1", tenant_id="default")
    assert device is not None and device.registration_count == 1  # counted once despite the retry


async def test_run_flushes_periodically_retries_and_close_stops_it(sql_stores: Stores, bus: EventBus,
                                                                   clock: Clock) -> None:
    db = sql_stores.db
    assert db is not None
    svc = make_service(sql_stores, bus, clock, flush_interval=0.01, max_retry_delay=0.02)
    runner = asyncio.create_task(svc.run())
    reg = svc.register(params(), address="a", remote=None, tenant_id="default")
    for _ in range(200):
        if sql_stores.registrations.get(reg.id) is not None:
            break
        await asyncio.sleep(0.01)
    assert sql_stores.registrations.get(reg.id) is not None
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE registration"))
    other = svc.register(params("other"), address="b", remote=None, tenant_id="default")
    await asyncio.sleep(0.1)  # several failed attempts, logged, the change kept
    assert svc.pending_count == 1
    SQLModel.metadata.create_all(db.engine)
    for _ in range(500):  # pending_count drops when a write starts; the row is there when it has committed
        if sql_stores.registrations.get(other.id) is not None:
            break
        await asyncio.sleep(0.01)
    assert sql_stores.registrations.get(other.id) is not None
    assert svc.pending_count == 0
    # run() also sweeps expiry with the service clock
    clock.now += 1000
    for _ in range(200):
        if svc.count() == 0:
            break
        await asyncio.sleep(0.01)
    assert svc.count() == 0
    await svc.close()
    await asyncio.wait_for(runner, 1)
    assert sql_stores.registrations.load_all() == []


class GatedStore(MemoryRegistrationStore):
    """The memory store, with a gate a test opens to let a write through."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def apply(self, upserts: list[Registration], deletes: list[str]) -> None:  # type: ignore[override]
        self.entered.set()
        if not self.gate.wait(5):
            raise TimeoutError("gate never opened")
        super().apply(upserts, deletes)


async def test_cancelled_flush_does_not_lose_or_reorder_writes(bus: EventBus, clock: Clock) -> None:
    store, devices = GatedStore(), MemoryDeviceStore()
    ids = sequential_ids()
    svc = RegistrationService(store, devices, bus, clock, id_factory=lambda: next(ids))
    reg = svc.register(params(), address="old", remote=None, tenant_id="default")
    first = asyncio.create_task(svc.flush())
    await asyncio.to_thread(store.entered.wait, 5)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    svc.update(reg.id, UpdateParams(), address="new", remote=None)
    second = asyncio.create_task(svc.flush())  # waits for the interrupted write, then writes the newer state
    await asyncio.sleep(0.01)
    assert not second.done()
    store.gate.set()
    await asyncio.wait_for(second, 5)
    stored = store.get(reg.id)
    assert stored is not None and stored.address == "new"
    assert devices.get("dev-1", tenant_id="default") == DeviceRecord("dev-1", "default", T0, T0, "new", "1.0", 1)


def test_constructor_validation(stores: Stores, bus: EventBus, clock: Clock) -> None:
    with pytest.raises(ValueError):
        make_service(stores, bus, clock, flush_interval=0)
    svc = make_service(stores, bus, clock, load=False)
    assert svc.count() == 0


def test_registration_records_gateway_parent(stores: Stores, bus: EventBus, clock: Clock) -> None:
    svc = make_service(stores, bus, clock)
    gw = svc.register(params("gateway"), address="g", remote=None, tenant_id="default")
    child = svc.register(params("child"), address="g", remote=None, parent_id=gw.id, path_prefix="/dev1",
                         tenant_id="default")
    assert (child.parent_id, child.path_prefix) == (gw.id, "/dev1")
    assert dataclasses.replace(child, parent_id=None, path_prefix="") != child


async def test_a_row_written_elsewhere_for_the_same_endpoint_is_replaced(stores: Stores, bus: EventBus,
                                                                         clock: Clock) -> None:
    """Another node (or a stale process) left a registration of our endpoint in the database: the newest
    Register wins there too, instead of blocking the write-behind forever."""
    svc = make_service(stores, bus, clock)
    foreign = dataclasses.replace(
        Registration.create("foreign", params("dev-1"), address="x", now=T0 - 100), node_id="node-z")
    stores.registrations.apply([foreign], [])
    reg = svc.register(params("dev-1"), address="a", remote=None, tenant_id="default")
    other = svc.register(params("dev-2"), address="b", remote=None, tenant_id="default")
    await svc.flush()
    assert {r.id for r in stores.registrations.load_all()} == {reg.id, other.id}
    assert svc.pending_count == 0


# ---------------------------------------------------------------- caps: table size and lifetime


def test_lifetime_is_clamped_to_the_maximum_on_register_and_update(stores: Stores, bus: EventBus,
                                                                   clock: Clock) -> None:
    svc = make_service(stores, bus, clock, max_lifetime=3600)
    reg = svc.register(params(lifetime=2**32 - 1), address="", remote=None, tenant_id="default")
    assert reg.lifetime == 3600 and svc.expires_at(reg) == T0 + 3600 + 180  # grace: 5 % of the granted lifetime
    assert svc.update(reg.id, UpdateParams(lifetime=2**31), address="", remote=None).lifetime == 3600
    assert svc.update(reg.id, UpdateParams(lifetime=60), address="", remote=None).lifetime == 60  # below: as asked
    clock.now += 60 + 11
    assert [r.endpoint for r in svc.expire_due(clock.now)] == ["dev-1"]


def test_default_caps_are_a_day_and_100000() -> None:
    svc = RegistrationService(MemoryRegistrationStore(), MemoryDeviceStore(), EventBus(), Clock())
    assert (svc.max_lifetime, svc.max_registrations) == (86_400, 100_000)
    assert svc.register(params(lifetime=2**32 - 1), address="", remote=None, tenant_id="default").lifetime == 86_400


def test_a_full_table_refuses_new_endpoints_with_503_but_never_its_own_devices(stores: Stores, bus: EventBus,
                                                                               clock: Clock,
                                                                               events: list[Event]) -> None:
    svc = make_service(stores, bus, clock, max_registrations=3)
    regs = [svc.register(params(f"d{i}", lifetime=100 + 10 * i), address="", remote=None,
                         tenant_id="default") for i in range(3)]
    with pytest.raises(RegistryFullError) as e:
        svc.register(params("newcomer"), address="", remote=None, tenant_id="default")
    assert e.value.coap_code == CoapCode.SERVICE_UNAVAILABLE and e.value.max_age == 110  # the first expiry
    assert svc.count() == 3 and svc.by_endpoint("newcomer", tenant_id="default") is None and svc.refused_full == 1
    again = svc.register(params("d1", lifetime=60), address="", remote=None,
                         tenant_id="default")  # re-registering: replaces itself
    assert svc.count() == 3 and svc.get(regs[1].id) is None and again.endpoint == "d1"
    clock.now += 60 + 11  # d1 (60 s, +10 s grace) has expired, though expire_due has not run yet
    newcomer = svc.register(params("newcomer"), address="", remote=None, tenant_id="default")
    assert newcomer.endpoint == "newcomer"  # in its place
    assert svc.count() == 3 and svc.by_endpoint("d1", tenant_id="default") is None
    assert ("registration.expired", "d1", again.id) in kinds(events)


def test_an_authenticated_newcomer_evicts_the_unauthenticated_registration_that_expires_first(
        stores: Stores, bus: EventBus, clock: Clock, events: list[Event]) -> None:
    svc = make_service(stores, bus, clock, max_registrations=3)
    secure = svc.register(params("dtls-0", lifetime=30), address="", remote=None, secure=True, identity="i0",
                          tenant_id="default")
    late = svc.register(params("plain-late", lifetime=500), address="", remote=None, tenant_id="default")
    early = svc.register(params("plain-early", lifetime=200), address="", remote=None, tenant_id="default")
    with pytest.raises(RegistryFullError):  # unauthenticated: never takes anyone's place
        svc.register(params("plain-new"), address="", remote=None, tenant_id="default")
    new = svc.register(params("dtls-1"), address="", remote=None, secure=True, identity="i1", tenant_id="default")
    assert svc.get(early.id) is None and svc.get(late.id) is late and svc.get(secure.id) is secure
    assert svc.get(new.id) is new and svc.evicted == 1
    gone = [e for e in events if e.kind == "registration.deregistered"]
    assert [(e.endpoint, e.data["reason"], e.data["for"]) for e in gone] == [("plain-early", "evicted", "dtls-1")]
    svc.register(params("dtls-2"), address="", remote=None, secure=True, identity="i2",
                 tenant_id="default")  # evicts plain-late
    with pytest.raises(RegistryFullError):  # all three authenticated and live: nobody is evicted
        svc.register(params("dtls-3"), address="", remote=None, secure=True, identity="i3", tenant_id="default")
    assert sorted(r.endpoint for r in svc.all()) == ["dtls-0", "dtls-1", "dtls-2"]


def test_a_links_payload_seen_before_is_parsed_once_and_its_tuple_shared_within_bounds() -> None:
    from lwm2m_server.core import registration as core

    query = ["ep=memo-1", "lt=300", "lwm2m=1.1", "b=U"]
    first = core.parse_register(query, b"</1/0>,</3/0>,</5/0>")
    again = core.parse_register(["ep=memo-2"], bytearray(b"</1/0>,</3/0>,</5/0>"))
    assert again.links is first.links and [link.target for link in first.links] == ["/1/0", "/3/0", "/5/0"]
    with pytest.raises(core.RegistrationError):
        core.parse_register(query, b"</1/0>,<bad")
    with pytest.raises(core.RegistrationError):  # a refused payload is refused again: never remembered
        core.parse_register(query, b"</1/0>,<bad")
    for i in range(core.SEEN_LINKS_MAX + 10):
        core.parse_register(query, f"</1/0>,</3/0>,</{1000 + i}/0>".encode())
    assert len(core._SEEN_LINKS) == core.SEEN_LINKS_MAX
    assert b"</1/0>,</3/0>,</5/0>" not in core._SEEN_LINKS  # the oldest went first
    long = (",".join(f"</{i}/0>" for i in range(400))).encode()
    assert len(long) > core.SEEN_LINK_BYTES_MAX
    assert len(core.parse_register(query, long).links) == 400 and long not in core._SEEN_LINKS

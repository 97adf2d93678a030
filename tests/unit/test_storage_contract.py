"""One contract for every store implementation: the memory stores and the SQL stores (a real SQLite file).

A new backend joins by adding a case to the ``backend`` fixture; it must pass every test here unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from lwm2m_server.core.codec.link import Link
from lwm2m_server.core.errors import StorageError
from lwm2m_server.core.registration import Registration
from lwm2m_server.storage.database import DB_FILENAME, Database
from lwm2m_server.storage.memory import MemoryDeviceStore, MemoryRegistrationStore
from lwm2m_server.storage.sql import SqlDeviceStore, SqlRegistrationStore
from lwm2m_server.storage.stores import (
    DeviceRecord,
    DeviceSighting,
    DeviceStore,
    RegistrationStore,
    StorageConflictError,
)
from tests.store_backends import BACKENDS, database_opener


class Backend:
    """A pair of stores plus ``reopen()``: what a server restart does to them."""

    def __init__(self, kind: str, open_database: Callable[[], Database] | None) -> None:
        self.kind = kind
        self._open_database = open_database
        self.db: Database | None = None
        self.registrations: RegistrationStore
        self.devices: DeviceStore
        self._open()

    def _open(self) -> None:
        if self._open_database is None:
            self.registrations, self.devices = MemoryRegistrationStore(), MemoryDeviceStore()
        else:
            self.db = self._open_database()
            self.registrations, self.devices = SqlRegistrationStore(self.db), SqlDeviceStore(self.db)

    def reopen(self) -> None:
        """SQL: close the database and open the same file again. Memory: a store lives as long as its object."""
        if self.db is not None:
            self.db.close()
            self._open()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    b = Backend(kind, None if kind == "memory" else database_opener(request, kind, tmp_path / "data"))
    yield b
    b.close()


LINKS = (
    Link("/", (("rt", "oma.lwm2m"), ("ct", "60 110 112 11542 11543"))),
    Link("/1/0", ()),
    Link("/3/0", (("ver", "1.1"),)),
    Link("/5/0", (("title", 'fw "main" \\ slot'), ("empty", ""), ("flag", None))),
    Link("/33000/0", (("rt", "urn:oma:lwm2m:ext:33000"), ("dim", "3"))),
)


def make_reg(reg_id: str = "r1", endpoint: str = "urn:dev:ops:ünïcödé-€-1", **changes: object) -> Registration:
    reg = Registration(
        id=reg_id,
        endpoint=endpoint,
        lifetime=2**32 - 1,
        lwm2m_version="1.1",
        binding="UQS",
        queue_mode=True,
        links=LINKS,
        address="[2001:db8::1]:5684",
        registered_at=1_700_000_000.125,
        updated_at=1_700_000_123.5,
        sms="+33600000000",
        extra=(("apn", "iot.example"), ("flag", None), ("name", "capteur ∆ été"), ("empty", "")),
        tenant_id="default",
        node_id="node-a",
        parent_id="gw-7",
        path_prefix="/child/3",
        secure=True,
        identity="psk-id-ü",
        remote=object(),
    )
    return dataclasses.replace(reg, **changes) if changes else reg  # type: ignore[arg-type]


def simple_reg(reg_id: str, endpoint: str, tenant_id: str = "default") -> Registration:
    return Registration(reg_id, endpoint, 60, "1.0", "U", False, (Link("/3/0"),), "127.0.0.1:5683", 10.0, 10.0,
                        tenant_id=tenant_id)


def stored_fields(reg: Registration) -> dict[str, object]:
    return {f.name: getattr(reg, f.name) for f in dataclasses.fields(reg) if f.name not in ("remote", "_summary")}


def ids(regs: list[Registration]) -> list[str]:
    return sorted(r.id for r in regs)


# ---------------------------------------------------------------- registrations


def test_implements_the_protocols(backend: Backend) -> None:
    assert isinstance(backend.registrations, RegistrationStore)
    assert isinstance(backend.devices, DeviceStore)


def test_round_trip_of_every_field(backend: Backend) -> None:
    reg = make_reg()
    _ = reg.summary  # a cached summary is not stored, and must not break storing
    backend.registrations.apply([reg], [])
    got = backend.registrations.get(reg.id)
    assert got is not None
    assert stored_fields(got) == stored_fields(reg)
    assert got == reg
    assert got.remote is None  # the live transport handle is never persisted
    assert got.links[3].get("title") == 'fw "main" \\ slot'
    assert got.links[3].get("empty") == "" and got.links[3].has("flag") and got.links[3].get("flag") is None
    assert got.summary.formats == frozenset({60, 110, 112, 11542, 11543})


def test_round_trip_of_defaults(backend: Backend) -> None:
    reg = Registration("min", "e", 1, "1.0", "U", False, (), "", 0.0, 0.0)
    backend.registrations.apply([reg], [])
    got = backend.registrations.get("min")
    assert got is not None and stored_fields(got) == stored_fields(reg)


def test_get_unknown_is_none(backend: Backend) -> None:
    assert backend.registrations.get("nope") is None
    assert backend.registrations.by_endpoint("nope", tenant_id="default") is None
    assert backend.registrations.load_all() == []


def test_upsert_replaces_by_id(backend: Backend) -> None:
    store = backend.registrations
    store.apply([make_reg()], [])
    newer = make_reg(lifetime=300, address="10.0.0.9:1234", updated_at=1_700_000_999.0, links=(Link("/3/0"),),
                     extra=(), sms=None, node_id="node-b")
    store.apply([newer], [])
    assert store.load_all() == [newer]
    got = store.get("r1")
    assert got is not None and stored_fields(got) == stored_fields(newer)


def test_delete_and_unknown_delete(backend: Backend) -> None:
    store = backend.registrations
    store.apply([simple_reg("a", "ea"), simple_reg("b", "eb")], [])
    store.apply([], ["a", "never-existed"])
    assert ids(store.load_all()) == ["b"]
    assert store.get("a") is None
    assert store.by_endpoint("ea", tenant_id="default") is None


def test_empty_apply_is_a_no_op(backend: Backend) -> None:
    backend.registrations.apply([], [])
    assert backend.registrations.load_all() == []


def test_by_endpoint(backend: Backend) -> None:
    store = backend.registrations
    reg = make_reg()
    store.apply([reg, simple_reg("x", "other")], [])
    assert store.by_endpoint(reg.endpoint, tenant_id="default") == reg
    assert store.by_endpoint(reg.endpoint, tenant_id="acme") is None
    assert store.by_endpoint("urn:dev:ops:unicode-1", tenant_id="default") is None


def test_holders_name_the_node_of_each_stored_registration(backend: Backend) -> None:
    store = backend.registrations
    store.apply([dataclasses.replace(simple_reg("r1", "ep-1"), node_id="node-a"),
                 dataclasses.replace(simple_reg("r2", "ep-2"), node_id="node-b"),
                 dataclasses.replace(simple_reg("r3", "ep-3", tenant_id="acme"), node_id="node-c")], [])
    assert store.holders(["ep-1", "ep-2", "ep-3", "ep-9", "ep-1"], tenant_id="default") == {
        "ep-1": "node-a", "ep-2": "node-b"}  # another tenant's and unknown endpoints: absent
    store.apply([dataclasses.replace(simple_reg("r4", "ep-1"), node_id="node-b")], ["r1"])  # the device moved to node-b
    assert store.holders(["ep-1"], tenant_id="default") == {"ep-1": "node-b"}
    assert store.holders([], tenant_id="default") == {}


def test_tenant_scoping_same_endpoint_two_tenants(backend: Backend) -> None:
    store = backend.registrations
    a = simple_reg("a", "shared-ep", tenant_id="default")
    b = simple_reg("b", "shared-ep", tenant_id="acme")
    store.apply([a, b], [])
    assert ids(store.load_all()) == ["a", "b"]
    assert ids(store.load_all("default")) == ["a"]
    assert ids(store.load_all("acme")) == ["b"]
    assert store.load_all("nobody") == []
    assert store.by_endpoint("shared-ep", tenant_id="default") == a
    assert store.by_endpoint("shared-ep", tenant_id="acme") == b
    store.apply([], ["a"])
    assert store.by_endpoint("shared-ep", tenant_id="default") is None
    assert store.by_endpoint("shared-ep", tenant_id="acme") == b


def test_replacing_registration_in_one_batch(backend: Backend) -> None:
    """The old registration of an endpoint deleted and the new one inserted together: no conflict."""
    store = backend.registrations
    store.apply([simple_reg("old", "ep")], [])
    store.apply([simple_reg("new", "ep")], ["old"])
    assert ids(store.load_all()) == ["new"]
    assert store.by_endpoint("ep", tenant_id="default") == simple_reg("new", "ep")


def test_atomicity_conflicting_batch_applies_nothing(backend: Backend) -> None:
    store = backend.registrations
    existing = simple_reg("z", "taken")
    doomed = simple_reg("gone", "doomed")
    store.apply([existing, doomed], [])
    fresh = simple_reg("x", "fresh")
    intruder = simple_reg("y", "taken")  # second upsert: endpoint already registered as "z"
    with pytest.raises(StorageError) as info:
        store.apply([fresh, intruder], ["gone"])
    assert isinstance(info.value, StorageConflictError)
    assert ids(store.load_all()) == ["gone", "z"]  # neither the delete nor the first upsert happened
    assert store.get("x") is None
    assert store.by_endpoint("taken", tenant_id="default") == existing
    assert store.by_endpoint("doomed", tenant_id="default") == doomed


def test_two_upserts_for_one_endpoint_in_a_batch_conflict(backend: Backend) -> None:
    store = backend.registrations
    with pytest.raises(StorageConflictError):
        store.apply([simple_reg("a", "ep"), simple_reg("b", "ep")], [])
    assert store.load_all() == []


def test_same_id_twice_in_a_batch_last_wins(backend: Backend) -> None:
    store = backend.registrations
    first = simple_reg("a", "ep1")
    second = dataclasses.replace(simple_reg("a", "ep2"), lifetime=99)
    store.apply([first, second], [])
    assert store.load_all() == [second]
    assert store.by_endpoint("ep1", tenant_id="default") is None


def test_endpoint_of_an_id_can_change_and_frees_the_old_name(backend: Backend) -> None:
    store = backend.registrations
    store.apply([simple_reg("a", "ep1")], [])
    store.apply([simple_reg("a", "ep2")], [])
    assert store.by_endpoint("ep1", tenant_id="default") is None
    store.apply([simple_reg("b", "ep1")], [])
    assert ids(store.load_all()) == ["a", "b"]


def test_reopening_gives_the_same_data(backend: Backend) -> None:
    regs = [make_reg(), simple_reg("b", "eb"), simple_reg("c", "eb", tenant_id="acme")]
    backend.registrations.apply(regs, [])
    backend.devices.upsert_seen([DeviceSighting("eb", "default", 5.0, "1.1.1.1:1", "1.1", 1)])
    backend.reopen()
    got = {r.id: r for r in backend.registrations.load_all()}
    assert {k: stored_fields(v) for k, v in got.items()} == {r.id: stored_fields(r) for r in regs}
    assert all(r.remote is None for r in got.values())
    assert backend.devices.get("eb", tenant_id="default") == DeviceRecord("eb", "default", 5.0, 5.0, "1.1.1.1:1",
                                                                          "1.1", 1)


async def test_apply_from_a_worker_thread(backend: Backend) -> None:
    await asyncio.to_thread(backend.registrations.apply, [simple_reg("t", "threaded")], [])
    assert (await asyncio.to_thread(backend.registrations.get, "t")) == simple_reg("t", "threaded")


def test_many_rows_in_one_batch(backend: Backend) -> None:
    store = backend.registrations
    regs = [simple_reg(f"id{i}", f"ep{i}") for i in range(1200)]  # more than one IN (...) chunk
    store.apply(regs, [])
    assert len(store.load_all()) == 1200
    store.apply([], [r.id for r in regs[:1100]])
    assert ids(store.load_all()) == sorted(r.id for r in regs[1100:])


# ---------------------------------------------------------------- devices


def test_device_first_sighting_creates_it(backend: Backend) -> None:
    backend.devices.upsert_seen([DeviceSighting("dév-1", "default", 100.0, "10.0.0.1:5683", "1.1", 1)])
    assert backend.devices.get("dév-1", tenant_id="default") == DeviceRecord("dév-1", "default", 100.0, 100.0,
                                                                            "10.0.0.1:5683", "1.1", 1)
    assert backend.devices.get("dév-1", tenant_id="acme") is None
    assert backend.devices.get("unknown", tenant_id="default") is None


def test_device_sightings_accumulate(backend: Backend) -> None:
    devices = backend.devices
    devices.upsert_seen([
        DeviceSighting("d", "default", 100.0, "a:1", "1.0", 1),
        DeviceSighting("d", "default", 200.0, "b:2", "1.1", 0),  # an Update: no new registration
    ])
    devices.upsert_seen([DeviceSighting("d", "default", 300.0, "c:3", "1.2", 1)])
    assert devices.get("d", tenant_id="default") == DeviceRecord("d", "default", 100.0, 300.0, "c:3", "1.2", 2)


def test_device_older_sighting_never_overwrites_newer(backend: Backend) -> None:
    devices = backend.devices
    devices.upsert_seen([DeviceSighting("d", "default", 500.0, "new:1", "1.1", 1)])
    devices.upsert_seen([DeviceSighting("d", "default", 50.0, "old:1", "1.0", 1)])  # late, out of order
    assert devices.get("d", tenant_id="default") == DeviceRecord("d", "default", 50.0, 500.0, "new:1", "1.1", 2)


def test_device_tenant_scoping_and_listing(backend: Backend) -> None:
    devices = backend.devices
    devices.upsert_seen([
        DeviceSighting("b", "default", 1.0, "x", "1.0", 1),
        DeviceSighting("a", "default", 2.0, "y", "1.0", 1),
        DeviceSighting("a", "acme", 3.0, "z", "1.1", 1),
    ])
    assert [d.endpoint for d in devices.list(tenant_id="default")] == ["a", "b"]
    assert devices.list(tenant_id="acme") == [DeviceRecord("a", "acme", 3.0, 3.0, "z", "1.1", 1)]
    assert [(d.tenant_id, d.endpoint) for d in devices.list(tenant_id=None)] == [("acme", "a"), ("default", "a"),
                                                                      ("default", "b")]
    assert devices.list(tenant_id="nobody") == []


def test_device_empty_batch_is_a_no_op(backend: Backend) -> None:
    backend.devices.upsert_seen([])
    assert backend.devices.list(tenant_id=None) == []


# ---------------------------------------------------------------- SQL specifics (SQLite file)


def test_data_dir_is_private_and_sqlite_is_tuned(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "data"
    with Database.for_data_dir(folder) as db:
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(folder / DB_FILENAME).st_mode) == 0o600
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert {"registration", "device"} <= set(inspect(db.engine).get_table_names())
    with Database.for_data_dir(folder) as again:  # an existing folder and file open fine
        assert SqlRegistrationStore(again).load_all() == []


def test_database_failures_raise_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        Database("not-a-url://at all")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError):
        Database.for_data_dir(blocker / "data")  # a data folder beneath a file cannot be made


def test_sql_write_failure_raises_storage_error_and_rolls_back(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path) as db:
        store = SqlRegistrationStore(db)
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE registration"))
        with pytest.raises(StorageError):
            store.apply([simple_reg("a", "e")], [])
        with pytest.raises(StorageError):
            store.load_all()


def test_corrupt_row_raises_storage_error(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path) as db:
        store = SqlRegistrationStore(db)
        store.apply([simple_reg("a", "e")], [])
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE registration SET links = '<unterminated' WHERE id = 'a'"))
        with pytest.raises(StorageError):
            store.get("a")


def test_in_memory_sqlite_url_works() -> None:
    with Database("sqlite://") as db:
        store = SqlRegistrationStore(db)
        store.apply([simple_reg("a", "e")], [])
        assert store.get("a") == simple_reg("a", "e")

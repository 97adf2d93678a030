"""One contract for every tag store: :class:`MemoryTagStore` and :class:`SqlTagStore` (SQLite and PostgreSQL).

A new backend joins by adding a case to the ``backend`` fixture; it must pass every test here unchanged. A
hypothesis test runs the same random add/remove sequences against both and checks they agree with each other and
with a model dict of sets.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from lwm2m_server.core.errors import StorageError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.tag_store import DeviceTag, MemoryTagStore, SqlTagStore, TagStore
from tests.store_backends import BACKENDS, SQL_BACKENDS, StoreBackend, shared_database

ENDPOINT = "urn:dev:ops:ünïcödé-€-1"


Backend = StoreBackend[TagStore]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request, request.param, tmp_path / "data", MemoryTagStore, SqlTagStore)
    yield b
    b.close()


def test_implements_the_protocol(backend: Backend) -> None:
    assert isinstance(backend.store, TagStore)


def test_an_endpoint_never_tagged_has_no_tags(backend: Backend) -> None:
    store = backend.store
    assert store.of(ENDPOINT, tenant_id="default") == []
    assert store.endpoints_with("beta", tenant_id="default") == set()
    assert store.all(tenant_id="default") == []


def test_change_returns_the_tags_afterwards_sorted_and_is_idempotent(backend: Backend) -> None:
    store = backend.store
    assert store.change(ENDPOINT, add={"site:lyon", "beta"}, remove=set(), tenant_id="t") == ["beta", "site:lyon"]
    assert store.change(ENDPOINT, add={"beta"}, remove=set(), tenant_id="t") == ["beta", "site:lyon"]
    assert store.change(ENDPOINT, add={"canary"}, remove={"beta", "never-there"}, tenant_id="t") == [
        "canary", "site:lyon"]
    assert store.change(ENDPOINT, add=set(), remove={"beta"}, tenant_id="t") == ["canary", "site:lyon"]
    assert store.change(ENDPOINT, add=set(), remove=set(), tenant_id="t") == ["canary", "site:lyon"]
    assert store.of(ENDPOINT, tenant_id="t") == ["canary", "site:lyon"]
    assert store.endpoints_with("canary", tenant_id="t") == {ENDPOINT}
    assert store.endpoints_with("beta", tenant_id="t") == set()


def test_all_lists_every_tag_as_records_sorted_by_endpoint_then_tag(backend: Backend) -> None:
    store = backend.store
    store.change("warehouse-7", add={"stock"}, remove=(), tenant_id="t")
    store.change("a-device", add={"z", "stock"}, remove=(), tenant_id="t")
    store.change("gone", add={"x"}, remove=(), tenant_id="t")
    store.change("gone", add=(), remove={"x"}, tenant_id="t")  # no tag left: not listed
    listed = store.all(tenant_id="t")
    assert listed == [DeviceTag("t", "a-device", "stock"), DeviceTag("t", "a-device", "z"),
                      DeviceTag("t", "warehouse-7", "stock")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        listed[0].tag = "other"  # type: ignore[misc]
    assert store.endpoints_with("stock", tenant_id="t") == {"a-device", "warehouse-7"}


def test_tenants_never_see_each_other(backend: Backend) -> None:
    store = backend.store
    store.change(ENDPOINT, add={"beta"}, remove=(), tenant_id="oem-a")
    store.change(ENDPOINT, add={"prod"}, remove=(), tenant_id="oem-b")
    assert store.of(ENDPOINT, tenant_id="oem-a") == ["beta"]
    assert store.of(ENDPOINT, tenant_id="oem-b") == ["prod"]
    assert store.of(ENDPOINT, tenant_id="default") == []
    assert store.endpoints_with("beta", tenant_id="oem-b") == set()
    assert store.all(tenant_id="oem-a") == [DeviceTag("oem-a", ENDPOINT, "beta")]
    assert store.change(ENDPOINT, add=(), remove={"beta"}, tenant_id="oem-b") == ["prod"]
    assert store.of(ENDPOINT, tenant_id="oem-a") == ["beta"]  # another tenant's tag was not removed


def test_tags_are_case_sensitive(backend: Backend) -> None:
    assert backend.store.change("e", add={"Beta", "beta"}, remove=(), tenant_id="t") == ["Beta", "beta"]
    assert backend.store.endpoints_with("BETA", tenant_id="t") == set()


def test_reopening_gives_the_same_tags(backend: Backend) -> None:
    backend.store.change(ENDPOINT, add={"beta", "site:x"}, remove=(), tenant_id="t")
    backend.reopen()
    assert backend.store.of(ENDPOINT, tenant_id="t") == ["beta", "site:x"]
    assert backend.store.all(tenant_id="t") == [DeviceTag("t", ENDPOINT, "beta"), DeviceTag("t", ENDPOINT, "site:x")]


def test_repr_shows_no_data(backend: Backend) -> None:
    backend.store.change(ENDPOINT, add={"beta"}, remove=(), tenant_id="t")
    assert ENDPOINT not in repr(backend.store) and "beta" not in repr(backend.store)


# ---------------------------------------------------------------- memory and SQL agree (hypothesis)

TENANTS = st.sampled_from(["a", "b"])
ENDPOINTS = st.sampled_from(["ep-1", "ep-2", ENDPOINT])
TAGS = st.frozensets(st.sampled_from(["a", "b", "c", "site:x", "v1.0", "Z-9"]), max_size=4)
OPS = st.lists(st.tuples(TENANTS, ENDPOINTS, TAGS, TAGS), max_size=15)
_run = itertools.count()
Op = tuple[str, str, frozenset[str], frozenset[str]]


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def shared_sql(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlTagStore]:
    with shared_database(request, request.param, tmp_path_factory) as db:
        yield SqlTagStore(db)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_memory_and_sql_agree_on_any_change_sequence(shared_sql: SqlTagStore, ops: list[Op]) -> None:
    run = next(_run)  # each example in tenants of its own: the shared database never leaks between examples
    memory = MemoryTagStore()
    model: dict[tuple[str, str], set[str]] = {}
    for tenant, endpoint, add, remove in ops:
        remove -= add  # the service keeps the two disjoint
        tenant = f"{tenant}-{run}"
        expected = sorted(model.setdefault((tenant, endpoint), set()).union(add) - remove)
        model[(tenant, endpoint)] = set(expected)
        assert memory.change(endpoint, add=add, remove=remove, tenant_id=tenant) == expected
        assert shared_sql.change(endpoint, add=add, remove=remove, tenant_id=tenant) == expected
    for tenant in (f"a-{run}", f"b-{run}"):
        assert memory.all(tenant_id=tenant) == shared_sql.all(tenant_id=tenant) == sorted(
            DeviceTag(t, ep, tag) for (t, ep), tags in model.items() if t == tenant for tag in tags)
        for tag in ("a", "site:x"):
            assert memory.endpoints_with(tag, tenant_id=tenant) == shared_sql.endpoints_with(tag, tenant_id=tenant)
        for endpoint in ("ep-1", ENDPOINT):
            assert memory.of(endpoint, tenant_id=tenant) == shared_sql.of(endpoint, tenant_id=tenant)


# ---------------------------------------------------------------- SQL specifics (SQLite file)


def test_sql_reads_rows_in_the_existing_table_layout(tmp_path: Path) -> None:
    """A data directory written before the store existed: rows of ``device_tag`` as they always were."""
    with Database.for_data_dir(tmp_path) as db:
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO device_tag (tenant_id, endpoint, tag) VALUES "
                              "('default', 'dev-1', 'beta'), ('default', 'dev-1', 'alpha'), ('x', 'dev-1', 'z')"))
        store = SqlTagStore(db)
        assert store.of("dev-1", tenant_id="default") == ["alpha", "beta"]
        assert store.change("dev-1", add={"gamma"}, remove={"alpha"}, tenant_id="default") == ["beta", "gamma"]
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT tenant_id, endpoint, tag FROM device_tag ORDER BY 1, 2, 3")).all()
        assert [tuple(r) for r in rows] == [("default", "dev-1", "beta"), ("default", "dev-1", "gamma"),
                                            ("x", "dev-1", "z")]


def test_sql_failures_raise_storage_error_and_change_nothing(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path) as db:
        store = SqlTagStore(db)
        store.change("dev-1", add={"beta"}, remove=(), tenant_id="t")
        with db.engine.begin() as conn:  # a trigger makes every insert fail: the delete beside it is rolled back
            conn.execute(text("CREATE TRIGGER no_new_tags BEFORE INSERT ON device_tag "
                              "BEGIN SELECT RAISE(ABORT, 'refused'); END"))
        with pytest.raises(StorageError, match="cannot store the tags"):
            store.change("dev-1", add={"new"}, remove={"beta"}, tenant_id="t")
        assert store.of("dev-1", tenant_id="t") == ["beta"]
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE device_tag"))
        with pytest.raises(StorageError, match="cannot read the tags"):
            store.of("dev-1", tenant_id="t")
        with pytest.raises(StorageError):
            store.change("dev-1", add={"x"}, remove=(), tenant_id="t")

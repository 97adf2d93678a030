"""One contract for every webhook store: :class:`MemoryWebhookStore` and :class:`SqlWebhookStore` (SQLite and
PostgreSQL). Subscriptions with their sealed secrets, removal, the first filter of kinds and the delivery log.

A new backend joins by adding a case to the ``backend`` fixture; it must pass every test here unchanged. A
hypothesis test runs the same random sequences against both and checks they agree.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from lwm2m_server.core.errors import StorageError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.webhook_store import (
    Delivery,
    MemoryWebhookStore,
    SqlWebhookStore,
    Webhook,
    WebhookStore,
)
from tests.store_backends import BACKENDS, SQL_BACKENDS, StoreBackend, shared_database

SEALED = b"\x00sealed-\xff" * 4


Backend = StoreBackend[WebhookStore]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request, request.param, tmp_path / "data", MemoryWebhookStore, SqlWebhookStore)
    yield b
    b.close()


def hook(webhook_id: str, tenant_id: str = "acme", *, kinds: tuple[str, ...] = ("campaign.",),
         created_at: float = 10.0, url: str = "https://hooks.example/ünï?x=1") -> Webhook:
    return Webhook(webhook_id, tenant_id, url, kinds, created_at)


def delivery(webhook_id: str, tenant_id: str = "acme", **changes: object) -> Delivery:
    base = Delivery(0, webhook_id, tenant_id, "campaign.device.succeeded", "d" * 32, 1, 1_700_000_000.25, 200,
                    None, True, 0.125)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_implements_the_protocol(backend: Backend) -> None:
    assert isinstance(backend.store, WebhookStore)


def test_add_then_read_back_every_field(backend: Backend) -> None:
    store = backend.store
    a = hook("a" * 32, kinds=("campaign.", "security.*"), created_at=1_700_000_000.5)
    store.add(a, sealed_secret=SEALED)
    assert store.get(a.id, tenant_id="acme") == a
    assert store.list(tenant_id="acme") == [a]
    assert store.sealed_secret(a.id, tenant_id="acme") == SEALED
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.url = "https://elsewhere.example/"  # type: ignore[misc]


def test_unknown_ids_and_other_tenants_see_nothing(backend: Backend) -> None:
    store = backend.store
    store.add(hook("a"), sealed_secret=SEALED)
    for webhook_id, tenant in (("a", "globex"), ("missing", "acme")):
        assert store.get(webhook_id, tenant_id=tenant) is None
        assert store.sealed_secret(webhook_id, tenant_id=tenant) is None
        assert store.remove(webhook_id, tenant_id=tenant) is None
    assert store.list(tenant_id="globex") == [] and store.list(tenant_id="globex", include_removed=True) == []
    assert store.sealed_secret("a", tenant_id="acme") == SEALED  # untouched by the other tenant's remove


def test_list_is_oldest_first_then_by_id(backend: Backend) -> None:
    store = backend.store
    for webhook_id, created in (("c", 5.0), ("b", 7.0), ("a", 7.0), ("d", 1.0)):
        store.add(hook(webhook_id, created_at=created), sealed_secret=SEALED)
    assert [w.id for w in store.list(tenant_id="acme")] == ["d", "c", "a", "b"]


def test_a_taken_id_is_refused(backend: Backend) -> None:
    store = backend.store
    store.add(hook("a"), sealed_secret=SEALED)
    with pytest.raises(StorageError) as info:
        store.add(hook("a", url="https://other.example/"), sealed_secret=b"another sealed secret")
    assert "another sealed secret" not in str(info.value) and "sealed-" not in str(info.value)
    assert store.get("a", tenant_id="acme") == hook("a")


def test_remove_deactivates_erases_the_secret_and_keeps_the_subscription(backend: Backend) -> None:
    store = backend.store
    store.add(hook("a", created_at=1.0), sealed_secret=SEALED)
    store.add(hook("b", created_at=2.0), sealed_secret=SEALED)
    removed = store.remove("a", tenant_id="acme")
    assert removed == dataclasses.replace(hook("a", created_at=1.0), active=False)
    assert removed is not None and not removed.wants("campaign.finished")
    assert store.remove("a", tenant_id="acme") is None  # once only
    assert store.sealed_secret("a", tenant_id="acme") is None
    assert store.get("a", tenant_id="acme") == removed
    assert [w.id for w in store.list(tenant_id="acme")] == ["b"]
    assert [(w.id, w.active) for w in store.list(tenant_id="acme", include_removed=True)] == [
        ("a", False), ("b", True)]


def test_active_kinds_covers_every_tenant_once_and_forgets_removed(backend: Backend) -> None:
    store = backend.store
    assert store.active_kinds() == ()
    store.add(hook("a", kinds=("campaign.", "security.")), sealed_secret=SEALED)
    store.add(hook("b", "globex", kinds=("campaign.", "registration.")), sealed_secret=SEALED)
    store.add(hook("c", kinds=("gone.",)), sealed_secret=SEALED)
    store.remove("c", tenant_id="acme")
    assert sorted(store.active_kinds()) == ["campaign.", "registration.", "security."]


def test_deliveries_get_increasing_ids_and_read_newest_first(backend: Backend) -> None:
    store = backend.store
    stored = [store.record(delivery("a")),
              store.record(delivery("b", attempt=0, status_code=None, error="dropped: the webhook queue was full",
                                    delivered=False, duration=0.0)),
              store.record(delivery("a", "globex")),
              store.record(delivery("a", attempt=2, status_code=503, error="HTTP 503", delivered=False))]
    ids = [d.id for d in stored]
    assert ids == sorted(ids) and len(set(ids)) == 4 and ids[0] > 0
    assert [dataclasses.replace(d, id=0) for d in stored] == [
        delivery("a"), delivery("b", attempt=0, status_code=None, error="dropped: the webhook queue was full",
                                delivered=False, duration=0.0),
        delivery("a", "globex"), delivery("a", attempt=2, status_code=503, error="HTTP 503", delivered=False)]
    assert store.deliveries(tenant_id="acme") == [stored[3], stored[1], stored[0]]
    assert store.deliveries(tenant_id="acme", webhook_id="a") == [stored[3], stored[0]]
    assert store.deliveries(tenant_id="acme", limit=1) == [stored[3]]
    assert store.deliveries(tenant_id="globex") == [stored[2]]
    assert store.deliveries(tenant_id="other") == []


def test_reopening_gives_the_same_data(backend: Backend) -> None:
    store = backend.store
    store.add(hook("a"), sealed_secret=SEALED)
    store.add(hook("b"), sealed_secret=SEALED)
    store.remove("b", tenant_id="acme")
    logged = store.record(delivery("a"))
    backend.reopen()
    store = backend.store
    assert store.list(tenant_id="acme", include_removed=True) == [hook("a"), dataclasses.replace(hook("b"),
                                                                                                 active=False)]
    assert store.sealed_secret("a", tenant_id="acme") == SEALED
    assert store.deliveries(tenant_id="acme") == [logged]
    assert store.record(delivery("a")).id > logged.id


def test_repr_holds_no_secret_or_url(backend: Backend) -> None:
    backend.store.add(hook("a"), sealed_secret=SEALED)
    assert "sealed" not in repr(backend.store) and "hooks.example" not in repr(backend.store)


# ---------------------------------------------------------------- memory and SQL agree (hypothesis)

_run = itertools.count()
OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 4), st.sampled_from(["acme", "globex"]),
              st.lists(st.sampled_from(["campaign.", "security.", "x.y"]), min_size=1, max_size=3, unique=True),
              st.integers(0, 3)),
    st.tuples(st.just("remove"), st.integers(0, 4), st.sampled_from(["acme", "globex"])),
    st.tuples(st.just("record"), st.integers(0, 4), st.sampled_from(["acme", "globex"]), st.booleans()),
), max_size=20)


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def shared_sql(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[SqlWebhookStore]:
    with shared_database(request, request.param, tmp_path_factory) as db:
        yield SqlWebhookStore(db)


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_memory_and_sql_agree_on_any_sequence(shared_sql: SqlWebhookStore, ops: list[tuple[object, ...]]) -> None:
    run = next(_run)  # each example in tenants and ids of its own: the shared database never leaks between them
    memory = MemoryWebhookStore()
    seen: set[str] = set()
    tenants = [f"acme-{run}", f"globex-{run}"]
    for op in ops:
        webhook_id, tenant = f"{run}-{op[1]}", f"{op[2]}-{run}"
        if op[0] == "add":
            if webhook_id in seen:
                continue  # a taken id is refused (tested above); ids are never reused
            seen.add(webhook_id)
            kinds, created = tuple(cast("list[str]", op[3])), float(cast(int, op[4]))
            for store in (memory, shared_sql):
                store.add(Webhook(webhook_id, tenant, f"https://h.example/{webhook_id}", kinds, created),
                          sealed_secret=webhook_id.encode())
        elif op[0] == "remove":
            assert memory.remove(webhook_id, tenant_id=tenant) == shared_sql.remove(webhook_id, tenant_id=tenant)
        else:
            ok = bool(op[3])
            one = delivery(webhook_id, tenant, delivered=ok, error=None if ok else "HTTP 500")
            assert dataclasses.replace(memory.record(one), id=0) == dataclasses.replace(shared_sql.record(one), id=0)
    for tenant in tenants:
        for removed in (False, True):
            assert memory.list(tenant_id=tenant, include_removed=removed) == shared_sql.list(
                tenant_id=tenant, include_removed=removed)
        for webhook_id in seen:
            assert memory.get(webhook_id, tenant_id=tenant) == shared_sql.get(webhook_id, tenant_id=tenant)
            assert memory.sealed_secret(webhook_id, tenant_id=tenant) == shared_sql.sealed_secret(
                webhook_id, tenant_id=tenant)
        assert ([dataclasses.replace(d, id=0) for d in memory.deliveries(tenant_id=tenant, limit=1000)]
                == [dataclasses.replace(d, id=0) for d in shared_sql.deliveries(tenant_id=tenant, limit=1000)])
    mine = set(memory.active_kinds())
    assert mine <= set(shared_sql.active_kinds())  # the shared database also holds earlier examples' webhooks


# ---------------------------------------------------------------- SQL specifics (SQLite file)


def test_sql_reads_rows_in_the_existing_table_layout(tmp_path: Path) -> None:
    """A data directory written before the store existed: ``webhook`` rows with kinds as a comma list."""
    with Database.for_data_dir(tmp_path) as db:
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO webhook (id, tenant_id, url, sealed_secret, kinds, created_at, active) "
                              "VALUES ('w1', 'default', 'https://h.example/x', :s, 'campaign.,security.', 3.5, 1)"),
                         {"s": SEALED})
            conn.execute(text("INSERT INTO webhook_delivery (webhook_id, tenant_id, event_kind, event_id, attempt, "
                              "at, status_code, error, delivered, duration) VALUES ('w1', 'default', 'campaign.x', "
                              "'e1', 1, 4.0, NULL, 'timed out', 0, 0.5)"))
        store = SqlWebhookStore(db)
        assert store.list(tenant_id="default") == [Webhook("w1", "default", "https://h.example/x",
                                                           ("campaign.", "security."), 3.5)]
        assert store.sealed_secret("w1", tenant_id="default") == SEALED
        [logged] = store.deliveries(tenant_id="default")
        assert logged == Delivery(logged.id, "w1", "default", "campaign.x", "e1", 1, 4.0, None, "timed out", False,
                                  0.5)
        removed = store.remove("w1", tenant_id="default")
        assert removed is not None and not removed.active
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT sealed_secret, active FROM webhook")).one() == (None, 0)


def test_sql_failures_raise_storage_error_without_the_sealed_secret(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path) as db:
        store = SqlWebhookStore(db)
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE webhook"))
            conn.execute(text("DROP TABLE webhook_delivery"))
        with pytest.raises(StorageError) as info:
            store.add(hook("a"), sealed_secret=SEALED)
        assert "sealed" not in str(info.value) and "sealed" not in repr(info.value.__cause__)
        for call in (lambda: store.list(tenant_id="acme"), lambda: store.get("a", tenant_id="acme"),
                     lambda: store.sealed_secret("a", tenant_id="acme"), lambda: store.remove("a", tenant_id="acme"),
                     store.active_kinds, lambda: store.record(delivery("a")),
                     lambda: store.deliveries(tenant_id="acme")):
            with pytest.raises(StorageError):
                call()

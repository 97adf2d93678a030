"""One contract for every node store: :class:`MemoryNodeStore` and :class:`SqlNodeStore` (SQLite and PostgreSQL).

A new backend joins by adding a case to the ``backend`` fixture; it must pass every test here unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from lwm2m_server.core.errors import StorageError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.node_store import MemoryNodeStore, NodeRecord, NodeStore, SqlNodeStore
from tests.store_backends import BACKENDS, StoreBackend

T0 = 1_700_000_000.125

Backend = StoreBackend[NodeStore]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request, request.param, tmp_path / "data", MemoryNodeStore, SqlNodeStore)
    yield b
    b.close()


def node(node_id: str = "node-ä", started_at: float = T0, seen_at: float = T0, **uris: str | None) -> NodeRecord:
    return NodeRecord(node_id, started_at, seen_at, **uris)


def test_a_node_comes_back_as_written_and_nodes_are_listed_by_id(backend: Backend) -> None:
    store = backend.store
    assert isinstance(store, NodeStore)
    assert store.list() == [] and store.get("node-a") is None and store.alive(now=T0, timeout=10) == set()
    full = node("node-b", seen_at=T0 + 0.5, coap_uri="coap://127.0.0.2:5683", coaps_uri="coaps://[::1]:5684",
                api_url="https://n-b.example/api/€")
    store.beat(full)
    store.beat(node("node-a"))
    assert store.get("node-b") == full
    assert store.list() == [node("node-a"), full]
    backend.reopen()  # durable
    assert backend.store.list() == [node("node-a"), full]


def test_a_beat_replaces_every_field_as_a_restarted_node_does(backend: Backend) -> None:
    store = backend.store
    store.beat(node(coap_uri="coap://old", api_url="http://old"))
    store.beat(node(seen_at=T0 + 5, coap_uri="coap://old", api_url="http://old"))  # a beat
    restarted = node(started_at=T0 + 60, seen_at=T0 + 60, coaps_uri="coaps://new")
    store.beat(restarted)
    assert store.get("node-ä") == restarted and store.list() == [restarted]


def test_alive_are_the_nodes_seen_within_the_timeout(backend: Backend) -> None:
    store = backend.store
    for name, seen in (("n-old", T0 - 30.5), ("n-edge", T0 - 30), ("n-new", T0), ("n-ahead", T0 + 1)):
        store.beat(node(name, started_at=T0 - 100, seen_at=seen))
    assert store.alive(now=T0, timeout=30) == {"n-edge", "n-new", "n-ahead"}
    assert store.alive(now=T0 + 100, timeout=30) == set()
    assert store.alive(now=T0, timeout=1000) == {"n-old", "n-edge", "n-new", "n-ahead"}
    store.beat(node("n-old", started_at=T0 - 100, seen_at=T0 + 0.25))  # it beat again
    assert "n-old" in store.alive(now=T0, timeout=30)


def test_remove_forgets_a_node_and_says_whether_it_was_there(backend: Backend) -> None:
    store = backend.store
    store.beat(node("n-1"))
    store.beat(node("n-2"))
    assert store.remove("n-1")
    assert not store.remove("n-1") and not store.remove("never")
    assert store.get("n-1") is None and [n.node_id for n in store.list()] == ["n-2"]
    assert store.alive(now=T0, timeout=1) == {"n-2"}


def test_a_node_id_longer_than_the_column_is_refused_on_every_backend(backend: Backend) -> None:
    with pytest.raises(StorageError):
        backend.store.beat(node("n" * 65))
    with pytest.raises(StorageError):
        backend.store.beat(node(""))
    backend.store.beat(node("n" * 64))
    assert [n.node_id for n in backend.store.list()] == ["n" * 64]


def test_a_database_failure_is_a_storage_error(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path) as db:  # a file of its own: the table is dropped
        store = SqlNodeStore(db)
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE node"))
        with pytest.raises(StorageError, match="cannot write node"):
            store.beat(node())
        with pytest.raises(StorageError, match="cannot read the nodes"):
            store.alive(now=T0, timeout=1)
        with pytest.raises(StorageError, match="cannot remove node"):
            store.remove("node-ä")

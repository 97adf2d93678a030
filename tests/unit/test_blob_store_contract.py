"""The blob store contract (lwm2m_server.storage.blob_store), on files ("memory": the embedded default's
FileBlobStore), SQLite and PostgreSQL (SqlBlobStore): what one stores, another node reads; a read checks the digest."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.storage.blob_store import (
    BlobCorruptedError,
    BlobStore,
    FileBlobStore,
    SqlBlobStore,
    UnknownBlobError,
    blob_store_for,
)
from lwm2m_server.storage.blob_tables import BlobRow
from lwm2m_server.storage.database import Database
from tests.store_backends import BACKENDS, StoreBackend

Backend = StoreBackend[BlobStore]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b: Backend = StoreBackend(request, request.param, tmp_path / "data", lambda: FileBlobStore(tmp_path / "blobs"),
                              SqlBlobStore)
    yield b
    b.close()


def test_a_stored_blob_is_read_back_by_its_digest_from_another_node(backend: Backend) -> None:
    store = backend.store
    data = b"\x00firmware\xff" * 1000
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.put(data) == digest  # again: nothing changes
    assert store.has(digest) and store.get(digest) == data
    other = backend.second()
    assert other.has(digest) and other.get(digest) == data
    assert store.put(b"") == hashlib.sha256(b"").hexdigest() and store.get(hashlib.sha256(b"").hexdigest()) == b""


def test_unknown_and_malformed_names(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(UnknownBlobError):
        store.get("0" * 64)
    assert not store.has("0" * 64)
    for bad in ("", "A" * 64, "0" * 63, "../" + "0" * 61, 7):
        with pytest.raises(InvalidRequestError):
            store.get(bad)  # type: ignore[arg-type]


def test_a_corrupted_blob_is_refused(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    digest = store.put(b"original bytes")
    if isinstance(store, FileBlobStore):
        (tmp_path / "blobs" / "sha256" / digest).write_bytes(b"tampered bytes")
    else:
        assert backend.db is not None
        with backend.db.engine.begin() as c:
            c.execute(update(BlobRow.__table__).values(data=b"tampered bytes"))  # type: ignore[attr-defined]
    with pytest.raises(BlobCorruptedError):
        store.get(digest)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.binary(max_size=2000), max_size=6))
def test_any_bytes_round_trip_in_the_database(blobs: list[bytes]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d, Database.for_data_dir(Path(d) / "data") as db:
        store = SqlBlobStore(db)
        digests = [store.put(b) for b in blobs]
        assert [store.get(x) for x in digests] == blobs


def test_sqlite_keeps_files_postgresql_the_database_and_reads_what_files_held(backend: Backend,
                                                                             tmp_path: Path) -> None:
    if backend.kind == "memory":
        return  # the choice is made by the database's kind: nothing to choose without one
    assert backend.db is not None
    folder = tmp_path / "blobs-before"
    older = FileBlobStore(folder).put(b"kept on disk before the database was shared")
    chosen = blob_store_for(backend.db, folder)
    if backend.kind == "sqlite":
        assert isinstance(chosen, FileBlobStore)
    else:
        assert isinstance(chosen, SqlBlobStore)
        assert chosen.get(older) == b"kept on disk before the database was shared"  # read from the files
        new = chosen.put(b"stored now")
        assert not FileBlobStore(folder).has(new)  # written to the database only
        assert SqlBlobStore(backend.db).get(new) == b"stored now"

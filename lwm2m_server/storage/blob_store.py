"""Content-addressed blobs (release images and packages): the :class:`BlobStore` Protocol, :class:`FileBlobStore`
(the embedded default: files in the data directory) and :class:`SqlBlobStore`. :func:`blob_store_for` picks: files
for SQLite (one machine), the database for PostgreSQL (several nodes, possibly on several machines, must read the
same bytes).

Invariants (one contract suite, tests/unit/test_blob_store_contract.py, on files, SQLite and PostgreSQL): ``put``
returns the SHA-256 hex of what it stored and storing the same bytes again changes nothing; ``get`` returns only
bytes whose SHA-256 is the name asked for (UnknownBlobError when absent, BlobCorruptedError when they no longer
match); a name that is not 64 lowercase hex digits is refused (InvalidRequestError).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from lwm2m_server.core.errors import InvalidRequestError, NotFoundError, StorageError
from lwm2m_server.data_dir import write_private_file
from lwm2m_server.storage.blob_tables import BlobRow

__all__ = ["BlobCorruptedError", "BlobStore", "FileBlobStore", "SqlBlobStore", "UnknownBlobError", "blob_store_for",
           "check_digest"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_BLOB: Any = BlobRow.__table__  # type: ignore[attr-defined]


class UnknownBlobError(NotFoundError):
    """No blob of that digest."""


class BlobCorruptedError(StorageError):
    """A stored blob whose content no longer matches its digest."""


@runtime_checkable
class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store ``data``; its SHA-256 hex."""
        ...

    def get(self, digest: str) -> bytes:
        """The blob ``digest`` (see the module invariants)."""
        ...

    def has(self, digest: str) -> bool:
        ...


def check_digest(digest: object) -> str:
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
        raise InvalidRequestError("a blob is named by 64 lowercase hex digits (SHA-256)")
    return digest


class SqlBlobStore:
    """Blobs in the ``blob`` table. ``fallback`` (a store read when a blob is not in the table: the files of a
    node that kept them on disk before its database was shared) is never written."""

    def __init__(self, database: Any, *, fallback: BlobStore | None = None) -> None:
        self._engine = database.engine
        self._fallback = fallback

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        try:
            with self._engine.begin() as c:
                if c.execute(select(_BLOB.c.sha256).where(_BLOB.c.sha256 == digest)).first() is None:
                    c.execute(insert(_BLOB).values(sha256=digest, size=len(data), data=bytes(data)))
        except IntegrityError:
            pass  # another node stored the same bytes meanwhile
        except SQLAlchemyError as e:
            raise StorageError(f"cannot store blob {digest}: {type(e).__name__}") from None
        return digest

    def get(self, digest: str) -> bytes:
        check_digest(digest)
        try:
            with self._engine.connect() as c:
                row = c.execute(select(_BLOB.c.data).where(_BLOB.c.sha256 == digest)).first()
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read blob {digest}: {type(e).__name__}") from None
        if row is None:
            if self._fallback is not None and self._fallback.has(digest):
                return self._fallback.get(digest)
            raise UnknownBlobError(f"no blob {digest}")
        data = bytes(row[0])
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobCorruptedError(f"blob {digest} is corrupted (its content does not match its digest)")
        return data

    def has(self, digest: str) -> bool:
        check_digest(digest)
        try:
            with self._engine.connect() as c:
                found = c.execute(select(_BLOB.c.sha256).where(_BLOB.c.sha256 == digest)).first() is not None
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read blob {digest}: {type(e).__name__}") from None
        return found or (self._fallback is not None and self._fallback.has(digest))

    def __repr__(self) -> str:
        return f"SqlBlobStore({self._engine.url.render_as_string(hide_password=True)!r})"


class FileBlobStore:
    """Content-addressed files ``folder/sha256/<hex>``: written whole or not at all (temp file, fsync, rename),
    mode 0600 in a 0700 folder; :meth:`get` returns only bytes whose SHA-256 is the name they were asked by."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._dir = self.folder / "sha256"

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its SHA-256 hex. Storing the same bytes again is a no-op, and repairs a stored copy
        that no longer matches its digest."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._dir / digest
        with contextlib.suppress(OSError):
            if path.stat().st_size == len(data) and _file_sha256(path) == digest:
                return digest
        try:
            self._ensure_dir()
            write_private_file(path, data, replace=True)
        except OSError as e:
            raise StorageError(f"cannot store blob {digest} in {self._dir}: {e.strerror}") from None
        return digest

    def get(self, digest: str) -> bytes:
        """The blob ``digest``; :class:`UnknownBlobError` when absent, :class:`BlobCorruptedError` when its content
        no longer matches."""
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UnknownBlobError(f"no blob {digest}") from None
        except OSError as e:
            raise StorageError(f"cannot read blob {digest}: {e.strerror}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobCorruptedError(f"blob {digest} is corrupted (its content does not match its digest)")
        return data

    def has(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def _path(self, digest: str) -> Path:
        return self._dir / check_digest(digest)

    def _ensure_dir(self) -> None:
        for folder in (self.folder, self._dir):
            if not folder.is_dir():
                with contextlib.suppress(FileExistsError):
                    folder.mkdir(parents=True, mode=0o700)
                    folder.chmod(0o700)  # mkdir's mode is filtered by the umask

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.folder)!r})"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def blob_store_for(database: Any, folder: str | os.PathLike[str]) -> BlobStore:
    """Where a server keeps its blobs: files in ``folder`` with SQLite, the database (reading ``folder`` for what
    was kept there before) with PostgreSQL."""
    files = FileBlobStore(Path(folder))
    if database.engine.dialect.name == "postgresql":
        return SqlBlobStore(database, fallback=files)
    return files

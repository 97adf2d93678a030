"""The SQL credential store: SQLAlchemy Core on the engine of the server's database (SQLite or PostgreSQL).

It lives here, not in :mod:`lwm2m_server.storage`, because the bootstrap server must not import the server's
storage package (import-linter contract "the bootstrap server stays light"); it needs only SQLAlchemy and an
engine, which the composition root (the CLI) hands over: ``SqlCredentialStore(database.engine, vault)`` or
``SqlCredentialStore(database, vault)`` (anything with an ``engine``). Its two tables sit on their own
:class:`~sqlalchemy.MetaData` and are created on construction (``CREATE TABLE IF NOT EXISTS``), so importing this
module changes nothing in the server's schema and the same database file serves both.

Tables (portable SQL only, every row carries ``tenant_id``):

* ``credential``: one row per credential ever issued; ``identity`` is the primary key (an identity is never
  reissued); a partial unique index keeps one active credential per ``(tenant_id, endpoint, kind)``; ``sealed_psk``
  is the vault's AES-GCM blob, set to NULL when the credential is revoked;
* ``credential_psk_fingerprint``: the keyed fingerprint (HMAC-SHA256 under a KEK-derived key) of every PSK ever
  issued, primary key, never deleted: how a reused PSK is refused without keeping any PSK in the clear.

Each write is one transaction; database failures raise :class:`~lwm2m_server.core.errors.StorageError` (whose
messages carry no parameters: a sealed key or a fingerprint never reaches a message either).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Float,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    false,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.schema import CreateIndex

from bootstrap.credentials import (
    PSK_MIN_BYTES,
    Credential,
    CredentialConflictError,
    CredentialKind,
    CredentialStoreBase,
    PskReuseError,
    StoredCredential,
    UnknownCredentialError,
)
from bootstrap.vault import Vault
from lwm2m_server.core.errors import StorageError

__all__ = ["CREDENTIAL_TABLE", "FINGERPRINT_TABLE", "SqlCredentialStore", "credential_metadata"]

credential_metadata = MetaData()

CREDENTIAL_TABLE = Table(
    "credential",
    credential_metadata,
    Column("identity", String(255), primary_key=True),
    Column("tenant_id", String(64), nullable=False, default="default"),
    Column("endpoint", String(255), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("sealed_psk", LargeBinary, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("revoked_at", Float, nullable=True),
)
_C = CREDENTIAL_TABLE.c
# built once: asked at every plain-CoAP Register, so no expression is rebuilt per call (SQLAlchemy's cache hits)
_HAS_ACTIVE = select(_C.identity).where(_C.tenant_id == bindparam("tenant_id"), _C.endpoint == bindparam("endpoint"),
                                        _C.kind == bindparam("kind"), _C.revoked == false()).limit(1)
Index("ix_credential_tenant_endpoint", _C.tenant_id, _C.endpoint)
_REVOKED_AT_INDEX = Index("ix_credential_revoked_at", _C.revoked_at)  # revoked_since(), polled by servers
Index("uq_credential_active", _C.tenant_id, _C.endpoint, _C.kind, unique=True,
      sqlite_where=_C.revoked == false(), postgresql_where=_C.revoked == false())

FINGERPRINT_TABLE = Table(
    "credential_psk_fingerprint",
    credential_metadata,
    Column("fingerprint", LargeBinary(32), primary_key=True),
    Column("tenant_id", String(64), nullable=False, default="default"),
    Column("identity", String(255), nullable=False),
    Column("issued_at", Float, nullable=False),
)
_F = FINGERPRINT_TABLE.c


def _why(e: SQLAlchemyError) -> str:
    """The driver's own words (e.g. ``no such table: credential``), never the statement or its parameters."""
    return str(getattr(e, "orig", None) or type(e).__name__)


class _HasEngine(Protocol):
    @property
    def engine(self) -> Engine: ...


def _credential(row: Mapping[Any, Any]) -> Credential:
    try:
        kind = CredentialKind(row["kind"])
    except ValueError:
        raise StorageError(f"credential {row['identity']!r}: corrupt stored kind") from None
    return Credential(row["tenant_id"], row["endpoint"], row["identity"], kind, float(row["created_at"]),
                      bool(row["revoked"]), None if row["revoked_at"] is None else float(row["revoked_at"]))


def _stored(row: Mapping[Any, Any]) -> StoredCredential:
    sealed = row["sealed_psk"]
    return StoredCredential(_credential(row), None if sealed is None else bytes(sealed))


class SqlCredentialStore(CredentialStoreBase):
    """Credentials in the ``credential`` and ``credential_psk_fingerprint`` tables of a SQL database.

    The identity index is built by :meth:`load` and kept by this store's writes; an identity it does not know is
    looked up in the database (so a credential issued by another process, e.g. the CLI, is found at once). A
    revocation (or a replacement) made by another process is applied by :meth:`revoked_since` (one indexed query
    on ``revoked_at``; the LwM2M server polls it every second) or by the next :meth:`load`.
    """

    def __init__(self, database: Engine | _HasEngine, vault: Vault, *, psk_bytes: int = PSK_MIN_BYTES) -> None:
        super().__init__(vault, psk_bytes=psk_bytes)
        self._engine: Engine = database if isinstance(database, Engine) else database.engine
        try:
            credential_metadata.create_all(self._engine)
            with self._engine.begin() as conn:  # tables made before this index existed
                conn.execute(CreateIndex(_REVOKED_AT_INDEX, if_not_exists=True))
        except SQLAlchemyError as e:
            raise StorageError(f"cannot create the credential tables: {_why(e)}") from e
        compiled = _HAS_ACTIVE.compile(dialect=self._engine.dialect)
        self._has_active_sql = compiled.string
        self._has_active_order = tuple(compiled.positiontup or ()) if self._engine.dialect.positional else None
        # every parameter of the statement (the LIMIT's own among them); the three named ones are set per call
        self._has_active_fixed = dict(compiled.construct_params({"tenant_id": "", "endpoint": "", "kind": ""}))
        self._dbapi_error: type[Exception] = self._engine.dialect.loaded_dbapi.Error

    def _active_row(self, conn: Connection, tenant_id: str, endpoint: str,
                    kind: CredentialKind) -> Mapping[Any, Any] | None:
        return conn.execute(select(CREDENTIAL_TABLE).where(
            _C.tenant_id == tenant_id, _C.endpoint == endpoint, _C.kind == kind.value, _C.revoked == false(),
        )).mappings().first()

    def _insert(self, new: StoredCredential, fingerprint: bytes, *, retire_active: bool,
                now: float) -> Credential | None:
        c = new.credential
        try:
            with self._engine.begin() as conn:
                current = self._active_row(conn, c.tenant_id, c.endpoint, c.kind)
                if retire_active and current is None:
                    raise UnknownCredentialError(
                        f"endpoint {c.endpoint!r} of tenant {c.tenant_id!r} has no active {c.kind.value} credential")
                if not retire_active and current is not None:
                    raise CredentialConflictError(
                        f"endpoint {c.endpoint!r} of tenant {c.tenant_id!r} already has an active {c.kind.value} "
                        "credential (replace it to rekey)")
                if conn.execute(select(_C.identity).where(_C.identity == c.identity)).first() is not None:
                    raise CredentialConflictError(f"PSK identity {c.identity!r} is already in use")
                if conn.execute(select(_F.identity).where(_F.fingerprint == fingerprint)).first() is not None:
                    raise PskReuseError("this PSK has already been issued; a key is never used twice")
                retired = None
                if current is not None:
                    conn.execute(update(CREDENTIAL_TABLE).where(_C.identity == current["identity"])
                                 .values(revoked=True, revoked_at=now, sealed_psk=None))
                    retired = replace(_credential(current), revoked=True, revoked_at=now)
                conn.execute(insert(FINGERPRINT_TABLE).values(
                    fingerprint=fingerprint, tenant_id=c.tenant_id, identity=c.identity, issued_at=c.created_at))
                conn.execute(insert(CREDENTIAL_TABLE).values(
                    identity=c.identity, tenant_id=c.tenant_id, endpoint=c.endpoint, kind=c.kind.value,
                    sealed_psk=new.sealed_psk, created_at=c.created_at, revoked=False, revoked_at=None))
                return retired
        except IntegrityError as e:  # another process wrote a conflicting row between our checks and the insert
            raise CredentialConflictError(
                f"credential {c.identity!r} conflicts with a concurrent write; retry") from e
        except SQLAlchemyError as e:
            raise StorageError(f"cannot write credential {c.identity!r}: {_why(e)}") from e

    def _revoke(self, tenant_id: str, endpoint: str, kind: CredentialKind | None,
                now: float) -> builtins.list[Credential]:
        where = [_C.tenant_id == tenant_id, _C.endpoint == endpoint, _C.revoked == false()]
        if kind is not None:
            where.append(_C.kind == kind.value)
        try:
            with self._engine.begin() as conn:
                rows = conn.execute(select(CREDENTIAL_TABLE).where(*where)).mappings().all()
                if rows:
                    conn.execute(update(CREDENTIAL_TABLE).where(_C.identity.in_([r["identity"] for r in rows]))
                                 .values(revoked=True, revoked_at=now, sealed_psk=None))
        except SQLAlchemyError as e:
            raise StorageError(f"cannot revoke the credentials of {endpoint!r}: {_why(e)}") from e
        return [replace(_credential(r), revoked=True, revoked_at=now) for r in rows]

    def _query(self, *where: Any) -> builtins.list[StoredCredential]:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(select(CREDENTIAL_TABLE).where(*where)).mappings().all()
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read credentials: {_why(e)}") from e
        return [_stored(r) for r in rows]

    def _select(self, tenant_id: str | None, endpoint: str | None, kind: CredentialKind | None,
                include_revoked: bool) -> builtins.list[Credential]:
        where: builtins.list[Any] = []
        if tenant_id is not None:
            where.append(_C.tenant_id == tenant_id)
        if endpoint is not None:
            where.append(_C.endpoint == endpoint)
        if kind is not None:
            where.append(_C.kind == kind.value)
        if not include_revoked:
            where.append(_C.revoked == false())
        return [s.credential for s in self._query(*where)]

    def _has_active(self, tenant_id: str, endpoint: str, kind: CredentialKind) -> bool:
        """Asked at every plain-CoAP Register, so on the driver's own cursor with the statement compiled once for
        the engine's dialect: about 11 us on SQLite, where SQLAlchemy's execute costs 55 us (its per-call
        parameter processing and result wrapping, none of which this one-row existence check needs)."""
        params = {**self._has_active_fixed, "tenant_id": tenant_id, "endpoint": endpoint, "kind": kind.value}
        bound: Any = params if self._has_active_order is None else tuple(params[k] for k in self._has_active_order)
        try:
            raw = self._engine.raw_connection()
            try:
                cursor = raw.cursor()
                try:
                    cursor.execute(self._has_active_sql, bound)
                    found = cursor.fetchone()
                finally:
                    cursor.close()
            finally:
                raw.close()  # back to the pool, rolled back (a read: nothing to commit)
        except (SQLAlchemyError, self._dbapi_error) as e:
            raise StorageError(f"cannot read credentials: {type(e).__name__}") from e
        return found is not None

    def _row(self, identity: str) -> StoredCredential | None:
        found = self._query(_C.identity == identity)
        return found[0] if found else None

    def _rows(self) -> builtins.list[StoredCredential]:
        return self._query()

    def _revoked_rows(self, since: float) -> builtins.list[Credential]:
        return [s.credential for s in self._query(_C.revoked_at >= since)]

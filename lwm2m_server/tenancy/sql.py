"""SQL tenancy stores over :mod:`lwm2m_server.storage.tenancy_tables` (SQLite by default, PostgreSQL by URL).

Each call is one transaction; IntegrityError becomes StorageConflictError, any other database error StorageError.
"""

from __future__ import annotations

import base64
import builtins
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from lwm2m_server.core.errors import NotFoundError, StorageError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.stores import StorageConflictError
from lwm2m_server.storage.tenancy_tables import AuditEntryRow, GrantRow, SessionRow, TenantRow, TokenRow, UserRow
from lwm2m_server.tenancy.model import Role, TenantKind
from lwm2m_server.tenancy.service import TenancyService, TenancyStores
from lwm2m_server.tenancy.stores import (
    AuditEntry,
    Brand,
    GrantRecord,
    SessionRecord,
    TenantRecord,
    TokenRecord,
    UserRecord,
)

_TOKEN_BY_ID = select(TokenRow.__table__).where(TokenRow.__table__.c.id == bindparam("id"))  # type: ignore[attr-defined]
_TENANT_BY_ID = select(TenantRow.__table__).where(TenantRow.__table__.c.id == bindparam("id"))  # type: ignore[attr-defined]

__all__ = ["SqlAuditStore", "SqlGrantStore", "SqlSessionStore", "SqlTenantStore", "SqlTokenStore", "SqlUserStore",
           "open_tenancy"]


@contextmanager
def _transaction(database: Database, what: str) -> Iterator[Session]:
    try:
        with database.session() as s:
            yield s
            s.commit()
    except IntegrityError:
        raise StorageConflictError(f"{what}: already exists") from None
    except SQLAlchemyError as e:
        raise StorageError(f"{what}: {type(e).__name__}") from e


def _brand_to_json(brand: Brand | None) -> str | None:
    if brand is None:
        return None
    data: dict[str, Any] = {"product_name": brand.product_name, "report_issuer": brand.report_issuer,
                            "primary_color": brand.primary_color, "accent_color": brand.accent_color,
                            "support_url": brand.support_url, "logo_type": brand.logo_type,
                            "logo": base64.b64encode(brand.logo).decode() if brand.logo is not None else None}
    return json.dumps(data, sort_keys=True)


def _brand_from_json(text: str | None) -> Brand | None:
    if text is None:
        return None
    d = json.loads(text)
    logo = d.pop("logo")
    return Brand(**d, logo=base64.b64decode(logo) if logo is not None else None)


def _tenant(row: Any) -> TenantRecord:
    """The record of a tenant row (an ORM object or a Core row: the same attributes)."""
    return TenantRecord(row.id, row.name, TenantKind(row.kind), row.created_at, _brand_from_json(row.brand))


class SqlTenantStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, tenant: TenantRecord) -> None:
        with _transaction(self.database, f"tenant {tenant.id!r}") as s:
            s.add(TenantRow(id=tenant.id, name=tenant.name, kind=tenant.kind.value, created_at=tenant.created_at,
                            brand=_brand_to_json(tenant.brand)))

    def get(self, tenant_id: str) -> TenantRecord | None:
        """One Core query (an API call with a tenant token makes it, after the token's)."""
        try:
            with self.database.engine.connect() as conn:
                row = conn.execute(_TENANT_BY_ID, {"id": tenant_id}).first()
        except SQLAlchemyError as e:
            raise StorageError(f"tenant: {type(e).__name__}") from e
        return None if row is None else _tenant(row)

    def list(self) -> builtins.list[TenantRecord]:
        with _transaction(self.database, "tenants") as s:
            return [_tenant(r) for r in s.exec(select(TenantRow).order_by(col(TenantRow.id)))]

    def set_brand(self, tenant_id: str, brand: Brand | None) -> TenantRecord:
        with _transaction(self.database, "tenant brand") as s:
            row = s.get(TenantRow, tenant_id)
            if row is None:
                raise NotFoundError(f"no tenant {tenant_id!r}")
            row.brand = _brand_to_json(brand)
            s.add(row)
            record = _tenant(row)
        return record


def _token(row: Any) -> TokenRecord:
    """The record of a token row (an ORM object or a Core row: the same attributes)."""
    return TokenRecord(row.id, row.tenant_id, frozenset(Role(r) for r in row.roles.split(",") if r), row.name,
                       bytes(row.salt), bytes(row.digest), row.created_at, row.created_by, row.expires_at,
                       row.revoked_at)


class SqlTokenStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, token: TokenRecord) -> None:
        with _transaction(self.database, f"token {token.id}") as s:
            s.add(TokenRow(id=token.id, tenant_id=token.tenant_id, roles=",".join(sorted(token.roles)),
                           name=token.name, salt=token.salt, digest=token.digest, created_at=token.created_at,
                           created_by=token.created_by, expires_at=token.expires_at, revoked_at=token.revoked_at))

    def get(self, token_id: str) -> TokenRecord | None:
        """One Core query (every API call with a tenant token makes it: no ORM session, no identity map)."""
        try:
            with self.database.engine.connect() as conn:
                row = conn.execute(_TOKEN_BY_ID, {"id": token_id}).first()
        except SQLAlchemyError as e:
            raise StorageError(f"token: {type(e).__name__}") from e
        return None if row is None else _token(row)

    def list(self, *, tenant_id: str) -> builtins.list[TokenRecord]:
        with _transaction(self.database, "tokens") as s:
            rows = s.exec(select(TokenRow).where(TokenRow.tenant_id == tenant_id)
                          .order_by(col(TokenRow.created_at), col(TokenRow.id)))
            return [_token(r) for r in rows]

    def revoke(self, token_id: str, *, now: float) -> TokenRecord:
        with _transaction(self.database, "token revocation") as s:
            row = s.get(TokenRow, token_id)
            if row is None:
                raise NotFoundError(f"no token {token_id}")
            if row.revoked_at is None:
                row.revoked_at = now
                s.add(row)
            record = _token(row)
        return record


class SqlGrantStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, grant: GrantRecord) -> None:
        with _transaction(self.database, "grant") as s:
            s.add(GrantRow(oem_tenant=grant.oem_tenant, operator_tenant=grant.operator_tenant,
                           class_name=grant.class_name, created_at=grant.created_at, created_by=grant.created_by))

    def list(self, *, oem_tenant: str | None = None, operator_tenant: str | None = None
             ) -> builtins.list[GrantRecord]:
        q = select(GrantRow)
        if oem_tenant is not None:
            q = q.where(GrantRow.oem_tenant == oem_tenant)
        if operator_tenant is not None:
            q = q.where(GrantRow.operator_tenant == operator_tenant)
        q = q.order_by(col(GrantRow.created_at), col(GrantRow.oem_tenant), col(GrantRow.operator_tenant),
                       col(GrantRow.class_name))
        with _transaction(self.database, "grants") as s:
            return [GrantRecord(r.oem_tenant, r.operator_tenant, r.class_name, r.created_at, r.created_by)
                    for r in s.exec(q)]

    def remove(self, oem_tenant: str, operator_tenant: str, class_name: str) -> bool:
        with _transaction(self.database, "grant removal") as s:
            row = s.get(GrantRow, (oem_tenant, operator_tenant, class_name))
            if row is None:
                return False
            s.delete(row)
            return True


class SqlAuditStore:
    """Insert-only: this class has no statement that updates or deletes an entry."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def append(self, entry: AuditEntry) -> int:
        row = AuditEntryRow(tenant_id=entry.tenant_id, at=entry.at, subject=entry.subject,
                            roles=",".join(entry.roles), action=entry.action, target=entry.target,
                            outcome=entry.outcome, detail=entry.detail)
        with _transaction(self.database, "audit entry") as s:
            s.add(row)
            s.flush()
            assert row.seq is not None
            return row.seq

    def list(self, *, tenant_id: str | None, after: int = 0, limit: int = 1000) -> Sequence[AuditEntry]:
        q = select(AuditEntryRow).where(col(AuditEntryRow.seq) > after)
        if tenant_id is not None:
            q = q.where(AuditEntryRow.tenant_id == tenant_id)
        with _transaction(self.database, "audit trail") as s:
            return [AuditEntry(r.tenant_id, r.at, r.subject, tuple(x for x in r.roles.split(",") if x), r.action,
                               r.target, r.outcome, r.detail, r.seq or 0)
                    for r in s.exec(q.order_by(col(AuditEntryRow.seq)).limit(limit))]


def _user(row: UserRow) -> UserRecord:
    return UserRecord(row.id, row.tenant_id, row.login, frozenset(Role(r) for r in row.roles.split(",") if r),
                      row.password_hash, row.created_at, row.created_by, row.disabled_at)


class SqlUserStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, user: UserRecord) -> None:
        with _transaction(self.database, f"user {user.login!r}") as s:
            s.add(UserRow(id=user.id, tenant_id=user.tenant_id, login=user.login, roles=",".join(sorted(user.roles)),
                          password_hash=user.password_hash, created_at=user.created_at, created_by=user.created_by,
                          disabled_at=user.disabled_at))

    def get(self, user_id: str) -> UserRecord | None:
        with _transaction(self.database, "user") as s:
            row = s.get(UserRow, user_id)
            return None if row is None else _user(row)

    def by_login(self, login: str) -> UserRecord | None:
        with _transaction(self.database, "user") as s:
            row = s.exec(select(UserRow).where(UserRow.login == login)).first()
            return None if row is None else _user(row)

    def list(self, *, tenant_id: str) -> builtins.list[UserRecord]:
        with _transaction(self.database, "users") as s:
            q = select(UserRow).where(UserRow.tenant_id == tenant_id).order_by(col(UserRow.login))
            return [_user(r) for r in s.exec(q)]

    def disable(self, user_id: str, *, now: float) -> UserRecord:
        with _transaction(self.database, "user") as s:
            row = s.get(UserRow, user_id)
            if row is None:
                raise NotFoundError(f"no user {user_id}")
            if row.disabled_at is None:
                row.disabled_at = now
                s.add(row)
            record = _user(row)
        return record


def _session(row: SessionRow) -> SessionRecord:
    return SessionRecord(bytes(row.digest), row.user_id, row.tenant_id, row.csrf, row.created_at, row.expires_at,
                         row.revoked_at)


class SqlSessionStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, session: SessionRecord) -> None:
        with _transaction(self.database, "session") as s:
            s.add(SessionRow(digest=session.digest, user_id=session.user_id, tenant_id=session.tenant_id,
                             csrf=session.csrf, created_at=session.created_at, expires_at=session.expires_at,
                             revoked_at=session.revoked_at))

    def get(self, digest: bytes) -> SessionRecord | None:
        with _transaction(self.database, "session") as s:
            row = s.get(SessionRow, digest)
            return None if row is None else _session(row)

    def revoke(self, digest: bytes, *, now: float) -> None:
        with _transaction(self.database, "session") as s:
            row = s.get(SessionRow, digest)
            if row is not None and row.revoked_at is None:
                row.revoked_at = now
                s.add(row)

    def revoke_user(self, user_id: str, *, now: float) -> int:
        with _transaction(self.database, "sessions") as s:
            rows = list(s.exec(select(SessionRow).where(SessionRow.user_id == user_id,
                                                        col(SessionRow.revoked_at).is_(None))))
            for row in rows:
                row.revoked_at = now
                s.add(row)
            return len(rows)


def open_tenancy(database: Database) -> TenancyService:
    """The tenancy service over the SQL stores of ``database``."""
    return TenancyService(TenancyStores(SqlTenantStore(database), SqlTokenStore(database), SqlGrantStore(database),
                                        SqlAuditStore(database), SqlUserStore(database), SqlSessionStore(database)))

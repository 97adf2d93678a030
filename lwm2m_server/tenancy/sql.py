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

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from lwm2m_server.core.errors import NotFoundError, StorageError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.stores import StorageConflictError
from lwm2m_server.storage.tenancy_tables import AuditEntryRow, GrantRow, TenantRow, TokenRow
from lwm2m_server.tenancy.model import Role, TenantKind
from lwm2m_server.tenancy.service import TenancyService, TenancyStores
from lwm2m_server.tenancy.stores import AuditEntry, Brand, GrantRecord, TenantRecord, TokenRecord

__all__ = ["SqlAuditStore", "SqlGrantStore", "SqlTenantStore", "SqlTokenStore", "open_tenancy"]


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


def _tenant(row: TenantRow) -> TenantRecord:
    return TenantRecord(row.id, row.name, TenantKind(row.kind), row.created_at, _brand_from_json(row.brand))


class SqlTenantStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, tenant: TenantRecord) -> None:
        with _transaction(self.database, f"tenant {tenant.id!r}") as s:
            s.add(TenantRow(id=tenant.id, name=tenant.name, kind=tenant.kind.value, created_at=tenant.created_at,
                            brand=_brand_to_json(tenant.brand)))

    def get(self, tenant_id: str) -> TenantRecord | None:
        with _transaction(self.database, "tenant") as s:
            row = s.get(TenantRow, tenant_id)
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


def _token(row: TokenRow) -> TokenRecord:
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
        with _transaction(self.database, "token") as s:
            row = s.get(TokenRow, token_id)
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


def open_tenancy(database: Database) -> TenancyService:
    """The tenancy service over the SQL stores of ``database``."""
    return TenancyService(TenancyStores(SqlTenantStore(database), SqlTokenStore(database), SqlGrantStore(database),
                                        SqlAuditStore(database)))

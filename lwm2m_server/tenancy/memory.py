"""In-memory tenancy stores: the reference implementations of :mod:`.stores` (tests, ``--no-db`` runs)."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Sequence
from dataclasses import replace

from lwm2m_server.core.errors import NotFoundError
from lwm2m_server.storage.stores import StorageConflictError
from lwm2m_server.tenancy.stores import (
    AuditEntry,
    Brand,
    GrantRecord,
    SessionRecord,
    TenantRecord,
    TokenRecord,
    UserRecord,
)

__all__ = ["MemoryAuditStore", "MemoryGrantStore", "MemorySessionStore", "MemoryTenantStore", "MemoryTokenStore",
           "MemoryUserStore"]


class MemoryTenantStore:
    def __init__(self) -> None:
        self._rows: dict[str, TenantRecord] = {}
        self._lock = threading.Lock()

    def add(self, tenant: TenantRecord) -> None:
        with self._lock:
            if tenant.id in self._rows:
                raise StorageConflictError(f"tenant {tenant.id!r} exists")
            self._rows[tenant.id] = tenant

    def get(self, tenant_id: str) -> TenantRecord | None:
        with self._lock:
            return self._rows.get(tenant_id)

    def list(self) -> builtins.list[TenantRecord]:
        with self._lock:
            return [self._rows[k] for k in sorted(self._rows)]

    def set_brand(self, tenant_id: str, brand: Brand | None) -> TenantRecord:
        with self._lock:
            if tenant_id not in self._rows:
                raise NotFoundError(f"no tenant {tenant_id!r}")
            row = self._rows[tenant_id] = replace(self._rows[tenant_id], brand=brand)
            return row


class MemoryTokenStore:
    def __init__(self) -> None:
        self._rows: dict[str, TokenRecord] = {}
        self._lock = threading.Lock()

    def add(self, token: TokenRecord) -> None:
        with self._lock:
            if token.id in self._rows:
                raise StorageConflictError(f"token {token.id} exists")
            self._rows[token.id] = token

    def get(self, token_id: str) -> TokenRecord | None:
        with self._lock:
            return self._rows.get(token_id)

    def list(self, *, tenant_id: str) -> builtins.list[TokenRecord]:
        with self._lock:
            rows = [t for t in self._rows.values() if t.tenant_id == tenant_id]
        return sorted(rows, key=lambda t: (t.created_at, t.id))

    def revoke(self, token_id: str, *, now: float) -> TokenRecord:
        with self._lock:
            row = self._rows.get(token_id)
            if row is None:
                raise NotFoundError(f"no token {token_id}")
            if row.revoked_at is None:
                row = self._rows[token_id] = replace(row, revoked_at=now)
            return row


class MemoryGrantStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, str], GrantRecord] = {}
        self._lock = threading.Lock()

    def add(self, grant: GrantRecord) -> None:
        key = (grant.oem_tenant, grant.operator_tenant, grant.class_name)
        with self._lock:
            if key in self._rows:
                raise StorageConflictError("that grant exists")
            self._rows[key] = grant

    def list(self, *, oem_tenant: str | None = None, operator_tenant: str | None = None
             ) -> builtins.list[GrantRecord]:
        with self._lock:
            rows = [g for g in self._rows.values()
                    if (oem_tenant is None or g.oem_tenant == oem_tenant)
                    and (operator_tenant is None or g.operator_tenant == operator_tenant)]
        return sorted(rows, key=lambda g: (g.created_at, g.oem_tenant, g.operator_tenant, g.class_name))

    def remove(self, oem_tenant: str, operator_tenant: str, class_name: str) -> bool:
        with self._lock:
            return self._rows.pop((oem_tenant, operator_tenant, class_name), None) is not None


class MemoryAuditStore:
    def __init__(self) -> None:
        self._rows: builtins.list[AuditEntry] = []
        self._lock = threading.Lock()

    def append(self, entry: AuditEntry) -> int:
        with self._lock:
            seq = len(self._rows) + 1
            self._rows.append(replace(entry, seq=seq))
            return seq

    def list(self, *, tenant_id: str | None, after: int = 0, limit: int = 1000) -> Sequence[AuditEntry]:
        with self._lock:
            rows = self._rows[after:]
        return [e for e in rows if tenant_id is None or e.tenant_id == tenant_id][:limit]


class MemoryUserStore:
    def __init__(self) -> None:
        self._rows: dict[str, UserRecord] = {}
        self._lock = threading.Lock()

    def add(self, user: UserRecord) -> None:
        with self._lock:
            if user.id in self._rows or any(u.login == user.login for u in self._rows.values()):
                raise StorageConflictError("that user exists")
            self._rows[user.id] = user

    def get(self, user_id: str) -> UserRecord | None:
        with self._lock:
            return self._rows.get(user_id)

    def by_login(self, login: str) -> UserRecord | None:
        with self._lock:
            return next((u for u in self._rows.values() if u.login == login), None)

    def list(self, *, tenant_id: str) -> builtins.list[UserRecord]:
        with self._lock:
            return sorted((u for u in self._rows.values() if u.tenant_id == tenant_id), key=lambda u: u.login)

    def disable(self, user_id: str, *, now: float) -> UserRecord:
        with self._lock:
            row = self._rows.get(user_id)
            if row is None:
                raise NotFoundError(f"no user {user_id}")
            if row.disabled_at is None:
                row = self._rows[user_id] = replace(row, disabled_at=now)
            return row


class MemorySessionStore:
    def __init__(self) -> None:
        self._rows: dict[bytes, SessionRecord] = {}
        self._lock = threading.Lock()

    def add(self, session: SessionRecord) -> None:
        with self._lock:
            if session.digest in self._rows:
                raise StorageConflictError("that session exists")
            self._rows[session.digest] = session

    def get(self, digest: bytes) -> SessionRecord | None:
        with self._lock:
            return self._rows.get(digest)

    def revoke(self, digest: bytes, *, now: float) -> None:
        with self._lock:
            row = self._rows.get(digest)
            if row is not None and row.revoked_at is None:
                self._rows[digest] = replace(row, revoked_at=now)

    def revoke_user(self, user_id: str, *, now: float) -> int:
        with self._lock:
            live = [d for d, r in self._rows.items() if r.user_id == user_id and r.revoked_at is None]
            for d in live:
                self._rows[d] = replace(self._rows[d], revoked_at=now)
            return len(live)

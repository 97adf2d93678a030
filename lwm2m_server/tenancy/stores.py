"""The tenancy store interfaces (one Protocol per aggregate) and the records they hold.

Implementations: ``Memory*`` (:mod:`.memory`) and ``Sql*`` (:mod:`.sql`); both pass tests/unit/test_tenancy_stores.py.
Shared invariants:

- a write is atomic and a failure raises :class:`~lwm2m_server.core.errors.StorageError`; adding a record whose key
  exists raises :class:`~lwm2m_server.storage.stores.StorageConflictError` and changes nothing;
- a token record holds a salt and a digest, never the token (see :mod:`.tokens`);
- the audit trail is append-only: no method changes or removes an entry; entries come back in append order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from lwm2m_server.tenancy.model import Role, TenantKind

__all__ = ["AuditEntry", "AuditStore", "Brand", "GrantRecord", "GrantStore", "SessionRecord", "SessionStore",
           "TenantRecord", "TenantStore", "TokenRecord", "TokenStore", "UserRecord", "UserStore"]


@dataclass(frozen=True, slots=True)
class Brand:
    """A tenant's white label: what its users and devices see instead of "SCRATCh"."""

    product_name: str
    report_issuer: str | None = None  # the issuer named in attestation reports (default: product_name)
    primary_color: str | None = None  # "#RRGGBB"
    accent_color: str | None = None
    support_url: str | None = None
    logo: bytes | None = field(default=None, repr=False)
    logo_type: str | None = None  # "image/png" | "image/svg+xml"

    @property
    def issuer(self) -> str:
        return self.report_issuer or self.product_name


@dataclass(frozen=True, slots=True)
class TenantRecord:
    id: str
    name: str
    kind: TenantKind
    created_at: float
    brand: Brand | None = None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API token as stored: scoped to one tenant and a role set, expiring and revocable."""

    id: str
    tenant_id: str
    roles: frozenset[Role]
    name: str
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    created_at: float
    created_by: str
    expires_at: float | None = None
    revoked_at: float | None = None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """An OEM tenant lets an operator tenant deploy its releases of one device class."""

    oem_tenant: str
    operator_tenant: str
    class_name: str  # a class name (matched as RFC 9124 names map to UUIDs) or a class UUID
    created_at: float
    created_by: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One privileged action: who (``subject``, ``roles``), for which tenant, what, on what, when, and how it ended
    (``ok``, ``refused`` or ``failed``). ``seq`` is given by the store on append."""

    tenant_id: str
    at: float
    subject: str
    roles: tuple[str, ...]
    action: str
    target: str
    outcome: str
    detail: str = ""
    seq: int = 0


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A person who signs in to the web interface: one tenant, a set of roles, a scrypt password hash (see
    :mod:`.passwords`); ``login`` is unique across tenants (the sign-in form asks for nothing else)."""

    id: str
    tenant_id: str
    login: str
    roles: frozenset[Role]
    password_hash: str = field(repr=False)
    created_at: float
    created_by: str
    disabled_at: float | None = None


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A signed-in browser. The cookie holds a random secret; the store keeps only ``digest`` = SHA-256 of it.
    ``csrf`` is the token every state-changing form of the session must carry."""

    digest: bytes = field(repr=False)
    user_id: str
    tenant_id: str
    csrf: str = field(repr=False)
    created_at: float
    expires_at: float
    revoked_at: float | None = None

    def active(self, now: float) -> bool:
        return self.revoked_at is None and now < self.expires_at


@runtime_checkable
class TenantStore(Protocol):
    def add(self, tenant: TenantRecord) -> None: ...

    def get(self, tenant_id: str) -> TenantRecord | None: ...

    def list(self) -> list[TenantRecord]:
        """Every tenant, by id."""
        ...

    def set_brand(self, tenant_id: str, brand: Brand | None) -> TenantRecord:
        """Replace the tenant's brand (None: back to the product's own); raises NotFoundError for a missing tenant."""
        ...


@runtime_checkable
class TokenStore(Protocol):
    def add(self, token: TokenRecord) -> None: ...

    def get(self, token_id: str) -> TokenRecord | None: ...

    def list(self, *, tenant_id: str) -> list[TokenRecord]:
        """The tenant's tokens (revoked and expired ones too), oldest first."""
        ...

    def revoke(self, token_id: str, *, now: float) -> TokenRecord:
        """Mark it revoked (a second revocation keeps the first time); NotFoundError for an unknown id."""
        ...


@runtime_checkable
class GrantStore(Protocol):
    def add(self, grant: GrantRecord) -> None:
        """Conflict when the same (oem, operator, class) grant exists."""
        ...

    def list(self, *, oem_tenant: str | None = None, operator_tenant: str | None = None) -> list[GrantRecord]:
        """Grants given by ``oem_tenant`` and/or to ``operator_tenant`` (both None: all), oldest first."""
        ...

    def remove(self, oem_tenant: str, operator_tenant: str, class_name: str) -> bool: ...


@runtime_checkable
class AuditStore(Protocol):
    def append(self, entry: AuditEntry) -> int:
        """Store the entry; returns its ``seq`` (strictly increasing)."""
        ...

    def list(self, *, tenant_id: str | None, after: int = 0, limit: int = 1000) -> Sequence[AuditEntry]:
        """Entries of one tenant (all when None) with ``seq > after``, in append order, at most ``limit``."""
        ...


@runtime_checkable
class UserStore(Protocol):
    def add(self, user: UserRecord) -> None:
        """Conflict when the id or the login exists (in any tenant)."""
        ...

    def get(self, user_id: str) -> UserRecord | None: ...

    def by_login(self, login: str) -> UserRecord | None: ...

    def list(self, *, tenant_id: str) -> list[UserRecord]:
        """The tenant's users, by login."""
        ...

    def disable(self, user_id: str, *, now: float) -> UserRecord:
        """Mark it disabled (kept for the audit trail); NotFoundError for an unknown id."""
        ...


@runtime_checkable
class SessionStore(Protocol):
    def add(self, session: SessionRecord) -> None: ...

    def get(self, digest: bytes) -> SessionRecord | None: ...

    def revoke(self, digest: bytes, *, now: float) -> None:
        """Idempotent; an unknown digest is ignored."""
        ...

    def revoke_user(self, user_id: str, *, now: float) -> int:
        """Revoke every live session of the user; how many."""
        ...

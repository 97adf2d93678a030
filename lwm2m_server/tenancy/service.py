"""The tenancy service: tenants, API tokens, OEM-to-operator grants, brands and the audit trail.

It takes stores (:mod:`.stores`), never a database, and a principal at every privileged call: the tenant acted for
comes from that principal's credentials (the local CLI's system principal names it explicitly).

Invariants:

- every privileged call is authorised by :func:`~lwm2m_server.tenancy.model.authorize` and leaves one audit entry
  (who, tenant, roles, what, on what, when, outcome: ``ok``, ``refused`` or ``failed``), refused calls included;
- a token's text is returned once, by :meth:`TenancyService.create_token`; only its salted digest is stored, and
  no audit entry, event, log line or exception carries it;
- :meth:`TenancyService.authenticate` answers None for every kind of bad token (malformed, unknown, wrong secret,
  expired, revoked, tenant gone) and never says which;
- a token, grant or tenant of another tenant is "not found" for a non-system principal, never "forbidden".
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Final

from lwm2m_server.core.errors import InvalidRequestError, NotFoundError
from lwm2m_server.storage.stores import StorageConflictError
from lwm2m_server.tenancy import passwords, tokens
from lwm2m_server.tenancy.model import (
    ALL_ROLES,
    DEFAULT_TENANT,
    Action,
    ForbiddenError,
    Principal,
    Role,
    TenantKind,
    authorize,
    check_tenant_id,
)
from lwm2m_server.tenancy.stores import (
    AuditEntry,
    AuditStore,
    Brand,
    GrantRecord,
    GrantStore,
    SessionRecord,
    SessionStore,
    TenantRecord,
    TenantStore,
    TokenRecord,
    TokenStore,
    UserRecord,
    UserStore,
)

__all__ = ["DEFAULT_TOKEN_DAYS", "MAX_TOKEN_DAYS", "TenancyService", "TenancyStores", "class_matches",
           "local_admin", "system_principal"]

_log = logging.getLogger(__name__)
DEFAULT_TOKEN_DAYS: Final = 90.0
SESSION_HOURS: Final = 12.0
_LOGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_DUMMY_HASH = passwords.hash_password("x" * passwords.MIN_LENGTH)  # an unknown login costs what a known one does
MAX_TOKEN_DAYS: Final = 5 * 366.0
_DAY: Final = 86_400.0


def system_principal(user: str | None = None) -> Principal:
    """The local CLI on the data directory: it holds the vault key, so it may act for any tenant."""
    try:
        who = user or getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Principal(DEFAULT_TENANT, TenantKind.BOTH, ALL_ROLES, f"local:{who}", system=True)


def local_admin() -> Principal:
    """The embedded default's API token file (``DATA_DIR/api-token``): every role of the default tenant."""
    return Principal(DEFAULT_TENANT, TenantKind.BOTH, ALL_ROLES, "local-admin-token")


def class_matches(grant_class: str, vendor_id: uuid.UUID, class_id: uuid.UUID) -> bool:
    """Whether a grant's class (a UUID, or a name mapped as RFC 9124 suggests: ``uuid5(vendor_id, name)``) is the
    class a manifest declares."""
    try:
        return uuid.UUID(grant_class) == class_id
    except ValueError:
        return uuid.uuid5(vendor_id, grant_class) == class_id


@dataclass(frozen=True, slots=True)
class TenancyStores:
    tenants: TenantStore
    tokens: TokenStore
    grants: GrantStore
    audit: AuditStore
    users: UserStore
    sessions: SessionStore


class TenancyService:
    def __init__(self, stores: TenancyStores, *, clock: Callable[[], float] = time.time,
                 on_record: Callable[[AuditEntry], None] | None = None) -> None:
        """``on_record`` hears of every audit entry once stored (the server copies them to its audit file)."""
        self.stores = stores
        self.clock = clock
        self.on_record = on_record

    # ------------------------------------------------------------------ audit

    def record(self, by: Principal, action: str, target: str, outcome: str, *, tenant_id: str | None = None,
               detail: str = "") -> None:
        """Append one audit entry (for ``tenant_id``, default the principal's tenant)."""
        entry = AuditEntry(tenant_id or by.tenant_id, self.clock(), by.subject, tuple(by.role_names()), action,
                           target[:512], outcome, detail[:512])
        seq = self.stores.audit.append(entry)
        if self.on_record is not None:
            try:  # a copy (the audit file): the stored entry is what counts
                self.on_record(replace(entry, seq=seq))
            except Exception:
                _log.exception("copying an audit entry failed")

    @contextmanager
    def audited(self, by: Principal, action: Action, target: str, *, tenant_id: str | None = None,
                what: str | None = None) -> Iterator[None]:
        """Authorise ``action`` for ``tenant_id`` and audit the outcome of the block (``refused`` when authorisation
        fails or a not-found hides another tenant's resource, ``failed`` on any other error, else ``ok``)."""
        name = what or action.value
        try:
            authorize(by, action, tenant_id)
        except ForbiddenError as e:
            self.record(by, name, target, "refused", tenant_id=tenant_id, detail=str(e))
            raise
        try:
            yield
        except (ForbiddenError, NotFoundError) as e:
            self.record(by, name, target, "refused", tenant_id=tenant_id, detail=str(e))
            raise
        except Exception as e:
            self.record(by, name, target, "failed", tenant_id=tenant_id, detail=type(e).__name__ + ": " + str(e))
            raise
        self.record(by, name, target, "ok", tenant_id=tenant_id)

    def audit_trail(self, *, tenant_id: str, by: Principal, after: int = 0, limit: int = 1000
                    ) -> Sequence[AuditEntry]:
        authorize(by, Action.READ_AUDIT, tenant_id)
        return self.stores.audit.list(tenant_id=tenant_id, after=after, limit=min(max(limit, 1), 10_000))

    # ------------------------------------------------------------------ tenants

    def tenant(self, tenant_id: str) -> TenantRecord:
        """The tenant (the default tenant exists implicitly, of kind ``both``); NotFoundError otherwise."""
        found = self.stores.tenants.get(tenant_id)
        if found is not None:
            return found
        if tenant_id == DEFAULT_TENANT:
            return TenantRecord(DEFAULT_TENANT, "Default", TenantKind.BOTH, 0.0)
        raise NotFoundError(f"no tenant {tenant_id!r}")

    def tenants(self, *, by: Principal) -> list[TenantRecord]:
        if by.system:
            stored = self.stores.tenants.list()
            return stored if any(t.id == DEFAULT_TENANT for t in stored) else [self.tenant(DEFAULT_TENANT), *stored]
        return [self.tenant(by.tenant_id)]

    def create_tenant(self, tenant_id: str, *, kind: TenantKind, name: str = "", by: Principal) -> TenantRecord:
        if not by.system:
            self.record(by, "create-tenant", tenant_id, "refused", detail="only the local administrator")
            raise ForbiddenError("tenants are created with the CLI on the server's data directory")
        check_tenant_id(tenant_id)
        record = TenantRecord(tenant_id, name.strip() or tenant_id, kind, self.clock())
        with self.audited(by, Action.MANAGE_TOKENS, tenant_id, tenant_id=tenant_id, what="create-tenant"):
            if tenant_id == DEFAULT_TENANT or self.stores.tenants.get(tenant_id) is not None:
                raise StorageConflictError(f"tenant {tenant_id!r} exists")
            self.stores.tenants.add(record)
        return record

    # ------------------------------------------------------------------ tokens

    def create_token(self, *, tenant_id: str, roles: frozenset[Role], by: Principal, name: str = "",
                     expires_days: float | None = DEFAULT_TOKEN_DAYS) -> tuple[TokenRecord, str]:
        """A new token for ``tenant_id`` with ``roles``; returns its record and its text (shown once).
        ``expires_days`` None means it never expires (the system principal only)."""
        tenant = self._visible_tenant(tenant_id, by)
        now = self.clock()
        with self.audited(by, Action.MANAGE_TOKENS, f"token for {','.join(sorted(roles))}", tenant_id=tenant.id,
                          what="create-token"):
            if not roles:
                raise InvalidRequestError("a token needs at least one role")
            if expires_days is None and not by.system:
                raise InvalidRequestError("a token made through the API expires: give expires_days")
            if expires_days is not None and not 0 < expires_days <= MAX_TOKEN_DAYS:
                raise InvalidRequestError(f"expiry is between 0 and {MAX_TOKEN_DAYS:g} days")
            if not by.system and not roles <= by.roles:
                raise ForbiddenError("a token cannot be given roles its maker does not hold")
            minted = tokens.mint()
            record = TokenRecord(minted.id, tenant.id, roles, name.strip()[:128] or minted.id, minted.salt,
                                 minted.digest, now, by.subject,
                                 None if expires_days is None else now + expires_days * _DAY)
            self.stores.tokens.add(record)
        return record, minted.text

    def revoke_token(self, token_id: str, *, by: Principal) -> TokenRecord:
        record = self.stores.tokens.get(token_id)
        tenant_id = record.tenant_id if record is not None and (by.system or record.tenant_id == by.tenant_id) \
            else by.tenant_id
        with self.audited(by, Action.MANAGE_TOKENS, token_id, tenant_id=tenant_id, what="revoke-token"):
            if record is None or record.tenant_id != tenant_id:
                raise NotFoundError(f"no token {token_id[:40]}")
            return self.stores.tokens.revoke(token_id, now=self.clock())

    def tokens(self, *, tenant_id: str, by: Principal) -> list[TokenRecord]:
        tenant = self._visible_tenant(tenant_id, by)
        authorize(by, Action.MANAGE_TOKENS, tenant.id)
        return self.stores.tokens.list(tenant_id=tenant.id)

    def authenticate(self, text: str) -> Principal | None:
        parsed = tokens.parse(text)
        if parsed is None:
            return None
        token_id, secret = parsed
        record = self.stores.tokens.get(token_id)
        if record is None or not tokens.matches(record.salt, record.digest, secret) or not record.active(self.clock()):
            return None
        try:
            tenant = self.tenant(record.tenant_id)
        except NotFoundError:
            return None
        return Principal(tenant.id, tenant.kind, record.roles, record.id)

    # ------------------------------------------------------------------ web users and sessions

    def create_user(self, *, tenant_id: str, login: str, roles: frozenset[Role], password: str, by: Principal
                    ) -> UserRecord:
        """A web user of ``tenant_id``; ``login`` is unique across tenants; the password is kept as a scrypt hash."""
        tenant = self._visible_tenant(tenant_id, by)
        with self.audited(by, Action.MANAGE_USERS, login[:128], tenant_id=tenant.id, what="create-user"):
            if not _LOGIN.fullmatch(login):
                raise InvalidRequestError("a login is 1-128 letters, digits and . _ @ + -")
            if not roles:
                raise InvalidRequestError("a user needs at least one role")
            if not by.system and not roles <= by.roles:
                raise ForbiddenError("a user cannot be given roles its maker does not hold")
            if self.stores.users.by_login(login) is not None:
                raise StorageConflictError(f"login {login!r} is taken")
            user = UserRecord("usr-" + secrets.token_hex(6), tenant.id, login, roles,
                              passwords.hash_password(password), self.clock(), by.subject)
            self.stores.users.add(user)
        return user

    def users(self, *, tenant_id: str, by: Principal) -> list[UserRecord]:
        tenant = self._visible_tenant(tenant_id, by)
        authorize(by, Action.MANAGE_USERS, tenant.id)
        return self.stores.users.list(tenant_id=tenant.id)

    def disable_user(self, user_id: str, *, by: Principal) -> UserRecord:
        """Disable a user and end its sessions at once."""
        user = self.stores.users.get(user_id)
        tenant_id = user.tenant_id if user is not None and (by.system or user.tenant_id == by.tenant_id) \
            else by.tenant_id
        with self.audited(by, Action.MANAGE_USERS, user_id[:40], tenant_id=tenant_id, what="disable-user"):
            if user is None or user.tenant_id != tenant_id:
                raise NotFoundError(f"no user {user_id[:40]}")
            self.stores.sessions.revoke_user(user.id, now=self.clock())
            return self.stores.users.disable(user.id, now=self.clock())

    def sign_in(self, login: str, password: str) -> tuple[str, SessionRecord] | None:
        """A new session for the right password of an enabled user: ``(cookie secret, session)``; None otherwise
        (a wrong password, an unknown or disabled login: one answer, one cost). Audited either way."""
        user = self.stores.users.by_login(login) if len(login) <= 128 else None
        good = passwords.verify(user.password_hash if user is not None else _DUMMY_HASH, password)
        if user is None or not good or user.disabled_at is not None:
            if user is not None:
                self.record(self._user_principal(user), "sign-in", login[:128], "refused",
                            detail="wrong password" if not good else "disabled")
            return None
        now = self.clock()
        secret = secrets.token_urlsafe(32)
        session = SessionRecord(_session_digest(secret), user.id, user.tenant_id, secrets.token_urlsafe(24), now,
                                now + SESSION_HOURS * 3600)
        self.stores.sessions.add(session)
        self.record(self._user_principal(user), "sign-in", login, "ok")
        return secret, session

    def one_time_link(self, user_id: str, *, by: Principal, minutes: float = 10.0) -> str:
        """A secret that signs ``user_id`` in once, within ``minutes`` (:meth:`redeem`); for the system principal
        (``scratch demo --serve`` prints one). It is a session of its own that :meth:`redeem` ends at once."""
        if not by.system:
            raise ForbiddenError("one-time sign-in links are made on the server's machine")
        user = self.stores.users.get(user_id)
        if user is None or user.disabled_at is not None:
            raise NotFoundError(f"no user {user_id[:40]}")
        now = self.clock()
        secret = secrets.token_urlsafe(32)
        self.stores.sessions.add(SessionRecord(_session_digest(secret), user.id, user.tenant_id, "", now,
                                               now + minutes * 60))
        self.record(by, "one-time-link", user.login, "ok", tenant_id=user.tenant_id)
        return secret

    def redeem(self, secret: str) -> tuple[str, SessionRecord] | None:
        """Exchange a one-time link's secret for a new session (the link is spent either way)."""
        found = self.session(secret)
        self.stores.sessions.revoke(_session_digest(secret), now=self.clock())
        if found is None or found[1].csrf:  # a real session's cookie is not a one-time link
            return None
        principal, old = found
        now = self.clock()
        fresh = secrets.token_urlsafe(32)
        session = SessionRecord(_session_digest(fresh), old.user_id, old.tenant_id, secrets.token_urlsafe(24), now,
                                now + SESSION_HOURS * 3600)
        self.stores.sessions.add(session)
        self.record(principal, "sign-in", principal.subject, "ok", detail="one-time link")
        return fresh, session

    def session(self, secret: str) -> tuple[Principal, SessionRecord] | None:
        """The principal of a live session's cookie secret (None: unknown, expired, signed out, user disabled)."""
        if not secret or len(secret) > 128:
            return None
        session = self.stores.sessions.get(_session_digest(secret))
        if session is None or not session.active(self.clock()):
            return None
        user = self.stores.users.get(session.user_id)
        if user is None or user.disabled_at is not None:
            return None
        try:
            return self._user_principal(user), session
        except NotFoundError:
            return None

    def sign_out(self, secret: str) -> None:
        found = self.session(secret)
        self.stores.sessions.revoke(_session_digest(secret), now=self.clock())
        if found is not None:
            self.record(found[0], "sign-out", found[0].subject, "ok")

    def _user_principal(self, user: UserRecord) -> Principal:
        tenant = self.tenant(user.tenant_id)
        return Principal(tenant.id, tenant.kind, user.roles, f"user:{user.login}")

    # ------------------------------------------------------------------ grants

    def grant(self, *, oem_tenant: str, operator_tenant: str, class_name: str, by: Principal) -> GrantRecord:
        """The OEM lets the operator deploy its releases of ``class_name`` (a class name or UUID)."""
        oem = self._visible_tenant(oem_tenant, by)
        with self.audited(by, Action.GRANT, f"{operator_tenant}/{class_name}", tenant_id=oem.id, what="grant"):
            operator = self.tenant(operator_tenant)  # any operator may be named: the OEM knows its partners
            if operator.kind is TenantKind.OEM:
                raise InvalidRequestError(f"tenant {operator.id!r} is an OEM: it runs no campaigns")
            if operator.id == oem.id:
                raise InvalidRequestError("a tenant deploys its own releases without a grant")
            if not class_name.strip() or len(class_name) > 128:
                raise InvalidRequestError("give a device class (1-128 characters)")
            record = GrantRecord(oem.id, operator.id, class_name.strip(), self.clock(), by.subject)
            self.stores.grants.add(record)
        return record

    def revoke_grant(self, *, oem_tenant: str, operator_tenant: str, class_name: str, by: Principal) -> None:
        oem = self._visible_tenant(oem_tenant, by)
        with self.audited(by, Action.GRANT, f"{operator_tenant}/{class_name}", tenant_id=oem.id,
                          what="revoke-grant"):
            if not self.stores.grants.remove(oem.id, operator_tenant, class_name):
                raise NotFoundError(f"no grant of {class_name!r} to {operator_tenant!r}")

    def grants(self, *, tenant_id: str, by: Principal) -> list[GrantRecord]:
        """Grants given by or to the tenant."""
        tenant = self._visible_tenant(tenant_id, by)
        authorize(by, Action.READ, tenant.id)
        given = self.stores.grants.list(oem_tenant=tenant.id)
        return given + [g for g in self.stores.grants.list(operator_tenant=tenant.id) if g not in given]

    def may_deploy(self, *, oem_tenant: str, operator_tenant: str, vendor_id: uuid.UUID, class_id: uuid.UUID) -> bool:
        """Whether ``operator_tenant`` holds a grant of ``oem_tenant`` for that class (a tenant always may deploy
        its own releases)."""
        if oem_tenant == operator_tenant:
            return True
        return any(class_matches(g.class_name, vendor_id, class_id)
                   for g in self.stores.grants.list(oem_tenant=oem_tenant, operator_tenant=operator_tenant))

    # ------------------------------------------------------------------ brands

    def brand(self, tenant_id: str) -> Brand | None:
        try:
            return self.tenant(tenant_id).brand
        except NotFoundError:
            return None

    def set_brand(self, tenant_id: str, brand: Brand | None, *, by: Principal) -> TenantRecord:
        tenant = self._visible_tenant(tenant_id, by)
        with self.audited(by, Action.MANAGE_BRAND, tenant.id, tenant_id=tenant.id, what="brand"):
            if tenant.id == DEFAULT_TENANT and self.stores.tenants.get(DEFAULT_TENANT) is None:
                self.stores.tenants.add(tenant)
            return self.stores.tenants.set_brand(tenant.id, brand)

    # ------------------------------------------------------------------ helpers

    def _visible_tenant(self, tenant_id: str, by: Principal) -> TenantRecord:
        """The tenant, if ``by`` may see it at all: its own, or any for the system principal. Another tenant is
        "not found" (audited as refused), so its existence does not leak."""
        if not by.system and tenant_id != by.tenant_id:
            self.record(by, "lookup-tenant", tenant_id, "refused", detail="another tenant")
            raise NotFoundError(f"no tenant {tenant_id[:64]!r}")
        try:
            return self.tenant(tenant_id)
        except NotFoundError:
            self.record(by, "lookup-tenant", tenant_id[:64], "refused", detail="no such tenant")
            raise




def _session_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii", "replace")).digest()

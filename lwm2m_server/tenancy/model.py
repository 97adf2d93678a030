"""Tenants, roles and the one table of what each role may do. Pure: no I/O, no clock.

A tenant is an OEM (it signs releases and grants operators the right to deploy them), an operator (it runs devices
and campaigns), or both (the one-company case). A principal acts for exactly one tenant with a set of roles; what it
may do is :data:`PERMISSIONS` of its roles, cut down to what its tenant's kind allows (:data:`KIND_ACTIONS`).

Invariants:

- :func:`authorize` is the only decision point: every API route and every CLI command asks it, with the tenant taken
  from the principal (never from the request), and a refusal is :class:`ForbiddenError` (HTTP 403, CoAP 4.03);
- a resource of another tenant is never "forbidden" but "not found": services look it up scoped by the principal's
  tenant, so its existence does not leak;
- the system principal (whoever holds the data directory and its vault key: the local CLI) may act for any tenant;
  a token principal only for its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from lwm2m_server.core.errors import CoapCode, InvalidRequestError, Lwm2mError

__all__ = [
    "ALL_ROLES",
    "DEFAULT_TENANT",
    "KIND_ACTIONS",
    "PERMISSIONS",
    "Action",
    "ForbiddenError",
    "Principal",
    "Role",
    "TenantKind",
    "authorize",
    "check_tenant_id",
    "parse_roles",
    "permitted",
]

DEFAULT_TENANT: Final = "default"
_TENANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class ForbiddenError(Lwm2mError):
    """The principal is known but its roles (or its tenant's kind) do not allow the action."""

    coap_code = CoapCode.FORBIDDEN


class TenantKind(StrEnum):
    OEM = "oem"
    OPERATOR = "operator"
    BOTH = "both"


class Role(StrEnum):
    ADMIN = "admin"  # users, tokens, branding, keys
    RELEASE_MANAGER = "release-manager"  # releases, keys, grants
    OPERATOR = "operator"  # devices, campaigns
    AUDITOR = "auditor"  # read-only: reports, usage, audit trail


ALL_ROLES: Final = frozenset(Role)


class Action(StrEnum):
    """What a principal does, coarse enough that a table of them is readable (docs/tenants.md prints it)."""

    READ = "read"  # list and show devices, releases, campaigns, reports
    READ_USAGE = "read-usage"  # usage records and their export
    READ_AUDIT = "read-audit"  # the tenant's audit trail
    MANAGE_USERS = "manage-users"  # create, list and disable the tenant's web users
    MANAGE_TOKENS = "manage-tokens"  # create, list and revoke the tenant's API tokens
    MANAGE_BRAND = "manage-brand"  # the tenant's white label
    MANAGE_KEYS = "manage-keys"  # signing keys: create, add public, export public
    MANAGE_RELEASES = "manage-releases"  # create, import, approve (countersign) releases
    GRANT = "grant"  # an OEM grants an operator the right to deploy its releases
    MANAGE_DEVICES = "manage-devices"  # LwM2M operations on devices, tags, re-keying, single updates
    RUN_CAMPAIGNS = "run-campaigns"  # create, start, pause, resume, cancel campaigns


PERMISSIONS: Final[dict[Role, frozenset[Action]]] = {
    Role.ADMIN: frozenset({Action.READ, Action.READ_USAGE, Action.READ_AUDIT, Action.MANAGE_USERS, Action.MANAGE_TOKENS,
                           Action.MANAGE_BRAND, Action.MANAGE_KEYS}),
    Role.RELEASE_MANAGER: frozenset({Action.READ, Action.MANAGE_KEYS, Action.MANAGE_RELEASES, Action.GRANT}),
    Role.OPERATOR: frozenset({Action.READ, Action.MANAGE_DEVICES, Action.RUN_CAMPAIGNS}),
    Role.AUDITOR: frozenset({Action.READ, Action.READ_USAGE, Action.READ_AUDIT}),
}
"""Least privilege (ENISA GP-TM-27): no role holds everything; the embedded default's local admin token holds all
four roles of the default tenant."""

_OPERATOR_ONLY: Final = frozenset({Action.MANAGE_DEVICES, Action.RUN_CAMPAIGNS})
_OEM_ONLY: Final = frozenset({Action.GRANT})
KIND_ACTIONS: Final[dict[TenantKind, frozenset[Action]]] = {
    TenantKind.OEM: frozenset(Action) - _OPERATOR_ONLY,
    TenantKind.OPERATOR: frozenset(Action) - _OEM_ONLY,
    TenantKind.BOTH: frozenset(Action),
}
"""An OEM has no devices to manage; an operator grants nobody its releases."""


def check_tenant_id(text: str) -> str:
    """A tenant id: 1-63 lower-case letters, digits and dashes, starting with a letter or digit."""
    if not _TENANT_ID.fullmatch(text):
        raise InvalidRequestError(f"invalid tenant id {text[:70]!r}: use 1-63 lower-case letters, digits and '-'")
    return text


def parse_roles(names: Iterable[str]) -> frozenset[Role]:
    """Role names (``admin``, ``release-manager``, ``operator``, ``auditor``; a comma-separated list is split)."""
    roles: set[Role] = set()
    for name in names:
        for part in name.split(","):
            part = part.strip()
            try:
                roles.add(Role(part))
            except ValueError:
                raise InvalidRequestError(f"unknown role {part[:40]!r}: use one of "
                                          + ", ".join(r.value for r in Role)) from None
    if not roles:
        raise InvalidRequestError("give at least one role")
    return frozenset(roles)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is acting: for one tenant (of ``kind``) with ``roles``. ``subject`` names it in the audit trail (a token
    id such as ``tok-3f9a1c2b7d4e``, or ``local:<user>`` for the CLI on the data directory); ``system`` is that
    local CLI, which may act for any tenant."""

    tenant_id: str
    kind: TenantKind
    roles: frozenset[Role]
    subject: str
    system: bool = False

    def may(self, action: Action) -> bool:
        return permitted(self.kind, self.roles, action)

    def role_names(self) -> list[str]:
        return sorted(r.value for r in self.roles)


def permitted(kind: TenantKind, roles: Iterable[Role], action: Action) -> bool:
    """Whether a principal of a ``kind`` tenant with ``roles`` may do ``action``."""
    return action in KIND_ACTIONS[kind] and any(action in PERMISSIONS[r] for r in roles)


def authorize(principal: Principal, action: Action, tenant_id: str | None = None) -> None:
    """Raise :class:`ForbiddenError` unless ``principal`` may do ``action`` (for ``tenant_id``, default its own).

    Acting for another tenant is allowed to the system principal only; anyone else asking for another tenant gets
    the same refusal as for a missing role (the caller turns a cross-tenant lookup into 404 before it gets here)."""
    if principal.system:
        return
    if tenant_id is not None and tenant_id != principal.tenant_id:
        raise ForbiddenError("this token acts for another tenant")
    if not principal.may(action):
        raise ForbiddenError(f"{action.value} needs one of the roles "
                             + ", ".join(sorted(r.value for r in Role if action in PERMISSIONS[r]))
                             + f" (this token has {', '.join(principal.role_names()) or 'none'})"
                             + ("" if action in KIND_ACTIONS[principal.kind]
                                else f"; a tenant of kind {principal.kind.value} cannot do it at all"))

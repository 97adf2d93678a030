"""Importing an OEM's pre-signed release into an operator's tenant (issue 13: OEM-to-operator trust).

The OEM signs on its own premises (``scratch firmware sign`` with its own key file); the operator's server holds
only the OEM's public key, registered in the OEM's tenant. Import order:

1. resolve the release key: in ``origin`` when given; else in the importing tenant; else among the OEM tenants
   that granted the importing tenant a device class (exactly one of them may hold a release key of that name);
2. verify every envelope against that key (:func:`~lwm2m_server.fota.releases.verify_signed`: signature, digest,
   image, one vendor/class/sequence/version);
3. across tenants, require the OEM's grant for the manifest's class (:meth:`TenancyService.may_deploy`): without it
   the import is refused (403) and nothing is stored;
4. store the envelopes exactly as signed, with ``origin_tenant`` = the OEM.

Every import is audited (``import-release``), refusals included. A campaign checks the grant again at creation, so
revoking a grant stops further rollouts of releases already imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lwm2m_server.core.errors import NotFoundError
from lwm2m_server.fota.releases import Release, Releases, SigningKey, SigningKeys, verify_signed
from lwm2m_server.tenancy.model import Action, ForbiddenError, Principal
from lwm2m_server.tenancy.service import TenancyService

__all__ = ["check_deploy_grant", "import_release", "resolve_release_key"]


def resolve_release_key(keys: SigningKeys, tenancy: TenancyService, name: str, *, tenant_id: str,
                        origin: str | None) -> tuple[SigningKey, str | None]:
    """The release key ``name`` and the tenant it belongs to when that is not ``tenant_id`` (step 1 above)."""
    if origin is not None and origin != tenant_id:
        if not any(g.oem_tenant == origin for g in tenancy.stores.grants.list(operator_tenant=tenant_id)):
            raise NotFoundError(f"no release key {name!r} of a tenant that granted {tenant_id!r} a device class")
        return keys.get(name, tenant_id=origin), origin
    try:
        return keys.get(name, tenant_id=tenant_id), None
    except NotFoundError:
        if origin is not None:
            raise
    found: list[tuple[SigningKey, str]] = []
    for oem in sorted({g.oem_tenant for g in tenancy.stores.grants.list(operator_tenant=tenant_id)}):
        try:
            found.append((keys.get(name, tenant_id=oem), oem))
        except NotFoundError:
            continue
    if not found:
        raise NotFoundError(f"no release key {name!r} in tenant {tenant_id!r} nor in a tenant that granted it a "
                            "device class (an OEM grants one with `scratch tenant grant OEM OPERATOR --class C`)")
    if len(found) > 1:
        raise NotFoundError(f"release key {name!r} exists in several granting tenants "
                            f"({', '.join(t for _, t in found)}): name one with --origin")
    return found[0]


def check_deploy_grant(tenancy: TenancyService, *, oem_tenant: str, operator_tenant: str, vendor_id: Any,
                       class_id: Any, what: str) -> None:
    """Raise :class:`ForbiddenError` unless ``operator_tenant`` holds ``oem_tenant``'s grant for that class."""
    if not tenancy.may_deploy(oem_tenant=oem_tenant, operator_tenant=operator_tenant, vendor_id=vendor_id,
                              class_id=class_id):
        raise ForbiddenError(f"{what}: tenant {operator_tenant!r} holds no grant of {oem_tenant!r} for device class "
                             f"{class_id} (the OEM grants one: `scratch tenant grant {oem_tenant} {operator_tenant} "
                             "--class CLASS`)")


def import_release(packages: Sequence[tuple[str, bytes]], *, key_name: str, tenant_id: str, by: Principal,
                   keys: SigningKeys, releases: Releases, tenancy: TenancyService, now: float,
                   origin: str | None = None) -> Release:
    """Verify and store pre-signed ``packages`` as one release of ``tenant_id`` (see the module docstring)."""
    with tenancy.audited(by, Action.MANAGE_RELEASES, f"key {key_name}" + (f" of {origin}" if origin else ""),
                         tenant_id=tenant_id, what="import-release"):
        key, owner = resolve_release_key(keys, tenancy, key_name, tenant_id=tenant_id, origin=origin)
        verified = verify_signed(packages, key)
        if owner is not None:
            check_deploy_grant(tenancy, oem_tenant=owner, operator_tenant=tenant_id, vendor_id=verified.vendor_id,
                               class_id=verified.class_id, what="import refused")
        return releases.store_import(verified, tenant_id=tenant_id, origin_tenant=owner, now=now)

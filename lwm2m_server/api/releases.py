"""REST routes of the caller's signing keys and of release import and approval (mounted by ``create_app``).

An OEM's private key never comes here: ``POST /api/keys`` with ``public_pem`` registers a public-only key; without
it, a key pair is made and sealed in the server's vault (the one-company case). Imports go through
:func:`~lwm2m_server.fota.release_import.import_release` (grant checked, audited).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from lwm2m_server.api.auth import caller
from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.fota.release_import import import_release
from lwm2m_server.fota.releases import MAX_IMAGES, Releases, SigningKeys
from lwm2m_server.tenancy.model import Action, Principal
from lwm2m_server.tenancy.service import TenancyService

__all__ = ["MAX_IMPORT_BODY", "RELEASE_BODY_CAPS", "release_routes"]

MAX_IMPORT_BODY = 96 << 20  # base64 of up to 64 MiB of packages, plus JSON
RELEASE_BODY_CAPS = {"/api/releases/import": MAX_IMPORT_BODY}


class KeyBody(BaseModel):
    name: str
    role: str = "release"
    public_pem: str | None = None  # an OEM's public key; None: a key pair sealed in the vault
    alg: str = "ES256"


class PackageBody(BaseModel):
    name: str
    base64: str


class ImportBody(BaseModel):
    key: str
    origin: str | None = None
    packages: list[PackageBody] = Field(min_length=1, max_length=MAX_IMAGES)


class ApproveBody(BaseModel):
    key: str


def _public(key: Any) -> dict[str, Any]:
    return {k: v for k, v in key.as_dict().items() if k != "tenant"}


def release_routes(app: FastAPI, keys: SigningKeys, releases: Releases, tenancy: TenancyService) -> None:
    @app.get("/api/keys")
    async def list_keys(p: Principal = caller(Action.READ)) -> list[dict[str, Any]]:
        return [_public(k) for k in keys.list(tenant_id=p.tenant_id)]

    @app.post("/api/keys", status_code=201)
    async def add_key(body: KeyBody, p: Principal = caller(Action.MANAGE_KEYS)) -> dict[str, Any]:
        with tenancy.audited(p, Action.MANAGE_KEYS, body.name[:64], what="add-key"):
            if body.public_pem is not None:
                key = keys.add_public(body.name, body.role, body.public_pem.encode(), tenant_id=p.tenant_id,
                                      now=time.time())
            else:
                key = keys.create(body.name, body.role, alg=body.alg, tenant_id=p.tenant_id, now=time.time())
        return _public(key)

    @app.post("/api/releases/import", status_code=201)
    async def import_(body: ImportBody, p: Principal = caller(Action.MANAGE_RELEASES)) -> dict[str, Any]:
        try:
            packages = [(pkg.name, base64.b64decode(pkg.base64, validate=True)) for pkg in body.packages]
        except (binascii.Error, ValueError):
            raise InvalidRequestError("a package is not base64") from None
        release = import_release(packages, key_name=body.key, origin=body.origin, tenant_id=p.tenant_id, by=p,
                                 keys=keys, releases=releases, tenancy=tenancy, now=time.time())
        return dict(release.as_dict())

    @app.post("/api/releases/{release_id}/approve")
    async def approve(release_id: str, body: ApproveBody, p: Principal = caller(Action.MANAGE_RELEASES)
                      ) -> dict[str, Any]:
        """The tenant's deployment key countersigns the release (devices then verify both signatures)."""
        with tenancy.audited(p, Action.MANAGE_RELEASES, release_id[:64], what="approve-release"):
            release = releases.approve(release_id, body.key, tenant_id=p.tenant_id, now=time.time())
        return dict(release.as_dict())

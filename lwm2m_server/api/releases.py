"""REST routes of the caller's signing keys and of release creation, import, approval and deltas (mounted by
``create_app``).

An OEM's private key never comes here: ``POST /api/keys`` with ``public_pem`` registers a public-only key; without
it, a key pair is made and sealed in the server's vault (the one-company case). Imports go through
:func:`~lwm2m_server.fota.release_import.import_release` (grant checked, audited).

``POST /api/releases`` (multipart, as the web interface uploads images) makes a release of the ``file`` parts:
form fields ``vendor``, ``class_name``, ``version``, ``key`` (optional) and ``package_format`` (``suit``,
``opaque`` or ``system``); a ``system`` release also takes ``components``, a JSON list with one object per file, in
file order: ``{"name": ..., "kind": "image"|"data", "version": ... (optional), "after": [...]}``. ``POST
/api/releases/{id}/deltas`` with ``{"base_release": id}`` makes (once) a system release's delta for the devices
that run that base.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, UploadFile
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from lwm2m_server.api.auth import caller
from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.fota.release_import import import_release
from lwm2m_server.fota.releases import (
    MAX_IMAGE_SIZE,
    MAX_IMAGES,
    PACKAGE_FORMATS,
    SYSTEM_FORMAT,
    Releases,
    SigningKeys,
    SystemComponent,
)
from lwm2m_server.storage.release_store import saving_percent
from lwm2m_server.tenancy.model import Action, Principal
from lwm2m_server.tenancy.service import TenancyService

__all__ = ["MAX_CREATE_BODY", "MAX_IMPORT_BODY", "RELEASE_BODY_CAPS", "release_routes"]

MAX_IMPORT_BODY = 96 << 20  # base64 of up to 64 MiB of packages, plus JSON
MAX_CREATE_BODY = MAX_IMAGE_SIZE + (1 << 20)  # the images (at most 64 MiB in all) and the multipart framing
RELEASE_BODY_CAPS = {"/api/releases/import": MAX_IMPORT_BODY, "/api/releases": MAX_CREATE_BODY}


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


class DeltaBody(BaseModel):
    base_release: str = Field(max_length=64)


class ComponentSpec(BaseModel):
    name: str = Field(max_length=64)
    kind: str = "image"
    version: str | None = Field(default=None, max_length=64)
    after: list[str] = Field(default_factory=list, max_length=MAX_IMAGES)


_COMPONENTS = TypeAdapter(list[ComponentSpec])


async def _files(parts: list[UploadFile]) -> list[tuple[str, bytes]]:
    """Each part whole, named by its file name; at most :data:`MAX_IMAGE_SIZE` bytes in all."""
    if not 1 <= len(parts) <= MAX_IMAGES:
        raise InvalidRequestError(f"a release takes 1 to {MAX_IMAGES} files")
    files: list[tuple[str, bytes]] = []
    left = MAX_IMAGE_SIZE
    for part in parts:
        data = await part.read(left + 1)
        if len(data) > left:
            raise InvalidRequestError(f"the files total more than {MAX_IMAGE_SIZE} bytes")
        left -= len(data)
        files.append((Path(part.filename or "image.bin").name, data))
    return files


def _system(files: list[tuple[str, bytes]], components: str | None) -> list[SystemComponent]:
    if components is None:
        raise InvalidRequestError("a system release needs 'components': a JSON list, one object per file")
    try:
        specs = _COMPONENTS.validate_json(components)
    except ValidationError as e:
        raise InvalidRequestError(f"'components' is not a list of {{name, kind, version, after}}: "
                                  f"{e.error_count()} error(s)") from None
    if len(specs) != len(files):
        raise InvalidRequestError(f"'components' describes {len(specs)} component(s) for {len(files)} file(s)")
    return [SystemComponent(c.name, data, c.kind, c.version, tuple(c.after))
            for c, (_, data) in zip(specs, files, strict=True)]


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

    @app.post("/api/releases", status_code=201)
    async def create_release(
        file: Annotated[list[UploadFile], File(description="The images (a system release: the components)")],
        vendor: Annotated[str, Form()], class_name: Annotated[str, Form()], version: Annotated[str, Form()],
        key: Annotated[str | None, Form()] = None, package_format: Annotated[str, Form()] = "suit",
        components: Annotated[str | None, Form()] = None,
        p: Principal = caller(Action.MANAGE_RELEASES),
    ) -> dict[str, Any]:
        """A new release of the uploaded files (see the module docstring for the fields)."""
        if package_format not in (*PACKAGE_FORMATS, SYSTEM_FORMAT):
            formats = ", ".join((*PACKAGE_FORMATS, SYSTEM_FORMAT))
            raise InvalidRequestError(f"package format {package_format[:16]!r} is not one of {formats}")
        files = await _files(file)
        with tenancy.audited(p, Action.MANAGE_RELEASES, version[:64], what="create-release"):
            if package_format == SYSTEM_FORMAT:
                release = await asyncio.to_thread(
                    releases.create_system, _system(files, components), vendor=vendor, class_name=class_name,
                    version=version, key=key, tenant_id=p.tenant_id, now=time.time())
            else:
                release = await asyncio.to_thread(
                    releases.create, files, vendor=vendor, class_name=class_name, version=version, key=key,
                    package_format=package_format, tenant_id=p.tenant_id, now=time.time())
        return dict(release.as_dict())

    @app.get("/api/releases/{release_id}/deltas")
    async def list_deltas(release_id: str, p: Principal = caller(Action.READ)) -> list[dict[str, Any]]:
        release = releases.get(release_id, tenant_id=p.tenant_id)
        return list(release.as_dict()["deltas"])

    @app.post("/api/releases/{release_id}/deltas")
    async def add_delta(release_id: str, body: DeltaBody, p: Principal = caller(Action.MANAGE_RELEASES)
                        ) -> dict[str, Any]:
        """The system release's differential package for devices that run ``base_release`` (made once; the same
        afterwards), with its size against the full package's."""
        with tenancy.audited(p, Action.MANAGE_RELEASES, release_id[:64], what="add-delta"):
            delta = await asyncio.to_thread(releases.add_delta, release_id, base_release_id=body.base_release,
                                            tenant_id=p.tenant_id, now=time.time())
        full = releases.get(release_id, tenant_id=p.tenant_id).images[0].package_size
        return {**delta.as_dict(), "full_package_size": full,
                "saving_percent": saving_percent(delta.package_size, full)}

    @app.post("/api/releases/{release_id}/approve")
    async def approve(release_id: str, body: ApproveBody, p: Principal = caller(Action.MANAGE_RELEASES)
                      ) -> dict[str, Any]:
        """The tenant's deployment key countersigns the release (devices then verify both signatures)."""
        with tenancy.audited(p, Action.MANAGE_RELEASES, release_id[:64], what="approve-release"):
            release = releases.approve(release_id, body.key, tenant_id=p.tenant_id, now=time.time())
        return dict(release.as_dict())

"""REST routes of the caller's own tenant: who am I, its brand, its API tokens, its grants and its audit trail.

Every route acts on the caller's tenant (from its token); there is no route that names another tenant, except a
grant's receiving operator (which an OEM names by id, as it names its partners in a contract).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel, Field

from lwm2m_server.api.auth import caller
from lwm2m_server.core.errors import InvalidRequestError, NotFoundError
from lwm2m_server.tenancy.brand import brand_from_fields
from lwm2m_server.tenancy.model import Action, Principal, parse_roles
from lwm2m_server.tenancy.service import DEFAULT_TOKEN_DAYS, TenancyService
from lwm2m_server.tenancy.stores import TenantRecord, TokenRecord

__all__ = ["tenancy_routes", "tenant_to_json", "token_to_json"]



class TokenBody(BaseModel):
    roles: list[str] = Field(min_length=1)
    name: str = ""
    expires_days: float = DEFAULT_TOKEN_DAYS


class GrantBody(BaseModel):
    operator: str
    device_class: str


class BrandBody(BaseModel):
    product_name: str
    report_issuer: str | None = None
    primary_color: str | None = None
    accent_color: str | None = None
    support_url: str | None = None
    logo_base64: str | None = None


def tenant_to_json(t: TenantRecord) -> dict[str, Any]:
    brand = None
    if t.brand is not None:
        brand = {k: v for k, v in asdict(t.brand).items() if k != "logo"}
        brand["has_logo"] = t.brand.logo is not None
    return {"id": t.id, "name": t.name, "kind": t.kind.value, "created_at": t.created_at, "brand": brand}


def token_to_json(t: TokenRecord) -> dict[str, Any]:
    """A token's listing: never its secret, never its digest or salt."""
    return {"id": t.id, "tenant": t.tenant_id, "roles": sorted(r.value for r in t.roles), "name": t.name,
            "created_at": t.created_at, "created_by": t.created_by, "expires_at": t.expires_at,
            "revoked_at": t.revoked_at}


def tenancy_routes(app: FastAPI, tenancy: TenancyService, usage: Any = None) -> None:
    """``usage`` (a :class:`~lwm2m_server.metering.store.UsageStore`) adds ``GET /api/usage``."""
    @app.get("/api/whoami")
    async def whoami(p: Principal = caller(Action.READ)) -> dict[str, Any]:
        return {"tenant": p.tenant_id, "kind": p.kind.value, "roles": p.role_names(), "subject": p.subject}

    @app.get("/api/tenant")
    async def my_tenant(p: Principal = caller(Action.READ)) -> dict[str, Any]:
        return tenant_to_json(tenancy.tenant(p.tenant_id))

    @app.get("/api/tenant/logo")
    async def my_logo(p: Principal = caller(Action.READ)) -> Response:
        brand = tenancy.brand(p.tenant_id)
        if brand is None or brand.logo is None:
            raise NotFoundError("this tenant has no logo")
        return Response(brand.logo, media_type=brand.logo_type or "application/octet-stream",
                        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                                 "X-Content-Type-Options": "nosniff"})

    @app.put("/api/tenant/brand")
    async def set_brand(body: BrandBody, p: Principal = caller(Action.MANAGE_BRAND)) -> dict[str, Any]:
        try:
            logo = base64.b64decode(body.logo_base64, validate=True) if body.logo_base64 is not None else None
        except (binascii.Error, ValueError):
            raise InvalidRequestError("logo_base64 is not base64") from None
        brand = brand_from_fields(body.product_name, report_issuer=body.report_issuer,
                                  primary_color=body.primary_color, accent_color=body.accent_color,
                                  support_url=body.support_url, logo=logo)
        return tenant_to_json(tenancy.set_brand(p.tenant_id, brand, by=p))

    @app.get("/api/tokens")
    async def list_tokens(p: Principal = caller(Action.MANAGE_TOKENS)) -> list[dict[str, Any]]:
        return [token_to_json(t) for t in tenancy.tokens(tenant_id=p.tenant_id, by=p)]

    @app.post("/api/tokens", status_code=201)
    async def create_token(body: TokenBody, p: Principal = caller(Action.MANAGE_TOKENS)) -> dict[str, Any]:
        """The token's text is in this answer and nowhere else, ever."""
        record, text = tenancy.create_token(tenant_id=p.tenant_id, roles=parse_roles(body.roles), name=body.name,
                                            expires_days=body.expires_days, by=p)
        return {**token_to_json(record), "token": text}

    @app.delete("/api/tokens/{token_id}")
    async def revoke_token(token_id: str, p: Principal = caller(Action.MANAGE_TOKENS)) -> dict[str, Any]:
        return token_to_json(tenancy.revoke_token(token_id, by=p))

    @app.get("/api/grants")
    async def list_grants(p: Principal = caller(Action.READ)) -> list[dict[str, Any]]:
        return [asdict(g) for g in tenancy.grants(tenant_id=p.tenant_id, by=p)]

    @app.post("/api/grants", status_code=201)
    async def grant(body: GrantBody, p: Principal = caller(Action.GRANT)) -> dict[str, Any]:
        return asdict(tenancy.grant(oem_tenant=p.tenant_id, operator_tenant=body.operator,
                                    class_name=body.device_class, by=p))

    @app.delete("/api/grants")
    async def revoke_grant(operator: str, device_class: str, p: Principal = caller(Action.GRANT)) -> dict[str, Any]:
        tenancy.revoke_grant(oem_tenant=p.tenant_id, operator_tenant=operator, class_name=device_class, by=p)
        return {"revoked": True}

    @app.get("/api/audit")
    async def audit_trail(after: int = 0, limit: int = 1000, p: Principal = caller(Action.READ_AUDIT)
                          ) -> list[dict[str, Any]]:
        return [asdict(e) for e in tenancy.audit_trail(tenant_id=p.tenant_id, by=p, after=after, limit=limit)]

    if usage is not None:
        @app.get("/api/usage")
        async def usage_days(first: str | None = None, last: str | None = None, include_today: bool = False,
                             p: Principal = caller(Action.READ_USAGE)) -> Response:
            """The tenant's usage as the JSON file ``scratch usage export`` writes (sealed days, hash-chained; with
            ``include_today`` the day under way too)."""
            import time

            from lwm2m_server.metering.store import exported_days
            from lwm2m_server.metering.usage import parse_day, to_json

            for value in (first, last):
                if value is not None:
                    parse_day(value)
            days = exported_days(usage, tenant_id=p.tenant_id, now=time.time(), first=first, last=last,
                                 include_today=include_today)
            return Response(to_json(days, tenant_id=p.tenant_id), media_type="application/json")

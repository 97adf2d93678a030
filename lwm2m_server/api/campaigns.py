"""REST routes of releases and campaigns (mounted by :func:`lwm2m_server.api.app.create_app`).

``/api/campaigns/{id}/events`` streams the campaign's events as JSON lines (what ``scratch campaign watch``
follows); it ends with the ``campaign.finished`` event, or when the caller goes away.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from firmware_object.campaign import FINAL_CAMPAIGN_STATES, CampaignState, InvalidPolicyError, Policy
from lwm2m_server.api.auth import caller
from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.events import Event
from lwm2m_server.fota.campaigns import CAMPAIGN_FINISHED, CampaignService
from lwm2m_server.tenancy.model import Action, Principal, authorize

MAX_CAMPAIGN_BODY = 32 << 20  # bytes: a target list as long as the CLI's largest target file (16 MiB), in JSON
CAMPAIGN_BODY_CAPS = {"/api/campaigns": MAX_CAMPAIGN_BODY}  # route path -> body cap, for the API's guard


class CampaignBody(BaseModel):
    releases: list[str] = Field(min_length=1)
    targets: list[str] | None = None
    filter: str | None = None
    name: str = ""
    method: str | None = None
    targets_from: str = ""
    policy: dict[str, Any] = Field(default_factory=dict)


class StartBody(BaseModel):
    approve_with: str | None = None


def campaign_routes(app: FastAPI, campaigns: CampaignService) -> None:
    releases = campaigns.releases

    @app.get("/api/releases")
    async def list_releases(p: Principal = caller(Action.READ)) -> list[dict[str, Any]]:
        return [r.as_dict() for r in releases.list(tenant_id=p.tenant_id)]

    @app.get("/api/releases/{release_id}")
    async def show_release(release_id: str, p: Principal = caller(Action.READ)) -> dict[str, Any]:
        return dict(releases.get(release_id, tenant_id=p.tenant_id).as_dict())

    @app.post("/api/campaigns", status_code=201)
    async def create_campaign(body: CampaignBody, p: Principal = caller(Action.RUN_CAMPAIGNS)) -> dict[str, Any]:
        try:
            policy = Policy.from_dict(body.policy) if body.policy else Policy()
        except (InvalidPolicyError, TypeError, ValueError) as e:
            raise InvalidRequestError(f"bad policy: {e}") from None
        return await campaigns.create(body.releases, targets=body.targets, target_filter=body.filter,
                                      policy=policy, name=body.name, method=body.method,
                                      targets_from=body.targets_from, tenant_id=p.tenant_id)

    @app.get("/api/campaigns")
    async def list_campaigns(p: Principal = caller(Action.READ)) -> list[dict[str, Any]]:
        return campaigns.list(tenant_id=p.tenant_id)

    @app.get("/api/campaigns/{cid}")
    async def campaign_status(cid: str, jobs: bool = False, p: Principal = caller(Action.READ)) -> dict[str, Any]:
        return campaigns.status(cid, jobs=jobs, tenant_id=p.tenant_id)

    @app.post("/api/campaigns/{cid}/start")
    async def start_campaign(cid: str, body: StartBody | None = None,
                             p: Principal = caller(Action.RUN_CAMPAIGNS)) -> dict[str, Any]:
        """Start it; ``approve_with`` names the deployment key whose countersigned packages devices get. Making a
        countersignature that does not exist yet is a release manager's act (an operator may start with one that
        exists)."""
        approve_with = body.approve_with if body else None
        if approve_with is not None and not p.may(Action.MANAGE_RELEASES):
            status = campaigns.status(cid, tenant_id=p.tenant_id)
            for rid in status.get("releases", []):
                rel = releases.get(rid, tenant_id=p.tenant_id)
                if approve_with not in (a[0] for a in rel.approvals):
                    authorize(p, Action.MANAGE_RELEASES)  # 403, naming the role that countersigns
        return await campaigns.start_campaign(cid, approve_with=approve_with, tenant_id=p.tenant_id)

    @app.post("/api/campaigns/{cid}/pause")
    async def pause_campaign(cid: str, p: Principal = caller(Action.RUN_CAMPAIGNS)) -> dict[str, Any]:
        return campaigns.pause(cid, tenant_id=p.tenant_id)

    @app.post("/api/campaigns/{cid}/resume")
    async def resume_campaign(cid: str, p: Principal = caller(Action.RUN_CAMPAIGNS)) -> dict[str, Any]:
        return campaigns.resume(cid, tenant_id=p.tenant_id)

    @app.post("/api/campaigns/{cid}/cancel")
    async def cancel_campaign(cid: str, p: Principal = caller(Action.RUN_CAMPAIGNS)) -> dict[str, Any]:
        return await campaigns.cancel(cid, tenant_id=p.tenant_id)

    @app.get("/api/campaigns/{cid}/report")
    async def campaign_report(cid: str, p: Principal = caller(Action.READ)) -> dict[str, Any]:
        """The signed report: ``report`` and its COSE_Sign1 (base64) over the report's canonical CBOR."""
        report, cose = campaigns.report(cid, tenant_id=p.tenant_id)
        return {"report": report, "cose_sign1": base64.b64encode(cose).decode()}

    @app.get("/api/attestation-key")
    async def attestation_key(p: Principal = caller(Action.READ)) -> dict[str, str]:
        """The public key the server signs the tenant's reports with (PEM)."""
        return {"public_key_pem": campaigns.attestation_public_pem(tenant_id=p.tenant_id)}

    @app.get("/api/campaigns/{cid}/events")
    async def campaign_events(cid: str, timeout: float = 3600.0, p: Principal = caller(Action.READ)
                              ) -> StreamingResponse:
        """The campaign's status now, then its events as JSON lines until it ends (or ``timeout`` s pass)."""
        first = campaigns.status(cid, tenant_id=p.tenant_id)

        async def lines() -> AsyncIterator[bytes]:
            with campaigns.events.queue("campaign.", maxsize=10_000) as queue:
                yield (json.dumps({"kind": "status", "status": first}) + "\n").encode()
                if CampaignState(first["state"]) in FINAL_CAMPAIGN_STATES and first["report_ready"]:
                    return
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while (left := deadline - loop.time()) > 0:
                    try:
                        event: Event = await asyncio.wait_for(queue.get(), min(left, 15.0))
                    except TimeoutError:
                        yield b'{"kind": "keepalive"}\n'
                        continue
                    if event.data.get("campaign") != cid or event.tenant_id != p.tenant_id:
                        continue
                    yield (json.dumps({"kind": event.kind, "at": event.at, "endpoint": event.endpoint,
                                       "data": event.data}, default=str) + "\n").encode()
                    if event.kind == CAMPAIGN_FINISHED:
                        return

        return StreamingResponse(lines(), media_type="application/x-ndjson")

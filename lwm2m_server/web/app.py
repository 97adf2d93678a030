"""The web interface's routes (``/ui``), mounted on the API app by :func:`web_routes`.

Pages are rendered on the server (Jinja2, ``templates/``); the live parts (dashboard counts and events, a campaign's
progress) come over Server-Sent Events as ``{element id: HTML}`` messages that ``static/live.js`` swaps in. Charts are
SVG drawn by pygal on the server. Every asset is served from ``static/`` (no CDN). Each page and each live stream
looks everything up in the signed-in user's tenant; each control is shown only to a role that may use it, and its
route checks the role and the CSRF token anyway (see :mod:`.session`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pygal
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pygal.style import Style

from lwm2m_server.core.errors import InvalidRequestError, Lwm2mError, NotFoundError
from lwm2m_server.core.model.firmware_component import FIRMWARE_COMPONENT_ID
from lwm2m_server.fota.components import read_components
from lwm2m_server.tenancy.brand import product_name
from lwm2m_server.tenancy.model import Action, ForbiddenError
from lwm2m_server.tenancy.service import TenancyService
from lwm2m_server.web.session import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    CsrfError,
    NotSignedInError,
    SignInThrottle,
    WebCaller,
    caller_of,
    set_csrf_cookie,
    set_session_cookie,
)
from lwm2m_server.web.views import (
    RecentEvents,
    device_rows,
    fleet_counts,
    known_devices,
    version_counts,
)

__all__ = ["WEB_PREFIX", "web_routes"]

WEB_PREFIX = "/ui"
HERE = Path(__file__).parent
PAGE_SIZE = 50
SIGN_IN_ERRORS = {"wrong": "wrong login or password", "throttled": "too many attempts: wait a few seconds",
                  "link": "that sign-in link is used or expired"}
JOBS_SHOWN = 200  # a campaign page lists the devices that need a look first (failed, rolled back, active)
MAX_UPLOAD = 64 << 20
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                      "script-src 'self'; frame-ancestors 'none'; form-action 'self'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}


def web_routes(app: FastAPI, *, tenancy: TenancyService, registrations: Any, management: Any = None,
               campaigns: Any = None, tags: Any = None, events: Any = None, usage: Any = None, firmware: Any = None,
               clock: Callable[[], float] = time.time) -> None:
    """Mount the web interface on ``app`` (the API's guard lets ``/ui`` through: these routes check their session)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    throttle = SignInThrottle()
    recent = RecentEvents()
    if events is not None:
        events.subscribe(recent)
    app.mount(f"{WEB_PREFIX}/static", StaticFiles(directory=str(HERE / "static")), name="web-static")

    def page(request: Request, name: str, caller: WebCaller | None, status: int = 200, **context: Any
             ) -> HTMLResponse:
        brand = tenancy.brand(caller.principal.tenant_id) if caller is not None else None
        allowed = {a.value.replace("-", "_"): caller.may(a) for a in Action} if caller is not None else {}
        response = templates.TemplateResponse(request, name, {
            "caller": caller, "brand": brand, "product": product_name(brand), "may": allowed,
            "csrf": caller.session.csrf if caller is not None else "", "prefix": WEB_PREFIX, **context},
            status_code=status)
        response.headers.update(HEADERS)
        return response

    async def signed_in(request: Request) -> WebCaller:
        return caller_of(request, tenancy)

    @app.exception_handler(NotSignedInError)
    async def not_signed_in(request: Request, _: NotSignedInError) -> Response:
        if request.url.path.startswith(f"{WEB_PREFIX}/live"):
            return JSONResponse({"error": "signed out"}, status_code=401)
        return RedirectResponse(f"{WEB_PREFIX}/sign-in", status_code=303)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(WEB_PREFIX, status_code=303)

    # ------------------------------------------------------------------ sign-in

    @app.get(f"{WEB_PREFIX}/sign-in", response_class=HTMLResponse, include_in_schema=False)
    async def sign_in_form(request: Request, error: str = "") -> HTMLResponse:
        """``error`` is a code (never text from the address bar: a crafted link cannot put words on this page)."""
        token = secrets.token_urlsafe(24)
        response = page(request, "sign_in.html", None, error=SIGN_IN_ERRORS.get(error, ""), form_csrf=token)
        set_csrf_cookie(response, request, token)
        return response

    @app.post(f"{WEB_PREFIX}/sign-in", include_in_schema=False)
    async def sign_in(request: Request, login: str = Form(""), password: str = Form(""),
                      csrf: str = Form("")) -> Response:
        expected = request.cookies.get(CSRF_COOKIE, "")
        if not csrf or not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
            raise CsrfError("the sign-in form has no valid CSRF token: reload it")
        client = request.client.host if request.client else "?"
        wait = throttle.wait(client, login)
        if wait is not None:
            return RedirectResponse(f"{WEB_PREFIX}/sign-in?error=throttled", status_code=303)
        found = await asyncio.to_thread(tenancy.sign_in, login, password)
        if found is None:
            return RedirectResponse(f"{WEB_PREFIX}/sign-in?error=wrong", status_code=303)
        secret, _ = found
        response = RedirectResponse(WEB_PREFIX, status_code=303)
        set_session_cookie(response, request, secret)
        response.delete_cookie(CSRF_COOKIE, path=WEB_PREFIX)
        return response

    @app.get(f"{WEB_PREFIX}/once/{{secret}}", include_in_schema=False)
    async def one_time(request: Request, secret: str) -> Response:
        """A one-time sign-in link (``scratch demo --serve``): spent on first use, 10 minutes at most."""
        found = tenancy.redeem(secret[:128])
        if found is None:
            return RedirectResponse(f"{WEB_PREFIX}/sign-in?error=link", status_code=303)
        response = RedirectResponse(WEB_PREFIX, status_code=303)
        set_session_cookie(response, request, found[0])
        return response

    @app.post(f"{WEB_PREFIX}/sign-out", include_in_schema=False)
    async def sign_out(request: Request, csrf: str = Form("")) -> Response:
        caller = await signed_in(request)
        caller.check_csrf(csrf)
        tenancy.sign_out(request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse(f"{WEB_PREFIX}/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get(f"{WEB_PREFIX}/brand/logo", include_in_schema=False)
    async def logo(request: Request) -> Response:
        caller = await signed_in(request)
        brand = tenancy.brand(caller.principal.tenant_id)
        if brand is None or brand.logo is None:
            raise NotFoundError("no logo")
        return Response(brand.logo, media_type=brand.logo_type or "application/octet-stream",
                        headers={**HEADERS, "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                                 "Cache-Control": "private, max-age=300"})

    # ------------------------------------------------------------------ the fleet

    def known_of(tenant: str) -> tuple[dict[str, str], dict[str, str]]:
        """The versions and classes the tenant's campaigns know of its devices (one read of their jobs)."""
        if campaigns is None:
            return {}, {}
        store, names = campaigns.store, {}
        listed = store.list(tenant_id=tenant)
        for c in listed:
            rid = c.releases[0] if c.releases else None
            if rid is not None and rid not in names:
                try:
                    names[rid] = campaigns.releases.get(rid, tenant_id=tenant).class_name
                except NotFoundError:
                    names[rid] = "-"
        return known_devices(((c.id, names.get(c.releases[0], "-") if c.releases else "-") for c in listed),
                             lambda cid: store.jobs(cid, tenant_id=tenant))

    def dashboard_parts(caller: WebCaller) -> dict[str, str]:
        tenant = caller.principal.tenant_id
        regs = registrations.all(tenant_id=tenant)
        updating: set[str] = set()
        failed: set[str] = set()
        if firmware is not None:
            for (t, ep), job in list(firmware.jobs.items()):
                if t == tenant:
                    (updating if not job.done.is_set() else failed if not job.succeeded else set()).add(ep)
        counts = fleet_counts(regs, updating, failed)
        versions = version_counts((r.endpoint for r in regs), known_of(tenant)[0])
        chart = pygal.HorizontalBar(js=[], disable_xml_declaration=True, show_legend=False, height=60 + 36 *
                                    max(len(versions), 1), width=640, style=_chart_style(tenancy, tenant),
                                    title="firmware versions")
        chart.x_labels = list(versions)
        chart.add("devices", list(versions.values()))
        parts = {f"count-{k}": str(v) for k, v in counts.items()}
        parts["versions"] = chart.render(is_unicode=True)
        parts["events"] = templates.get_template("_events.html").render(events=recent.of(tenant))
        return parts

    @app.get(WEB_PREFIX, response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(request: Request) -> HTMLResponse:
        caller = await signed_in(request)
        return page(request, "dashboard.html", caller, parts=dashboard_parts(caller))

    @app.get(f"{WEB_PREFIX}/live/dashboard", include_in_schema=False)
    async def live_dashboard(request: Request) -> StreamingResponse:
        caller = await signed_in(request)
        return _stream(request, events, lambda: dashboard_parts(caller),
                       lambda e: e.tenant_id == caller.principal.tenant_id)

    @app.get(f"{WEB_PREFIX}/devices", response_class=HTMLResponse, include_in_schema=False)
    async def devices(request: Request, q: str = "", security: str = "", version: str = "", page_no: int = 1
                      ) -> HTMLResponse:
        caller = await signed_in(request)
        tenant = caller.principal.tenant_id
        regs = registrations.all(tenant_id=tenant)
        tagged = tags.all(tenant_id=tenant) if tags is not None else {}
        versions, classes = known_of(tenant)
        rows = device_rows(regs, versions, tagged, q[:128], classes=classes, security=security[:8],
                           version=version[:64])
        pages = max(1, -(-len(rows) // PAGE_SIZE))
        page_no = min(max(page_no, 1), pages)
        return page(request, "devices.html", caller, rows=rows[(page_no - 1) * PAGE_SIZE: page_no * PAGE_SIZE],
                    total=len(rows), q=q[:128], security=security[:8], version=version[:64],
                    versions=sorted(set(versions.values())), page_no=page_no, pages=pages)

    @app.get(f"{WEB_PREFIX}/devices/{{endpoint}}", response_class=HTMLResponse, include_in_schema=False)
    async def device_page(request: Request, endpoint: str, path: str = "") -> HTMLResponse:
        """One device: its registration, a read of any resource (operators), its firmware history, its events."""
        from lwm2m_server.api.app import registration_to_json, response_to_json
        from lwm2m_server.core.operations import ReadRequest
        from lwm2m_server.core.paths import LwM2mPath

        caller = await signed_in(request)
        tenant = caller.principal.tenant_id
        reg = registrations.by_endpoint(endpoint, tenant_id=tenant)
        if reg is None:
            raise NotFoundError(f"no device {endpoint[:64]!r}")
        answer, error = None, ""
        if path and management is not None:
            caller.require(Action.MANAGE_DEVICES)
            try:
                read = await management.send(endpoint, ReadRequest(LwM2mPath.parse(path[:64])), timeout=10,
                                             tenant_id=tenant)
                answer = json.dumps(response_to_json(read), indent=2)
            except Lwm2mError as e:
                error = f"{type(e).__name__}: {e}"
        components, components_error = None, ""
        if management is not None and reg.supports_object(FIRMWARE_COMPONENT_ID):
            try:  # read now, briefly: a sleeping (queue mode) or gone device must not hold the page
                components = await read_components(management, endpoint, tenant_id=tenant, timeout=3)
            except Lwm2mError as e:
                components_error = f"not read now: {type(e).__name__}: {e}"
        history = []
        if campaigns is not None:
            store = campaigns.store
            for c in store.list(tenant_id=tenant):
                job = store.job(c.id, endpoint, tenant_id=tenant)
                if job is not None:
                    history.append((c, job))
        current = firmware.job(endpoint, tenant_id=tenant) if firmware is not None else None
        seen = [e for e in recent.of(tenant) if e.endpoint == endpoint]
        gateway = registrations.get(reg.parent_id) if reg.parent_id is not None else None
        end_devices = management.end_devices if management is not None else None
        children = end_devices.children(reg) if end_devices is not None and reg.parent_id is None else []
        shown = registration_to_json(reg, gateway=gateway, children=children)
        return page(request, "device.html", caller, reg=shown, path=path[:64], answer=answer,
                    error=error, history=history, current=current.as_dict() if current else None, events=seen,
                    components=components, components_error=components_error)

    # ------------------------------------------------------------------ releases

    @app.get(f"{WEB_PREFIX}/releases", response_class=HTMLResponse, include_in_schema=False)
    async def releases_page(request: Request) -> HTMLResponse:
        caller = await signed_in(request)
        rows = campaigns.releases.list(tenant_id=caller.principal.tenant_id) if campaigns is not None else []
        return page(request, "releases.html", caller, releases=rows)

    @app.post(f"{WEB_PREFIX}/releases", include_in_schema=False)
    async def upload_release(request: Request, image: UploadFile, version: str = Form(...),
                             vendor: str = Form(...), class_name: str = Form(...), csrf: str = Form("")) -> Response:
        caller = await signed_in(request)
        caller.check_csrf(csrf)
        caller.require(Action.MANAGE_RELEASES)
        if campaigns is None:
            raise NotFoundError("this server has no release store")
        data = await image.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise InvalidRequestError(f"the image is larger than {MAX_UPLOAD} bytes")
        name = Path(image.filename or "image.bin").name
        with tenancy.audited(caller.principal, Action.MANAGE_RELEASES, name, what="create-release"):
            await asyncio.to_thread(campaigns.releases.create, [(name, data)], vendor=vendor, class_name=class_name,
                                    version=version, tenant_id=caller.principal.tenant_id, now=clock())
        return RedirectResponse(f"{WEB_PREFIX}/releases", status_code=303)

    @app.post(f"{WEB_PREFIX}/releases/import", include_in_schema=False)
    async def import_package(request: Request, package: UploadFile, key: str = Form(...), origin: str = Form(""),
                             csrf: str = Form("")) -> Response:
        """Import an OEM's pre-signed package (verified against the OEM's registered key, under its grant)."""
        from lwm2m_server.fota.release_import import import_release

        caller = await signed_in(request)
        caller.check_csrf(csrf)
        caller.require(Action.MANAGE_RELEASES)
        data = await package.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise InvalidRequestError(f"the package is larger than {MAX_UPLOAD} bytes")
        await asyncio.to_thread(
            import_release, [(Path(package.filename or "package.suit").name, data)], key_name=key[:64],
            origin=origin.strip()[:64] or None, tenant_id=caller.principal.tenant_id, by=caller.principal,
            keys=campaigns.keys, releases=campaigns.releases, tenancy=tenancy, now=clock())
        return RedirectResponse(f"{WEB_PREFIX}/releases", status_code=303)

    # ------------------------------------------------------------------ administration

    def admin_view(request: Request, caller: WebCaller, new_token: str = "") -> HTMLResponse:
        if not any(caller.may(a) for a in (Action.MANAGE_USERS, Action.MANAGE_TOKENS, Action.MANAGE_BRAND)):
            caller.require(Action.MANAGE_USERS)
        tenant = caller.principal.tenant_id
        users = tenancy.users(tenant_id=tenant, by=caller.principal) if caller.may(Action.MANAGE_USERS) else []
        tokens = tenancy.tokens(tenant_id=tenant, by=caller.principal) if caller.may(Action.MANAGE_TOKENS) else []
        return page(request, "admin.html", caller, users=users, tokens=tokens, new_token=new_token,
                    tenant=tenancy.tenant(tenant))

    @app.get(f"{WEB_PREFIX}/admin", response_class=HTMLResponse, include_in_schema=False)
    async def admin_page(request: Request) -> HTMLResponse:
        return admin_view(request, await signed_in(request))

    @app.post(f"{WEB_PREFIX}/admin/users", include_in_schema=False)
    async def add_user(request: Request, login: str = Form(...), password: str = Form(...),
                       roles: list[str] = Form(...), csrf: str = Form("")) -> Response:
        from lwm2m_server.tenancy.model import parse_roles

        caller = await signed_in(request)
        caller.check_csrf(csrf)
        await asyncio.to_thread(tenancy.create_user, tenant_id=caller.principal.tenant_id, login=login,
                                roles=parse_roles(roles), password=password, by=caller.principal)
        return RedirectResponse(f"{WEB_PREFIX}/admin", status_code=303)

    @app.post(f"{WEB_PREFIX}/admin/users/{{user_id}}/disable", include_in_schema=False)
    async def disable_user(request: Request, user_id: str, csrf: str = Form("")) -> Response:
        caller = await signed_in(request)
        caller.check_csrf(csrf)
        tenancy.disable_user(user_id, by=caller.principal)
        return RedirectResponse(f"{WEB_PREFIX}/admin", status_code=303)

    @app.post(f"{WEB_PREFIX}/admin/tokens", response_class=HTMLResponse, include_in_schema=False)
    async def add_token(request: Request, name: str = Form(""), roles: list[str] = Form(...),
                        expires_days: float = Form(90.0), csrf: str = Form("")) -> HTMLResponse:
        """The new token is shown once, in this answer (no redirect, no cookie: it is nowhere else)."""
        from lwm2m_server.tenancy.model import parse_roles

        caller = await signed_in(request)
        caller.check_csrf(csrf)
        _, text = tenancy.create_token(tenant_id=caller.principal.tenant_id, roles=parse_roles(roles), name=name,
                                       expires_days=expires_days, by=caller.principal)
        return admin_view(request, caller, new_token=text)

    @app.post(f"{WEB_PREFIX}/admin/tokens/{{token_id}}/revoke", include_in_schema=False)
    async def revoke_token(request: Request, token_id: str, csrf: str = Form("")) -> Response:
        caller = await signed_in(request)
        caller.check_csrf(csrf)
        tenancy.revoke_token(token_id, by=caller.principal)
        return RedirectResponse(f"{WEB_PREFIX}/admin", status_code=303)

    @app.post(f"{WEB_PREFIX}/admin/brand", include_in_schema=False)
    async def set_brand(request: Request, product_name: str = Form(...), report_issuer: str = Form(""),
                        primary_color: str = Form(""), accent_color: str = Form(""), support_url: str = Form(""),
                        logo: UploadFile | None = None, csrf: str = Form("")) -> Response:
        from lwm2m_server.tenancy.brand import MAX_LOGO, brand_from_fields

        caller = await signed_in(request)
        caller.check_csrf(csrf)
        tenant = caller.principal.tenant_id
        data = await logo.read(MAX_LOGO + 1) if logo is not None and logo.filename else None
        if data is None:
            old = tenancy.brand(tenant)
            data = old.logo if old is not None else None
        brand = brand_from_fields(product_name, report_issuer=report_issuer or None,
                                  primary_color=primary_color or None, accent_color=accent_color or None,
                                  support_url=support_url or None, logo=data)
        tenancy.set_brand(tenant, brand, by=caller.principal)
        return RedirectResponse(f"{WEB_PREFIX}/admin", status_code=303)

    # ------------------------------------------------------------------ campaigns

    @app.get(f"{WEB_PREFIX}/campaigns", response_class=HTMLResponse, include_in_schema=False)
    async def campaigns_page(request: Request) -> HTMLResponse:
        caller = await signed_in(request)
        tenant = caller.principal.tenant_id
        rows = campaigns.list(tenant_id=tenant) if campaigns is not None else []
        rels = campaigns.releases.list(tenant_id=tenant) if campaigns is not None else []
        return page(request, "campaigns.html", caller, campaigns=rows, releases=rels, preview=None, known=set(),
                    form={})

    @app.post(f"{WEB_PREFIX}/campaigns", response_model=None, include_in_schema=False)
    async def create_campaign(request: Request, release: str = Form(...), targets: str = Form(""),
                              target_file: UploadFile | None = None, target_filter: str = Form(""),
                              name: str = Form(""), preview: str = Form(""), csrf: str = Form("")
                              ) -> Response:
        """Create a campaign from a release and a target list, a target file (one endpoint per line) or a filter;
        with ``preview``, show the targets it would have instead (nothing is created)."""
        caller = await signed_in(request)
        caller.check_csrf(csrf)
        caller.require(Action.RUN_CAMPAIGNS)
        tenant = caller.principal.tenant_id
        if target_file is not None and target_file.filename:
            targets = (await target_file.read(16 << 20)).decode("utf-8", "replace")
        endpoints = [line.strip() for line in targets.splitlines() if line.strip() and not line.startswith("#")]
        expression = target_filter.strip()[:1000]
        if preview:
            picked = await campaigns.select_targets(expression, tenant_id=tenant) if expression else endpoints
            known = {r.endpoint for r in registrations.all(tenant_id=tenant)}
            return page(request, "campaigns.html", caller, campaigns=campaigns.list(tenant_id=tenant),
                        releases=campaigns.releases.list(tenant_id=tenant), preview=picked, known=known,
                        form={"release": release, "targets": "\n".join(endpoints), "target_filter": expression,
                              "name": name[:200]})
        with tenancy.audited(caller.principal, Action.RUN_CAMPAIGNS, release[:40], what="create-campaign"):
            if expression:
                status = await campaigns.create([release], target_filter=expression, name=name[:200],
                                                tenant_id=tenant)
            else:
                status = await campaigns.create([release], targets=endpoints, name=name[:200], tenant_id=tenant)
        return RedirectResponse(f"{WEB_PREFIX}/campaigns/{status['id']}", status_code=303)

    def campaign_parts(caller: WebCaller, cid: str) -> dict[str, str]:
        status = campaigns.status(cid, tenant_id=caller.principal.tenant_id, jobs=True)
        order = {"failed": 0, "rolled-back": 1, "updating": 2, "downloaded": 3, "delivering": 4, "pending": 5,
                 "skipped": 6, "succeeded": 7}
        jobs = sorted(status["jobs"], key=lambda j: (order.get(j["state"], 8), j["endpoint"]))
        html = templates.get_template("_campaign.html").render(
            s=status, jobs=jobs[:JOBS_SHOWN], hidden=max(0, len(jobs) - JOBS_SHOWN), prefix=WEB_PREFIX, verified=(
            _verified(campaigns, cid, caller.principal.tenant_id) if status["report_ready"] else None))
        return {"campaign-live": html, "state": status["state"]}

    @app.get(f"{WEB_PREFIX}/campaigns/{{cid}}", response_class=HTMLResponse, include_in_schema=False)
    async def campaign_page(request: Request, cid: str) -> HTMLResponse:
        caller = await signed_in(request)
        if campaigns is None:
            raise NotFoundError("no campaigns here")
        parts = campaign_parts(caller, cid)  # another tenant's campaign: 404
        return page(request, "campaign.html", caller, cid=cid, parts=parts)

    @app.get(f"{WEB_PREFIX}/live/campaigns/{{cid}}", include_in_schema=False)
    async def live_campaign(request: Request, cid: str) -> StreamingResponse:
        caller = await signed_in(request)
        campaign_parts(caller, cid)
        return _stream(request, events, lambda: campaign_parts(caller, cid),
                       lambda e: e.tenant_id == caller.principal.tenant_id and e.data.get("campaign") == cid)

    @app.post(f"{WEB_PREFIX}/campaigns/{{cid}}/{{verb}}", include_in_schema=False)
    async def campaign_action(request: Request, cid: str, verb: str, csrf: str = Form("")) -> Response:
        caller = await signed_in(request)
        caller.check_csrf(csrf)
        caller.require(Action.RUN_CAMPAIGNS)
        tenant = caller.principal.tenant_id
        with tenancy.audited(caller.principal, Action.RUN_CAMPAIGNS, cid[:40], what=f"{verb[:16]}-campaign"):
            if verb == "start":
                await campaigns.start_campaign(cid, tenant_id=tenant)
            elif verb == "pause":
                campaigns.pause(cid, tenant_id=tenant)
            elif verb == "resume":
                campaigns.resume(cid, tenant_id=tenant)
            elif verb == "cancel":
                await campaigns.cancel(cid, tenant_id=tenant)
            else:
                raise NotFoundError(f"no action {verb[:16]!r}")
        return RedirectResponse(f"{WEB_PREFIX}/campaigns/{cid}", status_code=303)

    @app.get(f"{WEB_PREFIX}/campaigns/{{cid}}/report.{{fmt}}", include_in_schema=False)
    async def campaign_report(request: Request, cid: str, fmt: str) -> Response:
        from lwm2m_server.fota.attestation import render_csv, render_json

        caller = await signed_in(request)
        report, cose = campaigns.report(cid, tenant_id=caller.principal.tenant_id)
        disposition = {"Content-Disposition": f'attachment; filename="report-{cid}.{fmt}"'}
        if fmt == "json":
            return Response(render_json(report, cose), media_type="application/json", headers=disposition)
        if fmt == "csv":
            return Response(render_csv(report), media_type="text/csv", headers=disposition)
        raise NotFoundError("a report is json or csv")

    # ------------------------------------------------------------------ usage and audit

    @app.get(f"{WEB_PREFIX}/usage", response_class=HTMLResponse, include_in_schema=False)
    async def usage_page(request: Request) -> HTMLResponse:
        from lwm2m_server.metering.store import exported_days

        caller = await signed_in(request)
        caller.require(Action.READ_USAGE)
        tenant = caller.principal.tenant_id
        days = exported_days(usage, tenant_id=tenant, now=clock(), include_today=True) if usage is not None else []
        chart = pygal.Bar(js=[], disable_xml_declaration=True, height=300, width=720, x_label_rotation=30,
                          style=_chart_style(tenancy, tenant), title="update deliveries per day")
        chart.x_labels = [d.day for d in days[-31:]]
        chart.add("succeeded", [d.deliveries_succeeded for d in days[-31:]])
        chart.add("failed", [d.deliveries_failed for d in days[-31:]])
        return page(request, "usage.html", caller, days=list(reversed(days)), chart=chart.render(is_unicode=True))

    @app.get(f"{WEB_PREFIX}/usage.json", include_in_schema=False)
    async def usage_export(request: Request) -> Response:
        from lwm2m_server.metering.store import exported_days
        from lwm2m_server.metering.usage import to_json

        caller = await signed_in(request)
        caller.require(Action.READ_USAGE)
        tenant = caller.principal.tenant_id
        days = exported_days(usage, tenant_id=tenant, now=clock(), include_today=True) if usage is not None else []
        return Response(to_json(days, tenant_id=tenant), media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="usage-{tenant}.json"'})

    @app.get(f"{WEB_PREFIX}/audit", response_class=HTMLResponse, include_in_schema=False)
    async def audit_page(request: Request) -> HTMLResponse:
        caller = await signed_in(request)
        entries = tenancy.audit_trail(tenant_id=caller.principal.tenant_id, by=caller.principal, limit=10_000)
        return page(request, "audit.html", caller, entries=list(reversed(entries))[:500])


def _chart_style(tenancy: TenancyService, tenant: str) -> Style:
    brand = tenancy.brand(tenant)
    colors = tuple(c for c in ((brand.primary_color, brand.accent_color) if brand else ()) if c) or (
        "#2f6fde", "#d9822b")
    return Style(background="transparent", plot_background="transparent", colors=(*colors, "#6b7280"),
                 font_family="system-ui, sans-serif")


def _verified(campaigns: Any, cid: str, tenant: str) -> bool:
    from firmware_object.suit.keys import load_public_key
    from lwm2m_server.fota import attestation

    try:
        report, cose = campaigns.report(cid, tenant_id=tenant)
        public = load_public_key(campaigns.attestation_public_pem(tenant_id=tenant).encode())
        return bool(attestation.verify_report(cose, public) == report)
    except (Lwm2mError, ValueError):
        return False


def _stream(request: Request, events: Any, render: Callable[[], dict[str, str]],
            relevant: Callable[[Any], bool]) -> StreamingResponse:
    """Server-Sent Events: the parts now, then again after each relevant event (at most 4 a second) and every 15 s."""

    async def messages() -> AsyncIterator[bytes]:
        yield _sse(render())
        if events is None:
            return
        with events.queue(None, maxsize=10_000) as queue:
            while not await request.is_disconnected():
                try:
                    event = await asyncio.wait_for(queue.get(), 15.0)
                except TimeoutError:
                    yield _sse(render())
                    continue
                if not relevant(event):
                    continue
                await asyncio.sleep(0.25)  # let a burst of events settle into one update
                while not queue.empty():
                    queue.get_nowait()
                try:
                    yield _sse(render())
                except (ForbiddenError, NotFoundError):
                    return

    return StreamingResponse(messages(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _sse(parts: dict[str, str]) -> bytes:
    return b"data: " + json.dumps(parts).encode() + b"\n\n"



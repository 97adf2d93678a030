"""The web interface's own security, over real HTTP (the browser suite shows the pages; this shows the locks):
sign-in with a throttle, HttpOnly SameSite cookies, CSRF on every form, roles hiding controls and refusing their
routes, another tenant's campaign a 404, sign-out ending the session, security headers on every page."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bootstrap.vault import Vault
from lwm2m_server.server import Lwm2mServer
from lwm2m_server.tenancy.model import Role, TenantKind
from lwm2m_server.tenancy.service import system_principal
from tests.harness import running_server

ROOT = system_principal("test")
PASSWORD = "a long enough password"


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Lwm2mServer]:
    data = tmp_path / "data"
    data.mkdir()
    async with running_server(data, api_port=0, vault=Vault.open(data / "vault.key")) as srv:
        assert srv.tenancy is not None
        for tenant in ("op-a", "op-b"):
            srv.tenancy.create_tenant(tenant, kind=TenantKind.OPERATOR, by=ROOT)
        for login, tenant, roles in (("alice", "op-a", {Role.OPERATOR, Role.RELEASE_MANAGER}),
                                     ("audrey", "op-a", {Role.AUDITOR}), ("bob", "op-b", {Role.OPERATOR})):
            srv.tenancy.create_user(tenant_id=tenant, login=login, roles=frozenset(roles), password=PASSWORD, by=ROOT)
        yield srv


@contextlib.asynccontextmanager
async def signed_in(srv: Lwm2mServer, login: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.api_url, timeout=30) as c:
        form = await c.get("/ui/sign-in")
        r = await c.post("/ui/sign-in", data={"login": login, "password": PASSWORD, "csrf": csrf_of(form.text)})
        assert r.status_code == 303 and r.headers["location"] == "/ui", r.text
        yield c


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


async def test_sign_in_sets_a_locked_cookie_and_every_form_needs_its_csrf(srv: Lwm2mServer) -> None:
    async with httpx.AsyncClient(base_url=srv.api_url) as anon:
        assert (await anon.get("/ui")).headers["location"] == "/ui/sign-in"
        form = await anon.get("/ui/sign-in")
        assert "default-src 'self'" in form.headers["content-security-policy"]
        r = await anon.post("/ui/sign-in", data={"login": "alice", "password": PASSWORD})  # no CSRF
        assert r.status_code == 403
        r = await anon.post("/ui/sign-in", data={"login": "alice", "password": "wrong wrong wrong",
                                                 "csrf": csrf_of(form.text)})
        assert r.status_code == 303 and "error=wrong" in r.headers["location"]
        assert "scratch_session" not in r.cookies
        form = await anon.get("/ui/sign-in")
        r = await anon.post("/ui/sign-in", data={"login": "alice", "password": PASSWORD, "csrf": csrf_of(form.text)})
        session = next(h for h in r.headers.get_list("set-cookie") if h.startswith("scratch_session="))
        assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session, session
        assert PASSWORD not in r.text and "Secure" not in session  # plain http on loopback: a Secure one is dropped
    async with signed_in(srv, "alice") as c:
        assert c.cookies.get("scratch_session")
        raw = (await c.get("/ui/sign-in")).headers.get_list("set-cookie")
        assert raw and all("HttpOnly" in h and "SameSite=strict" in h for h in raw), raw
        page = await c.get("/ui/campaigns")
        assert page.status_code == 200 and 'id="new-campaign"' in page.text
        r = await c.post("/ui/campaigns", data={"release": "rel-x", "targets": "a-1"})  # no CSRF
        assert r.status_code == 403 and r.json()["kind"] == "CsrfError"
        r = await c.post("/ui/campaigns", data={"release": "rel-x", "targets": "a-1", "csrf": "forged"})
        assert r.status_code == 403
        r = await c.post("/ui/sign-out", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 303
        assert (await c.get("/ui/campaigns")).headers["location"] == "/ui/sign-in"  # the session is over


async def test_an_auditor_sees_no_controls_and_their_routes_refuse_her(srv: Lwm2mServer) -> None:
    assert srv.campaigns is not None
    release = srv.campaigns.releases.create([("a.bin", b"\x01" * 64)], vendor="acme.example", class_name="meter",
                                            version="1.0.0", tenant_id="op-a", now=1.0)
    status = await srv.campaigns.create([release.id], targets=["a-1"], tenant_id="op-a")
    cid = status["id"]
    async with signed_in(srv, "audrey") as c:
        for path in ("/ui/campaigns", f"/ui/campaigns/{cid}", "/ui/releases"):
            page = await c.get(path)
            assert page.status_code == 200, path
            for control in ('id="new-campaign"', 'id="start"', 'id="pause"', 'id="cancel"', 'id="upload"'):
                assert control not in page.text, (path, control)
        token = csrf_of(page.text)  # her own session's token: the role, not the CSRF, refuses her
        for verb in ("start", "pause", "cancel"):
            r = await c.post(f"/ui/campaigns/{cid}/{verb}", data={"csrf": token})
            assert r.status_code == 403 and r.json()["kind"] == "ForbiddenError", (verb, r.text)
        r = await c.post("/ui/releases", data={"version": "2", "vendor": "v", "class_name": "c", "csrf": token},
                         files={"image": ("x.bin", b"\x00" * 8)})
        assert r.status_code == 403
        assert srv.campaigns.status(cid, tenant_id="op-a")["state"] == "created"
        assert (await c.get("/ui/usage")).status_code == 200 and (await c.get("/ui/audit")).status_code == 200
    async with signed_in(srv, "bob") as c:  # another tenant: not found, and nothing of op-a listed
        assert (await c.get(f"/ui/campaigns/{cid}")).status_code == 404
        assert (await c.get(f"/ui/campaigns/{cid}/report.json")).status_code == 404
        assert cid not in (await c.get("/ui/campaigns")).text and release.id not in (await c.get("/ui/releases")).text
        assert (await c.get("/ui/usage")).status_code == 403  # an operator does not read usage


async def test_failed_sign_ins_are_throttled(srv: Lwm2mServer) -> None:
    async with httpx.AsyncClient(base_url=srv.api_url) as anon:
        token = csrf_of((await anon.get("/ui/sign-in")).text)
        outcomes = []
        for _ in range(12):
            r = await anon.post("/ui/sign-in", data={"login": "alice", "password": "wrong password!", "csrf": token})
            outcomes.append(r.headers["location"])
        assert outcomes[-1].endswith("error=throttled"), outcomes
        assert all(o.endswith("error=wrong") for o in outcomes[:10]), outcomes


async def test_a_device_page_is_its_tenants_and_its_read_form_an_operators(srv: Lwm2mServer) -> None:
    from lwm2m_server.core.registration import parse_register

    assert srv.registrations is not None
    srv.registrations.register(parse_register(["ep=a-7", "lt=300", "lwm2m=1.1"], b"</3/0>,</5/0>"),
                               address="127.0.0.1:9", remote=None, tenant_id="op-a")
    async with signed_in(srv, "alice") as c:
        page = await c.get("/ui/devices/a-7")
        assert page.status_code == 200 and 'id="read"' in page.text and "/5/0" in page.text
        listing = await c.get("/ui/devices", params={"q": "a-7"})
        assert 'data-endpoint="a-7"' in listing.text
        r = await c.get("/ui/devices/a-7", params={"path": "/3/0/0"})  # registered without a live session here
        assert r.status_code == 200 and 'class="error"' in r.text
    async with signed_in(srv, "audrey") as c:
        page = await c.get("/ui/devices/a-7")
        assert page.status_code == 200 and 'id="read"' not in page.text
        assert (await c.get("/ui/devices/a-7", params={"path": "/3/0/0"})).status_code == 403
    async with signed_in(srv, "bob") as c:
        assert (await c.get("/ui/devices/a-7")).status_code == 404
        assert 'data-endpoint="a-7"' not in (await c.get("/ui/devices")).text


async def test_a_campaign_is_previewed_from_a_list_a_file_or_a_filter_then_created(srv: Lwm2mServer) -> None:
    from lwm2m_server.core.registration import parse_register

    assert srv.registrations is not None and srv.campaigns is not None
    for ep in ("a-1", "a-2", "b-9"):
        srv.registrations.register(parse_register([f"ep={ep}", "lt=300"], b"</3/0>"), address="127.0.0.1:9",
                                   remote=None, tenant_id="op-a")
    release = srv.campaigns.releases.create([("a.bin", b"\x01" * 64)], vendor="acme.example", class_name="meter",
                                            version="1.0.0", tenant_id="op-a", now=1.0)
    async with signed_in(srv, "alice") as c:
        token = csrf_of((await c.get("/ui/campaigns")).text)
        r = await c.post("/ui/campaigns", data={"release": release.id, "targets": "a-1\nzz-unknown", "preview": "1",
                                                "csrf": token})
        assert r.status_code == 200 and "2 target(s) would be picked" in r.text and "not registered now" in r.text
        r = await c.post("/ui/campaigns", data={"release": release.id, "target_filter": "endpoint=a-*",
                                                "preview": "1", "csrf": token})
        assert "2 target(s) would be picked" in r.text and ">b-9<" not in r.text.split('id="preview"')[1][:2000]
        r = await c.post("/ui/campaigns", data={"release": release.id, "csrf": token},
                         files={"target_file": ("targets.txt", b"# canary\na-2\n")})
        assert r.status_code == 303
        cid = r.headers["location"].rsplit("/", 1)[1]
        assert [j["endpoint"] for j in srv.campaigns.status(cid, tenant_id="op-a", jobs=True)["jobs"]] == ["a-2"]
        assert srv.campaigns.list(tenant_id="op-a")[0]["id"] == cid and len(srv.campaigns.list(tenant_id="op-a")) == 1


async def test_an_admin_manages_users_tokens_and_the_brand_and_nobody_else_can(srv: Lwm2mServer) -> None:
    assert srv.tenancy is not None
    srv.tenancy.create_user(tenant_id="op-a", login="adam", roles=frozenset({Role.ADMIN}), password=PASSWORD, by=ROOT)
    async with signed_in(srv, "adam") as c:
        page = await c.get("/ui/admin")
        assert page.status_code == 200 and 'id="new-user"' in page.text and 'data-user="alice"' in page.text
        assert 'data-user="bob"' not in page.text  # op-b's
        token = csrf_of(page.text)
        r = await c.post("/ui/admin/users", data={"login": "ann", "password": PASSWORD, "roles": ["admin"],
                                                  "csrf": token})
        assert r.status_code == 303
        r = await c.post("/ui/admin/users", data={"login": "olga", "password": PASSWORD, "roles": ["operator"],
                                                  "csrf": token})
        assert r.status_code == 403  # an admin cannot hand out a role it does not hold
        r = await c.post("/ui/admin/tokens", data={"name": "ci", "roles": ["admin"], "expires_days": "7",
                                                   "csrf": token})
        shown = re.search(r'id="new-token">(scr_tok-[^<]+)<', r.text)
        assert r.status_code == 200 and shown is not None
        assert srv.tenancy.authenticate(shown.group(1)) is not None
        assert shown.group(1) not in (await c.get("/ui/admin")).text  # shown once
        png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
        r = await c.post("/ui/admin/brand", data={"product_name": "Blue Fleet", "primary_color": "#112233",
                                                  "csrf": token}, files={"logo": ("logo.png", png)})
        assert r.status_code == 303
        home = await c.get("/ui")
        assert 'id="product">Blue Fleet<' in home.text and "--brand: #112233" in home.text
        assert (await c.get("/ui/brand/logo")).content == png
        ann = next(u for u in srv.tenancy.stores.users.list(tenant_id="op-a") if u.login == "ann")
        r = await c.post(f"/ui/admin/users/{ann.id}/disable", data={"csrf": token})
        assert r.status_code == 303 and srv.tenancy.stores.users.get(ann.id).disabled_at is not None  # type: ignore[union-attr]
    async with signed_in(srv, "alice") as c:  # an operator: no admin page, no admin routes
        assert (await c.get("/ui/admin")).status_code == 403
        token = csrf_of((await c.get("/ui/campaigns")).text)
        assert (await c.post("/ui/admin/tokens", data={"roles": ["operator"], "csrf": token})).status_code == 403
        assert 'id="nav-admin"' not in (await c.get("/ui")).text
    async with signed_in(srv, "bob") as c:  # another tenant keeps its own look
        assert "Blue Fleet" not in (await c.get("/ui")).text


async def test_an_oem_package_is_imported_from_the_releases_page_under_the_grant(srv: Lwm2mServer,
                                                                                 tmp_path: Path) -> None:
    import hashlib
    import uuid

    from firmware_object.suit.envelope import build_envelope
    from firmware_object.suit.keys import generate_private_key, public_key_to_pem
    from firmware_object.suit.manifest import ReleaseManifest

    assert srv.tenancy is not None and srv.campaigns is not None
    srv.tenancy.create_tenant("oem", kind=TenantKind.OEM, by=ROOT)
    key = generate_private_key("es256")
    srv.campaigns.keys.add_public("oem-release", "release", public_key_to_pem(key.public_key()), tenant_id="oem",
                                  now=1.0)
    vendor = uuid.uuid5(uuid.NAMESPACE_DNS, "oem.example")
    image = b"\x42" * 1000
    envelope = build_envelope(ReleaseManifest(sequence_number=3, vendor_id=vendor, class_id=uuid.uuid5(vendor, "x"),
                                              image_digest=hashlib.sha256(image).digest(), image_size=len(image),
                                              version="3.0"), [key], image=image)
    async with signed_in(srv, "alice") as c:
        token = csrf_of((await c.get("/ui/releases")).text)
        form = {"key": "oem-release", "origin": "oem", "csrf": token}
        r = await c.post("/ui/releases/import", data=form, files={"package": ("x.suit", bytes(envelope))})
        assert r.status_code == 404  # no grant yet: the OEM's key is not even found
        srv.tenancy.grant(oem_tenant="oem", operator_tenant="op-a", class_name="x", by=ROOT)
        r = await c.post("/ui/releases/import", data=form, files={"package": ("x.suit", bytes(envelope))})
        assert r.status_code == 303
        page = await c.get("/ui/releases")
        assert "(of oem)" in page.text and ">3.0<" in page.text


async def test_the_sign_in_page_shows_only_its_own_messages(srv: Lwm2mServer) -> None:
    async with httpx.AsyncClient(base_url=srv.api_url) as anon:
        crafted = await anon.get("/ui/sign-in", params={"error": "<b>account locked: call +1 555 0100</b>"})
        assert crafted.status_code == 200 and "555" not in crafted.text and 'id="error"' not in crafted.text
        known = await anon.get("/ui/sign-in", params={"error": "wrong"})
        assert 'id="error"' in known.text and "wrong login or password" in known.text

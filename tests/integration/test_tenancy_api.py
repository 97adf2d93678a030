"""Tenants through the real API: two operators and one OEM on one server (real DTLS registrations, real SQLite).

Every route is tried with a token of operator A on operator B's devices, releases, campaigns and tokens: each is a
404 shaped like the one for a name that does not exist (nothing leaks, not even existence), and every listing of A
holds nothing of B. Roles: an auditor cannot start a campaign (403), an operator cannot make keys or tokens (403);
revoked and expired tokens get 401; no token's text reaches the database, its WAL, the logs or the audit file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import httpx
import pytest
from fastapi.routing import APIRoute

from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from lwm2m_server.coap.dtls import dtls_client_context
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.server import Lwm2mServer
from lwm2m_server.storage.database import Database
from lwm2m_server.tenancy.model import Role, TenantKind
from lwm2m_server.tenancy.service import system_principal
from tests.harness import running_server

pytestmark = pytest.mark.timeout(120)

ROOT = system_principal("test")


class World:
    def __init__(self, srv: Lwm2mServer, data: Path) -> None:
        self.srv, self.data = srv, data
        self.tokens: dict[str, str] = {}  # name -> token text
        self.ids: dict[str, str] = {}  # name -> token id

    def token(self, name: str, tenant: str, *roles: Role, days: float = 30) -> str:
        assert self.srv.tenancy is not None
        record, text = self.srv.tenancy.create_token(tenant_id=tenant, roles=frozenset(roles), by=ROOT,
                                                     expires_days=days, name=name)
        self.tokens[name], self.ids[name] = text, record.id
        return text

    def client(self, name: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.srv.api_url, timeout=30,
                                 headers={"Authorization": f"Bearer {self.tokens[name]}"})


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    data = tmp_path / "data"
    data.mkdir()
    database = Database.for_data_dir(data)
    vault = Vault.open(data / "vault.key")
    store = SqlCredentialStore(database, vault)
    try:
        async with running_server(data, coaps_port=0, coap_port=None, credentials=store, vault=vault,
                                  api_port=0) as srv:
            assert srv.tenancy is not None
            srv.tenancy.create_tenant("oem", kind=TenantKind.OEM, by=ROOT)
            srv.tenancy.create_tenant("op-a", kind=TenantKind.OPERATOR, by=ROOT)
            srv.tenancy.create_tenant("op-b", kind=TenantKind.OPERATOR, by=ROOT)
            clients = []
            try:
                for ep, tenant in (("a-1", "op-a"), ("b-1", "op-b"), ("b-2", "op-b")):
                    issued = store.issue(ep, "server", now=0, tenant_id=tenant)
                    client = await dtls_client_context(None, srv.coaps_uri, issued.credential.identity.encode(),
                                                       bytes(issued.psk))
                    clients.append(client)  # kept open: a device whose DTLS session closes is gone
                    request = aiocoap.Message(code=aiocoap.POST, uri=f"{srv.coaps_uri}/rd", payload=b"</3/0>",
                                              content_format=int(ContentFormat.LINK))
                    request.opt.uri_query = (f"ep={ep}", "lt=300", "lwm2m=1.1")
                    answer = await asyncio.wait_for(client.request(request).response, 10)
                    assert answer.code == aiocoap.CREATED, (ep, answer)
                yield await _world(srv, data)
            finally:
                for client in clients:
                    await client.shutdown()
    finally:
        database.close()


async def _world(srv: Lwm2mServer, data: Path) -> World:
    w = World(srv, data)
    w.token("a-all", "op-a", Role.ADMIN, Role.OPERATOR, Role.AUDITOR, Role.RELEASE_MANAGER)
    w.token("a-auditor", "op-a", Role.AUDITOR)
    w.token("a-operator", "op-a", Role.OPERATOR)
    w.token("b-operator", "op-b", Role.OPERATOR)
    w.token("b-admin", "op-b", Role.ADMIN)
    w.token("oem-rm", "oem", Role.RELEASE_MANAGER)
    assert srv.registrations is not None
    assert sorted(r.endpoint for r in srv.registrations.all()) == ["a-1", "b-1", "b-2"]
    return w


async def b_resources(w: World) -> dict[str, str]:
    """Operator B's release and campaign (through B's own token), and ids of B's things."""
    assert w.srv.campaigns is not None
    release = w.srv.campaigns.releases.create([("app.bin", b"\x07" * 300)], vendor="acme.example",
                                              class_name="meter", version="2.0.0", tenant_id="op-b", now=1.0)
    async with w.client("b-operator") as b:
        r = await b.post("/api/campaigns", json={"releases": [release.id], "targets": ["b-1"], "name": "b's"})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        r = await b.post("/api/devices/b-1/tags", json={"add": ["b-secret-tag"]})
        assert r.status_code == 200, r.text
    return {"endpoint": "b-1", "cid": cid, "release_id": release.id, "token_id": w.ids["b-admin"]}


# a body that passes validation for each POST/PUT route, so the tenant lookup (not a 422) decides
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/devices/{endpoint}/write"): {"path": "/3/0/14", "value": "+01"},
    ("POST", "/api/devices/{endpoint}/execute"): {"path": "/3/0/4"},
    ("POST", "/api/devices/{endpoint}/attributes"): {"path": "/3/0/9", "attributes": {"pmin": 1}},
    ("POST", "/api/devices/{endpoint}/create"): {"path": "/3", "instance_id": 1, "resources": {}},
    ("POST", "/api/devices/{endpoint}/delete"): {"path": "/3/0"},
    ("POST", "/api/devices/{endpoint}/read-composite"): {"paths": ["/3/0/0"]},
    ("POST", "/api/campaigns/{cid}/start"): {},
    ("POST", "/api/devices/{endpoint}/tags"): {"add": [], "remove": ["b-secret-tag"]},
    ("POST", "/api/releases/{release_id}/approve"): {"key": "deploy"},
    ("POST", "/api/releases/{release_id}/deltas"): {"base_release": "rel-aaaaaaaaaa"},
}
QUERIES: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/api/devices/{endpoint}/read"): {"path": "/3/0/0"},
    ("GET", "/api/devices/{endpoint}/observe"): {"path": "/3/0/0"},
    ("GET", "/api/devices/{endpoint}/discover"): {"path": "/3"},
}
# routes whose path names no resource of a tenant: checked by their listings instead
SELF_SCOPED = {"/api/health", "/api/whoami", "/api/tenant", "/api/tenant/logo", "/api/tenant/brand", "/api/tags",
               "/api/devices", "/api/releases", "/api/campaigns", "/api/tokens", "/api/grants", "/api/audit",
               "/api/attestation-key", "/api/keys", "/api/releases/import", "/api/usage"}
# tags are names in the caller's own tenant: tagging "b-1" as A is A's own inventory entry, never B's device
OWN_NAMESPACE = {("POST", "/api/devices/{endpoint}/tags"), ("GET", "/api/devices/{endpoint}/tags")}


def _routes(srv: Lwm2mServer) -> list[tuple[str, str]]:
    assert srv.api_app is not None
    out = []
    for route in srv.api_app.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/api/"):  # the web's: test_web_security.py
            out.extend((m, route.path) for m in sorted(route.methods - {"HEAD"}))
    return out


async def test_every_route_hides_another_tenants_resources(world: World) -> None:
    w = world
    b = await b_resources(w)
    routes = _routes(w.srv)
    tried = 0
    async with w.client("a-all") as a:
        first = await a.get("/api/devices/no-such-device")
        assert first.status_code == 404, (first.status_code, first.text)
        missing = first.json()
        for method, path in routes:
            if path in SELF_SCOPED or path.startswith("/api/clients/"):
                continue
            names = re.findall(r"{(\w+)(?::\w+)?}", path)
            assert set(names) <= set(b), f"the test does not know how to fill {path}"

            def fill(values: dict[str, str], path: str = path, names: list[str] = names) -> str:
                for name in names:
                    path = re.sub(r"{" + name + r"(?::\w+)?}", values[name], path)
                return path

            async def call(url: str, method: str = method, path: str = path) -> httpx.Response:
                firmware = path.endswith("/firmware") and method == "POST"
                return await a.request(method, url, json=None if firmware else BODIES.get((method, path)),
                                       params=QUERIES.get((method, path)), content=b"\x00" * 16 if firmware else None)

            r = await call(fill(b))
            nothing = await call(fill({k: f"{v[:3]}zz-none" for k, v in b.items()}))
            tried += 1
            if (method, path) in OWN_NAMESPACE:
                assert r.status_code == 200 and "b-secret-tag" not in r.text, (method, path, r.text)
                continue
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            body = r.json()
            assert set(body) == set(missing) and body["kind"] == nothing.json()["kind"], (body, nothing.text)
            assert nothing.status_code == 404  # indistinguishable from a name that exists nowhere
            for secret in (b["cid"], b["release_id"]) if "{endpoint}" in path else ():
                assert secret not in r.text
        assert tried >= 25, tried
        # the listings of A hold nothing of B
        for path in sorted(SELF_SCOPED - {"/api/tenant/logo", "/api/tenant/brand", "/api/releases/import"}):
            r = await a.get(path)
            assert r.status_code == 200, (path, r.text)
            # A's audit trail records A's own requests, with the names A typed; nothing else of B
            typed_by_a = {"b-1", b["cid"], b["release_id"], b["token_id"]} if path == "/api/audit" else set()
            for secret in {"b-1", "b-2", b["cid"], b["release_id"], b["token_id"], "op-b", "b-secret-tag"} - typed_by_a:
                assert secret not in r.text, (path, secret)
        devices = (await a.get("/api/devices")).json()
        assert [d["endpoint"] for d in devices] == ["a-1"]
    async with w.client("b-operator") as bc:  # B still sees its own
        assert [d["endpoint"] for d in (await bc.get("/api/devices")).json()] == ["b-1", "b-2"]
        assert (await bc.get(f"/api/campaigns/{b['cid']}")).status_code == 200


async def test_roles_are_enforced_and_refusals_audited(world: World) -> None:
    w = world
    assert w.srv.campaigns is not None
    release = w.srv.campaigns.releases.create([("app.bin", b"\x01" * 200)], vendor="acme.example",
                                              class_name="meter", version="1.0.0", tenant_id="op-a", now=1.0)
    async with w.client("a-operator") as op:
        r = await op.post("/api/campaigns", json={"releases": [release.id], "targets": ["a-1"]})
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        r = await op.post("/api/tokens", json={"roles": ["operator"]})
        assert r.status_code == 403 and "manage-tokens" in r.json()["error"], r.text
        r = await op.post("/api/keys", json={"name": "mine", "role": "deployment"})
        assert r.status_code == 403 and "manage-keys" in r.json()["error"], r.text
        assert "mine" not in [k["name"] for k in (await op.get("/api/keys")).json()]
    async with w.client("a-auditor") as aud:
        r = await aud.post(f"/api/campaigns/{cid}/start", json={})
        assert r.status_code == 403 and r.json()["kind"] == "ForbiddenError", r.text
        assert (await aud.get(f"/api/campaigns/{cid}")).json()["state"] == "created"
        r = await aud.post("/api/devices/a-1/execute", json={"path": "/3/0/4"})
        assert r.status_code == 403
        trail = (await aud.get("/api/audit")).json()
        refused = [(e["action"], e["outcome"]) for e in trail if e["subject"] == w.ids["a-auditor"]]
        assert ("POST /api/campaigns/{cid}/start", "refused") in refused
        assert all(e["tenant_id"] == "op-a" for e in trail)
    async with w.client("oem-rm") as oem:  # an OEM has no devices and runs no campaigns, whatever its roles
        r = await oem.get("/api/devices")
        assert r.status_code == 200 and r.json() == []
    async with w.client("b-admin") as badmin:
        r = await badmin.get("/api/audit")
        assert r.status_code == 200 and all(e["tenant_id"] == "op-b" for e in r.json())
        assert all(cid not in json.dumps(e) for e in r.json())


async def test_revoked_and_expired_tokens_are_refused(world: World) -> None:
    w = world
    assert w.srv.tenancy is not None
    short = w.token("a-short", "op-a", Role.AUDITOR, days=1)
    async with w.client("a-all") as admin:
        r = await admin.post("/api/tokens", json={"roles": ["auditor"], "name": "ci", "expires_days": 7})
        assert r.status_code == 201 and r.json()["token"].startswith("scr_tok-"), r.text
        made = r.json()
        listing = (await admin.get("/api/tokens")).text
        assert made["token"] not in listing and made["id"] in listing
    headers = {"Authorization": f"Bearer {made['token']}"}
    async with httpx.AsyncClient(base_url=w.srv.api_url, headers=headers) as fresh:
        assert (await fresh.get("/api/whoami")).json()["roles"] == ["auditor"]
        async with w.client("a-all") as admin:
            assert (await admin.delete(f"/api/tokens/{made['id']}")).status_code == 200
        r = await fresh.get("/api/whoami")
        assert r.status_code == 401 and r.json()["kind"] == "Unauthorized"
    w.srv.tenancy.clock = lambda: 10**10  # far beyond a day from now: the short token has expired
    async with httpx.AsyncClient(base_url=w.srv.api_url, headers={"Authorization": f"Bearer {short}"}) as late:
        assert (await late.get("/api/whoami")).status_code == 401


async def test_no_token_text_is_stored_or_logged(world: World, caplog: pytest.LogCaptureFixture) -> None:
    w = world
    async with w.client("a-all") as admin:
        made = (await admin.post("/api/tokens", json={"roles": ["auditor"], "expires_days": 1})).json()["token"]
        for name in w.tokens:
            async with w.client(name) as c:
                await c.get("/api/whoami")
                await c.post("/api/campaigns/cmp-none/pause")
    await asyncio.sleep(0)
    secrets = [t.split(".", 1)[1] for t in [*w.tokens.values(), made]]
    files = [p for p in w.data.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") or p.suffix == ".db" for p in files)
    audit_file = w.data / "audit.jsonl"
    assert audit_file in files and b'"event":"audit.create-token"' in audit_file.read_bytes()
    for path in files:
        content = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, path
    for secret in secrets:
        assert secret not in caplog.text


async def test_a_tenant_brand_is_validated_and_names_its_reports(world: World) -> None:
    w = world
    w.token("a-admin", "op-a", Role.ADMIN)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    async with w.client("a-admin") as admin:
        for bad in ({"product_name": ""}, {"product_name": "X", "primary_color": "red"},
                    {"product_name": "X", "support_url": "javascript:alert(1)"},
                    {"product_name": "X", "logo_base64": base64.b64encode(b"<svg><script>x</script></svg>").decode()}):
            r = await admin.put("/api/tenant/brand", json=bad)
            assert r.status_code == 400, (bad, r.text)
        r = await admin.put("/api/tenant/brand", json={
            "product_name": "Blue Fleet", "report_issuer": "Blue Fleet GmbH", "primary_color": "#0044ff",
            "support_url": "https://support.blue.example", "logo_base64": base64.b64encode(png).decode()})
        assert r.status_code == 200, r.text
        shown = (await admin.get("/api/tenant")).json()
        assert shown["brand"]["product_name"] == "Blue Fleet" and shown["brand"]["has_logo"]
        logo = await admin.get("/api/tenant/logo")
        assert logo.content == png and logo.headers["content-type"] == "image/png"
    async with w.client("b-admin") as other:  # another tenant keeps its own (none)
        assert (await other.get("/api/tenant")).json()["brand"] is None
        assert (await other.get("/api/tenant/logo")).status_code == 404
    assert w.srv.campaigns is not None and w.srv.tenancy is not None
    assert w.srv._product_name("op-a") == "Blue Fleet" and w.srv._product_name("op-b") == "SCRATCh"
    release = w.srv.campaigns.releases.create([("app.bin", b"\x02" * 100)], vendor="acme.example",
                                              class_name="meter", version="1.0.1", tenant_id="op-a", now=1.0)
    status = await w.srv.campaigns.create([release.id], targets=["a-1"], tenant_id="op-a")
    await w.srv.campaigns.cancel(status["id"], tenant_id="op-a")
    await asyncio.wait_for(_until(lambda: w.srv.campaigns.status(  # type: ignore[union-attr]
        status["id"], tenant_id="op-a")["report_ready"]), 30)
    report, _ = w.srv.campaigns.report(status["id"], tenant_id="op-a")
    assert report["server"]["issuer"] == "Blue Fleet GmbH"


async def test_failed_token_checks_are_throttled_per_token_across_addresses(world: World) -> None:
    w = world
    token_id = w.ids["a-auditor"]
    wrong = f"scr_{token_id}." + "A" * 43
    codes = []
    for i in range(24):  # from 12 loopback addresses, 2 tries each: no address reaches its own burst
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{10 + i // 2}")
        async with httpx.AsyncClient(base_url=w.srv.api_url, transport=transport,
                                     headers={"Authorization": f"Bearer {wrong}"}) as c:
            codes.append((await c.get("/api/whoami")).status_code)
    assert codes[:10] == [401] * 10 and 429 in codes[10:], codes
    async with w.client("a-auditor") as right:  # the right token is never throttled
        assert (await right.get("/api/whoami")).status_code == 200


async def _until(check: Any) -> None:
    while not check():
        await asyncio.sleep(0.05)


async def test_the_cli_takes_a_token_and_shows_the_tenants_brand(world: World) -> None:
    from typer.testing import CliRunner

    from lwm2m_server.cli.app import app
    from lwm2m_server.tenancy.brand import brand_from_fields

    w = world
    assert w.srv.tenancy is not None
    w.srv.tenancy.set_brand("op-b", brand_from_fields("NetCo Fleet"), by=ROOT)

    def cli(*args: str, env: dict[str, str] | None = None) -> Any:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "SCRATCH_API": w.srv.api_url,
                                                        "SCRATCH_TOKEN": "", "SCRATCH_API_TOKEN": "", **(env or {})})

    r = await asyncio.to_thread(cli, "--token", w.tokens["b-operator"], "whoami")
    assert r.exit_code == 0 and "NetCo Fleet: tenant op-b (operator" in r.stdout and "SCRATCh" not in r.stdout, r
    r = await asyncio.to_thread(cli, "device", "list", "--json", env={"SCRATCH_TOKEN": w.tokens["a-operator"]})
    assert r.exit_code == 0 and [d["endpoint"] for d in json.loads(r.stdout)] == ["a-1"], r.stdout
    r = await asyncio.to_thread(cli, "--token", w.tokens["a-auditor"], "device", "execute", "a-1", "/3/0/4")
    assert r.exit_code == 1 and "run-campaigns" not in r.stderr and "manage-devices needs" in r.stderr, r.stderr
    assert w.tokens["a-auditor"] not in r.stdout + r.stderr

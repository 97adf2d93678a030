"""``scratch demo``: the README's main job, on loopback with the embedded SQLite, for two companies.

An OEM (tenant ``sensorworks``) makes devices and signs their firmware on its own premises; an operator (tenant
``netco``) runs them. Devices provisioned at the factory with unique bootstrap keys (in the operator's tenant)
bootstrap over DTLS-PSK, get a fresh server key each, register over DTLS and are managed end to end through the
REST API with the operator's own token (reads in every format, a write, an observation). The OEM signs a release
offline with its own key: the operator's server holds only its public key; the import is refused until the OEM
grants the operator the device class, then the operator's release manager countersigns it and its operator rolls it
out as a staged campaign (a canary wave, then growing waves) over the devices' DTLS sessions; one failing image
rolls back by itself; the server hands back its attestation report, signed and issued under the operator's brand,
which is verified; one device has its key rotated; the run ends with the operator's usage (hash-chained) and a
summary of the audit trail."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from firmware_object.errors import UpdateResult
from firmware_object.suit.keys import load_public_key
from lwm2m_server.cli.render import node_table
from lwm2m_server.core.model import ObjectModel

console = Console()

FORMATS = ("tlv", "senml-json", "senml-cbor", "lwm2m-cbor")
VENDOR = uuid.uuid5(uuid.NAMESPACE_DNS, "sensorworks.example")  # the demo's vendor and device class (RFC 9124 style)
CLASS = uuid.uuid5(VENDOR, "sim-sensor-1")
IMAGE_SIZE = 96 * 1024
STATES = {0: "Idle", 1: "Downloading", 2: "Downloaded", 3: "Updating"}


OEM, OPERATOR = "sensorworks", "netco"


class DemoError(Exception):
    pass


class OemPremises:
    """The OEM's own signing station: its private key never leaves this object (nor reaches the operator)."""

    def __init__(self, private: Any) -> None:
        from firmware_object.suit.keys import public_key_to_pem

        self._private = private
        self.public_key = private.public_key()
        self.public_pem = public_key_to_pem(self.public_key)

    @classmethod
    def create(cls) -> OemPremises:
        from firmware_object.suit.keys import generate_private_key

        return cls(generate_private_key("es256"))

    def sign(self, image: bytes, *, version: str, sequence_number: int) -> bytes:
        """What ``scratch firmware sign`` does: the image integrated into a SUIT envelope signed with the OEM key."""
        import hashlib

        from firmware_object.suit.envelope import build_envelope
        from firmware_object.suit.manifest import ReleaseManifest

        manifest = ReleaseManifest(sequence_number=sequence_number, vendor_id=VENDOR, class_id=CLASS,
                                   image_digest=hashlib.sha256(image).digest(), image_size=len(image),
                                   version=version)
        return bytes(build_envelope(manifest, [self._private], image=image))


async def _call(http: httpx.AsyncClient, method: str, url: str, **kw: Any) -> Any:
    r = await http.request(method, url, **kw)
    if r.status_code >= 400:
        raise DemoError(f"{method} {url}: {r.json().get('error', r.text)}")
    return r.json()


async def run_demo(count: int, data_dir: Path, *, serve: bool = False) -> None:
    from bootstrap.server import BootstrapServer, BootstrapSettings
    from bootstrap.sql_credentials import SqlCredentialStore
    from bootstrap.vault import Vault
    from client_sim.credentials import FactoryCredentials
    from client_sim.firmware import FirmwareOptions
    from client_sim.fleet import Fleet
    from lwm2m_server.audit import AuditLog
    from lwm2m_server.server import Lwm2mServer, ServerSettings
    from lwm2m_server.storage.database import Database
    from lwm2m_server.tenancy.brand import brand_from_fields
    from lwm2m_server.tenancy.model import Role, TenantKind
    from lwm2m_server.tenancy.service import system_principal

    model = ObjectModel.default()
    t0 = time.perf_counter()
    database = Database.for_data_dir(data_dir)
    vault = Vault.open(data_dir / "vault.key")
    store = SqlCredentialStore(database, vault)
    server = Lwm2mServer(ServerSettings(data_dir=data_dir, coap_port=None, coaps_port=0, api_port=0,
                                        lifetime_grace=5.0, campaign_tick=0.2), credentials=store, vault=vault)
    await server.start()
    audit = AuditLog.in_data_dir(data_dir)
    bootstrap = BootstrapServer(BootstrapSettings(server_uri=server.coaps_uri, coaps_port=0, lifetime=60), store,
                                on_event=lambda k, d: audit.record(k, time.time(), d, source="bootstrap-server"))
    await bootstrap.start()
    console.print(f"[bold]1.[/bold] LwM2M server on {server.coaps_uri} (DTLS-PSK only), bootstrap server on "
                  f"{bootstrap.coaps_uri}, REST API on {server.api_url}, SQLite and vault key in {data_dir}",
                  highlight=False)
    assert server.campaigns is not None and server.tenancy is not None
    tenancy, root = server.tenancy, system_principal("demo")
    tenancy.create_tenant(OEM, kind=TenantKind.OEM, name="Sensor Works (OEM)", by=root)
    tenancy.create_tenant(OPERATOR, kind=TenantKind.OPERATOR, name="NetCo (operator)", by=root)
    tenancy.set_brand(OPERATOR, brand_from_fields("NetCo Fleet", report_issuer="NetCo Networks GmbH",
                                                  primary_color="#0a5cff"), by=root)
    tokens = {role: tenancy.create_token(tenant_id=OPERATOR, roles=frozenset({role}), name=f"demo {role.value}",
                                         expires_days=1, by=root)[1]
              for role in (Role.OPERATOR, Role.RELEASE_MANAGER, Role.AUDITOR)}
    console.print(f"   tenants: {OEM} (OEM), {OPERATOR} (operator, branded NetCo Fleet); API tokens of {OPERATOR} for "
                  "roles operator, release-manager and auditor (shown once, stored as salted hashes; not shown here)",
                  highlight=False)
    records = []
    for i in range(count):
        credential, psk = store.issue(f"sim-{i}", "bootstrap", now=time.time(), tenant_id=OPERATOR)
        records.append(FactoryCredentials(credential.endpoint, credential.identity, bytes(psk), bootstrap.coaps_uri))
    console.print(f"[bold]2.[/bold] Factory: {count} devices of {OPERATOR} provisioned, each with its own bootstrap "
                  "PSK (sealed in the vault; no key is shown)", highlight=False)
    oem = OemPremises.create()
    deploy_key = server.campaigns.keys.create("netco-deploy", "deployment", tenant_id=OPERATOR, now=time.time())
    failing = f"sim-{count - 1}"
    firmware = FirmwareOptions(trust_anchors=(oem.public_key, load_public_key(deploy_key.public_pem.encode())),
                               vendor_id=VENDOR, class_id=CLASS, version="1.0.0", sequence_number=0)
    fleet = Fleet.from_credentials(
        records, lifetime=60, firmware=firmware,
        options_for=lambda i: {"firmware": replace(firmware, fail_boot=True)} if i == count - 1 else {})
    try:
        with Progress(TextColumn("[bold]3.[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(f"{count} devices bootstrap, then register over DTLS", total=count)
            start = asyncio.create_task(fleet.start())
            deadline = time.monotonic() + 60
            while not (start.done() and fleet.status.registered == count) and time.monotonic() < deadline:
                progress.update(task, completed=fleet.status.registered)
                await asyncio.sleep(0.05)
            await start
            progress.update(task, completed=fleet.status.registered)
        console.print(f"   {bootstrap.stats.succeeded} bootstraps, each issuing a fresh 16-byte server PSK; "
                      f"{bootstrap.stats.failed} failed and were retried", highlight=False)
        headers = {"Authorization": f"Bearer {tokens[Role.OPERATOR]}"}
        async with httpx.AsyncClient(base_url=server.api_url, headers=headers, timeout=30) as http:
            devices = await _call(http, "GET", "/api/devices")
            secure = sum(1 for d in devices if d["secure"])
            identities = {d["identity"] for d in devices}
            console.print(f"   {len(devices)} registered, {secure} over DTLS-PSK, under {len(identities)} distinct "
                          "server identities", highlight=False)
            if len(devices) != count or secure != count or len(identities) != count:
                raise DemoError(f"{len(devices)} of {count} devices registered")
            await _manage(http, model, devices)
            report = await _campaign(http, server, data_dir, [d["endpoint"] for d in devices], failing, oem,
                                     tokens[Role.RELEASE_MANAGER])
            rotation = await _call(http, "POST", "/api/devices/sim-0/rekey", params={"timeout": 30})
        async with httpx.AsyncClient(base_url=server.api_url, timeout=30,
                                     headers={"Authorization": f"Bearer {tokens[Role.AUDITOR]}"}) as http:
            usage = await _call(http, "GET", "/api/usage", params={"include_today": True})
            trail = await _call(http, "GET", "/api/audit")
        unexpected = _report_table(report, failing, time.perf_counter() - t0)
        console.print(f"[bold]10.[/bold] Rotated sim-0's key: it bootstrapped again and registered as "
                      f"{rotation['new_identity']} ({rotation['seconds']:.2f} s); {rotation['old_identity']} is "
                      "revoked and refused", highlight=False)
        if unexpected:
            raise DemoError(f"unexpected results on {', '.join(unexpected)}")
        if serve:
            _summaries(data_dir, trail, usage, report)
            await _serve(server)
    finally:
        await fleet.stop()
        await bootstrap.stop()
        await server.stop()
        audit.close()
        database.close()
    if not serve:
        _summaries(data_dir, trail, usage, report)


def _summaries(data_dir: Path, trail: list[dict[str, Any]], usage: dict[str, Any], report: dict[str, Any]) -> None:
    from lwm2m_server.audit import AUDIT_FILE, read_audit

    kinds: dict[str, int] = {}
    for event in read_audit(data_dir / AUDIT_FILE):
        kind = "audit.* (privileged actions)" if str(event["event"]).startswith("audit.") else str(event["event"])
        kinds[kind] = kinds.get(kind, 0) + 1
    console.print("[bold]11.[/bold] Audit log " + str(data_dir / AUDIT_FILE) + ": " +
                  ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())), highlight=False)
    actions: dict[str, int] = {}
    for entry in trail:
        key = f"{entry['action']} ({entry['outcome']})"
        actions[key] = actions.get(key, 0) + 1
    console.print(f"    {OPERATOR}'s audit trail (who, roles, what, outcome): "
                  + ", ".join(f"{n} {a}" for a, n in sorted(actions.items())), highlight=False)
    _usage_summary(usage, report, data_dir)


async def _serve(server: Any) -> None:
    """Keep the server and the fleet up, and print the web interface's address with a one-time sign-in link for a
    netco operator, until Ctrl-C (or SIGTERM)."""
    import secrets

    from lwm2m_server.cli.common import wait_for_signal
    from lwm2m_server.tenancy.model import Role
    from lwm2m_server.tenancy.service import system_principal

    root = system_principal("demo")
    user = server.tenancy.create_user(tenant_id=OPERATOR, login="netco-operator",
                                      roles=frozenset({Role.OPERATOR, Role.RELEASE_MANAGER, Role.AUDITOR}),
                                      password=secrets.token_urlsafe(24), by=root)
    link = server.tenancy.one_time_link(user.id, by=root)
    console.print(f"[bold]13.[/bold] The web interface of {OPERATOR} runs at [bold]{server.api_url}/ui[/bold]; sign "
                  f"in once with {server.api_url}/ui/once/{link} (valid 10 minutes, one use). Ctrl-C stops the "
                  "server and the devices.", highlight=False, soft_wrap=True)
    await wait_for_signal()


async def _manage(http: httpx.AsyncClient, model: ObjectModel, devices: list[dict[str, Any]]) -> None:
    """Device management through the REST API: reads in every format, a write, an observation."""
    ep = "sim-0"
    reads = {f: await _call(http, "GET", f"/api/devices/{ep}/read", params={"path": "/3/0", "format": f})
             for f in FORMATS}
    stable = {f: [r for r in a["content"]["resources"] if r["id"] not in (9, 10, 13)] for f, a in reads.items()}
    same = all(v == stable[FORMATS[0]] for v in stable.values())
    console.print(f"[bold]4.[/bold] Read /3/0 of {ep} in {', '.join(FORMATS)}: the formats agree: "
                  f"[{'green' if same else 'red'}]{same}[/]")
    if not same:
        console.print(node_table(reads["senml-cbor"]["content"], "/3/0", model, title=f"/3/0 of {ep}"))
        raise DemoError("the content formats disagree")
    for d in devices:
        await _call(http, "POST", f"/api/devices/{d['endpoint']}/write", json={"path": "/3/0/14", "value": "+01:00"})
    console.print(f"[bold]5.[/bold] Wrote the UTC offset /3/0/14 on all {len(devices)} devices")
    await _call(http, "POST", f"/api/devices/{ep}/attributes", json={"path": "/3/0/9", "attributes": {"pmax": 1}})
    lines = []
    async with http.stream("GET", f"/api/devices/{ep}/observe",
                           params={"path": "/3/0/9", "count": 1, "timeout": 10}) as r:
        async for line in r.aiter_lines():
            if line.strip():
                lines.append(line)
    console.print(f"[bold]6.[/bold] Observed the battery level /3/0/9 of {ep}: {len(lines) - 1} notification(s)")


async def _campaign(http: httpx.AsyncClient, server: Any, data_dir: Path, endpoints: list[str],
                    failing: str, oem: OemPremises, release_token: str) -> dict[str, Any]:
    """The OEM's release, imported under its grant, countersigned and rolled out as a staged campaign (canary, then
    waves); then its signed report, fetched and verified."""
    from lwm2m_server.fota.attestation import verify_report_file, write_report_files
    from lwm2m_server.tenancy.service import system_principal

    envelope = oem.sign(os.urandom(IMAGE_SIZE), version="2.0.0", sequence_number=1)
    server.campaigns.keys.add_public("sensorworks-release", "release", oem.public_pem, tenant_id=OEM, now=time.time())
    package = {"name": "sensor-2.0.0.suit", "base64": base64.b64encode(envelope).decode()}
    body = {"key": "sensorworks-release", "packages": [package]}
    manager = {"Authorization": f"Bearer {release_token}"}
    refused = await http.post("/api/releases/import", json=body, headers=manager)
    if refused.status_code != 404:
        raise DemoError(f"the import without the OEM's grant was not refused: {refused.status_code}")
    server.tenancy.grant(oem_tenant=OEM, operator_tenant=OPERATOR, class_name="sim-sensor-1",
                         by=system_principal("sensorworks"))
    release = await _call(http, "POST", "/api/releases/import", json=body, headers=manager)
    await _call(http, "POST", f"/api/releases/{release['id']}/approve", json={"key": "netco-deploy"},
                headers=manager)
    console.print(f"[bold]7.[/bold] {OEM} signed a {IMAGE_SIZE // 1024} KiB image offline ({len(envelope)} byte SUIT "
                  f"envelope, ES256, sequence 1, version 2.0.0) with its own key: {OPERATOR}'s server holds only the "
                  f"public key. Import refused (no grant); {OEM} grants {OPERATOR} class sim-sensor-1; imported as "
                  f"{release['id']}; {OPERATOR}'s release manager countersigns it with netco-deploy (devices check "
                  f"both signatures); {failing} will fail its health check", highlight=False)
    created = await _call(http, "POST", "/api/campaigns", json={
        "releases": [release["id"]], "targets": endpoints, "name": "demo rollout",
        "policy": {"canary_percent": 10, "waves": 2, "max_parallel": 10}})
    cid = created["id"]
    await _call(http, "POST", f"/api/campaigns/{cid}/start", json={"approve_with": "netco-deploy"})
    sizes = " + ".join(str(w["size"]) for w in created["waves"])
    with Progress(TextColumn("[bold]8.[/bold] {task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=console) as progress:
        bars = {w["wave"]: progress.add_task(f"campaign {cid} " + ("canary" if w["wave"] == 0 else
                                                                      f"wave {w['wave']}"),
                                             total=w["size"], counts="") for w in created["waves"]}
        deadline = time.monotonic() + 120
        while True:
            status = await _call(http, "GET", f"/api/campaigns/{cid}")
            for w in status["waves"]:
                done = w["succeeded"] + w["failed"] + w["rolled_back"] + w["skipped"]
                progress.update(bars[w["wave"]], completed=done,
                                counts=f"[green]{w['succeeded']} ok[/] [yellow]{w['rolled_back']} rolled back[/] "
                                       f"[red]{w['failed']} failed[/]" + ("" if w["opened_at"] else " (waiting)"))
            if status["report_ready"]:
                break
            if time.monotonic() > deadline:
                raise DemoError(f"campaign {cid} did not end in time: {status['counts']}")
            await asyncio.sleep(0.1)
    console.print(f"   campaign {cid} {status['state']} ({sizes} devices in {len(status['waves'])} waves)",
                  highlight=False)
    answer = await _call(http, "GET", f"/api/campaigns/{cid}/report")
    key = await _call(http, "GET", "/api/attestation-key")
    (data_dir / "attestation.pem").write_text(key["public_key_pem"])
    out = data_dir / f"report-{cid}.json"
    write_report_files(answer["report"], base64.b64decode(answer["cose_sign1"]), out, "json")
    verified = verify_report_file(out, load_public_key(key["public_key_pem"].encode()))
    console.print(f"[bold]9.[/bold] Signed attestation report {out.name}, issued by "
                  f"{verified.report['server']['issuer']}: COSE_Sign1 by {OPERATOR}'s attestation key {verified.kid} "
                  f"verified (scratch campaign verify-report {out.name} --key attestation.pem)", highlight=False)
    return dict(verified.report)


def _usage_summary(usage: dict[str, Any], report: dict[str, Any], data_dir: Path) -> None:
    """The operator's metered usage (GET /api/usage, as its auditor), written out and checked against the report."""
    from lwm2m_server.metering.usage import parse_export, verify_export

    out = data_dir / f"usage-{OPERATOR}.json"
    text = json.dumps(usage, indent=2) + "\n"
    out.write_text(text)
    problems = verify_export(parse_export(text))
    day = usage["records"][-1]
    summary = report["summary"]
    agrees = (day["deliveries_succeeded"] == summary["succeeded"]
              and day["deliveries_failed"] == summary["failed"] + summary["rolled-back"])
    console.print(f"[bold]12.[/bold] {OPERATOR}'s usage today ({day['day']}, pay per use): {day['devices_registered']} "
                  f"devices registered, {day['deliveries_started']} update deliveries started, "
                  f"{day['deliveries_succeeded']} succeeded, {day['deliveries_failed']} failed, "
                  f"{day['bytes_delivered'] // 1024} KiB delivered, {day['campaigns_started']} campaign(s); "
                  f"agrees with the signed report: [{'green' if agrees else 'red'}]{agrees}[/]; hash-chained export "
                  f"{out.name} verifies: [{'green' if not problems else 'red'}]{not problems}[/] (scratch usage "
                  f"verify {out.name})", highlight=False)
    if problems or not agrees:
        raise DemoError(f"the usage does not verify or does not agree with the report: {problems[:1]}")


def _report_table(report: dict[str, Any], failing: str, seconds: float) -> list[str]:
    """Print the attestation summary; return the devices whose outcome is not the expected one."""
    table = Table(title=f"attestation: state of every target ({seconds:.1f} s in all)")
    for column in ("device", "wave", "state", "before", "after", "result", "attempts", "reason"):
        table.add_column(column, no_wrap=column != "reason")
    unexpected = []
    for t in sorted(report["targets"], key=lambda t: int(t["endpoint"].rsplit("-", 1)[1])):
        expected = "rolled-back" if t["endpoint"] == failing else "succeeded"
        style = "green" if t["state"] == expected else "red"
        if t["state"] != expected:
            unexpected.append(t["endpoint"])
        known = UpdateResult.known(t["update_result"])
        table.add_row(t["endpoint"], "canary" if t["wave"] == 0 else str(t["wave"]), f"[{style}]{t['state']}[/]",
                      t["version_before"] or "-", t["version_after"] or "-",
                      f"{t['update_result']} {known.name.lower()}" if known is not None else "-",
                      str(t["attempts"]), t["reason"] or "")
    console.print(table)
    counts = ", ".join(f"{n} {state}" for state, n in report["summary"].items() if n and state != "targets")
    console.print(f"   {report['summary']['targets']} targets: {counts}; {failing}'s image failed its health "
                  "check: it rolled back by "
                  "itself and still runs 1.0.0 (Update Result 8), as it should", highlight=False)
    return unexpected


def demo(
    count: Annotated[int, typer.Option("--count", min=2, max=500, help="Number of simulated devices")] = 20,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Keep the server's data here "
                                                  "(default: a temporary folder, removed afterwards)")] = None,
    serve: Annotated[bool | None, typer.Option("--serve/--no-serve", help="At the end, keep the server up and print "
                                               "the web interface's address and a one-time sign-in link, until "
                                               "Ctrl-C (default: when run in a terminal)")] = None,
) -> None:
    """Run the demo and exit non-zero if any step fails."""
    import sys

    keep_up = sys.stdin.isatty() and sys.stdout.isatty() if serve is None else serve
    try:
        if data_dir is not None:
            asyncio.run(run_demo(count, data_dir, serve=keep_up))
        else:
            with tempfile.TemporaryDirectory(prefix="scratch-demo-") as tmp:
                asyncio.run(run_demo(count, Path(tmp), serve=keep_up))
    except (DemoError, httpx.HTTPError) as e:
        console.print(f"[red]demo failed:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    console.print("[green]demo finished[/green]")

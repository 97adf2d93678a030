"""``scratch demo``: the README's main job, on loopback with the embedded SQLite: devices provisioned at the
factory with unique bootstrap keys bootstrap over DTLS-PSK, get a fresh server key each, register over DTLS and are
managed end to end through the REST API the CLI uses (reads in every format, a write, an observation); then a
release is rolled out as a staged campaign (a canary wave, then growing waves) over the devices' DTLS sessions,
one failing image rolls back by itself, the server hands back its signed attestation report, which is verified,
and one device has its key rotated."""

from __future__ import annotations

import asyncio
import base64
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
VENDOR = uuid.uuid5(uuid.NAMESPACE_DNS, "scratch.example")  # the demo's vendor and device class (RFC 9124 style)
CLASS = uuid.uuid5(VENDOR, "sim-sensor-1")
IMAGE_SIZE = 96 * 1024
STATES = {0: "Idle", 1: "Downloading", 2: "Downloaded", 3: "Updating"}


class DemoError(Exception):
    pass


async def _call(http: httpx.AsyncClient, method: str, url: str, **kw: Any) -> Any:
    r = await http.request(method, url, **kw)
    if r.status_code >= 400:
        raise DemoError(f"{method} {url}: {r.json().get('error', r.text)}")
    return r.json()


async def run_demo(count: int, data_dir: Path) -> None:
    from bootstrap.server import BootstrapServer, BootstrapSettings
    from bootstrap.sql_credentials import SqlCredentialStore
    from bootstrap.vault import Vault
    from client_sim.credentials import FactoryCredentials
    from client_sim.firmware import FirmwareOptions
    from client_sim.fleet import Fleet
    from lwm2m_server.audit import AUDIT_FILE, AuditLog, read_audit
    from lwm2m_server.server import Lwm2mServer, ServerSettings
    from lwm2m_server.storage.database import Database

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
    records = []
    for i in range(count):
        credential, psk = store.issue(f"sim-{i}", "bootstrap", now=time.time())
        records.append(FactoryCredentials(credential.endpoint, credential.identity, bytes(psk), bootstrap.coaps_uri))
    console.print(f"[bold]2.[/bold] Factory: {count} devices provisioned, each with its own bootstrap PSK (sealed "
                  "in the vault; no key is shown)", highlight=False)
    assert server.campaigns is not None
    release_key = server.campaigns.keys.get_or_create("release", "release", tenant_id="default", now=time.time())
    failing = f"sim-{count - 1}"
    firmware = FirmwareOptions(trust_anchors=(load_public_key(release_key.public_pem.encode()),), vendor_id=VENDOR,
                               class_id=CLASS, version="1.0.0", sequence_number=0)
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
        headers = {"Authorization": f"Bearer {server.api_token}"}
        async with httpx.AsyncClient(base_url=server.api_url, headers=headers, timeout=30) as http:
            devices = await _call(http, "GET", "/api/devices")
            secure = sum(1 for d in devices if d["secure"])
            identities = {d["identity"] for d in devices}
            console.print(f"   {len(devices)} registered, {secure} over DTLS-PSK, under {len(identities)} distinct "
                          "server identities", highlight=False)
            if len(devices) != count or secure != count or len(identities) != count:
                raise DemoError(f"{len(devices)} of {count} devices registered")
            await _manage(http, model, devices)
            report = await _campaign(http, server, data_dir, [d["endpoint"] for d in devices], failing)
            rotation = await _call(http, "POST", "/api/devices/sim-0/rekey", params={"timeout": 30})
        unexpected = _report_table(report, failing, time.perf_counter() - t0)
        console.print(f"[bold]10.[/bold] Rotated sim-0's key: it bootstrapped again and registered as "
                      f"{rotation['new_identity']} ({rotation['seconds']:.2f} s); {rotation['old_identity']} is "
                      "revoked and refused", highlight=False)
        if unexpected:
            raise DemoError(f"unexpected results on {', '.join(unexpected)}")
    finally:
        await fleet.stop()
        await bootstrap.stop()
        await server.stop()
        audit.close()
        database.close()
    kinds: dict[str, int] = {}
    for event in read_audit(data_dir / AUDIT_FILE):
        kinds[str(event["event"])] = kinds.get(str(event["event"]), 0) + 1
    console.print("[bold]11.[/bold] Audit log " + str(data_dir / AUDIT_FILE) + ": " +
                  ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())), highlight=False)


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
                    failing: str) -> dict[str, Any]:
    """Release an image and roll it out as a staged campaign (canary, then waves), then fetch and verify its
    signed report."""
    from lwm2m_server.fota.attestation import verify_report_file, write_report_files

    image = os.urandom(IMAGE_SIZE)
    release = server.campaigns.releases.create([("sensor-2.0.0.bin", image)], vendor="scratch.example",
                                               class_name="sim-sensor-1", version="2.0.0", now=time.time())
    console.print(f"[bold]7.[/bold] Release {release.id}: a {len(image) // 1024} KiB image signed into a SUIT "
                  f"envelope (ES256, sequence {release.sequence_number}, version 2.0.0) with the OEM key in the "
                  f"vault; {failing} will fail its health check", highlight=False)
    created = await _call(http, "POST", "/api/campaigns", json={
        "releases": [release.id], "targets": endpoints, "name": "demo rollout",
        "policy": {"canary_percent": 10, "waves": 2, "max_parallel": 10}})
    cid = created["id"]
    await _call(http, "POST", f"/api/campaigns/{cid}/start", json={})
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
    console.print(f"[bold]9.[/bold] Signed attestation report {out.name}: COSE_Sign1 by the server key "
                  f"{verified.kid} verified (scratch campaign verify-report {out.name} --key attestation.pem)",
                  highlight=False)
    return dict(verified.report)


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
) -> None:
    """Run the demo and exit non-zero if any step fails."""
    try:
        if data_dir is not None:
            asyncio.run(run_demo(count, data_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="scratch-demo-") as tmp:
                asyncio.run(run_demo(count, Path(tmp)))
    except (DemoError, httpx.HTTPError) as e:
        console.print(f"[red]demo failed:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    console.print("[green]demo finished[/green]")

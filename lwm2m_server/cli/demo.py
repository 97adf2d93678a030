"""``scratch demo``: the README's main job. A server and a fleet of simulated devices on loopback, managed end
to end through the REST API the CLI uses: register, read in every format, write, observe; then a signed firmware
image delivered to every device (half by push, half by pull), installed, and one failing image rolled back."""

from __future__ import annotations

import asyncio
import hashlib
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
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from firmware_object.errors import UpdateResult
from firmware_object.suit.envelope import build_envelope
from firmware_object.suit.keys import PrivateKey, generate_private_key
from firmware_object.suit.manifest import ReleaseManifest
from lwm2m_server.cli.render import devices_table, node_table
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
    from client_sim.firmware import FirmwareOptions
    from client_sim.fleet import Fleet
    from lwm2m_server.server import Lwm2mServer, ServerSettings

    model = ObjectModel.default()
    t0 = time.perf_counter()
    server = Lwm2mServer(ServerSettings(data_dir=data_dir, coap_port=0, api_port=0, lifetime_grace=5.0))
    await server.start()
    console.print(f"[bold]1.[/bold] LwM2M server on {server.coap_uri}, REST API on {server.api_url}, "
                  f"SQLite in {data_dir}", highlight=False)
    oem_key = generate_private_key("es256")
    failing = f"sim-{count - 1}"
    firmware = FirmwareOptions(trust_anchors=(oem_key.public_key(),), vendor_id=VENDOR, class_id=CLASS,
                               version="1.0.0", sequence_number=1)
    fleet = Fleet(server.coap_uri, count, prefix="sim-", lifetime=60, firmware=firmware,
                  options_for=lambda i: {"firmware": replace(firmware, fail_boot=True)} if i == count - 1 else {})
    try:
        with Progress(TextColumn("[bold]2.[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(f"starting {count} simulated devices", total=count)
            start = asyncio.create_task(fleet.start())
            while not start.done():
                progress.update(task, completed=server.registrations.count() if server.registrations else 0)
                await asyncio.sleep(0.05)
            await start
            progress.update(task, completed=server.registrations.count() if server.registrations else 0)
        headers = {"Authorization": f"Bearer {server.api_token}"}
        async with httpx.AsyncClient(base_url=server.api_url, headers=headers, timeout=30) as http:
            devices = await _call(http, "GET", "/api/devices")
            console.print(devices_table(devices))
            if len(devices) != count:
                raise DemoError(f"{len(devices)} of {count} devices registered")
            await _manage(http, model, devices)
            outcomes = await _update_fleet(http, data_dir, oem_key, [d["endpoint"] for d in devices], failing)
        table = Table(title=f"firmware of every device after the update ({time.perf_counter() - t0:.1f} s in all)")
        for column in ("device", "method", "version", "state", "update result", "seconds"):
            table.add_column(column, no_wrap=True)
        unexpected = []
        for ep in sorted(outcomes, key=lambda e: int(e.rsplit("-", 1)[1])):
            job = outcomes[ep]
            last = job["last"]
            result = last.get("result")
            known = UpdateResult.known(result)
            label = known.name.lower() if known is not None else "?"
            expected = UpdateResult.UPDATE_FAILED if ep == failing else UpdateResult.SUCCESS
            style = "green" if result == expected else "red"
            if result != expected:
                unexpected.append(ep)
            table.add_row(ep, job["method"] or "-", last.get("version") or "?",
                          STATES.get(last.get("state"), str(last.get("state"))),
                          f"[{style}]{result} {label}[/]", f"{job['finished_at'] - job['started_at']:.2f}")
        console.print(table)
        console.print(f"   {failing}'s image failed its health check: it rolled back by itself and still runs "
                      "1.0.0 (Update Result 8), as it should", highlight=False)
        if unexpected:
            raise DemoError(f"unexpected results on {', '.join(unexpected)}")
    finally:
        await fleet.stop()
        await server.stop()


async def _manage(http: httpx.AsyncClient, model: ObjectModel, devices: list[dict[str, Any]]) -> None:
    """Device management through the REST API: reads in every format, a write, an observation."""
    ep = "sim-0"
    reads = {f: await _call(http, "GET", f"/api/devices/{ep}/read", params={"path": "/3/0", "format": f})
             for f in FORMATS}
    stable = {f: [r for r in a["content"]["resources"] if r["id"] not in (9, 10, 13)] for f, a in reads.items()}
    same = all(v == stable[FORMATS[0]] for v in stable.values())
    console.print(f"[bold]3.[/bold] Read /3/0 of {ep} in {', '.join(FORMATS)}: the formats agree: "
                  f"[{'green' if same else 'red'}]{same}[/]")
    if not same:
        console.print(node_table(reads["senml-cbor"]["content"], "/3/0", model, title=f"/3/0 of {ep}"))
        raise DemoError("the content formats disagree")
    for d in devices:
        await _call(http, "POST", f"/api/devices/{d['endpoint']}/write", json={"path": "/3/0/14", "value": "+01:00"})
    console.print(f"[bold]4.[/bold] Wrote the UTC offset /3/0/14 on all {len(devices)} devices")
    await _call(http, "POST", f"/api/devices/{ep}/attributes", json={"path": "/3/0/9", "attributes": {"pmax": 1}})
    lines = []
    async with http.stream("GET", f"/api/devices/{ep}/observe",
                           params={"path": "/3/0/9", "count": 1, "timeout": 10}) as r:
        async for line in r.aiter_lines():
            if line.strip():
                lines.append(line)
    console.print(f"[bold]5.[/bold] Observed the battery level /3/0/9 of {ep}: {len(lines) - 1} notification(s)")


async def _update_fleet(http: httpx.AsyncClient, data_dir: Path, oem_key: PrivateKey, endpoints: list[str],
                        failing: str) -> dict[str, dict[str, Any]]:
    """Sign an image and update every device, half by push and half by pull, all at once."""
    image = os.urandom(IMAGE_SIZE)
    manifest = ReleaseManifest(sequence_number=2, vendor_id=VENDOR, class_id=CLASS,
                               image_digest=hashlib.sha256(image).digest(), image_size=len(image), version="2.0.0")
    envelope = build_envelope(manifest, [oem_key], image=image)
    (data_dir / "firmware-2.0.0.suit").write_bytes(envelope)
    console.print(f"[bold]6.[/bold] Signed a {len(image) // 1024} KiB image into a SUIT envelope of {len(envelope)} "
                  f"bytes (ES256, sequence 2, version 2.0.0); {failing} will fail its health check", highlight=False)
    total = len(envelope) * len(endpoints)
    with Progress(TextColumn("[bold]7.[/bold] {task.description}"), BarColumn(), DownloadColumn(),
                  TextColumn("{task.fields[done]} finished"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"updating {len(endpoints)} devices (push and pull)", total=total, done=0)
        for i, ep in enumerate(endpoints):
            await _call(http, "POST", f"/api/devices/{ep}/firmware", content=envelope,
                        params={"method": "push" if i % 2 == 0 else "pull", "timeout": 60},
                        headers={"Content-Type": "application/octet-stream"})
        pending = set(endpoints)
        outcomes: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 90
        while pending:
            if time.monotonic() > deadline:
                raise DemoError(f"updates did not finish: {', '.join(sorted(pending))}")
            sent = 0
            for ep in endpoints:
                job = outcomes.get(ep) or await _call(http, "GET", f"/api/devices/{ep}/firmware")
                sent += (job["last"] or {}).get("sent", 0) if not job["done"] else len(envelope)
                if job["done"] and ep in pending:
                    pending.discard(ep)
                    outcomes[ep] = job
            progress.update(task, completed=sent, done=len(outcomes))
            await asyncio.sleep(0.1)
    return outcomes


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

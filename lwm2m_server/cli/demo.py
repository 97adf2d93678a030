"""``scratch demo``: the README's main job. A server and a fleet of simulated devices on loopback, managed end
to end through the REST API the CLI uses: register, read in every content format, write, observe, execute."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lwm2m_server.cli.render import devices_table, node_table
from lwm2m_server.core.model import ObjectModel

console = Console()

FORMATS = ("tlv", "senml-json", "senml-cbor", "lwm2m-cbor")


class DemoError(Exception):
    pass


async def _call(http: httpx.AsyncClient, method: str, url: str, **kw: Any) -> Any:
    r = await http.request(method, url, **kw)
    if r.status_code >= 400:
        raise DemoError(f"{method} {url}: {r.json().get('error', r.text)}")
    return r.json()


async def run_demo(count: int, data_dir: Path) -> None:
    from client_sim.fleet import Fleet
    from lwm2m_server.server import Lwm2mServer, ServerSettings

    model = ObjectModel.default()
    t0 = time.perf_counter()
    server = Lwm2mServer(ServerSettings(data_dir=data_dir, coap_port=0, api_port=0, lifetime_grace=5.0))
    await server.start()
    console.print(f"[bold]1.[/bold] LwM2M server on {server.coap_uri}, REST API on {server.api_url}, "
                  f"SQLite in {data_dir}", highlight=False)
    fleet = Fleet(server.coap_uri, count, prefix="sim-", lifetime=60)
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

            ep = "sim-0"
            console.print(f"[bold]3.[/bold] Read /3/0 of {ep} in {', '.join(FORMATS)}: every format decodes to "
                          "the same device object")
            reads = {f: await _call(http, "GET", f"/api/devices/{ep}/read", params={"path": "/3/0", "format": f})
                     for f in FORMATS}
            stable = {f: [r for r in a["content"]["resources"] if r["id"] not in (9, 10, 13)] for f, a in reads.items()}
            same = all(v == stable[FORMATS[0]] for v in stable.values())
            console.print(node_table(reads["senml-cbor"]["content"], "/3/0", model, title=f"/3/0 of {ep}"))
            console.print(f"   formats agree: [{'green' if same else 'red'}]{same}[/]")
            if not same:
                raise DemoError("the content formats disagree")

            console.print("[bold]4.[/bold] Write the UTC offset /3/0/14 and the lifetime /1/0/1 on every device")
            for d in devices:
                await _call(http, "POST", f"/api/devices/{d['endpoint']}/write",
                            json={"path": "/3/0/14", "value": "+01:00"})
                await _call(http, "POST", f"/api/devices/{d['endpoint']}/write", json={"path": "/1/0/1", "value": 120})
            check = await _call(http, "GET", f"/api/devices/sim-{count - 1}/read", params={"path": "/3/0/14"})
            console.print(f"   sim-{count - 1} /3/0/14 now reads {check['content']['value']!r}")

            console.print(f"[bold]5.[/bold] Observe the battery level /3/0/9 of {ep} (pmin=0, pmax=1): "
                          "the first value and two notifications")
            await _call(http, "POST", f"/api/devices/{ep}/attributes",
                        json={"path": "/3/0/9", "attributes": {"pmin": 0, "pmax": 1}})
            async with http.stream("GET", f"/api/devices/{ep}/observe",
                                   params={"path": "/3/0/9", "count": 2, "timeout": 10}) as r:
                async for line in r.aiter_lines():
                    if line.strip():
                        console.print(f"   {line}", highlight=False, markup=False)

            console.print("[bold]6.[/bold] Execute Reboot /3/0/4 on sim-1: it answers, restarts and registers again")
            before = next(d for d in devices if d["endpoint"] == "sim-1")["registration_id"]
            await _call(http, "POST", "/api/devices/sim-1/execute", json={"path": "/3/0/4"})
            deadline = time.monotonic() + 15
            while True:
                reg = await _call(http, "GET", "/api/devices/sim-1")
                if reg["registration_id"] != before:
                    break
                if time.monotonic() > deadline:
                    raise DemoError("sim-1 did not register again after its reboot")
                await asyncio.sleep(0.1)
            console.print(f"   sim-1 registered again as {reg['registration_id']} (was {before})")

            disc = await _call(http, "GET", f"/api/devices/{ep}/discover", params={"path": "/3/0"})
            console.print(f"[bold]7.[/bold] Discover /3/0 of {ep}: {len(disc['links'])} links, e.g. "
                          f"{', '.join(link['text'] for link in disc['links'][:4])}", highlight=False)
        summary = Table(title="demo summary")
        summary.add_column("what")
        summary.add_column("result")
        summary.add_row("devices registered", str(count))
        summary.add_row("content formats read", ", ".join(FORMATS))
        summary.add_row("wall time", f"{time.perf_counter() - t0:.1f} s")
        console.print(summary)
    finally:
        await fleet.stop()
        await server.stop()


def demo(
    count: Annotated[int, typer.Option("--count", min=2, max=2000, help="Number of simulated devices")] = 10,
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

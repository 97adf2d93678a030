"""``scratch sim``: run a fleet of simulated devices against a server until Ctrl-C or SIGTERM.

The lead mounts :func:`sim` as a typer command; it stays a plain function callable from Python too.
Output is one summary line per change of the fleet's counts (coalesced), plus one line per device for fleets
of at most ``PER_DEVICE_LINES`` devices. Every started device is de-registered on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated

import typer

from client_sim.device import DeviceState, SimulatedDevice
from client_sim.fleet import Fleet, FleetStatus
from lwm2m_server.core.registration import SUPPORTED_VERSIONS

PER_DEVICE_LINES = 10
SUMMARY_INTERVAL = 0.5


def sim(
    server: Annotated[str, typer.Option("--server", help="LwM2M server URI, e.g. coap://127.0.0.1:5683")],
    count: Annotated[int, typer.Option("--count", min=1, help="How many devices to simulate")],
    prefix: Annotated[str, typer.Option("--prefix", help="Endpoint name prefix: PREFIX0 .. PREFIX(N-1)")] = "sim-",
    lifetime: Annotated[int, typer.Option("--lifetime", min=1, help="Registration lifetime in seconds")] = 300,
    lwm2m_version: Annotated[
        str, typer.Option("--lwm2m-version", help="LwM2M version the devices speak: 1.0, 1.1 or 1.2")
    ] = "1.1",
    bind: Annotated[str, typer.Option("--bind", help="Local address the devices' UDP sockets bind to")] = "127.0.0.1",
) -> None:
    """Simulate COUNT LwM2M devices registering to SERVER until interrupted; de-register them on exit."""
    if lwm2m_version not in SUPPORTED_VERSIONS:
        raise typer.BadParameter(f"must be one of {', '.join(SUPPORTED_VERSIONS)}", param_hint="--lwm2m-version")
    if not server.startswith("coap://"):
        raise typer.BadParameter("only coap:// servers are supported", param_hint="--server")
    asyncio.run(run_fleet(server, count, prefix=prefix, lifetime=lifetime, lwm2m_version=lwm2m_version, bind=bind))


async def run_fleet(server: str, count: int, *, prefix: str = "sim-", lifetime: int = 300,
                    lwm2m_version: str = "1.1", bind: str = "127.0.0.1") -> FleetStatus:
    """Run a fleet until SIGINT/SIGTERM, printing summaries; returns the final status after stopping."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    changed = asyncio.Event()
    per_device = count <= PER_DEVICE_LINES

    def on_device(device: SimulatedDevice, old: DeviceState, new: DeviceState) -> None:
        if per_device:
            where = f" at /{'/'.join(device.location)}" if device.location and new is DeviceState.REGISTERED else ""
            typer.echo(f"{device.endpoint}: {new.value}{where}")
        changed.set()

    fleet = Fleet(server, count, prefix=prefix, lifetime=lifetime, lwm2m_version=lwm2m_version, bind_host=bind,
                  on_device=on_device)
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    async def report() -> None:
        last = ""
        while True:
            await changed.wait()
            changed.clear()
            line = str(fleet.status)
            if line != last:
                typer.echo(line)
                last = line
            await asyncio.sleep(SUMMARY_INTERVAL)

    typer.echo(f"starting {count} device(s) {prefix}0..{prefix}{count - 1} against {server}")
    reporter = loop.create_task(report())
    starter = loop.create_task(fleet.start())
    try:
        await stop.wait()
    finally:
        typer.echo("stopping: de-registering the devices")
        starter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starter
        status = await fleet.stop()
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        for sig in installed:
            loop.remove_signal_handler(sig)
        typer.echo(f"stopped: {status}")
    return status

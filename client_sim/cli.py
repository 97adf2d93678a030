"""``scratch sim``: run a fleet of simulated devices until Ctrl-C or SIGTERM.

Two ways to make a fleet: ``--server coap://HOST:PORT --count N`` (N devices with a NoSec account on that server,
named PREFIX0..PREFIX(N-1)), or ``--credentials FILE`` (one device per record of a manufacturing file from
``scratch factory provision``, named as the record says; ``--count N`` takes the first N): each bootstraps with its
factory PSK, then registers over DTLS where the bootstrap server sends it. The two are exclusive: a device from
the factory learns its server from the bootstrap server only.

The lead mounts :func:`sim` as a typer command; it stays a plain function callable from Python too.
Output is one summary line per change of the fleet's counts (coalesced), plus one line per device for fleets
of at most ``PER_DEVICE_LINES`` devices. Every started device is de-registered on exit. No key is ever printed.

Every device checks packages against the ``--trust`` keys; without one it refuses to start, unless
``--insecure-accept-any`` (lab work only, warned on stderr) lets it install anything, unsigned included.

Faults (see :class:`client_sim.firmware.Faults`): ``--loss P --delay S --jitter S`` (the link, both ways),
``--fail-boot``, ``--corrupt-download``, ``--power-loss``, ``--offline-at BYTES [--offline-for S]``,
``--fail-boot-component NAME``; they apply to every device, or with ``--faulty N`` to the first N devices only
(e.g. ``--fail-boot --faulty 3``).

Components (see :mod:`client_sim.components`): ``--components app=1.0.0:65536,config=1.0.0:512:data`` gives every
device a system of those components (NAME=VERSION:SIZE[:image|data], content generated from name and version, the
same on every device), updated all or none by system envelopes and reported in Object 32700.

Gateways (see :mod:`client_sim.gateway`): ``--gateway --children K`` runs one LwM2M gateway named PREFIXgw (or
``--count N`` of them, PREFIXgw0..) with K end devices each (``<gateway>-c0``..) on simulated local links
(``--local-latency``, ``--local-loss``, ``--local-bandwidth``); ``--tamper-child ENDPOINT`` makes the gateway hand
that child tampered packages. The link faults then impair the gateways' uplinks, the firmware faults hit the
children (the first ``--faulty`` of each gateway). Summary lines carry the gateways' counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from client_sim.components import parse_components
from client_sim.credentials import CredentialsFileError, FactoryCredentials, load_factory_file
from client_sim.device import DeviceState, SimulatedDevice, StateListener
from client_sim.firmware import Faults, FirmwareOptions
from client_sim.fleet import Fleet, FleetStatus
from client_sim.gateway import Gateway, GatewayStats, LocalLinkConditions
from firmware_object.suit.keys import PublicKey, load_public_key
from lwm2m_server.core.registration import SUPPORTED_VERSIONS

PER_DEVICE_LINES = 10
SUMMARY_INTERVAL = 0.5


def sim(
    server: Annotated[str | None, typer.Option(
        "--server", help="LwM2M server URI, e.g. coap://127.0.0.1:5683 (not with --credentials)")] = None,
    count: Annotated[int | None, typer.Option(
        "--count", min=1, help="How many devices to simulate (with --credentials: the first N records)")] = None,
    credentials: Annotated[Path | None, typer.Option(
        "--credentials", help="Manufacturing file (CSV or JSON from `scratch factory provision`): one device per "
        "record, bootstrapping with its factory PSK before it registers")] = None,
    bootstrap_timeout: Annotated[float, typer.Option(
        "--bootstrap-timeout", min=1, help="Seconds a bootstrap may take before the device tries again")] = 30.0,
    prefix: Annotated[str, typer.Option("--prefix", help="Endpoint name prefix: PREFIX0 .. PREFIX(N-1)")] = "sim-",
    lifetime: Annotated[int, typer.Option("--lifetime", min=1, help="Registration lifetime in seconds")] = 300,
    lwm2m_version: Annotated[
        str, typer.Option("--lwm2m-version", help="LwM2M version the devices speak: 1.0, 1.1 or 1.2")
    ] = "1.1",
    bind: Annotated[str, typer.Option("--bind", help="Local address the devices' UDP sockets bind to")] = "127.0.0.1",
    trust: Annotated[list[Path] | None, typer.Option(
        "--trust", help="Public key (PEM) that must have signed every package; repeat for several signers. "
        "Required, unless --insecure-accept-any")] = None,
    insecure_accept_any: Annotated[bool, typer.Option(
        "--insecure-accept-any", help="LAB WORK ONLY: no --trust; the devices install any package, unsigned "
        "included")] = False,
    vendor: Annotated[str | None, typer.Option("--vendor", help="Vendor UUID packages must be made for")] = None,
    device_class: Annotated[str | None, typer.Option("--class", help="Class UUID packages must be made for")] = None,
    firmware_version: Annotated[str, typer.Option("--firmware-version", help="Version of the running image")] = "1.0.0",
    fail_boot: Annotated[bool, typer.Option(
        "--fail-boot", help="The next image a device installs fails its health check (and rolls back)")] = False,
    loss: Annotated[float, typer.Option(
        "--loss", min=0.0, max=1.0, help="Probability that a datagram is lost, each way (e.g. 0.1)")] = 0.0,
    delay: Annotated[float, typer.Option("--delay", min=0.0, help="Seconds every datagram is delayed")] = 0.0,
    jitter: Annotated[float, typer.Option("--jitter", min=0.0, help="+/- seconds added to the delay")] = 0.0,
    corrupt_download: Annotated[bool, typer.Option(
        "--corrupt-download", help="One byte of the next package a device receives is flipped (result 5)")] = False,
    power_loss: Annotated[bool, typer.Option(
        "--power-loss", help="A device loses power while installing the next update (result 8, old version)")
    ] = False,
    offline_at: Annotated[int | None, typer.Option(
        "--offline-at", min=1, help="A device goes offline once this many bytes of a package arrived")] = None,
    offline_for: Annotated[float, typer.Option(
        "--offline-for", min=0.0, help="Seconds a device stays offline (with --offline-at)")] = 2.0,
    components: Annotated[str | None, typer.Option(
        "--components", help="The devices run a system of these components: NAME=VERSION:SIZE[:image|data], "
        "comma-separated (e.g. app=1.0.0:65536,config=1.0.0:512:data)")] = None,
    fail_boot_component: Annotated[str | None, typer.Option(
        "--fail-boot-component", help="The next install of this component fails its health check: the whole "
        "system rolls back (with --components)")] = None,
    faulty: Annotated[int | None, typer.Option(
        "--faulty", min=0, help="Only the first N devices get the faults above (default: every device)")] = None,
    gateway: Annotated[bool, typer.Option(
        "--gateway", help="Run LwM2M gateways (PREFIXgw; --count N: PREFIXgw0..) with end devices behind them")
    ] = False,
    children: Annotated[int | None, typer.Option(
        "--children", min=0, help="End devices behind each gateway (with --gateway): <gateway>-c0 ..")] = None,
    local_latency: Annotated[float, typer.Option(
        "--local-latency", min=0.0, help="Seconds a message takes on a gateway's local link")] = 0.05,
    local_loss: Annotated[float, typer.Option(
        "--local-loss", min=0.0, max=1.0, help="Probability that a local-link frame is lost (it is sent again)")
    ] = 0.0,
    local_bandwidth: Annotated[float, typer.Option(
        "--local-bandwidth", min=1.0, help="Bytes per second of each end device's local link")] = 100_000.0,
    tamper_child: Annotated[list[str] | None, typer.Option(
        "--tamper-child", help="End device the gateway hands tampered packages to (repeatable)")] = None,
) -> None:
    """Simulate LwM2M devices until interrupted; de-register them on exit.

    Either COUNT devices registering to SERVER (--server, --count), or one device per record of a manufacturing
    file (--credentials): those bootstrap first, then register over DTLS with the key the bootstrap server gave.
    The devices have a Firmware Update object (/5) with two image slots; they check SUIT packages against the
    --trust keys (required; --insecure-accept-any, for lab work only, installs anything) and the --vendor/--class
    identifiers before installing. Fault options make them misbehave (each
    firmware fault fires once); --faulty N limits the faults to the first N devices.

    With --gateway --children K: gateways (one, or --count N) with K end devices each on a slow local link; the
    gateway downloads a package once and hands it to each child, which verifies it itself.
    """
    if lwm2m_version not in SUPPORTED_VERSIONS:
        raise typer.BadParameter(f"must be one of {', '.join(SUPPORTED_VERSIONS)}", param_hint="--lwm2m-version")
    records: list[FactoryCredentials] = []
    if children is not None and not gateway:
        raise typer.BadParameter("--children counts the end devices behind a gateway: add --gateway",
                                 param_hint="--children")
    if tamper_child and not gateway:
        raise typer.BadParameter("only a gateway tampers: add --gateway", param_hint="--tamper-child")
    if gateway:
        if credentials is not None:
            raise typer.BadParameter("gateways register with --server; --credentials is for direct devices",
                                     param_hint="--credentials")
        if children is None:
            raise typer.BadParameter("give --children K (the end devices behind each gateway)",
                                     param_hint="--children")
    if credentials is not None:
        if server is not None:
            raise typer.BadParameter("devices from a manufacturing file learn their server from the bootstrap "
                                     "server; leave --server out", param_hint="--server")
        try:
            records = load_factory_file(credentials)
        except CredentialsFileError as e:
            raise typer.BadParameter(str(e), param_hint="--credentials") from None
        if not records:
            raise typer.BadParameter(f"{credentials} holds no device", param_hint="--credentials")
    elif server is None or (count is None and not gateway):
        raise typer.BadParameter("give --server and --count, or --credentials", param_hint="--server")
    elif not server.startswith("coap://"):
        raise typer.BadParameter("only coap:// servers are supported (DTLS devices come from --credentials)",
                                 param_hint="--server")
    if not trust and not insecure_accept_any:
        raise typer.BadParameter("the devices need a trust anchor: give --trust PUBKEY (the key packages are "
                                 "signed with), or --insecure-accept-any for lab work", param_hint="--trust")
    if trust and insecure_accept_any:
        raise typer.BadParameter("--insecure-accept-any and --trust exclude each other", param_hint="--trust")
    try:
        system = parse_components(components) if components is not None else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--components") from None
    if fail_boot_component is not None and (system is None or fail_boot_component not in {c.name for c in system}):
        raise typer.BadParameter("name one of the --components", param_hint="--fail-boot-component")
    firmware = FirmwareOptions(
        trust_anchors=tuple(_public_key(path) for path in trust or ()), insecure_accept_any=insecure_accept_any,
        vendor_id=_uuid(vendor, "--vendor"), class_id=_uuid(device_class, "--class"),
        version=firmware_version, components=system)
    if insecure_accept_any:
        typer.echo("WARNING: --insecure-accept-any: these devices install ANY package, unsigned included. "
                   "Lab work only.", err=True)
    faults = Faults(loss=loss, delay=delay, jitter=jitter, offline_at=offline_at, offline_for=offline_for,
                    corrupt_download=corrupt_download, fail_boot=fail_boot, power_loss_during_install=power_loss,
                    fail_boot_component=fail_boot_component)
    if gateway:
        assert server is not None and children is not None
        local = LocalLinkConditions(latency=local_latency, loss=local_loss, bandwidth=local_bandwidth)
        asyncio.run(run_gateways(server, count or 1, children, prefix=prefix, lifetime=lifetime,
                                 lwm2m_version=lwm2m_version, bind=bind, firmware=firmware, local_link=local,
                                 tamper=tamper_child or (), faults=faults, faulty=faulty))
        return
    asyncio.run(run_fleet(server, count, credentials=records, prefix=prefix, lifetime=lifetime,
                          lwm2m_version=lwm2m_version, bind=bind, firmware=firmware,
                          bootstrap_timeout=bootstrap_timeout, faults=faults, faulty=faulty))


def _public_key(path: Path) -> PublicKey:
    try:
        return load_public_key(path.read_bytes())
    except OSError as e:
        raise typer.BadParameter(f"cannot read {path}: {e.strerror}", param_hint="--trust") from None
    except ValueError as e:
        raise typer.BadParameter(f"{path}: {e}", param_hint="--trust") from None


def _uuid(text: str | None, option: str) -> uuid.UUID | None:
    if text is None:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a UUID", param_hint=option) from None



def _state_printer(per_device: bool, changed: asyncio.Event) -> StateListener:
    """The state listener of the devices of one run: a line per change when they are few; it always sets
    ``changed`` (the summary line is printed from it)."""

    def on_device(device: SimulatedDevice, old: DeviceState, new: DeviceState) -> None:
        if per_device:
            where = f" at /{'/'.join(device.location)}" if device.location and new is DeviceState.REGISTERED else ""
            typer.echo(f"{device.endpoint}: {new.value}{where}")
        changed.set()

    return on_device

async def run_fleet(server: str | None, count: int | None, *, credentials: Sequence[FactoryCredentials] = (),
                    prefix: str = "sim-", lifetime: int = 300, lwm2m_version: str = "1.1", bind: str = "127.0.0.1",
                    firmware: FirmwareOptions, bootstrap_timeout: float = 30.0,
                    stop: asyncio.Event | None = None, faults: Faults | None = None,
                    faulty: int | None = None) -> FleetStatus:
    """Run a fleet until SIGINT/SIGTERM (or until ``stop`` is set), printing summaries; returns the final status
    after stopping. With ``credentials``, one device per record (the first ``count``) bootstraps first. Every
    device gets ``firmware`` (its trust anchors among them).
    ``faults`` go to the first ``faulty`` devices (None: to every device)."""
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    changed = asyncio.Event()
    records = list(credentials)[:count] if credentials else []
    total = len(records) if records else (count or 0)
    on_device = _state_printer(total <= PER_DEVICE_LINES, changed)

    def faults_for(index: int, endpoint: str) -> Faults | None:
        return faults if faults is not None and (faulty is None or index < faulty) else None

    fleet = Fleet(server, total, credentials=records, prefix=prefix, lifetime=lifetime,
                  lwm2m_version=lwm2m_version, bind_host=bind, on_device=on_device,
                  firmware=firmware, bootstrap_timeout=bootstrap_timeout, faults=faults_for)
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

    if records:
        names = f"{records[0].endpoint}..{records[-1].endpoint}" if total > 1 else records[0].endpoint
        bootstrap_uris = sorted({r.bootstrap_uri for r in records})
        typer.echo(f"starting {total} device(s) {names} from the factory, bootstrapping at "
                   f"{', '.join(bootstrap_uris[:3])}{' ...' if len(bootstrap_uris) > 3 else ''}")
    else:
        typer.echo(f"starting {total} device(s) {prefix}0..{prefix}{total - 1} against {server}")
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


async def run_gateways(server: str, count: int, children: int, *, prefix: str = "sim-", lifetime: int = 300,
                       lwm2m_version: str = "1.1", bind: str = "127.0.0.1", firmware: FirmwareOptions,
                       local_link: LocalLinkConditions | None = None, tamper: Sequence[str] = (),
                       faults: Faults | None = None, faulty: int | None = None,
                       stop: asyncio.Event | None = None) -> GatewayStats:
    """Run ``count`` gateways (PREFIXgw, or PREFIXgw0..) with ``children`` end devices each until SIGINT/SIGTERM
    (or until ``stop`` is set), printing summaries; returns the gateways' summed counters after stopping. The link
    part of ``faults`` impairs the gateways' uplinks, the firmware part goes to the first ``faulty`` children of
    each gateway (None: to every child)."""
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    changed = asyncio.Event()
    on_device = _state_printer(count * (children + 1) <= PER_DEVICE_LINES, changed)
    uplink = Faults(loss=faults.loss, delay=faults.delay, jitter=faults.jitter) if faults is not None else None
    child_faults = dataclasses.replace(faults, loss=0.0, delay=0.0, jitter=0.0) if faults is not None else None

    def faults_for(index: int, endpoint: str) -> Faults | None:
        return child_faults if child_faults is not None and (faulty is None or index < faulty) else None

    names = [f"{prefix}gw"] if count == 1 else [f"{prefix}gw{i}" for i in range(count)]
    gateways = [Gateway(name, server, children=children, firmware=firmware, lifetime=lifetime,
                        lwm2m_version=lwm2m_version, bind_host=bind, on_state=on_device, faults=uplink,
                        child_faults=faults_for, child_options={"on_state": on_device}, local_link=local_link,
                        tamper=tamper) for name in names]
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)

    def summary() -> tuple[tuple[object, ...], str]:
        stats = GatewayStats.total(gw.stats() for gw in gateways)
        registered = sum(gw.state is DeviceState.REGISTERED for gw in gateways)
        key = (registered, stats.children, stats.cache_hits, stats.cache_misses, stats.downloads,
               stats.digest_mismatches, stats.tampered)
        return key, f"{registered}/{count} gateway(s) registered; {stats}"

    async def report() -> None:
        last: tuple[object, ...] = ()
        while True:
            await changed.wait()
            changed.clear()
            key, line = summary()
            if key != last:
                typer.echo(line)
                last = key
            await asyncio.sleep(SUMMARY_INTERVAL)

    async def start() -> None:
        await asyncio.gather(*(gw.start(timeout=30) for gw in gateways))
        changed.set()

    shown = names[0] if count == 1 else f"{names[0]}..{names[-1]}"
    typer.echo(f"starting {count} gateway(s) {shown} with {children} end device(s) each against {server}")
    reporter = loop.create_task(report())
    starter = loop.create_task(start())
    try:
        await stop.wait()
    finally:
        typer.echo("stopping: de-registering the gateways")
        starter.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await starter
        for gw in gateways:
            with contextlib.suppress(Exception):
                await gw.stop()
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        for sig in installed:
            loop.remove_signal_handler(sig)
        total = GatewayStats.total(gw.stats() for gw in gateways)
        typer.echo(f"stopped: {total}")
    return total

"""Simulated devices whose firmware is a system of components (application, radio, configuration), updated all or
none by system envelopes and reporting each component in Object 32700, seen through a real server.

Real server and devices on 127.0.0.1, real SUIT system envelopes (full images and detools deltas); the server
pushes them as opaque packages. Object 32700 is read with Read requests, as an operator's server sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from client_sim.components import ComponentSystem, InstalledComponent, parse_components
from client_sim.device import DeviceState, SimulatedDevice
from client_sim.firmware import Faults, FirmwareOptions
from client_sim.fleet import Fleet
from client_sim.objects import ObjectTree
from firmware_object.delta import make_delta
from firmware_object.errors import State, UpdateResult
from firmware_object.suit.components import ComponentRelease, SystemRelease, build_system_envelope
from firmware_object.suit.keys import generate_private_key
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.model.firmware_component import FIRMWARE_COMPONENT_ID as C
from lwm2m_server.core.model.firmware_component import ComponentState
from lwm2m_server.core.nodes import Obj
from lwm2m_server.core.operations import ReadRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.fota.service import Method, UpdateJob
from lwm2m_server.server import Lwm2mServer
from tests.harness import running_server

VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
OEM = generate_private_key("es256")
OLD = (InstalledComponent.generated("app", "1.0.0", 6000), InstalledComponent.generated("radio", "1.0.0", 3000),
       InstalledComponent.generated("config", "1.0.0", 300, "data"))
APP_V2 = OLD[0].content[:2000] + b"new code" * 64 + OLD[0].content[2512:]  # a small change in the middle
NEW = {"app": APP_V2, "radio": InstalledComponent.generated("radio", "2.0.0", 3100).content,
       "config": b'{"interval": 60}' * 20}


def release(components: list[ComponentRelease], payloads: dict[str, bytes], *, seq: int = 2,
            version: str = "2.0.0") -> bytes:
    return build_system_envelope(SystemRelease(seq, VENDOR, CLASS, version, tuple(components)), payloads, [OEM])


def full_system() -> bytes:
    components = [ComponentRelease.full("app", NEW["app"], version="2.0.0"),
                  ComponentRelease.full("radio", NEW["radio"], version="2.0.0"),
                  ComponentRelease.full("config", NEW["config"], version="2.0.0", kind="data")]
    return release(components, NEW)


def app_delta(base: bytes) -> bytes:
    delta = make_delta(base, APP_V2)
    component = ComponentRelease.from_delta("app", APP_V2, delta, base, version="2.0.0", base_version="1.0.0")
    return release([component], {"app": delta}, version="1.1.0")


def options(**overrides: Any) -> FirmwareOptions:
    values: dict[str, Any] = {"trust_anchors": (OEM.public_key(),), "vendor_id": VENDOR, "class_id": CLASS,
                              "version": "1.0.0", "sequence_number": 1, "components": OLD}
    values.update(overrides)
    return FirmwareOptions(**values)


@contextlib.asynccontextmanager
async def started(srv: Lwm2mServer, endpoint: str, **firmware: Any) -> AsyncIterator[SimulatedDevice]:
    dev = SimulatedDevice(endpoint, srv.coap_uri, firmware=options(**firmware), drift_interval=0, reboot_delay=0.05)
    try:
        await dev.start(wait=False)
        await dev.wait_for(lambda d: d.state is DeviceState.REGISTERED, 20)
        yield dev
    finally:
        await dev.stop(timeout=2)


async def update(srv: Lwm2mServer, endpoint: str, data: bytes, method: Method = Method.PUSH) -> UpdateJob:
    assert srv.firmware is not None
    return await srv.firmware.update(endpoint, data, method=method, timeout=25, tenant_id="default")


async def read(srv: Lwm2mServer, endpoint: str, *ids: int) -> Any:
    assert srv.management is not None
    response = await srv.management.send(endpoint, ReadRequest(LwM2mPath.of(*ids)), tenant_id="default")
    return response.content


async def components_seen(srv: Lwm2mServer, endpoint: str) -> list[dict[int, Any]]:
    """Object 32700 as the server reads it: one {resource id: value} per instance, in instance order."""
    obj = await read(srv, endpoint, C)
    assert isinstance(obj, Obj)
    return [{rid: r.value for rid, r in inst.resources.items()}  # type: ignore[union-attr]
            for _, inst in sorted(obj.instances.items())]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# ---------------------------------------------------------------------------------------------- pure parts


def test_components_parse_generate_and_validate() -> None:
    parsed = parse_components("app=1.0.0:65536,radio=1.0.0:32768,config=1.0.0:512:data")
    assert [(c.name, c.kind, c.version, len(c.content)) for c in parsed] == [
        ("app", "image", "1.0.0", 65536), ("radio", "image", "1.0.0", 32768), ("config", "data", "1.0.0", 512)]
    assert parsed[0] == InstalledComponent.generated("app", "1.0.0", 65536)  # deterministic
    assert parsed[0].content != InstalledComponent.generated("app", "1.0.1", 65536).content
    for bad in ("app", "app=1.0.0", "app=1.0.0:x", "app=1.0.0:1:exe", "App=1:1", "a=1:1,a=2:1", ""):
        with pytest.raises(ValueError):
            parse_components(bad)
    with pytest.raises(ValueError):
        options(components=())


def test_a_device_without_components_has_no_object_32700() -> None:
    plain = SimulatedDevice("plain", "coap://127.0.0.1:1", firmware=options(components=None))
    assert C not in plain.objects.object_ids
    assert not any(str(link.target).startswith(f"/{C}") for link in plain.objects.registration_links())
    system = SimulatedDevice("system", "coap://127.0.0.1:1", firmware=options())
    assert [str(link.target) for link in system.objects.registration_links()
            if str(link.target).startswith(f"/{C}")] == [f"/{C}/0", f"/{C}/1", f"/{C}/2"]


def test_sync_instances_reports_new_instances_and_changed_values_only() -> None:
    tree = ObjectTree(ObjectModel.default())
    seen: list[str] = []
    tree.subscribe(lambda change: seen.append(f"{change.kind.value} {change.path}"))
    rows = ComponentSystem(OLD).rows()
    tree.sync_instances(C, rows)
    assert seen == [f"structure /{C}/0", f"structure /{C}/1", f"structure /{C}/2"]
    seen.clear()
    tree.sync_instances(C, rows)
    assert seen == []
    tree.sync_instances(C, [rows[0], {**rows[1], 5: ComponentState.FAILED}, rows[2]])
    assert seen == [f"value /{C}/1/5"]


# ---------------------------------------------------------------------------------------------- with a server


async def test_a_three_component_system_updates_all_and_reports_each_component(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, started(srv, "sys-ok") as dev:
        before = await components_seen(srv, "sys-ok")
        assert [(c[0], c[1], c[2], c[3], c[4], c[5]) for c in before] == [
            (c.name, c.kind, c.version, c.digest, len(c.content), ComponentState.INSTALLED) for c in OLD]
        job = await update(srv, "sys-ok", full_system())
        assert job.succeeded, job.last
        assert job.last.result == UpdateResult.SUCCESS and job.last.version == "2.0.0"
        after = await components_seen(srv, "sys-ok")
        assert [(c[0], c[2], c[3], c[4], c[5], c[6], c[7]) for c in after] == [
            (name, "2.0.0", sha(NEW[name]), len(NEW[name]), ComponentState.INSTALLED, UpdateResult.SUCCESS, "")
            for name in ("app", "radio", "config")]
        assert (await read(srv, "sys-ok", 3, 0, 3)).value == "2.0.0"
        assert (await read(srv, "sys-ok", 5, 0, 7)).value == "2.0.0"
        assert dev.firmware is not None and dev.firmware.components is not None
        assert dev.firmware.components.staged is None and dev.firmware.sequence_number == 2


async def test_a_radio_that_fails_its_health_check_rolls_back_all_three(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, started(srv, "sys-radio", fail_boot_component="radio") as dev:
        job = await update(srv, "sys-radio", full_system())
        assert not job.succeeded
        assert (job.last.result, job.last.state, job.last.version) == (UpdateResult.UPDATE_FAILED, State.IDLE, "1.0.0")
        seen = await components_seen(srv, "sys-radio")
        assert [(c[0], c[2], c[3], c[5], c[6], c[7]) for c in seen] == [
            ("app", "1.0.0", OLD[0].digest, ComponentState.ROLLED_BACK, UpdateResult.UPDATE_FAILED, ""),
            ("radio", "1.0.0", OLD[1].digest, ComponentState.FAILED, UpdateResult.UPDATE_FAILED, ""),
            ("config", "1.0.0", OLD[2].digest, ComponentState.ROLLED_BACK, UpdateResult.UPDATE_FAILED, "")]
        assert (await read(srv, "sys-radio", 3, 0, 3)).value == "1.0.0"
        assert dev.firmware is not None and dev.firmware.rollbacks == 1 and dev.counters.registers == 2
        # the fault fired once: the same release goes through the second time
        second = await update(srv, "sys-radio", full_system())
        assert second.succeeded, second.last
        assert [c[5] for c in await components_seen(srv, "sys-radio")] == [ComponentState.INSTALLED] * 3


async def test_a_delta_from_the_installed_app_updates_only_the_app(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, started(srv, "sys-delta") as dev:
        data = app_delta(OLD[0].content)
        assert len(data) < len(APP_V2) // 2
        job = await update(srv, "sys-delta", data, Method.PULL)
        assert job.succeeded, job.last
        seen = await components_seen(srv, "sys-delta")
        assert [(c[0], c[2], c[3]) for c in seen] == [
            ("app", "2.0.0", sha(APP_V2)), ("radio", "1.0.0", OLD[1].digest), ("config", "1.0.0", OLD[2].digest)]
        assert (await read(srv, "sys-delta", 3, 0, 3)).value == "1.1.0"
        assert dev.firmware is not None and dev.firmware.components is not None
        assert dev.firmware.components.active[0].content == APP_V2


async def test_a_delta_from_another_base_is_refused_with_result_6(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, started(srv, "sys-base") as dev:
        job = await update(srv, "sys-base", app_delta(InstalledComponent.generated("app", "0.9.0", 6000).content))
        assert not job.succeeded
        assert job.last.result == UpdateResult.UNSUPPORTED_PACKAGE_TYPE, job.last
        fw = dev.firmware
        assert fw is not None and fw.components is not None
        assert fw.components.staged is None and fw.components.active == OLD
        assert fw.slots[1 - fw.active].version == "" and fw.version == "1.0.0" and dev.counters.reboots == 0
        seen = await components_seen(srv, "sys-base")
        assert [(c[0], c[2], c[5], c[6]) for c in seen] == [
            ("app", "1.0.0", ComponentState.FAILED, UpdateResult.UNSUPPORTED_PACKAGE_TYPE),
            ("radio", "1.0.0", ComponentState.INSTALLED, UpdateResult.INITIAL),
            ("config", "1.0.0", ComponentState.INSTALLED, UpdateResult.INITIAL)]


async def test_a_tampered_payload_is_refused_with_result_5(tmp_path: Path) -> None:
    data = full_system()
    at = data.index(NEW["radio"][:64]) + 100
    tampered = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
    async with running_server(tmp_path) as srv, started(srv, "sys-tamper") as dev:
        job = await update(srv, "sys-tamper", tampered)
        assert not job.succeeded and job.last.result == UpdateResult.INTEGRITY_CHECK_FAILURE, job.last
        assert dev.firmware is not None and dev.firmware.components is not None
        assert dev.firmware.components.staged is None and dev.firmware.components.active == OLD
        assert dev.counters.reboots == 0


async def test_the_existing_faults_hit_system_packages_too(tmp_path: Path) -> None:
    """corrupt_download (result 5, then the retry succeeds) and power loss while installing (result 8, every
    component rolled back, old versions)."""
    async with running_server(tmp_path) as srv:
        async with started(srv, "sys-corrupt", corrupt_download=True) as dev:
            first = await update(srv, "sys-corrupt", full_system())
            assert not first.succeeded and first.last.result == UpdateResult.INTEGRITY_CHECK_FAILURE, first.last
            second = await update(srv, "sys-corrupt", full_system())
            assert second.succeeded, second.last
        async with started(srv, "sys-power", power_loss_during_install=True) as dev:
            job = await update(srv, "sys-power", full_system(), Method.PULL)
            assert not job.succeeded and job.last.result == UpdateResult.UPDATE_FAILED, job.last
            fw = dev.firmware
            assert fw is not None and fw.components is not None and fw.interrupted_installs == 1
            assert fw.components.active == OLD and fw.version == "1.0.0"
            assert [s.state for s in fw.components.status.values()] == [ComponentState.ROLLED_BACK] * 3


async def test_a_fleet_with_components_and_one_failing_radio(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        fleet = Fleet(srv.coap_uri, 3, prefix="sysfl-", firmware=options(), drift_interval=0, reboot_delay=0.05,
                      faults=lambda i, ep: Faults(fail_boot_component="radio") if i == 0 else None)
        try:
            status = await asyncio.wait_for(fleet.start(timeout_per_device=10), 20)
            assert status.registered == 3
            jobs = await asyncio.gather(*(update(srv, f"sysfl-{i}", full_system()) for i in range(3)))
            assert [j.succeeded for j in jobs] == [False, True, True], [j.last for j in jobs]
            versions = [[c[2] for c in await components_seen(srv, f"sysfl-{i}")] for i in range(3)]
            assert versions == [["1.0.0"] * 3, ["2.0.0"] * 3, ["2.0.0"] * 3]
        finally:
            await fleet.stop(timeout=2)


def test_the_command_line_checks_its_component_options() -> None:
    import typer

    from client_sim.cli import sim

    common: dict[str, Any] = {"server": "coap://127.0.0.1:1", "count": 1, "insecure_accept_any": True}
    with pytest.raises(typer.BadParameter, match="NAME=VERSION:SIZE"):
        sim(**common, components="app=1.0.0")
    with pytest.raises(typer.BadParameter, match="one of the --components"):
        sim(**common, components="app=1.0.0:64", fail_boot_component="radio")
    with pytest.raises(typer.BadParameter, match="one of the --components"):
        sim(**common, fail_boot_component="radio")

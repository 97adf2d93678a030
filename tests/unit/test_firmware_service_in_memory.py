"""The firmware service over DeviceManagement over the in-memory downlink (tests/downlink_simulator.py).

Real SUIT envelopes signed with fresh keys, real simulated devices (Object 5 state machine, two slots, SUIT checks),
the real block-wise push driver and file server: only the sockets are gone, so each update takes milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from client_sim.firmware import FirmwareOptions
from firmware_object.errors import State, UpdateResult
from firmware_object.suit.envelope import build_envelope
from firmware_object.suit.keys import PrivateKey, generate_private_key
from firmware_object.suit.manifest import ReleaseManifest
from lwm2m_server.core.operations import ReadRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.events import Event
from lwm2m_server.fota.service import (
    FIRMWARE_DELIVERED,
    FIRMWARE_FINISHED,
    FIRMWARE_STARTED,
    FirmwareService,
    Method,
    UpdateJob,
)
from lwm2m_server.management import DeviceManagement
from tests.downlink_simulator import SimulatedFleet

VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
OEM = generate_private_key("es256")
STRANGER = generate_private_key("es256")
TENANT = "default"
FILES = "coap://files.invalid"


def package(image: bytes, *, seq: int = 2, version: str = "2.0.0", signers: Sequence[PrivateKey] = (OEM,)) -> bytes:
    manifest = ReleaseManifest(sequence_number=seq, vendor_id=VENDOR, class_id=CLASS,
                               image_digest=hashlib.sha256(image).digest(), image_size=len(image), version=version)
    return build_envelope(manifest, list(signers), image=image)


def options(**overrides: Any) -> FirmwareOptions:
    values: dict[str, Any] = {"trust_anchors": (OEM.public_key(),), "vendor_id": VENDOR, "class_id": CLASS,
                              "version": "1.0.0", "sequence_number": 1}
    values.update(overrides)
    return FirmwareOptions(**values)


class World:
    """A fleet, its management and a firmware service, and every firmware event they emitted."""

    def __init__(self, count: int, observable: bool, firmware: dict[str, Any]) -> None:
        self.fleet = SimulatedFleet(count, observable=observable,
                                    options=lambda _i, _ep: {"firmware": options(**firmware)})
        self.management = DeviceManagement(self.fleet.registrations, self.fleet.downlink, clock=time.time)
        self.service = FirmwareService(self.management, self.fleet.files, self.fleet.events, file_base_uri=FILES,
                                       poll_interval=0.01)
        self.events: list[Event] = []
        self.fleet.events.subscribe(self.events.append, "firmware")

    def kinds(self, endpoint: str) -> list[str]:
        return [e.kind for e in self.events if e.endpoint == endpoint]

    async def update(self, endpoint: str, data: bytes, **kw: Any) -> UpdateJob:
        kw.setdefault("timeout", 10.0)
        return await self.service.update(endpoint, data, tenant_id=TENANT, **kw)


@contextlib.asynccontextmanager
async def world(count: int = 1, *, observable: bool = True, **firmware: Any) -> AsyncIterator[World]:
    w = World(count, observable, firmware)
    try:
        yield w
    finally:
        await w.service.close()
        await w.fleet.close()


@pytest.mark.parametrize("observable", [True, False], ids=["observe", "poll"])
@pytest.mark.parametrize("method", [Method.PUSH, Method.PULL])
async def test_update_installs_the_new_version(method: Method, observable: bool) -> None:
    image = os.urandom(20_000)
    data = package(image)
    async with world(observable=observable) as w:
        dev = w.fleet["dev-0"]
        job = await w.update("dev-0", data, method=method)
        assert job.succeeded, job.last
        assert (job.method, job.previous_version, job.last.version) == (method.value, "1.0.0", "2.0.0")
        fw = dev.firmware
        assert fw is not None
        assert fw.last_package == data and fw.slots[fw.active].image == image
        assert (fw.version, fw.sequence_number, fw.machine.state, fw.machine.result) == (
            "2.0.0", 2, State.IDLE, UpdateResult.SUCCESS)
        assert dev.counters.reboots == 1
        version = await w.management.send("dev-0", ReadRequest(LwM2mPath.of(3, 0, 3)), tenant_id=TENANT)
        assert version.content.value == "2.0.0"  # type: ignore[union-attr]
        assert w.kinds("dev-0") == [FIRMWARE_STARTED, FIRMWARE_DELIVERED, FIRMWARE_FINISHED]
        assert w.events[-1].data["success"] is True and w.events[-1].data["version"] == "2.0.0"
        phases = [s.phase for s in job.history]
        for phase in ("preparing", "delivering", "downloaded", "updating", "rebooted", "succeeded"):
            assert phase in phases
        assert w.fleet.files.published == 0  # a pull's publication is withdrawn when the update ends
        if method is Method.PULL:
            assert fw.fetched_bytes == len(data) and fw.push_blocks == 0
        else:
            assert fw.fetched_bytes == 0 and fw.push_blocks == -(-len(data) // 1024)
        observations = w.fleet.downlink.observations  # /5/0/3 and /5/0/5, ended by the reboot
        assert len(observations) == (2 if observable else 0) and not any(o.active for o in observations)


async def test_push_follows_the_device_block_size() -> None:
    data = package(os.urandom(5000))
    async with world(max_block_size=128) as w:
        job = await w.update("dev-0", data, method=Method.PUSH, block_size=1024)
        assert job.succeeded, job.last
        assert job.last.blocks == -(-len(data) // 128)  # the refused 1024-byte block is not counted


@pytest.mark.parametrize("method", [Method.PUSH, Method.PULL])
async def test_package_signed_by_an_untrusted_key_is_refused(method: Method) -> None:
    data = package(os.urandom(4000), signers=(STRANGER,))
    async with world() as w:
        dev = w.fleet["dev-0"]
        job = await w.update("dev-0", data, method=method)
        assert not job.succeeded
        assert job.last.result == UpdateResult.INTEGRITY_CHECK_FAILURE, job.last
        assert UpdateResult.INTEGRITY_CHECK_FAILURE.label in job.last.message
        fw = dev.firmware
        assert fw is not None
        assert (fw.machine.state, fw.machine.result, fw.version) == (
            State.IDLE, UpdateResult.INTEGRITY_CHECK_FAILURE, "1.0.0")
        assert fw.slots[1 - fw.active].image == b""  # nothing was installed, or kept to be installed
        assert dev.counters.reboots == 0
        assert w.kinds("dev-0") == [FIRMWARE_STARTED, FIRMWARE_FINISHED]
        assert w.events[-1].data["success"] is False


async def test_failed_health_check_ends_failed_with_result_8_and_the_old_version() -> None:
    async with world(fail_boot=True) as w:
        dev = w.fleet["dev-0"]
        job = await w.update("dev-0", package(os.urandom(5000)))
        assert not job.succeeded
        assert (job.last.phase, job.last.result, job.last.version) == ("failed", UpdateResult.UPDATE_FAILED, "1.0.0")
        assert "firmware update failed" in job.last.message
        fw = dev.firmware
        assert fw is not None
        assert (fw.version, fw.sequence_number, fw.rollbacks, fw.machine.state) == ("1.0.0", 1, 1, State.IDLE)
        assert dev.counters.reboots == 1
        assert w.kinds("dev-0") == [FIRMWARE_STARTED, FIRMWARE_DELIVERED, FIRMWARE_FINISHED]


@pytest.mark.parametrize("method", [Method.PUSH, Method.PULL])
async def test_device_too_small_refuses_at_the_first_block(method: Method) -> None:
    data = package(os.urandom(20_000))
    async with world(flash_size=8192) as w:
        job = await w.update("dev-0", data, method=method)
        assert not job.succeeded
        assert job.last.result == UpdateResult.NOT_ENOUGH_FLASH, job.last
        fw = w.fleet["dev-0"].firmware
        assert fw is not None and fw.machine.result == UpdateResult.NOT_ENOUGH_FLASH
        assert (fw.push_blocks, fw.fetched_bytes) == ((1, 0) if method is Method.PUSH else (0, 0))
        assert fw.slots[1 - fw.active].image == b"" and fw.version == "1.0.0"
        if method is Method.PUSH:
            assert "4.13" in job.last.message and "at most 8192 bytes" in job.last.message, job.last
            blocks = [m for ep, m in w.fleet.downlink.requests if m.opt.uri_path == ("5", "0", "0")
                      and m.opt.block1 is not None]
            assert len(blocks) == 1 and blocks[0].opt.size1 == len(data)


async def test_two_devices_at_once() -> None:
    async with world(2) as w:
        first = w.service.start("dev-0", package(os.urandom(30_000)), method=Method.PUSH, tenant_id=TENANT)
        second = w.service.start("dev-1", package(os.urandom(30_000), version="2.1.0"), method=Method.PULL,
                                 tenant_id=TENANT)
        await asyncio.wait_for(asyncio.gather(first.done.wait(), second.done.wait()), 10)
        assert first.succeeded and second.succeeded, (first.last, second.last)
        versions = {ep: w.fleet[ep].firmware.version for ep in ("dev-0", "dev-1")}  # type: ignore[union-attr]
        assert versions == {"dev-0": "2.0.0", "dev-1": "2.1.0"}
        assert {e.endpoint for e in w.events if e.kind == FIRMWARE_FINISHED} == {"dev-0", "dev-1"}


async def test_abort_ends_the_job_and_a_new_update_then_succeeds() -> None:
    data = package(os.urandom(20_000))
    async with world() as w:
        dev = w.fleet["dev-0"]
        fw = dev.firmware
        assert fw is not None
        job = w.service.start("dev-0", data, method=Method.PUSH, tenant_id=TENANT, timeout=10.0)
        while not (job.history and job.last.phase == "delivering" and job.last.sent > 0):
            await asyncio.wait_for(job.changed().wait(), 5)
        w.fleet.downlink.hold("dev-0")  # the device stops answering half-way through the push
        assert w.service.abort("dev-0", tenant_id=TENANT)
        await asyncio.wait_for(job.done.wait(), 5)
        assert not job.succeeded and (job.last.phase, job.error, job.aborted) == ("failed", "timeout", True)
        assert not w.service.abort("dev-0", tenant_id=TENANT)
        assert (fw.machine.state, fw.version) == (State.DOWNLOADING, "1.0.0")  # half a package, nothing installed
        assert w.events[-1].kind == FIRMWARE_FINISHED and w.events[-1].data["success"] is False
        w.fleet.downlink.release("dev-0")
        again = await w.update("dev-0", data, method=Method.PUSH)  # resets the half-finished download first
        assert again.succeeded, again.last
        assert "resetting an earlier download" in [s.message for s in again.history]
        assert fw.version == "2.0.0"


async def test_a_device_that_stops_answering_times_out() -> None:
    async with world() as w:
        w.fleet.downlink.timeout = 0.05
        w.fleet.downlink.hold("dev-0")
        job = await w.update("dev-0", package(os.urandom(2000)))
        assert not job.succeeded and job.error == "timeout", job.last
        assert w.fleet["dev-0"].firmware.version == "1.0.0"  # type: ignore[union-attr]


@pytest.mark.parametrize("method", [Method.PUSH, Method.PULL])
async def test_an_interrupted_transfer_is_delivered_again(method: Method) -> None:
    data = package(os.urandom(20_000))
    async with world(lose_connection_at=5000) as w:
        job = await w.update("dev-0", data, method=method)
        assert job.succeeded, job.last
        assert w.fleet["dev-0"].firmware.last_package == data  # type: ignore[union-attr]
        if method is Method.PULL:  # result 4, then a second delivery; a push starts over after the 4.08
            assert any("connection lost" in s.message for s in job.history), [s.message for s in job.history]


async def test_a_device_offline_mid_pull_registers_again_and_gets_the_package() -> None:
    async with world(offline_at=5000, offline_for=0.02) as w:
        dev = w.fleet["dev-0"]
        job = await w.update("dev-0", package(os.urandom(20_000)), method=Method.PULL)
        assert job.succeeded, job.last
        assert dev.counters.outages == 1 and dev.counters.reboots == 1
        assert any("connection lost" in s.message for s in job.history), [s.message for s in job.history]


async def test_power_lost_while_installing_keeps_the_old_version() -> None:
    async with world(power_loss_during_install=True) as w:
        fw = w.fleet["dev-0"].firmware
        assert fw is not None
        job = await w.update("dev-0", package(os.urandom(5000)))
        assert not job.succeeded
        assert (job.last.result, job.last.version) == (UpdateResult.UPDATE_FAILED, "1.0.0"), job.last
        assert (fw.version, fw.interrupted_installs, fw.machine.state) == ("1.0.0", 1, State.IDLE)

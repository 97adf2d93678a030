"""Firmware updates end to end on loopback: the server's firmware service against simulated devices.

Real sockets, real SUIT envelopes signed with fresh keys, real block-wise transfers in both directions.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiocoap import Context, Message, resource
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from client_sim.device import SimulatedDevice
from client_sim.firmware import FirmwareOptions
from firmware_object.errors import State, UpdateResult
from firmware_object.suit.envelope import build_envelope
from firmware_object.suit.keys import PrivateKey, generate_private_key
from firmware_object.suit.manifest import ReleaseManifest
from lwm2m_server.coap.udp import bound_port
from lwm2m_server.core.nodes import ResourceType, SingleResource
from lwm2m_server.core.operations import ReadRequest, WriteRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.fota.service import Method, UpdateJob
from lwm2m_server.server import Lwm2mServer
from tests.harness import eventually, running_server

VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
OEM = generate_private_key("es256")
OPERATOR = generate_private_key("ed25519")
PACKAGE_URI = LwM2mPath.of(5, 0, 1)


def package(image: bytes, *, seq: int = 2, version: str = "2.0.0", signers: Sequence[PrivateKey] = (OEM,),
            class_id: uuid.UUID = CLASS) -> bytes:
    manifest = ReleaseManifest(sequence_number=seq, vendor_id=VENDOR, class_id=class_id,
                               image_digest=hashlib.sha256(image).digest(), image_size=len(image), version=version)
    return build_envelope(manifest, list(signers), image=image)


def options(**overrides: Any) -> FirmwareOptions:
    values: dict[str, Any] = {"trust_anchors": (OEM.public_key(),), "vendor_id": VENDOR, "class_id": CLASS,
                              "version": "1.0.0", "sequence_number": 1}
    values.update(overrides)
    return FirmwareOptions(**values)


@contextlib.asynccontextmanager
async def device_on(srv: Lwm2mServer, endpoint: str = "fw-dev", **firmware: Any) -> AsyncIterator[SimulatedDevice]:
    dev = SimulatedDevice(endpoint, srv.coap_uri, reboot_delay=0.05, firmware=options(**firmware))
    try:
        assert await dev.start(timeout=10)
        yield dev
    finally:
        await dev.stop()


async def run_update(srv: Lwm2mServer, endpoint: str, data: bytes, **kw: Any) -> UpdateJob:
    assert srv.firmware is not None
    kw.setdefault("timeout", 60.0)
    return await srv.firmware.update(endpoint, data, tenant_id="default", **kw)


@pytest.mark.parametrize("method", [Method.PUSH, Method.PULL])
async def test_300_kib_package_arrives_byte_identical_and_is_installed(tmp_path: Path, method: Method) -> None:
    image = os.urandom(300 * 1024)
    data = package(image)
    async with running_server(tmp_path) as srv, device_on(srv) as dev:
        job = await run_update(srv, "fw-dev", data, method=method)
        assert job.succeeded, job.last
        fw = dev.firmware
        assert fw is not None
        assert fw.last_package == data
        assert fw.slots[fw.active].image == image
        assert (fw.version, fw.sequence_number, fw.machine.state, fw.machine.result) == (
            "2.0.0", 2, State.IDLE, UpdateResult.SUCCESS)
        assert job.last.version == "2.0.0" and job.previous_version == "1.0.0"
        assert job.method == method.value
        assert dev.counters.reboots == 1
        assert srv.files.published == 0  # pull publications are withdrawn when the update ends
        assert srv.management is not None
        version = await srv.management.send("fw-dev", ReadRequest(LwM2mPath.of(3, 0, 3)), tenant_id="default")
        assert version.content.value == "2.0.0"  # type: ignore[union-attr]


@pytest.mark.parametrize("block_size", [16, 32, 64, 128, 256, 512, 1024])
async def test_every_block_size_both_ways(tmp_path: Path, block_size: int) -> None:
    image = os.urandom(3000 + block_size)  # never a whole number of blocks
    data = package(image)
    async with running_server(tmp_path) as srv:
        async with device_on(srv, "push-dev") as pushed:
            job = await run_update(srv, "push-dev", data, method=Method.PUSH, block_size=block_size)
            assert job.succeeded, job.last
            assert pushed.firmware is not None and pushed.firmware.last_package == data
            assert job.last.blocks == -(-len(data) // block_size)
        async with device_on(srv, "pull-dev", pull_block_size=block_size) as pulled:
            job = await run_update(srv, "pull-dev", data, method=Method.PULL)
            assert job.succeeded, job.last
            assert pulled.firmware is not None and pulled.firmware.last_package == data


async def test_push_follows_the_device_block_size_hint(tmp_path: Path) -> None:
    data = package(os.urandom(10_000))
    async with running_server(tmp_path) as srv, device_on(srv, max_block_size=128) as dev:
        job = await run_update(srv, "fw-dev", data, method=Method.PUSH, block_size=1024)
        assert job.succeeded, job.last
        assert dev.firmware is not None and dev.firmware.last_package == data
        assert job.last.blocks == -(-len(data) // 128)  # the refused 1024-byte block is not counted


async def test_failed_health_check_rolls_back_and_reports_result_8(tmp_path: Path) -> None:
    data = package(os.urandom(5000))
    async with running_server(tmp_path) as srv, device_on(srv, fail_boot=True) as dev:
        job = await run_update(srv, "fw-dev", data)
        assert not job.succeeded
        assert job.last.result == UpdateResult.UPDATE_FAILED
        assert job.last.version == "1.0.0"
        assert "firmware update failed" in job.last.message
        fw = dev.firmware
        assert fw is not None
        assert (fw.version, fw.sequence_number, fw.rollbacks) == ("1.0.0", 1, 1)
        assert fw.machine.state == State.IDLE


@pytest.mark.parametrize(("case", "expected"), [
    ("bad-signature", UpdateResult.INTEGRITY_CHECK_FAILURE),
    ("wrong-class", UpdateResult.UNSUPPORTED_PACKAGE_TYPE),
    ("rollback", UpdateResult.UPDATE_FAILED),
    ("missing-operator-signature", UpdateResult.INTEGRITY_CHECK_FAILURE),
    ("not-suit", UpdateResult.UNSUPPORTED_PACKAGE_TYPE),
])
@pytest.mark.parametrize("method", [Method.PUSH, Method.PULL])
async def test_refused_packages_end_in_their_update_result(tmp_path: Path, case: str, expected: UpdateResult,
                                                           method: Method) -> None:
    image = os.urandom(4000)
    anchors: tuple[Any, ...] = (OEM.public_key(),)
    if case == "bad-signature":
        data = package(image, signers=(generate_private_key("es256"),))
    elif case == "wrong-class":
        data = package(image, class_id=uuid.uuid4())
    elif case == "rollback":
        data = package(image, seq=1)  # the device runs sequence 1 already
    elif case == "missing-operator-signature":
        anchors = (OEM.public_key(), OPERATOR.public_key())
        data = package(image)  # signed by the OEM only
    else:
        data = b"\x89PNG this is no SUIT envelope" * 10
    async with running_server(tmp_path) as srv, device_on(srv, trust_anchors=anchors) as dev:
        job = await run_update(srv, "fw-dev", data, method=method)
        assert not job.succeeded
        assert job.last.result == expected, job.last
        assert UpdateResult(expected).label in job.last.message
        fw = dev.firmware
        assert fw is not None
        assert (fw.machine.state, fw.machine.result, fw.version) == (State.IDLE, expected, "1.0.0")
        assert dev.counters.reboots == 0


async def test_dual_signed_package_installs_on_a_device_that_requires_both(tmp_path: Path) -> None:
    data = package(os.urandom(4000), signers=(OEM, OPERATOR))
    async with running_server(tmp_path) as srv, device_on(
            srv, trust_anchors=(OEM.public_key(), OPERATOR.public_key())) as dev:
        job = await run_update(srv, "fw-dev", data)
        assert job.succeeded, job.last
        assert dev.firmware is not None and dev.firmware.version == "2.0.0"


@pytest.mark.parametrize("method", [Method.PUSH, Method.PULL])
async def test_package_larger_than_the_flash_is_refused_with_result_2(tmp_path: Path, method: Method) -> None:
    """Push sends Size1 with the first block, pull asks for Size2: either way the device refuses on the first
    block (without Size1, the push went on until the 9th block overflowed the flash)."""
    data = package(os.urandom(20_000))
    async with running_server(tmp_path) as srv, device_on(srv, flash_size=8192) as dev:
        job = await run_update(srv, "fw-dev", data, method=method)
        assert not job.succeeded
        assert job.last.result == UpdateResult.NOT_ENOUGH_FLASH, job.last
        fw = dev.firmware
        assert fw is not None and fw.machine.result == UpdateResult.NOT_ENOUGH_FLASH
        assert (fw.push_blocks, fw.fetched_bytes) == ((1, 0) if method is Method.PUSH else (0, 0))
        assert "8192" in job.last.message or method is Method.PULL, job.last


class LyingFileServer(resource.Resource):
    """Declares ``declared`` bytes (Size2) and serves full blocks with More set, forever."""

    def __init__(self, declared: int) -> None:
        super().__init__()
        self.declared = declared
        self.asked_size: list[int | None] = []
        self.blocks = 0

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return False

    async def render_get(self, request: Message) -> Message:
        self.asked_size.append(request.opt.size2)
        block2 = request.opt.block2
        number, szx = (block2.block_number, block2.size_exponent) if block2 else (0, 6)
        self.blocks += 1
        response = Message(code=Code.CONTENT, payload=bytes(1 << (szx + 4)), etag=b"liar")
        response.opt.block2 = BlockOption.BlockwiseTuple(number, True, szx)
        response.opt.size2 = self.declared
        return response


async def test_a_pull_reads_no_further_than_the_size_the_file_server_declared(tmp_path: Path) -> None:
    """A file server that declares 4096 bytes and keeps sending blocks is cut off after 4 blocks of 1024 bytes:
    Update Result 5 (integrity). Without the Size2 check the device read on until its 64 KiB flash was full."""
    liar = LyingFileServer(4096)
    site = resource.Site()
    site.add_resource(["fw"], liar)
    context = await Context.create_server_context(site, bind=("127.0.0.1", 0), transports=["udp6"])
    try:
        uri = f"coap://127.0.0.1:{bound_port(context)}/fw"
        async with running_server(tmp_path) as srv, device_on(srv, flash_size=64 * 1024) as dev:
            fw = dev.firmware
            assert fw is not None and srv.management is not None
            await srv.management.send("fw-dev", WriteRequest(PACKAGE_URI, SingleResource(1, ResourceType.STRING,
                                                                                         uri)), tenant_id="default")
            await eventually(lambda: fw.machine.result != UpdateResult.INITIAL, timeout=30)
            assert (fw.machine.state, fw.machine.result) == (State.IDLE, UpdateResult.INTEGRITY_CHECK_FAILURE)
            assert (liar.blocks, fw.fetched_bytes) == (4, 3 * 1024)  # the 4th block would pass 4096: not kept
            assert liar.asked_size[0] == 0  # the first GET asked for the size (RFC 7959 section 4)
    finally:
        await context.shutdown()


@pytest.mark.parametrize("method", [Method.PUSH, Method.PULL])
async def test_an_interrupted_download_is_retried_cleanly(tmp_path: Path, method: Method) -> None:
    image = os.urandom(50_000)
    data = package(image)
    async with running_server(tmp_path) as srv, device_on(srv, lose_connection_at=20_000) as dev:
        job = await run_update(srv, "fw-dev", data, method=method)
        assert job.succeeded, job.last
        fw = dev.firmware
        assert fw is not None
        assert fw.last_package == data and fw.slots[fw.active].image == image
        messages = [step.message for step in job.history]
        if method is Method.PULL:
            assert any("connection lost" in m for m in messages), messages


async def test_one_update_per_device_at_a_time_and_unknown_devices(tmp_path: Path) -> None:
    from lwm2m_server.core.errors import UnknownEndpointError
    from lwm2m_server.fota.service import UpdateInProgressError

    data = package(os.urandom(100_000))
    async with running_server(tmp_path) as srv, device_on(srv):
        assert srv.firmware is not None
        with pytest.raises(UnknownEndpointError):
            srv.firmware.start("nobody", data, tenant_id="default")
        job = srv.firmware.start("fw-dev", data, method=Method.PUSH, tenant_id="default")
        with pytest.raises(UpdateInProgressError):
            srv.firmware.start("fw-dev", data, tenant_id="default")
        await job.done.wait()
        assert job.succeeded, job.last


async def test_a_device_without_object_5_is_refused(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = SimulatedDevice("plain", srv.coap_uri)
        try:
            assert await dev.start(timeout=10)
            job = await run_update(srv, "plain", b"anything")
            assert not job.succeeded and "no Firmware Update object" in job.last.message
        finally:
            await dev.stop()


async def test_progress_is_reported_step_by_step(tmp_path: Path) -> None:
    data = package(os.urandom(30_000))
    async with running_server(tmp_path) as srv, device_on(srv):
        job = await run_update(srv, "fw-dev", data, method=Method.PUSH)
        phases = [s.phase for s in job.history]
        for phase in ("preparing", "delivering", "downloaded", "updating", "rebooted", "succeeded"):
            assert phase in phases
        sent = [s.sent for s in job.history if s.phase == "delivering"]
        assert sent == sorted(sent) and sent[-1] == len(data)
        await eventually(lambda: not srv.files.published)

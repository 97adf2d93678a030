"""Simulated devices over DTLS-PSK against the real LwM2M server: register, be managed and update firmware over the
device's one DTLS session. Real tinydtls on both sides on 127.0.0.1; credentials from the vault-backed store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap.credentials import MemoryCredentialStore
from bootstrap.vault import Vault
from client_sim.device import DeviceState, SimulatedDevice
from client_sim.firmware import FirmwareOptions
from firmware_object.errors import State, UpdateResult
from firmware_object.suit.envelope import build_envelope
from firmware_object.suit.keys import generate_private_key
from firmware_object.suit.manifest import ReleaseManifest
from lwm2m_server.core.errors import ErrorResponseError
from lwm2m_server.core.nodes import Instance, ResourceType, SingleResource
from lwm2m_server.core.operations import ExecuteRequest, ObserveRequest, ReadRequest, WriteRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.fota.service import FirmwareService, Method
from lwm2m_server.server import Lwm2mServer
from tests.harness import running_server

VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
OEM = generate_private_key("es256")


def package(image: bytes, *, seq: int = 2, version: str = "2.0.0") -> bytes:
    manifest = ReleaseManifest(sequence_number=seq, vendor_id=VENDOR, class_id=CLASS,
                               image_digest=hashlib.sha256(image).digest(), image_size=len(image), version=version)
    return build_envelope(manifest, [OEM], image=image)


def firmware_options() -> FirmwareOptions:
    return FirmwareOptions(trust_anchors=(OEM.public_key(),), vendor_id=VENDOR, class_id=CLASS, version="1.0.0",
                           sequence_number=1)


@pytest.fixture
def store() -> MemoryCredentialStore:
    return MemoryCredentialStore(Vault.generate())


@contextlib.asynccontextmanager
async def dtls_server(tmp_path: Path, store: MemoryCredentialStore) -> AsyncIterator[Lwm2mServer]:
    async with running_server(tmp_path, coaps_port=0, credentials=store) as srv:
        yield srv


@contextlib.asynccontextmanager
async def dtls_device(srv: Lwm2mServer, store: MemoryCredentialStore, endpoint: str,
                      **options: Any) -> AsyncIterator[SimulatedDevice]:
    credential, psk = store.issue(endpoint, "server", now=0, tenant_id="default")
    options.setdefault("drift_interval", 0)
    dev = SimulatedDevice(endpoint, srv.coaps_uri, psk_identity=credential.identity, psk=bytes(psk), **options)
    try:
        assert await dev.start(timeout=15)
        yield dev
    finally:
        await dev.stop()


async def test_a_psk_device_registers_over_dtls_and_is_managed_over_its_session(
        tmp_path: Path, store: MemoryCredentialStore) -> None:
    async with dtls_server(tmp_path, store) as srv, dtls_device(srv, store, "sim-dtls-1") as dev:
        assert srv.registrations is not None and srv.management is not None
        reg = srv.registrations.by_endpoint("sim-dtls-1", tenant_id="default")
        assert reg is not None and reg.secure and reg.identity == dev.psk_identity.decode()  # type: ignore[union-attr]
        assert dev.secure and dev.state is DeviceState.REGISTERED and dev.uri.startswith("coaps://127.0.0.1:")
        management = srv.management

        device = await management.send("sim-dtls-1", ReadRequest(LwM2mPath.of(3, 0)), timeout=10, tenant_id="default")
        assert isinstance(device.content, Instance)
        assert device.content.resources[0].value == "SCRATCh"  # type: ignore[union-attr]

        # the Security object never leaves the device, also over DTLS
        with pytest.raises(ErrorResponseError) as refused:
            await management.send("sim-dtls-1", ReadRequest(LwM2mPath.of(0, 0)), timeout=10, tenant_id="default")
        assert refused.value.code == 0x81  # 4.01

        # Write: a new lifetime is taken and announced with an Update over the same session
        updates = dev.counters.updates
        await management.send("sim-dtls-1", WriteRequest(LwM2mPath.of(1, 0, 1),
                                                         SingleResource(1, ResourceType.INTEGER, 120)),
                              timeout=10, tenant_id="default")
        assert dev.lifetime == 120
        await dev.wait_for(lambda d: d.counters.updates > updates, 10)
        updated = srv.registrations.by_endpoint("sim-dtls-1", tenant_id="default")
        assert updated is not None and updated.lifetime == 120

        # Execute: the Registration Update Trigger
        updates = dev.counters.updates
        await management.send("sim-dtls-1", ExecuteRequest(LwM2mPath.of(1, 0, 8)), timeout=10, tenant_id="default")
        await dev.wait_for(lambda d: d.counters.updates > updates, 10)

        # Observe: a notification comes back over the session
        obs = await management.observe("sim-dtls-1", ObserveRequest(LwM2mPath.of(3, 0, 9)), timeout=10,
                                       tenant_id="default")
        try:
            assert obs.established
            dev.objects.set_value(LwM2mPath.of(3, 0, 9), 42)
            notifications = obs.notifications()
            node = await asyncio.wait_for(notifications.__anext__(), 10)
            assert isinstance(node, SingleResource) and node.value == 42
        finally:
            obs.cancel()

        # the whole time: one DTLS session, the one the device registered on
        current = srv.registrations.by_endpoint("sim-dtls-1", tenant_id="default")
        assert current is not None and current.remote is reg.remote
    assert srv.registrations.by_endpoint("sim-dtls-1", tenant_id="default") is None  # de-registered over DTLS on stop()


async def test_a_wrong_psk_is_refused_and_retried_without_crashing(tmp_path: Path,
                                                                   store: MemoryCredentialStore) -> None:
    credential, psk = store.issue("sim-dtls-2", "server", now=0, tenant_id="default")
    wrong = bytes(b ^ 0xFF for b in bytes(psk))
    async with dtls_server(tmp_path, store) as srv:
        dev = SimulatedDevice("sim-dtls-2", srv.coaps_uri, psk_identity=credential.identity, psk=wrong,
                              request_timeout=2, drift_interval=0)
        try:
            assert not await dev.start(timeout=15)
            assert dev.state is DeviceState.FAILED and dev.counters.registers == 0
            assert srv.registrations is not None
            assert srv.registrations.by_endpoint("sim-dtls-2", tenant_id="default") is None
        finally:
            await dev.stop()
        assert dev.address == ("127.0.0.1", 0)  # nothing left open


@pytest.mark.parametrize("method", [Method.PUSH, Method.PULL])
async def test_firmware_update_over_the_dtls_session(tmp_path: Path, store: MemoryCredentialStore,
                                                      method: Method) -> None:
    """The server's firmware service drives the update; a pull fetches a coaps:// Package URI through the
    device's DTLS session (the service is given the server's coaps:// file base, as the DTLS-aware server does)."""
    image = os.urandom(40 * 1024)
    data = package(image)
    async with dtls_server(tmp_path, store) as srv, \
            dtls_device(srv, store, "sim-dtls-fw", firmware=firmware_options(), reboot_delay=0.05) as dev:
        assert srv.management is not None and dev.firmware is not None
        protocols = await srv.management.send("sim-dtls-fw", ReadRequest(LwM2mPath.of(5, 0, 8)), timeout=10,
                                              tenant_id="default")
        assert dict(protocols.content.instances) == {0: 1}  # type: ignore[union-attr]  # CoAPS only
        service = FirmwareService(srv.management, srv.files, srv.events, file_base_uri=srv.coaps_uri)
        try:
            job = await service.update("sim-dtls-fw", data, method=method, timeout=60.0, tenant_id="default")
        finally:
            await service.close()
        assert job.succeeded, job.last
        fw = dev.firmware
        assert fw.last_package == data and fw.slots[fw.active].image == image
        assert (fw.version, fw.machine.state, fw.machine.result) == ("2.0.0", State.IDLE, UpdateResult.SUCCESS)
        assert dev.secure and dev.counters.registers >= 2  # registered again after the reboot, over DTLS


async def test_the_servers_own_firmware_service_pulls_over_coaps(tmp_path: Path,
                                                                 store: MemoryCredentialStore) -> None:
    data = package(os.urandom(20 * 1024))
    async with dtls_server(tmp_path, store) as srv, \
            dtls_device(srv, store, "sim-dtls-pull", firmware=firmware_options(), reboot_delay=0.05) as dev:
        assert srv.firmware is not None
        if getattr(srv.firmware, "secure_file_base_uri", None) is None:
            pytest.skip("the LwM2M server does not give DTLS devices a coaps:// Package URI yet "
                        "(lwm2m_server/server.py: FirmwareService(secure_file_base_uri=coaps_uri))")
        job = await srv.firmware.update("sim-dtls-pull", data, method=Method.PULL, timeout=60.0, tenant_id="default")
        assert job.succeeded, job.last
        assert dev.firmware is not None and dev.firmware.version == "2.0.0"

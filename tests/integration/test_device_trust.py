"""Per-device trust end to end, on 127.0.0.1 with real DTLS and the real SQLite credential store shared by the
LwM2M server and the bootstrap server (as `scratch server` and `scratch bootstrap-server` share a data directory):

- factory credential -> bootstrap -> register -> read -> firmware update -> key rotation, with the audit log;
- a wrong PSK, an unknown identity, a revoked device and an identity claiming another endpoint are refused, and
  nothing of any other device changes;
- 1,000 devices bootstrap and register over DTLS in one test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest

from bootstrap.server import BootstrapServer, BootstrapSettings
from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from client_sim.credentials import FactoryCredentials
from client_sim.device import DeviceState, SimulatedDevice
from client_sim.firmware import FirmwareOptions
from client_sim.fleet import Fleet
from firmware_object.suit.envelope import build_envelope
from firmware_object.suit.keys import generate_private_key
from firmware_object.suit.manifest import ReleaseManifest
from lwm2m_server.audit import AUDIT_FILE, read_audit
from lwm2m_server.coap.dtls import dtls_client_context
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.operations import ReadRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.fota.service import Method
from lwm2m_server.key_rotation import rotate_device_key
from lwm2m_server.server import Lwm2mServer
from lwm2m_server.storage.database import Database
from tests.harness import running_server

VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
OEM = generate_private_key("es256")


@contextlib.asynccontextmanager
async def production(tmp_path: Path, **bs_settings: Any) -> AsyncIterator[tuple[SqlCredentialStore, Lwm2mServer,
                                                                                    BootstrapServer]]:
    """A data directory with its vault key; the LwM2M server and the bootstrap server on its one database."""
    data = tmp_path / "data"
    data.mkdir()
    database = Database.for_data_dir(data)
    store = SqlCredentialStore(database, Vault.open(data / "vault.key"))
    try:
        async with running_server(data, coaps_port=0, coap_port=None, credentials=store) as srv:
            bs = BootstrapServer(BootstrapSettings(server_uri=srv.coaps_uri, coaps_port=0, **bs_settings), store)
            await bs.start()
            try:
                yield store, srv, bs
            finally:
                await bs.stop()
    finally:
        database.close()


def provision(store: SqlCredentialStore, bs: BootstrapServer, endpoint: str) -> FactoryCredentials:
    credential, psk = store.issue(endpoint, "bootstrap", now=0, tenant_id="default")
    return FactoryCredentials(endpoint, credential.identity, bytes(psk), bs.coaps_uri)


async def eventually(check: Callable[[], bool], timeout: float = 30) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def register_with(srv: Lwm2mServer, endpoint: str, identity: str, psk: bytes) -> aiocoap.Code | None:
    """A Register from a fresh DTLS client; its answer code, or None when the handshake is refused."""
    client = await dtls_client_context(None, srv.coaps_uri, identity.encode(), psk)
    request = aiocoap.Message(code=aiocoap.POST, uri=f"{srv.coaps_uri}/rd", payload=b"</3/0>",
                              content_format=int(ContentFormat.LINK))
    request.opt.uri_query = (f"ep={endpoint}", "lt=77", "lwm2m=1.1")
    try:
        return (await asyncio.wait_for(client.request(request).response, 5)).code
    except (TimeoutError, aiocoap.error.Error):
        return None
    finally:
        await client.shutdown()


async def test_factory_to_bootstrap_to_register_to_firmware_update_to_rekey(tmp_path: Path) -> None:
    image = os.urandom(64 * 1024)
    manifest = ReleaseManifest(sequence_number=2, vendor_id=VENDOR, class_id=CLASS, version="2.0.0",
                               image_digest=hashlib.sha256(image).digest(), image_size=len(image))
    package = build_envelope(manifest, [OEM], image=image)
    options = FirmwareOptions(trust_anchors=(OEM.public_key(),), vendor_id=VENDOR, class_id=CLASS, version="1.0.0",
                              sequence_number=1)
    async with production(tmp_path) as (store, srv, bs):
        records = [provision(store, bs, f"trust-{i}") for i in range(2)]
        devices = [SimulatedDevice.from_factory(r, firmware=options, drift_interval=0, reboot_delay=0.05)
                   for r in records]
        try:
            assert all(await asyncio.gather(*(d.start(timeout=30) for d in devices)))
            assert srv.registrations is not None and srv.management is not None and srv.firmware is not None
            for record in records:
                reg = srv.registrations.by_endpoint(record.endpoint, tenant_id="default")
                server_credential = store.by_endpoint(record.endpoint, "server", tenant_id="default")
                assert reg is not None and reg.secure and server_credential is not None
                assert reg.identity == server_credential.identity != record.psk_identity
                read = await srv.management.send(record.endpoint, ReadRequest(LwM2mPath.of(3, 0, 0)), timeout=10,
                                                 tenant_id="default")
                assert read.content.value == "SCRATCh"  # type: ignore[union-attr]

            for device, method in zip(devices, (Method.PUSH, Method.PULL), strict=True):
                job = await srv.firmware.update(device.endpoint, package, method=method, timeout=60,
                                                tenant_id="default")
                assert job.succeeded, job.last
                assert device.firmware is not None and device.firmware.version == "2.0.0"

            # key rotation: a new server key, the old one refused from then on
            old = srv.registrations.by_endpoint("trust-0", tenant_id="default")
            assert old is not None and old.identity is not None
            old_psk = bytes(devices[0].objects.get_value(LwM2mPath.of(0, 1, 5)))  # type: ignore[arg-type]
            rotation = await rotate_device_key(srv.management, srv.events, "trust-0", timeout=30, tenant_id="default")
            assert rotation.old_identity == old.identity != rotation.new_identity
            assert store.psk_for(old.identity) is None
            assert await register_with(srv, "trust-0", old.identity, old_psk) is None
            new = srv.registrations.by_endpoint("trust-0", tenant_id="default")
            assert new is not None and new.identity == rotation.new_identity
            read = await srv.management.send("trust-0", ReadRequest(LwM2mPath.of(3, 0, 0)), timeout=10,
                                             tenant_id="default")
            assert read.content.value == "SCRATCh"  # type: ignore[union-attr]

            # the server's credential sync sees the retired key and writes it to the audit log
            def audited() -> list[dict[str, object]]:
                return [e for e in read_audit(srv.settings.data_dir / AUDIT_FILE)
                        if e["event"] == "security.credential_revoked" and e["identity"] == old.identity]
            await eventually(lambda: bool(audited()), timeout=10)
            assert audited()[0]["endpoint"] == "trust-0"
        finally:
            await asyncio.gather(*(d.stop() for d in devices))


async def test_refusals_change_nothing_of_any_other_device(tmp_path: Path) -> None:
    async with production(tmp_path, credential_poll_interval=0.2) as (store, srv, bs):
        records = {ep: provision(store, bs, ep) for ep in ("ok-a", "ok-b", "gone-c")}
        devices = {ep: SimulatedDevice.from_factory(r, drift_interval=0) for ep, r in records.items()}
        try:
            assert all(await asyncio.gather(*(d.start(timeout=30) for d in devices.values())))
            registrations = srv.registrations
            assert registrations is not None

            def snapshot() -> dict[str, tuple[object, ...]]:
                out = {}
                for ep in ("ok-a", "ok-b"):
                    reg = registrations.by_endpoint(ep, tenant_id="default")
                    assert reg is not None
                    out[ep] = (reg.id, reg.identity, reg.lifetime, reg.registered_at, reg.address)
                return out

            before = snapshot()
            a = store.by_endpoint("ok-a", "server", tenant_id="default")
            assert a is not None
            a_psk = bytes(devices["ok-a"].objects.get_value(LwM2mPath.of(0, 1, 5)))  # type: ignore[arg-type]

            assert await register_with(srv, "ok-a", a.identity, b"\x00" * 16) is None  # wrong PSK
            assert await register_with(srv, "ok-a", "sv-nobody", a_psk) is None  # unknown identity
            assert await register_with(srv, "ok-b", a.identity, a_psk) == aiocoap.FORBIDDEN  # claims another device
            bootstrap_a = records["ok-a"]
            assert await register_with(srv, "ok-a", bootstrap_a.psk_identity, bootstrap_a.psk_key) is None

            # a revoked device: its live session ends and it is refused from then on
            gone = devices["gone-c"]
            c_psk = bytes(gone.objects.get_value(LwM2mPath.of(0, 1, 5)))  # type: ignore[arg-type]
            c_identity = bytes(gone.objects.get_value(LwM2mPath.of(0, 1, 3))).decode()  # type: ignore[arg-type]
            revoked: list[str] = []
            srv.events.subscribe(lambda e: revoked.append(str(e.endpoint)), "security.credential_revoked")
            ended = store.revoke("gone-c", now=time.time(), tenant_id="default")
            assert {c.kind.value for c in ended} == {"bootstrap", "server"}
            await eventually(lambda: "gone-c" in revoked, timeout=10)
            with contextlib.suppress(Exception):
                await srv.management.send("gone-c", ReadRequest(LwM2mPath.of(3, 0, 0)), timeout=3, tenant_id="default")
                raise AssertionError("a revoked device's session still answers")
            assert await register_with(srv, "gone-c", c_identity, c_psk) is None
            assert bs.stats.refused == 0

            assert snapshot() == before  # nothing of any other device changed
            for ep in ("ok-a", "ok-b"):
                read = await srv.management.send(ep, ReadRequest(LwM2mPath.of(3, 0, 0)), timeout=10,
                                                 tenant_id="default")
                assert read.content.value == "SCRATCh"  # type: ignore[union-attr]
            audit = [e["event"] for e in read_audit(srv.settings.data_dir / AUDIT_FILE)]
            assert "security.identity_mismatch" in audit
        finally:
            await asyncio.gather(*(d.stop() for d in devices.values()))


@pytest.mark.slow
async def test_a_thousand_devices_bootstrap_and_register_over_dtls(tmp_path: Path) -> None:
    async with production(tmp_path) as (store, srv, bs):
        records = [provision(store, bs, f"k-{i:04d}") for i in range(1000)]
        fleet = Fleet.from_credentials(records, concurrency=100, drift_interval=0)
        try:
            await asyncio.wait_for(fleet.start(timeout_per_device=60), 100)
            # a device whose first attempt failed (a handshake lost on a busy loopback) retries by itself
            await eventually(lambda: fleet.status.registered == 1000, timeout=90)
            assert srv.registrations is not None and srv.registrations.count() == 1000
            identities = set()
            for record in records:
                reg = srv.registrations.by_endpoint(record.endpoint, tenant_id="default")
                assert reg is not None and reg.secure and reg.identity is not None
                assert store.endpoint_for(reg.identity) == record.endpoint
                identities.add(reg.identity)
            assert len(identities) == 1000
            # a device registers as soon as it has handled Finish; the bootstrap server counts the session when
            # the Finish answer reaches it, which a lost ACK delays by a CoAP retransmission
            await eventually(lambda: bs.stats.succeeded + bs.stats.unconfirmed >= 1000, timeout=60)
            assert all(d.state is DeviceState.REGISTERED for d in fleet.devices)
        finally:
            await fleet.stop(deregister=False)

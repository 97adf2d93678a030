"""Simulated devices from the factory, end to end on 127.0.0.1: factory bootstrap credential -> client-initiated
bootstrap at the real bootstrap server over DTLS -> Register over DTLS at the real LwM2M server sharing the same
credential store -> managed over that session. Re-bootstrap (Bootstrap-Request Trigger, Register failures), the
LwM2M 1.2 Bootstrap-Pack and a busy bootstrap server (5.03 Max-Age) too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest

from bootstrap.credentials import CredentialKind, MemoryCredentialStore
from bootstrap.server import BootstrapServer, BootstrapSettings
from bootstrap.vault import Vault
from client_sim.accounts import bootstrap_account, server_account
from client_sim.credentials import FactoryCredentials
from client_sim.device import DeviceState, SimulatedDevice
from client_sim.fleet import Fleet
from lwm2m_server.coap.dtls import dtls_client_context, dtls_transport
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.nodes import Instance
from lwm2m_server.core.operations import ExecuteRequest, ReadRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.server import Lwm2mServer
from tests.harness import running_server


@pytest.fixture
def store() -> MemoryCredentialStore:
    return MemoryCredentialStore(Vault.generate())


@contextlib.asynccontextmanager
async def servers(tmp_path: Path, store: MemoryCredentialStore,
                  **settings: Any) -> AsyncIterator[tuple[Lwm2mServer, BootstrapServer]]:
    async with running_server(tmp_path, coaps_port=0, credentials=store) as srv:
        bs = BootstrapServer(BootstrapSettings(server_uri=srv.coaps_uri, coaps_port=0, **settings), store)
        await bs.start()
        try:
            yield srv, bs
        finally:
            await bs.stop()


def factory(store: MemoryCredentialStore, bs: BootstrapServer, endpoint: str) -> FactoryCredentials:
    credential, psk = store.issue(endpoint, "bootstrap", now=0, tenant_id="default")
    return FactoryCredentials(endpoint, credential.identity, bytes(psk), bs.coaps_uri)


@contextlib.asynccontextmanager
async def started(creds: FactoryCredentials, **options: Any) -> AsyncIterator[SimulatedDevice]:
    options.setdefault("drift_interval", 0)
    dev = SimulatedDevice.from_factory(creds, **options)
    try:
        assert await dev.start(timeout=30)
        yield dev
    finally:
        await dev.stop()


def server_credentials(dev: SimulatedDevice) -> tuple[str, bytes]:
    """The server account the bootstrap server wrote (read on the device side: the server never gets /0)."""
    account = server_account(dev.objects)
    assert account is not None and account.secure
    return account.identity.decode(), account.key


async def dtls_register_code(srv: Lwm2mServer, endpoint: str, identity: str, psk: bytes) -> int | None:
    """Register with ``identity``/``psk`` from a fresh client; the code, or None when no session opens."""
    client = await dtls_client_context(None, srv.coaps_uri, identity.encode(), psk)
    request = aiocoap.Message(code=aiocoap.POST, uri=f"{srv.coaps_uri}/rd", payload=b"</3/0>",
                              content_format=int(ContentFormat.LINK))
    request.opt.uri_query = (f"ep={endpoint}", "lt=300", "lwm2m=1.1")
    try:
        answer = await asyncio.wait_for(client.request(request).response, 5)
        return int(answer.code)
    except (aiocoap.error.Error, TimeoutError):
        return None
    finally:
        await client.shutdown()


@pytest.mark.parametrize("version", ["1.0", "1.1"])
async def test_a_factory_device_bootstraps_then_registers_over_dtls(tmp_path: Path, store: MemoryCredentialStore,
                                                                   version: str) -> None:
    async with servers(tmp_path, store) as (srv, bs):
        creds = factory(store, bs, "sim-bs-1")
        seen: list[DeviceState] = []
        dev = SimulatedDevice.from_factory(creds, drift_interval=0, lwm2m_version=version,
                                           on_state=lambda _d, _old, new: seen.append(new))
        assert dev.server_uri == "" and dev.objects.instance_ids(1) == ()  # fresh from the factory
        try:
            assert await dev.start(timeout=30)
            assert seen[:3] == [DeviceState.BOOTSTRAPPING, DeviceState.REGISTERING, DeviceState.REGISTERED]
            assert dev.counters.bootstraps == 1 and dev.counters.bootstrap_failures == 0
            assert bs.stats.succeeded == 1 and bs.running == 0
            identity, key = server_credentials(dev)
            issued = store.by_endpoint("sim-bs-1", CredentialKind.SERVER, tenant_id="default")
            assert issued is not None and issued.identity == identity and store.verify(identity, key)
            assert dev.server_uri == srv.coaps_uri and dev.secure
            # the bootstrap account is still there (with the factory key); the bootstrap session is gone
            kept = bootstrap_account(dev.objects)
            assert kept is not None and kept.identity == creds.identity and kept.key == creds.psk_key
            assert dev._attempt is None
            assert srv.registrations is not None and srv.management is not None
            reg = srv.registrations.by_endpoint("sim-bs-1", tenant_id="default")
            assert reg is not None and reg.secure and reg.identity == identity
            read = await srv.management.send("sim-bs-1", ReadRequest(LwM2mPath.of(3, 0)), timeout=10,
                                             tenant_id="default")
            assert isinstance(read.content, Instance)
            server = await srv.management.send("sim-bs-1", ReadRequest(LwM2mPath.of(1, 0)), timeout=10,
                                               tenant_id="default")
            assert server.content.resources[0].value == 1  # type: ignore[union-attr]  # SSID written by bootstrap
        finally:
            await dev.stop()
        assert srv.registrations.by_endpoint("sim-bs-1", tenant_id="default") is None


async def test_bootstrap_request_trigger_gives_new_credentials_and_retires_the_old(
        tmp_path: Path, store: MemoryCredentialStore) -> None:
    async with servers(tmp_path, store) as (srv, bs), started(factory(store, bs, "sim-bs-2")) as dev:
        assert srv.management is not None and srv.registrations is not None
        old_identity, old_key = server_credentials(dev)
        answer = await srv.management.send("sim-bs-2", ExecuteRequest(LwM2mPath.of(1, 0, 9)), timeout=10,
                                           tenant_id="default")
        assert answer.code == 0x44  # 2.04, answered before the device leaves
        await dev.wait_for(lambda d: d.counters.bootstraps == 2 and d.state is DeviceState.REGISTERED, 30)
        new_identity, new_key = server_credentials(dev)
        assert new_identity != old_identity and new_key != old_key
        reg = srv.registrations.by_endpoint("sim-bs-2", tenant_id="default")
        assert reg is not None and reg.identity == new_identity and reg.secure
        await srv.management.send("sim-bs-2", ReadRequest(LwM2mPath.of(3, 0, 0)), timeout=10, tenant_id="default")
        # the old server key opens no session any more; the new one does
        assert store.psk_for(old_identity) is None
        assert await dtls_register_code(srv, "sim-bs-2", old_identity, old_key) is None
        assert dev.counters.deregisters >= 1  # it left the server before bootstrapping again


async def test_a_factory_reset_takes_the_device_back_to_bootstrap(tmp_path: Path,
                                                                  store: MemoryCredentialStore) -> None:
    async with servers(tmp_path, store) as (srv, bs), started(factory(store, bs, "sim-bs-reset"),
                                                              reboot_delay=0.01) as dev:
        assert srv.management is not None
        first, _ = server_credentials(dev)
        await srv.management.send("sim-bs-reset", ExecuteRequest(LwM2mPath.of(3, 0, 5)), timeout=10,
                                  tenant_id="default")
        await dev.wait_for(lambda d: d.counters.bootstraps == 2 and d.state is DeviceState.REGISTERED, 30)
        second, _ = server_credentials(dev)
        assert second != first and dev.counters.reboots == 1


async def test_a_device_whose_server_key_stops_working_falls_back_to_bootstrap(
        tmp_path: Path, store: MemoryCredentialStore) -> None:
    async with servers(tmp_path, store) as (srv, bs), \
            started(factory(store, bs, "sim-bs-3"), request_timeout=2, bootstrap_on_failure=2) as dev:
        old_identity, _ = server_credentials(dev)
        # the operator revokes the server key and the server drops the session: Register fails from now on
        store.revoke("sim-bs-3", now=1, kind=CredentialKind.SERVER, tenant_id="default")
        assert srv.context is not None
        dtls_transport(srv.context).evict_identity(old_identity.encode())
        dev.reboot()
        await dev.wait_for(lambda d: d.counters.bootstraps == 2 and d.state is DeviceState.REGISTERED, 60)
        assert dev.counters.bootstrap_fallbacks == 1
        new_identity, _ = server_credentials(dev)
        assert new_identity != old_identity
        assert srv.registrations is not None
        reg = srv.registrations.by_endpoint("sim-bs-3", tenant_id="default")
        assert reg is not None and reg.identity == new_identity


async def test_a_lwm2m_1_2_device_takes_the_bootstrap_pack(tmp_path: Path, store: MemoryCredentialStore) -> None:
    async with servers(tmp_path, store) as (srv, bs), \
            started(factory(store, bs, "sim-bs-pack"), lwm2m_version="1.2") as dev:
        assert bs.stats.packs == 1 and bs.stats.started == 0  # no POST /bs, no Finish
        assert dev.counters.bootstraps == 1
        identity, key = server_credentials(dev)
        assert store.verify(identity, key)
        assert srv.registrations is not None
        reg = srv.registrations.by_endpoint("sim-bs-pack", tenant_id="default")
        assert reg is not None and reg.identity == identity and reg.lwm2m_version == "1.2"


async def test_a_busy_bootstrap_server_is_waited_out(tmp_path: Path, store: MemoryCredentialStore) -> None:
    """With /bs limited to one request per two seconds per source address, three devices on one address get 5.03 with
    Max-Age, wait it out and all bootstrap (a 5.03 is not counted as a failure)."""
    async with servers(tmp_path, store, rate=0.5, burst=1) as (srv, bs):
        records = [factory(store, bs, f"sim-busy-{i}") for i in range(3)]
        fleet = Fleet.from_credentials(records, drift_interval=0)
        try:
            status = await fleet.start(timeout_per_device=30)
            assert status.registered == 3, status
        finally:
            await fleet.stop()
        attempts = sum(d.counters.bootstrap_attempts for d in fleet.devices)
        assert attempts > 3 and all(d.counters.bootstrap_failures == 0 for d in fleet.devices)
        assert all(d.counters.bootstraps == 1 for d in fleet.devices)
        assert srv.registrations is not None and all(
            srv.registrations.by_endpoint(f"sim-busy-{i}", tenant_id="default") is None
            for i in range(3))  # de-registered on stop

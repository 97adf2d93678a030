"""Fault injection in the simulated devices, seen the way an operator sees it: through the server's firmware service.

Real server (lwm2m_server.server.Lwm2mServer) and real devices on 127.0.0.1 with ephemeral ports, real SUIT
envelopes, real DTLS where it says so. Every firmware fault fires once: the next update succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.credentials import MemoryCredentialStore
from bootstrap.server import BootstrapServer, BootstrapSettings
from bootstrap.vault import Vault
from client_sim.credentials import FactoryCredentials
from client_sim.device import DeviceState, SimulatedDevice
from client_sim.firmware import Faults, FirmwareOptions
from client_sim.fleet import Fleet
from client_sim.network import Link, LinkConditions
from firmware_object.errors import State, UpdateResult
from firmware_object.suit.envelope import build_envelope
from firmware_object.suit.keys import generate_private_key
from firmware_object.suit.manifest import ReleaseManifest
from lwm2m_server.core.operations import ReadRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.fota.service import Method, UpdateJob
from lwm2m_server.server import Lwm2mServer
from tests.harness import eventually, running_server

VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
OEM = generate_private_key("es256")
IMAGE = bytes(range(256)) * 12  # 3 KiB: a few blocks each way


def package(image: bytes = IMAGE, *, seq: int = 2, version: str = "2.0.0") -> bytes:
    manifest = ReleaseManifest(sequence_number=seq, vendor_id=VENDOR, class_id=CLASS,
                               image_digest=hashlib.sha256(image).digest(), image_size=len(image), version=version)
    return build_envelope(manifest, [OEM], image=image)


def options(**overrides: Any) -> FirmwareOptions:
    values: dict[str, Any] = {"trust_anchors": (OEM.public_key(),), "vendor_id": VENDOR, "class_id": CLASS,
                              "version": "1.0.0", "sequence_number": 1}
    values.update(overrides)
    return FirmwareOptions(**values)


@contextlib.asynccontextmanager
async def devices(*made: SimulatedDevice, timeout: float = 20) -> AsyncIterator[tuple[SimulatedDevice, ...]]:
    """Start ``made`` and wait until each is registered (on a lossy link the first Register may need a retry)."""
    try:
        await asyncio.gather(*(d.start(wait=False) for d in made))
        await asyncio.gather(*(d.wait_for(lambda d: d.state is DeviceState.REGISTERED, timeout) for d in made))
        yield made
    finally:
        await asyncio.gather(*(d.stop(timeout=2) for d in made))


def device(srv: Lwm2mServer, endpoint: str, faults: Faults | None = None, **kw: Any) -> SimulatedDevice:
    kw.setdefault("drift_interval", 0)
    kw.setdefault("reboot_delay", 0.05)
    return SimulatedDevice(endpoint, kw.pop("uri", srv.coap_uri), firmware=options(), faults=faults, **kw)


def dtls_device(srv: Lwm2mServer, store: MemoryCredentialStore, endpoint: str, faults: Faults) -> SimulatedDevice:
    """A device with a server key of its own in ``store``, registering over coaps:// through ``faults``."""
    credential, psk = store.issue(endpoint, "server", now=0, tenant_id="default")
    return device(srv, endpoint, faults, uri=srv.coaps_uri, psk_identity=credential.identity, psk=bytes(psk))


async def update(srv: Lwm2mServer, endpoint: str, data: bytes, method: Method, timeout: float = 25) -> UpdateJob:
    assert srv.firmware is not None
    return await srv.firmware.update(endpoint, data, method=method, timeout=timeout, tenant_id="default")


async def read(srv: Lwm2mServer, endpoint: str, *ids: int) -> object:
    assert srv.management is not None
    return (await srv.management.send(endpoint, ReadRequest(LwM2mPath.of(*ids)),
                                      tenant_id="default")).content.value  # type: ignore[union-attr]


def phases(job: UpdateJob) -> list[str]:
    return [step.phase for step in job.history]


# ---------------------------------------------------------------------------------------------- the link itself


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.floats(0.0, 1.0), n=st.integers(1, 200))
def test_a_seeded_link_drops_the_same_datagrams_every_run(seed: int, loss: float, n: int) -> None:
    def run() -> list[bool]:
        link, passed = Link(LinkConditions(loss=loss), seed=seed), []
        for _ in range(n):
            before = link.counters.dropped_out
            link._outgoing(lambda: None, lambda: False)
            passed.append(link.counters.dropped_out == before)
        return passed

    first = run()
    assert first == run()
    if loss == 0.0:
        assert all(first)
    if loss == 1.0:
        assert not any(first)


def test_faults_are_validated_and_overlay() -> None:
    for bad in ({"loss": 1.5}, {"delay": -1}, {"offline_at": 0}, {"offline_for": -1}):
        with pytest.raises(ValueError):
            Faults(**bad)
    with pytest.raises(ValueError, match="loss is a probability"):
        options(loss=-0.1)
    merged = Faults(loss=0.1, fail_boot=True) | Faults(corrupt_download=True)
    assert (merged.loss, merged.fail_boot, merged.corrupt_download) == (0.1, True, True)
    opts = options(fail_boot=True).with_faults(Faults(loss=0.2, seed=7))
    assert (opts.fail_boot, opts.loss, opts.link_seed) == (False, 0.2, 7)
    assert opts.faults == Faults(loss=0.2, seed=7)
    assert not Faults().needs_link and Faults(offline_at=10).needs_link and Faults(jitter=0.01).needs_link


async def test_a_fleet_gives_chosen_devices_chosen_faults() -> None:
    plan = {"f-1": Faults(corrupt_download=True)}
    fleet = Fleet("coap://127.0.0.1:1", 3, prefix="f-", firmware=options(fail_boot=True), faults=plan)
    assert [d.faults for d in fleet.devices] == [Faults(fail_boot=True), Faults(corrupt_download=True),
                                                 Faults(fail_boot=True)]
    fleet = Fleet("coap://127.0.0.1:1", 3, prefix="f-", firmware=options(),
                  faults=lambda i, ep: Faults(loss=0.1, seed=i) if i < 2 else None)
    assert [d.link is not None for d in fleet.devices] == [True, True, False]
    assert fleet.devices[1].faults.seed == 1 and fleet.status.total == 3


# ---------------------------------------------------------------------------------------------- loss and delay


@pytest.mark.slow
@pytest.mark.timeout(200)
async def test_ten_percent_loss_over_dtls_handshakes_registers_and_updates(tmp_path: Path) -> None:
    """Each lost datagram costs a retransmission (CoAP's RFC 7252 timers: 2 to 3 s, doubling, one exchange at a time
    per peer; tinydtls's for handshake flights), so this takes some 20 to 60 s however small the package: run by
    `./dev test --slow` (and .ci/run), with the other long lossy runs. Plain CoAP under loss is exercised at scale by
    tests/integration/test_campaigns.py."""
    store = MemoryCredentialStore(Vault.generate())
    async with running_server(tmp_path, coaps_port=0, credentials=store) as srv:
        made = [dtls_device(srv, store, f"dtls-lossy-{i}", Faults(loss=0.1, delay=0.002, seed=100 + i))
                for i in range(2)]
        async with devices(*made, timeout=60):
            assert all(d.secure for d in made)
            v2 = package(IMAGE[:1500])
            jobs = await asyncio.wait_for(asyncio.gather(
                update(srv, made[0].endpoint, v2, Method.PUSH, timeout=90),
                update(srv, made[1].endpoint, v2, Method.PULL, timeout=90)), 100)
            assert all(j.succeeded for j in jobs), [j.last for j in jobs]
            assert [j.last.version for j in jobs] == ["2.0.0", "2.0.0"]
            assert all(d.firmware is not None and d.firmware.last_package == v2 for d in made)
            counters = [d.link.counters for d in made if d.link is not None]
            assert sum(c.dropped_out for c in counters) > 0 and sum(c.dropped_in for c in counters) > 0
            assert sum(c.retransmissions for c in counters) > 0  # the device's retransmissions recovered
            assert sum(c.duplicates for c in counters) > 0  # and the server's
            assert all(c.delayed > 0 for c in counters)


async def test_jitter_reorders_handshake_flights_and_no_dtls_handshake_fails(tmp_path: Path) -> None:
    """2 +- 2 ms on every datagram a device sends reorders its third flight (ClientKeyExchange, ChangeCipherSpec and
    Finished leave in three datagrams at once); tinydtls would drop the out-of-order ones and fail the handshake
    (and the address would count toward a lockout), so the server's transport gives them to it in record order.
    (The other way, a tinydtls client fails on the server's reordered ChangeCipherSpec and Finished: that is the
    device's stack, and is not fixed here.)"""
    store = MemoryCredentialStore(Vault.generate())
    async with running_server(tmp_path, coaps_port=0, credentials=store) as srv:
        made = [dtls_device(srv, store, f"jitter-{i}", Faults(delay=0.002, jitter=0.002, seed=300 + i))
                for i in range(6)]
        for dev in made:
            assert dev.link is not None
            dev.link.conditions = LinkConditions(delay=0.002, jitter=0.002, delayed="out")
        async with devices(*made, timeout=30):
            assert srv.dtls is not None
            # one handshake per device, none given up and started again from a new port
            assert (srv.dtls.handshakes_started, srv.dtls.handshakes_completed, srv.dtls.handshakes_failed) == (6, 6, 0)
            assert all(d.counters.registers == 1 and d.counters.failed_requests == 0 for d in made)
            assert all(d.link is not None and d.link.counters.delayed > 0 for d in made)
            # ClientHello twice (the cookie exchange), ClientKeyExchange, ChangeCipherSpec, Finished, Register: no
            # flight sent again (without the reordering, 9 to 13 here: tinydtls's retransmissions)
            assert [d.link.counters.sent for d in made] == [6] * 6  # type: ignore[union-attr]


async def test_delay_and_jitter_on_every_datagram_and_an_update_still_goes_through(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        dev = device(srv, "jittery", Faults(delay=0.01, jitter=0.01, seed=7))
        async with devices(dev):
            v2 = package(IMAGE[:5000])
            pulled = await update(srv, "jittery", v2, Method.PULL)
            assert pulled.succeeded, pulled.last
            assert dev.firmware is not None and dev.firmware.last_package == v2
            assert dev.link is not None and dev.link.counters.delayed > 0
            assert dev.link.counters.dropped_in == dev.link.counters.dropped_out == 0


@pytest.mark.timeout(150)
async def test_ten_percent_loss_on_the_bootstrap_session_too(tmp_path: Path) -> None:
    store = MemoryCredentialStore(Vault.generate())
    async with running_server(tmp_path, coaps_port=0, credentials=store) as srv:
        bs = BootstrapServer(BootstrapSettings(server_uri=srv.coaps_uri, coaps_port=0), store)
        await bs.start()
        try:
            made = []
            for i in range(1):
                credential, psk = store.issue(f"bs-lossy-{i}", "bootstrap", now=0, tenant_id="default")
                creds = FactoryCredentials(f"bs-lossy-{i}", credential.identity, bytes(psk), bs.coaps_uri)
                made.append(SimulatedDevice.from_factory(creds, drift_interval=0, bootstrap_timeout=20,
                                                         faults=Faults(loss=0.1, seed=200 + i)))
            async with devices(*made, timeout=90):
                assert all(d.counters.bootstraps >= 1 and d.state is DeviceState.REGISTERED for d in made)
                assert await read(srv, made[0].endpoint, 3, 0, 0) == "SCRATCh"
        finally:
            await bs.stop()


# ---------------------------------------------------------------------------------------------- outages and resume


async def test_offline_mid_pull_then_the_retry_resumes_from_the_kept_blocks(tmp_path: Path) -> None:
    data = package(os.urandom(8000))
    async with running_server(tmp_path, request_timeout=5.0) as srv:
        dev = device(srv, "off-pull", Faults(offline_at=3000, offline_for=1.0))
        async with devices(dev):
            job = await update(srv, "off-pull", data, Method.PULL)
            assert job.succeeded, job.last
            assert any("connection lost" in step.message for step in job.history), [s.message for s in job.history]
            fw = dev.firmware
            assert fw is not None and fw.last_package == data and fw.version == "2.0.0"
            # registered: at the start, after the outage, after the reboot into 2.0.0
            assert dev.counters.outages == 1 and dev.counters.registers == 3 and dev.counters.deregisters == 0
            assert fw.resumes == 1 and fw.resumed_bytes == 3072  # three whole 1 KiB blocks had arrived
            assert fw.fetched_bytes == len(data)  # nothing was fetched twice
            assert fw.partial is None


async def test_offline_mid_push_reports_connection_lost_and_the_next_push_succeeds(tmp_path: Path) -> None:
    data = package(os.urandom(8000))
    async with running_server(tmp_path, request_timeout=3.0) as srv:
        dev = device(srv, "off-push", Faults(offline_at=2048, offline_for=0.5))
        async with devices(dev):
            first = await update(srv, "off-push", data, Method.PUSH)
            assert not first.succeeded
            await dev.wait_for(lambda d: d.counters.registers == 2 and d.state is DeviceState.REGISTERED, 10)
            assert await read(srv, "off-push", 5, 0, 3) == State.IDLE
            assert await read(srv, "off-push", 5, 0, 5) == UpdateResult.CONNECTION_LOST
            assert dev.counters.outages == 1 and dev.counters.deregisters == 0
            second = await update(srv, "off-push", data, Method.PUSH)
            assert second.succeeded, second.last
            assert second.last.version == "2.0.0"


async def test_lost_connection_keeps_the_blocks_and_a_changed_package_starts_over(tmp_path: Path) -> None:
    data, other = package(os.urandom(6000)), package(os.urandom(6000), seq=3, version="3.0.0")
    async with running_server(tmp_path) as srv:
        dev = device(srv, "lose-pull", Faults(lose_connection_at=2000))
        async with devices(dev):
            assert srv.firmware is not None
            srv.firmware.delivery_attempts = 1  # the operator sees the loss and starts another package
            first = await update(srv, "lose-pull", data, Method.PULL)
            assert not first.succeeded and first.last.result == UpdateResult.CONNECTION_LOST
            fw = dev.firmware
            assert fw is not None and fw.partial is not None and len(fw.partial.data) == 2048
            second = await update(srv, "lose-pull", other, Method.PULL)  # another ETag: no resume
            assert second.succeeded, second.last
            assert fw.resumes == 0 and fw.resumed_bytes == 0 and fw.last_package == other
            assert fw.fetched_bytes == 2048 + len(other)


# ---------------------------------------------------------------------------------------------- firmware faults


@pytest.mark.parametrize("method", [Method.PUSH, Method.PULL])
async def test_a_corrupted_download_ends_in_result_5_once(tmp_path: Path, method: Method) -> None:
    data = package()
    async with running_server(tmp_path) as srv:
        dev = device(srv, "corrupt", Faults(corrupt_download=True))
        async with devices(dev):
            first = await update(srv, "corrupt", data, method)
            assert not first.succeeded
            assert first.last.result == UpdateResult.INTEGRITY_CHECK_FAILURE, first.last
            assert dev.firmware is not None and dev.firmware.corrupted == 1 and dev.firmware.version == "1.0.0"
            assert dev.counters.reboots == 0
            second = await update(srv, "corrupt", data, method)
            assert second.succeeded and second.last.version == "2.0.0", second.last


async def test_fail_boot_rolls_back_reports_result_8_and_the_old_version_once(tmp_path: Path) -> None:
    data = package()
    async with running_server(tmp_path) as srv:
        dev = device(srv, "fail-boot", Faults(fail_boot=True))
        async with devices(dev):
            first = await update(srv, "fail-boot", data, Method.PUSH)
            assert not first.succeeded
            assert (first.last.result, first.last.state, first.last.version) == (
                UpdateResult.UPDATE_FAILED, State.IDLE, "1.0.0")
            assert "rebooted" in phases(first)  # it registered again after the reboot
            assert await read(srv, "fail-boot", 3, 0, 3) == "1.0.0"
            assert dev.firmware is not None and dev.firmware.rollbacks == 1 and dev.counters.registers == 2
            second = await update(srv, "fail-boot", data, Method.PUSH)
            assert second.succeeded and second.last.version == "2.0.0", second.last


async def test_power_loss_during_install_boots_the_old_slot_and_says_so_once(tmp_path: Path) -> None:
    data = package()
    async with running_server(tmp_path) as srv:
        dev = device(srv, "power", Faults(power_loss_during_install=True), reboot_delay=0.3)
        async with devices(dev):
            first = await update(srv, "power", data, Method.PULL)
            assert not first.succeeded
            assert (first.last.result, first.last.state, first.last.version) == (
                UpdateResult.UPDATE_FAILED, State.IDLE, "1.0.0")
            assert "rebooted" in phases(first)
            fw = dev.firmware
            assert fw is not None and fw.interrupted_installs == 1 and fw.rollbacks == 0
            assert fw.slots[1 - fw.active].version == ""  # the incomplete slot was discarded
            assert dev.counters.outages == 1 and dev.counters.reboots == 1 and dev.counters.deregisters == 0
            assert dev.counters.registers == 2  # a fresh Register after the power came back
            second = await update(srv, "power", data, Method.PULL)
            assert second.succeeded and second.last.version == "2.0.0", second.last


async def test_faults_for_a_few_devices_only_through_the_fleet(tmp_path: Path) -> None:
    data = package()
    async with running_server(tmp_path) as srv:
        fleet = Fleet(srv.coap_uri, 3, prefix="fl-", firmware=options(), drift_interval=0, reboot_delay=0.05,
                      faults=lambda i, ep: Faults(fail_boot=True) if i == 0 else None)
        try:
            status = await asyncio.wait_for(fleet.start(timeout_per_device=10), 20)
            assert status.registered == 3
            jobs = await asyncio.gather(*(update(srv, f"fl-{i}", data, Method.PUSH) for i in range(3)))
            assert [j.succeeded for j in jobs] == [False, True, True], [j.last for j in jobs]
            assert jobs[0].last.result == UpdateResult.UPDATE_FAILED and jobs[0].last.version == "1.0.0"
        finally:
            await fleet.stop(timeout=2)
        assert fleet.status.stopped == 3


def test_random_is_not_shared_between_links() -> None:
    random.seed(1)
    a = Link(LinkConditions(loss=0.5), seed="dev-a")
    random.random()
    b = Link(LinkConditions(loss=0.5), seed="dev-a")
    assert [a._rng.random() for _ in range(5)] == [b._rng.random() for _ in range(5)]


async def test_a_push_whose_block_is_lost_sends_it_again(tmp_path: Path) -> None:
    """Every block of a push is a raw CON of the server (lwm2m_server.coap.raw_exchange) over plain CoAP: the link
    loses everything once the push has begun, until the device has missed a block; the server sends that block
    again (after ACK_TIMEOUT) and the device gets the whole package (it verifies it and reports Downloaded)."""
    data = package(os.urandom(3000))
    async with running_server(tmp_path, request_timeout=60.0) as srv:
        dev = device(srv, "lossy-push", Faults(loss=0.01, seed=1))  # a link the test can cut
        assert dev.link is not None and dev.firmware is not None
        dev.link.conditions = LinkConditions()
        async with devices(dev):
            assert srv.management is not None
            reg = srv.management.registration("lossy-push", tenant_id="default")
            dropped = dev.link.counters.dropped_in
            dev.link.conditions = LinkConditions(loss=1.0)
            push = asyncio.create_task(srv.management.sender.push(reg, data, total_timeout=60))
            await eventually(lambda: dev.link.counters.dropped_in > dropped, timeout=10)  # type: ignore[union-attr]
            dev.link.conditions = LinkConditions()
            done = await push
            assert done.done and done.sent == len(data) and done.blocks == -(-len(data) // 1024)
            assert dev.firmware.last_package == data
            assert await read(srv, "lossy-push", 5, 0, 3) == State.DOWNLOADED

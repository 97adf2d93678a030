"""Campaigns through an LwM2M gateway, end to end on 127.0.0.1: real sockets, real SQLite, the real server, a
simulated gateway with its end devices on simulated local links, and direct devices beside it.

- one gateway with 50 end devices and 50 direct devices in ONE campaign with a 256 KiB image: every device is
  updated; the report says which way each went; the server-to-gateway link carries the package once (plus protocol
  overhead), not 50 times;
- a misbehaving gateway hands one end device a tampered copy: that device refuses it itself (Update Result 5),
  installs nothing, and the report says so; the others are updated;
- a gateway that goes offline mid-campaign pauses its end devices' jobs (no try spent) and they finish once it is back.

Devices speak plain CoAP here (see tests/integration/test_campaigns.py for why); the gateway's trust model does not
depend on it: each end device verifies the SUIT envelope against its own trust anchors.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bootstrap.vault import Vault
from client_sim.firmware import FirmwareOptions
from client_sim.fleet import Fleet
from client_sim.gateway import Gateway, LocalLinkConditions
from firmware_object.campaign import Policy
from firmware_object.errors import UpdateResult
from firmware_object.suit.keys import load_public_key
from lwm2m_server.fota import attestation
from lwm2m_server.server import Lwm2mServer
from tests.harness import eventually, running_server
from tests.integration.test_campaigns import campaign_server, run_to_end, trust_anchor

IMAGE = bytes((i * 7 + 3) % 256 for i in range(256 * 1024))  # 256 KiB


def options(srv: Lwm2mServer, release: Any) -> FirmwareOptions:
    return FirmwareOptions(trust_anchors=(trust_anchor(srv),), vendor_id=release.vendor_id,
                           class_id=release.class_id, version="1.0.0", flash_size=1 << 20)


async def registered(srv: Lwm2mServer, endpoints: list[str], timeout: float = 60) -> None:
    await eventually(lambda: all(srv.registrations.by_endpoint(ep, tenant_id="default") is not None
                                 for ep in endpoints), timeout=timeout)


def report_targets(srv: Lwm2mServer, cid: str) -> dict[str, dict[str, Any]]:
    """The targets of the campaign's signed report, after checking its signature."""
    assert srv.campaigns is not None
    report, cose = srv.campaigns.report(cid, tenant_id="default")
    key = load_public_key(srv.campaigns.attestation_public_pem(tenant_id="default").encode())
    assert attestation.verify_report(cose, key) == report
    return {t["endpoint"]: t for t in report["targets"]}


async def run_campaign(srv: Lwm2mServer, release: Any, targets: list[str], timeout: float) -> dict[str, Any]:
    assert srv.campaigns is not None
    created = await srv.campaigns.create([release.id], tenant_id="default", targets=targets,
                                         policy=Policy(canary=1, waves=1, max_parallel=len(targets)))
    await srv.campaigns.start_campaign(created["id"], tenant_id="default")
    return await run_to_end(srv, created["id"], timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_fifty_end_devices_and_fifty_direct_devices_one_package_over_the_gateway_link(tmp_path: Path) -> None:
    async with campaign_server(tmp_path) as (srv, _store):
        assert srv.campaigns is not None
        release = srv.campaigns.releases.create([("app.bin", IMAGE)], vendor="acme.example", class_name="sensor",
                                                version="2.0.0", now=time.time(), tenant_id="default")
        fw = options(srv, release)
        gateway = Gateway("gw-1", srv.coap_uri, children=50, child_firmware=fw, lifetime=600, drift_interval=0,
                          reboot_delay=0.05, local_link=LocalLinkConditions(latency=0.02, bandwidth=1_000_000))
        fleet = Fleet(srv.coap_uri, 50, prefix="direct-", lifetime=600, concurrency=50, drift_interval=0,
                      options_for=lambda i: {"firmware": fw})
        children = [c.endpoint for c in gateway.children]
        direct = [d.endpoint for d in fleet.devices]
        try:
            assert await gateway.start(timeout=30)
            await asyncio.wait_for(fleet.start(timeout_per_device=60), 120)
            await registered(srv, children + direct)
            child = srv.registrations.by_endpoint("gw-1-c7", tenant_id="default")
            gw_reg = srv.registrations.by_endpoint("gw-1", tenant_id="default")
            assert child is not None and gw_reg is not None and child.parent_id == gw_reg.id
            before = gateway.stats()

            status = await run_campaign(srv, release, direct + children, timeout=200)
            cid = status["id"]
            after = gateway.stats()

            states = {j["endpoint"]: j["state"] for j in status["jobs"]}
            assert states == dict.fromkeys(direct + children, "succeeded"), status["jobs"]
            assert all(c.firmware is not None and c.firmware.version == "2.0.0" for c in gateway.children)
            targets = report_targets(srv, cid)
            assert {targets[ep]["path"] for ep in direct} == {"direct"}
            assert {targets[ep]["path"] for ep in children} == {"via gw-1"}
            assert {targets[ep]["version_after"] for ep in direct + children} == {"2.0.0"}

            size = after.downloaded_bytes - before.downloaded_bytes  # the signed package, as the gateway got it
            bytes_in = after.uplink_bytes_in - before.uplink_bytes_in
            bytes_out = after.uplink_bytes_out - before.uplink_bytes_out
            datagrams_in = after.uplink_datagrams_in - before.uplink_datagrams_in
            print(f"\nserver -> gateway link: {bytes_in:,} bytes in {datagrams_in:,} datagrams; gateway -> server: "
                  f"{bytes_out:,} bytes in "
                  f"{after.uplink_datagrams_out - before.uplink_datagrams_out:,} datagrams; package {size:,} bytes; "
                  f"cache: {after.cache_misses} miss(es), {after.cache_hits} hit(s), {after.downloads} download(s); "
                  f"local links: {after.local_bytes - before.local_bytes:,} bytes")
            assert after.downloads - before.downloads == 1 and after.cache_misses - before.cache_misses == 1
            assert len(IMAGE) < size < len(IMAGE) + 4096
            assert size <= bytes_in < 1.5 * size  # one package plus the CoAP, /5 reads and notifications of 50 devices
            assert after.local_bytes - before.local_bytes >= 50 * size  # every end device got its own copy
        finally:
            await fleet.stop()
            await gateway.stop()



@pytest.mark.timeout(120)
async def test_a_tampered_copy_is_refused_by_its_end_device_and_reported(tmp_path: Path) -> None:
    async with campaign_server(tmp_path) as (srv, _store):
        assert srv.campaigns is not None
        release = srv.campaigns.releases.create([("app.bin", IMAGE[:64 * 1024])], vendor="acme.example",
                                                class_name="sensor", version="2.0.0", now=time.time(),
                                                tenant_id="default")
        gateway = Gateway("gw-2", srv.coap_uri, children=6, child_firmware=options(srv, release), lifetime=600,
                          drift_interval=0, reboot_delay=0.05, tamper={"gw-2-c3"})
        children = [c.endpoint for c in gateway.children]
        try:
            assert await gateway.start(timeout=30)
            await registered(srv, children)
            status = await run_campaign(srv, release, children, timeout=100)
            jobs = {j["endpoint"]: j for j in status["jobs"]}
            bad = jobs.pop("gw-2-c3")
            assert bad["state"] == "failed" and bad["update_result"] == UpdateResult.INTEGRITY_CHECK_FAILURE, bad
            assert bad["attempts"] == 1  # an integrity failure is never retried
            assert {j["state"] for j in jobs.values()} == {"succeeded"}
            tampered = gateway.child("gw-2-c3")
            assert tampered.firmware is not None and tampered.firmware.version == "1.0.0"
            assert tampered.firmware.rollbacks == 0 and tampered.firmware.boots == 0  # nothing installed
            targets = report_targets(srv, status["id"])
            assert targets["gw-2-c3"]["state"] == "failed" and targets["gw-2-c3"]["update_result"] == 5
            assert targets["gw-2-c3"]["path"] == "via gw-2"
            assert all(targets[ep]["version_after"] == "2.0.0" for ep in jobs)
            assert gateway.stats().tampered >= 1 and gateway.stats().downloads == 1
        finally:
            await gateway.stop()


@pytest.mark.timeout(120)
async def test_a_gateway_gone_offline_pauses_its_end_devices_jobs(tmp_path: Path) -> None:
    """The gateway vanishes (no De-register) just before the campaign starts, so the server still believes it is
    there: each end device's try finds no answer, the gateway does not answer a probe either, and every job is
    paused (pending, no try spent) instead of failed; when the gateway is back, they all finish."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    vault = Vault.open(data / "vault.key")
    async with running_server(data, vault=vault, campaign_tick=0.2, request_timeout=3.0) as srv:
        assert srv.campaigns is not None
        release = srv.campaigns.releases.create([("app.bin", IMAGE[:64 * 1024])], vendor="acme.example",
                                                class_name="sensor", version="2.0.0", now=time.time(),
                                                tenant_id="default")
        gateway = Gateway("gw-3", srv.coap_uri, children=4, child_firmware=options(srv, release), lifetime=600,
                          drift_interval=0, reboot_delay=0.05)
        children = [c.endpoint for c in gateway.children]
        paused: set[str] = set()
        srv.events.subscribe(lambda e: paused.add(e.endpoint or "") if e.data.get("state") == "paused" else None)
        try:
            assert await gateway.start(timeout=30)
            await registered(srv, children)
            gateway.go_offline(15.0)
            created = await srv.campaigns.create([release.id], tenant_id="default", targets=children,
                                                 policy=Policy(canary=4, waves=1, max_parallel=4))
            await srv.campaigns.start_campaign(created["id"], tenant_id="default")
            await eventually(lambda: paused == set(children), timeout=30)
            jobs = srv.campaigns.status(created["id"], tenant_id="default", jobs=True)["jobs"]
            assert {j["state"] for j in jobs} == {"pending"}, jobs
            assert all(j["attempts"] == 0 and "paused: its gateway gw-3 is offline" in j["reason"] for j in jobs)
            status = await run_to_end(srv, created["id"], timeout=90)  # the gateway comes back by itself
            assert {j["state"] for j in status["jobs"]} == {"succeeded"}, status["jobs"]
            assert {j["attempts"] for j in status["jobs"]} == {1}
            assert all(c.firmware is not None and c.firmware.version == "2.0.0" for c in gateway.children)
        finally:
            await gateway.stop()

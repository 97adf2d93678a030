"""Campaigns over the firmware service over the in-memory downlink (tests/downlink_simulator.py).

Memory stores for campaigns, releases and keys, a real vault and blob folder, real SUIT releases, real simulated
devices: a staged rollout over a handful of devices runs in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import Any

from bootstrap.vault import Vault
from client_sim.firmware import FirmwareOptions
from firmware_object.campaign import Policy
from firmware_object.errors import UpdateResult
from firmware_object.suit.keys import PublicKey, load_public_key
from lwm2m_server.fota import attestation
from lwm2m_server.fota.campaigns import CAMPAIGN_FINISHED, CampaignService
from lwm2m_server.fota.releases import FileBlobStore, Release, Releases, SigningKeys
from lwm2m_server.fota.service import FirmwareService
from lwm2m_server.management import DeviceManagement
from lwm2m_server.storage.campaign_store import MemoryCampaignStore
from lwm2m_server.storage.release_store import MemoryKeyStore, MemoryReleaseStore
from tests.downlink_simulator import SimulatedFleet

TENANT = "default"
IMAGE = bytes(range(256)) * 16


class Campaigns:
    """Releases and keys in memory, a fleet of ``count`` devices trusting the tenant's release key, and the
    campaign service over their firmware service."""

    def __init__(self, tmp_path: Path, count: int, fail_boot: Collection[str]) -> None:
        self.keys = SigningKeys(MemoryKeyStore(), Vault.open(tmp_path / "vault.key"))
        self.releases = Releases(MemoryReleaseStore(), FileBlobStore(tmp_path / "blobs"), self.keys)
        self.v2 = self.release("2.0.0")
        anchor = self.keys.get_or_create("release", "release", tenant_id=TENANT, now=time.time()).public_key()

        def options(_i: int, endpoint: str) -> dict[str, Any]:
            return {"firmware": FirmwareOptions(trust_anchors=(anchor,), vendor_id=self.v2.vendor_id,
                                                class_id=self.v2.class_id, version="1.0.0",
                                                fail_boot=endpoint in fail_boot)}

        self.fleet = SimulatedFleet(count, options=options)
        self.management = DeviceManagement(self.fleet.registrations, self.fleet.downlink, clock=time.time)
        self.firmware = FirmwareService(self.management, self.fleet.files, self.fleet.events,
                                        file_base_uri="coap://files.invalid", poll_interval=0.01)
        self.service = CampaignService(MemoryCampaignStore(), self.firmware, self.management, self.fleet.events,
                                       self.releases, self.keys, tick=0.01, job_timeout=10.0)

    def release(self, version: str, key: str | None = None) -> Release:
        return self.releases.create([("app.bin", IMAGE)], vendor="acme.example", class_name="sensor",
                                    version=version, key=key, now=time.time(), tenant_id=TENANT)

    async def run(self, release: Release, policy: Policy, targets: list[str] | None = None) -> dict[str, Any]:
        """Create and start a campaign of ``release``; its final status, jobs included, once it has finished."""
        with self.fleet.events.queue(CAMPAIGN_FINISHED) as finished:
            status = await self.service.create([release.id], tenant_id=TENANT, policy=policy,
                                               targets=targets if targets is not None else self.fleet.endpoints)
            cid = status["id"]
            await self.service.start_campaign(cid, tenant_id=TENANT)

            async def ended() -> None:
                async for event in finished:
                    if event.data.get("campaign") == cid:
                        return

            await asyncio.wait_for(ended(), 10)
        return self.service.status(cid, tenant_id=TENANT, jobs=True)

    def attestation_key(self) -> PublicKey:
        return load_public_key(self.service.attestation_public_pem(tenant_id=TENANT).encode())


@contextlib.asynccontextmanager
async def campaigns(tmp_path: Path, count: int, fail_boot: Collection[str] = ()) -> AsyncIterator[Campaigns]:
    c = Campaigns(tmp_path, count, fail_boot)
    await c.service.start()
    try:
        yield c
    finally:
        await c.service.close()
        await c.firmware.close()
        await c.fleet.close()


async def test_staged_campaign_completes_and_reports_a_rollback(tmp_path: Path) -> None:
    async with campaigns(tmp_path, 6, fail_boot={"dev-5"}) as c:
        final = await c.run(c.v2, Policy(canary=1, waves=2, max_parallel=4, success_threshold=0.5))
        assert final["state"] == "completed", final["reason"]
        assert [w["opened_at"] is not None for w in final["waves"]] == [True] * len(final["waves"])
        jobs = {j["endpoint"]: j for j in final["jobs"]}
        assert jobs["dev-5"]["state"] == "rolled-back", jobs["dev-5"]
        assert (jobs["dev-5"]["version_after"], jobs["dev-5"]["update_result"]) == ("1.0.0",
                                                                                   UpdateResult.UPDATE_FAILED)
        for ep in ("dev-0", "dev-1", "dev-2", "dev-3", "dev-4"):
            assert jobs[ep]["state"] == "succeeded", jobs[ep]
            assert (jobs[ep]["version_before"], jobs[ep]["version_after"]) == ("1.0.0", "2.0.0")
        versions = {ep: d.firmware.version for ep, d in c.fleet.devices.items()}  # type: ignore[union-attr]
        assert versions == {**{f"dev-{i}": "2.0.0" for i in range(5)}, "dev-5": "1.0.0"}
        report, cose = c.service.report(final["id"], tenant_id=TENANT)
        assert attestation.verify_report(cose, c.attestation_key()) == report
        assert report["summary"]["succeeded"] == 5 and report["summary"]["rolled-back"] == 1


async def test_release_signed_by_an_untrusted_key_halts_at_the_canary(tmp_path: Path) -> None:
    async with campaigns(tmp_path, 5) as c:
        c.keys.create("rogue", "release", tenant_id=TENANT, now=time.time())
        rogue = c.release("3.0.0", key="rogue")
        final = await c.run(rogue, Policy(canary=2, waves=2, max_parallel=5))
        assert final["state"] == "halted", final
        canary = {j["endpoint"] for j in final["jobs"] if j["wave"] == 0}
        assert len(canary) == 2
        for job in final["jobs"]:
            if job["endpoint"] in canary:
                assert job["state"] == "failed" and job["update_result"] == UpdateResult.INTEGRITY_CHECK_FAILURE, job
            else:
                assert job["state"] == "skipped" and "halted" in job["reason"], job
        assert all(d.firmware.version == "1.0.0" for d in c.fleet.devices.values())  # type: ignore[union-attr]
        assert all(d.counters.reboots == 0 for d in c.fleet.devices.values())

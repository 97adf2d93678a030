"""A campaign whose targets include Eclipse Leshan's client demo: it has no Firmware Update object (/5), so the
campaign reports it as skipped with that reason and updates the simulated devices beside it; the report verifies.

Needs LESHAN_CLIENT_DEMO; skipped, with the reason, otherwise.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bootstrap.vault import Vault
from client_sim.device import SimulatedDevice
from client_sim.firmware import FirmwareOptions
from firmware_object.campaign import Policy
from firmware_object.suit.keys import load_public_key
from lwm2m_server.fota import attestation
from tests.harness import eventually
from tests.interop.conftest import LeshanClientFactory
from tests.interop.leshan import MODEL, our_server

pytestmark = pytest.mark.interop


async def test_a_leshan_client_without_object_5_is_skipped_and_the_rest_updated(
        tmp_path: Path, leshan_client: LeshanClientFactory) -> None:
    async with our_server(tmp_path / "data", vault=Vault.generate(), campaign_tick=0.2) as srv:
        assert srv.campaigns is not None and srv.registrations is not None
        campaigns = srv.campaigns
        release = campaigns.releases.create([("app.bin", bytes(range(256)) * 8)], vendor="acme.example",
                                            class_name="sensor", version="2.0.0", now=time.time(), tenant_id="default")
        key = campaigns.keys.get_or_create("release", "release", tenant_id="default", now=time.time())
        firmware = FirmwareOptions(trust_anchors=(load_public_key(key.public_pem.encode()),),
                                   vendor_id=release.vendor_id, class_id=release.class_id, version="1.0.0")
        sims = [SimulatedDevice(f"sim-{i}", srv.coap_uri, model=MODEL, drift_interval=0, firmware=firmware)
                for i in range(3)]
        client = leshan_client(srv.coap_uri, "leshan-1")
        try:
            for dev in sims:
                assert await dev.start(timeout=20)
            registrations = srv.registrations
            await eventually(lambda: registrations.by_endpoint("leshan-1", tenant_id="default") is not None
                             or not client.alive(),
                             timeout=30)
            assert client.alive(), f"the Leshan client exited:\n{client.tail()}"
            targets = ["leshan-1", *(d.endpoint for d in sims)]
            created = await campaigns.create([release.id], tenant_id="default", targets=targets,
                                             policy=Policy(canary=1, waves=1))
            await campaigns.start_campaign(created["id"], tenant_id="default")
            await eventually(lambda: campaigns.status(created["id"], tenant_id="default")["report_ready"], timeout=90,
                             interval=0.2)
            final = campaigns.status(created["id"], tenant_id="default", jobs=True)
            jobs = {j["endpoint"]: j for j in final["jobs"]}
            assert jobs["leshan-1"]["state"] == "skipped", jobs["leshan-1"]
            assert "no Firmware Update object (/5)" in jobs["leshan-1"]["reason"]
            assert all(jobs[d.endpoint]["state"] == "succeeded" for d in sims), jobs
            assert all(d.firmware is not None and d.firmware.version == "2.0.0" for d in sims)
            assert final["state"] == "completed"
            report, cose = campaigns.report(created["id"], tenant_id="default")
            public = load_public_key(campaigns.attestation_public_pem(tenant_id="default").encode())
            assert attestation.verify_report(cose, public) == report
            assert report["summary"]["skipped"] == 1 and report["summary"]["succeeded"] == 3
        finally:
            for dev in sims:
                await dev.stop()
            await asyncio.get_running_loop().run_in_executor(None, client.stop)

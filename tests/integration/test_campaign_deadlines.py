"""Deadlines of campaign jobs, end to end on 127.0.0.1: a real server (plain CoAP), real SQLite, simulated devices.

One device vanishes in the middle of its download and stays away (client_sim's ``offline_at`` fault): its job fails
at the delivering deadline of the campaign's policy, which frees the only ``max_parallel`` slot it held, and the
rest of the campaign completes. The server's own per-update timeout is set far longer than the test's bound, so
only the deadline can end that job.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bootstrap.vault import Vault
from client_sim.firmware import Faults, FirmwareOptions
from client_sim.fleet import Fleet
from firmware_object.campaign import Policy
from firmware_object.suit.keys import load_public_key
from lwm2m_server.server import Lwm2mServer
from tests.harness import eventually, running_server

IMAGE = bytes(range(256)) * 16  # 4 KiB
DEVICES = 4


def trust_anchor(srv: Lwm2mServer) -> Any:
    assert srv.campaigns is not None
    key = srv.campaigns.keys.get_or_create("release", "release", tenant_id="default", now=time.time())
    return load_public_key(key.public_pem.encode() if isinstance(key.public_pem, str) else key.public_pem)


@pytest.mark.timeout(120)
async def test_a_device_silent_mid_download_fails_at_its_deadline_and_the_campaign_completes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    async with running_server(data, coap_port=0, vault=Vault.open(data / "vault.key"), campaign_tick=0.2,
                              request_timeout=5.0, campaign_job_timeout=600.0) as srv:
        assert srv.campaigns is not None
        campaigns = srv.campaigns
        release = campaigns.releases.create([("app.bin", IMAGE)], vendor="acme.example", class_name="sensor",
                                            version="2.0.0", now=time.time(), tenant_id="default")
        anchor = trust_anchor(srv)
        endpoints = [f"dl-{i}" for i in range(DEVICES)]
        silent = endpoints[0]  # first in the target list: it takes the only slot first

        def options_for(i: int) -> dict[str, Any]:
            return {"firmware": FirmwareOptions(trust_anchors=(anchor,), vendor_id=release.vendor_id,
                                                class_id=release.class_id, version="1.0.0"),
                    "faults": Faults(offline_at=1024, offline_for=3600) if i == 0 else Faults()}

        fleet = Fleet(srv.coap_uri, DEVICES, prefix="dl-", lifetime=600, concurrency=DEVICES, drift_interval=0,
                      options_for=options_for)
        try:
            await asyncio.wait_for(fleet.start(timeout_per_device=30), 60)
            await eventually(lambda: fleet.status.registered == DEVICES, timeout=30)
            policy = Policy(canary_percent=100, waves=1, max_parallel=1, max_attempts=1, success_threshold=0.5,
                            error_threshold=0.5, delivering_timeout=3.0)
            cid = (await campaigns.create([release.id], tenant_id="default", targets=endpoints, policy=policy,
                                          method="pull"))["id"]
            await campaigns.start_campaign(cid, tenant_id="default")

            loop = asyncio.get_running_loop()
            bound = loop.time() + 90
            while not (status := campaigns.status(cid, tenant_id="default"))["report_ready"]:
                assert loop.time() < bound, campaigns.status(cid, tenant_id="default", jobs=True)
                await asyncio.sleep(0.2)
            status = campaigns.status(cid, tenant_id="default", jobs=True)
        finally:
            await fleet.stop(deregister=False)

    assert status["state"] == "completed", status
    jobs = {j["endpoint"]: j for j in status["jobs"]}
    gone = jobs[silent]
    assert gone["state"] == "failed" and gone["attempts"] == 1, gone
    assert "delivering within its deadline (3 s)" in gone["reason"], gone
    assert gone["deadline"] is None  # a terminal job has no deadline left
    assert next(d for d in fleet.devices if d.endpoint == silent).offline  # it never came back
    for ep in endpoints[1:]:
        assert jobs[ep]["state"] == "succeeded" and jobs[ep]["version_after"] == "2.0.0", jobs[ep]
    # the others could only start once the silent device's slot was freed
    assert all(jobs[ep]["started_at"] >= gone["finished_at"] for ep in endpoints[1:]), jobs

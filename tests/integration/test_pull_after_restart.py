"""A Package URI written to a device outlives a server restart while its delivery is open, and only then.

A real server (plain CoAP, real SQLite) runs a pull campaign for two simulated devices: one installs, the other
vanishes after its first KiB (client_sim's ``offline_at`` fault), so its job stays ``delivering``. The server is
stopped and a new one is built on the same data folder: the open job's URI answers the same bytes with the same
ETag (a device resumes its partial download), the finished job's URI and a made-up name answer 4.04, and the open
job's URI answers 4.04 too once that job has ended (its deadline passed).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from bootstrap.vault import Vault
from client_sim.firmware import Faults, FirmwareOptions
from client_sim.fleet import Fleet
from firmware_object.campaign import Policy
from lwm2m_server.fota.file_server import FileServer
from lwm2m_server.server import Lwm2mServer
from tests.harness import coap_client, eventually, running_server
from tests.integration.test_campaign_deadlines import trust_anchor

IMAGE = bytes(range(256)) * 16  # 4 KiB


async def get_block(ctx: aiocoap.Context, srv: Lwm2mServer, name: str, number: int) -> Message:
    """Block ``number`` (1 KiB blocks) of /fw/``name``, with no block-wise assembly by aiocoap."""
    msg = Message(code=Code.GET, uri=f"{srv.coap_uri}/fw/{name}")
    msg.opt.block2 = BlockOption.BlockwiseTuple(number, False, 6)
    return await asyncio.wait_for(ctx.request(msg, handle_blockwise=False).response, 10)


def package_names(srv: Lwm2mServer, cid: str) -> dict[str, str | None]:
    """The package name each job of ``cid`` holds, as committed."""
    assert srv.campaigns is not None
    return {j.endpoint: j.package_name for j in srv.campaigns.store.jobs(cid, tenant_id="default")}


@pytest.mark.timeout(120)
async def test_an_open_deliverys_uri_resolves_after_a_restart_with_the_same_etag(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    settings: dict[str, Any] = {"coap_port": 0, "campaign_tick": 0.2, "request_timeout": 3.0,
                                "campaign_job_timeout": 600.0}
    async with running_server(data, vault=Vault.open(data / "vault.key"), **settings) as srv:
        assert srv.campaigns is not None
        campaigns = srv.campaigns
        release = campaigns.releases.create([("app.bin", IMAGE)], vendor="acme.example", class_name="sensor",
                                            version="2.0.0", now=time.time(), tenant_id="default")
        package = campaigns.releases.package(release.id, tenant_id="default")
        anchor = trust_anchor(srv)

        def options_for(i: int) -> dict[str, Any]:
            return {"firmware": FirmwareOptions(trust_anchors=(anchor,), vendor_id=release.vendor_id,
                                                class_id=release.class_id, version="1.0.0"),
                    "faults": Faults(offline_at=1024, offline_for=3600) if i == 0 else Faults()}

        fleet = Fleet(srv.coap_uri, 2, prefix="pr-", lifetime=600, concurrency=2, drift_interval=0,
                      options_for=options_for)
        try:
            await asyncio.wait_for(fleet.start(timeout_per_device=30), 60)
            await eventually(lambda: fleet.status.registered == 2, timeout=30)
            policy = Policy(canary_percent=100, waves=1, max_parallel=2, max_attempts=1, success_threshold=0.5,
                            error_threshold=0.5, delivering_timeout=10.0)
            cid = (await campaigns.create([release.id], tenant_id="default", targets=["pr-0", "pr-1"], policy=policy,
                                          method="pull"))["id"]
            await campaigns.start_campaign(cid, tenant_id="default")

            def states() -> dict[str, str]:
                jobs = campaigns.status(cid, tenant_id="default", jobs=True)["jobs"]
                return {j["endpoint"]: j["state"] for j in jobs}

            await eventually(lambda: states() == {"pr-0": "delivering", "pr-1": "succeeded"}
                             and fleet.devices[0].offline, timeout=30)
            names = package_names(srv, cid)
            open_name, finished_name = names["pr-0"], names["pr-1"]
            assert open_name and finished_name and open_name != finished_name
            async with coap_client() as ctx:
                before = await get_block(ctx, srv, open_name, 1)
                assert (await get_block(ctx, srv, finished_name, 0)).code == Code.NOT_FOUND
        finally:
            await fleet.stop(deregister=False)
    assert before.code == Code.CONTENT and before.payload == package[1024:2048]
    assert before.opt.etag == hashlib.sha256(package).digest()[:8]

    async with running_server(data, vault=Vault.open(data / "vault.key"), **settings) as again, \
            coap_client() as ctx:
        assert again.campaigns is not None
        after = await get_block(ctx, again, open_name, 1)
        assert (after.code, after.opt.etag, after.payload) == (Code.CONTENT, before.opt.etag, before.payload)
        assert after.opt.size2 == len(package)
        assert (await get_block(ctx, again, finished_name, 0)).code == Code.NOT_FOUND
        assert (await get_block(ctx, again, FileServer.new_name(), 0)).code == Code.NOT_FOUND

        campaigns = again.campaigns  # the device stays away: the job ends at its deadline, and so does its URI
        await eventually(lambda: campaigns.status(cid, tenant_id="default")["report_ready"], timeout=60, interval=0.2)
        job = next(j for j in campaigns.status(cid, tenant_id="default", jobs=True)["jobs"] if j["endpoint"] == "pr-0")
        assert job["state"] == "failed" and "package_name" not in job, job
        assert (await get_block(ctx, again, open_name, 1)).code == Code.NOT_FOUND
        assert again.files.published == 0

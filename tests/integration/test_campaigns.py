"""Campaigns end to end on 127.0.0.1: real sockets, real SQLite, simulated devices with faults.

The 200 devices speak plain CoAP here: a reboot opens a new DTLS session, and DTLS handshakes at 10 % loss take
tens of seconds with tinydtls's retransmission timers, which would make this test minutes long without telling
more about campaigns. Campaigns over DTLS run in tests/cli/test_campaign_crash.py and in `scratch demo`.

- 200 devices, a 5 % canary and three waves, 10 % packet loss on every device's link, five devices whose new image
  fails to boot: they roll back and are reported as such, and the campaign completes;
- at the same time, a second campaign to 40 other devices, whose release is signed by a key the devices do not
  trust: its canary fails and the campaign halts by itself before the first wave; the devices beyond the canary
  are reported as not updated;
- both signed reports are right for every device and verify; an edited report does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from client_sim.firmware import Faults, FirmwareOptions
from client_sim.fleet import Fleet
from client_sim.network import LinkConditions
from firmware_object.campaign import Policy
from firmware_object.suit.keys import load_public_key
from lwm2m_server.fota import attestation
from lwm2m_server.server import Lwm2mServer
from lwm2m_server.storage.database import Database
from tests.harness import eventually, running_server

IMAGE_V2 = bytes(range(256)) * 16  # 4 KiB
IMAGE_V3 = bytes(reversed(range(256))) * 16


@contextlib.asynccontextmanager
async def campaign_server(tmp_path: Path) -> AsyncIterator[tuple[Lwm2mServer, SqlCredentialStore]]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    vault = Vault.open(data / "vault.key")
    database = Database.for_data_dir(data)
    store = SqlCredentialStore(database, vault)
    try:
        async with running_server(data, coaps_port=0, coap_port=0, credentials=store, vault=vault,
                                  campaign_tick=0.2, request_timeout=20.0, campaign_job_timeout=60.0) as srv:
            yield srv, store
    finally:
        database.close()


def trust_anchor(srv: Lwm2mServer) -> Any:
    assert srv.campaigns is not None
    key = srv.campaigns.keys.get_or_create("release", "release", tenant_id="default", now=time.time())
    return load_public_key(key.public_pem.encode() if isinstance(key.public_pem, str) else key.public_pem)


async def run_to_end(srv: Lwm2mServer, cid: str, timeout: float) -> dict[str, Any]:
    assert srv.campaigns is not None
    campaigns = srv.campaigns
    loop = asyncio.get_running_loop()
    deadline, shown = loop.time() + timeout, 0.0
    while not (status := campaigns.status(cid, tenant_id="default"))["report_ready"]:
        if loop.time() > shown + 10:  # progress in the test's output, for a run that is too slow
            shown = loop.time()
            active = [(j["endpoint"], j["state"], j["attempts"])
                      for j in campaigns.status(cid, tenant_id="default", jobs=True)["jobs"]
                      if j["state"] in ("delivering", "downloaded", "updating")]
            print(f"{cid}: {status['state']} {[(w['size'], w['succeeded'], w['active']) for w in status['waves']]}"
                  f" {active[:5]}")
        assert loop.time() < deadline, status
        await asyncio.sleep(0.2)
    return campaigns.status(cid, tenant_id="default", jobs=True)


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_two_hundred_devices_canary_waves_loss_rollbacks_and_a_halting_campaign(tmp_path: Path) -> None:
    async with campaign_server(tmp_path) as (srv, _store):
        assert srv.campaigns is not None
        releases = srv.campaigns.releases
        v2 = releases.create([("app.bin", IMAGE_V2)], vendor="acme.example", class_name="sensor",
                             version="2.0.0", now=time.time(), tenant_id="default")
        anchor = trust_anchor(srv)
        everyone = [f"c-{i}" for i in range(240)]  # Fleet names them so
        endpoints, others = everyone[:200], everyone[200:]  # the staged campaign's, the halting campaign's
        fail_boot = set(endpoints[-5:])  # in the last wave: the campaign must not halt for them

        def options_for(i: int) -> dict[str, Any]:
            ep = everyone[i]
            return {"firmware": FirmwareOptions(trust_anchors=(anchor,), vendor_id=v2.vendor_id,
                                                class_id=v2.class_id, version="1.0.0"),
                    "faults": Faults(loss=0.1, seed=i, fail_boot=ep in fail_boot)}

        fleet = Fleet(srv.coap_uri, 240, prefix="c-", lifetime=600, concurrency=50, drift_interval=0,
                      options_for=options_for)
        # The fleet registers over a clean network, then every link loses 10 % of its datagrams each way for the
        # whole campaign (a registration under loss is client_sim's test, not the campaign's).
        lossy = LinkConditions(loss=0.1)
        for dev in fleet.devices:
            assert dev.link is not None
            dev.link.conditions = LinkConditions()
        try:
            await asyncio.wait_for(fleet.start(timeout_per_device=60), 120)
            await eventually(lambda: fleet.status.registered == 240, timeout=60)
            for dev in fleet.devices:
                dev.link.conditions = lossy  # type: ignore[union-attr]

            # a release the devices do not trust (another OEM key), for the halting campaign
            srv.campaigns.keys.create("rogue", "release", tenant_id="default", now=time.time())
            v3 = releases.create([("app.bin", IMAGE_V3)], vendor="acme.example", class_name="sensor",
                                 version="3.0.0", key="rogue", now=time.time(), tenant_id="default")
            status = await srv.campaigns.create([v2.id], tenant_id="default", targets=endpoints,
                                                policy=Policy(canary_percent=5, waves=3, max_parallel=200,
                                                              success_threshold=0.8, max_attempts=4))
            assert [w["size"] for w in status["waves"]] == [10, 20, 40, 130]  # 5 % canary, then doubling
            second = await srv.campaigns.create([v3.id], tenant_id="default", targets=others,
                                                policy=Policy(canary=6, waves=3, max_parallel=50))
            assert [w["size"] for w in second["waves"]] == [6, 12, 22]  # a canary of 6, then doubling
            await srv.campaigns.start_campaign(status["id"], tenant_id="default")
            await srv.campaigns.start_campaign(second["id"], tenant_id="default")
            final, halted = await asyncio.gather(run_to_end(srv, status["id"], timeout=300),
                                                 run_to_end(srv, second["id"], timeout=300))

            assert final["state"] == "completed", final["reason"]
            links = [d.link.counters for d in fleet.devices]  # type: ignore[union-attr]
            assert sum(c.dropped_in + c.dropped_out for c in links) > 0.05 * sum(c.sent + c.received for c in links)
            assert sum(c.retransmissions for c in links) > 0  # and CoAP retransmission recovered
            jobs = {j["endpoint"]: j for j in final["jobs"]}
            for ep in endpoints:
                job = jobs[ep]
                if ep in fail_boot:
                    assert job["state"] == "rolled-back", job
                    assert job["version_after"] == "1.0.0" and job["update_result"] == 8
                else:
                    assert job["state"] == "succeeded", (ep, job["state"], job["reason"], job["update_result"])
                    assert job["version_after"] == "2.0.0" and job["version_before"] == "1.0.0"
                    assert job["package_sha256"] == v2.images[0].package_sha256
                    assert job["sequence_number"] == v2.sequence_number
            devices = {d.endpoint: d for d in fleet.devices}
            assert all(devices[ep].firmware.version == ("1.0.0" if ep in fail_boot else "2.0.0")  # type: ignore[union-attr]
                       for ep in endpoints)
            report, cose = srv.campaigns.report(status["id"], tenant_id="default")
            key = load_public_key(srv.campaigns.attestation_public_pem(tenant_id="default").encode())
            assert attestation.verify_report(cose, key) == report
            assert report["summary"]["succeeded"] == 195 and report["summary"]["rolled-back"] == 5
            assert {t["endpoint"]: t["state"] for t in report["targets"]} == {ep: jobs[ep]["state"] for ep in jobs}
            for fmt in ("json", "csv"):
                out = tmp_path / f"report.{fmt}"
                attestation.write_report_files(report, cose, out, fmt)  # type: ignore[arg-type]
                assert attestation.verify_report_file(out, key).report == report
            edited = json.loads((tmp_path / "report.json").read_text())
            edited["report"]["targets"][0]["state"] = "succeeded" if edited["report"]["targets"][0]["state"] != \
                "succeeded" else "failed"
            (tmp_path / "edited.json").write_text(json.dumps(edited))
            with pytest.raises(attestation.ReportError):
                attestation.verify_report_file(tmp_path / "edited.json", key)

            # the untrusted release: the canary fails and the campaign halted by itself
            final = halted
            assert final["state"] == "halted", final
            assert "canary" in (final["reason"] or "") or "wave 0" in (final["reason"] or "")
            assert [w["opened_at"] is not None for w in final["waves"]] == [True, False, False]
            canary = {j["endpoint"] for j in final["jobs"] if j["wave"] == 0}
            for job in final["jobs"]:
                if job["endpoint"] in canary and job["state"] != "skipped":
                    assert job["state"] == "failed" and job["update_result"] == 5, job  # integrity check failure
                else:
                    assert job["state"] == "skipped" and "halted" in job["reason"], job
            assert sum(j["state"] == "failed" for j in final["jobs"]) >= 3
            assert {j["endpoint"] for j in final["jobs"]} == set(others)
            assert all(devices[ep].firmware.version == "1.0.0" for ep in others)  # type: ignore[union-attr]
            report, cose = srv.campaigns.report(second["id"], tenant_id="default")
            assert attestation.verify_report(cose, key) == report
            assert report["campaign"]["state"] == "halted"
        finally:
            await fleet.stop(deregister=False)

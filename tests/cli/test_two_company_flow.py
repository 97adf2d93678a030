"""Two companies end to end: an OEM signs on its own premises, an operator deploys under the OEM's grant.

The OEM makes its key and signs an image offline with ``scratch firmware keygen``/``sign``; the operator's server
only ever gets the OEM's public key (``scratch release key add --public``). The operator's import is refused
without the OEM's grant, and a package re-signed by anyone else is refused at import; with the grant it imports,
countersigns with its own (vault-held) deployment key and runs a campaign, through the API with an operator token,
to DTLS devices of its tenant that trust both keys (a device installs only what both signed). The usage export of
the run agrees with the campaign's signed attestation report, verifies, and fails ``scratch usage verify`` once a
day is edited.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from client_sim.firmware import FirmwareOptions
from client_sim.fleet import Fleet
from firmware_object.suit.keys import load_public_key
from lwm2m_server.cli.app import app
from lwm2m_server.data_dir import vault_key_location
from lwm2m_server.fota import attestation
from lwm2m_server.storage.database import Database
from tests.harness import eventually, running_server

pytestmark = pytest.mark.timeout(180)

VENDOR = uuid.uuid5(uuid.NAMESPACE_DNS, "sensor-works.example")
CLASS = uuid.uuid5(VENDOR, "thermo")
IMAGE = bytes(range(256)) * 24  # 6 KiB
DEVICES = 3


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"SCRATCH_VAULT_KEY": "", "COLUMNS": "200"})


def ok(r: Result) -> Result:
    assert r.exit_code == 0, f"exit {r.exit_code}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}\n{r.exception!r}"
    return r


def refused(r: Result, needle: str) -> None:
    assert r.exit_code in (1, 2) and needle in r.stderr, f"exit {r.exit_code}\n{r.stdout}\n{r.stderr}"
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def sign(oem: Path, key: Path, out: str, *, seq: int = 7, version: str = "2.0.0") -> Path:
    image = oem / "thermo-2.0.0.bin"
    image.write_bytes(IMAGE)
    ok(cli("firmware", "sign", str(image), "--key", str(key), "--vendor", str(VENDOR), "--class", str(CLASS),
           "--version", version, "--seq", str(seq), "--out", str(oem / out)))
    return oem / out


async def test_oem_signs_operator_deploys_usage_matches_the_report(tmp_path: Path) -> None:
    oem, data = tmp_path / "oem-premises", tmp_path / "operator-data"
    oem.mkdir()
    d = ("--data-dir", str(data))
    # the OEM, at home: its key never leaves this folder
    ok(cli("firmware", "keygen", "--out", str(oem / "release.pem")))
    package = sign(oem, oem / "release.pem", "thermo-2.0.0.suit")
    ok(cli("firmware", "keygen", "--out", str(oem / "rogue.pem")))
    rogue = sign(oem, oem / "rogue.pem", "rogue.suit", seq=8, version="6.6.6")

    # the operator's installation: two tenants, the OEM's public key only
    ok(cli("tenant", "create", "sensorworks", "--kind", "oem", *d))
    ok(cli("tenant", "create", "netco", "--kind", "operator", *d))
    ok(cli("release", "key", "add", "sw-release", "--public", str(oem / "release.pem.pub"), "--tenant", "sensorworks",
           *d))
    refused(cli("release", "import", str(package), "--tenant", "netco", "--key", "sw-release", *d), "no release key")
    ok(cli("tenant", "grant", "sensorworks", "netco", "--class", "thermo", *d))
    refused(cli("release", "import", str(rogue), "--tenant", "netco", "--key", "sw-release", *d),
            "signature check failed")
    rid = ok(cli("release", "import", str(package), "--tenant", "netco", "--key", "sw-release", *d)
             ).stdout.strip().splitlines()[-1]
    ok(cli("release", "key", "create", "netco-deploy", "--role", "deployment", "--tenant", "netco", *d))
    ok(cli("release", "approve", rid, "--key", "netco-deploy", "--tenant", "netco", *d))
    deploy_pub = load_public_key(ok(cli("release", "key", "export", "netco-deploy", "--tenant", "netco", *d))
                                 .stdout.encode())
    oem_pub = load_public_key((oem / "release.pem.pub").read_bytes())
    token = ok(cli("token", "create", "--tenant", "netco", "--role", "operator", "--name", "rollout", *d)
               ).stdout.strip().splitlines()[-1]
    auditor = ok(cli("token", "create", "--tenant", "netco", "--role", "auditor", *d)).stdout.strip().splitlines()[-1]
    raw = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("scratch.db"))
    assert (oem / "release.pem").read_bytes() not in raw and token.split(".")[1].encode() not in raw

    vault = Vault.open(vault_key_location(data).path)
    database = Database.for_data_dir(data)
    store = SqlCredentialStore(database, vault)
    creds = {i: store.issue(f"t-{i}", "server", now=time.time(), tenant_id="netco") for i in range(DEVICES)}
    firmware = FirmwareOptions(trust_anchors=(oem_pub, deploy_pub), vendor_id=VENDOR, class_id=CLASS,
                               version="1.0.0")
    try:
        async with running_server(data, coaps_port=0, coap_port=None, credentials=store, vault=vault, api_port=0,
                                  campaign_tick=0.2, request_timeout=20.0) as srv:
            fleet = Fleet(srv.coaps_uri, DEVICES, prefix="t-", lifetime=600, concurrency=DEVICES, drift_interval=0,
                          firmware=firmware, options_for=lambda i: {"psk_identity": creds[i][0].identity,
                                                                     "psk": bytes(creds[i][1])})
            headers = {"Authorization": f"Bearer {token}"}
            try:
                await fleet.start(timeout_per_device=30)
                await eventually(lambda: fleet.status.registered == DEVICES, timeout=30)
                async with httpx.AsyncClient(base_url=srv.api_url, headers=headers, timeout=30) as api:
                    devices = [x["endpoint"] for x in (await api.get("/api/devices")).json()]
                    assert devices == [f"t-{i}" for i in range(DEVICES)]
                    r = await api.post("/api/campaigns", json={"releases": [rid], "targets": devices,
                                                               "policy": {"canary": 1, "waves": 1}})
                    assert r.status_code == 201, r.text
                    cid = r.json()["id"]
                    r = await api.post(f"/api/campaigns/{cid}/start", json={"approve_with": "netco-deploy"})
                    assert r.status_code == 200, r.text

                    async def report_ready() -> None:
                        while not (await api.get(f"/api/campaigns/{cid}")).json()["report_ready"]:
                            await asyncio.sleep(0.3)

                    await asyncio.wait_for(report_ready(), 120)
                    body = (await api.get(f"/api/campaigns/{cid}/report")).json()
                    pem = (await api.get("/api/attestation-key")).json()["public_key_pem"]
                report = attestation.verify_report(base64.b64decode(body["cose_sign1"]),
                                                   load_public_key(pem.encode()))
                assert report == body["report"]
                assert report["summary"]["succeeded"] == DEVICES, report["summary"]
                assert all(t["version_after"] == "2.0.0" for t in report["targets"])
                assert {d.firmware.version for d in fleet.devices} == {"2.0.0"}  # type: ignore[union-attr]
                # the OEM's release is no secret to the operator's auditor, but the campaign is not the OEM's
                async with httpx.AsyncClient(base_url=srv.api_url,
                                             headers={"Authorization": f"Bearer {auditor}"}) as api:
                    assert (await api.post(f"/api/campaigns/{cid}/pause")).status_code == 403
                    usage_api = (await api.get("/api/usage", params={"include_today": True})).json()
            finally:
                await fleet.stop(deregister=False)
    finally:
        database.close()

    # usage: the export of this run agrees with the signed report, verifies, and an edited day does not
    out = tmp_path / "usage.json"
    ok(cli("usage", "export", "--tenant", "netco", "--include-today", "--format", "json", "--out", str(out), *d))
    doc = json.loads(out.read_text())
    totals = {k: sum(r[k] for r in doc["records"]) for k in ("deliveries_succeeded", "deliveries_failed",
                                                             "bytes_delivered", "campaigns_started",
                                                             "campaigns_finished")}
    approved = [img for rel in report["campaign"]["releases"] for img in rel["packages"]]
    assert len(approved) == 1
    delivered = {t["manifest_digest"] for t in report["targets"]}
    assert delivered == set(approved)  # every device got the countersigned package
    assert totals["deliveries_succeeded"] == report["summary"]["succeeded"] == DEVICES
    assert totals["deliveries_failed"] == report["summary"]["failed"] + report["summary"]["rolled-back"] == 0
    assert totals["campaigns_started"] == totals["campaigns_finished"] == 1
    assert totals["bytes_delivered"] % DEVICES == 0 and totals["bytes_delivered"] > DEVICES * len(IMAGE)
    assert max(r["devices_registered"] for r in doc["records"]) >= DEVICES
    assert usage_api["records"][-1]["deliveries_succeeded"] == doc["records"][-1]["deliveries_succeeded"]
    assert ok(cli("usage", "verify", str(out))).stdout.startswith("OK: ")
    csv_out = tmp_path / "usage.csv"
    ok(cli("usage", "export", "--tenant", "netco", "--include-today", "--out", str(csv_out), *d))
    assert ok(cli("usage", "verify", str(csv_out))).stdout.startswith("OK: ")
    rows = list(csv.reader(io.StringIO(csv_out.read_bytes().decode(), newline="")))
    rows[-1][rows[0].index("deliveries_succeeded")] = str(DEVICES - 1)  # someone bills one delivery less
    edited = tmp_path / "edited.csv"
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    edited.write_bytes(buffer.getvalue().encode())
    r = cli("usage", "verify", str(edited))
    assert r.exit_code == 1 and "record edited" in r.stderr and rows[-1][1] in r.stderr, r.stderr

"""A campaign survives a SIGKILL of the server: real `scratch` processes, real DTLS, real SQLite.

The release is made with `scratch release create`, the campaign with `scratch campaign create/start`; the devices
run in the test process. The server is killed (SIGKILL, no chance to write anything) while updates are under way,
then started again on the same port and data directory: the campaign goes on where it was, every device ends on
the new version, none is updated twice, no result is lost, and the final report verifies with
`scratch campaign verify-report`.

On plain CoAP the devices have a 300 s lifetime, so their periodic Update (at 240 s) cannot come within the test's
bounds: the restarted server must reach them by itself (it executes their Registration Update Trigger, /1/0/8, at
the persisted address), both the devices whose job was open at the kill and those of waves still to run.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from client_sim.firmware import FirmwareOptions
from client_sim.fleet import Fleet
from firmware_object.suit.keys import load_public_key
from lwm2m_server.storage.database import Database
from tests.cli.test_server_dtls_cli import ServerProcess, run, show
from tests.harness import eventually

DEVICES = 20
IMAGE = bytes(range(256)) * 128  # 32 KiB


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_of(data: Path) -> httpx.AsyncClient:
    url = (data / "api-url").read_text().strip()
    token = (data / "api-token").read_text().strip()
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def make_release(tmp_path: Path, data: Path) -> tuple[str, FirmwareOptions]:
    """A release of IMAGE made with `scratch release create`, and firmware options of devices that trust it."""
    (tmp_path / "image.bin").write_bytes(IMAGE)
    r = run("release", "create", str(tmp_path / "image.bin"), "--vendor", "acme.example", "--class", "sensor",
            "--version", "2.0.0", data_dir=data)
    assert r.returncode == 0, show(r)
    release_id = r.stdout.strip().splitlines()[-1]
    r = run("release", "key", "export", "release", "--out", str(tmp_path / "release.pem"), data_dir=data)
    assert r.returncode == 0, show(r)
    anchor = load_public_key((tmp_path / "release.pem").read_bytes())
    r = run("release", "show", release_id, "--json", data_dir=data)
    assert r.returncode == 0, show(r)
    release = json.loads(r.stdout)
    return release_id, FirmwareOptions(trust_anchors=(anchor,), vendor_id=uuid.UUID(release["vendor_id"]),
                                       class_id=uuid.UUID(release["class_id"]), version="1.0.0")


async def status(data: Path, cid: str) -> dict[str, Any]:
    async with api_of(data) as http:
        r = await http.get(f"/api/campaigns/{cid}", params={"jobs": True})
        r.raise_for_status()
        return dict(r.json())


@pytest.mark.timeout(300)
async def test_a_campaign_goes_on_after_the_server_is_killed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    database = Database.for_data_dir(data)
    store = SqlCredentialStore(database, Vault.open(data / "vault.key"))
    endpoints = [f"k-{i}" for i in range(DEVICES)]
    creds = {ep: store.issue(ep, "server", now=time.time()) for ep in endpoints}
    database.close()
    (tmp_path / "image.bin").write_bytes(IMAGE)
    r = run("release", "create", str(tmp_path / "image.bin"), "--vendor", "acme.example", "--class", "sensor",
            "--version", "2.0.0", data_dir=data)
    assert r.returncode == 0, show(r)
    release_id = r.stdout.strip().splitlines()[-1]
    r = run("release", "key", "export", "release", "--out", str(tmp_path / "release.pem"), data_dir=data)
    assert r.returncode == 0, show(r)
    anchor = load_public_key((tmp_path / "release.pem").read_bytes())
    r = run("release", "show", release_id, "--json", data_dir=data)
    assert r.returncode == 0, show(r)
    release = json.loads(r.stdout)
    firmware = FirmwareOptions(trust_anchors=(anchor,), vendor_id=uuid.UUID(release["vendor_id"]),
                               class_id=uuid.UUID(release["class_id"]), version="1.0.0")
    (tmp_path / "targets.txt").write_text("\n".join(["# the fleet", *endpoints]) + "\n")

    port = free_udp_port()
    server = ServerProcess(data, "--coaps", f"127.0.0.1:{port}", "--api", "127.0.0.1:0")
    fleet = Fleet(f"coaps://127.0.0.1:{port}", DEVICES, prefix="k-", lifetime=8, concurrency=30, drift_interval=0,
                  firmware=firmware,
                  options_for=lambda i: {"psk_identity": creds[f"k-{i}"][0].identity,
                                         "psk": bytes(creds[f"k-{i}"][1])})
    try:
        server.wait_for(r"LwM2M server on")
        await asyncio.wait_for(fleet.start(timeout_per_device=30), 60)
        await eventually(lambda: fleet.status.registered == DEVICES, timeout=30)
        r = await asyncio.to_thread(run, "campaign", "create", "--release", release_id, "--targets",
                                    str(tmp_path / "targets.txt"), "--canary", "3", "--waves", "2",
                                    "--max-parallel", "6", data_dir=data)
        assert r.returncode == 0, show(r)
        cid = r.stdout.strip().splitlines()[-1]
        r = await asyncio.to_thread(run, "campaign", "start", cid, data_dir=data)
        assert r.returncode == 0, show(r)

        # kill it while some devices are done and others are being updated
        deadline = time.monotonic() + 60
        while True:
            st = await status(data, cid)
            c = st["counts"]
            if c["succeeded"] >= 4 and c["delivering"] + c["downloaded"] + c["updating"] >= 1:
                break
            assert time.monotonic() < deadline, st
            await asyncio.sleep(0.02)
        server.proc.kill()
        server.proc.wait(timeout=10)
        before = {j["endpoint"]: j["state"] for j in st["jobs"]}

        server = ServerProcess(data, "--coaps", f"127.0.0.1:{port}", "--api", "127.0.0.1:0")
        server.wait_for(r"LwM2M server on")
        deadline = time.monotonic() + 150
        while not (st := await status(data, cid))["report_ready"]:
            assert time.monotonic() < deadline, st
            await asyncio.sleep(0.2)

        assert st["state"] == "completed", st
        jobs = {j["endpoint"]: j for j in st["jobs"]}
        for ep in endpoints:
            assert jobs[ep]["state"] == "succeeded", jobs[ep]
            assert jobs[ep]["version_before"] == "1.0.0" and jobs[ep]["version_after"] == "2.0.0"
            if before[ep] == "succeeded":  # a result recorded before the kill is kept as it was
                assert jobs[ep]["finished_at"] is not None
        devices = {d.endpoint: d for d in fleet.devices}
        assert all(devices[ep].firmware is not None and devices[ep].firmware.version == "2.0.0" for ep in endpoints)
        # no device installed twice: each booted a new image once
        assert [ep for ep in endpoints if devices[ep].firmware.boots != 1] == []  # type: ignore[union-attr]

        out = tmp_path / "report.json"
        r = await asyncio.to_thread(run, "campaign", "report", cid, "--out", str(out), data_dir=data)
        assert r.returncode == 0, show(r)
        r = await asyncio.to_thread(run, "campaign", "verify-report", str(out), data_dir=data)
        assert r.returncode == 0 and "verified" in r.stdout, show(r)
        report = json.loads(out.read_text())["report"]
        assert report["summary"]["succeeded"] == DEVICES and len(report["targets"]) == DEVICES
    finally:
        await fleet.stop(deregister=False)
        server.stop()


@pytest.mark.timeout(300)
async def test_on_plain_coap_the_restarted_server_reaches_the_devices_without_waiting_for_their_update(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    release_id, firmware = make_release(tmp_path, data)
    endpoints = [f"p-{i}" for i in range(DEVICES)]
    (tmp_path / "targets.txt").write_text("\n".join(endpoints) + "\n")
    coaps, coap = free_udp_port(), free_udp_port()
    args = ("--coaps", f"127.0.0.1:{coaps}", "--coap", f"127.0.0.1:{coap}", "--insecure", "--api", "127.0.0.1:0")
    server = ServerProcess(data, *args)
    fleet = Fleet(f"coap://127.0.0.1:{coap}", DEVICES, prefix="p-", lifetime=300, concurrency=30, drift_interval=0,
                  firmware=firmware)
    try:
        server.wait_for(r"LwM2M server on")
        await asyncio.wait_for(fleet.start(timeout_per_device=30), 60)
        await eventually(lambda: fleet.status.registered == DEVICES, timeout=30)
        await asyncio.sleep(2)  # the registrations' write-behind reaches the database (it runs every second)
        r = await asyncio.to_thread(run, "campaign", "create", "--release", release_id, "--targets",
                                    str(tmp_path / "targets.txt"), "--canary", "3", "--waves", "2",
                                    "--max-parallel", "6", data_dir=data)
        assert r.returncode == 0, show(r)
        cid = r.stdout.strip().splitlines()[-1]
        r = await asyncio.to_thread(run, "campaign", "start", cid, data_dir=data)
        assert r.returncode == 0, show(r)

        bound = time.monotonic() + 60
        while True:
            st = await status(data, cid)
            c = st["counts"]
            if c["succeeded"] >= 2 and c["delivering"] + c["downloaded"] + c["updating"] >= 1:
                break
            assert time.monotonic() < bound, st
            await asyncio.sleep(0.02)
        server.proc.kill()
        server.proc.wait(timeout=10)
        before = {j["endpoint"]: j["state"] for j in st["jobs"]}
        open_at_kill = [ep for ep, state in before.items() if state in ("delivering", "downloaded", "updating")]
        heard_at_kill = {d.endpoint: d.counters.updates + d.counters.registers for d in fleet.devices}

        server = ServerProcess(data, *args)
        server.wait_for(r"LwM2M server on")
        restarted = time.monotonic()
        first_progress: float | None = None
        bound = restarted + 120  # far below the devices' periodic Update (240 s after they registered)
        while not (st := await status(data, cid))["report_ready"]:
            now = {j["endpoint"]: j["state"] for j in st["jobs"]}
            if first_progress is None and any(now[ep] != before[ep] for ep in open_at_kill):
                first_progress = time.monotonic() - restarted
            assert time.monotonic() < bound, (st, server.output()[-3000:])
            await asyncio.sleep(0.1)
        print(f"plain CoAP: first progress {first_progress} s after the restart")

        assert st["state"] == "completed", st
        jobs = {j["endpoint"]: j for j in st["jobs"]}
        assert all(jobs[ep]["state"] == "succeeded" and jobs[ep]["version_after"] == "2.0.0" for ep in endpoints), jobs
        devices = {d.endpoint: d for d in fleet.devices}
        assert [ep for ep in endpoints if devices[ep].firmware.boots != 1] == []  # type: ignore[union-attr]
        # what moved them: each device with an open job spoke to the restarted server (an Update, or the Register
        # of a reboot into the new image) long before its own periodic Update was due
        moved = [ep for ep in open_at_kill
                 if devices[ep].counters.updates + devices[ep].counters.registers > heard_at_kill[ep]]
        assert moved == open_at_kill, (open_at_kill, before)
    finally:
        await fleet.stop(deregister=False)
        server.stop()

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
import contextlib
import json
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from client_sim.firmware import FirmwareOptions
from client_sim.fleet import Fleet
from firmware_object.suit.keys import load_public_key
from lwm2m_server.data_dir import vault_key_location
from lwm2m_server.storage.database import Database
from tests.cli.test_server_dtls_cli import ServerProcess, run, show
from tests.harness import eventually

DEVICES = 20
IMAGE = bytes(range(256)) * 128  # 32 KiB
BIG_IMAGE = bytes(range(256)) * 2048  # 512 KiB: pulls long enough to be caught under way


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_of(data: Path) -> httpx.AsyncClient:
    url = (data / "api-url").read_text().strip()
    token = (data / "api-token").read_text().strip()
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def make_release(tmp_path: Path, data: Path, image: bytes = IMAGE) -> tuple[str, FirmwareOptions]:
    """A release of ``image`` made with `scratch release create`, and firmware options of devices that trust it."""
    (tmp_path / "image.bin").write_bytes(image)
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


def dtls_fleet(data: Path, port: int, prefix: str, *, lifetime: int, firmware: FirmwareOptions) -> Fleet:
    """DEVICES simulated devices ``<prefix>0``... for coaps://127.0.0.1:``port``, each with a server credential
    issued into ``data``'s store (the way a bootstrap would leave it)."""
    database = Database.for_data_dir(data)
    store = SqlCredentialStore(database, Vault.open(vault_key_location(data).path))
    creds = {i: store.issue(f"{prefix}{i}", "server", now=time.time(), tenant_id="default") for i in range(DEVICES)}
    database.close()
    return Fleet(f"coaps://127.0.0.1:{port}", DEVICES, prefix=prefix, lifetime=lifetime, concurrency=30,
                 drift_interval=0, firmware=firmware,
                 options_for=lambda i: {"psk_identity": creds[i][0].identity, "psk": bytes(creds[i][1])})


async def job_states(data: Path, cid: str) -> dict[str, str]:
    return {j["endpoint"]: j["state"] for j in (await status(data, cid))["jobs"]}


async def status(data: Path, cid: str) -> dict[str, Any]:
    async with api_of(data) as http:
        r = await http.get(f"/api/campaigns/{cid}", params={"jobs": True})
        r.raise_for_status()
        return dict(r.json())


async def start_campaign(tmp_path: Path, data: Path, release_id: str, *options: str) -> str:
    """`scratch campaign create` (canary 3, 2 waves, 6 at once, to the endpoints in targets.txt) and `start`."""
    r = await asyncio.to_thread(run, "campaign", "create", "--release", release_id, "--targets",
                                str(tmp_path / "targets.txt"), "--canary", "3", "--waves", "2",
                                "--max-parallel", "6", *options, data_dir=data)
    assert r.returncode == 0, show(r)
    cid = r.stdout.strip().splitlines()[-1]
    r = await asyncio.to_thread(run, "campaign", "start", cid, data_dir=data)
    assert r.returncode == 0, show(r)
    return cid


async def kill_when(server: ServerProcess, data: Path, cid: str, ready: Callable[[dict[str, Any]], bool],
                    poll: float = 0.02) -> dict[str, Any]:
    """SIGKILL the server once ``ready(status)`` (within 60 s); the last status seen."""
    bound = time.monotonic() + 60
    while not ready(st := await status(data, cid)):
        assert time.monotonic() < bound, st
        await asyncio.sleep(poll)
    server.proc.kill()
    server.proc.wait(timeout=10)
    return st


async def until_report(server: ServerProcess, data: Path, cid: str, seconds: float) -> dict[str, Any]:
    """The campaign's status once its report is ready (within ``seconds``)."""
    bound = time.monotonic() + seconds
    while not (st := await status(data, cid))["report_ready"]:
        assert time.monotonic() < bound, (st, server.output()[-3000:])
        await asyncio.sleep(0.1)
    return st


def under_way(st: dict[str, Any], succeeded: int) -> bool:
    """At least ``succeeded`` devices done and at least one being updated."""
    c = st["counts"]
    return bool(c["succeeded"] >= succeeded and c["delivering"] + c["downloaded"] + c["updating"] >= 1)


@pytest.mark.timeout(300)
async def test_a_campaign_goes_on_after_the_server_is_killed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    endpoints = [f"k-{i}" for i in range(DEVICES)]
    release_id, firmware = make_release(tmp_path, data)
    (tmp_path / "targets.txt").write_text("\n".join(["# the fleet", *endpoints]) + "\n")

    port = free_udp_port()
    fleet = dtls_fleet(data, port, "k-", lifetime=8, firmware=firmware)
    server = ServerProcess(data, "--coaps", f"127.0.0.1:{port}", "--api", "127.0.0.1:0")
    try:
        server.wait_for(r"LwM2M server on")
        await asyncio.wait_for(fleet.start(timeout_per_device=30), 60)
        await eventually(lambda: fleet.status.registered == DEVICES, timeout=30)
        cid = await start_campaign(tmp_path, data, release_id)
        # kill it while some devices are done and others are being updated
        st = await kill_when(server, data, cid, lambda st: under_way(st, 4))
        before = {j["endpoint"]: j["state"] for j in st["jobs"]}

        server = ServerProcess(data, "--coaps", f"127.0.0.1:{port}", "--api", "127.0.0.1:0")
        server.wait_for(r"LwM2M server on")
        st = await until_report(server, data, cid, 150)

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
        cid = await start_campaign(tmp_path, data, release_id)
        await kill_when(server, data, cid, lambda st: under_way(st, 2))
        # what the killed server left, from its database (a status read before the kill may be older: a device that
        # rebooted into the new image in between was credited already and has nothing left to report)
        with contextlib.closing(sqlite3.connect(data / "scratch.db")) as db:
            before = dict(db.execute("SELECT endpoint, state FROM campaign_job WHERE campaign_id = ?", (cid,)))
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


@pytest.mark.timeout(300)
async def test_over_dtls_the_restarted_server_goes_on_at_each_devices_first_datagram(tmp_path: Path) -> None:
    """Over DTLS the restarted server holds no session and cannot reach a device before it speaks. Devices that were
    pulling when the server died go on by themselves: their next block request is answered with an alert, they
    handshake again, and that first request over the new session gives the registration its session back (no
    Update needed: their lifetime is 300 s). Every other device is made to send one Update; nothing else comes
    from the devices before the campaign ends."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    release_id, firmware = make_release(tmp_path, data, image=BIG_IMAGE)
    endpoints = [f"d-{i}" for i in range(DEVICES)]
    (tmp_path / "targets.txt").write_text("\n".join(endpoints) + "\n")
    port = free_udp_port()
    fleet = dtls_fleet(data, port, "d-", lifetime=300, firmware=firmware)
    args = ("--coaps", f"127.0.0.1:{port}", "--api", "127.0.0.1:0")
    server = ServerProcess(data, *args)
    try:
        server.wait_for(r"LwM2M server on")
        await asyncio.wait_for(fleet.start(timeout_per_device=30), 60)
        await eventually(lambda: fleet.status.registered == DEVICES, timeout=30)
        await asyncio.sleep(2)  # the registrations' write-behind reaches the database (it runs every second)
        cid = await start_campaign(tmp_path, data, release_id, "--method", "pull")
        devices = {d.endpoint: d for d in fleet.devices}

        pulling: list[str] = []  # the devices pulling when the server is killed

        def some_pulling(st: dict[str, Any]) -> bool:
            pulling[:] = [ep for ep in endpoints if (fw := devices[ep].firmware) is not None and fw.downloading]
            return st["counts"]["succeeded"] >= 1 and bool(pulling)

        st = await kill_when(server, data, cid, some_pulling, poll=0.01)
        before = {j["endpoint"]: j["state"] for j in st["jobs"]}

        def heard_from(ep: str) -> int:  # Updates and Registers, less the Register after installing the new image
            device = devices[ep]
            return device.counters.updates + device.counters.registers - device.firmware.boots  # type: ignore[union-attr]

        heard = {ep: heard_from(ep) for ep in endpoints}

        server = ServerProcess(data, *args)
        server.wait_for(r"LwM2M server on")
        restarted = time.monotonic()
        # the pulling devices first, on their own: no Update from them
        bound = restarted + 60
        while True:
            jobs_now = await job_states(data, cid)
            if all(jobs_now[ep] != before[ep] for ep in pulling):
                break
            assert time.monotonic() < bound, (pulling, await status(data, cid), server.output()[-3000:])
            await asyncio.sleep(0.05)
        resumed_after = time.monotonic() - restarted
        assert [ep for ep in pulling if heard_from(ep) > heard[ep] and before[ep] == "delivering"] == [], \
            "a pulling device had to update or register to go on"
        # the others speak once
        for ep in endpoints:
            if ep not in pulling:
                devices[ep].request_update()
        st = await until_report(server, data, cid, 120)  # far below the devices' periodic Update (at 240 s)
        print(f"DTLS: the {len(pulling)} pulling devices went on {resumed_after:.2f} s after the restart")

        assert st["state"] == "completed", [(j["endpoint"], j["state"], j.get("reason")) for j in st["jobs"]]
        jobs = {j["endpoint"]: j for j in st["jobs"]}
        assert all(jobs[ep]["state"] == "succeeded" and jobs[ep]["version_after"] == "2.0.0" for ep in endpoints), jobs
        assert [ep for ep in endpoints if devices[ep].firmware.boots != 1] == []  # type: ignore[union-attr]
        # the pulling devices went on where they stopped (same URI, same ETag): nobody pulled a byte twice
        assert len({devices[ep].firmware.fetched_bytes for ep in endpoints}) == 1  # type: ignore[union-attr]
    finally:
        await fleet.stop(deregister=False)
        server.stop()

"""Two server nodes on one PostgreSQL behind nginx's UDP balancer: one is SIGKILLed in the middle of a campaign.

Real processes and sockets: two ``scratch server --cluster`` nodes (each its own DTLS port and API) on the run's
throwaway PostgreSQL, sharing one data directory (the release blobs, the vault key); nginx in front of them with the
configuration ``lwm2m_server.cluster.nginx`` renders (source affinity per device address and port, failover); 300
simulated DTLS devices, in this process, registered through nginx, so each node holds some of them. A campaign
(made with ``scratch campaign create`` and started through node A's API) runs on both nodes; node A is SIGKILLed
while it runs updates. Its devices' next Updates get no answer, they handshake again, nginx sends them to node B,
which does not know their registrations (4.04), and they register there; B adopts A's open jobs (A's heartbeat is
gone) and reconciles each with what its device reports.

What must hold: every device ends on the new version (or its job says why not), none installed twice (one boot of a
new image each), every job ends terminal, the open jobs of A are finished by B, and the final report verifies.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from client_sim.fleet import Fleet
from lwm2m_server.data_dir import vault_key_location
from lwm2m_server.storage.database import DATABASE_URL_ENV, Database
from tests.cli.test_campaign_crash import make_release
from tests.cli.test_server_dtls_cli import ServerProcess, run, show
from tests.harness import eventually
from tests.nginx_balancer import NginxBalancer
from tests.postgres_server import PostgresServer

DEVICES = 300
LIFETIME = 10  # s: a device of the killed node finds out within about a lifetime
NODE_TIMEOUT = 10.0  # the servers' default: a node not heard of for this long is dead

pytestmark = pytest.mark.slow  # a scale test: ./dev test --slow and .ci/run run it


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One ``scratch server --cluster`` process: its DTLS address and its API; devices reach it at ``public``."""

    def __init__(self, data: Path, name: str, public: int, token: str | None = None) -> None:
        self.name = name
        self.port = free_udp_port()
        self.server = ServerProcess(data, "--coaps", f"127.0.0.1:{self.port}", "--api", "127.0.0.1:0",
                                    "--node-id", name, "--cluster", "--public-coaps", f"127.0.0.1:{public}",
                                    log_name=name)
        m = self.server.wait_for(r"API on (http://\S+),", timeout=60)
        self.api = m.group(1)
        self.token = token or (data / "api-token").read_text().strip()

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)

    async def devices(self) -> list[str]:
        """What this node's API lists: the devices of every node (the registration table)."""
        async with self.http() as http:
            r = await http.get("/api/devices")
            r.raise_for_status()
            return [d["endpoint"] for d in r.json()]

    async def status(self, cid: str) -> dict[str, Any]:
        async with self.http() as http:
            r = await http.get(f"/api/campaigns/{cid}", params={"jobs": True})
            r.raise_for_status()
            return dict(r.json())


def holders(url: str) -> dict[str, str]:
    """endpoint -> the node holding its registration, from the database itself."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {ep: node for ep, node in conn.execute(text("SELECT endpoint, node_id FROM registration")).all()}
    finally:
        engine.dispose()


def jobs_by_owner(url: str, cid: str) -> dict[str, tuple[str | None, str]]:
    """endpoint -> (owner, state) of the campaign's jobs, read from the database itself."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT endpoint, owner, state FROM campaign_job WHERE campaign_id = :c"),
                                {"c": cid}).all()
    finally:
        engine.dispose()
    return {ep: (owner, state) for ep, owner, state in rows}


@pytest.mark.timeout(780)  # the sum of the bounded waits below
async def test_two_nodes_one_database_a_node_killed_mid_campaign(tmp_path: Path, postgres: PostgresServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url = postgres.new_database()
    monkeypatch.setenv(DATABASE_URL_ENV, url)  # every scratch process of this test, and this one, use it
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    release_id, firmware = make_release(tmp_path, data)
    endpoints = [f"c-{i}" for i in range(DEVICES)]
    (tmp_path / "targets.txt").write_text("\n".join(endpoints) + "\n")
    database = Database.for_data_dir(data)
    store = SqlCredentialStore(database, Vault.open(vault_key_location(data).path))
    creds = {i: store.issue(ep, "server", now=time.time(), tenant_id="default") for i, ep in enumerate(endpoints)}
    database.close()

    public = free_udp_port()  # nginx's: the Package URIs of both nodes name it
    a = Node(data, "node-a", public)
    b = Node(data, "node-b", public, a.token)
    balancer = NginxBalancer([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], listen_port=public)
    balancer.start()
    fleet = Fleet(f"coaps://127.0.0.1:{balancer.port}", DEVICES, prefix="c-", lifetime=LIFETIME, concurrency=50,
                  drift_interval=0, firmware=firmware,
                  options_for=lambda i: {"psk_identity": creds[i][0].identity, "psk": bytes(creds[i][1])})
    try:
        await asyncio.wait_for(fleet.start(timeout_per_device=60), 120)
        await eventually(lambda: fleet.status.registered == DEVICES, timeout=60)
        await eventually(lambda: len(holders(url)) == DEVICES, timeout=10)  # written behind
        held = holders(url)
        on_a, on_b = (sum(1 for n in held.values() if n == node) for node in ("node-a", "node-b"))
        assert on_a + on_b == DEVICES and on_a > 0 and on_b > 0, (on_a, on_b)  # nginx spread them
        assert sorted(await a.devices()) == sorted(await b.devices()) == sorted(endpoints)  # either API lists all

        r = await asyncio.to_thread(run, "campaign", "create", "--api", a.api, "--release", release_id, "--targets",
                                    str(tmp_path / "targets.txt"), "--canary", "20", "--waves", "2",
                                    "--max-parallel", "40", data_dir=data)
        assert r.returncode == 0, show(r)
        cid = r.stdout.strip().splitlines()[-1]
        r = await asyncio.to_thread(run, "campaign", "start", "--api", a.api, cid, data_dir=data)
        assert r.returncode == 0, show(r)

        # kill node A mid-way: a third of the fleet updated, and A holding updates open
        bound = time.monotonic() + 120
        while True:
            owners = await asyncio.to_thread(jobs_by_owner, url, cid)
            done_by_a = [ep for ep, (o, s) in owners.items() if o == "node-a" and s == "succeeded"]
            open_on_a = [ep for ep, (o, s) in owners.items()
                         if o == "node-a" and s in ("delivering", "downloaded", "updating")]
            if sum(1 for _, st in owners.values() if st == "succeeded") >= 100 and len(open_on_a) >= 5:
                break
            if time.monotonic() > bound or (await b.status(cid))["state"] != "running":
                raise AssertionError(f"node A did not get under way: {(await b.status(cid))['jobs'][:5]}\n"
                                     f"{a.server.output()[-3000:]}")
            await asyncio.sleep(0.05)
        a.server.proc.kill()
        a.server.proc.wait(timeout=10)
        killed = time.monotonic()
        # what A left open at the kill (a job may have ended between the look and the kill: read again)
        open_at_kill = {ep for ep, (o, s) in (await asyncio.to_thread(jobs_by_owner, url, cid)).items()
                        if o == "node-a" and s in ("delivering", "downloaded", "updating")}

        bound = time.monotonic() + 240
        while not (st := await b.status(cid))["report_ready"]:
            assert time.monotonic() < bound, (st["counts"], b.server.output()[-4000:])
            await asyncio.sleep(0.5)
        reported = time.monotonic() - killed

        jobs = {j["endpoint"]: j for j in st["jobs"]}
        assert st["state"] == "completed", (st["state"], st["reason"], st["counts"])
        devices = {d.endpoint: d for d in fleet.devices}
        for ep in endpoints:
            job, device = jobs[ep], devices[ep]
            assert job["state"] == "succeeded", job
            assert job["version_after"] == "2.0.0", job
            assert device.firmware is not None and device.firmware.version == "2.0.0", ep
        # none twice: each device booted a new image exactly once
        assert [ep for ep in endpoints if devices[ep].firmware.boots != 1] == []  # type: ignore[union-attr]
        final = await asyncio.to_thread(jobs_by_owner, url, cid)
        assert open_at_kill and all(final[ep][0] == "node-b" for ep in open_at_kill), (open_at_kill, final)
        # every device of A registers at B (one done before the kill notices at its next Update, whose CoAP
        # retransmissions to the dead node can take a minute and more before it handshakes again)
        await eventually(lambda: set(holders(url).values()) == {"node-b"}, timeout=180, interval=0.5)
        moved = time.monotonic() - killed

        out = tmp_path / "report.json"
        r = await asyncio.to_thread(run, "campaign", "report", "--api", b.api, cid, "--out", str(out), data_dir=data)
        assert r.returncode == 0, show(r)
        r = await asyncio.to_thread(run, "campaign", "verify-report", str(out), data_dir=data)
        assert r.returncode == 0 and "verified" in r.stdout, show(r)
        report = json.loads(out.read_text())["report"]
        assert report["summary"]["succeeded"] == DEVICES and len(report["targets"]) == DEVICES
        assert re.search(r"taken over by node node-b", b.server.output())
        print(f"\n{DEVICES} devices: {on_a} on node A, {on_b} on node B; A killed with {len(done_by_a)} updates "
              f"done and {len(open_at_kill)} open; report ready {reported:.1f} s after the kill; "
              f"{sum(1 for ep in endpoints if jobs[ep]['attempts'] > 1)} devices needed a second try; all of A's "
              f"devices registered at B {moved:.1f} s after the kill")
    finally:
        await fleet.stop(deregister=False)
        balancer.stop()
        for node in (a, b):
            node.server.stop()

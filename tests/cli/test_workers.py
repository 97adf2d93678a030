"""``scratch server --workers 2``: two processes on the same UDP ports (SO_REUSEPORT) and the same SQLite database.

Real processes and sockets: the supervisor and its workers are ``scratch`` processes; the devices (plain CoAP, each
its own socket) run in the test process. The kernel spreads the devices over the workers by their address and
port; every worker's API answers for every device (a request for a device the other worker holds is forwarded to
it); a campaign runs on both; a worker killed with SIGKILL is started again by the supervisor; SIGINT stops all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from client_sim.fleet import Fleet
from tests.cli.test_campaign_crash import free_udp_port, make_release
from tests.cli.test_server_dtls_cli import ServerProcess, run, show
from tests.harness import eventually

DEVICES = 40


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows(data: Path, query: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data / "scratch.db") as db:
        return db.execute(query).fetchall()


def nodes(data: Path) -> dict[str, str]:
    """node id -> its API URL, from the node table."""
    return {node: api for node, api in rows(data, "SELECT node_id, api_url FROM node")}


def holders(data: Path) -> dict[str, str]:
    return {ep: node for ep, node in rows(data, "SELECT endpoint, node_id FROM registration")}


@pytest.mark.timeout(240)
async def test_two_workers_share_the_ports_the_database_and_the_api(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    release_id, firmware = make_release(tmp_path, data)
    coap, coaps, api = free_udp_port(), free_udp_port(), free_tcp_port()
    server = ServerProcess(data, "--workers", "2", "--coaps", f"127.0.0.1:{coaps}", "--coap", f"127.0.0.1:{coap}",
                           "--insecure", "--api", f"127.0.0.1:{api}")
    fleet = Fleet(f"coap://127.0.0.1:{coap}", DEVICES, prefix="w-", lifetime=30, concurrency=20, drift_interval=0,
                  firmware=firmware)
    try:
        server.wait_for(r"2 workers started")
        await eventually(lambda: len(nodes(data)) == 2 and all(nodes(data).values()), timeout=60)
        assert sorted(nodes(data)) == ["node-1-w1", "node-1-w2"]
        await asyncio.wait_for(fleet.start(timeout_per_device=30), 60)
        await eventually(lambda: fleet.status.registered == DEVICES, timeout=30)
        await eventually(lambda: len(holders(data)) == DEVICES, timeout=10)  # written behind
        held = holders(data)
        on = {node: sorted(ep for ep, n in held.items() if n == node) for node in nodes(data)}
        assert all(on.values()), on  # the kernel spread the devices over both workers

        r = await asyncio.to_thread(run, "cluster", "nodes", "--json", data_dir=data)
        assert r.returncode == 0, show(r)
        listed = {n["node"]: n for n in json.loads(r.stdout)["nodes"]}
        assert sorted(listed) == ["node-1-w1", "node-1-w2"] and all(n["alive"] for n in listed.values()), listed
        assert {n["coap"] for n in listed.values()} == {f"coap://127.0.0.1:{coap}"}  # one shared port

        token = (data / "api-token").read_text().strip()
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            for node, url in nodes(data).items():
                listed = (await http.get(f"{url}/api/devices")).json()
                assert sorted(d["endpoint"] for d in listed) == sorted(held), node  # every worker lists all
                other = next(ep for ep, n in held.items() if n != node)
                r = await http.get(f"{url}/api/devices/{other}/read", params={"path": "/3/0/0"})
                assert r.status_code == 200, (node, other, r.text)  # forwarded to the worker holding it
                assert r.json()["code"] == "2.05" and "content" in r.json(), r.json()

        (tmp_path / "targets.txt").write_text("\n".join(held) + "\n")
        r = await asyncio.to_thread(run, "campaign", "create", "--api", f"http://127.0.0.1:{api}", "--release",
                                    release_id, "--targets", str(tmp_path / "targets.txt"), "--max-parallel", "10",
                                    data_dir=data)
        assert r.returncode == 0, show(r)
        cid = r.stdout.strip().splitlines()[-1]
        r = await asyncio.to_thread(run, "campaign", "start", "--api", f"http://127.0.0.1:{api}", cid, data_dir=data)
        assert r.returncode == 0, show(r)
        await eventually(lambda: rows(data, f"SELECT report IS NOT NULL FROM campaign WHERE id = '{cid}'")[0][0],
                         timeout=120, interval=0.2)
        jobs = rows(data, f"SELECT endpoint, state, owner FROM campaign_job WHERE campaign_id = '{cid}'")
        assert {state for _, state, _ in jobs} == {"succeeded"}, jobs
        assert {owner for _, _, owner in jobs} == set(nodes(data)), jobs  # both workers updated their devices
        assert all(held[ep] == owner for ep, _, owner in jobs)  # each by the worker holding it
        devices = {d.endpoint: d for d in fleet.devices}
        assert all(d.firmware is not None and d.firmware.version == "2.0.0" and d.firmware.boots == 1
                   for d in devices.values())

        # a worker killed is started again
        pids = [int(p) for p in os.popen(f"pgrep -P {server.proc.pid} -f -- '--worker 2$'").read().split()]
        assert len(pids) == 1, pids
        killed = time.time()
        os.kill(pids[0], signal.SIGKILL)
        server.wait_for(r"worker 2 exited \(-9\); restarting it", timeout=30)
        bound = time.monotonic() + 60
        while server.output().count(", API on http") < 3:  # the new worker 2 has started
            assert time.monotonic() < bound, server.output()[-3000:]
            await asyncio.sleep(0.2)
        assert rows(data, "SELECT started_at FROM node WHERE node_id = 'node-1-w2'")[0][0] > killed
    finally:
        await fleet.stop(deregister=False)
        server.stop()
    assert server.proc.returncode == 0, server.output()[-3000:]
    assert rows(data, "SELECT node_id FROM node") == []  # each worker said it stopped


def test_cluster_nginx_config_prints_the_balancer_configuration(tmp_path: Path) -> None:
    r = run("cluster", "nginx-config", "--listen", "0.0.0.0:5684", "--node", "10.0.0.11:5684", "--node",
            "10.0.0.12:5684", data_dir=tmp_path / "data")
    assert r.returncode == 0, show(r)
    assert "hash $remote_addr:$remote_port consistent;" in r.stdout
    assert "server 10.0.0.11:5684 max_fails=1 fail_timeout=10s;" in r.stdout
    assert "server 10.0.0.12:5684 max_fails=1 fail_timeout=10s;" in r.stdout
    assert "listen 0.0.0.0:5684 udp reuseport;" in r.stdout
    r = run("cluster", "nginx-config", "--listen", "0.0.0.0:5684", "--node", "no-port", data_dir=tmp_path / "data")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, show(r)

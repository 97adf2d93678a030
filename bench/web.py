#!/usr/bin/env python3
"""How fast the web interface's pages render for a large tenant. Prints figures; asserts nothing.

An in-process server (SQLite in a temporary data directory) holds N registrations of one tenant (made in process,
without sockets: the figure is the page, not CoAP), a campaign over all of them whose jobs carry versions, and a
signed-in user; the dashboard, the devices page and a campaign page are fetched R times each over HTTP on loopback.
The issue's goal: the dashboard of a 10,000-device tenant in under 300 ms on this machine. Leshan has no web
interface for fleets to compare with (its demo's UI lists clients only: `bench/registrations.py` times that API).

    .venv/bin/python bench/web.py [--devices 10000] [--repeat 10]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


async def main(devices: int, repeat: int) -> None:
    import httpx

    from bootstrap.vault import Vault
    from lwm2m_server.core.registration import parse_register
    from lwm2m_server.server import Lwm2mServer, ServerSettings
    from lwm2m_server.tenancy.model import Role, TenantKind
    from lwm2m_server.tenancy.service import system_principal

    with tempfile.TemporaryDirectory(prefix="scratch-bench-web-") as tmp:
        data = Path(tmp)
        srv = Lwm2mServer(ServerSettings(data_dir=data, coap_port=0, api_port=0, max_registrations=devices + 10),
                          vault=Vault.open(data / "vault.key"))
        await srv.start()
        try:
            assert srv.tenancy is not None and srv.registrations is not None and srv.campaigns is not None
            root = system_principal("bench")
            srv.tenancy.create_tenant("big", kind=TenantKind.OPERATOR, by=root)
            srv.tenancy.create_user(tenant_id="big", login="ops", roles=frozenset({Role.OPERATOR, Role.AUDITOR}),
                                    password="bench password 1", by=root)
            t = time.perf_counter()
            for i in range(devices):
                params = parse_register([f"ep=dev-{i:05d}", "lt=86400", "lwm2m=1.1"], b"</3/0>,</5/0>")
                srv.registrations.register(params, address=f"10.0.{i // 250}.{i % 250}:5683", remote=None,
                                           tenant_id="big")
            print(f"{devices} registrations made in process in {time.perf_counter() - t:.1f} s")
            release = srv.campaigns.releases.create([("a.bin", b"\x01" * 256)], vendor="bench.example",
                                                    class_name="meter", version="2.0.0", tenant_id="big",
                                                    now=time.time())
            status = await srv.campaigns.create([release.id], targets=[f"dev-{i:05d}" for i in range(devices)],
                                                tenant_id="big")
            async with httpx.AsyncClient(base_url=srv.api_url, timeout=60) as c:
                form = await c.get("/ui/sign-in")
                token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
                await c.post("/ui/sign-in", data={"login": "ops", "password": "bench password 1", "csrf": token})
                print(f"{repeat} fetches each, one process, SQLite; a campaign of {devices} jobs")
                for name, path in (("dashboard", "/ui"), ("devices (page 1 of 50 rows)", "/ui/devices"),
                                   ("devices, search", "/ui/devices?q=dev-09"),
                                   ("campaign page", f"/ui/campaigns/{status['id']}")):
                    times = []
                    for _ in range(repeat):
                        s = time.perf_counter()
                        r = await c.get(path)
                        times.append(time.perf_counter() - s)
                        r.raise_for_status()
                    print(f"  {name:<28} median {statistics.median(times) * 1e3:7.1f} ms   max "
                          f"{max(times) * 1e3:7.1f} ms   {len(r.content) // 1024} KiB")
        finally:
            await srv.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.devices, args.repeat))

#!/usr/bin/env python3
"""What a tenant's API token costs per request. Prints figures; asserts nothing.

An in-process server (SQLite in a temporary data directory) answers ``GET /api/devices`` (an empty tenant, so the
figure is the authentication and routing, not the listing) N times at concurrency C, once with the embedded
default's local admin token (a constant-time compare) and once with a tenant's token (parse, one SQL lookup of the
token id, SHA-256 of salt and secret, constant-time compare, the tenant's record). Eclipse Leshan's demo server has
no API authentication to compare with; its figure for the same route is the one bench/registrations.py measures.

    .venv/bin/python bench/api_tokens.py [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


async def measure(url: str, token: str, requests: int, concurrency: int) -> tuple[float, list[float]]:
    import httpx

    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits) as c:
        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                t = time.perf_counter()
                r = await c.get("/api/devices")
                latencies.append(time.perf_counter() - t)
                r.raise_for_status()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies


async def main(requests: int, concurrency: int) -> None:
    from lwm2m_server.server import Lwm2mServer, ServerSettings
    from lwm2m_server.tenancy.model import Role, TenantKind
    from lwm2m_server.tenancy.service import system_principal

    with tempfile.TemporaryDirectory(prefix="scratch-bench-") as tmp:
        srv = Lwm2mServer(ServerSettings(data_dir=Path(tmp), coap_port=0, api_port=0))
        await srv.start()
        try:
            assert srv.tenancy is not None
            root = system_principal("bench")
            srv.tenancy.create_tenant("bench", kind=TenantKind.OPERATOR, by=root)
            for i in range(1000):  # a table that is not empty
                srv.tenancy.create_token(tenant_id="bench", roles=frozenset({Role.AUDITOR}), name=f"t{i}", by=root)
            _, tenant_token = srv.tenancy.create_token(tenant_id="bench", roles=frozenset({Role.OPERATOR}), by=root)
            await measure(srv.api_url, srv.api_token, 200, concurrency)  # warm up
            print(f"{requests} x GET /api/devices, concurrency {concurrency}, one process, SQLite "
                  "(1,001 tokens stored)")
            for name, token in (("local admin token (file)", srv.api_token), ("tenant token (SQL lookup)",
                                                                               tenant_token)):
                seconds, lat = await measure(srv.api_url, token, requests, concurrency)
                lat.sort()
                print(f"  {name:<27} {requests / seconds:8.0f} req/s   p50 {statistics.median(lat) * 1e3:6.2f} ms"
                      f"   p99 {lat[int(len(lat) * 0.99) - 1] * 1e3:6.2f} ms")
        finally:
            await srv.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))

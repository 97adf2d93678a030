#!/usr/bin/env python3
"""Registration and read benchmarks for the SCRATCh LwM2M server. Prints figures; asserts nothing.

Registration: `scratch server` runs as its own process; ../shared/tools/lwm2m_load.py (the neutral load generator
that drives Eclipse Leshan the same way) registers N clients against it, then has each send one Update, and samples
the server's CPU and RSS per phase. With --leshan PATH (default: $LESHAN_SERVER_DEMO) the Eclipse Leshan server demo
runs the same load in the same run, after a warm-up of its JIT (1,000 registrations, not counted).
Reads: an in-process server reads /3/0/0 from clients of the load generator as fast as it can (concurrency 32),
so the figure is the server's own round trip cost, not HTTP's.

    .venv/bin/python bench/registrations.py [--counts 1000 10000] [--reads 5000] [--leshan PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from processes import leshan_server  # bench/processes.py: the script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
LOAD = Path(os.environ.get("LWM2M_LOAD", REPO.parent / "shared" / "tools" / "lwm2m_load.py"))
SCRATCH = REPO / ".venv" / "bin" / "scratch"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data_dir: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([str(SCRATCH), "server", "--insecure", "--coap", f"127.0.0.1:{port}",
                             "--coaps", "127.0.0.1:0", "--api", "127.0.0.1:0",
                             "--data-dir", str(data_dir), "--rd-rate", "0", "--rd-endpoint-rate", "0"],
                            env={**os.environ, "SCRATCH_VAULT_KEY_FILE": str(data_dir.parent / "vault.key")},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        if "LwM2M server on" in line:
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"server did not start: {line!r}")


def run_load(args: list[str], timeout: float) -> dict:
    out = subprocess.run([sys.executable, str(LOAD), *args], capture_output=True, text=True, timeout=timeout)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"lwm2m_load printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")


def load_figures(n: int, port: int, pid: int, prefix: str) -> dict:
    res = run_load(["register", "--port", str(port), "-n", str(n), "--server-pid", str(pid), "--update",
                    "--prefix", prefix, "--concurrency", "50", "--lifetime", "3600", "--max-seconds", "300"],
                   timeout=330)
    reg, upd = res.get("register", {}), res.get("update", {})
    srv, usrv = reg.get("server", {}), upd.get("server", {})
    return {"devices": n, "ok": reg.get("ok"), "failed": reg.get("failed"),
            "reg_per_s": reg.get("rate_steady_p10_p90_per_s") or reg.get("rate_overall_per_s"),
            "cpu_ms_per_reg": srv.get("cpu_ms_per_op"), "bytes_per_reg": srv.get("rss_delta_bytes_per_op"),
            "p50_ms": reg.get("lat_ms", {}).get("p50"), "p99_ms": reg.get("lat_ms", {}).get("p99"),
            "upd_per_s": upd.get("rate_steady_p10_p90_per_s") or upd.get("rate_overall_per_s"),
            "cpu_ms_per_upd": usrv.get("cpu_ms_per_op")}


def bench_registrations(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="scratch-bench-") as tmp:
        port = free_udp_port()
        proc = start_server(Path(tmp), port)
        try:
            return {"server": "scratch", **load_figures(n, port, proc.pid, f"bench{n}-")}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def bench_leshan(launcher: str, n: int) -> dict:
    with leshan_server(launcher) as leshan:
        load_figures(1000, leshan.coap, leshan.proc.pid, "warmup-")  # the JIT's warm-up, not counted
        return {"server": "leshan", **load_figures(n, leshan.coap, leshan.proc.pid, f"bench{n}-")}


async def bench_reads(total: int, clients: int = 50, concurrency: int = 32) -> dict:
    from lwm2m_server.core.operations import ReadRequest
    from lwm2m_server.core.paths import LwM2mPath
    from lwm2m_server.server import Lwm2mServer, ServerSettings

    with tempfile.TemporaryDirectory(prefix="scratch-bench-") as tmp:
        srv = Lwm2mServer(ServerSettings(data_dir=Path(tmp), coap_port=0, api_port=None))
        await srv.start()
        load = await asyncio.create_subprocess_exec(
            sys.executable, str(LOAD), "register", "--port", str(srv.coap_port), "-n", str(clients), "--hold", "120",
            "--max-seconds", "150", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            assert srv.registrations is not None and srv.management is not None
            deadline = time.monotonic() + 30
            while srv.registrations.count() < clients and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            eps = [r.endpoint for r in srv.registrations.all()]
            req = ReadRequest(LwM2mPath.parse("/3/0/0"))
            done = failed = 0
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                nonlocal done, failed
                async with sem:
                    try:
                        await srv.management.send(eps[i % len(eps)], req, timeout=10, tenant_id="default")
                        done += 1
                    except Exception:
                        failed += 1

            ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(total)))
            t1, ru1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            return {"reads": total, "ok": done, "failed": failed, "reads_per_s": round(done / (t1 - t0), 1),
                    "cpu_ms_per_read": round(cpu * 1000 / max(done, 1), 3), "clients": len(eps)}
        finally:
            load.terminate()
            await load.wait()
            await srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--leshan", default=os.environ.get("LESHAN_SERVER_DEMO"),
                    help="the Leshan server demo launcher (default: $LESHAN_SERVER_DEMO; none: ours only)")
    args = ap.parse_args()
    if not LOAD.exists():
        raise SystemExit(f"load generator not found at {LOAD} (set LWM2M_LOAD)")
    print("registrations then one Update each (each server its own process, driven by lwm2m_load.py, concurrency 50)"
          + ("" if args.leshan else "; no Leshan figure: --leshan or $LESHAN_SERVER_DEMO not given"))
    heads = ("server", "devices", "ok", "failed", "reg/s", "CPU ms/reg", "B/reg", "p50 ms", "p99 ms", "upd/s",
             "CPU ms/upd")
    print(" ".join(f"{h:>10}" for h in heads))
    for n in args.counts:
        runs = [bench_registrations(n)] + ([bench_leshan(args.leshan, n)] if args.leshan else [])
        for r in runs:
            cols = ("server", "devices", "ok", "failed", "reg_per_s", "cpu_ms_per_reg", "bytes_per_reg", "p50_ms",
                    "p99_ms", "upd_per_s", "cpu_ms_per_upd")
            print(" ".join(f"{r[c]!s:>10}" for c in cols), flush=True)
        if len(runs) == 2 and runs[0]["cpu_ms_per_reg"] and runs[1]["cpu_ms_per_reg"]:
            print(f"{'ratio':>10} Leshan / ours, CPU per registration "
                  f"{runs[1]['cpu_ms_per_reg'] / runs[0]['cpu_ms_per_reg']:.2f}, per update "
                  f"{(runs[1]['cpu_ms_per_upd'] or 0) / (runs[0]['cpu_ms_per_upd'] or 1):.2f} (>= 1: ours cheaper)")
    if args.reads:
        r = asyncio.run(bench_reads(args.reads))
        print(f"\nreads of /3/0/0 (in-process server, {r['clients']} clients, concurrency 32): {r['ok']} ok, "
              f"{r['failed']} failed, {r['reads_per_s']} reads/s, {r['cpu_ms_per_read']} CPU ms/read")


if __name__ == "__main__":
    main()

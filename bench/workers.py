#!/usr/bin/env python3
"""Every core: `scratch server --workers N` against one process and against Eclipse Leshan, in the same run.
Prints figures; asserts nothing. Loopback only; every step is bounded in time; every process it starts is stopped.

Two loads of ../shared/tools/lwm2m_load.py (the neutral tool that drives either server the same way):

1. registrations: ``register -n N --update --concurrency 50`` (N default 10,000): registrations and Updates per
   second, server CPU ms per registration;
2. parallel push: ``push-bench -k 20 --size 262144 --parallel 20`` (Leshan-shaped REST writes of /5/0/0 through
   the bench route): MB/s and server CPU.

Servers: `scratch server` with 1 worker, with ``--workers W`` (default: the number of cores; SO_REUSEPORT spreads
the devices over the workers, the bench route is forwarded to the worker holding the device), and the Leshan
server demo (``--leshan PATH`` or $LESHAN_SERVER_DEMO; a warm-up run first: the JIT). Our CPU is the sum over the
supervisor and every worker (from /proc, read around each run), Leshan's that of its JVM; the tool's own CPU is
never counted. The SQLite default database in each case.

    .venv/bin/python bench/workers.py [--devices N] [--workers W] [--leshan PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from firmware import Leshan, push_bench  # bench/firmware.py: the script's folder is on sys.path
from processes import CHILDREN, proc_sample, stop_children_on_signals

REPO = Path(__file__).resolve().parent.parent
LOAD = Path(os.environ.get("LWM2M_LOAD", REPO.parent / "shared" / "tools" / "lwm2m_load.py"))
SCRATCH = REPO / ".venv" / "bin" / "scratch"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree(pid: int) -> list[int]:
    """``pid`` and its children (the workers of a supervisor)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid, *(int(p) for p in out)]


def cpu_s(pids: list[int]) -> float:
    return sum(proc_sample(p)["cpu_s"] for p in pids)


def rss_kib(pids: list[int]) -> float:
    return sum(proc_sample(p)["rss_kib"] for p in pids)


class Scratch:
    """`scratch server --workers W` (W=1: one plain process) on fixed ports, with the bench route."""

    def __init__(self, tmp: Path, workers: int) -> None:
        self.data = tmp / f"scratch-w{workers}"
        self.data.mkdir()
        self.port, api = free_port(), free_port(socket.SOCK_STREAM)
        self.rest = f"http://127.0.0.1:{api}"
        self.log = tmp / f"scratch-w{workers}.log"
        cmd = [str(SCRATCH), "server", "--insecure", "--coap", f"127.0.0.1:{self.port}", "--coaps",
               f"127.0.0.1:{free_port()}", "--api", f"127.0.0.1:{api}", "--data-dir", str(self.data),
               "--rd-rate", "0", "--rd-endpoint-rate", "0", "--bench-api", "--workers", str(workers)]
        with self.log.open("w") as out:
            self.proc = CHILDREN.start(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                       env={**os.environ, "SCRATCH_VAULT_KEY_FILE": str(tmp / "vault.key")})
        deadline = time.monotonic() + 90
        while self.log.read_text().count("LwM2M server on") < workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"scratch --workers {workers} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        self.pid = self.proc.pid
        self.pids = tree(self.pid)

    def stop(self) -> None:
        CHILDREN.stop(self.proc, timeout=40)


def measured(pids: list[int], run: Any) -> tuple[dict[str, Any], float, float]:
    """``run()``'s result, with the CPU seconds ``pids`` spent meanwhile and their RSS after."""
    before = cpu_s(pids)
    result = run()
    return result, cpu_s(pids) - before, rss_kib(pids)


def load(args: list[str], timeout: float) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(LOAD), *args], capture_output=True, text=True, timeout=timeout)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise SystemExit(f"lwm2m_load printed no result: {out.stdout[-500:]} {out.stderr[-500:]}")


def registrations(port: int, pids: list[int], n: int, prefix: str) -> dict[str, Any]:
    res, cpu, rss = measured(pids, lambda: load(
        ["register", "--port", str(port), "-n", str(n), "--update", "--prefix", prefix, "--concurrency", "50",
         "--lifetime", "3600", "--max-seconds", "300"], timeout=330))
    reg, upd = res.get("register", {}), res.get("update", {})
    return {"ok": reg.get("ok"), "failed": reg.get("failed"),
            "reg_per_s": reg.get("rate_steady_p10_p90_per_s") or reg.get("rate_overall_per_s"),
            "upd_per_s": upd.get("rate_steady_p10_p90_per_s") or upd.get("rate_overall_per_s"),
            "cpu_ms_per_reg_and_update": round(1000 * cpu / max(1, n), 3), "rss_kib": rss}


def push(port: int, rest: str, pids: list[int], prefix: str) -> dict[str, Any]:
    res, cpu, rss = measured(pids, lambda: push_bench(port, rest, pids[0], k=20, size=256 * 1024, parallel=20,
                                                      prefix=prefix))
    return {"ok": res.get("ok"), "failed": res.get("failed"), "mb_s": res.get("mb_s"), "wall_s": res.get("wall_s"),
            "cpu_s": round(cpu, 2), "cpu_ms_per_kib": round(1000 * cpu / (20 * 256), 4), "rss_kib": rss,
            "error": res.get("error")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--leshan", type=Path, default=os.environ.get("LESHAN_SERVER_DEMO"))
    args = ap.parse_args()
    stop_children_on_signals()
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="scratch-workers-") as tmp_name:
        tmp = Path(tmp_name)
        for workers in sorted({1, args.workers}):
            srv = Scratch(tmp, workers)
            try:
                reg = registrations(srv.port, srv.pids, args.devices, f"w{workers}-")
                print(f"  scratch, {workers} worker(s): registrations done", flush=True)
                pushed = [push(srv.port, srv.rest, srv.pids, f"w{workers}p{i}-") for i in range(3)]
                print(f"  scratch, {workers} worker(s): pushes done", flush=True)
            finally:
                srv.stop()
            rows.append((f"scratch --workers {workers}", reg, min(pushed, key=lambda p: p.get("wall_s") or 1e9)))
        if args.leshan is not None:
            les = Leshan(args.leshan, tmp, "leshan")
            try:
                registrations(les.port, [les.pid], 1000, "warmup-")  # the JIT
                reg = registrations(les.port, [les.pid], args.devices, "l-")
                pushed = [push(les.port, les.rest, [les.pid], f"lp{i}-") for i in range(3)]
            finally:
                les.stop()
            rows.append(("leshan M17", reg, min(pushed, key=lambda p: p.get("wall_s") or 1e9)))
    print(f"\n{args.devices} registrations then Updates (lwm2m_load, concurrency 50); push 20 x 256 KiB in parallel "
          "(push-bench, best of 3); CPU: the whole server (every worker)")
    print(f"{'server':24} {'reg/s':>8} {'upd/s':>8} {'CPU ms/(reg+upd)':>17} {'push MB/s':>10} {'push ok':>8} "
          f"{'push CPU s':>11} {'RSS KiB':>9}")
    for name, reg, p in rows:
        print(f"{name:24} {reg['reg_per_s'] or 0:8.0f} {reg['upd_per_s'] or 0:8.0f} "
              f"{reg['cpu_ms_per_reg_and_update']:17.3f} {p['mb_s'] or 0:10.2f} {p['ok'] or 0:>5}/20 "
              f"{p['cpu_s']:11.2f} {reg['rss_kib']:9.0f}" + (f"  ({p['error']})" if p.get("error") else ""))
    print(json.dumps({"rows": [{"server": n, "registrations": r, "push": p} for n, r, p in rows]}))


if __name__ == "__main__":
    main()

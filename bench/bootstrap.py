#!/usr/bin/env python3
"""Bootstrap + register of N factory devices over DTLS-PSK, and server memory per connected device.
Prints figures; asserts nothing. Loopback only; every step is bounded in time; every process it starts is stopped.

Three processes: `scratch server` (DTLS-PSK only), `scratch bootstrap-server` (same data directory, sends devices
to the server) and a driver that runs `client_sim.fleet.Fleet.from_credentials` over the manufacturing file of
`scratch factory provision`. Each device does two DTLS handshakes (bootstrap server, then LwM2M server), the
bootstrap exchange and a Register, and keeps its DTLS session to the LwM2M server. The servers' CPU and RSS come
from /proc/<pid>, so what the devices spend is not counted (it is reported apart). On a 2-vCPU machine the devices
share the cores with the servers; "others %" says how much CPU the rest of the machine took meanwhile (above 10%
the figures are not trustworthy). Even on an idle machine, runs of the same code differ by about 20% (a shared VM):
use --runs 3 and read the medians. Handshakes per second and CPU-ms per handshake alone: bench/dtls.py.

Reported per run: wall time from the first bootstrap request to the last device registered, devices/s, CPU seconds
of each server and CPU-ms per device, per-device latency (bootstrap start to registered), retries and failures,
RSS of each server before the fleet, with all N registered (sessions held), and after de-registration.

`--quick` = 100 devices; `--profile DIR` runs the three processes under cProfile (figures then include its
overhead) and writes DIR/*.prof and a top-functions text file for each.

    .venv/bin/python bench/bootstrap.py [--quick] [-n 1000] [--runs 1] [--concurrency 50] [--wait-idle S]
                                        [--profile DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from processes import (  # bench/processes.py: the script's folder is on sys.path
    CHILDREN,
    JsonLinesChild,
    free_port,
    machine_cpu_s,
    machine_note,
    proc_sample,
    r,
    stop_children_on_signals,
    wait_for_line,
    wait_idle,
    write_profile_text,
)

REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / ".venv" / "bin" / "scratch"
PY = sys.executable
PREFIX = "bench-"
LIFETIME = 3600  # no Update while the fleet is held
GOAL_CPU_MS_PER_HANDSHAKE = 2.0

# The devices, in a process of their own. Protocol on stdin/stdout (JSON lines): it loads the manufacturing file and
# prints {"event": "loaded"}; on "go" it starts the fleet and prints {"event": "done", ...} once every device is
# registered (or the timeout passes); on "stop" (or EOF) it de-registers them and prints {"event": "stopped", ...}.
# It prints no key: only endpoints' counts and timings.
DRIVER = r"""
import asyncio, json, logging, statistics, sys, time
from client_sim.credentials import load_factory_file
from client_sim.device import DeviceState
from client_sim.fleet import Fleet

logging.basicConfig(level=logging.WARNING)

def emit(**kw):
    print(json.dumps(kw), flush=True)

async def main(path, concurrency, timeout):
    records = load_factory_file(path)
    loop = asyncio.get_running_loop()
    first_boot, registered, failed_events = {}, {}, [0]
    all_registered = asyncio.Event()

    def on_device(dev, old, new):
        now = time.time()
        if new is DeviceState.BOOTSTRAPPING:
            first_boot.setdefault(dev.endpoint, now)
        elif new is DeviceState.REGISTERED:
            registered.setdefault(dev.endpoint, now)
            if len(registered) == len(records):
                all_registered.set()
        elif new is DeviceState.FAILED:
            failed_events[0] += 1

    fleet = Fleet.from_credentials(records, concurrency=concurrency, on_device=on_device)
    emit(event="loaded", devices=len(records))
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        return
    t_go = time.time()
    starter = loop.create_task(fleet.start(timeout_per_device=None))
    try:
        await asyncio.wait_for(all_registered.wait(), timeout)
    except TimeoutError:
        pass
    t_done = time.time()
    c = [d.counters for d in fleet.devices]
    lat = sorted(registered[e] - first_boot[e] for e in registered if e in first_boot)

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

    status = fleet.status
    emit(event="done", t_go=t_go, t_done=t_done, t_first_bootstrap=min(first_boot.values(), default=None),
         t_last_registered=max(registered.values(), default=None), devices=len(records),
         registered=len(registered), registered_now=status.registered, failed_now=status.failed,
         pending_now=status.pending, failed_transitions=failed_events[0],
         bootstrap_attempts=sum(x.bootstrap_attempts for x in c), bootstraps=sum(x.bootstraps for x in c),
         updates=sum(x.updates for x in c),
         bootstrap_failures=sum(x.bootstrap_failures for x in c), registers=sum(x.registers for x in c),
         failed_requests=sum(x.failed_requests for x in c), bootstrap_fallbacks=sum(x.bootstrap_fallbacks for x in c),
         lat_ms={"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                 "max": round(lat[-1] * 1000, 1) if lat else None,
                 "mean": round(statistics.fmean(lat) * 1000, 1) if lat else None})
    await loop.run_in_executor(None, sys.stdin.readline)
    t_stop = time.time()
    starter.cancel()
    try:
        await starter
    except asyncio.CancelledError:
        pass
    status = await fleet.stop(timeout=5.0)
    emit(event="stopped", seconds=round(time.time() - t_stop, 3), stopped=status.stopped,
         deregisters=sum(d.counters.deregisters for d in fleet.devices))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
"""

def command(profile: Path | None, name: str) -> list[str]:
    """How to run `scratch` (under cProfile when profiling)."""
    if profile is None:
        return [str(SCRATCH)]
    return [PY, "-m", "cProfile", "-o", str(profile / f"{name}.prof"), "-m", "lwm2m_server.cli.app"]


def start_driver(factory: Path, concurrency: int, timeout: float, log: Path,
                 profile: Path | None) -> JsonLinesChild:
    """The device driver process (under cProfile when ``profile``)."""
    python_args = () if profile is None else ("-m", "cProfile", "-o", str(profile / "devices.prof"))
    return JsonLinesChild(DRIVER, [str(factory), str(concurrency), str(timeout)], log, python_args)


def registered_on_server(api_url: str, token: str) -> int | None:
    """The device count of the server's /api/health (it needs the token for that)."""
    req = urllib.request.Request(f"{api_url}/api/health", headers={"Authorization": f"Bearer {token}"})
    with contextlib.suppress(OSError, ValueError, KeyError), urllib.request.urlopen(req, timeout=5) as resp:
        return int(json.loads(resp.read())["devices"])
    return None


# --------------------------------------------------------------------------- one run


def run_once(n: int, concurrency: int, timeout: float, settle: float, profile: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="scratch-bootstrap-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        data.mkdir(mode=0o700)
        os.environ["SCRATCH_VAULT_KEY_FILE"] = str(tmp / "vault.key")  # every child: the run's own vault key
        factory = tmp / "factory.csv"
        port, bs_port = free_port(), free_port()
        t0 = time.perf_counter()
        out = subprocess.run([str(SCRATCH), "factory", "provision", "--count", str(n), "--prefix", PREFIX,
                              "--out", str(factory), "--bootstrap-uri", f"coaps://127.0.0.1:{bs_port}",
                              "--data-dir", str(data)], capture_output=True, text=True, timeout=600, cwd=REPO)
        provision_s = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"factory provision failed: {out.stderr[-500:]}")

        srv_log, bs_log = tmp / "server.log", tmp / "bootstrap-server.log"
        with srv_log.open("w") as f:
            srv = CHILDREN.start([*command(profile, "server"), "server", "--coaps", f"127.0.0.1:{port}",
                                  "--api", "127.0.0.1:0", "--data-dir", str(data),
                                  "--rd-rate", "0", "--rd-endpoint-rate", "0"],  # capacity, not the default limits
                                 stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        driver: JsonLinesChild | None = None
        bs: subprocess.Popen[Any] | None = None
        try:
            wait_for_line(srv_log, srv, "LwM2M server on", 60)
            with bs_log.open("w") as f:
                bs = CHILDREN.start([*command(profile, "bootstrap-server"), "bootstrap-server",
                                     "--coaps", f"127.0.0.1:{bs_port}", "--server-uri", f"coaps://127.0.0.1:{port}",
                                     "--lifetime", str(LIFETIME), "--data-dir", str(data),
                                     "--rate", "0", "--identity-rate", "0"],
                                    stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            wait_for_line(bs_log, bs, "bootstrap server on", 60)
            deadline = time.monotonic() + 10
            while not (data / "api-url").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            api_url = (data / "api-url").read_text().strip()

            driver = start_driver(factory, concurrency, timeout, tmp / "devices.log", profile)
            driver.expect("loaded", 120)
            time.sleep(settle)
            pids = {"server": srv.pid, "bootstrap": bs.pid, "devices": driver.proc.pid}
            before = {k: proc_sample(p) for k, p in pids.items()}
            m0, w0 = machine_cpu_s(), time.perf_counter()
            driver.send("go")
            done = driver.expect("done", timeout + 30)
            at_done = {k: proc_sample(p) for k, p in pids.items()}
            m1, w1 = machine_cpu_s(), time.perf_counter()
            on_server = registered_on_server(api_url, (data / "api-token").read_text().strip())
            time.sleep(settle)
            held = {k: proc_sample(p) for k, p in pids.items()}
            driver.send("stop")
            stopped = driver.expect("stopped", 120)
            time.sleep(settle)
            after = {k: proc_sample(p) for k, p in pids.items()}
            on_server_after = registered_on_server(api_url, (data / "api-token").read_text().strip())
        finally:
            if driver is not None:
                driver.close()
            for proc in (bs, srv):
                if proc is not None:
                    CHILDREN.stop(proc, timeout=30)
            if profile is not None:
                for name in ("server", "bootstrap-server", "devices"):
                    write_profile_text(profile / f"{name}.prof")

    ok = done["registered"]
    wall = (done["t_last_registered"] - done["t_first_bootstrap"]) if ok and done["t_first_bootstrap"] else None
    # CPU up to `settle` s after the last Register: what the servers finish after answering (storage, audit) counts
    cpu = {k: held[k]["cpu_s"] - before[k]["cpu_s"] for k in pids}
    ours = sum(at_done[k]["cpu_s"] - before[k]["cpu_s"] for k in pids)
    window = w1 - w0
    other = max(0.0, (m1 - m0) - ours)

    def rss_per_device(kind: str, later: dict[str, dict[str, float]]) -> float | None:
        return r((later[kind]["rss_kib"] - before[kind]["rss_kib"]) * 1024 / n, 0) if n else None

    return {
        "devices": n, "concurrency": concurrency, "provision_s": r(provision_s, 2),
        "registered": ok, "registered_on_server": on_server, "failed_at_end": done["failed_now"],
        "pending_at_end": done["pending_now"], "wall_s": r(wall, 3),
        "devices_per_s": r(ok / wall, 1) if wall else None,
        "go_to_first_bootstrap_ms": r((done["t_first_bootstrap"] - done["t_go"]) * 1000, 1)
        if done["t_first_bootstrap"] else None,
        "lat_ms": done["lat_ms"],
        "retries": {"bootstrap_attempts": done["bootstrap_attempts"], "bootstraps": done["bootstraps"],
                    "bootstrap_failures": done["bootstrap_failures"],
                    "bootstrap_busy_retries": done["bootstrap_attempts"] - done["bootstraps"]
                    - done["bootstrap_failures"],
                    "registers": done["registers"], "updates": done["updates"],
                    "failed_requests": done["failed_requests"],
                    "failed_transitions": done["failed_transitions"],
                    "bootstrap_fallbacks": done["bootstrap_fallbacks"]},
        "cpu_s": {k: r(v, 2) for k, v in cpu.items()},
        "system_cpu_s": {k: r(held[k]["sys_s"] - before[k]["sys_s"], 2) for k in pids},
        "cpu_ms_per_device": {k: r(v * 1000 / max(ok, 1), 2) for k, v in cpu.items()},
        "cpu_ms_per_device_both_servers": r((cpu["server"] + cpu["bootstrap"]) * 1000 / max(ok, 1), 2),
        "window_s": r(window, 2), "other_cpu_s": r(other, 2),
        "other_pct_of_machine": r(100 * other / (window * (os.cpu_count() or 1)), 1),
        "rss_kib": {k: {"before": before[k]["rss_kib"], "all_registered": held[k]["rss_kib"],
                        "after_deregister": after[k]["rss_kib"]} for k in ("server", "bootstrap")},
        "rss_bytes_per_device": {"server": rss_per_device("server", held),
                                 "bootstrap": rss_per_device("bootstrap", held),
                                 "bootstrap_at_done": rss_per_device("bootstrap", at_done)},
        "deregister": {"seconds": stopped["seconds"], "deregisters": stopped["deregisters"],
                       "server_cpu_s": r(after["server"]["cpu_s"] - held["server"]["cpu_s"], 2),
                       "registered_on_server_after": on_server_after},
    }


# --------------------------------------------------------------------------- output


def fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.2f}" if abs(x) < 100 else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


ROWS: list[tuple[str, Any]] = [
    ("devices registered / N", lambda m: f"{m['registered']}/{m['devices']} (server says {m['registered_on_server']})"),
    ("wall s, 1st bootstrap -> all registered", lambda m: m["wall_s"]),
    ("devices/s (bootstrap + register)", lambda m: m["devices_per_s"]),
    ("latency per device p50 / p90 / max ms",
     lambda m: f"{fmt(m['lat_ms']['p50'])} / {fmt(m['lat_ms']['p90'])} / {fmt(m['lat_ms']['max'])}"),
    ("LwM2M server CPU s / ms per device",
     lambda m: f"{fmt(m['cpu_s']['server'])} / {fmt(m['cpu_ms_per_device']['server'])}"),
    ("bootstrap server CPU s / ms per device",
     lambda m: f"{fmt(m['cpu_s']['bootstrap'])} / {fmt(m['cpu_ms_per_device']['bootstrap'])}"),
    ("  of which kernel (system) CPU s: server / bootstrap",
     lambda m: f"{fmt(m['system_cpu_s']['server'])} / {fmt(m['system_cpu_s']['bootstrap'])}"),
    ("both servers CPU ms per device (2 handshakes)", lambda m: m["cpu_ms_per_device_both_servers"]),
    ("devices (client) CPU s / ms per device",
     lambda m: f"{fmt(m['cpu_s']['devices'])} / {fmt(m['cpu_ms_per_device']['devices'])}"),
    ("rest of machine CPU s (% of all CPUs)", lambda m: f"{fmt(m['other_cpu_s'])} ({m['other_pct_of_machine']}%)"),
    ("bootstrap attempts / busy 5.03 / failed",
     lambda m: f"{m['retries']['bootstrap_attempts']} / {m['retries']['bootstrap_busy_retries']} / "
               f"{m['retries']['bootstrap_failures']}"),
    ("registers / updates / failed requests / fallbacks",
     lambda m: f"{m['retries']['registers']} / {m['retries']['updates']} / {m['retries']['failed_requests']} / "
               f"{m['retries']['bootstrap_fallbacks']}"),
    ("LwM2M server RSS MiB before / held / after",
     lambda m: "/".join(f"{m['rss_kib']['server'][k] / 1024:.1f}"
                        for k in ("before", "all_registered", "after_deregister"))),
    ("LwM2M server bytes per connected device", lambda m: m["rss_bytes_per_device"]["server"]),
    ("bootstrap server RSS MiB before / done / after",
     lambda m: "/".join(f"{m['rss_kib']['bootstrap'][k] / 1024:.1f}"
                        for k in ("before", "all_registered", "after_deregister"))),
    ("bootstrap server bytes per device (kept)", lambda m: m["rss_bytes_per_device"]["bootstrap"]),
    ("de-register all: s / server CPU s",
     lambda m: f"{fmt(m['deregister']['seconds'])} / {fmt(m['deregister']['server_cpu_s'])}"),
    ("factory provision s", lambda m: m["provision_s"]),
]


def medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    def med(get: Any) -> float | None:
        values = [v for v in (get(m) for m in runs) if v is not None]
        return r(statistics.median(values), 2) if values else None

    return {"devices_per_s": med(lambda m: m["devices_per_s"]),
            "server_cpu_ms": med(lambda m: m["cpu_ms_per_device"]["server"]),
            "bootstrap_cpu_ms": med(lambda m: m["cpu_ms_per_device"]["bootstrap"]),
            "devices_cpu_ms": med(lambda m: m["cpu_ms_per_device"]["devices"]),
            "server_bytes": med(lambda m: m["rss_bytes_per_device"]["server"]),
            "bootstrap_bytes": med(lambda m: m["rss_bytes_per_device"]["bootstrap"])}


def print_table(runs: list[dict[str, Any]]) -> None:
    width = max(len(name) for name, _ in ROWS)
    cells = [[fmt(get(m)) if not isinstance(get(m), str) else get(m) for _, get in ROWS] for m in runs]
    col = max(12, *(len(c) for run in cells for c in run))
    print("\n" + " " * width + "  " + "  ".join(f"{'run ' + str(i + 1) + ' (n=' + str(m['devices']) + ')':>{col}}"
                                                for i, m in enumerate(runs)))
    for i, (name, _) in enumerate(ROWS):
        print(f"{name:<{width}}  " + "  ".join(f"{run[i]:>{col}}" for run in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--devices", type=int, default=1000, help="devices to bootstrap and register")
    ap.add_argument("--quick", action="store_true", help="100 devices")
    ap.add_argument("--runs", type=int, default=1, help="repeat the whole run (fresh servers each time)")
    ap.add_argument("--concurrency", type=int, default=50, help="devices starting at once (Fleet's default)")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="seconds for all devices to register (default: 60 + 0.3 s per device)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before each RSS sample")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each run, wait up to S seconds for the machine to be under 10%% busy")
    ap.add_argument("--profile", type=Path, help="run the three processes under cProfile; write DIR/*.prof")
    args = ap.parse_args()
    n = 100 if args.quick else args.devices
    timeout = args.timeout or 60 + 0.3 * n
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()

    stop_children_on_signals()
    busy, machine = machine_note()
    print(f"bootstrap + register over DTLS-PSK: {n} devices from `scratch factory provision`, {args.concurrency} "
          f"starting at once, `scratch server` + `scratch bootstrap-server` + the devices in 3 processes "
          f"({machine}){' under cProfile' if args.profile else ''}", flush=True)
    runs: list[dict[str, Any]] = []
    try:
        for i in range(args.runs):
            if args.wait_idle > 0:
                wait_idle(args.wait_idle)
            m = run_once(n, args.concurrency, timeout, args.settle, args.profile)
            runs.append(m)
            warn = " -- WARNING: the machine was shared" if (m["other_pct_of_machine"] or 0) > 10 else ""
            print(f"run {i + 1}: {m['registered']}/{n} registered in {fmt(m['wall_s'])} s = "
                  f"{fmt(m['devices_per_s'])} devices/s; server {fmt(m['cpu_ms_per_device']['server'])} + bootstrap "
                  f"{fmt(m['cpu_ms_per_device']['bootstrap'])} CPU-ms/device; server "
                  f"{fmt(m['rss_bytes_per_device']['server'])} B/connected device; rest of machine "
                  f"{m['other_pct_of_machine']}%{warn}", flush=True)
    finally:
        CHILDREN.stop_all()
    if runs:
        print_table(runs)
        if len(runs) > 1:
            med = medians(runs)
            print(f"\nmedian of {len(runs)} runs: {fmt(med['devices_per_s'])} devices/s; CPU-ms per device: server "
                  f"{fmt(med['server_cpu_ms'])}, bootstrap server {fmt(med['bootstrap_cpu_ms'])}, devices "
                  f"{fmt(med['devices_cpu_ms'])}; server {fmt(med['server_bytes'])} B per connected device")
        print(f"\n(each device: 2 DTLS-PSK handshakes, one per server; goal for one handshake <= "
              f"{GOAL_CPU_MS_PER_HANDSHAKE} CPU-ms: bench/dtls.py measures it alone)")
    print(json.dumps({"bench": "bootstrap", "devices": n, "concurrency": args.concurrency,
                      "machine_busy_pct_before": r(busy, 1), "profiled": args.profile is not None,
                      "median": medians(runs) if runs else None, "runs": runs}))


if __name__ == "__main__":
    main()

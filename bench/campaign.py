#!/usr/bin/env python3
"""One firmware campaign to N simulated devices over plain CoAP on 127.0.0.1: throughput, server cost, bytes.
Prints figures; asserts nothing. Loopback only; every step is bounded in time; every process it starts is stopped.

Two or more processes: `scratch server --insecure` (plain CoAP; its CPU and RSS come from /proc/<pid>, so what the
devices spend is not counted -- it is reported apart) and --drivers K (default 1) driver processes, each running a
`client_sim.fleet.Fleet` (together N devices at version
1.0.0 that trust the release key exported with `scratch release key export`). The release is made with
`scratch release create` from a random (incompressible) image; the campaign is created, started and polled through
the REST API (canary 1 %, 3 waves, --max-parallel devices at once; the delivery method is each device's choice).

Reported: wall time from POST /start to "report_ready", devices per minute, jobs by final state, server CPU
(user/system) and CPU-ms per device and per MiB delivered, server RSS before / peak (sampled) / after, and the
payload (package size x devices succeeded) against the bytes the devices' UDP sockets sent and received during the
campaign. Those are MEASURED in the driver by wrapping each device's aiocoap UDP transport (CoAP messages = UDP
payload, both directions, with datagram counts); "on the wire" adds the IPv4 + UDP headers, 28 B per datagram
(computed, not captured). `client_sim.network.LinkCounters` counts datagrams, not bytes, and exists only on an
impaired link, so it is not used. The status poll (GET every --poll s) runs on the server and is counted in its CPU.

    .venv/bin/python bench/campaign.py [--quick] [-n 1000] [--image-kib 256] [--max-parallel 100]
                                       [--drivers K] [--timeout S] [--poll 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
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
)

REPO = Path(__file__).resolve().parents[1]
SCRATCH = REPO / ".venv" / "bin" / "scratch"
PREFIX = "cb-"
IP_UDP_HEADERS = 28  # IPv4 (20) + UDP (8) per datagram

# The devices, in a process of their own. Protocol on stdin/stdout (JSON lines): it starts the fleet and prints
# {"event": "registered", ...} once every device is registered (or the timeout passes); "snapshot" prints the UDP
# byte/datagram counters and the devices' versions; "stop" (or EOF) stops the fleet and prints {"event": "stopped"}.
DRIVER = r"""
import asyncio, json, logging, sys, time, uuid
from collections import Counter

from client_sim.firmware import FirmwareOptions
from client_sim.fleet import Fleet
from firmware_object.suit.keys import load_public_key

logging.basicConfig(level=logging.WARNING)
from udp_counting import WIRE  # bench/udp_counting.py: counts every datagram of the devices


def emit(**kw):
    print(json.dumps(kw), flush=True)


async def main(cfg):
    loop = asyncio.get_running_loop()
    anchor = load_public_key(open(cfg["anchor"], "rb").read())
    firmware = FirmwareOptions(trust_anchors=(anchor,), vendor_id=uuid.UUID(cfg["vendor_id"]),
                               class_id=uuid.UUID(cfg["class_id"]), version="1.0.0")
    n = cfg["devices"]
    registered = asyncio.Event()
    fleet = None

    def on_device(dev, old, new):
        if fleet is not None and fleet.status.registered == n:
            registered.set()

    fleet = Fleet(cfg["server_uri"], n, prefix=cfg["prefix"], lifetime=3600, concurrency=cfg["concurrency"],
                  drift_interval=0, firmware=firmware, on_device=on_device)
    t0 = time.time()
    starter = loop.create_task(fleet.start(timeout_per_device=60))
    try:
        await asyncio.wait_for(registered.wait(), cfg["register_timeout"])
    except TimeoutError:
        pass
    s = fleet.status
    emit(event="registered", seconds=round(time.time() - t0, 3), registered=s.registered, failed=s.failed,
         pending=s.pending)
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "snapshot":
            versions = Counter(d.firmware.version for d in fleet.devices if d.firmware is not None)
            c = [d.counters for d in fleet.devices]
            emit(event="snapshot", wire=dict(WIRE), versions=dict(versions), registered=fleet.status.registered,
                 registers=sum(x.registers for x in c), updates=sum(x.updates for x in c),
                 reboots=sum(x.reboots for x in c), failed_requests=sum(x.failed_requests for x in c))
            continue
        break  # "stop" or EOF
    starter.cancel()
    with __import__("contextlib").suppress(asyncio.CancelledError, Exception):
        await starter
    t1 = time.time()
    try:
        await asyncio.wait_for(fleet.stop(deregister=True, timeout=2.0), 120)
    except TimeoutError:
        pass
    emit(event="stopped", seconds=round(time.time() - t1, 3), stopped=fleet.status.stopped)

asyncio.run(main(json.loads(sys.argv[1])))
"""

def scratch(*args: str, timeout: float = 120) -> str:
    """Run a `scratch` command to completion; its stdout (RuntimeError with its stderr when it fails)."""
    out = subprocess.run([str(SCRATCH), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                         stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"scratch {args[0]} {args[1]} failed: {(out.stderr or out.stdout)[-500:]}")
    return out.stdout


def start_driver(cfg: dict[str, Any], log: Path) -> JsonLinesChild:
    """The device driver process."""
    return JsonLinesChild(DRIVER, [json.dumps(cfg)], log)


class Api:
    """The server's REST API (URL and bearer token from the data directory)."""

    def __init__(self, data: Path) -> None:
        deadline = time.monotonic() + 15
        while not ((data / "api-url").exists() and (data / "api-token").exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.url = (data / "api-url").read_text().strip()
        self._token = (data / "api-token").read_text().strip()

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self._token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())


# --------------------------------------------------------------------------- one run


def follow_campaign(api: Api, body: dict[str, Any], *, driver: JsonLinesChild, srv_pid: int, label: str,
                    timeout: float, poll: float, settle: float) -> dict[str, Any]:
    """Create the campaign ``body`` through the API, start it and poll it until its report is ready (or
    ``timeout``), with progress every 20 s; measured around it: the driver's snapshots (``snap0``, ``snap1``), the
    server's and the devices' /proc samples (``before``, ``at_end``, then ``after`` once ``settle`` has passed),
    the machine's CPU (``m0``, ``m1``), the wall clock (``w0``, ``w1``), the sampled peak RSS; ``final`` is the
    status with every job. (bench/gateway.py and bench/delta.py run one campaign per run this way.)"""
    pids = {"server": srv_pid, "devices": driver.proc.pid}
    driver.send("snapshot")
    snap0 = driver.expect("snapshot", 30)
    before = {k: proc_sample(p) for k, p in pids.items()}
    m0 = machine_cpu_s()
    cid = api.call("POST", "/api/campaigns", body)["id"]
    w0 = time.perf_counter()
    api.call("POST", f"/api/campaigns/{cid}/start", {})
    peak_rss, shown = before["server"]["rss_kib"], w0
    deadline = w0 + timeout
    status: dict[str, Any] = {}
    while time.perf_counter() < deadline:
        status = api.call("GET", f"/api/campaigns/{cid}")
        peak_rss = max(peak_rss, proc_sample(srv_pid)["rss_kib"])
        if status["report_ready"]:
            break
        if time.perf_counter() - shown > 20:
            shown = time.perf_counter()
            c = status["counts"]
            print(f"   {label}, {shown - w0:5.0f} s: {status['state']}, succeeded {c.get('succeeded', 0)}, "
                  f"active {sum(c.get(k, 0) for k in ('delivering', 'downloaded', 'updating'))}, pending "
                  f"{c.get('pending', 0)}", flush=True)
        time.sleep(poll)
    w1 = time.perf_counter()
    at_end = {k: proc_sample(p) for k, p in pids.items()}
    m1 = machine_cpu_s()
    driver.send("snapshot")
    snap1 = driver.expect("snapshot", 30)
    final = api.call("GET", f"/api/campaigns/{cid}?jobs=true", timeout=60)
    time.sleep(settle)
    return {"cid": cid, "snap0": snap0, "snap1": snap1, "before": before, "at_end": at_end,
            "after": proc_sample(srv_pid), "m0": m0, "m1": m1, "w0": w0, "w1": w1, "peak_rss": peak_rss,
            "ready": bool(status.get("report_ready")), "final": final}


def _snapshot(drivers: list[JsonLinesChild]) -> dict[str, Any]:
    """Every driver's snapshot, summed."""
    for d in drivers:
        d.send("snapshot")
    snaps = [d.expect("snapshot", 60) for d in drivers]
    total: dict[str, Any] = {"wire": {}, "versions": {}}
    for s in snaps:
        for k, v in s["wire"].items():
            total["wire"][k] = total["wire"].get(k, 0) + v
        for k, v in s["versions"].items():
            total["versions"][k] = total["versions"].get(k, 0) + v
        for k in ("registered", "registers", "updates", "reboots", "failed_requests"):
            total[k] = total.get(k, 0) + s[k]
    return total


def run_once(n: int, image_kib: int, max_parallel: int, timeout: float, poll: float, settle: float,
             concurrency: int, drivers_wanted: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="scratch-campaign-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        data.mkdir(mode=0o700)
        os.environ["SCRATCH_VAULT_KEY_FILE"] = str(tmp / "vault.key")  # every child: the run's own vault key
        image, anchor = tmp / "app.bin", tmp / "release.pem"
        image.write_bytes(random.Random(2024).randbytes(image_kib * 1024))
        t0 = time.perf_counter()
        rid = scratch("release", "create", str(image), "--vendor", "bench.example", "--class", "sensor",
                      "--version", "2.0.0", "--data-dir", str(data)).strip().splitlines()[-1].strip()
        release_s = time.perf_counter() - t0
        scratch("release", "key", "export", "release", "--out", str(anchor), "--data-dir", str(data))
        rel = json.loads(scratch("release", "show", rid, "--json", "--data-dir", str(data)))
        package_size = int(rel["images"][0]["package_size"])

        port = free_port()
        srv_log = tmp / "server.log"
        with srv_log.open("w") as f:
            srv = CHILDREN.start([str(SCRATCH), "server", "--insecure", "--coap", f"127.0.0.1:{port}",
                                  "--coaps", f"127.0.0.1:{free_port()}", "--api", "127.0.0.1:0",
                                  "--data-dir", str(data), "--rd-rate", "0", "--rd-endpoint-rate", "0"],
                                 stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        drivers: list[JsonLinesChild] = []
        sizes = [n // drivers_wanted + (1 if k < n % drivers_wanted else 0) for k in range(drivers_wanted)]
        prefixes = [PREFIX if drivers_wanted == 1 else f"{PREFIX}{k}-" for k in range(drivers_wanted)]
        try:
            wait_for_line(srv_log, srv, "LwM2M server on", 60)
            api = Api(data)
            register_timeout = 60 + 0.2 * max(sizes)
            for k, (size, prefix) in enumerate(zip(sizes, prefixes, strict=True)):
                cfg = {"server_uri": f"coap://127.0.0.1:{port}", "devices": size, "prefix": prefix,
                       "concurrency": concurrency, "anchor": str(anchor), "vendor_id": rel["vendor_id"],
                       "class_id": rel["class_id"], "register_timeout": register_timeout}
                drivers.append(start_driver(cfg, tmp / f"devices-{k}.log"))
            regs = [d.expect("registered", register_timeout + 30) for d in drivers]
            reg = {"registered": sum(x["registered"] for x in regs), "seconds": max(x["seconds"] for x in regs)}
            time.sleep(settle)
            pids = {"server": srv.pid, **{f"devices{k}": d.proc.pid for k, d in enumerate(drivers)}}
            snap0 = _snapshot(drivers)
            before = {k: proc_sample(p) for k, p in pids.items()}
            m0 = machine_cpu_s()
            targets = [f"{prefix}{i}" for size, prefix in zip(sizes, prefixes, strict=True) for i in range(size)]
            created = api.call("POST", "/api/campaigns", {
                "releases": [rid], "targets": targets, "name": "bench",
                "policy": {"canary_percent": 1, "waves": 3, "max_parallel": max_parallel}})
            cid = created["id"]
            w0 = time.perf_counter()
            api.call("POST", f"/api/campaigns/{cid}/start", {})
            peak_rss, shown = before["server"]["rss_kib"], w0
            deadline = w0 + timeout
            status: dict[str, Any] = {}
            while time.perf_counter() < deadline:
                status = api.call("GET", f"/api/campaigns/{cid}")
                peak_rss = max(peak_rss, proc_sample(srv.pid)["rss_kib"])
                if status["report_ready"]:
                    break
                if time.perf_counter() - shown > 20:
                    shown = time.perf_counter()
                    c = status["counts"]
                    print(f"   {shown - w0:5.0f} s: {status['state']}, succeeded {c.get('succeeded', 0)}, active "
                          f"{sum(c.get(k, 0) for k in ('delivering', 'downloaded', 'updating'))}, pending "
                          f"{c.get('pending', 0)}", flush=True)
                time.sleep(poll)
            w1 = time.perf_counter()
            at_end = {k: proc_sample(p) for k, p in pids.items()}
            m1 = machine_cpu_s()
            ready = bool(status.get("report_ready"))
            snap1 = _snapshot(drivers)
            final = api.call("GET", f"/api/campaigns/{cid}?jobs=true", timeout=60)
            time.sleep(settle)
            after = proc_sample(srv.pid)
            for d in drivers:
                d.send("stop")
            for d in drivers:
                with contextlib.suppress(RuntimeError):
                    d.expect("stopped", 150)
        finally:
            for d in drivers:
                d.close()
            CHILDREN.stop(srv, timeout=30)

    wall = w1 - w0
    counts = {k: v for k, v in final["counts"].items() if v}
    succeeded = final["counts"].get("succeeded", 0)
    methods: dict[str, int] = {}
    attempts = 0
    for job in final["jobs"]:
        methods[str(job.get("method"))] = methods.get(str(job.get("method")), 0) + 1
        attempts += int(job.get("attempts") or 0)
    user = at_end["server"]["user_s"] - before["server"]["user_s"]
    system = at_end["server"]["sys_s"] - before["server"]["sys_s"]
    dev_cpu = sum(at_end[k]["user_s"] + at_end[k]["sys_s"] - before[k]["user_s"] - before[k]["sys_s"]
                  for k in pids if k != "server")
    other = max(0.0, (m1 - m0) - (user + system) - dev_cpu)
    wire = {k: snap1["wire"][k] - snap0["wire"][k] for k in snap1["wire"]}
    datagrams = wire["datagrams_out"] + wire["datagrams_in"]
    udp_payload = wire["bytes_out"] + wire["bytes_in"]
    on_wire = udp_payload + IP_UDP_HEADERS * datagrams
    payload = package_size * succeeded
    mib = payload / 2**20
    return {
        "devices": n, "drivers": drivers_wanted, "image_kib": image_kib, "package_size": package_size,
        "max_parallel": max_parallel,
        "release_create_s": r(release_s, 2), "registered": reg["registered"], "register_s": reg["seconds"],
        "campaign": cid, "state": final["state"], "reason": final.get("reason"), "report_ready": ready,
        "waves": [w["size"] for w in final["waves"]], "counts": counts, "methods": methods, "attempts": attempts,
        "versions_on_devices": snap1["versions"], "wall_s": r(wall, 2),
        "devices_per_min": r(succeeded * 60 / wall, 1) if wall > 0 else None,
        "server_cpu_s": {"user": r(user, 2), "system": r(system, 2), "total": r(user + system, 2)},
        "server_cpu_ms_per_device": r((user + system) * 1000 / max(succeeded, 1), 2),
        "server_cpu_ms_per_mib": r((user + system) * 1000 / mib, 1) if mib else None,
        "devices_cpu_s": r(dev_cpu, 2), "other_cpu_s": r(other, 2),
        "other_pct_of_machine": r(100 * other / (wall * (os.cpu_count() or 1)), 1) if wall > 0 else None,
        "server_rss_mib": {"before": r(before["server"]["rss_kib"] / 1024, 1), "peak_sampled": r(peak_rss / 1024, 1),
                           "after": r(after["rss_kib"] / 1024, 1), "hwm": r(after["hwm_kib"] / 1024, 1)},
        "bytes": {"payload": payload, "udp_payload_measured": udp_payload, "datagrams_measured": datagrams,
                  "datagrams_out": wire["datagrams_out"], "datagrams_in": wire["datagrams_in"],
                  "bytes_out": wire["bytes_out"], "bytes_in": wire["bytes_in"],
                  "on_wire_with_ip_udp_headers": on_wire,
                  "udp_payload_over_payload": r(udp_payload / payload, 3) if payload else None,
                  "on_wire_over_payload": r(on_wire / payload, 3) if payload else None},
        "device_counters": {k: snap1[k] - snap0[k] for k in ("registers", "updates", "reboots", "failed_requests")},
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


def mib(b: int) -> str:
    return f"{b / 2**20:,.1f} MiB"


ROWS: list[tuple[str, Any]] = [
    ("devices registered / N (s to register)", lambda m: f"{m['registered']}/{m['devices']} ({fmt(m['register_s'])})"),
    ("campaign state (waves)", lambda m: f"{m['state']} ({'+'.join(map(str, m['waves']))})"
     + ("" if m["report_ready"] else " NO REPORT: timed out")),
    ("jobs by state", lambda m: ", ".join(f"{k} {v}" for k, v in m["counts"].items())),
    ("delivery method / attempts", lambda m: ", ".join(f"{k} {v}" for k, v in m["methods"].items())
     + f" / {m['attempts']}"),
    ("wall s, POST start -> report_ready", lambda m: m["wall_s"]),
    ("devices updated per minute", lambda m: m["devices_per_min"]),
    ("server CPU s user / system", lambda m: f"{fmt(m['server_cpu_s']['user'])} / {fmt(m['server_cpu_s']['system'])}"),
    ("server CPU-ms per device / per MiB delivered",
     lambda m: f"{fmt(m['server_cpu_ms_per_device'])} / {fmt(m['server_cpu_ms_per_mib'])}"),
    ("devices (driver) CPU s; rest of machine CPU s (%)",
     lambda m: f"{fmt(m['devices_cpu_s'])}; {fmt(m['other_cpu_s'])} ({m['other_pct_of_machine']}%)"),
    ("server RSS MiB before / peak (sampled) / after",
     lambda m: f"{m['server_rss_mib']['before']} / {m['server_rss_mib']['peak_sampled']} / "
               f"{m['server_rss_mib']['after']} (VmHWM {m['server_rss_mib']['hwm']})"),
    ("payload: package B x succeeded", lambda m: f"{m['package_size']:,} x {m['counts'].get('succeeded', 0)} = "
                                                 f"{mib(m['bytes']['payload'])}"),
    ("UDP payload measured (CoAP msgs), both ways",
     lambda m: f"{mib(m['bytes']['udp_payload_measured'])} (x{fmt(m['bytes']['udp_payload_over_payload'])})"),
    ("  datagrams device->server / server->device",
     lambda m: f"{m['bytes']['datagrams_out']:,} / {m['bytes']['datagrams_in']:,}"),
    ("on the wire (+28 B IPv4/UDP per datagram)",
     lambda m: f"{mib(m['bytes']['on_wire_with_ip_udp_headers'])} (x{fmt(m['bytes']['on_wire_over_payload'])})"),
    ("device registers / updates / reboots / failed req",
     lambda m: "/".join(str(m["device_counters"][k]) for k in ("registers", "updates", "reboots",
                                                                "failed_requests"))),
]


def print_table(m: dict[str, Any]) -> None:
    width = max(len(name) for name, _ in ROWS)
    print(f"\n{'':<{width}}  n={m['devices']}, {m['image_kib']} KiB image, max_parallel {m['max_parallel']}")
    for name, get in ROWS:
        value = get(m)
        print(f"{name:<{width}}  {value if isinstance(value, str) else fmt(value)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--devices", type=int, default=1000, help="devices in the campaign")
    ap.add_argument("--quick", action="store_true", help="100 devices")
    ap.add_argument("--image-kib", type=int, default=256, help="image size in KiB (random bytes)")
    ap.add_argument("--max-parallel", type=int, default=100, help="the campaign policy's max_parallel")
    ap.add_argument("--concurrency", type=int, default=50, help="devices registering at once (Fleet)")
    ap.add_argument("--drivers", type=int, default=1,
                    help="device processes (the devices split between them; several for 10,000 devices)")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="seconds for the campaign to report (default: 120 + 1 s per device)")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between two GET of the campaign status")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before the RSS samples")
    args = ap.parse_args()
    n = 100 if args.quick else args.devices
    timeout = args.timeout or 120 + 1.0 * n

    stop_children_on_signals()
    busy, machine = machine_note()
    print(f"campaign over plain CoAP: {n} devices, {args.image_kib} KiB image, max_parallel {args.max_parallel}, "
          f"`scratch server` and the devices in {1 + args.drivers} processes ({machine})", flush=True)
    m: dict[str, Any] | None = None
    try:
        m = run_once(n, args.image_kib, args.max_parallel, timeout, args.poll, args.settle, args.concurrency,
                     max(1, args.drivers))
    finally:
        CHILDREN.stop_all()
    print_table(m)
    if (m["other_pct_of_machine"] or 0) > 10:
        print("WARNING: the rest of the machine took more than 10% of the CPUs meanwhile")
    print("(bytes: measured on the devices' UDP sockets, CoAP messages both ways; IP/UDP headers computed, "
          "not captured)")
    print(json.dumps({"bench": "campaign", "machine_busy_pct_before": r(busy, 1), **m}))


if __name__ == "__main__":
    main()

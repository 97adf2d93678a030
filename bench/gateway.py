#!/usr/bin/env python3
"""The same firmware campaign twice on 127.0.0.1 over plain CoAP: (a) RELAYED to N end devices behind ONE LwM2M
gateway, (b) DIRECT to N devices. Wall time, bytes on each link, server CPU. Prints figures; asserts nothing.
Loopback only; every step is bounded in time; every process it starts is stopped.

Each run has a fresh data directory and its own two processes: `scratch server --insecure` (its CPU and RSS come
from /proc/<pid>; what the devices spend is reported apart) and a driver speaking JSON lines on stdin/stdout, that
runs either one `client_sim.gateway.Gateway` with N end devices (endpoints gb-gw-c0..; each on its own simulated
local link, --local-latency s and --local-bandwidth B/s per end device) or a `client_sim.fleet.Fleet` of N direct
devices; all at version 1.0.0, trusting the release key exported with `scratch release key export`. The release is
made with `scratch release create` from the same random (incompressible) image in both runs; the campaign is
created, started and polled through the REST API (canary 1 %, 3 waves, --max-parallel devices at once; the delivery
method is each device's choice) and targets the N end devices in (a), the N direct devices in (b).

Reported per run: wall time from POST /start to "report_ready", devices per minute, jobs by final state and path,
server CPU (user/system, ms per device), server RSS before / peak (sampled) / after, the package size, and the bytes
on the server's link -- server<->gateway in (a), server<->devices in (b) -- MEASURED in the driver by wrapping the
aiocoap UDP transport of every socket as bench/campaign.py does (CoAP messages = UDP payload, both ways, datagram
counts; the gateway's own uplink counters are printed beside them as a cross-check), with the ratio
"uplink bytes / (package x N)": about 1/N in (a) when the gateway downloads the package once, about 1 in (b).
For (a) also the local links (`Gateway.stats()`: bytes carried, frames, retransmissions; the gateway cache's
misses/hits/downloads) and their time: airtime = bytes / bandwidth (+ lost frames), plus the latency of each
transfer, per end device. Every end device has a medium of its own, so the end devices' transfers overlap; raise
--local-bandwidth or lower --local-latency to see how much of (a)'s wall time is the local link. The server's
requests to the end devices all go to the gateway's one address, and aiocoap keeps one confirmable request at a time
per remote (NSTART = 1; the others wait in its backlog), so each of them costs a local-link round trip (2 x latency
plus airtime) in series: in (a) the local link's LATENCY, more than its bandwidth, sets the wall time.

There is no Leshan figure here: Eclipse Leshan (2.0.0-M17) has no server-side LwM2M Gateway support
(eclipse-leshan/leshan#1725), so (a) is compared with (b), not with Leshan.

    .venv/bin/python bench/gateway.py [--quick] [-n 50] [--image-kib 256] [--max-parallel 100]
                                      [--local-latency 0.05] [--local-bandwidth 100000] [--only relayed|direct]
                                      [--timeout S] [--poll 0.5]
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
from pathlib import Path
from typing import Any

from campaign import IP_UDP_HEADERS, SCRATCH, Api, fmt, follow_campaign, mib, scratch  # bench/campaign.py: same helpers
from processes import (  # bench/processes.py: the script's folder is on sys.path
    CHILDREN,
    JsonLinesChild,
    free_port,
    machine_note,
    r,
    stop_children_on_signals,
    wait_for_line,
    wait_idle,
)

GATEWAY = "gb-gw"  # its end devices: gb-gw-c0, gb-gw-c1, ...
DIRECT_PREFIX = "gb-d"
LESHAN_NOTE = ("Eclipse Leshan (2.0.0-M17) has no server-side LwM2M Gateway support (eclipse-leshan/leshan#1725): "
               "no Leshan figure for this bench; (a) relayed is compared with (b) direct.")

# The devices, in a process of their own. Protocol on stdin/stdout (JSON lines): it starts the gateway (mode
# "relayed") or the fleet (mode "direct") and prints {"event": "registered", ...} once the gateway / every device is
# registered (or the timeout passes); "snapshot" prints the UDP byte/datagram counters, the devices' versions and,
# for a gateway, its stats and its end devices' local-link times; "stop" (or EOF) stops everything and prints
# {"event": "stopped"}.
DRIVER = r"""
import asyncio, dataclasses, json, logging, sys, time, uuid
from collections import Counter

from client_sim.firmware import FirmwareOptions
from client_sim.fleet import Fleet
from client_sim.gateway import Gateway, LocalLinkConditions
from firmware_object.suit.keys import load_public_key

logging.basicConfig(level=logging.WARNING)
from udp_counting import WIRE  # bench/udp_counting.py: counts every datagram of the devices


def emit(**kw):
    print(json.dumps(kw), flush=True)


def local_times(gateway):
    # Per end device: airtime (bytes and lost frames over the bandwidth, plus the ack timeouts) and latency (one per
    # transfer); each end device has a medium of its own.
    out = []
    for child in gateway.children:
        c, k = child.local_link.counters, child.local_link.conditions
        air = (c.bytes + c.retransmissions * k.frame_size) / k.bandwidth + c.retransmissions * 2 * k.latency
        out.append({"airtime_s": air, "latency_s": c.transfers * k.latency, "transfers": c.transfers})
    return out


async def main(cfg):
    loop = asyncio.get_running_loop()
    anchor = load_public_key(open(cfg["anchor"], "rb").read())
    firmware = FirmwareOptions(trust_anchors=(anchor,), vendor_id=uuid.UUID(cfg["vendor_id"]),
                               class_id=uuid.UUID(cfg["class_id"]), version="1.0.0")
    n = cfg["devices"]
    t0 = time.time()
    gateway = fleet = starter = None
    if cfg["mode"] == "relayed":
        gateway = Gateway(cfg["gateway"], cfg["server_uri"], children=n, child_firmware=firmware, lifetime=3600,
                          drift_interval=0, local_link=LocalLinkConditions(latency=cfg["local_latency"],
                                                                           bandwidth=cfg["local_bandwidth"]))
        devices = list(gateway.children)
        ok = False
        try:
            ok = await asyncio.wait_for(gateway.start(timeout=cfg["register_timeout"]), cfg["register_timeout"] + 5)
        except (TimeoutError, Exception) as e:
            print(f"gateway start: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        emit(event="registered", seconds=round(time.time() - t0, 3), registered=int(bool(ok)),
             children=gateway.stats().children)
    else:
        registered = asyncio.Event()

        def on_device(dev, old, new):
            if fleet is not None and fleet.status.registered == n:
                registered.set()

        fleet = Fleet(cfg["server_uri"], n, prefix=cfg["prefix"], lifetime=3600, concurrency=cfg["concurrency"],
                      drift_interval=0, firmware=firmware, on_device=on_device)
        devices = list(fleet.devices)
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
            versions = Counter(d.firmware.version for d in devices if d.firmware is not None)
            c = [d.counters for d in devices]
            extra = {}
            if gateway is not None:
                extra = {"gateway": dataclasses.asdict(gateway.stats()), "local": local_times(gateway)}
            emit(event="snapshot", wire=dict(WIRE), versions=dict(versions),
                 updates=sum(x.updates for x in c), reboots=sum(x.reboots for x in c),
                 failed_requests=sum(x.failed_requests for x in c), **extra)
            continue
        break  # "stop" or EOF
    if starter is not None:
        starter.cancel()
        with __import__("contextlib").suppress(asyncio.CancelledError, Exception):
            await starter
    t1 = time.time()
    try:
        if gateway is not None:
            await asyncio.wait_for(gateway.stop(deregister=True, timeout=2.0), 120)
        else:
            await asyncio.wait_for(fleet.stop(deregister=True, timeout=2.0), 120)
    except TimeoutError:
        pass
    emit(event="stopped", seconds=round(time.time() - t1, 3))

asyncio.run(main(json.loads(sys.argv[1])))
"""


def wait_for_children(api: Api, n: int, timeout: float) -> tuple[int, float]:
    """Wait until the server lists ``n`` end devices behind the gateway; (how many it lists, seconds waited)."""
    t0 = time.perf_counter()
    seen = 0
    while time.perf_counter() - t0 < timeout:
        with contextlib.suppress(OSError, ValueError):
            seen = len(api.call("GET", f"/api/devices?gateway={GATEWAY}"))
        if seen >= n:
            break
        time.sleep(0.2)
    return seen, time.perf_counter() - t0


# --------------------------------------------------------------------------- one run


def run_once(mode: str, n: int, image_kib: int, max_parallel: int, timeout: float, poll: float, settle: float,
             concurrency: int, local_latency: float, local_bandwidth: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"scratch-gateway-bench-{mode}-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        data.mkdir(mode=0o700)
        os.environ["SCRATCH_VAULT_KEY_FILE"] = str(tmp / "vault.key")  # every child: the run's own vault key
        image, anchor = tmp / "app.bin", tmp / "release.pem"
        image.write_bytes(random.Random(2024).randbytes(image_kib * 1024))  # the same image in both runs
        rid = scratch("release", "create", str(image), "--vendor", "bench.example", "--class", "sensor",
                      "--version", "2.0.0", "--data-dir", str(data)).strip().splitlines()[-1].strip()
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
        driver: JsonLinesChild | None = None
        try:
            wait_for_line(srv_log, srv, "LwM2M server on", 60)
            api = Api(data)
            cfg = {"mode": mode, "server_uri": f"coap://127.0.0.1:{port}", "devices": n, "gateway": GATEWAY,
                   "prefix": DIRECT_PREFIX, "concurrency": concurrency, "anchor": str(anchor),
                   "vendor_id": rel["vendor_id"], "class_id": rel["class_id"], "register_timeout": 60 + 0.2 * n,
                   "local_latency": local_latency, "local_bandwidth": local_bandwidth}
            driver = JsonLinesChild(DRIVER, [json.dumps(cfg)], tmp / "devices.log")
            reg = driver.expect("registered", cfg["register_timeout"] + 30)
            if mode == "relayed":
                targets = [f"{GATEWAY}-c{i}" for i in range(n)]
                listed, waited = wait_for_children(api, n, cfg["register_timeout"])
                reg = {**reg, "registered": listed, "seconds": r(reg["seconds"] + waited, 3)}
            else:
                targets = [f"{DIRECT_PREFIX}{i}" for i in range(n)]
            time.sleep(settle)
            run = follow_campaign(api, {
                "releases": [rid], "targets": targets, "name": f"bench-{mode}",
                "policy": {"canary_percent": 1, "waves": 3, "max_parallel": max_parallel}},
                                  driver=driver, srv_pid=srv.pid, label=mode, timeout=timeout, poll=poll, settle=settle)
            cid, snap0, snap1, before, at_end, after = (run[k] for k in ("cid", "snap0", "snap1", "before",
                                                                          "at_end", "after"))
            m0, m1, w0, w1, peak_rss, ready, final = (run[k] for k in ("m0", "m1", "w0", "w1", "peak_rss", "ready",
                                                                      "final"))
            driver.send("stop")
            with contextlib.suppress(RuntimeError):
                driver.expect("stopped", 150)
        finally:
            if driver is not None:
                driver.close()
            CHILDREN.stop(srv, timeout=30)

    wall = w1 - w0
    counts = {k: v for k, v in final["counts"].items() if v}
    succeeded = final["counts"].get("succeeded", 0)
    methods: dict[str, int] = {}
    paths: dict[str, int] = {}
    attempts = 0
    for job in final["jobs"]:
        methods[str(job.get("method"))] = methods.get(str(job.get("method")), 0) + 1
        paths[str(job.get("path"))] = paths.get(str(job.get("path")), 0) + 1
        attempts += int(job.get("attempts") or 0)
    user = at_end["server"]["user_s"] - before["server"]["user_s"]
    system = at_end["server"]["sys_s"] - before["server"]["sys_s"]
    dev_cpu = (at_end["devices"]["user_s"] + at_end["devices"]["sys_s"]
               - before["devices"]["user_s"] - before["devices"]["sys_s"])
    other = max(0.0, (m1 - m0) - (user + system) - dev_cpu)
    wire = {k: snap1["wire"][k] - snap0["wire"][k] for k in snap1["wire"]}
    datagrams = wire["datagrams_out"] + wire["datagrams_in"]
    udp_payload = wire["bytes_out"] + wire["bytes_in"]
    on_wire = udp_payload + IP_UDP_HEADERS * datagrams
    m: dict[str, Any] = {
        "mode": mode, "devices": n, "image_kib": image_kib, "package_size": package_size,
        "max_parallel": max_parallel, "registered": reg["registered"], "register_s": reg["seconds"],
        "campaign": cid, "state": final["state"], "reason": final.get("reason"), "report_ready": ready,
        "waves": [w["size"] for w in final["waves"]], "counts": counts, "methods": methods, "paths": paths,
        "attempts": attempts, "versions_on_devices": snap1["versions"], "wall_s": r(wall, 2),
        "devices_per_min": r(succeeded * 60 / wall, 1) if wall > 0 else None,
        "server_cpu_s": {"user": r(user, 2), "system": r(system, 2), "total": r(user + system, 2)},
        "server_cpu_ms_per_device": r((user + system) * 1000 / max(succeeded, 1), 2),
        "devices_cpu_s": r(dev_cpu, 2), "other_cpu_s": r(other, 2),
        "other_pct_of_machine": r(100 * other / (wall * (os.cpu_count() or 1)), 1) if wall > 0 else None,
        "server_rss_mib": {"before": r(before["server"]["rss_kib"] / 1024, 1), "peak_sampled": r(peak_rss / 1024, 1),
                           "after": r(after["rss_kib"] / 1024, 1), "hwm": r(after["hwm_kib"] / 1024, 1)},
        "uplink": {"bytes_to_server": wire["bytes_out"], "bytes_from_server": wire["bytes_in"],
                   "datagrams_to_server": wire["datagrams_out"], "datagrams_from_server": wire["datagrams_in"],
                   "udp_payload": udp_payload, "on_wire_with_ip_udp_headers": on_wire,
                   "over_package_x_n": r(udp_payload / (package_size * n), 4)},
        "device_counters": {k: snap1[k] - snap0[k] for k in ("updates", "reboots", "failed_requests")},
    }
    if mode == "relayed":
        g0, g1 = snap0["gateway"], snap1["gateway"]
        g = {k: g1[k] - g0[k] for k in g1 if k not in ("children", "cached_packages", "cached_bytes")}
        times0, times1 = snap0["local"], snap1["local"]
        air = [b["airtime_s"] - a["airtime_s"] for a, b in zip(times0, times1, strict=True)]
        lat = [b["latency_s"] - a["latency_s"] for a, b in zip(times0, times1, strict=True)]
        per = [a + b for a, b in zip(air, lat, strict=True)]
        m["gateway"] = g
        m["local"] = {"latency_s": local_latency, "bandwidth_bps": local_bandwidth,
                      "bytes": g["local_bytes"], "frames": g["local_frames"],
                      "retransmissions": g["local_retransmissions"], "failures": g["local_failures"],
                      "airtime_s_total": r(sum(air), 2), "airtime_s_mean": r(sum(air) / n, 2),
                      "link_time_s_mean": r(sum(per) / n, 2), "link_time_s_max": r(max(per), 2),
                      "over_package_x_n": r(g["local_bytes"] / (package_size * n), 3)}
    return m


# --------------------------------------------------------------------------- output


def _uplink(m: dict[str, Any]) -> str:
    u = m["uplink"]
    return f"{u['bytes_to_server']:,} / {u['bytes_from_server']:,}"


def _relayed(get: Any) -> Any:
    return lambda m: get(m) if m["mode"] == "relayed" else "-"


ROWS: list[tuple[str, Any]] = [
    ("devices registered / N (s to register)", lambda m: f"{m['registered']}/{m['devices']} ({fmt(m['register_s'])})"),
    ("campaign state (waves)", lambda m: f"{m['state']} ({'+'.join(map(str, m['waves']))})"
     + ("" if m["report_ready"] else " NO REPORT: timed out")),
    ("jobs by state", lambda m: ", ".join(f"{k} {v}" for k, v in m["counts"].items())),
    ("job path / delivery method", lambda m: ", ".join(f"{k} {v}" for k, v in m["paths"].items()) + " / "
     + ", ".join(f"{k} {v}" for k, v in m["methods"].items())),
    ("wall s, POST start -> report_ready", lambda m: m["wall_s"]),
    ("devices updated per minute", lambda m: m["devices_per_min"]),
    ("server CPU s user / system", lambda m: f"{fmt(m['server_cpu_s']['user'])} / {fmt(m['server_cpu_s']['system'])}"),
    ("server CPU-ms per device", lambda m: m["server_cpu_ms_per_device"]),
    ("devices (driver) CPU s", lambda m: m["devices_cpu_s"]),
    ("server RSS MiB before / peak / after (VmHWM)",
     lambda m: f"{m['server_rss_mib']['before']} / {m['server_rss_mib']['peak_sampled']} / "
               f"{m['server_rss_mib']['after']} ({m['server_rss_mib']['hwm']})"),
    ("package B", lambda m: m["package_size"]),
    ("uplink: server link B to / from server", _uplink),
    ("  datagrams to / from server",
     lambda m: f"{m['uplink']['datagrams_to_server']:,} / {m['uplink']['datagrams_from_server']:,}"),
    ("  both ways; +28 B IPv4/UDP per datagram",
     lambda m: f"{mib(m['uplink']['udp_payload'])}; {mib(m['uplink']['on_wire_with_ip_udp_headers'])}"),
    ("  uplink bytes / (package x N)", lambda m: f"{m['uplink']['over_package_x_n']:.4f}"),
    ("  gateway's own uplink count B out / in", _relayed(lambda m: f"{m['gateway']['uplink_bytes_out']:,} / "
                                                                   f"{m['gateway']['uplink_bytes_in']:,}")),
    ("gateway cache misses / hits / downloads (B)",
     _relayed(lambda m: f"{m['gateway']['cache_misses']} / {m['gateway']['cache_hits']} / "
                        f"{m['gateway']['downloads']} ({m['gateway']['downloaded_bytes']:,})")),
    ("local links: latency s, bandwidth B/s", _relayed(lambda m: f"{m['local']['latency_s']:g}, "
                                                                 f"{m['local']['bandwidth_bps']:,.0f}")),
    ("  bytes (x package x N) / frames / retx",
     _relayed(lambda m: f"{mib(m['local']['bytes'])} (x{m['local']['over_package_x_n']}) / "
                        f"{m['local']['frames']:,} / {m['local']['retransmissions']}")),
    ("  airtime s, sum over end devices / mean",
     _relayed(lambda m: f"{fmt(m['local']['airtime_s_total'])} / {fmt(m['local']['airtime_s_mean'])}")),
    ("  link s per end device (air+latency) mean/max",
     _relayed(lambda m: f"{fmt(m['local']['link_time_s_mean'])} / {fmt(m['local']['link_time_s_max'])}")),
    ("device reg. updates / reboots / failed req",
     lambda m: "/".join(str(m["device_counters"][k]) for k in ("updates", "reboots", "failed_requests"))),
]


def _ratio(x: float | None, y: float | None) -> str:
    return f"{x / y:.3f}" if x and y else "-"


def print_table(runs: list[dict[str, Any]]) -> None:
    width = max(len(name) for name, _ in ROWS)
    cells = [[get(m) for _, get in ROWS] for m in runs]
    cells = [[c if isinstance(c, str) else fmt(c) for c in col] for col in cells]
    heads = [{"relayed": "(a) relayed: 1 gateway", "direct": "(b) direct"}[m["mode"]] for m in runs]
    col = [max(len(h), *(len(c) for c in cs)) for h, cs in zip(heads, cells, strict=True)]
    m0 = runs[0]
    print(f"\n{'':<{width}}  n={m0['devices']}, {m0['image_kib']} KiB image, max_parallel {m0['max_parallel']}")
    print(f"{'':<{width}}  " + "  ".join(f"{h:<{w}}" for h, w in zip(heads, col, strict=True)))
    for i, (name, _) in enumerate(ROWS):
        print(f"{name:<{width}}  " + "  ".join(f"{cs[i]:<{w}}" for cs, w in zip(cells, col, strict=True)))
    by = {m["mode"]: m for m in runs}
    if len(by) == 2:
        a, b = by["relayed"], by["direct"]
        print(f"{'(a) / (b)':<{width}}  wall {_ratio(a['wall_s'], b['wall_s'])}, server CPU "
              f"{_ratio(a['server_cpu_s']['total'], b['server_cpu_s']['total'])}, uplink bytes "
              f"{_ratio(a['uplink']['udp_payload'], b['uplink']['udp_payload'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--devices", type=int, default=50, help="devices in each campaign")
    ap.add_argument("--quick", action="store_true", help="10 devices, 64 KiB image")
    ap.add_argument("--image-kib", type=int, default=256, help="image size in KiB (random bytes)")
    ap.add_argument("--max-parallel", type=int, default=100, help="the campaign policy's max_parallel")
    ap.add_argument("--concurrency", type=int, default=50, help="direct devices registering at once (Fleet)")
    ap.add_argument("--local-latency", type=float, default=0.05, help="s per transfer on each end device's link")
    ap.add_argument("--local-bandwidth", type=float, default=100_000.0, help="B/s of each end device's link")
    ap.add_argument("--only", choices=("relayed", "direct"), help="run (a) relayed or (b) direct only")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="seconds for each campaign to report (default: 180 + 2 s per device)")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between two GET of the campaign status")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before the RSS samples")
    args = ap.parse_args()
    n, image_kib = (10, 64) if args.quick else (args.devices, args.image_kib)
    timeout = args.timeout or 180 + 2.0 * n
    modes = [args.only] if args.only else ["relayed", "direct"]

    stop_children_on_signals()
    busy, machine = machine_note()
    print(f"one campaign, relayed through one gateway and direct: {n} devices, {image_kib} KiB image, max_parallel "
          f"{args.max_parallel}; local links {args.local_latency:g} s, {args.local_bandwidth:,.0f} B/s per end "
          f"device; `scratch server` and the devices in 2 processes per run ({machine})", flush=True)
    print(LESHAN_NOTE, flush=True)
    runs: list[dict[str, Any]] = []
    try:
        for i, mode in enumerate(modes):
            if i:
                wait_idle(30)
            print(f" run {'(a) relayed' if mode == 'relayed' else '(b) direct'} ...", flush=True)
            runs.append(run_once(mode, n, image_kib, args.max_parallel, timeout, args.poll, args.settle,
                                 args.concurrency, args.local_latency, args.local_bandwidth))
    finally:
        CHILDREN.stop_all()
    print_table(runs)
    if any((m["other_pct_of_machine"] or 0) > 10 for m in runs):
        print("WARNING: the rest of the machine took more than 10% of the CPUs meanwhile")
    print("(uplink bytes: measured on the driver's UDP sockets -- the gateway's one socket in (a), the devices' in "
          "(b) -- CoAP messages both ways; IP/UDP headers computed, not captured. Local links: simulated, one medium "
          "per end device)")
    print(LESHAN_NOTE)
    print(json.dumps({"bench": "gateway", "machine_busy_pct_before": r(busy, 1), "runs": runs}))


if __name__ == "__main__":
    main()

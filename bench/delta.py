#!/usr/bin/env python3
"""The same campaign twice on 127.0.0.1 over plain CoAP, to N devices that run a 1 MiB image: (a) FULL, the new
release without a delta, (b) DELTA, the same release with its delta from the version the devices run. Bytes on the
wire, wall time, server CPU and memory. Prints figures; asserts nothing. Loopback only; every step is bounded in
time; every process it starts is stopped.

BASE is a random (incompressible, seeded) 1 MiB image, NEW is BASE with --changed-kib KiB replaced by random bytes
in 4 places (one in each quarter, seeded). Each run has a fresh data directory and makes its releases with the CLI:
`scratch release create --system app=base.bin --version 1.0.0` and `... app=new.bin --version 2.0.0`; in (b) only,
`scratch release delta NEW --from BASE` (its time is reported). Then two processes: `scratch server --insecure`
(its CPU and RSS come from /proc/<pid>; what the devices spend is reported apart) and a driver speaking JSON lines
on stdin/stdout that runs a `client_sim.fleet.Fleet` of N devices, each a system of one component
`InstalledComponent("app", "image", "1.0.0", BASE)` at BASE's sequence number, trusting the release key exported
with `scratch release key export`. The campaign is created, started and polled through the REST API (canary 1 %,
3 waves, --max-parallel devices at once, --method pull or push for every device).

Reported per run: wall time from POST /start to "report_ready", jobs by final state and by `delivery` (full or
delta, from the status's jobs), the job time (started_at -> finished_at) median and max, server CPU (user/system,
ms per device), server RSS before / peak (sampled) / after, the package sizes, and the bytes between server and
devices, both ways, with datagram counts: MEASURED in the driver by wrapping every device's aiocoap UDP transport
as bench/gateway.py does (CoAP messages = UDP payload; "+28 B" adds the IPv4/UDP headers, computed), per device
too, with the devices' own count of package bytes they pulled as a cross-check. Then (a) against (b): bytes on the
wire saved by the delta (goal: at least 80 %), wall time and server CPU ratios.

Eclipse Leshan has no delta updates. With $LESHAN_SERVER_DEMO (the Leshan server demo launcher) and
../shared/tools/lwm2m_load.py ($LWM2M_LOAD), the script also runs bench/firmware.py's section "push, 1 MiB to one
device" (lwm2m_load push-bench -k 1 --size 1048576 against the Leshan demo and `scratch server --bench-api`, cold
then warm runs, with bench/firmware.py's own functions) and prints it beside the delta figures: the full image a
Leshan server has to send against what a delta costs with ours. Without them it says that Leshan was skipped.

    .venv/bin/python bench/delta.py [--quick] [-n 20] [--changed-kib 4] [--max-parallel 20] [--method pull|push]
                                    [--only full|delta] [--timeout S] [--poll 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from campaign import IP_UDP_HEADERS, SCRATCH, Api, fmt, follow_campaign, mib, scratch  # bench/campaign.py: same helpers
from firmware import LOAD, MIB, Leshan, Others, Scratch, note_others, print_push_table, push_series
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

PREFIX = "db-"
VENDOR, CLASS = "bench.example", "meter"
IMAGE_SIZE = MIB
PLACES = 4  # NEW differs from BASE in this many places, one in each quarter
GOAL_SAVING_PCT = 80.0

# The devices, in a process of their own. Protocol on stdin/stdout (JSON lines): it starts the fleet and prints
# {"event": "registered", ...} once every device is registered (or the timeout passes); "snapshot" prints the UDP
# byte/datagram counters, the devices' versions and what they pulled; "stop" (or EOF) stops the fleet and prints
# {"event": "stopped"}.
DRIVER = r"""
import asyncio, json, logging, sys, time, uuid
from collections import Counter

from client_sim.components import InstalledComponent
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
    base = open(cfg["base_image"], "rb").read()
    firmware = FirmwareOptions(trust_anchors=(anchor,), vendor_id=uuid.UUID(cfg["vendor_id"]),
                               class_id=uuid.UUID(cfg["class_id"]), version="1.0.0",
                               sequence_number=cfg["sequence_number"], flash_size=4 << 20,
                               components=(InstalledComponent("app", "image", "1.0.0", base),))
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
            fw = [d.firmware for d in fleet.devices if d.firmware is not None]
            c = [d.counters for d in fleet.devices]
            emit(event="snapshot", wire=dict(WIRE), versions=dict(Counter(f.version for f in fw)),
                 fetched=sum(f.fetched_bytes for f in fw), updates=sum(x.updates for x in c),
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
    emit(event="stopped", seconds=round(time.time() - t1, 3))

asyncio.run(main(json.loads(sys.argv[1])))
"""


def images(changed_kib: int) -> tuple[bytes, bytes]:
    """BASE (1 MiB, seeded random) and NEW: BASE with ``changed_kib`` KiB of new random bytes in 4 places."""
    base = random.Random(2024).randbytes(IMAGE_SIZE)
    rng = random.Random(2025)
    new = bytearray(base)
    span = changed_kib * 1024 // PLACES
    quarter = IMAGE_SIZE // PLACES
    for q in range(PLACES):
        at = q * quarter + rng.randrange(0, quarter - span + 1)
        new[at:at + span] = rng.randbytes(span)
    return base, bytes(new)


def release_id(out: str) -> str:
    return out.strip().splitlines()[-1].strip()


# --------------------------------------------------------------------------- one run


def run_once(mode: str, n: int, changed_kib: int, max_parallel: int, method: str, timeout: float, poll: float,
             settle: float, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"scratch-delta-bench-{mode}-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        data.mkdir(mode=0o700)
        os.environ["SCRATCH_VAULT_KEY_FILE"] = str(tmp / "vault.key")  # every child: the run's own vault key
        base_bin, new_bin, anchor = tmp / "base.bin", tmp / "new.bin", tmp / "release.pem"
        base, new = images(changed_kib)
        base_bin.write_bytes(base)
        new_bin.write_bytes(new)
        common = ("--vendor", VENDOR, "--class", CLASS, "--data-dir", str(data))
        base_id = release_id(scratch("release", "create", "--system", f"app={base_bin}", "--version", "1.0.0",
                                     *common))
        new_id = release_id(scratch("release", "create", "--system", f"app={new_bin}", "--version", "2.0.0",
                                    *common))
        delta: dict[str, Any] | None = None
        delta_s = None
        if mode == "delta":
            t0 = time.perf_counter()
            delta = json.loads(scratch("release", "delta", new_id, "--from", base_id, "--json", "--data-dir",
                                       str(data), timeout=300))
            delta_s = time.perf_counter() - t0
        scratch("release", "key", "export", "release", "--out", str(anchor), "--data-dir", str(data))
        rel_base = json.loads(scratch("release", "show", base_id, "--json", "--data-dir", str(data)))
        rel = json.loads(scratch("release", "show", new_id, "--json", "--data-dir", str(data)))
        full_size = int(rel["images"][0]["package_size"])
        delta_size = int(delta["package_size"]) if delta else None

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
            cfg = {"server_uri": f"coap://127.0.0.1:{port}", "devices": n, "prefix": PREFIX,
                   "concurrency": concurrency, "anchor": str(anchor), "base_image": str(base_bin),
                   "vendor_id": rel["vendor_id"], "class_id": rel["class_id"],
                   "sequence_number": int(rel_base["sequence_number"]), "register_timeout": 60 + 0.2 * n}
            driver = JsonLinesChild(DRIVER, [json.dumps(cfg)], tmp / "devices.log")
            reg = driver.expect("registered", cfg["register_timeout"] + 30)
            time.sleep(settle)
            run = follow_campaign(api, {
                "releases": [new_id], "targets": [f"{PREFIX}{i}" for i in range(n)], "name": f"bench-{mode}",
                "method": method, "policy": {"canary_percent": 1, "waves": 3, "max_parallel": max_parallel}},
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
    deliveries: dict[str, int] = {}
    methods: dict[str, int] = {}
    job_s: list[float] = []
    attempts = 0
    for job in final["jobs"]:
        deliveries[str(job.get("delivery"))] = deliveries.get(str(job.get("delivery")), 0) + 1
        methods[str(job.get("method"))] = methods.get(str(job.get("method")), 0) + 1
        attempts += int(job.get("attempts") or 0)
        if job.get("started_at") and job.get("finished_at"):
            job_s.append(job["finished_at"] - job["started_at"])
    user = at_end["server"]["user_s"] - before["server"]["user_s"]
    system = at_end["server"]["sys_s"] - before["server"]["sys_s"]
    dev_cpu = (at_end["devices"]["user_s"] + at_end["devices"]["sys_s"]
               - before["devices"]["user_s"] - before["devices"]["sys_s"])
    other = max(0.0, (m1 - m0) - (user + system) - dev_cpu)
    wire = {k: snap1["wire"][k] - snap0["wire"][k] for k in snap1["wire"]}
    datagrams = wire["datagrams_out"] + wire["datagrams_in"]
    udp_payload = wire["bytes_out"] + wire["bytes_in"]
    on_wire = udp_payload + IP_UDP_HEADERS * datagrams
    started, finished = final.get("started_at"), final.get("finished_at")
    return {
        "mode": mode, "devices": n, "changed_kib": changed_kib, "method": method, "max_parallel": max_parallel,
        "full_package": full_size, "delta_package": delta_size, "delta_create_s": r(delta_s, 2),
        "registered": reg["registered"], "register_s": reg["seconds"],
        "campaign": cid, "state": final["state"], "reason": final.get("reason"), "report_ready": ready,
        "waves": [w["size"] for w in final["waves"]], "counts": counts, "deliveries": deliveries,
        "methods": methods, "attempts": attempts, "versions_on_devices": snap1["versions"], "wall_s": r(wall, 2),
        "campaign_s": r(finished - started, 2) if started and finished else None,
        "waves_opened_s": [r(w["opened_at"] - started, 2) if started and w.get("opened_at") else None
                           for w in final["waves"]],
        "job_s": {"min": r(min(job_s), 2) if job_s else None,
                  "median": r(statistics.median(job_s), 2) if job_s else None,
                  "max": r(max(job_s), 2) if job_s else None},
        "server_cpu_s": {"user": r(user, 2), "system": r(system, 2), "total": r(user + system, 2)},
        "server_cpu_ms_per_device": r((user + system) * 1000 / max(succeeded, 1), 1),
        "devices_cpu_s": r(dev_cpu, 2), "other_cpu_s": r(other, 2),
        "other_pct_of_machine": r(100 * other / (wall * (os.cpu_count() or 1)), 1) if wall > 0 else None,
        "server_rss_mib": {"before": r(before["server"]["rss_kib"] / 1024, 1), "peak_sampled": r(peak_rss / 1024, 1),
                           "after": r(after["rss_kib"] / 1024, 1), "hwm": r(after["hwm_kib"] / 1024, 1)},
        "wire": {"bytes_to_server": wire["bytes_out"], "bytes_from_server": wire["bytes_in"],
                 "datagrams_to_server": wire["datagrams_out"], "datagrams_from_server": wire["datagrams_in"],
                 "udp_payload": udp_payload, "on_wire_with_ip_udp_headers": on_wire,
                 "udp_payload_per_device": udp_payload // max(n, 1), "on_wire_per_device": on_wire // max(n, 1)},
        "fetched_by_devices": snap1["fetched"] - snap0["fetched"],
        "device_counters": {k: snap1[k] - snap0[k] for k in ("updates", "reboots", "failed_requests")},
    }


# --------------------------------------------------------------------------- Leshan: push, 1 MiB to one device


def leshan_push(launcher: Path | None, repeats: int) -> list[tuple[str, dict[str, Any]]] | str:
    """bench/firmware.py's section "push, 1 MiB to one device" (its own functions), ours then Leshan's; a
    sentence instead when it cannot run."""
    if launcher is None:
        return "Leshan: skipped (LESHAN_SERVER_DEMO not set)"
    if not (launcher.is_file() and os.access(launcher, os.X_OK)):
        return f"Leshan: skipped ({launcher} is not an executable file)"
    if not LOAD.exists():
        return f"Leshan: skipped (no load generator at {LOAD}; set LWM2M_LOAD)"
    wait_idle(30)
    print(" Leshan comparison: push-bench, 1 MiB to one device ...", flush=True)
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="scratch-delta-bench-leshan-") as tmp_name:
        tmp = Path(tmp_name)
        for name, make in (("scratch (ours) --bench-api", lambda: Scratch(tmp, "scratch-push", bench_api=True)),
                           ("leshan M17 (default cfg)", lambda: Leshan(launcher, tmp, "leshan-512"))):
            others = Others()
            try:
                srv = make()
            except RuntimeError as e:
                rows.append((name, {"skipped": str(e)[:200]}))
                continue
            try:
                series = push_series(srv, name.split()[0][:6] + str(len(rows)), repeats, 1, MIB, 1)
            finally:
                srv.stop()
            series["machine"] = others.end()
            rows.append((name, series))
            print(f"  {name}: 1 x 1 MiB done{note_others(series['machine'])}", flush=True)
    return rows


# --------------------------------------------------------------------------- output


def _wire(m: dict[str, Any]) -> str:
    w = m["wire"]
    return f"{w['bytes_to_server']:,} / {w['bytes_from_server']:,}"


ROWS: list[tuple[str, Any]] = [
    ("devices registered / N (s to register)", lambda m: f"{m['registered']}/{m['devices']} ({fmt(m['register_s'])})"),
    ("package B: full / delta (s to make delta)",
     lambda m: f"{m['full_package']:,} / " + (f"{m['delta_package']:,} ({fmt(m['delta_create_s'])})"
                                              if m["delta_package"] else "- (none)")),
    ("campaign state (waves)", lambda m: f"{m['state']} ({'+'.join(map(str, m['waves']))})"
     + ("" if m["report_ready"] else " NO REPORT: timed out")),
    ("jobs by state", lambda m: ", ".join(f"{k} {v}" for k, v in m["counts"].items())),
    ("jobs by delivery / method / attempts", lambda m: ", ".join(f"{k} {v}" for k, v in m["deliveries"].items())
     + " / " + ", ".join(f"{k} {v}" for k, v in m["methods"].items()) + f" / {m['attempts']}"),
    ("wall s, POST start -> report_ready", lambda m: m["wall_s"]),
    ("  campaign started -> finished (server's clock)", lambda m: m["campaign_s"]),
    ("  waves opened at s", lambda m: ", ".join(fmt(x) for x in m["waves_opened_s"])),
    ("job s (started -> finished) min / median / max",
     lambda m: " / ".join(fmt(m["job_s"][k]) for k in ("min", "median", "max"))),
    ("server CPU s user / system", lambda m: f"{fmt(m['server_cpu_s']['user'])} / {fmt(m['server_cpu_s']['system'])}"),
    ("server CPU-ms per device", lambda m: m["server_cpu_ms_per_device"]),
    ("devices (driver) CPU s; rest of machine (others %)",
     lambda m: f"{fmt(m['devices_cpu_s'])}; {fmt(m['other_cpu_s'])} s ({m['other_pct_of_machine']}%)"),
    ("server RSS MiB before / peak / after (VmHWM)",
     lambda m: f"{m['server_rss_mib']['before']} / {m['server_rss_mib']['peak_sampled']} / "
               f"{m['server_rss_mib']['after']} ({m['server_rss_mib']['hwm']})"),
    ("UDP payload B to / from server", _wire),
    ("  datagrams to / from server",
     lambda m: f"{m['wire']['datagrams_to_server']:,} / {m['wire']['datagrams_from_server']:,}"),
    ("  both ways; +28 B IPv4/UDP per datagram",
     lambda m: f"{mib(m['wire']['udp_payload'])}; {mib(m['wire']['on_wire_with_ip_udp_headers'])}"),
    ("  per device: UDP payload / on the wire B",
     lambda m: f"{m['wire']['udp_payload_per_device']:,} / {m['wire']['on_wire_per_device']:,}"),
    ("package B the devices pulled (pull only; check)", lambda m: m["fetched_by_devices"]),
    ("device updates / reboots / failed req",
     lambda m: "/".join(str(m["device_counters"][k]) for k in ("updates", "reboots", "failed_requests"))),
]


def _ratio(x: float | None, y: float | None) -> str:
    return f"{x / y:.3f}" if x and y else "-"


def print_table(runs: list[dict[str, Any]]) -> None:
    width = max(len(name) for name, _ in ROWS)
    cells = [[get(m) for _, get in ROWS] for m in runs]
    cells = [[c if isinstance(c, str) else fmt(c) for c in col] for col in cells]
    heads = [{"full": "(a) full", "delta": "(b) delta"}[m["mode"]] for m in runs]
    col = [max(len(h), *(len(c) for c in cs)) for h, cs in zip(heads, cells, strict=True)]
    m0 = runs[0]
    print(f"\n{'':<{width}}  n={m0['devices']}, 1 MiB image, {m0['changed_kib']} KiB changed in {PLACES} places, "
          f"{m0['method']}, max_parallel {m0['max_parallel']}")
    print(f"{'':<{width}}  " + "  ".join(f"{h:<{w}}" for h, w in zip(heads, col, strict=True)))
    for i, (name, _) in enumerate(ROWS):
        print(f"{name:<{width}}  " + "  ".join(f"{cs[i]:<{w}}" for cs, w in zip(cells, col, strict=True)))
    by = {m["mode"]: m for m in runs}
    if len(by) == 2:
        a, b = by["full"], by["delta"]
        saved = 100 * (1 - b["wire"]["on_wire_with_ip_udp_headers"] / a["wire"]["on_wire_with_ip_udp_headers"])
        print(f"{'(b) delta vs (a) full':<{width}}  bytes on the wire saved {saved:.1f} % (goal >= "
              f"{GOAL_SAVING_PCT:.0f} %: {'met' if saved >= GOAL_SAVING_PCT else 'NOT met'}); wall "
              f"{_ratio(b['wall_s'], a['wall_s'])}, server CPU "
              f"{_ratio(b['server_cpu_s']['total'], a['server_cpu_s']['total'])}, job s median "
              f"{_ratio(b['job_s']['median'], a['job_s']['median'])} (delta / full)")


def print_leshan(rows: list[tuple[str, dict[str, Any]]], runs: list[dict[str, Any]]) -> None:
    print_push_table("Leshan has no delta updates: push 1 MiB to one device, as in bench/firmware.py [1a] "
                     "(lwm2m_load push-bench -k 1 --size 1048576 --parallel 1)", rows)
    for name, series in rows:
        x = series.get("warm_median") or series.get("cold") or {}
        if "skipped" in series or "error" in x:
            continue
        block = x.get("block")
        blocks = -(-MIB // block) if block else None
        print(f"  {name}: full image {MIB:,} B payload in {blocks or '-'} blocks of {block or '-'} B, "
              f"{fmt(x.get('per_push_p50_s'))} s per push (warm median)")
    for m in runs:
        per = m["devices"] or 1
        print(f"  ours, campaign {m['mode']}: {m['wire']['on_wire_per_device']:,} B on the wire per device (measured, "
              f"all CoAP/LwM2M traffic, package {m['delta_package'] or m['full_package']:,} B), job "
              f"{fmt(m['job_s']['median'])} s median (verify + install + reboot included), wall "
              f"{fmt(m['wall_s'])} s for {per} devices")
    print("  (push-bench counts the payload the client receives, not the CoAP headers; ours is measured on the "
          "devices' UDP sockets)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--devices", type=int, default=20, help="devices in each campaign")
    ap.add_argument("--quick", action="store_true", help="4 devices, 2 push-bench runs per server")
    ap.add_argument("--changed-kib", type=int, default=4, help=f"KiB of NEW that differ from BASE ({PLACES} places)")
    ap.add_argument("--max-parallel", type=int, default=20, help="the campaign policy's max_parallel")
    ap.add_argument("--method", choices=("pull", "push"), default="pull", help="the campaign's delivery method")
    ap.add_argument("--concurrency", type=int, default=50, help="devices registering at once (Fleet)")
    ap.add_argument("--only", choices=("full", "delta"), help="run (a) full or (b) delta only")
    ap.add_argument("--timeout", type=float, default=0.0,
                    help="seconds for each campaign to report (default: 180 + 3 s per device)")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between two GET of the campaign status")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before the RSS samples")
    args = ap.parse_args()
    n = 4 if args.quick else args.devices
    if not 0 < args.changed_kib * 1024 // PLACES <= IMAGE_SIZE // PLACES:
        raise SystemExit(f"--changed-kib: between {PLACES} and {IMAGE_SIZE // 1024}")
    timeout = args.timeout or 180 + 3.0 * n
    modes = [args.only] if args.only else ["full", "delta"]
    launcher = Path(os.environ["LESHAN_SERVER_DEMO"]) if os.environ.get("LESHAN_SERVER_DEMO") else None

    stop_children_on_signals()
    busy, machine = machine_note()
    print(f"one campaign of a 1 MiB image with {args.changed_kib} KiB changed, full and delta: {n} devices, "
          f"{args.method}, max_parallel {args.max_parallel}; `scratch server` and the devices in 2 processes per run "
          f"({machine})", flush=True)
    runs: list[dict[str, Any]] = []
    leshan: list[tuple[str, dict[str, Any]]] | str = ""
    try:
        for i, mode in enumerate(modes):
            if i:
                wait_idle(30)
            print(f" run {'(a) full' if mode == 'full' else '(b) delta'} ...", flush=True)
            runs.append(run_once(mode, n, args.changed_kib, args.max_parallel, args.method, timeout, args.poll,
                                 args.settle, args.concurrency))
        leshan = leshan_push(launcher, 2 if args.quick else 4)
    finally:
        CHILDREN.stop_all()
    print_table(runs)
    if any((m["other_pct_of_machine"] or 0) > 10 for m in runs):
        print("WARNING: the rest of the machine took more than 10% of the CPUs meanwhile")
    print("(bytes: measured on the devices' UDP sockets, CoAP messages both ways, everything between server and "
          "devices during the campaign; IP/UDP headers computed, not captured)")
    if isinstance(leshan, str):
        print(leshan)
    else:
        print_leshan(leshan, runs)
    print(json.dumps({"bench": "delta", "machine_busy_pct_before": r(busy, 1), "runs": runs,
                      "leshan_push_1mib": leshan}))


if __name__ == "__main__":
    main()

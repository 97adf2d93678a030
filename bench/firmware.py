#!/usr/bin/env python3
"""Firmware delivery benchmarks for the SCRATCh LwM2M server, against Eclipse Leshan where it applies.
Prints figures; asserts nothing. Loopback only; every step is bounded in time; every process it starts is stopped.

Every server under test is its own process and its CPU time is read from /proc/<pid>/stat, so what the clients
and devices spend is not counted. On a 2-vCPU machine a busy peer (the `scratch sim` devices) still slows the
server's own CPU (shared core), so its CPU per KiB is lowest against the light raw-CoAP peers. Each section also
reports how much CPU the rest of the machine used meanwhile (others %): above 10% the figures are not trustworthy.

1. push, 1 MiB to one device: ../shared/tools/lwm2m_load.py push-bench (a neutral raw-CoAP client that drives a
   Leshan-shaped REST write of /5/0/0) against `scratch server --bench-api` and the Leshan server demo (cold first
   run, then warm runs); then our real update path: a 1 MiB signed SUIT package pushed through the authenticated
   API to a `scratch sim` device, delivery time and full update time (reboot included).
2. pull, 1 MiB to one device: the same API path with method=pull (the device downloads from our CoAP file
   server), plus raw block-wise GETs (libcoap `coap-client-openssl -b 1024`, and aiocoap) of a package published
   on our file server by a helper child process of this script (our Lwm2mServer, in a process of its own).
3. pull, N devices at once (default 50 x 1 MiB): aggregate MB/s and server CPU-ms per KiB served, through the
   API with `scratch sim` devices, and with N raw coap-client downloads.
4. push, 20 x 256 KiB in parallel through push-bench against ours and Leshan: MB/s and server CPU.

MB is 10^6 bytes; KiB 1024. `--quick` runs a reduced set; `--profile DIR` runs our server processes under
cProfile (figures then include its overhead) and writes DIR/*.prof and a top-functions text file for each.

    .venv/bin/python bench/firmware.py [--quick] [--leshan PATH] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from processes import (  # bench/processes.py: the script's folder is on sys.path
    CHILDREN,
    REPO,
    free_port,
    machine_busy,
    machine_cpu_s,
    proc_sample,
    r,
    wait_for_line,
    write_profile_text,
)

LOAD = Path(os.environ.get("LWM2M_LOAD", REPO.parent / "shared" / "tools" / "lwm2m_load.py"))
SCRATCH = REPO / ".venv" / "bin" / "scratch"
PY = sys.executable
COAP_CLIENT = "coap-client-openssl"
VENDOR = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe"
CLASS = "1492af14-2569-5e48-bf42-9b2d51f2ab45"
MIB = 1 << 20
GOAL = {"leshan_1mib_s": 0.33, "leshan_1mib_block": 512, "leshan_20x256k_mb_s": 7.4}

# --------------------------------------------------------------------------- processes


class Others:
    """CPU the rest of the machine used during a section: all CPUs' busy time (/proc/stat) less what this script
    and its reaped children used (os.times). Read ``end()`` once the section's processes are stopped. Kernel
    softirq work for our own loopback traffic lands here too, so a quiet machine still shows a few percent."""

    def __init__(self) -> None:
        self.t0, self.m0, self.o0 = time.perf_counter(), machine_cpu_s(), self.ours()

    @staticmethod
    def ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def end(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.t0
        other = max(0.0, (machine_cpu_s() - self.m0) - (self.ours() - self.o0))
        return {"other_cpu_s": r(other, 2), "other_pct_of_machine": r(100 * other / (wall * (os.cpu_count() or 1)), 1)}


def note_others(stats: dict[str, float | None]) -> str:
    pct = stats["other_pct_of_machine"] or 0
    warn = " -- WARNING: the machine was shared, figures are low/noisy" if pct > 10 else ""
    return f"  (rest of the machine used {pct}% of all CPUs meanwhile{warn})"


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# --------------------------------------------------------------------------- servers under test


class Scratch:
    """`scratch server` in a process of its own (optionally under cProfile), its data directory and API."""

    def __init__(self, tmp: Path, name: str, *, bench_api: bool = False, profile: Path | None = None) -> None:
        self.data = tmp / name
        self.data.mkdir()
        self.port = free_port()
        self.log = tmp / f"{name}.log"
        self.profile = profile / f"{name}.prof" if profile else None
        base = [str(SCRATCH)] if self.profile is None else [
            PY, "-m", "cProfile", "-o", str(self.profile), "-m", "lwm2m_server.cli.app"]
        cmd = [*base, "server", "--insecure", "--coap", f"127.0.0.1:{self.port}", "--coaps", "127.0.0.1:0",
               "--api", "127.0.0.1:0",
               "--data-dir", str(self.data), "--rd-rate", "0", "--rd-endpoint-rate", "0",
               ] + (["--bench-api"] if bench_api else [])
        with self.log.open("w") as out:
            self.proc = CHILDREN.start(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=REPO, env={**os.environ, "SCRATCH_VAULT_KEY_FILE": str(tmp / "vault.key")})
        wait_for_line(self.log, self.proc, "LwM2M server on", 60)
        deadline = time.monotonic() + 10
        while not (self.data / "api-url").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.rest = (self.data / "api-url").read_text().strip()
        self.token = (self.data / "api-token").read_text().strip()
        self.pid = self.proc.pid
        self.coap_uri = f"coap://127.0.0.1:{self.port}"

    def stop(self) -> None:
        CHILDREN.stop(self.proc, timeout=30)
        if self.profile is not None:
            write_profile_text(self.profile)


class Leshan:
    """The Leshan server demo in its own cwd (Californium3.server.properties there), java-coap endpoints off."""

    def __init__(self, launcher: Path, tmp: Path, name: str, *, block_size: int | None = None) -> None:
        self.cwd = tmp / name
        self.cwd.mkdir()
        props = [f"COAP.MAX_RESOURCE_BODY_SIZE={8 * MIB}"]
        if block_size:
            props.append(f"COAP.PREFERRED_BLOCK_SIZE={block_size}")
        (self.cwd / "Californium3.server.properties").write_text("\n".join(props) + "\n")
        self.port, self.web = free_port(), free_port(socket.SOCK_STREAM)
        self.log = tmp / f"{name}.log"
        cmd = [str(launcher), "-lh", "127.0.0.1", "-lp", str(self.port), "-slh", "127.0.0.1",
               "-slp", str(free_port()), "-wh", "127.0.0.1", "-wp", str(self.web), "-njc"]
        with self.log.open("w") as out:
            self.proc = CHILDREN.start(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       cwd=self.cwd, env={**os.environ, "LESHAN_DEMO_CWD": str(self.cwd)})
        wait_for_line(self.log, self.proc, "Web server started", 90)
        self.rest = f"http://127.0.0.1:{self.web}"
        self.pid = self.proc.pid
        self.block_size = block_size or 512  # Californium's COAP.PREFERRED_BLOCK_SIZE default

    def stop(self) -> None:
        CHILDREN.stop(self.proc, timeout=20)


# --------------------------------------------------------------------------- 1 and 4: lwm2m_load push-bench


def push_bench(port: int, rest: str, pid: int, *, k: int, size: int, parallel: int, prefix: str) -> dict[str, Any]:
    cmd = [PY, str(LOAD), "push-bench", "--port", str(port), "--rest", rest, "-k", str(k), "--size", str(size),
           "--parallel", str(parallel), "--server-pid", str(pid), "--prefix", prefix, "--max-seconds", "120",
           "--push-timeout", "100"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        return {"error": "lwm2m_load did not finish within 150 s"}
    res = next((json.loads(line) for line in reversed(out.stdout.splitlines()) if line.startswith("{")), None)
    if res is None or "push" not in res:
        return {"error": f"lwm2m_load printed no push result: {out.stdout[-300:]} {out.stderr[-300:]}"}
    p = res["push"]
    srv = p.get("server", {})
    total = p.get("client_bytes_total") or 0
    return {"ok": p["ok"], "failed": p["failed"], "wall_s": p["wall_s"], "per_push_p50_s": p["per_push_s"]["p50"],
            "mb_s": r((p.get("bytes_per_s_wall") or 0) / 1e6, 2), "block": p.get("approx_block_size"),
            "server_cpu_s": srv.get("cpu_s"), "server_cpu_pct": srv.get("cpu_pct"),
            "cpu_ms_per_kib": r(1000 * srv["cpu_s"] / (total / 1024), 4) if srv.get("cpu_s") is not None and total
            else None, "rss_kib": srv.get("rss_after_kib"), "tool_cpu_pct": p.get("tool_cpu_pct")}


def push_series(server: Scratch | Leshan, tag: str, repeats: int, k: int, size: int, parallel: int
                ) -> dict[str, Any]:
    """``repeats`` runs on one server instance: the first is cold (JIT, caches), the others warm."""
    runs = [push_bench(server.port, server.rest, server.pid, k=k, size=size, parallel=parallel,
                       prefix=f"{tag}-{i}-") for i in range(repeats)]
    good = [x for x in runs if "error" not in x and not x["failed"]]
    warm = [x for x in runs[1:] if x in good]
    out: dict[str, Any] = {"runs": runs, "cold": runs[0]}
    if warm:
        best = min(warm, key=lambda x: x["wall_s"])
        out["warm_median"] = {key: r(median([x[key] for x in warm if x[key] is not None]), 4)
                              for key in ("wall_s", "per_push_p50_s", "mb_s", "server_cpu_s", "cpu_ms_per_kib")}
        out["warm_median"]["block"] = best["block"]
        out["warm_median"]["rss_kib"] = warm[-1]["rss_kib"]
        out["warm_best"] = best
    return out


# --------------------------------------------------------------------------- API helpers (our server)


def api(server: Scratch, method: str, path: str, body: bytes | None = None, timeout: float = 60
        ) -> tuple[int, Any]:
    u = urllib.parse.urlsplit(server.rest)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {server.token}"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None
    finally:
        conn.close()


def progress_lines(server: Scratch, endpoint: str, timeout: float) -> Iterator[tuple[float, dict[str, Any]]]:
    """The update's progress stream, each line with the moment it arrived here."""
    u = urllib.parse.urlsplit(server.rest)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=timeout)
    try:
        conn.request("GET", f"/api/devices/{endpoint}/firmware/progress",
                     headers={"Authorization": f"Bearer {server.token}"})
        resp = conn.getresponse()
        while True:
            line = resp.readline()
            if not line:
                return
            yield time.perf_counter(), json.loads(line)
    finally:
        conn.close()


def run_update(server: Scratch, endpoint: str, package: bytes, method: str, *, samples: list[int],
               on_downloaded: Callable[[], None] | None = None, timeout: float = 120) -> dict[str, Any]:
    """POST the package, follow the progress stream; times are from just before the POST."""
    s0 = [proc_sample(p)["cpu_s"] for p in samples]
    t0 = time.perf_counter()
    status, body = api(server, "POST", f"/api/devices/{endpoint}/firmware?method={method}&timeout={timeout:g}",
                       package, timeout=timeout)
    t_accepted = time.perf_counter()
    if status != 202:
        return {"endpoint": endpoint, "ok": False, "error": f"HTTP {status}: {body}"}
    marks: dict[str, float] = {}
    s_down: list[float] | None = None
    last: dict[str, Any] = {}
    blocks = 0
    try:
        for t, line in progress_lines(server, endpoint, timeout):
            phase = line.get("phase")
            if line.get("done"):
                last = line.get("last") or {}
                marks.setdefault("done", t)
                break
            if phase == "delivering" and line.get("sent") == line.get("total"):
                marks.setdefault("all_bytes", t)
            if phase:
                marks.setdefault(phase, t)
            if phase == "downloaded" and s_down is None:
                s_down = [proc_sample(p)["cpu_s"] for p in samples]
                if on_downloaded is not None:
                    on_downloaded()
            blocks = line.get("blocks") or blocks
    except (OSError, http.client.HTTPException, ValueError) as e:
        return {"endpoint": endpoint, "ok": False, "error": f"progress stream: {e!r}"}
    s1 = [proc_sample(p)["cpu_s"] for p in samples]

    def since(key: str) -> float | None:
        return r(marks[key] - t0) if key in marks else None

    kib = len(package) / 1024
    return {"endpoint": endpoint, "ok": last.get("phase") == "succeeded", "phase": last.get("phase"),
            "message": last.get("message"), "bytes": len(package), "blocks": blocks,
            "accepted_s": r(t_accepted - t0), "delivering_s": since("delivering"), "all_bytes_s": since("all_bytes"),
            "downloaded_s": since("downloaded"), "rebooted_s": since("rebooted"), "done_s": since("done"),
            "transfer_s": r(marks["downloaded"] - marks["delivering"]) if {"downloaded", "delivering"} <= marks.keys()
            else None,
            "cpu_s_to_downloaded": [r(b - a) for a, b in zip(s0, s_down, strict=True)] if s_down else None,
            "cpu_s_total": [r(b - a) for a, b in zip(s0, s1, strict=True)],
            "server_cpu_ms_per_kib_delivery": r(1000 * (s_down[0] - s0[0]) / kib, 4) if s_down else None}


def wait_registered(server: Scratch, prefix: str, count: int, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        status, devices = api(server, "GET", "/api/devices")
        if status == 200:
            n = sum(1 for d in devices if str(d.get("endpoint", "")).startswith(prefix))
            if n >= count:
                return n
        time.sleep(0.2)
    return n


def start_sim(tmp: Path, server: Scratch, keys: Path, count: int, prefix: str) -> subprocess.Popen[Any]:
    log = tmp / f"sim-{prefix.rstrip('-')}.log"
    pub = keys.with_name(keys.name + ".pub")
    with log.open("w") as out:
        proc = CHILDREN.start([str(SCRATCH), "sim", "--server", server.coap_uri, "--count", str(count),
                               "--prefix", prefix, "--lifetime", "600", "--trust", str(pub),
                               "--vendor", VENDOR, "--class", CLASS], stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, cwd=REPO)
    n = wait_registered(server, prefix, count)
    if n < count:
        CHILDREN.stop(proc)
        raise RuntimeError(f"only {n} of {count} simulated devices registered: {log.read_text()[-500:]}")
    return proc


def make_package(tmp: Path, key: Path, size: int, seq: int = 2) -> bytes:
    """A SUIT envelope of exactly ``size`` bytes where the overhead allows (image = size - envelope overhead)."""
    image = tmp / f"image-{size}.bin"
    out = tmp / f"package-{size}.suit"
    want = size
    for _ in range(3):
        image.write_bytes(os.urandom(want))
        subprocess.run([str(SCRATCH), "firmware", "sign", str(image), "--key", str(key), "--vendor", VENDOR,
                        "--class", CLASS, "--version", "2.0.0", "--seq", str(seq), "--out", str(out)],
                       check=True, capture_output=True, timeout=60, cwd=REPO)
        got = out.stat().st_size
        if got == size:
            break
        want -= got - size
    return out.read_bytes()


# --------------------------------------------------------------------------- 1b / 2: one device, real API path


def bench_api_updates(tmp: Path, key: Path, package: bytes, repeats: int, profile: Path | None
                      ) -> dict[str, Any]:
    server = Scratch(tmp, "scratch-e2e", profile=profile)
    sim = None
    try:
        sim = start_sim(tmp, server, key, 2 * repeats, "e2e-")
        out: dict[str, Any] = {}
        for j, method in enumerate(("push", "pull")):
            runs = [run_update(server, f"e2e-{j * repeats + i}", package, method, samples=[server.pid, sim.pid])
                    for i in range(repeats)]
            out[method] = {"runs": runs, **summarize_updates(runs)}
        return out
    finally:
        if sim is not None:
            CHILDREN.stop(sim, timeout=30)
        server.stop()


def summarize_updates(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [x for x in runs if x.get("ok")]
    keys = ("delivering_s", "downloaded_s", "transfer_s", "done_s", "server_cpu_ms_per_kib_delivery")
    med = {k: r(median([x[k] for x in ok if x.get(k) is not None]), 4) for k in keys}
    med["server_cpu_s_to_downloaded"] = r(median([x["cpu_s_to_downloaded"][0] for x in ok
                                                  if x.get("cpu_s_to_downloaded")]))
    med["sim_cpu_s_to_downloaded"] = r(median([x["cpu_s_to_downloaded"][1] for x in ok
                                               if x.get("cpu_s_to_downloaded")]))
    med["server_cpu_s_total"] = r(median([x["cpu_s_total"][0] for x in ok]))
    return {"ok": len(ok), "failed": len(runs) - len(ok), "median": med,
            "errors": [x.get("error") or x.get("message") for x in runs if not x.get("ok")][:3]}


# --------------------------------------------------------------------------- 3: N devices pulling at once


def bench_fleet_pull(tmp: Path, key: Path, package: bytes, devices: int, profile: Path | None) -> dict[str, Any]:
    server = Scratch(tmp, "scratch-fleet", profile=profile)
    sim = None
    try:
        sim = start_sim(tmp, server, key, devices, "fleet-")
        pids = [server.pid, sim.pid]
        results: list[dict[str, Any]] = [{} for _ in range(devices)]
        downloaded = threading.Semaphore(0)
        c0 = [proc_sample(p)["cpu_s"] for p in pids]
        rss0 = proc_sample(server.pid)["rss_kib"]
        t0 = time.perf_counter()

        def one(i: int) -> None:
            try:
                results[i] = run_update(server, f"fleet-{i}", package, "pull", samples=[],
                                        on_downloaded=downloaded.release, timeout=300)
            except Exception as e:  # reported, never raised out of the thread
                results[i] = {"ok": False, "error": repr(e)}
            finally:
                if "downloaded_s" not in results[i] or results[i].get("downloaded_s") is None:
                    downloaded.release()

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(devices)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 330
        for _ in range(devices):
            downloaded.acquire(timeout=max(0.01, deadline - time.monotonic()))
        t_down = time.perf_counter()
        c_down = [proc_sample(p)["cpu_s"] for p in pids]
        rss_peak = proc_sample(server.pid)["rss_kib"]
        for t in threads:
            t.join(timeout=330)
        t_done = time.perf_counter()
        c1 = [proc_sample(p)["cpu_s"] for p in pids]
        ok = [x for x in results if x.get("ok")]
        downs = sorted(x["downloaded_s"] for x in results if x.get("downloaded_s") is not None)
        total = len(package) * len(downs)
        window = downs[-1] if downs else None
        kib = total / 1024
        return {"devices": devices, "package_bytes": len(package), "ok": len(ok), "failed": devices - len(ok),
                "downloaded": len(downs), "first_downloaded_s": r(downs[0]) if downs else None,
                "median_downloaded_s": r(median(downs)),
                "all_downloaded_s": r(window), "all_done_s": r(t_done - t0),
                "mb_s": r(total / window / 1e6, 2) if window else None,
                "server_cpu_s_delivery": r(c_down[0] - c0[0]), "sim_cpu_s_delivery": r(c_down[1] - c0[1]),
                "server_cpu_pct_delivery": r(100 * (c_down[0] - c0[0]) / (t_down - t0), 1),
                "server_cpu_ms_per_kib": r(1000 * (c_down[0] - c0[0]) / kib, 4) if kib else None,
                "server_cpu_s_total": r(c1[0] - c0[0]), "server_rss_kib": [rss0, rss_peak],
                "errors": [x.get("error") or x.get("message") for x in results if not x.get("ok")][:3]}
    finally:
        if sim is not None:
            CHILDREN.stop(sim, timeout=60)
        server.stop()


# --------------------------------------------------------------------------- 2 / 3: raw GETs of our file server


async def _serve_package(size: int, profile: str | None) -> None:
    """Child mode: our Lwm2mServer (no API) with one package of ``size`` random bytes published on its file server.
    Prints ``READY <uri>`` and serves until SIGTERM or stdin closes."""
    import cProfile
    import logging

    from lwm2m_server.server import Lwm2mServer, ServerSettings

    logging.basicConfig(level=logging.WARNING)
    prof = cProfile.Profile() if profile else None
    with tempfile.TemporaryDirectory(prefix="scratch-files-") as tmp:
        srv = Lwm2mServer(ServerSettings(data_dir=Path(tmp), coap_port=0, api_port=None))
        await srv.start()
        name = srv.files.publish(os.urandom(size))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(sys.stdin.fileno(), 4096) else None)
        print(f"READY {srv.coap_uri}/fw/{name}", flush=True)
        if prof is not None:
            prof.enable()
        try:
            await asyncio.wait_for(stop.wait(), 1800)
        finally:
            if prof is not None and profile:
                prof.disable()
                prof.dump_stats(profile)
            await srv.stop()


class FileServerChild:
    def __init__(self, size: int, profile: Path | None) -> None:
        self.profile = profile / f"fileserver-{size}.prof" if profile else None
        cmd = [PY, str(Path(__file__).resolve()), "--serve-package", str(size)]
        if self.profile:
            cmd += ["--profile", str(self.profile)]
        self.proc = CHILDREN.start(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            CHILDREN.stop(self.proc)
            raise RuntimeError(f"file server child did not start: {line!r}")
        self.uri = line.split()[1]
        self.pid = self.proc.pid

    def stop(self) -> None:
        CHILDREN.stop(self.proc, timeout=30)
        if self.profile is not None:
            write_profile_text(self.profile)


def coap_client_get(uri: str, out: Path, block: int = 1024) -> subprocess.Popen[Any]:
    return CHILDREN.start([COAP_CLIENT, "-m", "get", "-b", str(block), "-B", "90", "-o", str(out), uri],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def bench_raw_pull(tmp: Path, size: int, repeats: int, clients: int, profile: Path | None) -> dict[str, Any]:
    child = FileServerChild(size, profile)
    out: dict[str, Any] = {"package_bytes": size}
    have_cc = subprocess.run(["sh", "-c", f"command -v {COAP_CLIENT}"], capture_output=True).returncode == 0
    try:
        if have_cc:
            singles = []
            for i in range(repeats):
                dest = tmp / f"cc-{i}.bin"
                c0, t0 = proc_sample(child.pid)["cpu_s"], time.perf_counter()
                p = coap_client_get(child.uri, dest)
                try:
                    p.wait(timeout=100)
                except subprocess.TimeoutExpired:
                    CHILDREN.stop(p)
                t1, c1 = time.perf_counter(), proc_sample(child.pid)["cpu_s"]
                CHILDREN.stop(p)
                got = dest.stat().st_size if dest.exists() else 0
                singles.append({"ok": got == size, "s": r(t1 - t0), "mb_s": r(size / (t1 - t0) / 1e6, 2),
                                "server_cpu_ms_per_kib": r(1000 * (c1 - c0) / (size / 1024), 4)})
            out["coap_client_1"] = singles
            c0, rss0, t0 = proc_sample(child.pid)["cpu_s"], proc_sample(child.pid)["rss_kib"], time.perf_counter()
            dests = [tmp / f"ccn-{i}.bin" for i in range(clients)]
            procs = [coap_client_get(child.uri, d) for d in dests]
            deadline = time.monotonic() + 200
            for p in procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    CHILDREN.stop(p)
            t1, s1 = time.perf_counter(), proc_sample(child.pid)
            for p in procs:
                CHILDREN.stop(p)
            okn = sum(1 for d in dests if d.exists() and d.stat().st_size == size)
            kib = okn * size / 1024
            out["coap_client_n"] = {"clients": clients, "ok": okn, "s": r(t1 - t0),
                                    "mb_s": r(okn * size / (t1 - t0) / 1e6, 2),
                                    "server_cpu_s": r(s1["cpu_s"] - c0),
                                    "server_cpu_pct": r(100 * (s1["cpu_s"] - c0) / (t1 - t0), 1),
                                    "server_cpu_ms_per_kib": r(1000 * (s1["cpu_s"] - c0) / kib, 4) if kib else None,
                                    "server_rss_kib": [rss0, s1["rss_kib"]]}
        else:
            out["note"] = f"{COAP_CLIENT} not found: raw libcoap rows skipped"
        out["aiocoap_1"] = asyncio.run(_aiocoap_gets(child.uri, size, repeats, child.pid))
    finally:
        child.stop()
    return out


async def _aiocoap_gets(uri: str, size: int, repeats: int, pid: int) -> list[dict[str, Any]]:
    from aiocoap import GET, Context, Message

    ctx = await Context.create_client_context()
    runs = []
    try:
        for _ in range(repeats):
            c0, t0 = proc_sample(pid)["cpu_s"], time.perf_counter()
            try:
                resp = await asyncio.wait_for(ctx.request(Message(code=GET, uri=uri)).response, 100)
                got = len(resp.payload)
            except Exception:
                got = 0
            t1, c1 = time.perf_counter(), proc_sample(pid)["cpu_s"]
            runs.append({"ok": got == size, "s": r(t1 - t0), "mb_s": r(size / (t1 - t0) / 1e6, 2),
                         "server_cpu_ms_per_kib": r(1000 * (c1 - c0) / (size / 1024), 4)})
    finally:
        await ctx.shutdown()
    return runs


# --------------------------------------------------------------------------- report


def fmt(x: Any, w: int = 9) -> str:
    if x is None:
        s = "-"
    elif isinstance(x, float):
        s = f"{x:.4g}" if abs(x) < 1 else f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"
    else:
        s = str(x)
    return f"{s:>{w}}"


def print_push_table(title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    print(f"\n{title}")
    heads = ("server", "run", "ok", "s/push", "wall s", "MB/s", "block B", "srv CPU s", "CPU ms/KiB", "RSS MiB",
             "others %")
    print(f"{heads[0]:<26}{heads[1]:>6}" + "".join(fmt(h, 11) for h in heads[2:]))
    for name, series in rows:
        if "skipped" in series:
            print(f"{name:<26}  skipped: {series['skipped']}")
            continue
        for label, x in (("cold", series.get("cold")), ("warm", series.get("warm_median"))):
            if not x:
                continue
            if "error" in x:
                print(f"{name:<26}{label:>6}  error: {x['error']}")
                continue
            ok = x.get("ok", "")
            okcol = f"{ok}/{ok + x.get('failed', 0)}" if ok != "" else "med"
            rss = x.get("rss_kib")
            print(f"{name:<26}{label:>6}" + "".join(fmt(v, 11) for v in (
                okcol, x.get("per_push_p50_s"), x.get("wall_s"), x.get("mb_s"), x.get("block"),
                x.get("server_cpu_s"), x.get("cpu_ms_per_kib"), r(rss / 1024, 1) if rss else None,
                (series.get("machine") or {}).get("other_pct_of_machine"))))
    print("  (others % = share of all CPUs the rest of the machine used while that server was measured)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a reduced set, for a smoke run")
    ap.add_argument("--leshan", type=Path, default=os.environ.get("LESHAN_SERVER_DEMO"),
                    help="Leshan server demo launcher (default: $LESHAN_SERVER_DEMO); Leshan rows are skipped "
                    "without it")
    ap.add_argument("--repeats", type=int, help="runs per measurement (default 4, quick 2)")
    ap.add_argument("--devices", type=int, help="devices pulling at once (default 50, quick 10)")
    ap.add_argument("--fleet-size", type=int, help="package bytes for the devices pulling at once "
                    "(default 1 MiB, quick 256 KiB)")
    ap.add_argument("--profile", type=Path, help="run our servers under cProfile; write DIR/*.prof and *.txt")
    ap.add_argument("--serve-package", type=int, help=argparse.SUPPRESS)  # child mode (raw pull file server)
    args = ap.parse_args()
    if args.serve_package is not None:
        asyncio.run(_serve_package(args.serve_package, str(args.profile) if args.profile else None))
        return
    if not LOAD.exists():
        raise SystemExit(f"load generator not found at {LOAD} (set LWM2M_LOAD)")
    repeats = args.repeats or (2 if args.quick else 4)
    devices = args.devices or (10 if args.quick else 50)
    fleet_size = args.fleet_size or (256 * 1024 if args.quick else MIB)
    profile = args.profile.resolve() if args.profile else None
    if profile:
        profile.mkdir(parents=True, exist_ok=True)
    leshan: Path | None = args.leshan
    leshan_note = None
    if leshan is None:
        leshan_note = "no --leshan and no $LESHAN_SERVER_DEMO: Leshan rows skipped"
    elif not (leshan.is_file() and os.access(leshan, os.X_OK)):
        leshan_note = f"{leshan} is not an executable file: Leshan rows skipped"
        leshan = None

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    started = time.perf_counter()
    result: dict[str, Any] = {"bench": "firmware", "quick": args.quick, "repeats": repeats, "mb": 1e6,
                              "cpus": os.cpu_count(), "goal_leshan_issue": GOAL, "profiled": bool(profile)}
    print(f"firmware delivery benchmark ({'quick' if args.quick else 'full'}; {repeats} runs per figure, first run "
          f"of a server = cold; MB = 10^6 B; {os.cpu_count()} CPUs; loopback)")
    if profile:
        print(f"NOTE: our servers run under cProfile ({profile}); their times and CPU include its overhead")
    if leshan_note:
        print(f"NOTE: {leshan_note}")
    busy = machine_busy()
    result["machine_busy_pct_before"] = r(busy, 1)
    print(f"machine CPU busy before start: {busy:.0f}% of {os.cpu_count()} CPUs"
          + (" -- WARNING: other processes are running; figures will be low and noisy" if busy > 10 else ""))
    try:
        with tempfile.TemporaryDirectory(prefix="scratch-fwbench-") as tmpdir:
            tmp = Path(tmpdir)
            run_all(tmp, args, result, repeats, devices, fleet_size, leshan, profile)
    finally:
        CHILDREN.stop_all()
    result["total_s"] = r(time.perf_counter() - started, 1)
    busy = machine_busy()
    result["machine_busy_pct_after"] = r(busy, 1)
    print(f"\ntotal {result['total_s']} s; machine CPU busy after the run (ours all stopped): {busy:.0f}%")
    print(json.dumps(result))


def run_all(tmp: Path, args: argparse.Namespace, result: dict[str, Any], repeats: int, devices: int,
            fleet_size: int, leshan: Path | None, profile: Path | None) -> None:
    # ---- 1a and 4: push-bench, ours vs Leshan (each server: 1 MiB x1 runs, then 20 x 256 KiB runs)
    one: list[tuple[str, dict[str, Any]]] = []
    par: list[tuple[str, dict[str, Any]]] = []
    print("\n[1a/4] push-bench runs (lwm2m_load, raw CoAP clients, REST PUT /api/clients/EP/5/0/0, format OPAQUE)",
          flush=True)
    targets: list[tuple[str, Callable[[], Scratch | Leshan]]] = [
        ("scratch (ours)", lambda: Scratch(tmp, "scratch-push", bench_api=True, profile=profile))]
    if leshan is not None:
        targets.append(("leshan M17 (default cfg)", lambda: Leshan(leshan, tmp, "leshan-512")))
        if not args.quick:
            targets.append(("leshan M17 (1024 B blocks)", lambda: Leshan(leshan, tmp, "leshan-1024", block_size=1024)))
    for name, make in targets:
        others = Others()
        try:
            srv = make()
        except RuntimeError as e:
            one.append((name, {"skipped": str(e)[:200]}))
            par.append((name, {"skipped": str(e)[:200]}))
            continue
        try:
            tag = name.split()[0][:6] + str(len(one))
            one.append((name, push_series(srv, tag + "a", repeats, 1, MIB, 1)))
            print(f"  {name}: 1 x 1 MiB done", flush=True)
            par.append((name, push_series(srv, tag + "b", repeats, 20, 256 * 1024, 20)))
            print(f"  {name}: 20 x 256 KiB done", flush=True)
        finally:
            srv.stop()
        bg = others.end()
        dict(one)[name]["machine"] = dict(par)[name]["machine"] = bg
        print(note_others(bg), flush=True)
    if leshan is None:
        one.append(("leshan", {"skipped": "no Leshan server demo"}))
        par.append(("leshan", {"skipped": "no Leshan server demo"}))
    print_push_table("[1a] push 1 MiB to one device (push-bench -k 1 --size 1048576 --parallel 1); "
                     f"goal: Leshan {GOAL['leshan_1mib_s']} s with 512-byte blocks", one)
    result["push_1mib_one"] = dict(one)

    # ---- keys and packages for the real update path
    key = tmp / "oem.key"
    subprocess.run([str(SCRATCH), "firmware", "keygen", "--out", str(key)], check=True, capture_output=True,
                   timeout=60, cwd=REPO)
    package = make_package(tmp, key, MIB)

    # ---- 1b / 2: one device, through the API, scratch server + scratch sim
    print(f"\n[1b/2] one `scratch sim` device, update through the API (POST /api/devices/EP/firmware), SUIT package "
          f"{len(package)} B, {repeats} runs per method, median:", flush=True)
    others = Others()
    e2e = bench_api_updates(tmp, key, package, repeats, profile)
    e2e["machine"] = others.end()
    result["api_update_one"] = e2e
    print(f"{'method':<8}" + "".join(fmt(h, 13) for h in (
        "ok", "delivering s", "downloaded s", "transfer s", "full s", "srv CPU s", "sim CPU s", "CPU ms/KiB")))
    for method in ("push", "pull"):
        m = e2e[method]["median"]
        print(f"{method:<8}" + "".join(fmt(v, 13) for v in (
            f"{e2e[method]['ok']}/{e2e[method]['ok'] + e2e[method]['failed']}", m["delivering_s"], m["downloaded_s"],
            m["transfer_s"], m["done_s"], m["server_cpu_s_to_downloaded"], m["sim_cpu_s_to_downloaded"],
            m["server_cpu_ms_per_kib_delivery"])))
        if e2e[method]["errors"]:
            print(f"         failures e.g. {e2e[method]['errors']}")
    print("  (times from the POST; 'downloaded' = the device verified the package and reported Downloaded; "
          "'transfer' = from the first\n   delivering step to that; 'full' = Update executed, device rebooted "
          "(sim reboot delay 0.2 s) and reported success;\n   CPU = from the POST to Downloaded)")
    print(note_others(e2e["machine"]))

    # ---- 2 / 3: raw GETs of our file server
    print(f"\n[2/3] raw block-wise GETs of a {MIB} B package on our CoAP file server (our Lwm2mServer in a child "
          f"process), 1024-byte blocks", flush=True)
    others = Others()
    raw = bench_raw_pull(tmp, MIB, repeats, devices, profile)
    raw["machine"] = others.end()
    result["raw_pull"] = raw
    if "note" in raw:
        print(f"  NOTE: {raw['note']}")
    for label, key_ in (("coap-client-openssl -b 1024, 1 download", "coap_client_1"),
                        ("aiocoap client, 1 download", "aiocoap_1")):
        runs = raw.get(key_) or []
        if runs:
            ok = [x for x in runs if x["ok"]]
            print(f"  {label}: {len(ok)}/{len(runs)} ok, s: {[x['s'] for x in runs]} (median "
                  f"{fmt(median([x['s'] for x in ok]), 0)} s, {fmt(median([x['mb_s'] for x in ok]), 0)} MB/s), "
                  f"server CPU ms/KiB median {fmt(median([x['server_cpu_ms_per_kib'] for x in ok]), 0)}")
    n = raw.get("coap_client_n")
    if n:
        print(f"  {n['clients']} coap-client downloads at once: {n['ok']}/{n['clients']} ok in {n['s']} s -> "
              f"{n['mb_s']} MB/s; server CPU {n['server_cpu_s']} s ({n['server_cpu_pct']}%), "
              f"{n['server_cpu_ms_per_kib']} ms/KiB, RSS {n['server_rss_kib'][0]} -> {n['server_rss_kib'][1]} KiB")
    print(note_others(raw["machine"]))

    # ---- 3: N sim devices pulling at once through the API
    fleet_pkg = package if fleet_size == MIB else make_package(tmp, key, fleet_size)
    print(f"\n[3] {devices} `scratch sim` devices pulling at once through the API, package {len(fleet_pkg)} B each",
          flush=True)
    others = Others()
    fleet = bench_fleet_pull(tmp, key, fleet_pkg, devices, profile)
    fleet["machine"] = others.end()
    result["api_pull_fleet"] = fleet
    print(f"  {fleet['ok']}/{devices} succeeded; all downloaded {fleet['all_downloaded_s']} s after the first POST "
          f"(first {fleet['first_downloaded_s']} s, median {fleet['median_downloaded_s']} s) -> {fleet['mb_s']} MB/s "
          f"aggregate; all done "
          f"{fleet['all_done_s']} s")
    print(f"  server CPU to all-downloaded {fleet['server_cpu_s_delivery']} s ({fleet['server_cpu_pct_delivery']}%)"
          f" = {fleet['server_cpu_ms_per_kib']} ms/KiB served; sim process CPU {fleet['sim_cpu_s_delivery']} s; "
          f"server RSS {fleet['server_rss_kib'][0]} -> {fleet['server_rss_kib'][1]} KiB")
    if fleet["errors"]:
        print(f"  failures e.g. {fleet['errors']}")
    print(note_others(fleet["machine"]))

    # ---- 4: table
    print_push_table(f"[4] push 20 x 256 KiB in parallel (push-bench -k 20 --size 262144 --parallel 20); "
                     f"goal: Leshan {GOAL['leshan_20x256k_mb_s']} MB/s", par)
    result["push_20x256k_parallel"] = dict(par)

    # ---- summary
    def warm(rows: list[tuple[str, dict[str, Any]]], name: str, key_: str) -> Any:
        return (dict(rows).get(name, {}).get("warm_median") or dict(rows).get(name, {}).get("cold") or {}).get(key_)

    raw_n = raw.get("coap_client_n") or {}
    summary = {
        "push_1mib_s": {"ours": warm(one, "scratch (ours)", "per_push_p50_s"),
                        "leshan": warm(one, "leshan M17 (default cfg)", "per_push_p50_s"),
                        "leshan_1024": warm(one, "leshan M17 (1024 B blocks)", "per_push_p50_s"),
                        "goal_leshan": GOAL["leshan_1mib_s"]},
        "push_20x256k_mb_s": {"ours": warm(par, "scratch (ours)", "mb_s"),
                              "leshan": warm(par, "leshan M17 (default cfg)", "mb_s"),
                              "leshan_1024": warm(par, "leshan M17 (1024 B blocks)", "mb_s"),
                              "goal_leshan": GOAL["leshan_20x256k_mb_s"]},
        "ours_cpu_ms_per_kib": {"push_bench_1mib": warm(one, "scratch (ours)", "cpu_ms_per_kib"),
                                "push_bench_20x256k": warm(par, "scratch (ours)", "cpu_ms_per_kib"),
                                "push_api_update": e2e["push"]["median"]["server_cpu_ms_per_kib_delivery"],
                                "pull_api_update": e2e["pull"]["median"]["server_cpu_ms_per_kib_delivery"],
                                "pull_fleet_api": fleet["server_cpu_ms_per_kib"],
                                "pull_raw_coap_client_n": raw_n.get("server_cpu_ms_per_kib")},
        "leshan_cpu_ms_per_kib": {"push_bench_1mib": warm(one, "leshan M17 (default cfg)", "cpu_ms_per_kib"),
                                  "push_bench_20x256k": warm(par, "leshan M17 (default cfg)", "cpu_ms_per_kib")},
        "api_update_1mib_s": {m: {"downloaded": e2e[m]["median"]["downloaded_s"], "full": e2e[m]["median"]["done_s"]}
                              for m in ("push", "pull")},
        "pull_fleet_mb_s": fleet["mb_s"], "pull_raw_n_mb_s": raw_n.get("mb_s"),
    }
    result["summary"] = summary
    print("\nsummary (warm medians)                 ours     leshan  leshan-1024   goal(leshan)")
    for label, row in (("push 1 MiB, one device, s", summary["push_1mib_s"]),
                       ("push 20 x 256 KiB parallel, MB/s", summary["push_20x256k_mb_s"])):
        print(f"  {label:<34}" + "".join(fmt(row[k], 11) for k in ("ours", "leshan", "leshan_1024", "goal_leshan")))
    c = summary["ours_cpu_ms_per_kib"]
    lc = summary["leshan_cpu_ms_per_kib"]
    print(f"  server CPU ms/KiB, push-bench 1 MiB / 20x256 KiB: ours {c['push_bench_1mib']} / "
          f"{c['push_bench_20x256k']}, leshan {lc['push_bench_1mib']} / {lc['push_bench_20x256k']}")
    print(f"  our server CPU ms/KiB: push via API update {c['push_api_update']}, pull via API update "
          f"{c['pull_api_update']}, pull {devices} devices {c['pull_fleet_api']}, pull raw x{devices} "
          f"{c['pull_raw_coap_client_n']}")


if __name__ == "__main__":
    main()

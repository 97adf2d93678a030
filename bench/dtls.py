#!/usr/bin/env python3
"""DTLS-PSK handshakes per second and server CPU-ms per handshake. Prints figures; asserts nothing.

Our LwM2M server runs as its own process with a DTLS listener; ../shared/tools/lwm2m_load.py `dtls-bench` spawns
libcoap `coap-client-openssl` processes, each doing one handshake and one request, and samples the server's CPU and
RSS. The same tool drives the Eclipse Leshan server demo when $LESHAN_SERVER_DEMO (or --leshan) names its launcher.
A `coap` run of the same requests without DTLS gives the process-start baseline.

    .venv/bin/python bench/dtls.py [-n 300] [--parallel 8] [--leshan PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOAD = Path(os.environ.get("LWM2M_LOAD", REPO.parent / "shared" / "tools" / "lwm2m_load.py"))
KEY = "bench-psk-16byte"  # 16 bytes: tinydtls's PSK buffer; a bench key, never used outside this script
PREFIX = "dtls-"

SERVER = """
import asyncio, signal, sys
from pathlib import Path
from lwm2m_server.server import Lwm2mServer, ServerSettings

class BenchCredentials:
    def psk_for(self, identity):
        identity = identity.decode() if isinstance(identity, bytes) else identity
        return {key!r}.encode() if identity.startswith({prefix!r}) else None
    def endpoint_for(self, identity):
        identity = identity.decode() if isinstance(identity, bytes) else identity
        return identity if identity.startswith({prefix!r}) else None

async def main():
    srv = Lwm2mServer(ServerSettings(data_dir=Path(sys.argv[1]), coap_port=int(sys.argv[2]), api_port=None,
                                     coaps_port=int(sys.argv[3])), credentials=BenchCredentials())
    await srv.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await srv.stop()

asyncio.run(main())
"""


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load(mode_args: list[str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, str(LOAD), "dtls-bench", *mode_args], capture_output=True, text=True,
                         timeout=600)
    for line in out.stdout.splitlines():
        if not line.startswith("{"):
            print("   " + line)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    return json.loads(last) if last.startswith("{") else {}


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def bench_ours(n: int, parallel: int) -> None:
    with tempfile.TemporaryDirectory(prefix="scratch-dtls-bench-") as tmp:
        coap, coaps = free_port(), free_port()
        proc = subprocess.Popen([sys.executable, "-c", SERVER.format(key=KEY, prefix=PREFIX), tmp, str(coap),
                                 str(coaps)], stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("our server did not start")
            print(f"scratch server: coap {coap}, coaps {coaps}")
            common = ["-n", str(n), "--parallel", str(parallel), "--server-pid", str(proc.pid), "--prefix", PREFIX,
                      "--key", KEY, "--path", "rd"]
            load(["--port", str(coap), "--scheme", "coap", *common])
            load(["--port", str(coaps), "--scheme", "coaps", *common])
        finally:
            stop(proc)


def bench_leshan(launcher: str, n: int, parallel: int) -> None:
    with tempfile.TemporaryDirectory(prefix="leshan-dtls-bench-") as tmp:
        coap, coaps, web = free_port(), free_port(), free_port(socket.SOCK_STREAM)
        proc = subprocess.Popen([launcher, "-lh", "127.0.0.1", "-lp", str(coap), "-slh", "127.0.0.1", "-slp",
                                 str(coaps), "-wh", "127.0.0.1", "-wp", str(web), "-njc"], cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "LESHAN_DEMO_CWD": tmp})
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{web}/api/clients", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the Leshan server demo did not start") from None
                    time.sleep(0.3)
            print(f"leshan server demo: coap {coap}, coaps {coaps}")
            common = ["-n", str(n), "--parallel", str(parallel), "--server-pid", str(proc.pid), "--prefix", PREFIX,
                      "--key", KEY, "--path", "rd", "--leshan-rest", f"http://127.0.0.1:{web}"]
            load(["--port", str(coaps), "--scheme", "coaps", "-n", "20", *common[2:]])  # JIT warm-up
            load(["--port", str(coaps), "--scheme", "coaps", *common])
        finally:
            stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300, help="handshakes per run")
    ap.add_argument("--parallel", type=int, default=8, help="client processes at once")
    ap.add_argument("--leshan", default=os.environ.get("LESHAN_SERVER_DEMO", ""), help="Leshan server demo launcher")
    args = ap.parse_args()
    print(f"DTLS-PSK: {args.n} coap-client-openssl processes, {args.parallel} at once, each one handshake + GET /rd")
    bench_ours(args.n, args.parallel)
    if args.leshan:
        bench_leshan(args.leshan, args.n, args.parallel)
    else:
        print("leshan: skipped (set LESHAN_SERVER_DEMO or --leshan)")


if __name__ == "__main__":
    main()

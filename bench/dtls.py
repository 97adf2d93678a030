#!/usr/bin/env python3
"""DTLS-PSK handshakes per second and server CPU-ms per handshake, per DTLS client stack. Prints figures; asserts
nothing.

Our LwM2M server runs as its own process with a DTLS listener. Every client is driven with the same load shape:
N client processes, --parallel at once, each doing one DTLS-PSK handshake and one CoAP request (GET /rd; any answer
counts), while the server's CPU is read from /proc:

- libcoap ``coap-client-openssl`` (OpenSSL), through ../shared/tools/lwm2m_load.py ``dtls-bench``, which also runs
  the same requests over plain CoAP (the process-start baseline);
- the tinydtls example client (eclipse/tinydtls ``tests/dtls-client``; when $TINYDTLS_CLIENT names it, see
  docs/interop.md), the request typed on its stdin;
- mbedTLS (python-mbedtls): this script run as ``--mbedtls-one`` per handshake, once as is and once with its first
  ClientHello's record-layer version rewritten to 0xFE00 by a relay in the client process, as mbedTLS 2.x devices
  send it.

The same clients run against the Eclipse Leshan server demo when $LESHAN_SERVER_DEMO (or --leshan) names its
launcher. --tree DIR runs our server from another checkout (e.g. a ``git worktree`` of an older commit) to get
before/after figures; the summary table names the tree's commit.

    .venv/bin/python bench/dtls.py [-n 300] [--parallel 8] [--leshan PATH] [--tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import leshan_server  # bench/processes.py: the script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]
LOAD = Path(os.environ.get("LWM2M_LOAD", REPO.parent / "shared" / "tools" / "lwm2m_load.py"))
KEY = "bench-psk-16byte"  # 16 bytes: tinydtls's PSK buffer; a bench key, never used outside this script
PREFIX = "dtls-"
TINYDTLS = os.environ.get("TINYDTLS_CLIENT", "")
IDENTITIES = 20  # distinct PSK identities used round-robin, as lwm2m_load does
MID, TOKEN = 0x1234, bytes.fromhex("11223344")  # no 0x00 or 0x0A byte: the tinydtls client sends stdin lines
# GET /rd, CON, with an empty payload after the marker (ends the line): every client sends these bytes
GET_RD_LINE = bytes([0x44, 0x01]) + MID.to_bytes(2, "big") + TOKEN + b"\xb2rd\xff\n"

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
    import lwm2m_server
    print("code", Path(lwm2m_server.__file__).parent.parent, file=sys.stderr, flush=True)
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


def load(mode_args: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(LOAD), "dtls-bench", *mode_args], capture_output=True, text=True,
                         timeout=600)
    for line in out.stdout.splitlines():
        if not line.startswith("{"):
            print("   " + line)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    return json.loads(last) if last.startswith("{") else {}


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Figure:
    """One client stack's run against one server."""

    server: str
    client: str
    n: int
    ok: int
    per_s: float | None
    cpu_ms: float | None
    p50_ms: float | None
    note: str = ""


def proc_cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def libcoap(server: str, mode_args: list[str], n: int) -> Figure:
    d = load(mode_args)
    dtls = d.get("dtls", {}) if isinstance(d.get("dtls"), dict) else {}
    srv = dtls.get("server") or {}
    return Figure(server, "libcoap coap-client-openssl", n, int(dtls.get("ok", 0)), dtls.get("per_s"),
                  srv.get("cpu_ms_per_op"), (dtls.get("proc_ms") or {}).get("p50"))


def mbedtls_one(host: str, port: int, identity: str, key: bytes, record_version: str | None, timeout: float) -> int:
    """One mbedTLS client: handshake, GET /rd, wait for any answer. Exit code 0 when one came."""
    import select
    import threading

    from mbedtls import tls

    server = target = (host, port)
    if record_version:
        version = bytes.fromhex(record_version)
        front, back = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        front.bind(("127.0.0.1", 0))
        back.bind(("127.0.0.1", 0))
        state: dict[str, Any] = {"client": None, "first": True}

        def relay() -> None:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                for s in select.select([front, back], [], [], 0.2)[0]:
                    data, addr = s.recvfrom(65535)
                    if s is front:
                        state["client"] = addr
                        if state["first"] and data[:1] == b"\x16" and data[13:14] == b"\x01":
                            data, state["first"] = data[:1] + version + data[3:], False
                        back.sendto(data, server)
                    elif state["client"] is not None:
                        front.sendto(data, state["client"])

        threading.Thread(target=relay, daemon=True).start()
        target = front.getsockname()
    conf = tls.DTLSConfiguration(pre_shared_key=(identity, key), validate_certificates=False)
    sock = tls.ClientContext(conf).wrap_socket(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), server_hostname=None)
    sock.settimeout(timeout)
    sock.connect(target)
    try:
        sock.do_handshake()
        sock.send(GET_RD_LINE)
        answer = sock.recv(2048)
    except Exception:
        return 1
    return 0 if answer[2:8] == MID.to_bytes(2, "big") + TOKEN else 1


async def spawn_clients(server: str, client: str, n: int, parallel: int, server_pid: int,
                        command: Callable[[int], list[str]], stdin_line: bool, per_timeout: float) -> Figure:
    """n processes, ``parallel`` at once, each made by ``command(i)``; with ``stdin_line`` the request is typed on
    its stdin (again every second until answered: the tinydtls client drops a line typed before its handshake)."""
    sem = asyncio.Semaphore(parallel)
    times: list[float] = []
    failures: list[str] = []
    ours = MID.to_bytes(2, "big") + TOKEN

    async def one(i: int) -> None:
        async with sem:
            if len(failures) >= 2 * parallel and not times:
                return  # every client so far failed: the stack does not get in, no need to wait out the rest
            t0 = time.perf_counter()
            p = await asyncio.create_subprocess_exec(*command(i), stdin=asyncio.subprocess.PIPE if stdin_line
                                                     else asyncio.subprocess.DEVNULL,
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            ok = False
            try:
                if stdin_line:
                    assert p.stdin is not None and p.stdout is not None
                    out = b""
                    deadline = t0 + per_timeout
                    while not ok and time.perf_counter() < deadline:
                        p.stdin.write(GET_RD_LINE)
                        await p.stdin.drain()
                        try:
                            out += await asyncio.wait_for(p.stdout.read(4096), 1.0)
                        except TimeoutError:
                            continue
                        at = out.find(ours)
                        ok = at >= 2 and out[at - 2] == 0x64  # an ACK with a 4-byte token: our MID and token
                    p.stdin.write(b"client:exit\n")
                    await p.stdin.drain()
                rc = await asyncio.wait_for(p.wait(), per_timeout + 5)
                ok = ok if stdin_line else rc == 0
            except (TimeoutError, ConnectionError):
                pass
            finally:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
            if ok:
                times.append(time.perf_counter() - t0)
            else:
                failures.append(f"client {i}")

    cpu0, t0 = proc_cpu_s(server_pid), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall, cpu = time.perf_counter() - t0, proc_cpu_s(server_pid) - cpu0
    times.sort()
    ok = len(times)
    fig = Figure(server, client, n, ok, round(ok / wall, 1) if ok else 0.0,
                 round(1e3 * cpu / ok, 3) if ok else None, round(1e3 * times[len(times) // 2], 1) if ok else None,
                 "" if ok == n else f"{len(failures)} failed (no answer within {per_timeout:g} s)"
                 + (f", {n - ok - len(failures)} not run" if ok + len(failures) < n else ""))
    print(f"   [{client}] ok={ok}/{n} wall={wall:.2f}s -> {fig.per_s}/s  server cpu {cpu:.3f}s "
          f"({fig.cpu_ms} ms/handshake)  p50={fig.p50_ms} ms {fig.note}", flush=True)
    return fig


def embedded_clients(server: str, port: int, n: int, parallel: int, server_pid: int, workdir: Path,
                     per_timeout: float = 10.0) -> list[Figure]:
    """The tinydtls example client (when $TINYDTLS_CLIENT is set) and mbedTLS with and without 0xFE00."""
    figures = []
    ids = [f"{PREFIX}{i}" for i in range(IDENTITIES)]
    if TINYDTLS:
        key_file = workdir / "key"
        key_file.write_bytes(KEY.encode())
        for ident in ids:
            (workdir / f"id-{ident}").write_bytes(ident.encode())

        def tinydtls(i: int) -> list[str]:
            ident = ids[i % len(ids)]
            return [TINYDTLS, "-v", "0", "-i", str(workdir / f"id-{ident}"), "-k", str(key_file), "127.0.0.1",
                    str(port)]

        figures.append(asyncio.run(spawn_clients(server, "tinydtls dtls-client", n, parallel, server_pid,
                                                 tinydtls, True, per_timeout)))
    else:
        print("   [tinydtls dtls-client] skipped (set TINYDTLS_CLIENT, see docs/interop.md)")
        figures.append(Figure(server, "tinydtls dtls-client", 0, 0, None, None, None, "skipped: TINYDTLS_CLIENT unset"))
    for version in (None, "fe00"):
        def mbed(i: int, version: str | None = version) -> list[str]:
            return [sys.executable, str(Path(__file__).resolve()), "--mbedtls-one", "127.0.0.1", str(port),
                    ids[i % len(ids)], "--per-timeout", str(per_timeout), *(["--record-version", version] if version
                                                                           else [])]

        name = "mbedTLS (python-mbedtls)" + (", first record 0xFE00" if version else "")
        figures.append(asyncio.run(spawn_clients(server, name, n, parallel, server_pid, mbed, False, per_timeout)))
    return figures


def bench_ours(n: int, parallel: int, tree: Path) -> list[Figure]:
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no", "--",
                            "lwm2m_server"], capture_output=True, text=True).stdout.strip()
    name = f"scratch {commit}{'+changes' if dirty else ''}"
    with tempfile.TemporaryDirectory(prefix="scratch-dtls-bench-") as tmp:
        coap, coaps = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(tree)}
        proc = subprocess.Popen([sys.executable, "-c", SERVER.format(key=KEY, prefix=PREFIX), tmp, str(coap),
                                 str(coaps)], stdout=subprocess.PIPE, text=True, cwd=tree, env=env,
                                start_new_session=True)
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("our server did not start")
            print(f"{name} (code in {tree}): coap {coap}, coaps {coaps}")
            common = ["-n", str(n), "--parallel", str(parallel), "--server-pid", str(proc.pid), "--prefix", PREFIX,
                      "--key", KEY, "--path", "rd"]
            load(["--port", str(coap), "--scheme", "coap", *common])
            figures = [libcoap(name, ["--port", str(coaps), "--scheme", "coaps", *common], n)]
            figures += embedded_clients(name, coaps, n, parallel, proc.pid, Path(tmp))
        finally:
            stop(proc)
    return figures


def bench_leshan(launcher: str, n: int, parallel: int) -> list[Figure]:
    with leshan_server(launcher, start_timeout=60) as leshan:
        coaps, pid = leshan.coaps, leshan.proc.pid
        print(f"leshan server demo: coap {leshan.coap}, coaps {coaps}")
        common = ["-n", str(n), "--parallel", str(parallel), "--server-pid", str(pid), "--prefix", PREFIX,
                  "--key", KEY, "--path", "rd", "--leshan-rest", f"http://127.0.0.1:{leshan.web}"]
        load(["--port", str(coaps), "--scheme", "coaps", "-n", "20", *common[2:]])  # JIT warm-up
        figures = [libcoap("leshan server demo", ["--port", str(coaps), "--scheme", "coaps", *common], n)]
        with tempfile.TemporaryDirectory(prefix="leshan-dtls-bench-") as tmp:
            figures += embedded_clients("leshan server demo", coaps, n, parallel, pid, Path(tmp))
    return figures


def table(figures: list[Figure]) -> str:
    rows = ["| server | client | ok / n | handshakes/s | server CPU-ms/handshake | p50 ms per client process |",
            "| --- | --- | --- | --- | --- | --- |"]
    for f in figures:
        if f.n == 0:
            rows.append(f"| {f.server} | {f.client} | — | — | — | {f.note} |")
            continue
        ok = f"{f.ok} / {f.n}" + (f" **FAILED** ({f.note})" if f.ok == 0 else f" ({f.note})" if f.note else "")
        rows.append(f"| {f.server} | {f.client} | {ok} | {f.per_s if f.ok else '—'} | "
                    f"{f.cpu_ms if f.cpu_ms is not None else '—'} | {f.p50_ms if f.p50_ms is not None else '—'} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300, help="handshakes per run and client stack")
    ap.add_argument("--parallel", type=int, default=8, help="client processes at once")
    ap.add_argument("--leshan", default=os.environ.get("LESHAN_SERVER_DEMO", ""), help="Leshan server demo launcher")
    ap.add_argument("--tree", type=Path, default=REPO, help="checkout whose lwm2m_server runs as our server")
    ap.add_argument("--mbedtls-one", nargs=3, metavar=("HOST", "PORT", "IDENTITY"), help=argparse.SUPPRESS)
    ap.add_argument("--record-version", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--per-timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mbedtls_one:
        host, port, identity = args.mbedtls_one
        raise SystemExit(mbedtls_one(host, int(port), identity, KEY.encode(), args.record_version, args.per_timeout))
    print(f"DTLS-PSK: {args.n} client processes per stack, {args.parallel} at once, each one handshake + GET /rd")
    figures = bench_ours(args.n, args.parallel, args.tree.resolve())
    if args.leshan:
        figures += bench_leshan(args.leshan, args.n, args.parallel)
    else:
        print("leshan: skipped (set LESHAN_SERVER_DEMO or --leshan)")
    print()
    print(table(figures))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A cookie-less ClientHello flood against `scratch server` (DTLS only), and a legitimate device handshaking over a
delayed link meanwhile. Prints figures; asserts nothing. Loopback only.

`scratch server` runs as a child process with one server credential (issued into its data directory the way the
tests do it). For --seconds, --senders processes send epoch-0 DTLS 1.2 ClientHellos without a cookie (offering
TLS_PSK_WITH_AES_128_CCM_8, a fresh client random per datagram) to the DTLS port, from --pool UDP sockets each,
bound to --addresses source addresses 127.0.0.2... (any 127.x.y.z is local on Linux) on random ports, a --rotate
share of the sockets replaced by new ones (new address and port) after every pass, as spoofed sources look; at the
highest rate they manage, or at --rate in all. The senders count the HelloVerifyRequests that come back (what the
server answered); /proc/net/udp counts what the server's socket dropped unread (receive buffer full).

Meanwhile a legitimate device (aiocoap + DTLSSocket/tinydtls through lwm2m_server.coap.dtls.dtls_client_context,
with its server credential) repeatedly makes a fresh session, a DTLS-PSK handshake and one GET /.well-known/core
(any answer counts), through a loopback relay that delays every datagram by --delay-ms both ways; the time from the
start to the answer is its latency (3 round trips of handshake + 1 of request: 0.8 s at 100 ms each way). A few
attempts before the flood give the idle latency. The server's CPU and RSS are read from /proc every second.

--tree DIR runs the server from another checkout (e.g. a ``git worktree`` of an older commit; no venv needed: this
venv's python with PYTHONPATH=DIR); the legitimate client is always this checkout's. The data directory is TMP and
the vault key TMP/vault.key ($SCRATCH_VAULT_KEY_FILE; older trees read DATA_DIR/vault.key: the same file); no
--rd-* option is passed, so older trees take the same arguments.

    .venv/bin/python bench/dtls_flood.py [--seconds 20] [--rate 13000] [--senders 2] [--delay-ms 100] [--tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processes import (  # bench/processes.py: the script's folder is on sys.path
    CHILDREN,
    JsonLinesChild,
    free_port,
    machine_note,
    proc_sample,
    r,
    stop_children_on_signals,
    wait_for_line,
)

REPO = Path(__file__).resolve().parents[1]
ENDPOINT = "flood-legit"

# `scratch` from the tree on PYTHONPATH (says where its code is, so the run shows which tree served)
LAUNCH = ("import sys, lwm2m_server; print('code', lwm2m_server.__file__, flush=True); sys.argv[0] = 'scratch'; "
          "from lwm2m_server.cli.app import main; main()")

# One server credential for ENDPOINT, issued with the tree's own code into the running server's database; prints
# {"identity", "psk"} (hex) on stdout, to this script only.
ISSUE = """
import json, sys, time
from pathlib import Path
from bootstrap.credentials import CredentialKind
from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from lwm2m_server.storage.database import Database

database = Database.for_data_dir(Path(sys.argv[1]))
try:
    store = SqlCredentialStore(database, Vault.open(Path(sys.argv[2]), environ={}))
    cred, psk = store.issue(sys.argv[3], CredentialKind.SERVER, now=time.time(), tenant_id="default")
    print(json.dumps({"identity": cred.identity, "psk": bytes(psk).hex()}))
finally:
    database.close()
"""

# A flood sender (one process). argv[1]: JSON {port, seconds, rate, pool, addresses, rotate, seed}. Prints
# {"event": "started"} once its sockets are open, then {"event": "done", ...} with its counts.
SENDER = r"""
import json, random, select, socket, sys, time

cfg = json.loads(sys.argv[1])
rng = random.Random(cfg["seed"])
target = ("127.0.0.1", cfg["port"])
# epoch-0 ClientHello record: DTLS 1.2, no session id, no cookie, TLS_PSK_WITH_AES_128_CCM_8, null compression
body = b"\xfe\xfd" + bytes(32) + b"\x00" + b"\x00" + b"\x00\x02\xc0\xa8" + b"\x01\x00"
hs = b"\x01" + len(body).to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00" + len(body).to_bytes(3, "big") + body
TEMPLATE = b"\x16\xfe\xfd" + b"\x00\x00" + bytes(6) + len(hs).to_bytes(2, "big") + hs
RANDOM_AT = 13 + 12 + 2  # record header, handshake header, client_version

ep = select.epoll()
socks = {}
opened = 0

def address():
    i = rng.randrange(cfg["addresses"])
    return f"127.0.{i // 250}.{2 + i % 250}"  # 127.0.0.2 ... (never 127.0.0.1, the legitimate device's)

def open_socket():
    global opened
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.bind((address(), 0))
    s.connect(target)
    ep.register(s.fileno(), select.EPOLLIN)
    socks[s.fileno()] = s
    opened += 1
    return s

counts = {"sent": 0, "send_errors": 0, "hello_verify": 0, "other_answers": 0, "errors_received": 0}

def drain(fds):
    for fd in fds:
        s = socks.get(fd)
        while s is not None:
            try:
                d = s.recv(4096)
            except BlockingIOError:
                break
            except OSError:
                counts["errors_received"] += 1
                break
            if d[:1] == b"\x16" and d[13:14] == b"\x03":
                counts["hello_verify"] += 1
            else:
                counts["other_answers"] += 1

def close_socket(s):
    drain([s.fileno()])
    ep.unregister(s.fileno())
    del socks[s.fileno()]
    s.close()

pool = [open_socket() for _ in range(cfg["pool"])]
print(json.dumps({"event": "started"}), flush=True)
rate, rotate = cfg["rate"], cfg["rotate"]
datagram = bytearray(TEMPLATE)
seq, at = 0, 0
t0 = time.monotonic()
end = t0 + cfg["seconds"]
while True:
    now = time.monotonic()
    if now >= end:
        break
    batch = 64
    if rate > 0:
        batch = min(batch, int((now - t0) * rate) - counts["sent"] - counts["send_errors"])
        if batch <= 0:
            drain(fd for fd, _ in ep.poll(0.002))
            continue
    for _ in range(batch):
        datagram[5:11] = seq.to_bytes(6, "big")
        datagram[RANDOM_AT:RANDOM_AT + 32] = rng.randbytes(32)
        seq += 1
        try:
            pool[at].send(datagram)
            counts["sent"] += 1
        except OSError:
            counts["send_errors"] += 1
        at += 1
        if at == len(pool):
            at = 0
            for i in rng.sample(range(len(pool)), int(rotate * len(pool))):  # new sources for the next pass
                close_socket(pool[i])
                pool[i] = open_socket()
    drain(fd for fd, _ in ep.poll(0))
seconds = time.monotonic() - t0
time.sleep(0.5)  # answers still on their way
drain(list(socks))
for s in list(socks.values()):
    close_socket(s)
print(json.dumps({"event": "done", "seconds": seconds, "sources": opened, **counts}), flush=True)
"""


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP sockets bound to local ``port`` (the receive buffer was full)."""
    total = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 12 and fields[1].rsplit(":", 1)[1] == f"{port:04X}":
                total += int(fields[-1])
    return total


class DelayingRelay(asyncio.DatagramProtocol):
    """A UDP relay on 127.0.0.1 for one client: every datagram, either way, arrives ``delay`` s late. Its back
    socket is new, so the server sees a new peer (a new handshake) for every relay."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None
        self.client: Any = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                loop.call_later(relay.delay, relay.forward, relay.front, data, True)

        self.front, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.target)
        return int(self.front.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client = addr
        asyncio.get_running_loop().call_later(self.delay, self.forward, self.back, data, False)

    def forward(self, transport: asyncio.DatagramTransport | None, data: bytes, to_client: bool) -> None:
        if transport is not None and not transport.is_closing():
            if to_client:
                if self.client is not None:
                    transport.sendto(data, self.client)
            else:
                transport.sendto(data)

    def close(self) -> None:
        for t in (self.front, self.back):
            if t is not None:
                t.close()
        self.front = self.back = None


@dataclass
class Attempts:
    """The legitimate device's handshakes (+ one request each)."""

    ok_ms: list[float] = field(default_factory=list)
    failed: int = 0
    answers: dict[str, int] = field(default_factory=dict)


async def legitimate(port: int, identity: bytes, psk: bytes, delay: float, timeout: float, until: float,
                     at_least: int = 0) -> Attempts:
    """Fresh sessions one after the other until ``until`` (monotonic) and at least ``at_least`` of them."""
    import aiocoap

    from lwm2m_server.coap.dtls import dtls_client_context

    out = Attempts()
    while time.monotonic() < until or len(out.ok_ms) + out.failed < at_least:
        relay = DelayingRelay(("127.0.0.1", port), delay)
        uri = f"coaps://127.0.0.1:{await relay.start()}"
        t0 = time.perf_counter()
        client = await dtls_client_context(None, uri, identity, psk)
        try:
            answer = await asyncio.wait_for(
                client.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/.well-known/core")).response, timeout)
            out.ok_ms.append(1e3 * (time.perf_counter() - t0))
            out.answers[str(answer.code)] = out.answers.get(str(answer.code), 0) + 1
        except (TimeoutError, aiocoap.error.Error) as e:
            out.failed += 1
            print(f"   legitimate handshake failed after {time.perf_counter() - t0:.1f} s: {type(e).__name__}",
                  flush=True)
        finally:
            await client.shutdown()
            relay.close()
    return out


class Sampler(threading.Thread):
    """The server's CPU seconds, RSS and socket drops, every ``period`` s until stopped."""

    def __init__(self, pid: int, port: int, period: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.port, self.period = pid, port, period
        self.samples: list[tuple[float, dict[str, float], int]] = []
        self.halt = threading.Event()

    def sample(self) -> tuple[float, dict[str, float], int]:
        s = (time.monotonic(), proc_sample(self.pid), udp_drops(self.port))
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.sample()


def tree_name(tree: Path) -> str:
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no", "--",
                            "lwm2m_server"], capture_output=True, text=True).stdout.strip()
    return f"scratch {commit}{'+changes' if dirty else ''}"


def pct(values: list[float], q: float) -> float | None:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    tree = args.tree.resolve()
    name = tree_name(tree)
    delay = args.delay_ms / 1e3
    with tempfile.TemporaryDirectory(prefix="scratch-dtls-flood-") as tmp_name:
        tmp = Path(tmp_name)
        key_file = tmp / "vault.key"
        drop = ("SCRATCH_API", "SCRATCH_API_TOKEN", "SCRATCH_VAULT_KEY", "SCRATCH_DATA_DIR", "PYTHONPATH")
        env = {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONPATH": str(tree),
               "SCRATCH_VAULT_KEY_FILE": str(key_file), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        port = free_port()
        log = tmp / "server.log"
        with log.open("w") as f:
            srv = CHILDREN.start([sys.executable, "-c", LAUNCH, "server", "--coaps", f"127.0.0.1:{port}",
                                  "--api", "127.0.0.1:0", "--data-dir", str(tmp)],
                                 cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for_line(log, srv, "LwM2M server on", 60)
        code = log.read_text(errors="replace").splitlines()[0]
        print(f"{name}: DTLS on 127.0.0.1:{port}, {code}", flush=True)
        issued = subprocess.run([sys.executable, "-c", ISSUE, str(tmp), str(key_file), ENDPOINT], cwd=tree, env=env,
                                capture_output=True, text=True, timeout=60)
        if issued.returncode != 0:
            raise RuntimeError(f"could not issue the device's credential: {issued.stderr[-500:]}")
        cred = json.loads(issued.stdout.strip().splitlines()[-1])
        identity, psk = cred["identity"].encode(), bytes.fromhex(cred["psk"])

        idle = asyncio.run(legitimate(port, identity, psk, delay, args.attempt_timeout, 0.0, args.idle_attempts))
        print(f"   idle: {len(idle.ok_ms)} ok, {idle.failed} failed, p50 {r(pct(idle.ok_ms, 0.5), 0)} ms", flush=True)
        time.sleep(1.0)
        sampler = Sampler(srv.pid, port)
        _, before, drops0 = sampler.sample()
        per_sender = args.rate / args.senders if args.rate else 0.0
        senders = [JsonLinesChild(SENDER, [json.dumps({
            "port": port, "seconds": args.seconds, "rate": per_sender, "pool": args.pool,
            "addresses": args.addresses, "rotate": args.rotate, "seed": 1000 + i})], tmp / f"sender-{i}.log")
            for i in range(args.senders)]
        for s in senders:
            s.expect("started", 60)
        t_start, cpu0 = time.monotonic(), before["cpu_s"]
        sampler.start()
        flood = asyncio.run(legitimate(port, identity, psk, delay, args.attempt_timeout, t_start + args.seconds))
        done = [s.expect("done", args.seconds + 60) for s in senders]
        t_end, at_end, drops1 = sampler.sample()
        for s in senders:
            s.close()
        time.sleep(args.settle)
        sampler.halt.set()
        sampler.join(5)
        _, after, _ = sampler.sample()
        CHILDREN.stop(srv)
        text = log.read_text(errors="replace")

    flood_s = max(d["seconds"] for d in done)
    sent = sum(d["sent"] for d in done)
    during = [s for t, s, _ in sampler.samples if t_start <= t <= t_end]
    cpu_per_s = [100 * (b[1]["cpu_s"] - a[1]["cpu_s"]) / (b[0] - a[0])
                 for a, b in zip(sampler.samples, sampler.samples[1:], strict=False) if t_start <= a[0] < t_end]
    return {
        "server": name, "seconds": r(flood_s, 1), "senders": args.senders, "target_rate": args.rate or "max",
        "sent": sent, "sent_per_s": r(sent / flood_s, 0),
        "send_errors": sum(d["send_errors"] for d in done),
        "sources": sum(d["sources"] for d in done),
        "hello_verify": sum(d["hello_verify"] for d in done),
        "hello_verify_per_s": r(sum(d["hello_verify"] for d in done) / flood_s, 0),
        "other_answers": sum(d["other_answers"] for d in done),
        "dropped_unread": drops1 - drops0,
        "server_cpu_pct": r(100 * (at_end["cpu_s"] - cpu0) / (t_end - t_start), 0),
        "server_cpu_pct_max_1s": r(max(cpu_per_s), 0) if cpu_per_s else None,
        "rss_mib_before": r(before["rss_kib"] / 1024, 1),
        "rss_mib_peak": r(max([before["rss_kib"], *(s["rss_kib"] for s in during)]) / 1024, 1),
        "rss_mib_after": r(after["rss_kib"] / 1024, 1),
        "hwm_mib": r(after["hwm_kib"] / 1024, 1),
        "idle_ok": len(idle.ok_ms), "idle_failed": idle.failed, "idle_p50_ms": r(pct(idle.ok_ms, 0.5), 0),
        "legit_ok": len(flood.ok_ms), "legit_failed": flood.failed, "legit_p50_ms": r(pct(flood.ok_ms, 0.5), 0),
        "legit_max_ms": r(max(flood.ok_ms), 0) if flood.ok_ms else None, "legit_answers": flood.answers,
        "server_log_lines": len(text.splitlines()),
    }


def num(x: Any) -> str:
    """A figure for the table: thousands separated, no trailing .0, a dash for None."""
    return "—" if x is None else f"{x:,.0f}" if isinstance(x, float) and x == int(x) else f"{x:,}"


def table(rows: list[dict[str, Any]], delay_ms: float) -> str:
    lines = [f"| server | flood: ClientHellos sent/s (s, sources) | HelloVerifyRequests back/s | dropped unread "
             f"| server CPU % (max 1 s) | server RSS MiB before / peak / after | legitimate device over "
             f"{delay_ms:g} ms each way: ok / failed | its p50 / max ms (idle p50) | server log lines |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in rows:
        lines.append(
            f"| {m['server']} | {num(m['sent_per_s'])} ({m['seconds']} s, {num(m['sources'])}) "
            f"| {num(m['hello_verify_per_s'])} | {num(m['dropped_unread'])} "
            f"| {num(m['server_cpu_pct'])} ({num(m['server_cpu_pct_max_1s'])}) "
            f"| {m['rss_mib_before']} / {m['rss_mib_peak']} / {m['rss_mib_after']} "
            f"| {m['legit_ok']} / {m['legit_failed']} | {num(m['legit_p50_ms'])} / {num(m['legit_max_ms'])} "
            f"({num(m['idle_p50_ms'])}) | {m['server_log_lines']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the flood lasts")
    ap.add_argument("--rate", type=float, default=0.0, help="ClientHellos per second in all (0: as fast as the "
                    "senders go)")
    ap.add_argument("--senders", type=int, default=2, help="flood sender processes")
    ap.add_argument("--pool", type=int, default=1000, help="UDP sockets (source address and port) per sender")
    ap.add_argument("--addresses", type=int, default=200, help="source addresses 127.0.0.2...")
    ap.add_argument("--rotate", type=float, default=0.1, help="share of a sender's sockets replaced after each pass")
    ap.add_argument("--delay-ms", type=float, default=100.0, help="the legitimate device's link delay, each way")
    ap.add_argument("--attempt-timeout", type=float, default=10.0, help="seconds a legitimate handshake + GET may "
                    "take before it counts as failed")
    ap.add_argument("--idle-attempts", type=int, default=3, help="legitimate handshakes before the flood")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after the flood before the last RSS sample")
    ap.add_argument("--tree", type=Path, default=REPO, help="checkout whose lwm2m_server runs as the server")
    args = ap.parse_args()

    stop_children_on_signals()
    busy, machine = machine_note()
    print(f"cookie-less ClientHello flood: {args.seconds:g} s, {args.senders} senders x {args.pool} sockets over "
          f"{args.addresses} addresses, rate {args.rate or 'max'}; a legitimate device over a {args.delay_ms:g} ms "
          f"link ({machine})", flush=True)
    try:
        m = run(args)
    finally:
        CHILDREN.stop_all()
    print()
    print(table([m], args.delay_ms))
    print(json.dumps({"bench": "dtls_flood", "machine_busy_pct_before": r(busy, 1), **m}))


if __name__ == "__main__":
    main()

"""Field-ready DTLS (issue 12): clients without renegotiation_info (tinydtls's example client) and with a 0xFE00
record version (mbedTLS) complete; cookie-less ClientHellos leave no state; a spoofed cookie does not end a live
session; a brute force on one identity does not refuse another identity on the same address; an unknown identity
and a wrong key get the same answer; a client whose session the server lost handshakes again at once.

Real DTLS on loopback; other source addresses are 127.0.x.y.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import pytest

from lwm2m_server.coap.dtls import (
    SECURITY_DTLS_LOCKOUT,
    DtlsServerTransport,
    dtls_client_context,
    dtls_server_context,
    dtls_transport,
)
from lwm2m_server.core.rate_limit import Lockout
from tests.harness import eventually
from tests.integration.test_dtls_lockout import site
from tests.integration.test_dtls_transport import raw_client_get

KEYS = {b"dev-one": b"s3cretPSK-one!", b"dev-two": b"s3cretPSK-two!"}




Events = list[tuple[str, dict[str, object]]]


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, DtlsServerTransport, Events]]:
    events: Events = []
    context, port = await dtls_server_context(site(), "127.0.0.1", 0, psk_for=KEYS.get, max_handshakes=64,
                                              lockout=Lockout(3, 60, 300), backoff_base=60,  # no back-off ends
                                              on_security_event=lambda kind, data: events.append((kind, data)))
    try:
        yield port, dtls_transport(context), events
    finally:
        await asyncio.wait_for(context.shutdown(), 10)


async def get(client: aiocoap.Context, uri: str, timeout: float = 10) -> aiocoap.Message:
    return await asyncio.wait_for(client.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/hello")).response,
                                  timeout)


def client_hello(seq: int = 0, cookie: bytes = b"", version: bytes = b"\xfe\xfd") -> bytes:
    """An epoch-0 ClientHello record (TLS_PSK_WITH_AES_128_CCM_8, no extensions)."""
    hello = b"\xfe\xfd" + os.urandom(32) + b"\x00" + bytes([len(cookie)]) + cookie + b"\x00\x02\xc0\xa8\x01\x00"
    header = b"\x01" + len(hello).to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00" + len(hello).to_bytes(3, "big")
    body = header + hello
    return b"\x16" + version + b"\x00\x00" + seq.to_bytes(6, "big") + len(body).to_bytes(2, "big") + body


class DelayingRelay(asyncio.DatagramProtocol):
    """A UDP relay on 127.0.0.1 for one client: every datagram, either way, arrives ``delay`` seconds late."""

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
                loop.call_later(relay.delay, relay._to_client, data)

        self.front, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.back, _ = await loop.create_datagram_endpoint(Back, remote_addr=self.target)
        return int(self.front.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client = addr
        asyncio.get_running_loop().call_later(self.delay, self._to_server, data)

    def _to_server(self, data: bytes) -> None:
        if self.back is not None:
            self.back.sendto(data)

    def _to_client(self, data: bytes) -> None:
        if self.front is not None and self.client is not None:
            self.front.sendto(data, self.client)

    def close(self) -> None:
        for t in (self.front, self.back):
            if t is not None:
                t.close()
        self.front = self.back = None


def flood(port: int, stop: threading.Event, sources: int = 100, per_source: int = 25) -> int:
    """Cookie-less ClientHellos from ``sources`` addresses 127.0.1.1... (a few ports each); how many were sent."""
    sent = 0
    socks = []
    try:
        for i in range(sources):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.{1 + i // 250}.{1 + i % 250}", 0))
            socks.append(s)
        for n in range(per_source):
            for s in socks:
                s.sendto(client_hello(n), ("127.0.0.1", port))
                sent += 1
            if stop.wait(0.01):
                break
    finally:
        for s in socks:
            s.close()
    return sent


async def test_a_cookieless_flood_leaves_no_state_and_a_slow_handshake_completes(server) -> None:
    port, transport, _ = server
    relay = DelayingRelay(("127.0.0.1", port), 0.15)
    relay_port = await relay.start()
    stop = threading.Event()
    flooding = asyncio.ensure_future(asyncio.to_thread(flood, port, stop))
    client = await dtls_client_context(None, f"coaps://127.0.0.1:{relay_port}", b"dev-one", KEYS[b"dev-one"])
    most = 0
    try:
        await eventually(lambda: transport.client_hellos > 200)  # the flood is on
        request = asyncio.ensure_future(get(client, f"coaps://127.0.0.1:{relay_port}", 20))
        while not request.done():
            most = max(most, transport.pending_handshakes + transport.peers)
            await asyncio.sleep(0.005)
        assert (await request).payload == b"server dev-one"
    finally:
        stop.set()
        sent = await flooding
        await client.shutdown()
        relay.close()
    assert sent > 1000 and transport.cookie_challenges >= 1000  # each answered, statelessly
    assert most <= 1 and transport.handshakes_started == 1 and transport.handshakes_completed == 1


async def test_a_spoofed_cookie_does_not_end_a_live_session(server) -> None:
    port, transport, _ = server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.25)
        assert await asyncio.to_thread(raw_client_get, sock, port, b"dev-one", KEYS[b"dev-one"]) == b"server dev-one"
        (session,) = transport.sessions()
        hellos = transport.client_hellos
        for seq in range(3):  # from the device's address and port, with a cookie the server never gave
            sock.sendto(client_hello(seq, b"\x42" * 32), ("127.0.0.1", port))
        await eventually(lambda: transport.client_hellos == hellos + 3)
        assert session.is_open and transport.sessions() == [session] and transport.pending_handshakes == 0
        assert transport.handshakes_started == 1


async def failed_attempt(uri: str, identity: bytes, key: bytes, transport: DtlsServerTransport, n: int) -> None:
    """One handshake with a wrong key (or an unknown identity), until the server has counted it."""
    bad = await dtls_client_context(None, uri, identity, key)
    attempt = asyncio.ensure_future(bad.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/hello")).response)
    try:
        await eventually(lambda: transport.handshakes_failed >= n)
    finally:
        await bad.shutdown()  # fails the pending request
        with contextlib.suppress(aiocoap.error.Error, asyncio.CancelledError):
            await attempt


async def test_a_brute_force_on_one_identity_does_not_refuse_another_on_the_same_address(server) -> None:
    port, transport, events = server
    uri = f"coaps://127.0.0.1:{port}"
    for n in range(1, 6):  # five wrong keys for dev-one from 127.0.0.1
        await failed_attempt(uri, b"dev-one", b"wrong-key-%d" % n, transport, n)
    # the third is reported per identity (refusing nothing); the fourth makes (address, identity) back off, so the
    # fifth is refused (answered as a wrong key)
    assert [(d["scope"], d["failures"], d["seconds"]) for _, d in events] == [("identity", 3, 0),
                                                                              ("address+identity", 4, 60)]
    assert all(kind == SECURITY_DTLS_LOCKOUT and d["identity"] == "dev-one" for kind, d in events)
    assert transport.dropped_locked_out == 1
    assert transport.locked_out("127.0.0.1") is None  # known identities do not lock the address

    # another device behind the same address pays nothing
    good = await dtls_client_context(None, uri, b"dev-two", KEYS[b"dev-two"])
    try:
        assert (await get(good, uri)).payload == b"server dev-two"
    finally:
        await good.shutdown()
    # the attacked identity itself, even with its right key, is refused from here while it backs off
    refused = transport.dropped_locked_out
    await failed_attempt(uri, b"dev-one", KEYS[b"dev-one"], transport, 6)
    assert transport.dropped_locked_out == refused + 1 and transport.handshakes_completed == 1
    # unknown identities count against the address (and only ever refuse unknown identities)
    for n in range(7, 10):
        await failed_attempt(uri, b"nobody-%d" % n, KEYS[b"dev-one"], transport, n)
    assert transport.locked_out("127.0.0.1") is not None and events[-1][1]["scope"] == "address"
    good = await dtls_client_context(None, uri, b"dev-two", KEYS[b"dev-two"])
    try:
        assert (await get(good, uri)).payload == b"server dev-two"
    finally:
        await good.shutdown()


def raw_handshake(port: int, identity: bytes, psk: bytes, source: str) -> list[bytes]:
    """A tinydtls client from ``source`` that handshakes; every datagram the server sent, until 1.5 s of silence
    (blocking, run it in a thread)."""
    from DTLSSocket import dtls

    received: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(1.5)
        d = dtls.DTLS(read=lambda _a, data: len(data), event=lambda _level, _code: None, pskId=identity,
                      pskStore={identity: psk},
                      write=lambda _a, data: sock.sendto(data, ("127.0.0.1", port)) or len(data))
        session = d.connect("::ffff:127.0.0.1", port)
        try:
            for _ in range(10):
                try:
                    data = sock.recv(2048)
                except TimeoutError:
                    break
                received.append(data)
                d.handleMessageAddr("::ffff:127.0.0.1", port, data)
        finally:
            d.pycb["write"] = lambda _a, data: len(data)  # no close_notify on leaving
            del session, d
    return received


def shape(datagrams: list[bytes]) -> list[tuple[int, int, int]]:
    """What an observer sees of the server's datagrams: content type, epoch, length (contents are random)."""
    return [(d[0], int.from_bytes(d[3:5], "big"), len(d)) for d in datagrams]


async def test_an_unknown_identity_and_a_wrong_key_get_the_same_answer(server) -> None:
    port, transport, _ = server
    wrong = await asyncio.to_thread(raw_handshake, port, b"dev-one", b"not-the-key!!!", "127.0.0.3")
    unknown = await asyncio.to_thread(raw_handshake, port, b"dev-0ne", b"not-the-key!!!", "127.0.0.4")
    assert shape(wrong) == shape(unknown)
    # HelloVerifyRequest, ServerHello, ServerHelloDone, then at once an epoch-0 fatal decrypt_error (and the
    # close_notify tinydtls sends as it drops the peer)
    assert [d[0] for d in wrong][:4] == [22, 22, 22, 21] and all(d[0] == 21 for d in wrong[4:])
    assert wrong[3][3:5] == b"\0\0" and wrong[3][-2:] == b"\x02\x33"
    assert transport.handshakes_failed == 2 and transport.handshakes_completed == 0


async def test_a_client_handshakes_again_at_once_after_the_server_lost_its_session() -> None:
    context, port = await dtls_server_context(site(), "127.0.0.1", 0, psk_for=KEYS.get)
    uri = f"coaps://127.0.0.1:{port}"
    client = await dtls_client_context(None, uri, b"dev-two", KEYS[b"dev-two"])
    try:
        assert (await get(client, uri)).payload == b"server dev-two"
        dtls_transport(context)._dtls.pycb["write"] = lambda _a, data: len(data)  # a crash: no close_notify
        await context.shutdown()
        context, _ = await dtls_server_context(site(), "127.0.0.1", port, psk_for=KEYS.get)
        restarted = dtls_transport(context)
        # the next request is answered with an alert (not left to time out) ...
        with pytest.raises(aiocoap.error.Error):
            await get(client, uri)
        assert restarted.unknown_session_alerts == 1
        # ... and the one after it handshakes again
        assert (await get(client, uri)).payload == b"server dev-two"
        assert restarted.handshakes_completed == 1
    finally:
        await client.shutdown()
        await context.shutdown()


def mbedtls_handshake(port: int, identity: bytes, psk: bytes, record_version: bytes) -> str:
    """An mbedTLS client whose first ClientHello carries ``record_version`` in its record header (through a relay
    that rewrites it, as mbedTLS devices send 0xFE00); the cipher suite, or raises (blocking, run in a thread)."""
    from mbedtls import tls

    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(("127.0.0.1", 0))
    back.bind(("127.0.0.1", 0))
    front.settimeout(0.1)
    back.settimeout(0.1)
    done = threading.Event()
    state: dict[str, Any] = {"client": None, "first": True}

    def relay() -> None:
        while not done.is_set():
            for s in (front, back):
                try:
                    data, addr = s.recvfrom(65535)
                except TimeoutError:
                    continue
                if s is front:
                    state["client"] = addr
                    if state["first"] and data[:1] == b"\x16" and data[13:14] == b"\x01":
                        data, state["first"] = data[:1] + record_version + data[3:], False
                    back.sendto(data, ("127.0.0.1", port))
                elif state["client"] is not None:
                    front.sendto(data, state["client"])

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    conf = tls.DTLSConfiguration(pre_shared_key=(identity.decode(), psk), validate_certificates=False)
    sock = tls.ClientContext(conf).wrap_socket(socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
                                               server_hostname=None)
    try:
        sock.settimeout(8)
        sock.connect(front.getsockname())
        sock.do_handshake()
        return str(sock.cipher())
    finally:
        done.set()
        thread.join(5)
        sock.close()
        front.close()
        back.close()


async def test_mbedtls_with_a_fe00_record_version_completes(server) -> None:
    pytest.importorskip("mbedtls")
    port, transport, _ = server
    assert "PSK" in await asyncio.to_thread(mbedtls_handshake, port, b"dev-one", KEYS[b"dev-one"], b"\xfe\x00")
    await eventually(lambda: transport.handshakes_completed == 1)


@pytest.mark.skipif(not os.environ.get("TINYDTLS_CLIENT"), reason="TINYDTLS_CLIENT (tinydtls's dtls-client) unset")
async def test_the_tinydtls_example_client_completes(server) -> None:
    """Its ClientHello has extended_master_secret and no renegotiation_info."""
    port, transport, _ = server
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "id").write_bytes(b"dev-one")
        Path(tmp, "key").write_bytes(KEYS[b"dev-one"])
        proc = await asyncio.create_subprocess_exec(
            os.environ["TINYDTLS_CLIENT"], "-i", f"{tmp}/id", "-k", f"{tmp}/key", "127.0.0.1", str(port),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await eventually(lambda: transport.handshakes_completed == 1)
        finally:
            proc.kill()
            await proc.wait()

"""Malformed CoAP against a real LwM2M server on loopback, over plain CoAP and inside a DTLS session.

Every case of tests/unit/test_datagrams.py gets its RFC 7252 answer (a piggybacked 4.02, an RST, or nothing), no
traceback is logged, 2,000 bad datagrams give a few log lines, and a Register from the same socket (the same DTLS
session) afterwards succeeds. Silence is checked without waiting for a timeout: each datagram is followed by a
CoAP ping, and everything the server sent before the ping's RST is its answer to the datagram. Also: the server's
own requests carry 8 random bytes of token, and stray responses are answered (RST to a CON) with a few lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from bootstrap.credentials import MemoryCredentialStore
from bootstrap.vault import Vault
from lwm2m_server.coap import datagrams
from lwm2m_server.core.operations import ReadRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.server import Lwm2mServer
from tests.harness import running_server
from tests.unit.test_datagrams import ACK, CASES, CON, CONTENT, NON, datagram

PING_MID = 0xFFFE
Logs = pytest.LogCaptureFixture
FLOOD = 2000
BATCH = 50


def with_mid(data: bytes, mid: int) -> bytes:
    return data[:2] + mid.to_bytes(2, "big") + data[4:] if len(data) >= 4 else data


def ping(mid: int = PING_MID) -> bytes:
    return bytes([0x40, 0]) + mid.to_bytes(2, "big")


def is_ping_reset(raw: bytes, mid: int = PING_MID) -> bool:
    return raw == bytes([0x70, 0]) + mid.to_bytes(2, "big")


def answer_kind(answers: list[bytes], sent: bytes) -> str | None:
    """The one answer to ``sent`` ("RST", "4.02") or None when there is none; checks MID and token."""
    if not answers:
        return None
    (raw,) = answers
    if raw == bytes([0x70, 0]) + sent[2:4]:
        return "RST"
    reply = Message.decode(raw)
    assert (reply.mtype, reply.code, reply.mid) == (Type.ACK, Code.BAD_OPTION, int.from_bytes(sent[2:4], "big"))
    assert reply.token == sent[4:4 + (sent[0] & 0x0F)]
    return "4.02"


def register(endpoint: str, mid: int) -> bytes:
    m = Message(code=Code.POST, _mtype=Type.CON, _mid=mid, _token=b"register", payload=b"</3/0>",
                uri_path=("rd",), uri_query=(f"ep={endpoint}", "lt=300", "lwm2m=1.1"), content_format=40)
    return bytes(m.encode())


def created(answers: list[bytes], mid: int) -> bool:
    return any(Message.decode(a).code == Code.CREATED and Message.decode(a).mid == mid for a in answers)


def assert_quiet(caplog: pytest.LogCaptureFixture, started: float, floods: int = 1) -> None:
    """No traceback, nothing above WARNING, and the rate-limited lines bounded by the time the run took."""
    assert not [r for r in caplog.records if r.exc_info or r.levelno > logging.WARNING], "an ERROR or a traceback"
    assert "Traceback" not in caplog.text
    ours = [r for r in caplog.records if r.name == datagrams.log.name]
    bound = floods * (2 + (time.monotonic() - started) / datagrams.MALFORMED.interval)
    assert 0 < len(ours) <= bound, [r.getMessage() for r in ours]
    others = [r for r in caplog.records if r.name != datagrams.log.name and r.levelno >= logging.INFO]
    assert len(others) < 20, [r.getMessage() for r in others]


# -- plain CoAP: a raw UDP peer that also plays a device answering the server's reads


class RawPeer:
    """A UDP socket on 127.0.0.1 of our own; requests from the server are answered (2.05 "ACME") and their
    tokens kept, everything else is queued for :meth:`exchange`."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(("127.0.0.1", port))
        self.loop = asyncio.get_running_loop()
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.tokens: list[bytes] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            raw = await self.loop.sock_recv(self.sock, 4096)
            if len(raw) >= 4 and raw[0] >> 4 == 0x4 and 1 <= raw[1] < 32:  # a CON request from the server
                request = Message.decode(raw)
                self.tokens.append(request.token)
                answer = Message(code=Code.CONTENT, _mtype=Type.ACK, _mid=request.mid, _token=request.token,
                                 payload=b"ACME", content_format=0)
                await self.loop.sock_sendall(self.sock, answer.encode())
            else:
                self.inbox.put_nowait(raw)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def exchange(self, *data: bytes, timeout: float = 10.0) -> list[bytes]:
        """Send ``data`` then a ping; what came back before the ping's RST."""
        for d in data:
            await self.send(d)
        await self.send(ping())
        answers: list[bytes] = []
        while not is_ping_reset(raw := await asyncio.wait_for(self.inbox.get(), timeout)):
            answers.append(raw)
        return answers

    async def close(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        self.sock.close()


@contextlib.asynccontextmanager
async def plain_server(tmp_path: Path) -> AsyncIterator[tuple[Lwm2mServer, RawPeer]]:
    async with running_server(tmp_path) as srv:
        peer = RawPeer(srv.coap_port)
        try:
            yield srv, peer
        finally:
            await peer.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """INFO and up captured; the process-wide limiters start afresh (a previous test's line does not count)."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(datagrams, "MALFORMED", datagrams.RateLimitedLog(datagrams.log, logging.WARNING))
    monkeypatch.setattr(datagrams, "UNMATCHED", datagrams.RateLimitedLog(datagrams.log, logging.INFO))
    return caplog


async def test_every_malformed_case_gets_its_answer_over_plain_coap(tmp_path: Path, logs: Logs) -> None:
    started = time.monotonic()
    async with plain_server(tmp_path) as (srv, peer):
        for i, (name, data, expected) in enumerate(CASES):
            sent = with_mid(data, 0x1000 + i)
            assert answer_kind(await peer.exchange(sent), sent) == expected, name
        assert created(await peer.exchange(register("after-bad", 0x2000)), 0x2000)
        assert srv.registrations is not None
        assert srv.registrations.by_endpoint("after-bad", tenant_id="default") is not None
    assert_quiet(logs, started)


async def test_an_elective_option_of_the_wrong_format_is_ignored(tmp_path: Path) -> None:
    async with plain_server(tmp_path) as (srv, peer):
        m = Message(code=Code.POST, _mtype=Type.CON, _mid=0x3000, _token=b"t", payload=b"</3/0>",
                    uri_path=("rd",), uri_query=("ep=elective",))
        wire = bytes(m.encode())  # + Location-Path (8, elective) that is not UTF-8, after Uri-Path's delta
        wire = wire.replace(b"\xb2rd", b"\x82\xff\xfe\x32rd", 1)
        assert created(await peer.exchange(wire), 0x3000)
        assert srv.registrations is not None
        assert srv.registrations.by_endpoint("elective", tenant_id="default") is not None


async def test_two_thousand_bad_datagrams_give_a_few_lines_and_the_server_serves_on(tmp_path: Path, logs: Logs) -> None:
    async with plain_server(tmp_path) as (_srv, peer):
        before, started = datagrams.MALFORMED.total, time.monotonic()
        for batch in range(FLOOD // BATCH):
            cases = [CASES[(batch * BATCH + i) % len(CASES)] for i in range(BATCH)]
            sent = [with_mid(data, batch * BATCH + i) for i, (_, data, _) in enumerate(cases)]
            answers = await peer.exchange(*sent)
            assert len(answers) == sum(1 for _, _, expected in cases if expected is not None)
        assert datagrams.MALFORMED.total - before == FLOOD
        assert created(await peer.exchange(register("after-flood", 0xF000)), 0xF000)
    assert_quiet(logs, started)


async def test_the_servers_tokens_are_eight_random_bytes(tmp_path: Path) -> None:
    async with plain_server(tmp_path) as (srv, peer):
        assert created(await peer.exchange(register("tokens", 0x10)), 0x10)
        assert srv.management is not None
        for _ in range(8):
            read = await srv.management.send("tokens", ReadRequest(LwM2mPath.of(3, 0, 0)), timeout=10,
                                             tenant_id="default")
            assert read.content.value == "ACME"  # type: ignore[union-attr]
        tokens = peer.tokens[-8:]
        assert len(tokens) == 8 and all(len(t) == 8 for t in tokens)
        assert len(set(tokens)) == 8
        values = [int.from_bytes(t, "big") for t in tokens]
        assert not any(b - a in range(1, 9) for a, b in itertools.pairwise(values)), "sequential"


async def test_stray_responses_are_reset_or_ignored_with_a_few_lines(tmp_path: Path, logs: Logs) -> None:
    started = time.monotonic()
    async with plain_server(tmp_path) as (_srv, peer):
        before = datagrams.UNMATCHED.total
        for batch in range(FLOOD // BATCH):
            strays = []
            for i in range(BATCH):
                n = batch * BATCH + i
                if n % 4 == 3:  # an Empty ACK
                    strays.append(bytes([0x60, 0]) + n.to_bytes(2, "big"))
                else:  # a CON, NON or ACK response
                    strays.append(datagram((CON, NON, ACK)[n % 4], CONTENT, mid=n, token=n.to_bytes(8, "big"),
                                           payload=b"stray"))
            answers = await peer.exchange(*strays)
            assert answers == [bytes([0x70, 0]) + s[2:4] for s in strays if s[0] >> 4 == 0x4]  # RST to each CON
        assert created(await peer.exchange(register("after-strays", 0xF001)), 0xF001)
    assert not [r for r in logs.records if r.exc_info or r.levelno > logging.WARNING]
    lines = [r for r in logs.records if r.levelno >= logging.INFO and r.name != "lwm2m_server.server"]
    assert len(lines) <= 2 + (time.monotonic() - started) / datagrams.UNMATCHED.interval, [
        r.getMessage() for r in lines]
    assert all("0000000000" not in r.getMessage() for r in lines)  # no token in a line
    assert datagrams.UNMATCHED.total - before == FLOOD


# -- DTLS: a raw tinydtls client; the same datagrams inside one session


class DtlsPeer:
    """A tinydtls client on its own socket; blocking (use it from one thread)."""

    def __init__(self, port: int, identity: bytes, psk: bytes) -> None:
        from DTLSSocket import dtls

        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.answers: list[bytes] = []
        self.connected = self.closed = False

        def write(_addr: object, data: bytes) -> int:
            if not self.closed:
                self.sock.sendto(data, ("127.0.0.1", port))
            return len(data)

        def read(_addr: object, data: bytes) -> int:
            self.answers.append(bytes(data))
            return len(data)

        def event(level: int, code: int) -> None:
            if code == 0x1DE:
                self.connected = True

        self.dtls = dtls.DTLS(read=read, write=write, event=event, pskId=identity, pskStore={identity: psk})
        self.session = self.dtls.connect("::ffff:127.0.0.1", port)
        self.pump(lambda: self.connected)

    def pump(self, done: Callable[[], bool], deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        while not done():
            if time.monotonic() > end:
                raise AssertionError("no answer from the DTLS server")
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.dtls.handleMessageAddr("::ffff:127.0.0.1", self.port, data)

    def exchange(self, *data: bytes) -> list[bytes]:
        self.answers.clear()
        for d in data:
            self.dtls.write(self.session, d)
        self.dtls.write(self.session, ping())
        self.pump(lambda: any(is_ping_reset(a) for a in self.answers))
        return [a for a in self.answers if not is_ping_reset(a)]

    def close(self) -> None:
        self.closed = True
        del self.session, self.dtls
        self.sock.close()


def dtls_scenario(port: int, identity: bytes, psk: bytes) -> tuple[list[tuple[str, str | None, str | None]], bool]:
    """Every case, a flood, then a Register, all in one session: (name, expected, got) per case, registered."""
    peer = DtlsPeer(port, identity, psk)
    try:
        results = []
        for i, (name, data, expected) in enumerate(CASES):
            sent = with_mid(data, 0x1000 + i)
            results.append((name, expected, answer_kind(peer.exchange(sent), sent)))
        for batch in range(FLOOD // BATCH):
            peer.exchange(*[with_mid(CASES[(batch * BATCH + i) % len(CASES)][1], 0x4000 + batch * BATCH + i)
                            for i in range(BATCH)])
        return results, created(peer.exchange(register("dev-1", 0x2000)), 0x2000)
    finally:
        peer.close()


async def test_every_malformed_case_inside_a_dtls_session(tmp_path: Path, logs: Logs) -> None:
    store = MemoryCredentialStore(Vault.generate())
    credential, psk = store.issue("dev-1", "server", now=0, tenant_id="default")
    started = time.monotonic()
    async with running_server(tmp_path, coap_port=None, coaps_port=0, credentials=store) as srv:
        assert srv.dtls is not None and srv.coaps_port
        results, registered = await asyncio.wait_for(asyncio.to_thread(
            dtls_scenario, srv.coaps_port, credential.identity.encode(), bytes(psk)), 100)
        assert [(n, e) for n, e, _ in results] == [(n, g) for n, _, g in results]
        assert registered and srv.registrations is not None
        assert srv.registrations.by_endpoint("dev-1", tenant_id="default") is not None
        assert srv.dtls.handshakes_completed == 1  # one session throughout
    assert_quiet(logs, started, floods=1)

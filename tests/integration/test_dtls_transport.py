"""DTLS-PSK server transport on loopback: libcoap and aiocoap clients, server-initiated requests over the client's
session, bounded peer state (cap, idle, close, explicit eviction), and no PSK in the logs."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
from collections.abc import AsyncIterator

import aiocoap
import pytest
from aiocoap import resource

from lwm2m_server.coap.dtls import (
    DtlsServerTransport,
    DtlsSessionClosedError,
    PskClaim,
    add_dtls_server,
    dtls_client_context,
    dtls_server_context,
    dtls_transport,
    psk_identity,
)
from lwm2m_server.coap.udp import exclusive_context, release

COAP_CLIENT = shutil.which("coap-client-openssl")
needs_libcoap = pytest.mark.skipif(COAP_CLIENT is None, reason="coap-client-openssl (Debian libcoap3-bin) not found")

KEYS = {b"dev-one": b"s3cretPSK-one!", b"dev-two": b"s3cretPSK-two!", b"dev-hex": bytes.fromhex("0badc0ffee5eed00")}
SECRETS = [k.decode("latin-1") for k in KEYS.values()] + [k.hex() for k in KEYS.values()]


class WhoAmI(resource.Resource):
    """Answers GET with its tag and the PSK identity the request came with."""

    def __init__(self, tag: bytes) -> None:
        super().__init__()
        self.tag = tag

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=self.tag + b" " + (psk_identity(request.remote) or b"-"))


def site(tag: bytes, path: tuple[str, ...] = ("hello",)) -> resource.Site:
    s = resource.Site()
    s.add_resource(path, WhoAmI(tag))
    return s


class Store:
    """The PskStore protocol, with a count of lookups."""

    def __init__(self, keys: dict[bytes, bytes]) -> None:
        self.keys = dict(keys)
        self.lookups = 0

    def psk_for(self, identity: bytes) -> bytes | None:
        self.lookups += 1
        return self.keys.get(identity)


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> object:
    caplog.set_level(logging.DEBUG)
    yield
    text = caplog.text
    for secret in SECRETS:
        assert secret not in text, "a PSK appeared in the logs"


@pytest.fixture
async def server() -> AsyncIterator[tuple[aiocoap.Context, int, DtlsServerTransport, Store]]:
    store = Store(KEYS)
    context, port = await dtls_server_context(site(b"server"), "127.0.0.1", 0, psk_for=store)
    try:
        yield context, port, dtls_transport(context), store
    finally:
        await asyncio.wait_for(context.shutdown(), 10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def coap_get(port: int, identity: str, key: str, *, local_port: int | None = None, scheme: str = "coaps",
                   path: str = "hello") -> str:
    """Run coap-client-openssl once; its stdout (it exits 0 even when the handshake fails)."""
    assert COAP_CLIENT is not None
    args = [COAP_CLIENT, "-B", "3", "-m", "get"]
    if scheme == "coaps":
        args += ["-u", identity, "-k", key]
    if local_port is not None:
        args += ["-p", str(local_port)]
    proc = await asyncio.create_subprocess_exec(*args, f"{scheme}://127.0.0.1:{port}/{path}",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace")


async def server_get(context: aiocoap.Context, remote: object, path: tuple[str, ...] = ("3", "0"),
                     timeout: float = 5) -> aiocoap.Message:
    request = aiocoap.Message(code=aiocoap.GET, uri_path=path)
    request.remote = remote
    return await asyncio.wait_for(context.request(request).response, timeout)


# -- libcoap (OpenSSL DTLS) as the client

@needs_libcoap
async def test_libcoap_psk_exchange_carries_the_identity(server) -> None:
    _, port, transport, store = server
    assert "server dev-one" in await coap_get(port, "dev-one", KEYS[b"dev-one"].decode())
    assert store.lookups == 1  # one lookup per handshake, no scan
    assert transport.handshakes_completed == 1
    assert transport.peers == 0  # libcoap said close_notify on leaving: the session is gone


@needs_libcoap
async def test_libcoap_wrong_key_and_unknown_identity_are_refused(server) -> None:
    _, port, transport, _ = server
    assert "server" not in await coap_get(port, "dev-one", "not-the-key")
    assert "server" not in await coap_get(port, "nobody", KEYS[b"dev-one"].decode())
    assert transport.peers == 0 and transport.handshakes_completed == 0


@needs_libcoap
async def test_reused_address_and_port_with_another_identity(server) -> None:
    _, port, transport, _ = server
    local = free_port()
    assert "server dev-one" in await coap_get(port, "dev-one", KEYS[b"dev-one"].decode(), local_port=local)
    assert "server dev-two" in await coap_get(port, "dev-two", KEYS[b"dev-two"].decode(), local_port=local)
    assert "server dev-one" in await coap_get(port, "dev-one", KEYS[b"dev-one"].decode(), local_port=local)
    assert transport.handshakes_completed == 3


def raw_client_get(sock: socket.socket, port: int, identity: bytes, psk: bytes, attempts: int = 40) -> bytes | None:
    """A tinydtls client on ``sock`` that handshakes, GETs /hello and then vanishes WITHOUT close_notify (as a
    device that loses power). Blocking; run it in a thread."""
    from DTLSSocket import dtls

    state: dict[str, object] = {"connected": False, "answer": None, "mute": False}

    def write(_addr: object, data: bytes) -> int:
        if not state["mute"]:
            sock.sendto(data, ("127.0.0.1", port))
        return len(data)

    def read(_addr: object, data: bytes) -> int:
        state["answer"] = data
        return len(data)

    def event(level: int, code: int) -> None:
        if code == 0x1DE:
            state["connected"] = True

    d = dtls.DTLS(read=read, write=write, event=event, pskId=identity, pskStore={identity: psk})
    session = d.connect("::ffff:127.0.0.1", port)
    sent = False
    try:
        for _ in range(attempts):
            if state["connected"] and not sent:
                request = aiocoap.Message(code=aiocoap.GET, uri_path=("hello",))
                request.mtype, request.mid, request.token = aiocoap.CON, 7, b"t"
                d.write(session, request.encode())
                sent = True
            if state["answer"] is not None:
                break
            try:
                data = sock.recv(2048)
            except TimeoutError:
                continue
            d.handleMessageAddr("::ffff:127.0.0.1", port, data)
    finally:
        state["mute"] = True  # no close_notify when the context goes
        del session, d
    answer = state["answer"]
    return aiocoap.Message.decode(answer).payload if isinstance(answer, bytes) else None


async def test_new_identity_from_a_silently_reused_address(server) -> None:
    context, port, transport, _ = server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.25)
        local = sock.getsockname()[1]
        assert await asyncio.to_thread(raw_client_get, sock, port, b"dev-one", KEYS[b"dev-one"]) == b"server dev-one"
        (first,) = transport.sessions()
        assert first.authenticated_claims == [PskClaim(b"dev-one")]
        # the old session is still held (no close_notify); a ClientHello with a cookie from that address ends it
        assert await asyncio.to_thread(raw_client_get, sock, port, b"dev-two", KEYS[b"dev-two"]) == b"server dev-two"
        (second,) = transport.sessions()
        assert second is not first and second.authenticated_claims == [PskClaim(b"dev-two")]
        assert not first.is_open and first.authenticated_claims == []
        with pytest.raises(DtlsSessionClosedError):
            await server_get(context, first, timeout=2)
        # an explicit eviction by address, then the same identity again
        assert transport.evict(("127.0.0.1", local))
        assert transport.peers == 0 and not transport.evict(("127.0.0.1", local))
        assert await asyncio.to_thread(raw_client_get, sock, port, b"dev-two", KEYS[b"dev-two"]) == b"server dev-two"
        assert transport.peers == 1


async def silent_device(port: int, identity: bytes) -> bytes | None:
    """One raw client on its own fresh port that handshakes, GETs /hello and vanishes without close_notify."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.25)
        return await asyncio.to_thread(raw_client_get, sock, port, identity, KEYS[identity])


async def test_peer_cap_holds_under_many_handshakes() -> None:
    context, port = await dtls_server_context(site(b"server"), "127.0.0.1", 0, psk_for=KEYS.get, max_peers=4)
    transport = dtls_transport(context)
    try:
        first = None
        for i in range(12):
            assert await silent_device(port, b"dev-one") == b"server dev-one"
            if i == 0:
                (first,) = transport.sessions()
            assert transport.peers == min(i + 1, 4)
        assert transport.handshakes_completed == 12 and transport.pending_handshakes == 0
        assert first is not None and not first.is_open  # the least recently heard from went first
    finally:
        await context.shutdown()


async def test_idle_sessions_and_stale_handshakes_are_evicted() -> None:
    context, port = await dtls_server_context(site(b"server"), "127.0.0.1", 0, psk_for=KEYS.get,
                                              idle_timeout=0.5, handshake_timeout=0.5)
    transport = dtls_transport(context)
    try:
        assert await silent_device(port, b"dev-one") == b"server dev-one"
        (remote,) = transport.sessions()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a handshake with a wrong key stalls
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(0.25)
            assert await asyncio.to_thread(raw_client_get, sock, port, b"dev-two", b"wrong-key-here", 6) is None
        for _ in range(40):
            if transport.peers == 0 and transport.pending_handshakes == 0:
                break
            await asyncio.sleep(0.1)
        assert (transport.peers, transport.pending_handshakes) == (0, 0)
        with pytest.raises(aiocoap.error.NetworkError) as caught:
            await server_get(context, remote)
        assert isinstance(caught.value, DtlsSessionClosedError)
    finally:
        await context.shutdown()


@needs_libcoap
async def test_dtls_beside_plain_udp_on_one_context() -> None:
    context, udp_port = await exclusive_context(site(b"both"), "127.0.0.1", 0)
    try:
        transport, dtls_port = await add_dtls_server(context, "127.0.0.1", 0, psk_for=KEYS.get)
        assert dtls_port != udp_port
        assert "both -" in await coap_get(udp_port, "", "", scheme="coap")
        assert "both dev-two" in await coap_get(dtls_port, "dev-two", KEYS[b"dev-two"].decode())
        assert transport.handshakes_completed == 1
        with pytest.raises(OSError):
            await dtls_server_context(site(b"x"), "127.0.0.1", dtls_port, psk_for=KEYS.get)
    finally:
        await context.shutdown()
        release("127.0.0.1", udp_port)


# -- aiocoap's tinydtls client, serving the server's own requests over the same session

async def test_aiocoap_client_and_server_initiated_requests(server) -> None:
    context, port, transport, _ = server
    uri = f"coaps://127.0.0.1:{port}"
    client = await aiocoap.Context.create_client_context(transports=["tinydtls"])
    client.serversite = site(b"device", ("3", "0"))
    client.client_credentials.load_from_dict(
        {uri + "/*": {"dtls": {"psk": {"hex": KEYS[b"dev-hex"].hex()}, "client-identity": {"ascii": "dev-hex"}}}})
    try:
        response = await asyncio.wait_for(client.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/hello"))
                                          .response, 10)
        assert response.payload == b"server dev-hex"
        (remote,) = transport.sessions()
        for _ in range(3):  # the server's own requests, to the remote the device spoke from
            answer = await server_get(context, remote)
            assert answer.code == aiocoap.CONTENT and answer.payload == b"device -"
        assert transport.evict_identity(b"dev-hex") == 1
        assert transport.peers == 0
        with pytest.raises(DtlsSessionClosedError):
            await server_get(context, remote, timeout=2)
    finally:
        await client.shutdown()


async def test_dtls_client_context_sends_and_serves(server) -> None:
    context, port, transport, _ = server
    uri = f"coaps://127.0.0.1:{port}"
    client = await dtls_client_context(site(b"sim", ("3", "0")), uri, b"dev-two", KEYS[b"dev-two"])
    try:
        response = await asyncio.wait_for(client.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/hello"))
                                          .response, 10)
        assert response.payload == b"server dev-two"
        answer = await server_get(context, transport.sessions()[0])
        assert answer.payload == b"sim -"
    finally:
        await client.shutdown()


# -- the PSK lookup

async def test_lookup_failures_and_oversized_keys_refuse_the_handshake() -> None:
    def lookup(identity: bytes) -> bytes | None:
        if identity == b"boom":
            raise RuntimeError("store down")
        return b"x" * 40 if identity == b"long" else None

    context, port = await dtls_server_context(site(b"server"), "127.0.0.1", 0, psk_for=lookup)
    transport = dtls_transport(context)
    try:
        for identity in (b"boom", b"long"):
            uri = f"coaps://127.0.0.1:{port}"
            client = await dtls_client_context(None, uri, identity, b"whatever")
            try:
                with pytest.raises((aiocoap.error.Error, TimeoutError)):
                    await asyncio.wait_for(
                        client.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/hello")).response, 3)
            finally:
                await client.shutdown()
        assert transport.peers == 0
    finally:
        await context.shutdown()

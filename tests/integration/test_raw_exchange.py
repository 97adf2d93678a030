"""Raw confirmable requests (lwm2m_server.coap.raw_exchange) against a scripted peer on 127.0.0.1: a piggybacked
answer, a lost request retransmitted, an Empty ACK then a separate CON response (acknowledged, and acknowledged
again when it comes again), an RST, silence; and the request encoding against aiocoap's decoder (hypothesis)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.resource import Site
from aiocoap.transports import udp6
from hypothesis import given
from hypothesis import strategies as st

from lwm2m_server.coap.datagrams import encode_message
from lwm2m_server.coap.raw_exchange import CON, raw_exchanges
from lwm2m_server.coap.udp import exclusive_context, release
from lwm2m_server.core.errors import RequestFailedError, RequestTimeoutError

Script = Callable[["Peer", bytes, Any], None]


class Peer(asyncio.DatagramProtocol):
    """A device that answers as its script says; it keeps every datagram it got."""

    def __init__(self, script: Script) -> None:
        self.script, self.got = script, []  # type: ignore[var-annotated]
        self.transport: Any = None
        self.server: Any = None  # the address of the server's socket

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)
        self.script(self, data, addr)

    def send(self, message: Message, addr: Any) -> None:
        self.transport.sendto(message.encode(), addr)


@contextlib.asynccontextmanager
async def server_and_peer(script: Script) -> AsyncIterator[tuple[Any, Any, Peer]]:
    context, port = await exclusive_context(Site(), "127.0.0.1")
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(lambda: Peer(script), local_addr=("127.0.0.1", 0))
    try:
        messages = next(i.token_interface for i in context.request_interfaces if hasattr(i, "token_interface"))
        interface = messages.message_interface
        host, peer_port = transport.get_extra_info("sockname")
        remote = udp6.UDP6EndpointAddress(("::ffff:" + host, peer_port, 0, 0), interface)
        exchanges = raw_exchanges(remote)
        assert exchanges is not None
        peer.server = ("127.0.0.1", port)
        yield exchanges, remote, peer
    finally:
        transport.close()
        await context.shutdown()
        release("127.0.0.1", port)


def answer(request: bytes, code: Code, *, mtype: Type = Type.ACK, payload: bytes = b"", token: bytes | None = None,
           mid: int | None = None, block1: tuple[int, bool, int] | None = None) -> Message:
    got = Message.decode(request)
    reply = Message(code=code, payload=payload, _mtype=mtype, _mid=got.mid if mid is None else mid,
                    _token=got.token if token is None else token)
    if block1 is not None:
        reply.opt.block1 = block1
    return reply


async def test_a_piggybacked_answer_with_its_options() -> None:
    def script(peer: Peer, data: bytes, addr: Any) -> None:
        peer.send(answer(data, Code.CONTINUE, block1=(0, True, 5)), addr)

    async with server_and_peer(script) as (exchanges, remote, peer):
        got = await exchanges.request(remote, int(Code.PUT), [(11, b"5"), (11, b"0"), (11, b"0"), (27, b"\x0e")],
                                      b"x" * 1024, peer="dev", timeout=10)
        assert got.code == int(Code.CONTINUE) and got.uint(27) == 0x0D and got.uint(60) is None
        sent = Message.decode(peer.got[0])
        assert sent.code == Code.PUT and sent.mtype == Type.CON and tuple(sent.opt.uri_path) == ("5", "0", "0")
        assert sent.opt.block1 == (0, True, 6) and sent.payload == b"x" * 1024 and len(sent.token) == 8
        assert not exchanges._by_mid and not exchanges._by_token  # nothing left registered


async def test_a_lost_request_is_sent_again_the_same() -> None:
    def script(peer: Peer, data: bytes, addr: Any) -> None:
        if len(peer.got) > 1:  # the first one is "lost"
            peer.send(answer(data, Code.CHANGED), addr)

    async with server_and_peer(script) as (exchanges, remote, peer):
        got = await exchanges.request(remote, int(Code.PUT), [], b"abc", peer="dev", timeout=30)
        assert got.code == int(Code.CHANGED) and len(peer.got) == 2 and peer.got[0] == peer.got[1]


async def test_an_empty_ack_then_a_separate_response_acknowledged_each_time_it_comes() -> None:
    def script(peer: Peer, data: bytes, addr: Any) -> None:
        got = Message.decode(data)
        if got.code == Code.PUT:
            peer.send(Message(code=Code.EMPTY, _mtype=Type.ACK, _mid=got.mid), addr)
            late = answer(data, Code.CHANGED, mtype=Type.CON, mid=4242, payload=b"done")
            asyncio.get_running_loop().call_later(0.05, peer.send, late, addr)

    async with server_and_peer(script) as (exchanges, remote, peer):
        got = await exchanges.request(remote, int(Code.PUT), [], b"abc", peer="dev", timeout=30)
        assert got.code == int(Code.CHANGED) and got.payload == b"done"
        for _ in range(100):  # its ACK is on its way
            if len(peer.got) >= 2:
                break
            await asyncio.sleep(0.02)
        ack = Message.decode(peer.got[1])
        assert (ack.mtype, ack.code, ack.mid) == (Type.ACK, Code.EMPTY, 4242)
        # the response comes again (our ACK lost): acknowledged again, not reset
        peer.send(answer(peer.got[0], Code.CHANGED, mtype=Type.CON, mid=4242, payload=b"done"), peer.server)
        for _ in range(100):
            if len(peer.got) >= 3:
                break
            await asyncio.sleep(0.02)
        again = Message.decode(peer.got[2])
        assert (again.mtype, again.code, again.mid) == (Type.ACK, Code.EMPTY, 4242)


async def test_a_reset_fails_the_request_and_silence_times_it_out() -> None:
    def reset(peer: Peer, data: bytes, addr: Any) -> None:
        peer.send(Message(code=Code.EMPTY, _mtype=Type.RST, _mid=Message.decode(data).mid), addr)

    async with server_and_peer(reset) as (exchanges, remote, _peer):
        with pytest.raises(RequestFailedError, match="reset"):
            await exchanges.request(remote, int(Code.PUT), [], b"abc", peer="dev", timeout=30)
    async with server_and_peer(lambda peer, data, addr: None) as (exchanges, remote, _peer):
        with pytest.raises(RequestTimeoutError, match="dev did not answer"):
            await exchanges.request(remote, int(Code.PUT), [], b"abc", peer="dev", timeout=0.3)
        assert not exchanges._by_mid and not exchanges._by_token


async def test_an_answer_with_another_token_is_not_taken() -> None:
    def script(peer: Peer, data: bytes, addr: Any) -> None:
        peer.send(answer(data, Code.CHANGED, token=b"\x00" * 8), addr)

    async with server_and_peer(script) as (exchanges, remote, _peer):
        with pytest.raises(RequestTimeoutError):
            await exchanges.request(remote, int(Code.PUT), [], b"abc", peer="dev", timeout=0.5)


@given(st.sampled_from([Code.PUT, Code.POST, Code.GET]), st.integers(0, 0xFFFF), st.binary(max_size=8),
       st.lists(st.tuples(st.sampled_from([11, 12, 15, 27, 60, 2048]), st.binary(max_size=300)), max_size=5),
       st.binary(max_size=50))
def test_an_encoded_request_decodes_as_given(code: Code, mid: int, token: bytes, options: list[tuple[int, bytes]],
                                             payload: bytes) -> None:
    options = sorted(options, key=lambda o: o[0])
    data = encode_message(CON, int(code), mid, token, options, payload)
    from lwm2m_server.coap.datagrams import _scan_options

    assert data[1] == int(code) and int.from_bytes(data[2:4], "big") == mid and data[4:4 + len(token)] == token
    assert _scan_options(data, 4 + len(token)) == (options, payload)  # the general path's own option reader
    if not options:  # aiocoap as a second reader (it refuses some option values: those are ours to send as given)
        decoded = Message.decode(data)
        assert (decoded.mtype, decoded.mid, decoded.token, decoded.code, decoded.payload) == (
            Type.CON, mid, token, code, payload)

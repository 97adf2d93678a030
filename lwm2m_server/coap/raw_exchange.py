"""Confirmable requests sent straight on the server's plain-UDP socket, their answers matched in its receive hook
before aiocoap sees them: the block-wise push of a package (one CON per block, thousands a second) without
aiocoap's request machinery (a Message and its option objects, a task, a pipe, the token and exchange layers).

Reliability is RFC 7252's (4.2): a CON is retransmitted after ACK_TIMEOUT x a random factor up to
ACK_RANDOM_FACTOR, the timeout doubling, at most MAX_RETRANSMIT times (aiocoap's TransportTuning values); the
answer is a piggybacked response in the ACK (matched by MID, then checked by token), or an Empty ACK followed by a
separate response (matched by token; a CON one is acknowledged, and acknowledged again when it comes again); an RST
to the request ends it (RequestFailedError). MIDs come from aiocoap's own counter for the socket, so they never
collide with those aiocoap uses; tokens are 8 random bytes.

Only requests the caller sends one at a time per peer use this (NSTART = 1 is the caller's to keep: the push of a
package sends its next block when the last one is answered). DTLS peers and peers behind a gateway are not served
here (:func:`raw_exchanges` gives None for their remote).

Invariants: every request ends (answer, RequestTimeoutError, RequestFailedError) and leaves nothing registered;
a datagram that matches no request of ours is left to the general path (``received`` returns False), except the
retransmission of a separate CON response already taken, which is acknowledged again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import secrets
import socket
from dataclasses import dataclass
from typing import Any

from aiocoap.numbers import TransportTuning
from aiocoap.transports import udp6

from lwm2m_server.coap.datagrams import _Rejected, _scan_options, encode_message
from lwm2m_server.core.errors import RequestFailedError, RequestTimeoutError

__all__ = ["RawAnswer", "RawExchanges", "raw_exchanges", "send_datagram"]

CON, NON, ACK, RST = 0, 1, 2, 3
_TUNING = TransportTuning()
REFUSED_SEND_RETRIES = 2
_DONE_KEPT = 256  # separate CON responses remembered, to acknowledge their retransmissions


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """A response: its code (``class * 32 + detail``), its options (number, value) in order, its payload."""

    code: int
    options: tuple[tuple[int, bytes], ...]
    payload: bytes

    def uint(self, number: int) -> int | None:
        """The first option ``number`` as an unsigned integer (None: absent)."""
        for n, value in self.options:
            if n == number:
                return int.from_bytes(value, "big")
        return None


def send_datagram(interface: Any, data: bytes, remote: Any) -> None:
    """Write ``data`` to ``remote`` on the plain-UDP message interface ``interface`` (its socket), from the local
    address the peer wrote to (IPV6_PKTINFO) when the transport knows it."""
    ancdata = [] if remote.pktinfo is None else [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, remote.pktinfo)]
    interface.transport.sendmsg(data, ancdata, 0, remote.sockaddr)


@dataclass
class _Pending:
    key: tuple[Any, int]
    token: bytes
    data: bytes
    future: asyncio.Future[RawAnswer]
    acknowledged: bool = False
    timer: asyncio.TimerHandle | None = None


class RawExchanges:
    """The raw requests of one plain-UDP message interface (aiocoap's ``MessageInterfaceUDP6``)."""

    def __init__(self, interface: Any) -> None:
        self.interface = interface
        self.loop: asyncio.AbstractEventLoop = interface._ctx.loop
        self._by_mid: dict[tuple[Any, int], _Pending] = {}
        self._by_token: dict[tuple[Any, bytes], _Pending] = {}
        self._done: collections.OrderedDict[tuple[Any, int], None] = collections.OrderedDict()

    async def request(self, remote: Any, code: int, options: list[tuple[int, bytes]], payload: bytes, *,
                      peer: str, timeout: float) -> RawAnswer:
        """Send a CON request to ``remote`` and return its answer (RequestTimeoutError after ``timeout`` seconds or
        once every retransmission went unanswered; RequestFailedError on an RST or a send that fails)."""
        sockaddr = remote.sockaddr
        mid = self.interface._ctx._next_message_id()
        token = secrets.token_bytes(8)
        data = encode_message(CON, code, mid, token, options, payload)
        pending = _Pending((sockaddr, mid), token, data, self.loop.create_future())
        self._by_mid[pending.key] = pending
        self._by_token[(sockaddr, token)] = pending
        try:
            self._send(data, remote)
            self._retransmit_later(pending, remote, _TUNING.ACK_TIMEOUT * random.uniform(1, _TUNING.ACK_RANDOM_FACTOR),
                                   0)
            return await asyncio.wait_for(pending.future, timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"{peer} did not answer within {timeout:g} s") from None
        except RequestTimeoutError:
            raise RequestTimeoutError(f"{peer} did not answer: every retransmission went unanswered") from None
        except RequestFailedError as e:
            raise RequestFailedError(f"request to {peer} failed: {e}") from None
        except OSError as e:
            raise RequestFailedError(f"request to {peer} failed: {type(e).__name__}: {e}") from None
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            self._by_mid.pop(pending.key, None)
            self._by_token.pop((sockaddr, token), None)

    def _send(self, data: bytes, remote: Any) -> None:
        for attempt in range(REFUSED_SEND_RETRIES + 1):
            try:
                send_datagram(self.interface, data, remote)
                return
            except ConnectionRefusedError:  # another peer's ICMP error, reported on this send (see requests.py)
                if attempt == REFUSED_SEND_RETRIES:
                    raise

    def _retransmit_later(self, pending: _Pending, remote: Any, delay: float, sent: int) -> None:
        def again() -> None:
            if pending.future.done() or pending.acknowledged:
                return
            if sent >= _TUNING.MAX_RETRANSMIT:
                pending.future.set_exception(RequestTimeoutError("every retransmission went unanswered"))
                return
            try:
                self._send(pending.data, remote)
            except OSError as e:
                pending.future.set_exception(e)
                return
            self._retransmit_later(pending, remote, delay * 2, sent + 1)

        pending.timer = self.loop.call_later(delay, again)

    def received(self, data: bytes, remote: Any) -> bool:
        """Take ``data`` when it answers one of our requests (True); False leaves it to the general path."""
        if len(data) < 4 or data[0] >> 6 != 1:
            return False
        mtype, tkl, code = (data[0] >> 4) & 3, data[0] & 0x0F, data[1]
        sockaddr, mid = remote.sockaddr, (data[2] << 8) | data[3]
        if mtype in (ACK, RST):
            pending = self._by_mid.get((sockaddr, mid))
            if pending is None or pending.future.done():
                return False
            if mtype == RST:
                pending.future.set_exception(RequestFailedError("the peer reset the request"))
                return True
            if code == 0:  # an Empty ACK: the response comes on its own
                pending.acknowledged = True
                return True
            return self._answer(pending, data, tkl, code)
        if code < 64 or tkl > 8:  # a request, or not a response we could match: the general path's
            return False
        token = bytes(data[4:4 + tkl])
        pending = self._by_token.get((sockaddr, token))
        if pending is None:
            if mtype == CON and (sockaddr, mid) in self._done:
                self._ack(mid, remote)  # our ACK was lost: the response came again
                return True
            return False
        taken = self._answer(pending, data, tkl, code)
        if taken and mtype == CON:
            self._ack(mid, remote)
            self._done[(sockaddr, mid)] = None
            if len(self._done) > _DONE_KEPT:
                self._done.popitem(last=False)
        return taken

    def _answer(self, pending: _Pending, data: bytes, tkl: int, code: int) -> bool:
        if bytes(data[4:4 + tkl]) != pending.token:
            return False  # not ours after all (RFC 7252 5.3.2: the token must match)
        try:
            options, payload = _scan_options(bytes(data), 4 + tkl)
        except _Rejected:
            return False
        pending.future.set_result(RawAnswer(code, tuple(options), payload))
        return True

    def _ack(self, mid: int, remote: Any) -> None:
        with contextlib.suppress(OSError):  # lost: the peer sends the response again, and we acknowledge it then
            self._send(bytes((0x60, 0, mid >> 8, mid & 0xFF)), remote)


def raw_exchanges(remote: Any) -> RawExchanges | None:
    """The raw requests of the plain-UDP interface ``remote`` belongs to (made on first use), or None for any other
    kind of remote (DTLS, ...)."""
    if not isinstance(remote, udp6.UDP6EndpointAddress):
        return None
    interface = remote.interface
    found: RawExchanges | None = getattr(interface, "_scratch_raw", None)
    if found is None:
        found = interface._scratch_raw = RawExchanges(interface)
    return found

"""CoAP over DTLS 1.2 with pre-shared keys (tinydtls through DTLSSocket), server side, for aiocoap.

aiocoap 0.4.17's ``tinydtls_server`` cannot send the server's own requests to a DTLS client, never forgets a peer,
scans its credentials linearly and breaks when a new identity handshakes from an address it has seen. This
transport replaces it. Invariants:

- One UDP socket and one tinydtls context serve every peer. Each completed handshake gets a fresh
  :class:`DtlsRemote` (equal only to itself): requests and responses travel on ``request.remote``, so a downlink
  request to the remote of a registration goes out over the session the device registered on. Once that session
  is gone, sending to its remote fails at once (:class:`DtlsSessionClosedError`); a new handshake never revives it.
- Per-peer state is bounded: handshakes in progress (``max_handshakes``, ``handshake_timeout``) and established
  sessions (``max_peers``, least recently heard from goes first; ``idle_timeout``) are kept apart, so a flood of
  ClientHellos cannot push out established sessions. A close_notify or fatal alert ends a session; so do
  :meth:`DtlsServerTransport.evict` and :meth:`DtlsServerTransport.evict_identity`.
- A ClientHello with a cookie (proof that the sender receives at that address) from an address with a session
  ends that session first, so a device that rebooted, or a new identity on a reused address and port, can
  handshake; a cookie-less ClientHello never touches an established session.
- PSKs come from ``psk_for(identity)`` (called synchronously in the handshake, once per attempt) and are never
  logged nor put into exception texts; tinydtls' own logging is kept at EMERG (its debug output dumps keys).
- ``request.remote.authenticated_claims`` is ``[PskClaim(identity)]`` once the handshake completed.
- Failed handshakes are counted per source address (IPv4, or the full IPv6 address): an unknown (or revoked, or
  wrong-kind) PSK identity, a Finished that does not verify (a wrong key: tinydtls drops it silently, so a
  handshake record of epoch 1 that leaves the handshake unfinished after the key was looked up is the sign), or a
  fatal alert after the key exchange; at most one failure per key exchange. With a :class:`Lockout`, an address
  with too many failures is ignored for a while: its ClientHellos and handshake records are dropped without an
  answer; its established sessions (which proved their keys) are kept. Failures are only counted after the cookie
  exchange, so a spoofed source address cannot get another host locked out. A lockout is logged as a warning and
  reported through ``on_security_event("security.dtls_lockout", data)``. A failing credential store (an
  exception in ``psk_for``) refuses the handshake but is not the peer's failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from aiocoap import Context, Message, error, interfaces
from aiocoap.numbers import constants

from lwm2m_server.core.rate_limit import Lockout
from lwm2m_server.transport import udp

_log = logging.getLogger(__name__)

# tinydtls events (level, code); alert levels from RFC 5246
_LEVEL_NOALERT = 0
_LEVEL_WARNING = 1
_LEVEL_FATAL = 2
_CODE_CLOSE_NOTIFY = 0
_EVENT_CONNECTED = 0x01DE

# tinydtls (0.8.6, as built into DTLSSocket 0.2.3) copies the key into a buffer of DTLS_PSK_MAX_KEY_LEN (16) bytes
# without checking its length: a longer key would overflow it, so such keys are refused before they reach it.
MAX_PSK_LENGTH = 16
MAX_IDENTITY_LENGTH = 32  # DTLS_PSK_MAX_CLIENT_IDENTITY_LEN

_CT_CHANGE_CIPHER_SPEC, _CT_HANDSHAKE = 20, 22
_HT_CLIENT_HELLO = 1
_RETRANSMIT_POLL_MAX = 1.0

SECURITY_DTLS_LOCKOUT = "security.dtls_lockout"
SecurityEventSink = Callable[[str, dict[str, object]], None]


class DtlsSessionClosedError(error.NetworkError):
    """The DTLS session a request was sent on is gone (closed, evicted, failed or never completed)."""


@runtime_checkable
class PskStore(Protocol):
    """Gives the PSK of an identity, or None for an unknown one. Runs inside the handshake: keep it O(1)."""

    def psk_for(self, identity: bytes) -> bytes | None: ...


PskLookup = Callable[[bytes], "bytes | None"]


@dataclass(frozen=True, slots=True)
class PskClaim:
    """The credential a DTLS-PSK session was authenticated with (an entry of ``remote.authenticated_claims``)."""

    identity: bytes

    def __str__(self) -> str:
        return "dtls-psk:" + self.identity.decode("utf-8", "backslashreplace")


def psk_identity(remote: object) -> bytes | None:
    """The PSK identity ``remote`` authenticated with, or None (not a DTLS-PSK remote)."""
    for claim in getattr(remote, "authenticated_claims", None) or ():
        if isinstance(claim, PskClaim):
            return claim.identity
    return None


def _client_hello_cookie(data: bytes) -> bytes | None:
    """The cookie of an epoch-0 ClientHello in the first record of ``data``; None when it is not one."""
    # record header (13): type, version(2), epoch(2), seq(6), length(2); handshake header (12): type, length(3),
    # message_seq(2), fragment_offset(3), fragment_length(3); ClientHello: version(2), random(32), session_id, cookie
    if len(data) < 61 or data[0] != _CT_HANDSHAKE or data[3:5] != b"\0\0" or data[13] != _HT_CLIENT_HELLO:
        return None
    sid_end = 60 + data[59]
    if len(data) <= sid_end:
        return None
    return data[sid_end + 1:sid_end + 1 + data[sid_end]]


def _is_client_hello(data: bytes) -> bool:
    return _client_hello_cookie(data) is not None


_HOLD = 0.1  # seconds an out-of-order handshake datagram waits for the ones before it


class _HandshakeOrder:
    """A client's handshake datagrams, given to tinydtls in record order.

    tinydtls drops a ChangeCipherSpec that comes before the ClientKeyExchange, and a Finished (epoch 1) that comes
    before the ChangeCipherSpec, and a tinydtls client then retransmits only its Finished: a reordered flight
    fails the handshake. So a datagram whose first record is ahead of the next expected epoch-0 sequence number,
    or an epoch-1 record before a ChangeCipherSpec, waits (at most :data:`_HOLD` s, see :meth:`flush`) for those
    before it. A ClientHello starts over. Invariant: every datagram offered is given back exactly once."""

    __slots__ = ("ccs", "held", "next_seq", "timer")

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.ccs = False
        self.held: list[tuple[int, int, int, bytes]] = []  # (epoch, sequence number, content type, datagram)
        self.timer: asyncio.TimerHandle | None = None

    def offer(self, data: bytes) -> list[bytes]:
        """The datagrams to give tinydtls now, in order (``data`` among them, or held)."""
        if len(data) < 13:
            return [data]
        ctype, epoch, seq = data[0], int.from_bytes(data[3:5], "big"), int.from_bytes(data[5:11], "big")
        if _is_client_hello(data):
            self.next_seq, self.ccs = None, False
        if not self._ready(epoch, seq):
            self.held.append((epoch, seq, ctype, data))
            return []
        self._advance(ctype, epoch, seq)
        out = [data]
        while ready := sorted(h for h in self.held if self._ready(h[0], h[1])):
            epoch, seq, ctype, held = ready[0]
            self.held.remove(ready[0])
            self._advance(ctype, epoch, seq)
            out.append(held)
        return out

    def flush(self) -> list[bytes]:
        """Every held datagram, in record order (what was missing before them is lost, not late)."""
        out = []
        for epoch, seq, ctype, data in sorted(self.held):
            self._advance(ctype, epoch, seq)
            out.append(data)
        self.held.clear()
        return out

    def _ready(self, epoch: int, seq: int) -> bool:
        if epoch == 0:
            return self.next_seq is None or seq <= self.next_seq
        return self.ccs

    def _advance(self, ctype: int, epoch: int, seq: int) -> None:
        if epoch == 0:
            self.next_seq = max(self.next_seq or 0, seq + 1)
            if ctype == _CT_CHANGE_CIPHER_SPEC:
                self.ccs = True


def _has_encrypted_handshake(data: bytes) -> bool:
    """Whether ``data`` holds a handshake record of an epoch above 0 (a Finished, encrypted under the new keys)."""
    offset = 0
    while offset + 13 <= len(data):
        if data[offset] == _CT_HANDSHAKE and data[offset + 3:offset + 5] != b"\0\0":
            return True
        offset += 13 + int.from_bytes(data[offset + 11:offset + 13], "big")
    return False


def _host_text(key: tuple[str, int]) -> str:
    """The source address of a peer key as people write it (IPv4 without the ``::ffff:`` prefix)."""
    return key[0].removeprefix("::ffff:") if "." in key[0] else key[0]


_HANDSHAKE, _CONNECTED, _CLOSED = "handshake", "connected", "closed"


class DtlsRemote(interfaces.EndpointAddress):
    """One DTLS session with one peer (equal only to itself). Stays valid as a value after the session ended."""

    __slots__ = (
        "_attempt",
        "_failure",
        "_key",
        "_order",
        "_rejected",
        "_session",
        "_transport",
        "identity",
        "last_seen",
        "maximum_block_size_exp",
        "sockaddr",
        "state",
    )

    is_multicast = False
    is_multicast_locally = False
    scheme = "coaps"

    def __init__(self, transport: DtlsServerTransport, sockaddr: tuple[Any, ...], key: tuple[str, int],
                 session: Any, now: float) -> None:
        self._transport = transport
        self.sockaddr = sockaddr
        self._key = key
        self._session = session
        self.state = _HANDSHAKE
        self.identity: bytes | None = None
        self.last_seen = now
        self._failure: str | None = None  # set inside tinydtls callbacks, acted on after them
        self._rejected: str | None = None  # the PSK lookup refused the identity (a failed handshake)
        self._attempt = False  # a key exchange whose outcome is not judged yet (one failure counted per attempt)
        self._order = _HandshakeOrder()  # used while the handshake runs
        self.maximum_block_size_exp = constants.MAX_REGULAR_BLOCK_SIZE_EXP

    def __repr__(self) -> str:
        return f"<DtlsRemote {self.hostinfo} {self.state}>"

    @property
    def hostinfo(self) -> str:
        host, port = self.sockaddr[0], self.sockaddr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def hostinfo_local(self) -> str:
        return self._transport.hostinfo_local

    @property
    def uri_base(self) -> str:
        return "coaps://" + self.hostinfo

    @property
    def uri_base_local(self) -> str:
        return "coaps://" + self.hostinfo_local

    @property
    def authenticated_claims(self) -> list[PskClaim]:
        return [PskClaim(self.identity)] if self.state == _CONNECTED and self.identity is not None else []

    @property
    def blockwise_key(self) -> DtlsRemote:
        return self

    @property
    def is_open(self) -> bool:
        return self.state == _CONNECTED


class _KeyView:
    """The dict-like key store DTLSSocket asks (``identity in keys()``, then ``[identity]`` twice): one lookup per
    handshake attempt, answered from the transport's ``psk_for``."""

    __slots__ = ("_transport",)

    def __init__(self, transport: DtlsServerTransport) -> None:
        self._transport = transport

    def keys(self) -> _KeyView:
        return self

    def __contains__(self, identity: object) -> bool:
        return self._transport._psk(identity) is not None

    def __getitem__(self, identity: bytes) -> bytes:
        psk = self._transport._psk(identity)
        if psk is None:
            raise KeyError("unknown PSK identity")
        return psk


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, transport: DtlsServerTransport) -> None:
        self._t = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self._t._datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._t.log.debug("DTLS socket error: %s", type(exc).__name__)


class DtlsServerTransport(interfaces.MessageInterface):
    """aiocoap message interface serving coaps:// with DTLS-PSK on one socket, and sending the server's own
    requests to the remotes of its sessions."""

    def __init__(self, mman: interfaces.MessageManager, *, psk_for: PskStore | PskLookup, idle_timeout: float,
                 max_peers: int, handshake_timeout: float, max_handshakes: int, log: logging.Logger,
                 loop: asyncio.AbstractEventLoop, lockout: Lockout | None = None,
                 on_security_event: SecurityEventSink | None = None) -> None:
        from DTLSSocket import dtls

        if max_peers < 1 or max_handshakes < 1:
            raise ValueError("max_peers and max_handshakes must be at least 1")
        self._mman: interfaces.MessageManager | None = mman
        self._lookup: PskLookup = psk_for.psk_for if isinstance(psk_for, PskStore) else psk_for
        self.idle_timeout = idle_timeout
        self.max_peers = max_peers
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.log = log
        self._loop = loop
        self._dtls_module = dtls
        dtls.setLogLevel(dtls.DTLS_LOG_EMERG)  # tinydtls' debug log dumps keys
        self._dtls: Any = dtls.DTLS(read=self._on_read, write=self._on_write, event=self._on_event,
                                    pskId=b"unused-by-a-server", pskStore=_KeyView(self))
        self._sessions: OrderedDict[tuple[str, int], DtlsRemote] = OrderedDict()  # least recently heard first
        self._handshakes: OrderedDict[tuple[str, int], DtlsRemote] = OrderedDict()
        self._by_identity: dict[bytes, set[DtlsRemote]] = {}
        self._current: DtlsRemote | None = None  # the peer whose datagram tinydtls is handling
        self._looked_up: tuple[bytes, bytes | None] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._family = socket.AF_INET6
        self.hostinfo_local = ""
        self._bound: tuple[str, int] | None = None
        self._retransmit_timer: asyncio.TimerHandle | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._clock_offset = time.monotonic()
        self.handshakes_completed = 0
        self.handshakes_started = 0  # one per source address and port that sent a ClientHello with no session
        self.handshakes_failed = 0  # counted failures (see the module docstring), whether or not a lockout is set
        self.dropped_locked_out = 0  # datagrams ignored because their source address is locked out
        self.lockout = lockout
        self._on_security_event = on_security_event

    # -- setup and shutdown

    async def _bind(self, host: str, port: int) -> int:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)  # no SO_REUSEPORT: nobody shares this port
            sock.setblocking(False)
            self._transport, _ = await self._loop.create_datagram_endpoint(lambda: _Datagrams(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._family = family
        bound_host, bound_port = sock.getsockname()[:2]
        self._bound = (host, int(bound_port))
        udp._IN_USE.add(self._bound)
        self.hostinfo_local = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        self._arm_sweep()
        return int(bound_port)

    async def shutdown(self) -> None:
        for timer in (self._retransmit_timer, self._sweep_timer):
            if timer is not None:
                timer.cancel()
        self._mman = None  # the message manager has already failed its exchanges
        for peer in [*self._sessions.values(), *self._handshakes.values()]:
            self._evict(peer, error.LibraryShutdown("DTLS transport shutting down"))
        self._dtls = None  # frees the tinydtls context (and any state it still holds)
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._bound is not None:
            udp.release(*self._bound)
            self._bound = None

    # -- aiocoap MessageInterface

    async def recognize_remote(self, remote: interfaces.EndpointAddress) -> bool:
        return isinstance(remote, DtlsRemote) and remote._transport is self

    async def determine_remote(self, request: Message) -> None:
        return None  # a server does not open DTLS sessions; requests go to the remote of an existing one

    def send(self, message: Message) -> None:
        remote = message.remote
        assert isinstance(remote, DtlsRemote)
        if remote.state != _CONNECTED or self._dtls is None:
            self._loop.call_soon(self._fail_remote, remote)
            return
        written = self._dtls.write(remote._session, message.encode())
        if written < 0:
            self.log.info("DTLS write to %s failed", remote.hostinfo)
            self._evict(remote, DtlsSessionClosedError("DTLS write failed"))
        self._arm_retransmit()

    def _fail_remote(self, remote: DtlsRemote) -> None:
        if self._mman is not None:
            self._mman.dispatch_error(DtlsSessionClosedError(f"no DTLS session with {remote.hostinfo}"), remote)

    # -- public session management

    @property
    def peers(self) -> int:
        """Established sessions held."""
        return len(self._sessions)

    @property
    def pending_handshakes(self) -> int:
        return len(self._handshakes)

    def sessions(self) -> list[DtlsRemote]:
        return list(self._sessions.values())

    def locked_out(self, host: str, now: float | None = None) -> float | None:
        """Seconds the address ``host`` (e.g. ``"127.0.0.1"``) stays ignored, or None when it is not locked out."""
        if self.lockout is None:
            return None
        key = self._key((host, 0))[0]
        return self.lockout.locked(key, time.monotonic() if now is None else now)

    def evict(self, address: DtlsRemote | tuple[Any, ...]) -> bool:
        """End the session of ``address`` (a remote, or a socket address ``(host, port)``); False if none."""
        if isinstance(address, DtlsRemote):
            peer: DtlsRemote | None = address if address._transport is self and address.state != _CLOSED else None
        else:
            key = self._key(address)
            peer = self._sessions.get(key) or self._handshakes.get(key)
        if peer is None:
            return False
        self._evict(peer, DtlsSessionClosedError("DTLS session evicted"))
        return True

    def evict_identity(self, identity: bytes) -> int:
        """End every session authenticated with ``identity`` (the device was revoked or rekeyed); returns how many.
        Handshakes in progress with that identity are dropped too."""
        peers = set(self._by_identity.get(identity, ()))
        peers.update(p for p in self._handshakes.values() if p.identity == identity)
        for peer in peers:
            self._evict(peer, DtlsSessionClosedError("DTLS session evicted (credential revoked)"))
        return len(peers)

    def sweep(self, now: float | None = None) -> int:
        """Evict idle sessions and stale handshakes now; returns how many (also runs periodically)."""
        now = time.monotonic() if now is None else now
        evicted = 0
        for table, timeout in ((self._sessions, self.idle_timeout), (self._handshakes, self.handshake_timeout)):
            while table:
                peer = next(iter(table.values()))
                if now - peer.last_seen < timeout:
                    break
                self._evict(peer, DtlsSessionClosedError("DTLS session idle"))
                evicted += 1
        return evicted

    # -- internals

    def _key(self, sockaddr: tuple[Any, ...]) -> tuple[str, int]:
        """The (IPv6 text, port) tinydtls knows a peer by."""
        host = str(sockaddr[0]).split("%", 1)[0]
        if ":" not in host:
            host = "::ffff:" + host
        return (host, int(sockaddr[1]))

    def _sockaddr(self, key: tuple[str, int]) -> tuple[Any, ...]:
        host, port = key
        if self._family == socket.AF_INET:
            return (host.removeprefix("::ffff:"), port)
        return (host, port)

    def _psk(self, identity: object) -> bytes | None:
        if not isinstance(identity, bytes):
            return None
        if self._looked_up is not None and self._looked_up[0] == identity:
            return self._looked_up[1]
        psk: bytes | None = None
        store_failed = False
        if len(identity) <= MAX_IDENTITY_LENGTH:
            try:
                found = self._lookup(identity)
            except Exception as e:  # a failing store must not take the handshake loop down
                self.log.warning("PSK lookup for identity %r failed (%s)", identity, type(e).__name__)
                found, store_failed = None, True
            if found is not None:
                found = bytes(found)
                if 0 < len(found) <= MAX_PSK_LENGTH:
                    psk = found
                else:
                    self.log.warning("PSK of identity %r refused: %d bytes (tinydtls takes 1 to %d)", identity,
                                     len(found), MAX_PSK_LENGTH)
        self._looked_up = (identity, psk)
        peer = self._current
        if peer is not None:
            peer.identity = identity
            if store_failed:  # our failure, not the peer's: refuse the handshake without counting it
                peer._attempt, peer._failure = False, "PSK lookup failed"
            elif psk is None:
                self.log.info("DTLS handshake from %s with unknown PSK identity %r", peer.hostinfo, identity)
                peer._attempt, peer._rejected = True, "unknown PSK identity"
            else:
                peer._attempt = True
        return psk

    def _datagram_received(self, data: bytes, sockaddr: tuple[Any, ...]) -> None:
        if self._dtls is None:
            return
        key = self._key(sockaddr)
        now = time.monotonic()
        peer = self._sessions.get(key)
        if self.lockout is not None and (peer is None or _is_client_hello(data)) \
                and self.lockout.locked(key[0], now) is not None:
            self.dropped_locked_out += 1
            return  # silently: a locked-out address learns nothing, not even that it is locked out
        if peer is not None:
            cookie = _client_hello_cookie(data)
            if cookie:  # the peer starts over (after a reboot, or another identity on this address and port)
                self.log.info("new DTLS handshake from %s: ending its previous session", peer.hostinfo)
                self._evict(peer, DtlsSessionClosedError("DTLS peer started a new handshake"))
                peer = None
            else:
                self._sessions.move_to_end(key)
        if peer is None:
            peer = self._handshakes.get(key)
            if peer is not None:
                self._handshakes.move_to_end(key)
            elif _client_hello_cookie(data) is None:
                return  # no session and not a ClientHello: tinydtls would drop it too
            else:
                peer = DtlsRemote(self, sockaddr, key, self._dtls_module.Session(key[0], key[1]), now)
                self._handshakes[key] = peer
                self.handshakes_started += 1
                while len(self._handshakes) > self.max_handshakes:
                    self._evict(next(iter(self._handshakes.values())),
                                DtlsSessionClosedError("too many DTLS handshakes in progress"))
        peer.last_seen = now
        if peer.state != _HANDSHAKE:
            self._feed(peer, data, now)
            return
        for datagram in peer._order.offer(data):
            self._feed(peer, datagram, now)
        order = peer._order
        if order.held and order.timer is None:
            order.timer = self._loop.call_later(_HOLD, self._flush_order, peer)

    def _flush_order(self, peer: DtlsRemote) -> None:
        peer._order.timer = None
        for datagram in peer._order.flush():  # what a closed peer held goes nowhere (_feed drops it)
            self._feed(peer, datagram, time.monotonic())

    def _feed(self, peer: DtlsRemote, data: bytes, now: float) -> None:
        """Give one datagram of ``peer`` to tinydtls and act on what it made of it."""
        if self._dtls is None or peer.state == _CLOSED:
            return
        self._current, self._looked_up = peer, None
        try:
            self._dtls.handleMessage(peer._session, data)
        finally:
            self._current, self._looked_up = None, None
        failed = self._judge_attempt(peer, data)
        if peer._failure is not None:
            self._evict(peer, DtlsSessionClosedError(peer._failure), reset=True)
        elif peer.state == _CONNECTED and peer._key in self._handshakes:
            self._established(peer)
        if failed is not None:
            self._handshake_failed(peer, failed, now)
        self._arm_retransmit()

    def _judge_attempt(self, peer: DtlsRemote, data: bytes) -> str | None:
        """Why the key exchange of ``peer`` failed with this datagram, or None (no failure, or not known yet)."""
        if not peer._attempt:
            return None
        if peer.state == _CONNECTED:
            peer._attempt = False
            return None
        reason = None
        if peer._rejected is not None:
            reason = peer._rejected
            peer._failure = peer._failure or reason  # tinydtls has answered with a fatal alert: forget the peer
        elif peer._failure is not None:
            reason = f"handshake ended: {peer._failure}"
        elif _has_encrypted_handshake(data):
            reason = "Finished did not verify (wrong PSK?)"
        if reason is not None:
            peer._attempt, peer._rejected = False, None
        return reason

    def _handshake_failed(self, peer: DtlsRemote, reason: str, now: float) -> None:
        self.handshakes_failed += 1
        identity = peer.identity or b""
        self.log.info("DTLS handshake from %s (identity %r) failed: %s", peer.hostinfo, identity, reason)
        if self.lockout is None:
            return
        host = peer._key[0]
        period = self.lockout.record_failure(host, now)
        if period is None:
            return
        address = _host_text(peer._key)
        self.log.warning("DTLS: %d failed handshakes from %s within %g s: ignoring that address for %g s",
                         self.lockout.threshold, address, self.lockout.window, period)
        for other in [p for p in self._handshakes.values() if p._key[0] == host]:
            self._evict(other, DtlsSessionClosedError("source address locked out"))
        if self._on_security_event is not None:
            data: dict[str, object] = {
                "address": address, "failures": self.lockout.threshold, "window": self.lockout.window,
                "seconds": period, "identity": identity.decode("utf-8", "backslashreplace"), "reason": reason}
            try:
                self._on_security_event(SECURITY_DTLS_LOCKOUT, data)
            except Exception:
                self.log.exception("the security event sink failed")

    def _established(self, peer: DtlsRemote) -> None:
        del self._handshakes[peer._key]
        if peer.identity is None:  # cannot happen with PSK; never serve an unauthenticated session
            self._evict(peer, DtlsSessionClosedError("DTLS session without identity"))
            return
        self._sessions[peer._key] = peer
        self._by_identity.setdefault(peer.identity, set()).add(peer)
        self.handshakes_completed += 1
        self.log.debug("DTLS session with %s established for identity %r", peer.hostinfo, peer.identity)
        while len(self._sessions) > self.max_peers:
            self._evict(next(iter(self._sessions.values())), DtlsSessionClosedError("too many DTLS sessions"))

    def _evict(self, peer: DtlsRemote, exc: Exception, *, reset: bool = True) -> None:
        if peer.state == _CLOSED:
            return
        was_connected = peer.state == _CONNECTED
        peer.state = _CLOSED
        table = self._sessions if self._sessions.get(peer._key) is peer else self._handshakes
        if table.get(peer._key) is peer:
            del table[peer._key]
        if peer.identity is not None:
            holders = self._by_identity.get(peer.identity)
            if holders is not None:
                holders.discard(peer)
                if not holders:
                    del self._by_identity[peer.identity]
        if reset and self._dtls is not None:
            self._dtls.resetPeer(peer._session)  # sends close_notify on an established session
        self.log.debug("DTLS peer %s dropped: %s", peer.hostinfo, exc.args[0] if exc.args else type(exc).__name__)
        if was_connected and self._mman is not None:
            self._mman.dispatch_error(exc, peer)

    # tinydtls callbacks: run inside handleMessage/write/resetPeer; they must not raise and must not reset peers

    def _on_read(self, session: tuple[str, int], data: bytes) -> int:
        peer = self._sessions.get(session) or self._handshakes.get(session)
        if peer is None or peer.state != _CONNECTED or self._mman is None:
            return len(data)
        try:
            message = Message.decode(data, remote=peer)
        except error.UnparsableMessage:
            self.log.warning("Ignoring unparsable message from %s", peer.hostinfo)
            return len(data)
        try:
            self._mman.dispatch_message(message)
        except Exception:
            self.log.exception("dispatching a message from %s failed", peer.hostinfo)
        return len(data)

    def _on_write(self, session: tuple[str, int], data: bytes) -> int:
        if self._transport is None:
            return -1
        try:
            self._transport.sendto(data, self._sockaddr(session))
        except Exception as e:
            self.log.debug("DTLS send failed: %s", type(e).__name__)
            return -1
        return len(data)

    def _on_event(self, level: int, code: int) -> int:
        peer = self._current
        if peer is None:
            return 0
        if (level, code) == (_LEVEL_NOALERT, _EVENT_CONNECTED):
            peer.state = _CONNECTED
        elif code == _CODE_CLOSE_NOTIFY and level in (_LEVEL_WARNING, _LEVEL_FATAL):
            peer._failure = "DTLS close_notify received"  # tinydtls has dropped the peer already
        elif level == _LEVEL_FATAL:
            peer._failure = f"DTLS alert {code}"
        return 0

    # timers

    def _arm_retransmit(self) -> None:
        if self._dtls is None or self._retransmit_timer is not None:
            return
        if self._dtls.checkRetransmit() == 0:
            return
        self._retransmit_timer = self._loop.call_later(_RETRANSMIT_POLL_MAX / 4, self._retransmit)

    def _retransmit(self) -> None:
        self._retransmit_timer = None
        if self._dtls is not None:
            self._arm_retransmit()

    def _arm_sweep(self) -> None:
        interval = max(0.05, min(self.idle_timeout, self.handshake_timeout) / 4, 0.0)
        self._sweep_timer = self._loop.call_later(min(interval, 30.0), self._periodic_sweep)

    def _periodic_sweep(self) -> None:
        if self._dtls is None:
            return
        self.sweep()
        self._arm_sweep()


def dtls_transport(context: Context) -> DtlsServerTransport:
    """The DTLS transport of a context made by :func:`dtls_server_context`."""
    for interface in context.request_interfaces:
        messages = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        if isinstance(messages, DtlsServerTransport):
            return messages
    raise LookupError("the context has no DTLS server transport")


async def add_dtls_server(context: Context, host: str, port: int = 0, *, psk_for: PskStore | PskLookup,
                          idle_timeout: float = 600.0, max_peers: int = 10000, handshake_timeout: float = 30.0,
                          max_handshakes: int = 1024, lockout: Lockout | None = None,
                          on_security_event: SecurityEventSink | None = None) -> tuple[DtlsServerTransport, int]:
    """Add a coaps:// listener on ``host:port`` (0: any free port) to an existing context (e.g. beside its plain
    UDP transport). Returns the transport and the port it is bound to; ``context.shutdown()`` closes it.
    ``lockout`` (per source address) ignores addresses with too many failed handshakes for a while, and
    ``on_security_event`` hears of each lockout (see the module docstring)."""
    udp.tune_aiocoap()
    holder: list[DtlsServerTransport] = []

    async def construct(mman: interfaces.MessageManager) -> DtlsServerTransport:
        transport = DtlsServerTransport(mman, psk_for=psk_for, idle_timeout=idle_timeout, max_peers=max_peers,
                                        handshake_timeout=handshake_timeout, max_handshakes=max_handshakes,
                                        log=context.log, loop=asyncio.get_running_loop(), lockout=lockout,
                                        on_security_event=on_security_event)
        holder.append(transport)
        return transport

    await context._append_tokenmanaged_messagemanaged_transport(construct)
    transport = holder[0]
    try:
        bound = await transport._bind(host, port)
    except OSError:
        context.request_interfaces.pop()
        raise
    return transport, bound


async def dtls_server_context(site: interfaces.Resource | None, host: str, port: int = 0, *,
                              psk_for: PskStore | PskLookup, idle_timeout: float = 600.0, max_peers: int = 10000,
                              handshake_timeout: float = 30.0, max_handshakes: int = 1024,
                              log: logging.Logger | None = None, lockout: Lockout | None = None,
                              on_security_event: SecurityEventSink | None = None) -> tuple[Context, int]:
    """A server context serving ``site`` over coaps:// on ``host:port`` (port 0: any free port), mirroring
    :func:`lwm2m_server.transport.udp.exclusive_context`. Raises OSError (EADDRINUSE) when the port is taken.
    ``await context.shutdown()`` ends every session (close_notify) and frees the port. The transport (for
    :meth:`~DtlsServerTransport.evict` and friends) is ``dtls_transport(context)``."""
    context = Context(loop=asyncio.get_running_loop(), serversite=site,
                      loggername=(log or _log).name)
    try:
        _, bound = await add_dtls_server(context, host, port, psk_for=psk_for, idle_timeout=idle_timeout,
                                         max_peers=max_peers, handshake_timeout=handshake_timeout,
                                         max_handshakes=max_handshakes, lockout=lockout,
                                         on_security_event=on_security_event)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"UDP port {port} on {host} is in use") from None
        raise
    return context, bound


async def dtls_client_context(site: interfaces.Resource | None, server_uri: str, identity: bytes, psk: bytes, *,
                              loggername: str = "coap-dtls-client") -> Context:
    """A client context that reaches ``server_uri`` (``coaps://host:port``) with DTLS-PSK and also serves
    ``site`` to requests the server sends over that same session (aiocoap's tinydtls client transport).

    The session lives while its remote is referenced (aiocoap pools client sessions weakly): keep the
    ``remote`` of a response from the server, e.g. of the Register, for as long as the device is online.
    """
    context = await Context.create_client_context(transports=["tinydtls"], loggername=loggername)
    context.serversite = site
    base = server_uri.rstrip("/")
    context.client_credentials.load_from_dict(
        {base + "/*": {"dtls": {"psk": bytes(psk), "client-identity": bytes(identity)}}})
    return context

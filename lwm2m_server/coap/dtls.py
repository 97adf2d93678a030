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
  :meth:`DtlsServerTransport.evict` and :meth:`DtlsServerTransport.evict_identity`. The transport ends it itself
  and never hands tinydtls such an alert (nor any encrypted one): tinydtls removes an alerting peer from its table
  twice, which corrupts the table's counts until the server dies of a SIGFPE (``_before_closing_alert``).
- ClientHellos are stateless (RFC 6347 4.2.1): tinydtls answers one without a valid cookie with a
  HelloVerifyRequest and nothing is kept on either side (``client_hellos``, ``cookie_challenges`` count them); only
  a ClientHello whose cookie verified (tinydtls answers with a ServerHello) creates handshake state and ends the
  session of that address and port (a device that rebooted, or another identity on a reused port). A spoofed
  ClientHello therefore never pushes out a handshake or ends a session. An epoch-0 ClientHello's record version
  0xFEXX is read as 0xFEFF (mbedTLS sends 0xFE00). tinydtls is told not to require the renegotiation_info and
  extended_master_secret extensions (it does neither renegotiation nor resumption; an offered EMS is used).
- A record of a session the server does not hold (epoch > 0: it restarted, or evicted the session) is answered
  with an unprotected epoch-0 fatal alert, at most ``unknown_session_alerts`` per second in all and never larger
  than the record; :func:`dtls_client_context` clients then handshake again at once (tinydtls itself ignores it).
- PSKs come from ``psk_for(identity)`` (called synchronously in the handshake, once per attempt) and are never
  logged nor put into exception texts; tinydtls' own logging is kept at EMERG (its debug output dumps keys). An
  unknown identity, or a handshake the lockout refuses, gets a decoy key (HMAC of a per-transport secret), so it
  fails at the Finished exactly like a wrong key (RFC 4279 section 5): no identity oracle. All of them are told at
  once with one epoch-0 decrypt_error alert (tinydtls itself drops a Finished that does not verify in silence,
  which left clients to wait out their retransmissions).
- ``request.remote.authenticated_claims`` is ``[PskClaim(identity)]`` once the handshake completed.
- Failed handshakes (a Finished that does not verify after the key lookup, or a fatal alert after it; at most one
  per key exchange; only after the cookie exchange) go to a :class:`~lwm2m_server.core.rate_limit.HandshakeGuard`
  built on ``lockout``: per (address, identity) an exponential back-off after ``backoff_after`` failures, per
  identity a ``lockout`` count that is reported and refuses nothing (identities travel in clear), and, for
  unknown identities only, per address. Failures under one identity never refuse another valid identity; a refused
  handshake is answered as any failed one and counts nowhere; established sessions are kept. Each engagement is
  logged as a warning and reported through ``on_security_event("security.dtls_lockout", data)``. A failing
  credential store (an exception in ``psk_for``) refuses the handshake but is not the peer's failure.
- Application data is decoded strictly (:func:`~lwm2m_server.coap.datagrams.decode_datagram`); a malformed
  message gets RFC 7252's answer on its session, and nothing a peer sends makes a tinydtls callback raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import hmac
import logging
import os
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from aiocoap import Context, Message, error, interfaces
from aiocoap.numbers import constants

from lwm2m_server.coap import udp
from lwm2m_server.coap.datagrams import MALFORMED, decode_datagram
from lwm2m_server.core.rate_limit import HandshakeGuard, Lockout, TokenBucket, Tripped

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

_CT_CHANGE_CIPHER_SPEC, _CT_HANDSHAKE, _CT_APPLICATION_DATA = 20, 22, 23
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


def _normalise_hello_version(data: bytes) -> bytes:
    """``data`` with the record-layer version of an epoch-0 ClientHello record set to 0xFEFF when it is another
    0xFEXX: a client may use any 0xFEXX there (RFC 6347 4.1, e.g. mbedTLS's 0xFE00) and tinydtls takes only
    0xFEFF and 0xFEFD. The record header is not part of the handshake transcript."""
    if len(data) < 14 or data[0] != _CT_HANDSHAKE or data[1] != 0xFE or data[2] in (0xFD, 0xFF) \
            or data[3:5] != b"\0\0" or data[13] != _HT_CLIENT_HELLO:
        return data
    return data[:1] + b"\xfe\xff" + data[3:]


def _record_kind(data: bytes) -> tuple[int, int] | None:
    """(content type, epoch) of the first record of ``data``, or None when it does not look like DTLS."""
    if len(data) < 13 or data[1] != 0xFE or not 20 <= data[0] <= 23:
        return None
    return data[0], int.from_bytes(data[3:5], "big")


_HT_SERVER_HELLO, _HT_HELLO_VERIFY_REQUEST = 2, 3
_CT_ALERT = 21
_ALERT_UNEXPECTED_MESSAGE, _ALERT_DECRYPT_ERROR = 10, 51
_ALERT_LENGTH = 15  # record header (13) + level + description
_ALERT_SEQ_BASE = 1 << 40


def _epoch0_fatal_alert(data: bytes) -> int | None:
    """The description of an epoch-0 fatal alert in ``data`` (one unprotected record), or None."""
    if len(data) != 15 or data[0] != _CT_ALERT or data[1] != 0xFE or data[3:5] != b"\0\0" \
            or data[11:13] != b"\0\x02" or data[13] != _LEVEL_FATAL:
        return None
    return data[14]


# -- tinydtls' user parameters (DTLSSocket 0.2.3 does not expose the get_user_parameters handler)

_CTX_APP_OFFSET, _CTX_HANDLER_OFFSET = 32, 40  # dtls_context_t: cookie_secret[12], uint32 age, peers*, sendqueue*
_HANDLER_SLOTS = 7  # write, read, event, get_user_parameters, get_psk_info, get_ecdsa_key, verify_ecdsa_key
_GET_USER_PARAMETERS_SLOT = 3
_PARAMS_FLAGS_OFFSET = 20  # dtls_user_parameters_t: dtls_cipher_t cipher_suites[5], then the two flag bits
_USER_PARAMETERS_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _peek(address: int, size: int) -> bytes | None:
    """``size`` bytes of this process's memory at ``address``; None when they are not mapped (never faults)."""
    try:
        with open("/proc/self/mem", "rb", buffering=0) as mem:
            data = os.pread(mem.fileno(), size, address)
    except (OSError, OverflowError, ValueError):
        return None
    return data if len(data) == size else None


def _relax_forced_extensions(dtls: Any) -> Any:
    """Install a get_user_parameters handler in the tinydtls context of the DTLSSocket object ``dtls`` that
    clears ``force_renegotiation_info`` and ``force_extended_master_secret`` (tinydtls 0.8.6 requires both from
    every client, so clients without them, e.g. tinydtls's own example client, fail the handshake; tinydtls does
    neither renegotiation nor resumption, and an offered extended master secret is still used). The context is
    located and checked first (its ``app`` is ``dtls``, its handler table lies inside ``dtls`` with
    get_user_parameters unset); anything unexpected leaves tinydtls as it is and returns None with a warning.
    Returns the ctypes callback, which must stay referenced as long as ``dtls`` lives."""
    base, size = id(dtls), type(dtls).__basicsize__
    raw = ctypes.string_at(base, size)
    pointers = [int.from_bytes(raw[o:o + 8], sys.byteorder) for o in range(0, size - 7, 8)]
    found = []
    for candidate in pointers[2:]:  # after the object header
        head = _peek(candidate + _CTX_APP_OFFSET, 16) if candidate else None
        if head is None:
            continue
        app, handler = int.from_bytes(head[:8], sys.byteorder), int.from_bytes(head[8:], sys.byteorder)
        if app == base and base + 16 <= handler and handler + 8 * _HANDLER_SLOTS <= base + size \
                and (handler - base) % 8 == 0:
            found.append(handler)
    if ctypes.sizeof(ctypes.c_void_p) != 8 or len(found) != 1:
        _log.warning("tinydtls context not recognised (DTLSSocket changed?): clients without the "
                     "renegotiation_info extension cannot handshake")
        return None
    handler = found[0]
    slots = pointers[(handler - base) // 8:(handler - base) // 8 + _HANDLER_SLOTS]
    if not all(slots[:3]) or slots[_GET_USER_PARAMETERS_SLOT] or not slots[4]:
        _log.warning("tinydtls handler table not recognised (DTLSSocket changed?): clients without the "
                     "renegotiation_info extension cannot handshake")
        return None

    def get_user_parameters(_ctx: int | None, _session: int | None, parameters: int | None) -> None:
        if parameters is None:
            return
        suites = (ctypes.c_uint32 * 5).from_address(parameters)
        if suites[0] == 0 or suites[4] != 0:  # not the layout we know: leave the defaults
            return
        flags = ctypes.c_uint32.from_address(parameters + _PARAMS_FLAGS_OFFSET)
        flags.value &= ~0b11  # force_extended_master_secret, force_renegotiation_info

    callback = _USER_PARAMETERS_CALLBACK(get_user_parameters)
    ctypes.c_void_p.from_address(handler + 8 * _GET_USER_PARAMETERS_SLOT).value = \
        ctypes.cast(callback, ctypes.c_void_p).value
    return callback


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


def _before_closing_alert(data: bytes) -> bytes | None:
    """The records of ``data`` before its first alert that ends a session, or None when it holds none.

    Such an alert is any alert of an epoch above 0 (encrypted: it cannot be told from a close_notify) and an
    unprotected epoch-0 alert that is fatal or a close_notify. tinydtls (0.8.6 and upstream) removes the peer of
    such an alert from its peer table twice (``handle_alert`` then ``dtls_destroy_peer``): with other peers held,
    uthash's item count drifts down by one each time, until a table expansion divides by it (SIGFPE: the whole
    server dies). So the transport never hands tinydtls such an alert: it ends the session itself (one clean
    removal). A truncated record ends the scan (tinydtls drops it)."""
    offset = 0
    while offset + 13 <= len(data):
        length = int.from_bytes(data[offset + 11:offset + 13], "big")
        if data[offset] == _CT_ALERT:
            epoch0 = data[offset + 3:offset + 5] == b"\0\0"
            body = data[offset + 13:offset + 15]
            if not epoch0 or (len(body) == 2 and (body[0] == _LEVEL_FATAL or body[1] == _CODE_CLOSE_NOTIFY)):
                return data[:offset]
        offset += 13 + length
    return None


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
        "_known",
        "_order",
        "_refused",
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
        self._rejected: str | None = None  # why the PSK lookup gave a decoy key (the handshake will fail)
        self._refused = False  # ... because the lockout refused it (counted nowhere)
        self._known = False  # the identity of the last key exchange is known to the store
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
                 on_security_event: SecurityEventSink | None = None, backoff_after: int = 3,
                 backoff_base: float = 1.0, unknown_session_alerts: float = 100.0) -> None:
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
        self._user_parameters = _relax_forced_extensions(self._dtls)  # referenced while the context lives
        self._decoy_secret = os.urandom(32)  # keys of unknown identities (a per-transport secret)
        self._hello_reply: int | None = None  # the handshake type tinydtls answered a ClientHello with
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
        self.client_hellos = 0  # every epoch-0 ClientHello (answered statelessly until its cookie verifies)
        self.cookie_challenges = 0  # HelloVerifyRequests sent (cookie-less ClientHellos, or stale cookies)
        self.alerts_received = 0  # session-ending alerts from peers, ended here, never handed to tinydtls
        self.handshakes_started = 0  # ClientHellos whose cookie verified: the only ones that create state
        self.handshakes_failed = 0  # failed key exchanges (see the module docstring), refused ones included
        self.dropped_locked_out = 0  # handshakes refused by the lockout (answered as any failed one)
        self.unknown_session_alerts = 0  # epoch-0 alerts sent for records of sessions the server does not hold
        self.lockout = lockout
        self.guard = (HandshakeGuard(lockout, backoff_after=backoff_after, backoff_base=backoff_base)
                      if lockout is not None else None)
        self._alerts = TokenBucket(unknown_session_alerts, unknown_session_alerts, unknown_session_alerts,
                                   time.monotonic()) if unknown_session_alerts > 0 else None
        self._alert_seq = _ALERT_SEQ_BASE
        self._on_security_event = on_security_event

    # -- setup and shutdown

    async def _bind(self, host: str, port: int, *, shared: bool = False) -> int:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if shared:  # sibling workers share the port: the kernel keeps each peer's datagrams on one of them
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)  # else no SO_REUSEPORT: nobody shares this port
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
        """Seconds the address ``host`` (e.g. ``"127.0.0.1"``) stays refused for unknown identities, or None."""
        if self.guard is None:
            return None
        return self.guard.address_locked(_host_text(self._key((host, 0))), time.monotonic() if now is None else now)

    def backing_off(self, host: str, identity: bytes, now: float | None = None) -> float | None:
        """Seconds ``identity`` stays refused from the address ``host``, or None."""
        if self.guard is None:
            return None
        return self.guard.backing_off(_host_text(self._key((host, 0))), identity,
                                      time.monotonic() if now is None else now)

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
        """The key tinydtls gets for ``identity`` (the ClientKeyExchange of the current peer): the device's PSK, or,
        for an unknown identity or a handshake the lockout refuses, a decoy key, so that all of them fail alike at
        the Finished (RFC 4279 section 5), with the same decrypt_error alert. None (a fatal alert) only when the
        store itself failed."""
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
        answer = psk
        peer = self._current
        if peer is not None:
            peer.identity = identity
            peer._known = psk is not None
            if store_failed:  # our failure, not the peer's: refuse the handshake without counting it
                peer._attempt, peer._failure = False, "PSK lookup failed"
            else:
                peer._attempt = True
                refused = None if self.guard is None else \
                    self.guard.refused(_host_text(peer._key), identity, psk is not None, time.monotonic())
                if refused is not None:
                    self.dropped_locked_out += 1
                    peer._rejected, peer._refused = refused, True
                elif psk is None:
                    self.log.info("DTLS handshake from %s with unknown PSK identity %r", peer.hostinfo, identity)
                    peer._rejected = "unknown PSK identity"
                if peer._rejected is not None:
                    answer = self._decoy_key(identity)
        self._looked_up = (identity, answer)
        return answer

    def _decoy_key(self, identity: bytes) -> bytes:
        return hmac.new(self._decoy_secret, identity, hashlib.sha256).digest()[:MAX_PSK_LENGTH]

    def _datagram_received(self, data: bytes, sockaddr: tuple[Any, ...]) -> None:
        if self._dtls is None:
            return
        data = _normalise_hello_version(data)
        key = self._key(sockaddr)
        now = time.monotonic()
        if _is_client_hello(data):
            self._client_hello(data, sockaddr, key, now)
            return
        peer = self._sessions.get(key)
        if peer is not None:
            self._sessions.move_to_end(key)
        else:
            peer = self._handshakes.get(key)
            if peer is None:
                self._unknown_session(data, key, now)
                return
            self._handshakes.move_to_end(key)
        peer.last_seen = now
        before = _before_closing_alert(data)
        if before is not None:  # the peer is going away: never hand tinydtls the alert (see _before_closing_alert)
            if before:
                self._datagram_received(before, sockaddr)
            if peer.state == _CLOSED:  # the records before the alert ended it already
                return
            self.alerts_received += 1
            if peer.state == _HANDSHAKE:  # counted as tinydtls' own report of a fatal alert would have been
                peer._failure = peer._failure or "DTLS alert from the client during the handshake"
                failed = self._judge_attempt(peer, data)
                if failed is not None:
                    self._handshake_failed(peer, failed, now)
            self._evict(peer, DtlsSessionClosedError("DTLS alert from the peer (session ended)"), reset=True)
            self._arm_retransmit()
            return
        if peer.state != _HANDSHAKE:
            self._feed(peer, data, now)
            return
        for datagram in peer._order.offer(data):
            self._feed(peer, datagram, now)
        order = peer._order
        if order.held and order.timer is None:
            order.timer = self._loop.call_later(_HOLD, self._flush_order, peer)

    def _client_hello(self, data: bytes, sockaddr: tuple[Any, ...], key: tuple[str, int], now: float) -> None:
        """Give tinydtls an epoch-0 ClientHello statelessly (it answers a missing or stale cookie with a
        HelloVerifyRequest and keeps nothing); only when it answers with a ServerHello (the cookie verified: the
        sender receives at that address) has it replaced its peer of ``key`` by a new handshake, and so do we."""
        self.client_hellos += 1
        self._hello_reply = None
        try:  # _on_write notes the first handshake message tinydtls answers with
            self._dtls.handleMessageAddr(key[0], key[1], data)
        finally:
            reply, self._hello_reply = self._hello_reply, None
        if reply == _HT_HELLO_VERIFY_REQUEST:
            self.cookie_challenges += 1
        if reply != _HT_SERVER_HELLO:
            return
        old = self._sessions.get(key) or self._handshakes.get(key)
        if old is not None:  # tinydtls has dropped its peer already: no reset (it would hit the new one)
            if old.state == _CONNECTED:
                self.log.info("new DTLS handshake from %s: ending its previous session", old.hostinfo)
            self._evict(old, DtlsSessionClosedError("DTLS peer started a new handshake"), reset=False)
        peer = DtlsRemote(self, sockaddr, key, self._dtls_module.Session(key[0], key[1]), now)
        peer._order.next_seq = int.from_bytes(data[5:11], "big") + 1
        self._handshakes[key] = peer
        self.handshakes_started += 1
        while len(self._handshakes) > self.max_handshakes:
            self._evict(next(iter(self._handshakes.values())),
                        DtlsSessionClosedError("too many DTLS handshakes in progress"))
        self._arm_retransmit()

    def _unknown_session(self, data: bytes, key: tuple[str, int], now: float) -> None:
        """A record of a session the server does not hold (e.g. it restarted): an unprotected epoch-0 fatal alert
        tells the client to handshake again (RFC 6347 4.2.8). Only for handshake and application data records of
        an epoch above 0, never larger than what came in, and at most ``unknown_session_alerts`` per second."""
        kind = _record_kind(data)
        if kind is None or kind[1] == 0 or kind[0] not in (_CT_HANDSHAKE, _CT_APPLICATION_DATA) \
                or self._alerts is None or self._transport is None:
            return
        if len(data) < _ALERT_LENGTH or self._alerts.take(now) is not None:
            return
        self.unknown_session_alerts += 1
        self._send_alert(key, _ALERT_UNEXPECTED_MESSAGE)

    def _send_alert(self, key: tuple[str, int], description: int) -> None:
        """An unprotected (epoch 0) fatal alert to ``key``. Its sequence number comes from a counter far above those
        of any handshake (from 2^40), so a client's replay window does not drop it."""
        if self._transport is None:
            return
        alert = bytes([_CT_ALERT, 0xFE, 0xFD, 0, 0]) + self._alert_seq.to_bytes(6, "big") + \
            bytes([0, 2, _LEVEL_FATAL, description])
        self._alert_seq = max(self._alert_seq + 1, _ALERT_SEQ_BASE) % (1 << 48)
        with contextlib.suppress(OSError):
            self._transport.sendto(alert, self._sockaddr(key))

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
        if failed is not None and peer._failure is None:
            # the client's Finished did not verify (a wrong key, an unknown identity's decoy key, or a refused
            # handshake: all alike): tell it at once with decrypt_error (RFC 5246 7.4.9) rather than let it wait out
            # its retransmissions; only peers past the cookie exchange get here, one alert per key exchange
            self._send_alert(peer._key, _ALERT_DECRYPT_ERROR)
            peer._failure = failed
        if peer._failure is not None:
            self._evict(peer, DtlsSessionClosedError(peer._failure), reset=True)
        elif peer.state == _CONNECTED and peer._key in self._handshakes:
            self._established(peer)
        if failed is not None:
            self._handshake_failed(peer, failed, now)
        self._arm_retransmit()

    def _judge_attempt(self, peer: DtlsRemote, data: bytes) -> str | None:
        """Why the key exchange of ``peer`` failed with this datagram, or None (no failure, or not known yet).
        An unknown identity or a refused handshake got a decoy key: like a wrong key, it fails at the Finished."""
        if not peer._attempt:
            return None
        if peer.state == _CONNECTED:
            peer._attempt = False
            return None
        reason = None
        if peer._failure is not None:
            reason = f"handshake ended: {peer._rejected or peer._failure}"
        elif _has_encrypted_handshake(data):
            reason = peer._rejected or "Finished did not verify (wrong PSK?)"
        if reason is not None:
            peer._attempt = False
        return reason

    def _handshake_failed(self, peer: DtlsRemote, reason: str, now: float) -> None:
        self.handshakes_failed += 1
        identity = peer.identity or b""
        self.log.info("DTLS handshake from %s (identity %r) failed: %s", peer.hostinfo, identity, reason)
        refused, peer._refused = peer._refused, False
        if self.guard is None or refused:  # a refused attempt counts nowhere
            return
        address = _host_text(peer._key)
        for tripped in self.guard.failed(address, identity, peer._known, now):
            self._report_lockout(peer, address, identity, tripped, reason)

    def _report_lockout(self, peer: DtlsRemote, address: str, identity: bytes, tripped: Tripped,
                        reason: str) -> None:
        assert self.lockout is not None
        self.log.warning("DTLS: %d failed handshakes counted per %s (address %s, identity %r): %s",
                         tripped.failures, tripped.scope, address, identity,
                         f"refusing for {tripped.seconds:g} s" if tripped.seconds else "reported, nothing refused")
        if self._on_security_event is None:
            return
        data: dict[str, object] = {
            "address": address, "identity": identity.decode("utf-8", "backslashreplace"), "scope": tripped.scope,
            "failures": tripped.failures, "window": self.lockout.window, "seconds": tripped.seconds,
            "reason": reason}
        try:
            self._on_security_event(SECURITY_DTLS_LOCKOUT, data)
        except Exception:
            self.log.exception("the security event sink failed")

    def _established(self, peer: DtlsRemote) -> None:
        del self._handshakes[peer._key]
        if peer.identity is None or peer._rejected is not None:  # cannot happen: never serve such a session
            self._evict(peer, DtlsSessionClosedError("DTLS session without a valid identity"))
            return
        if self.guard is not None:
            self.guard.succeeded(_host_text(peer._key), peer.identity)
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
        """Application data of a session: decoded strictly (a malformed message gets the answer RFC 7252 gives, on
        the same session) and dispatched. Never raises: tinydtls' Cython callback would turn that into a
        SystemError and stop serving the session."""
        try:
            peer = self._sessions.get(session) or self._handshakes.get(session)
            if peer is None or peer.state != _CONNECTED or self._mman is None:
                return len(data)
            message, reply = decode_datagram(data, peer)
            if reply is not None and self._dtls is not None:
                self._dtls.write(peer._session, reply.encode())
            if message is not None:
                try:
                    udp.dispatch(self._mman, message)
                except Exception:  # decode_datagram never raises: this is our own bug, with its traceback
                    self.log.exception("dispatching a DTLS message from %s failed", peer.hostinfo)
        except Exception as e:
            MALFORMED("handling a DTLS message from %s failed: %s", session[0], type(e).__name__)
        return len(data)

    def _on_write(self, session: tuple[str, int], data: bytes) -> int:
        if self._transport is None:
            return -1
        if self._current is None and self._hello_reply is None and len(data) > 13 and data[0] == _CT_HANDSHAKE \
                and data[3:5] == b"\0\0":
            self._hello_reply = data[13]  # what tinydtls answered a ClientHello with first (see _client_hello)
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
                          on_security_event: SecurityEventSink | None = None, backoff_after: int = 3,
                          backoff_base: float = 1.0, unknown_session_alerts: float = 100.0,
                          shared: bool = False) -> tuple[DtlsServerTransport, int]:
    """Add a coaps:// listener on ``host:port`` (0: any free port) to an existing context (e.g. beside its plain
    UDP transport). Returns the transport and the port it is bound to; ``context.shutdown()`` closes it.
    ``lockout`` (with ``backoff_after``, ``backoff_base``) refuses handshakes after failures, and
    ``on_security_event`` hears of each lockout (see the module docstring). ``shared``: the port is shared with
    sibling workers (see :func:`lwm2m_server.coap.udp.exclusive_context`)."""
    udp.tune_aiocoap()
    holder: list[DtlsServerTransport] = []

    async def construct(mman: interfaces.MessageManager) -> DtlsServerTransport:
        transport = DtlsServerTransport(mman, psk_for=psk_for, idle_timeout=idle_timeout, max_peers=max_peers,
                                        handshake_timeout=handshake_timeout, max_handshakes=max_handshakes,
                                        log=context.log, loop=asyncio.get_running_loop(), lockout=lockout,
                                        on_security_event=on_security_event, backoff_after=backoff_after,
                                        backoff_base=backoff_base, unknown_session_alerts=unknown_session_alerts)
        holder.append(transport)
        return transport

    await context._append_tokenmanaged_messagemanaged_transport(construct)
    transport = holder[0]
    try:
        bound = await transport._bind(host, port, shared=shared)
    except OSError:
        context.request_interfaces.pop()
        raise
    return transport, bound


async def dtls_server_context(site: interfaces.Resource | None, host: str, port: int = 0, *,
                              psk_for: PskStore | PskLookup, idle_timeout: float = 600.0, max_peers: int = 10000,
                              handshake_timeout: float = 30.0, max_handshakes: int = 1024,
                              log: logging.Logger | None = None, lockout: Lockout | None = None,
                              on_security_event: SecurityEventSink | None = None, backoff_after: int = 3,
                              backoff_base: float = 1.0, unknown_session_alerts: float = 100.0,
                              shared: bool = False) -> tuple[Context, int]:
    """A server context serving ``site`` over coaps:// on ``host:port`` (port 0: any free port), mirroring
    :func:`lwm2m_server.coap.udp.exclusive_context`. Raises OSError (EADDRINUSE) when the port is taken.
    ``await context.shutdown()`` ends every session (close_notify) and frees the port. The transport (for
    :meth:`~DtlsServerTransport.evict` and friends) is ``dtls_transport(context)``."""
    context = Context(loop=asyncio.get_running_loop(), serversite=site,
                      loggername=(log or _log).name)
    try:
        _, bound = await add_dtls_server(context, host, port, psk_for=psk_for, idle_timeout=idle_timeout,
                                         max_peers=max_peers, handshake_timeout=handshake_timeout,
                                         max_handshakes=max_handshakes, lockout=lockout,
                                         on_security_event=on_security_event, backoff_after=backoff_after,
                                         backoff_base=backoff_base, unknown_session_alerts=unknown_session_alerts,
                                         shared=shared)
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
    An epoch-0 fatal alert from the server on an established session (the server lost it, e.g. restarted: see
    :meth:`DtlsServerTransport._unknown_session`) ends the session at once, failing what is pending on it, so the
    next request handshakes again (tinydtls itself drops such records). Anyone who can send datagrams from the
    server's address can make the client handshake again this way; it cannot read or inject anything.
    """
    context = await Context.create_client_context(transports=["tinydtls"], loggername=loggername)
    context.serversite = site
    _restart_aware(context)
    base = server_uri.rstrip("/")
    context.client_credentials.load_from_dict(
        {base + "/*": {"dtls": {"psk": bytes(psk), "client-identity": bytes(identity)}}})
    return context


def _restart_aware(context: Context) -> None:
    """Make the tinydtls client transport of ``context`` end a session on an epoch-0 fatal alert (see
    :func:`dtls_client_context`)."""
    from aiocoap.transports import tinydtls as client

    class SingleConnection(client.DTLSClientConnection.SingleConnection):  # type: ignore[name-defined,misc]
        def datagram_received(self, data: bytes, addr: Any) -> None:
            parent = self.parent()
            code = _epoch0_fatal_alert(data)
            if parent is not None and code is not None and parent._queue is None:  # established
                parent._inject_error(client.FatalDTLSError(code))
                return
            super().datagram_received(data, addr)

    class Connection(client.DTLSClientConnection):  # type: ignore[name-defined,misc]
        pass

    Connection.SingleConnection = SingleConnection
    for interface in context.request_interfaces:
        messages = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        if isinstance(messages, client.MessageInterfaceTinyDTLS):
            def connection_for_address(host: str, port: int, psk_id: bytes, psk: bytes,
                                       pool: Any = messages) -> Any:
                key = (host, port, psk_id)
                found = pool._pool.get(key)
                if found is None:
                    found = pool._pool[key] = Connection(host, port, psk_id, psk, pool)
                return found

            messages._connection_for_address = connection_for_address

"""UDP contexts that own their port.

aiocoap binds with SO_REUSEPORT, so on Linux a second socket of the same user can bind a port already in use (a
second server on 5683 would silently share its traffic), and a port-0 bind may be handed a port another such
socket holds. :func:`exclusive_context` refuses a port in use, clears SO_REUSEPORT right after binding (nobody can
join the port afterwards) and keeps, per process, the set of ports it handed out.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import errno
import functools
import ipaddress
import secrets
import socket
from typing import Any, Protocol

from aiocoap import Context, Message, interfaces, messagemanager, protocol, tokenmanager
from aiocoap.numbers import TransportTuning
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.transports import udp6

from lwm2m_server.coap import datagrams
from lwm2m_server.coap.datagrams import decode_datagram, encode_message, uint_bytes
from lwm2m_server.coap.download_requests import parse_download
from lwm2m_server.coap.raw_exchange import send_datagram
from lwm2m_server.coap.registration_requests import CON, encode_answer, parse_registration
from lwm2m_server.coap.responses import error_response

_IN_USE: set[tuple[str, int]] = set()


def _hold(host: str, port: int) -> socket.socket:
    """A socket holding ``host:port`` (0: a free port the kernel picks) until aiocoap's own socket is bound there.

    It binds without SO_REUSEPORT, so the port is one nobody holds (raises OSError when ``port`` is taken), then
    marks itself SO_REUSEPORT so that aiocoap's socket (which always binds with it) can join. Closing a probe
    before aiocoap binds (as this once did) left a window in which another *process* could probe the same free
    port, and both aiocoap sockets then shared it: the kernel delivered one device's answers to the other's
    socket, and that device never registered (a stall of 2 x 5,000 simulated devices, once in a while).
    Close it once aiocoap's socket is bound and has SO_REUSEPORT cleared."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    holder = socket.socket(family, kind, proto)
    try:
        holder.bind(address)
        if hasattr(socket, "SO_REUSEPORT"):
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except BaseException:
        holder.close()
        raise
    return holder


def bound_socket(context: Context) -> socket.socket:
    """The UDP socket of an aiocoap context made with ``transports=["udp6"]``."""
    for interface in context.request_interfaces:
        messages = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        transport = getattr(messages, "transport", None)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            return sock  # type: ignore[no-any-return]
    raise RuntimeError("cannot find the UDP socket of the aiocoap context")


def _message_manager(context: Context) -> Any:
    for interface in context.request_interfaces:
        messages = getattr(interface, "token_interface", None)
        if messages is not None and hasattr(messages, "_recent_messages"):
            return messages
    return None


def slim_duplicate_cache(context: Context) -> bool:
    """Keep aiocoap's duplicate-detection cache small: store each response without the request it answers.

    aiocoap keeps every response for EXCHANGE_LIFETIME (247 s) so that a retransmitted request gets the same
    answer (RFC 7252 4.5). The stored response references its request, with the request's payload and options
    (a Register's whole link payload), which a re-send never reads; at thousands of registrations a minute that
    was most of the server's memory per registration. The cache keeps a shallow copy without it. Returns False
    (and changes nothing) if this aiocoap has no such cache.
    """
    manager = _message_manager(context)
    if manager is None or not hasattr(manager, "_store_response_for_duplicates"):
        return False
    recent = manager._recent_messages = _RecentMessages(manager._recent_messages)

    def store_response_for_duplicates(message: Message) -> None:
        key = (message.remote, message.mid)
        if key in recent:
            request = message.request
            if (request is not None and request.code == Code.GET and message.opt.block2 is not None
                    and message.opt.observe is None):
                del recent[key]  # a block of a download: GET is safe, a retransmission is simply served again
                return
            slim = copy.copy(message)
            slim.request = None
            recent[key] = slim

    manager._store_response_for_duplicates = store_response_for_duplicates
    return True


class _RecentMessages(dict):  # type: ignore[type-arg]
    """aiocoap's duplicate cache, whose entries it drops ``EXCHANGE_LIFETIME`` after they came with ``pop(key)``:
    an entry we dropped first (a block of a download) must not make that pop raise (it did: one logged KeyError
    traceback per block served, 247 s later, millions of lines in a long campaign)."""

    def pop(self, key: Any, *default: Any) -> Any:
        return super().pop(key, None)


@functools.lru_cache(maxsize=4096)
def _is_multicast(address: str) -> bool:
    return ipaddress.ip_address(address).is_multicast


def tune_aiocoap() -> None:
    """Patch aiocoap, for every context of this process (server, bootstrap server, simulated devices); idempotent.

    * Speed: profiles of block-wise transfers showed aiocoap parsing the peer's IP address with ``ipaddress``
      about three times per message (multicast checks) and formatting ``repr`` of every request to name its task:
      together about a fifth of the server's CPU. Address parsing is cached by address text (the results never
      change), and the render task gets a constant name.
    * Malformed datagrams: plain UDP (and aiocoap's DTLS client) decode through
      :func:`~lwm2m_server.coap.datagrams.decode_datagram`, which answers or drops what RFC 7252 rejects
      (aiocoap raised a traceback per datagram on an option that is not valid UTF-8).
    * Tokens: every request token is 8 random bytes (RFC 7252 5.3.1; aiocoap counted up from a random start).
    * Responses, ACKs and RSTs that match nothing are logged through the rate-limited
      :data:`~lwm2m_server.coap.datagrams.UNMATCHED` (aiocoap wrote two or three INFO lines each); an
      unmatched CON response is still answered with an RST.
    """
    cls: Any = udp6.UDP6EndpointAddress
    if getattr(cls, "_scratch_tuned", False):
        return
    cls._strip_v4mapped = staticmethod(functools.lru_cache(maxsize=4096)(cls._strip_v4mapped))
    cls.is_multicast = property(lambda self: _is_multicast(self._plainaddress().split("%", 1)[0]))
    cls.is_multicast_locally = property(lambda self: _is_multicast(self._plainaddress_local()))

    def render_to_pipe(self: Context, pipe: Any) -> None:
        protocol.run_driving_pipe(protocol.error_to_message(pipe, self.log), self._render_to_pipe(pipe),
                                  name="Rendering")

    protocol.Context.render_to_pipe = render_to_pipe  # type: ignore[method-assign]
    udp6.MessageInterfaceUDP6.datagram_msg_received = _udp_datagram_received
    _tune_dtls_client()
    tokenmanager.TokenManager.next_token = _random_token  # type: ignore[method-assign]
    _quiet_unmatched()
    _allow_nstart()
    cls._scratch_tuned = True


class GatewayTuning(TransportTuning):  # type: ignore[misc]
    """CoAP tuning of requests relayed through an LwM2M gateway: up to ``NSTART`` of them outstanding at once to the
    gateway (RFC 7252 4.7 lets NSTART be raised by configuration; the default 1 would make every end device behind
    a gateway wait for every other's round trip over its slow local link)."""

    NSTART = 8


def _nstart(message: Any) -> int:
    return max(1, int(getattr(message.transport_tuning, "NSTART", 1)))


def _allow_nstart() -> None:
    """aiocoap keeps NSTART = 1 per remote (a backlog per remote while one CON is outstanding); let a message's
    ``transport_tuning.NSTART`` raise it for its remote. Invariant kept: a remote has a backlog entry while it has
    an outstanding CON exchange, and a backlogged message is sent once fewer than its NSTART are outstanding."""
    manager: Any = messagemanager.MessageManager
    original_send_message = manager.send_message

    def outstanding(self: Any, remote: Any) -> int:
        return sum(1 for r, _ in self._active_exchanges if r == remote)

    def send_message(self: Any, message: Message, messageerror_monitor: Any) -> None:
        backlogs = self._backlogs
        remote = message.remote
        if _nstart(message) > 1 and remote in backlogs and not backlogs[remote] \
                and self._active_exchanges is not None and outstanding(self, remote) < _nstart(message):
            held = backlogs.pop(remote)  # room for one more: do not let the original put it in the backlog
            try:
                original_send_message(self, message, messageerror_monitor)
            finally:
                backlogs.setdefault(remote, held)
            return
        original_send_message(self, message, messageerror_monitor)

    def continue_backlog(self: Any, remote: Any) -> None:
        backlog = self._backlogs.get(remote)
        if backlog is None:  # a timed-out exchange dropped it while others were outstanding
            if any(r == remote for r, _ in self._active_exchanges):
                self._backlogs[remote] = []
            return
        count = outstanding(self, remote)
        while backlog and count < _nstart(backlog[0][0]):
            next_message, messageerror_monitor = backlog.pop(0)
            self._send_initially(next_message, messageerror_monitor)
            if next_message.mtype is Type.CON:
                count += 1
        if not backlog and count == 0:
            del self._backlogs[remote]

    original_retransmit = manager._retransmit

    def retransmit(self: Any, message: Message, timeout: float, retransmission_counter: int) -> None:
        # a final timeout deletes the remote's backlog entry, which an earlier one of several may have done already
        self._backlogs.setdefault(message.remote, [])
        original_retransmit(self, message, timeout, retransmission_counter)

    manager.send_message = send_message
    manager._continue_backlog = continue_backlog
    manager._retransmit = retransmit


def _random_token(self: Any) -> bytes:
    return secrets.token_bytes(8)


def _udp_datagram_received(self: Any, data: bytes, ancdata: Any, flags: int, address: Any) -> None:
    """aiocoap's udp6 receive path, through decode_datagram (the reply, if any, goes out on the same socket)."""
    pktinfo = None
    for level, kind, value in ancdata:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
            pktinfo = value
    remote = udp6.UDP6EndpointAddress(address, self, pktinfo=pktinfo)
    raw = getattr(self, "_scratch_raw", None)
    if raw is not None and raw.received(data, remote):
        return  # an answer to a request sent raw (lwm2m_server.coap.raw_exchange)
    if _answered_registration(self, data, remote) or _answered_download(self, data, remote):
        return
    message, reply = decode_datagram(data, remote)
    if reply is not None:
        self.send(reply)
    if message is not None:
        try:
            dispatch(self._ctx, message)
        except Exception:
            self.log.exception("dispatching a message from %s failed", message.remote.hostinfo)


class ImmediateAnswers(Protocol):
    """A server site that answers some requests at once, synchronously (the Registration interface): those skip
    aiocoap's request machinery (a task, a pipe and the token and block-wise layers per request)."""

    def answers_at_once(self, request: Message) -> bool:
        """Whether :meth:`answer` takes this request (a cheap check of its path)."""
        ...

    def answer(self, request: Message) -> Message:
        """The response (errors mapped to their response too); never raises."""
        ...


def _immediate(manager: Any) -> ImmediateAnswers | None:
    found = getattr(manager, "_scratch_immediate", False)
    if found is False:
        site = getattr(getattr(getattr(manager, "token_manager", None), "context", None), "serversite", None)
        found = site if callable(getattr(site, "answers_at_once", None)) else None
        manager._scratch_immediate = found
    return found  # type: ignore[no-any-return,return-value]


class _Answers:
    """The answers given at once, for duplicate detection (RFC 7252 4.5): ``(peer address, Message ID)`` -> the
    encoded answer, kept ``EXCHANGE_LIFETIME`` (247 s) and swept in arrival order. Per entry a key, the answer's
    bytes and its expiry: a few hundred bytes, where aiocoap's cache keeps a Message object, a timer handle and a
    callback per request (about 2.5 KiB: most of the server's memory per registration while it is fresh)."""

    __slots__ = ("_answers", "_order")

    def __init__(self) -> None:
        self._answers: dict[tuple[Any, int], tuple[bytes, float]] = {}
        self._order: collections.deque[tuple[float, tuple[Any, int]]] = collections.deque()

    def get(self, key: tuple[Any, int], now: float) -> bytes | None:
        found = self._answers.get(key)
        return found[0] if found is not None and found[1] > now else None

    def put(self, key: tuple[Any, int], answer: bytes, now: float, lifetime: float) -> None:
        order, answers = self._order, self._answers
        while order and order[0][0] <= now:  # sweep what expired (an entry stored again since is newer: kept)
            _, old = order.popleft()
            entry = answers.get(old)
            if entry is not None and entry[1] <= now:
                del answers[old]
        answers[key] = (answer, now + lifetime)
        order.append((now + lifetime, key))

    def __len__(self) -> int:
        return len(self._answers)


def _answers(manager: Any) -> _Answers:
    found: _Answers | None = getattr(manager, "_scratch_answers", None)
    if found is None:
        found = manager._scratch_answers = _Answers()
    return found


def _send_answer(manager: Any, response: Message, data: bytes) -> None:
    """Put an encoded answer on the wire: straight to the UDP socket (aiocoap would encode it again), or through
    the message interface (DTLS encrypts it)."""
    interface = manager.message_interface
    remote = response.remote
    if isinstance(interface, udp6.MessageInterfaceUDP6):
        send_datagram(interface, data, remote)
    else:
        interface.send(response)


def dispatch(manager: Any, message: Message) -> None:
    """Hand a decoded message to aiocoap's message layer, except a request the site answers at once: that one is
    answered here, as aiocoap would (RFC 7252): a CON gets its answer piggybacked on the ACK, a NON a NON; the
    encoded answer is kept EXCHANGE_LIFETIME (:class:`_Answers`) and a duplicate (same peer address and Message ID)
    gets it again, unprocessed. A request with Block1, Block2 or Observe goes the long way."""
    site = _immediate(manager)
    opt = message.opt
    if (site is None or not message.code.is_request() or message.mtype not in (Type.CON, Type.NON)
            or opt.block1 is not None or opt.block2 is not None or opt.observe is not None
            or not site.answers_at_once(message)):
        manager.dispatch_message(message)
        return
    answers, now = _answers(manager), manager.loop.time()
    key = (message.remote.sockaddr, message.mid)
    again = answers.get(key, now)
    if again is not None:
        if message.mtype is Type.CON:  # a NON's duplicate is not answered again
            _send_answer(manager, Message.decode(again, message.remote.as_response_address()), again)
        return
    response = site.answer(message)
    response.token = message.token
    response.remote = message.remote.as_response_address()
    if message.mtype is Type.CON:
        response.mtype, response.mid = Type.ACK, message.mid
    else:
        response.mtype, response.mid = Type.NON, manager._next_message_id()
    data = response.encode()
    answers.put(key, data, now, message.transport_tuning.EXCHANGE_LIFETIME)
    _send_answer(manager, response, data)


_TUNING = TransportTuning()  # aiocoap's defaults (what a Message carries unless told otherwise)


def _answered_registration(interface: Any, data: bytes, remote: Any) -> bool:
    """Answer a plain Register, Update or De-register straight from its datagram (:mod:`registration_requests`:
    no aiocoap Message is made for it, nor for its answer), as :func:`dispatch` would answer it: a CON piggybacked on
    the ACK, a NON with a NON, the encoded answer kept EXCHANGE_LIFETIME for a duplicate. False (nothing done) for
    any other datagram, or a site without the Registration interface."""
    manager = interface._ctx
    site = _immediate(manager)
    if site is None or not hasattr(site, "answer_registration"):
        return False
    request = parse_registration(data, remote)
    if request is None:
        return False
    answers, now = _answers(manager), manager.loop.time()
    key = (remote.sockaddr, request.mid)
    again = answers.get(key, now)
    if again is None:
        con = request.mtype == CON
        mtype, mid = (Type.ACK, request.mid) if con else (Type.NON, manager._next_message_id())
        try:
            code, location = site.answer_registration(request)
            again = encode_answer(int(mtype), mid, request.token, code, location)
        except Exception as e:
            again = _error_answer(e, mtype, mid, request.token)
        answers.put(key, again, now, _TUNING.EXCHANGE_LIFETIME)
    elif request.mtype != CON:
        return True  # a NON's duplicate is not answered again
    send_datagram(interface, again, remote)
    return True


def _error_answer(e: Exception, mtype: Type, mid: int, token: bytes) -> bytes:
    """The encoded answer to a request read from the datagram that raised ``e``: mapped in the one place errors
    become responses (Max-Age and all)."""
    response = error_response(e)
    response.mtype, response.mid, response.token = mtype, mid, token
    return bytes(response.encode())


_OPAQUE = bytes((42,))  # Content-Format application/octet-stream


def _answered_download(interface: Any, data: bytes, remote: Any) -> bool:
    """Answer a plain block-wise GET of a published package (:mod:`download_requests`) straight from its datagram,
    as the file server's resource would: piggybacked on the ACK of a CON, a NON for a NON. A duplicate is answered
    afresh (a GET of a block is safe and idempotent, RFC 7252 4.5: nothing is kept per block, where keeping a
    kilobyte per block for EXCHANGE_LIFETIME would hold a package per device). False for any other datagram."""
    manager = interface._ctx
    site = _immediate(manager)
    files = getattr(site, "downloads", None) if site is not None else None
    if files is None:
        return False
    request = parse_download(data, files.mount)
    if request is None:
        return False
    mtype, mid = (Type.ACK, request.mid) if request.mtype == CON else (Type.NON, manager._next_message_id())
    try:
        answer = files.answer(request.name, etags=request.etags, block2=request.block2)
        options = [(4, answer.etag)]
        if answer.code == int(Code.CONTENT):
            options.append((12, _OPAQUE))
            if answer.block2 is not None:
                number, more, szx = answer.block2
                options.append((23, uint_bytes((number << 4) | (int(more) << 3) | szx)))
            if answer.size2 is not None:
                options.append((28, uint_bytes(answer.size2)))
        out = encode_message(int(mtype), answer.code, mid, request.token, options, bytes(answer.payload))
    except Exception as e:
        out = _error_answer(e, mtype, mid, request.token)
    send_datagram(interface, out, remote)
    return True


def _tune_dtls_client() -> None:
    """aiocoap's DTLS client (simulated devices over coaps://) reads through decode_datagram too."""
    try:
        from aiocoap.transports import tinydtls
    except ImportError:  # no DTLSSocket: no DTLS client either
        return

    def read(self: Any, sender: Any, data: bytes) -> int:  # a tinydtls callback: must not raise
        message, reply = decode_datagram(data, self)
        if reply is not None:
            self.send(reply.encode())
        if message is not None:
            try:
                self.coaptransport.ctx.dispatch_message(message)
            except Exception:
                self.log.exception("dispatching a message from the DTLS server failed")
        return len(data)

    tinydtls.DTLSClientConnection._read = read


def _quiet_unmatched() -> None:
    """Stray responses, ACKs and RSTs: the same handling as aiocoap's, logged through UNMATCHED instead."""
    manager: Any = messagemanager.MessageManager
    original_dispatch, original_process = manager.dispatch_message, tokenmanager.TokenManager.process_response

    def process_response(self: Any, response: Message) -> bool:
        pending = self.outgoing_requests
        if pending is None or ((response.token, response.remote) not in pending
                               and (response.token, None) not in pending):
            return False
        return bool(original_process(self, response))

    def dispatch_message(self: Any, message: Message) -> None:
        mtype, code = message.mtype, message.code
        exchange = mtype in (Type.ACK, Type.RST) and (message.remote, message.mid) in self._active_exchanges
        if mtype in (Type.ACK, Type.RST) and not exchange and code == Code.EMPTY:
            datagrams.UNMATCHED("ignored an Empty %s from %s that matches no exchange", mtype.name,
                                message.remote.hostinfo)
            return
        if not code.is_response() or mtype is Type.RST:
            original_dispatch(self, message)
            return
        if exchange:
            self._remove_exchange(message)
        if self._process_response(message):
            if mtype is Type.CON:
                self._send_empty_ack(message.remote, message.mid, reason="acknowledging incoming response")
            return
        answered = mtype is Type.CON and not message.remote.is_multicast_locally
        if answered:
            reset = Message(code=Code.EMPTY, _mtype=Type.RST, _mid=message.mid)
            reset.remote = message.remote.as_response_address()
            self._send_initially(reset)
        datagrams.UNMATCHED("%s a response from %s that matches no request", "reset" if answered else "ignored",
                            message.remote.hostinfo)

    manager.dispatch_message = dispatch_message
    tokenmanager.TokenManager.process_response = process_response  # type: ignore[method-assign]


def bound_port(context: Context) -> int:
    return int(bound_socket(context).getsockname()[1])


async def exclusive_context(site: interfaces.Resource, host: str, port: int = 0, *, attempts: int = 8,
                            shared: bool = False) -> tuple[Context, int]:
    """A server context on ``host:port`` (``port`` 0: any free port) that no other socket shares.
    Raises OSError (EADDRINUSE) when a given port is taken. Call :func:`release` after shutting it down.

    ``shared``: the port is shared with sibling worker processes (SO_REUSEPORT kept: the kernel hashes each
    sender's address and port to one of the sockets, so a device's datagrams always reach the same worker while
    the set of workers stays the same). Any process of the same user may then join the port: only for workers."""
    tune_aiocoap()
    if shared:
        if not port:
            raise ValueError("a shared port is a given port (every worker binds the same one)")
        context = await Context.create_server_context(site, bind=(host, port), transports=["udp6"])
        slim_duplicate_cache(context)
        return context, int(bound_socket(context).getsockname()[1])
    last: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        try:
            holder = _hold(host, port)
        except OSError as e:
            if port:
                raise
            last = e
            continue
        try:
            chosen = int(holder.getsockname()[1])
            context = await Context.create_server_context(site, bind=(host, chosen), transports=["udp6"])
            sock = bound_socket(context)
            if hasattr(socket, "SO_REUSEPORT"):  # nobody joins the port from now on
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
        except OSError as e:
            if port:
                raise
            last = e
            continue
        finally:
            holder.close()
        key = (host, int(sock.getsockname()[1]))
        if key not in _IN_USE:
            _IN_USE.add(key)
            slim_duplicate_cache(context)
            return context, key[1]
        await context.shutdown()
        last = OSError(errno.EADDRINUSE, f"UDP port {key[1]} on {host} is in use in this process")
        if port:
            raise last
    raise OSError(errno.EADDRINUSE, f"no UDP port of its own on {host}") from last


def release(host: str, port: int) -> None:
    _IN_USE.discard((host, port))

"""A simulated device's network link: datagram loss, delay and jitter in both directions, and outages.

A :class:`Link` belongs to one device and outlives its connections: :meth:`Link.attach` wraps every aiocoap context
the device opens (its server connection over UDP or DTLS, which also carries its pulls, and its bootstrap
connection) from the outside, at the datagram level, so CoAP retransmission and DTLS handshake retransmission are
what recovers:

- UDP (aiocoap ``udp6``): the transport's ``sendmsg`` and the interface's ``datagram_msg_received``;
- DTLS client (aiocoap ``tinydtls``): each session opens its own datagram endpoint through the interface's event
  loop, so the interface gets a loop whose ``create_datagram_endpoint`` wraps the endpoint's ``sendto`` and its
  protocol's ``datagram_received`` (records are lost or delayed whole, encrypted, as on a real network).

Invariants: every datagram, each way, is dropped with probability ``loss`` and otherwise delivered after
``delay`` +/- ``jitter`` seconds (never below 0; jitter may reorder datagrams), drawn from the link's own seeded
RNG, so a device's faults do not depend on other devices; while the link is down (:attr:`Link.up` False, an
outage) nothing passes either way, and a datagram sent before the outage is still delivered (it was on the wire);
a delayed datagram whose socket closed meanwhile is dropped; :meth:`Link.close` cancels every delayed datagram.
The counters also count, at the CoAP layer, the device's retransmitted confirmable messages and the duplicates
it received, so a test can see that retransmission did the recovering.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiocoap import Context
from aiocoap.numbers.types import CON

log = logging.getLogger(__name__)

_RECENT_MIDS = 256  # confirmable message ids remembered to recognise a retransmission


class LinkError(Exception):
    """A context whose transport the link does not know how to impair."""


@dataclass(frozen=True, slots=True)
class LinkConditions:
    """How bad the link is: ``loss`` (probability 0..1 that a datagram is lost, per datagram and direction),
    ``delay`` seconds added to every datagram, +/- ``jitter`` seconds drawn uniformly (the sum never below 0);
    ``delayed`` says which way delay and jitter apply: "both", "out" (device to server) or "in"."""

    loss: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    delayed: str = "both"

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss is a probability between 0 and 1")
        if self.delay < 0 or self.jitter < 0:
            raise ValueError("delay and jitter cannot be negative")
        if self.delayed not in ("both", "out", "in"):
            raise ValueError('delayed is "both", "out" or "in"')

    @property
    def impaired(self) -> bool:
        """True when datagrams may be lost or delayed."""
        return self.loss > 0 or self.delay > 0 or self.jitter > 0


@dataclass(slots=True)
class LinkCounters:
    """What the link did. ``sent``/``received``: datagrams handed to / delivered by the link; ``dropped_out`` and
    ``dropped_in``: lost by ``loss``; ``blocked``: dropped because the link was down; ``delayed``: held back;
    ``retransmissions``: confirmable CoAP messages the device sent again; ``duplicates``: CoAP messages that reached
    the device again (the peer retransmitted); ``bytes_sent``/``bytes_received``: the bytes of those datagrams."""

    sent: int = 0
    received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    dropped_out: int = 0
    dropped_in: int = 0
    blocked: int = 0
    delayed: int = 0
    retransmissions: int = 0
    duplicates: int = 0


class Link:
    """One device's link to the network; see the module docstring for what it guarantees."""

    def __init__(self, conditions: LinkConditions | None = None, seed: int | str | None = None) -> None:
        self.conditions = conditions or LinkConditions()
        self.counters = LinkCounters()
        self.up = True
        self._rng = random.Random(seed)
        self._pending: set[asyncio.TimerHandle] = set()

    def __repr__(self) -> str:
        c = self.conditions
        return f"<Link loss={c.loss:g} delay={c.delay:g}s jitter={c.jitter:g}s {'up' if self.up else 'down'}>"

    # ------------------------------------------------------------------ wiring

    def attach(self, context: Context) -> None:
        """Send and receive every datagram of ``context`` through this link (call right after creating it).
        Raises :class:`LinkError` for a transport other than aiocoap's udp6 or tinydtls client."""
        from aiocoap.transports.tinydtls import MessageInterfaceTinyDTLS
        from aiocoap.transports.udp6 import MessageInterfaceUDP6

        attached = 0
        for interface in context.request_interfaces:
            manager = getattr(interface, "token_interface", None)
            messages = getattr(manager, "message_interface", None)
            if messages is None:
                continue
            if isinstance(messages, MessageInterfaceUDP6):
                self._wrap_udp(messages)
            elif isinstance(messages, MessageInterfaceTinyDTLS):
                messages.loop = _LinkLoop(messages.loop, self)
            else:
                raise LinkError(f"cannot impair a {type(messages).__name__} transport")
            self._count_coap(manager)
            attached += 1
        if not attached:
            raise LinkError("the context has no datagram transport to impair")

    def close(self) -> None:
        """Forget every datagram still held back (they are never delivered)."""
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()

    def _wrap_udp(self, messages: Any) -> None:
        transport = messages.transport
        send, deliver, close = transport.sendmsg, messages.datagram_msg_received, transport.close
        closed = [False]  # aiocoap's recvmsg transport has no is_closing()

        def sendmsg(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
            self._outgoing(lambda: send(data, ancdata, flags, address), lambda: closed[0], len(data))

        def datagram_msg_received(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
            self._incoming(lambda: deliver(data, ancdata, flags, address), lambda: closed[0], len(data))

        def closing() -> None:
            closed[0] = True
            close()

        transport.sendmsg = sendmsg
        transport.close = closing
        messages.datagram_msg_received = datagram_msg_received

    def _count_coap(self, manager: Any) -> None:
        """Count retransmitted CONs and received duplicates on aiocoap's message manager (best effort: nothing is
        counted if this aiocoap lacks the hooks)."""
        counters = self.counters
        send_via_transport = getattr(manager, "_send_via_transport", None)
        deduplicate = getattr(manager, "_deduplicate_message", None)
        if send_via_transport is None or deduplicate is None:
            return
        recent: collections.OrderedDict[tuple[Any, int], None] = collections.OrderedDict()

        def counting_send(message: Any) -> None:
            if message.mtype is CON:
                key = (message.remote, message.mid)
                if key in recent:
                    counters.retransmissions += 1
                else:
                    recent[key] = None
                    if len(recent) > _RECENT_MIDS:
                        recent.popitem(last=False)
            send_via_transport(message)

        def counting_deduplicate(message: Any) -> bool:
            duplicate = bool(deduplicate(message))
            if duplicate:
                counters.duplicates += 1
            return duplicate

        manager._send_via_transport = counting_send
        manager._deduplicate_message = counting_deduplicate

    # ------------------------------------------------------------------ the datagrams

    def _delay(self, *, outgoing: bool) -> float:
        c = self.conditions
        if c.delayed == ("in" if outgoing else "out"):
            return 0.0
        if c.jitter:
            return max(0.0, c.delay + self._rng.uniform(-c.jitter, c.jitter))
        return c.delay

    def _outgoing(self, send: Callable[[], None], closed: Callable[[], bool], size: int = 0) -> None:
        self.counters.sent += 1
        self.counters.bytes_sent += size
        if not self.up:
            self.counters.blocked += 1
            return
        if self.conditions.loss and self._rng.random() < self.conditions.loss:
            self.counters.dropped_out += 1
            return
        delay = self._delay(outgoing=True)
        if delay <= 0:
            send()
            return
        self.counters.delayed += 1
        self._hold(delay, send, closed, outgoing=True)

    def _incoming(self, deliver: Callable[[], None], closed: Callable[[], bool], size: int = 0) -> None:
        if not self.up:
            self.counters.blocked += 1
            return
        if self.conditions.loss and self._rng.random() < self.conditions.loss:
            self.counters.dropped_in += 1
            return
        delay = self._delay(outgoing=False)
        if delay <= 0:
            self.counters.received += 1
            self.counters.bytes_received += size
            deliver()
            return
        self.counters.delayed += 1
        self._hold(delay, deliver, closed, outgoing=False, size=size)

    def _hold(self, delay: float, action: Callable[[], None], closed: Callable[[], bool], *, outgoing: bool,
              size: int = 0) -> None:
        def release() -> None:
            self._pending.discard(handle)
            if closed():
                return
            if not outgoing:
                if not self.up:  # the device went down while the datagram was on its way
                    self.counters.blocked += 1
                    return
                self.counters.received += 1
                self.counters.bytes_received += size
            try:
                action()
            except Exception as e:  # a socket error on a delayed send is a lost datagram
                log.debug("delayed datagram failed: %s", type(e).__name__)

        handle = asyncio.get_running_loop().call_later(delay, release)
        self._pending.add(handle)


class _LinkLoop:
    """The event loop as aiocoap's tinydtls client transport sees it: every datagram endpoint it opens (one per
    DTLS session) sends and receives through the link; everything else is the real loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, link: Link) -> None:
        self._loop = loop
        self._link = link

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_datagram_endpoint(self, factory: Callable[[], Any], *args: Any, **kwargs: Any) -> Any:
        link = self._link
        holder: list[Any] = []

        def closed() -> bool:
            return not holder or bool(holder[0].is_closing())

        def wrapped_factory() -> Any:
            protocol = factory()
            deliver = protocol.datagram_received

            def datagram_received(data: bytes, addr: Any) -> None:
                link._incoming(lambda: deliver(data, addr), closed, len(data))

            protocol.datagram_received = datagram_received
            return protocol

        transport, protocol = await self._loop.create_datagram_endpoint(wrapped_factory, *args, **kwargs)
        transport = cast(Any, transport)
        holder.append(transport)
        sendto = transport.sendto

        def impaired_sendto(data: bytes, addr: Any = None) -> None:
            link._outgoing(lambda: sendto(data) if addr is None else sendto(data, addr), closed, len(data))

        transport.sendto = impaired_sendto
        return transport, protocol


__all__ = ["Link", "LinkConditions", "LinkCounters", "LinkError"]

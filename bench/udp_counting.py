"""Counting every datagram of the simulated devices' sockets, for the bench drivers (child processes that run a
fleet: bench/campaign.py, bench/gateway.py, bench/delta.py). Importing it wraps the aiocoap udp6 transport of every
context ``client_sim.device`` makes from then on; :data:`WIRE` holds the counts (UDP payload bytes, datagrams each
way, sockets wrapped)."""

from __future__ import annotations

from typing import Any

import client_sim.device as device_module

__all__ = ["WIRE", "count_udp"]

WIRE = {"datagrams_out": 0, "datagrams_in": 0, "bytes_out": 0, "bytes_in": 0, "sockets": 0}
_exclusive_context = device_module.exclusive_context


def count_udp(context: Any) -> None:
    """Wrap the udp6 transports of ``context`` (the way client_sim.network does): count every datagram each way."""
    for interface in context.request_interfaces:
        messages = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        transport = getattr(messages, "transport", None)
        if transport is None or not hasattr(transport, "sendmsg"):
            continue
        send, deliver = transport.sendmsg, messages.datagram_msg_received

        def sendmsg(data: bytes, ancdata: Any, flags: int, address: Any, _send: Any = send) -> None:
            WIRE["datagrams_out"] += 1
            WIRE["bytes_out"] += len(data)
            _send(data, ancdata, flags, address)

        def received(data: bytes, ancdata: Any, flags: int, address: Any, _deliver: Any = deliver) -> None:
            WIRE["datagrams_in"] += 1
            WIRE["bytes_in"] += len(data)
            _deliver(data, ancdata, flags, address)

        transport.sendmsg = sendmsg
        messages.datagram_msg_received = received
        WIRE["sockets"] += 1


async def _counting_exclusive_context(*args: Any, **kwargs: Any) -> Any:
    context, port = await _exclusive_context(*args, **kwargs)
    count_udp(context)
    return context, port


device_module.exclusive_context = _counting_exclusive_context

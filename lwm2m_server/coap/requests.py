"""Requests a CoAP endpoint sends to a peer, over aiocoap: the one request primitive of the server's downlink
and the bootstrap server.

Invariant: a send the socket refuses because of another peer's ICMP error is made again (see
:func:`send_request`); a timeout or a transport error is raised as :class:`RequestTimeoutError` or
:class:`RequestFailedError` naming the peer, never as an aiocoap exception.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiocoap import Context, Message
from aiocoap import error as coap_error

from lwm2m_server.core.errors import RequestFailedError, RequestTimeoutError

log = logging.getLogger(__name__)

REFUSED_SEND_RETRIES = 2


async def send_request(context: Context, msg: Message, started: list[Any] | None = None, *,
                       handle_blockwise: bool = True) -> tuple[Any, Message]:
    """Send ``msg`` and wait for its answer: (the aiocoap request, the response). ``started`` gets each request
    made (the last one is live).

    A send the socket refuses (ECONNREFUSED raised by the send itself, not read from the error queue) is made again,
    at most REFUSED_SEND_RETRIES times: on Linux, an ICMP port unreachable from one peer of the server's shared UDP
    socket fails the next send to any peer, so a device that vanished would fail the requests of healthy devices
    sent at the same moment. A refusal read from the error queue is that device's own, and is raised."""
    for attempt in range(REFUSED_SEND_RETRIES + 1):
        pending = context.request(msg if attempt == 0 else msg.copy(mid=None), handle_blockwise=handle_blockwise)
        if started is not None:
            started.append(pending)
        try:
            return pending, await pending.response
        except coap_error.NetworkError as e:
            cause = e.__cause__
            if (attempt == REFUSED_SEND_RETRIES or not isinstance(cause, ConnectionRefusedError)
                    or "errqueue" in str(cause)):
                raise
            log.debug("send to %s refused by the socket (another peer's ICMP error); sending again", msg.remote)
    raise AssertionError("unreachable")


async def exchange(context: Context, request: Message, peer: str, timeout: float, *,
                   handle_blockwise: bool = True) -> Message:
    """``request`` (its ``remote`` set) and its answer within ``timeout`` seconds; RequestTimeoutError or
    RequestFailedError naming ``peer`` otherwise."""
    try:
        return (await asyncio.wait_for(send_request(context, request, handle_blockwise=handle_blockwise),
                                       timeout))[1]
    except (TimeoutError, coap_error.TimeoutError):
        raise RequestTimeoutError(f"{peer} did not answer within {timeout:g} s") from None
    except coap_error.Error as e:
        raise RequestFailedError(f"request to {peer} failed: {e}") from None

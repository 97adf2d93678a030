"""Push delivery: a block-wise (RFC 7959 Block1) Write of a package to a device resource, normally /5/0/0.

The driver sends one block at a time to the live remote of the device's registration, through the exchange of the
downlink port (:meth:`~lwm2m_server.transport.downlink.DownlinkSender.push`: the one way requests reach devices).
The first block carries Size1 (RFC 7959 section 4), the package's size, so a device without room answers 4.13 at
once and the push stops there, one block sent. The driver follows the device's lead on block size: a 2.31 Continue
whose Block1 names a smaller size switches to it from the next block on, and a 4.13 with a smaller Block1 size sends
the refused block again at that size. Lost messages are retransmitted by CoAP itself (CON); a device that lost the
transfer (4.08 Request Entity Incomplete) makes it start over, a bounded number of times. The whole push is bounded
in time.

A device reached directly over plain UDP gets its blocks through :mod:`lwm2m_server.coap.raw_exchange` (each
block a datagram written and answered without aiocoap's request machinery: a push of 1 MiB is 1,024 of them); a
DTLS device or one behind a gateway through the downlink port's aiocoap exchange. Both follow the same rules above.

Invariant: ``PushProgress.sent`` only counts bytes the device acknowledged, and never goes past the package size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from lwm2m_server.coap.datagrams import uint_bytes
from lwm2m_server.coap.raw_exchange import raw_exchanges
from lwm2m_server.coap.udp import GatewayTuning
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import ErrorResponseError, InvalidRequestError, RequestTimeoutError
from lwm2m_server.core.operations import uri_path as coap_uri_path
from lwm2m_server.core.paths import LwM2mPath

if TYPE_CHECKING:
    from lwm2m_server.transport.downlink import Route

DEFAULT_BLOCK_SIZE = 1024
PACKAGE = LwM2mPath.of(5, 0, 0)
MIN_SZX, MAX_SZX = 0, 6

Exchange = Callable[[Message, str, float], Awaitable[Message]]
"""One request to a device and its answer: ``(request, endpoint, timeout) -> response``; raises
RequestTimeoutError or RequestFailedError (see :meth:`DownlinkSender.exchange`)."""


@dataclass(frozen=True)
class PushProgress:
    """How far a push got: bytes and blocks the device acknowledged, at which block size."""

    sent: int
    total: int
    blocks: int
    block_size: int
    restarts: int = 0

    @property
    def done(self) -> bool:
        return self.sent == self.total


ProgressListener = Callable[[PushProgress], None]


@dataclass(frozen=True, slots=True)
class _BlockAnswer:
    """The device's answer to one block: its code, the size exponent of its Block1 (None: none), its Size1."""

    code: int
    block1_szx: int | None
    size1: int | None
    payload: bytes


_CONTINUE, _TOO_LARGE, _INCOMPLETE = int(Code.CONTINUE), int(Code.REQUEST_ENTITY_TOO_LARGE), \
    int(Code.REQUEST_ENTITY_INCOMPLETE)
_URI_PATH, _CONTENT_FORMAT, _BLOCK1, _SIZE1 = 11, 12, 27, 60


def size_exponent(block_size: int) -> int:
    """SZX for a block size of 16..1024 bytes (a power of two)."""
    if block_size < 16 or block_size > 1024 or block_size & (block_size - 1):
        raise InvalidRequestError(f"block size must be a power of two from 16 to 1024, not {block_size}")
    return block_size.bit_length() - 5


async def push_package(exchange: Exchange, route: Route, data: bytes, *,
                       path: LwM2mPath = PACKAGE,
                       block_size: int = DEFAULT_BLOCK_SIZE,
                       content_format: int = int(ContentFormat.OPAQUE),
                       request_timeout: float = 100.0,
                       total_timeout: float = 600.0,
                       max_restarts: int = 3,
                       on_progress: ProgressListener | None = None) -> PushProgress:
    """Write ``data`` to ``path`` of the device at ``route`` block-wise; returns the final progress or raises.

    Raises ErrorResponseError (the device's code) when the device refuses the package (a 4.13 without a smaller
    Block1 size: at once, nothing more is sent),
    RequestTimeoutError when a block is not answered or the push outlasts ``total_timeout``.
    """
    szx = size_exponent(block_size)
    segments = coap_uri_path(route.root_path, path)
    total = len(data)
    offset = blocks = restarts = 0
    raw = raw_exchanges(route.remote) if route.via is None else None
    encoded_path = [(_URI_PATH, s.encode()) for s in segments]

    async def send_block(number: int, more: bool, szx: int, chunk: bytes) -> _BlockAnswer:
        sized = total > len(chunk) or number > 0
        if raw is not None:
            options = [*encoded_path, (_CONTENT_FORMAT, uint_bytes(content_format))]
            if sized:
                options.append((_BLOCK1, uint_bytes((number << 4) | (int(more) << 3) | szx)))
            if number == 0:
                options.append((_SIZE1, uint_bytes(total)))
            answer = await raw.request(route.remote, int(Code.PUT), options, chunk, peer=route.endpoint,
                                       timeout=request_timeout)
            block1 = answer.uint(_BLOCK1)
            return _BlockAnswer(answer.code, None if block1 is None else block1 & 7, answer.uint(_SIZE1),
                                answer.payload)
        request = Message(code=Code.PUT, uri_path=segments, payload=chunk, content_format=content_format)
        if sized:
            request.opt.block1 = BlockOption.BlockwiseTuple(number, more, szx)
        if number == 0:
            request.opt.size1 = total  # lets the device refuse a package too large for it up front
        request.remote = route.remote
        if route.via is not None:
            request.transport_tuning = GatewayTuning()
        response = await exchange(request, route.endpoint, request_timeout)
        found = response.opt.block1
        return _BlockAnswer(int(response.code), None if found is None else found.size_exponent, response.opt.size1,
                            response.payload)

    def progress() -> PushProgress:
        return PushProgress(offset, total, blocks, 1 << (szx + 4), restarts)

    try:
        async with asyncio.timeout(total_timeout):
            while True:
                size = 1 << (szx + 4)
                number = offset >> (szx + 4)
                chunk = data[offset:offset + size]
                more = offset + size < total
                response = await send_block(number, more, szx, chunk)
                code, answer = response.code, response.block1_szx
                if code == _CONTINUE or (64 <= code < 96 and not more):  # 2.31, or a 2.xx success at the end
                    offset += len(chunk)
                    blocks += 1
                    if answer is not None and answer < szx:
                        szx = max(MIN_SZX, answer)  # the device prefers smaller blocks from now on
                    if on_progress is not None:
                        on_progress(progress())
                    if not more:
                        return progress()
                    if code != _CONTINUE:
                        raise ErrorResponseError(code, "the device ended the transfer before the last block")
                    continue
                if code == _TOO_LARGE and answer is not None and answer < szx:
                    szx = answer  # send this block again, smaller
                    continue
                if code == _INCOMPLETE and restarts < max_restarts:
                    restarts += 1
                    offset = blocks = 0
                    continue
                detail = response.payload.decode("utf-8", "replace")[:120]
                if code == _TOO_LARGE and response.size1 is not None:
                    detail = f"the device takes at most {response.size1} bytes"
                raise ErrorResponseError(code, detail)
    except TimeoutError:
        raise RequestTimeoutError(
            f"push to {route.endpoint} took longer than {total_timeout:g} s ({offset} of {total} bytes)") from None

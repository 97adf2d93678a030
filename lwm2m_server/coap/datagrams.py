"""Strict decoding of one incoming CoAP datagram (RFC 7252), for every transport of ours (plain UDP and DTLS).

:func:`decode_datagram` turns the bytes of a datagram into ``(message, reply)``:

* ``(message, None)``: a well-formed message to dispatch; every option in it is of a known, well-formed kind or an
  unknown elective one (elective options of a wrong format or repeated beyond the first are dropped, 5.4.1/5.4.5);
* ``(None, reply)``: RFC 7252 asks for an answer and this is it, addressed to ``remote``; it is only ever an
  Empty RST echoing the MID of a CON (a rejected CON: a format error (3, 4.2), a code of a reserved class, a
  response with a bad critical option, or a CoAP ping), or a piggybacked 4.02 Bad Option with the MID and token of
  a CON request with a bad critical option (5.4.1, 5.4.3: an option value of the wrong format or length counts as
  an unrecognised option);
* ``(None, None)``: silence (anything too short or of another version (3), and every rejected NON, ACK or RST:
  rejecting those is silently ignoring them, 4.2/4.3).

:func:`encode_message` is the other way, for the hot paths that write their messages without aiocoap.

It never raises on any input, and never answers to a multicast destination. Each rejected datagram is reported
through :data:`MALFORMED` (a :class:`RateLimitedLog`): at most one line per interval, with the peer, the reason and
the 4-byte header in hex (never the token, the options or the payload).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiocoap import Message
from aiocoap.message import Direction
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import Type

log = logging.getLogger(__name__)


class RateLimitedLog:
    """At most one record per ``interval`` seconds on ``logger``; the next record emitted tells how many were held
    back meanwhile. ``clock`` is injectable (monotonic seconds); a clock that goes backwards lets a record through."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.level, self.interval, self._clock = logger, level, interval, clock
        self.suppressed = 0  # records held back since the last one emitted
        self.total = 0  # records asked for, emitted or not
        self._last: float | None = None

    def __call__(self, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless one was logged less than ``interval`` ago; True when logged."""
        self.total += 1
        now = self._clock()
        if self._last is not None and 0.0 <= now - self._last < self.interval:
            self.suppressed += 1
            return False
        if self.suppressed:
            msg += " (and %d more in the last %.0f s)"
            args = (*args, self.suppressed, now - self._last if self._last is not None else 0.0)
        self._last, self.suppressed = now, 0
        self.logger.log(self.level, msg, *args)
        return True


MALFORMED = RateLimitedLog(log, logging.WARNING)
"""Rejected incoming datagrams, on every transport of this process."""

UNMATCHED = RateLimitedLog(log, logging.INFO)
"""Responses, ACKs and RSTs that match no request or exchange of ours (see udp.tune_aiocoap)."""

# Known options: (number) -> (format, min length, max length, repeatable). RFC 7252 5.10, RFC 7641 (Observe),
# RFC 7959 (Block, Size), RFC 7967 (No-Response), RFC 8768 (Hop-Limit), RFC 9175 (Echo, Request-Tag).
# A critical option not listed here is unrecognised (5.4.1): OSCORE, EDHOC, Q-Block and the like are not served.
_STRING, _OPAQUE, _UINT = "string", "opaque", "uint"
_OPTIONS: dict[int, tuple[str, int, int, bool]] = {
    1: (_OPAQUE, 0, 8, True),  # If-Match
    3: (_STRING, 1, 255, False),  # Uri-Host
    4: (_OPAQUE, 1, 8, True),  # ETag
    5: (_OPAQUE, 0, 0, False),  # If-None-Match
    6: (_UINT, 0, 3, False),  # Observe
    7: (_UINT, 0, 2, False),  # Uri-Port
    8: (_STRING, 0, 255, True),  # Location-Path
    11: (_STRING, 0, 255, True),  # Uri-Path
    12: (_UINT, 0, 2, False),  # Content-Format
    14: (_UINT, 0, 4, False),  # Max-Age
    15: (_STRING, 0, 255, True),  # Uri-Query
    16: (_UINT, 1, 1, False),  # Hop-Limit
    17: (_UINT, 0, 2, False),  # Accept
    20: (_STRING, 0, 255, True),  # Location-Query
    23: (_UINT, 0, 3, False),  # Block2
    27: (_UINT, 0, 3, False),  # Block1
    28: (_UINT, 0, 4, False),  # Size2
    35: (_STRING, 1, 1034, False),  # Proxy-Uri
    39: (_STRING, 1, 255, False),  # Proxy-Scheme
    60: (_UINT, 0, 4, False),  # Size1
    252: (_OPAQUE, 1, 40, False),  # Echo
    258: (_UINT, 0, 1, False),  # No-Response
    292: (_OPAQUE, 0, 8, True),  # Request-Tag
}
_CON, _NON, _ACK, _RST = 0, 1, 2, 3
_PAYLOAD_MARKER = 0xFF


class _Rejected(Exception):
    """A message RFC 7252 says to reject (format error, reserved code class, mismatched type)."""


class _BadOption(Exception):
    """An unrecognised critical option, or a critical option of the wrong format (5.4.1, 5.4.3, 5.4.5)."""


def decode_datagram(data: bytes, remote: Any) -> tuple[Message | None, Message | None]:
    """``(message, None)``, ``(None, reply)`` or ``(None, None)``, as the module docstring says. Never raises."""
    if len(data) < 4 or data[0] >> 6 != 1:
        MALFORMED("ignored a datagram from %s that is no CoAP version 1 message (header %s)",
                  _peer(remote), bytes(data[:4]).hex())
        return None, None
    mtype, mid = (data[0] >> 4) & 3, int.from_bytes(data[2:4], "big")
    if len(data) == 4 and data[0] == 0x40 and data[1] == 0:  # a CoAP ping: an Empty CON (4.2), not worth a line
        return None, _reply_unless_multicast(_reset(mid, remote), remote)
    try:
        return _decode(bytes(data), remote), None
    except _Rejected as e:
        reason, reply = e.args[0], _reset(mid, remote) if mtype == _CON else None
    except _BadOption as e:
        reason, reply = e.args[0], None
        if mtype == _CON:
            reply = _bad_option(mid, data, remote) if 1 <= data[1] < 32 else _reset(mid, remote)
    reply = _reply_unless_multicast(reply, remote)
    MALFORMED("rejected a CoAP message from %s: %s (header %s)", _peer(remote), reason, bytes(data[:4]).hex())
    return None, reply


def _decode(data: bytes, remote: Any) -> Message:
    """The message in ``data`` (version already checked); raises _Rejected or _BadOption."""
    mtype, tkl, code = (data[0] >> 4) & 3, data[0] & 0x0F, data[1]
    if tkl > 8:
        raise _Rejected("token length over 8")
    if code == 0 and (tkl or len(data) > 4):
        raise _Rejected("Empty message with a token or content")
    if code >> 5 in (1, 6, 7):
        raise _Rejected(f"code of the reserved class {code >> 5}")
    if code and mtype == _RST:
        raise _Rejected("RST that is not Empty")
    if 1 <= code < 32 and mtype == _ACK:
        raise _Rejected("request in an ACK")
    if code == 0 and mtype == _NON:
        raise _Rejected("Empty NON")
    if len(data) < 4 + tkl:
        raise _Rejected("token cut short")
    options, payload = _scan_options(data, 4 + tkl)
    message = Message(code=Code(code), _mtype=Type(mtype), _mid=int.from_bytes(data[2:4], "big"),
                      _token=data[4:4 + tkl])
    seen: set[int] = set()
    for number, value in options:
        problem = _option_problem(number, value, seen)
        if problem is None:
            try:
                message.opt.add_option(OptionNumber(number).create_option(decode=value))
            except Exception:  # aiocoap refuses a value our table allows: the same as a wrong format
                problem = "a value of the wrong format"
        seen.add(number)
        if problem is not None and number & 1:
            raise _BadOption(f"critical option {number} {problem}")
        # a bad elective option is an unrecognised one: silently ignored (5.4.1)
    message.payload = payload
    message.remote = remote
    message.direction = Direction.INCOMING
    return message


def _scan_options(data: bytes, pos: int) -> tuple[list[tuple[int, bytes]], bytes]:
    """The (number, value) options from ``pos`` on and the payload; raises _Rejected on a format error (RFC 7252
    3.1: nibble 15 other than in the payload marker, an option running past the end, a marker with no payload)."""
    options: list[tuple[int, bytes]] = []
    number, end = 0, len(data)
    while pos < end:
        head = data[pos]
        pos += 1
        if head == _PAYLOAD_MARKER:
            if pos == end:
                raise _Rejected("payload marker without payload")
            return options, data[pos:]
        delta, length = head >> 4, head & 0x0F
        if delta == 15 or length == 15:
            raise _Rejected("option delta or length of the reserved value 15")
        delta, pos = _extended(delta, data, pos)
        length, pos = _extended(length, data, pos)
        if pos + length > end:
            raise _Rejected("option value cut short")
        number += delta
        options.append((number, data[pos:pos + length]))
        pos += length
    return options, b""


def _extended(nibble: int, data: bytes, pos: int) -> tuple[int, int]:
    if nibble < 13:
        return nibble, pos
    size = 1 if nibble == 13 else 2
    if pos + size > len(data):
        raise _Rejected("option header cut short")
    return int.from_bytes(data[pos:pos + size], "big") + (13 if size == 1 else 269), pos + size


def encode_message(mtype: int, code: int, mid: int, token: bytes, options: list[tuple[int, bytes]],
                   payload: bytes) -> bytes:
    """A CoAP message (a request, or an answer) written without aiocoap; ``options`` are (number, value) in ascending
    number order (RFC 7252 3.1). What the hot paths send (lwm2m_server.coap.raw_exchange and the answers read from
    the datagram in lwm2m_server.coap.udp)."""
    out = bytearray((0x40 | (mtype << 4) | len(token), code, mid >> 8, mid & 0xFF))
    out += token
    previous = 0
    for number, value in options:
        delta, length = number - previous, len(value)
        previous = number
        d, dext = _nibble(delta)
        n, next_ = _nibble(length)
        out.append((d << 4) | n)
        out += dext
        out += next_
        out += value
    if payload:
        out.append(_PAYLOAD_MARKER)
        out += payload
    return bytes(out)


def uint_bytes(value: int) -> bytes:
    """An unsigned option value in its shortest form (RFC 7252 3.2: 0 is the empty string)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def _option_problem(number: int, value: bytes, seen: set[int]) -> str | None:
    """Why option ``number`` with ``value`` counts as unrecognised (None: it does not)."""
    spec = _OPTIONS.get(number)
    if spec is None:
        return "unrecognised" if number & 1 else None
    kind, low, high, repeatable = spec
    if number in seen and not repeatable:
        return "repeated"
    if not low <= len(value) <= high:
        return f"of length {len(value)} outside {low}..{high}"
    if kind == _STRING:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return "not valid UTF-8"
    return None


def _reply_unless_multicast(reply: Message | None, remote: Any) -> Message | None:
    return None if getattr(remote, "is_multicast_locally", False) else reply


def _reset(mid: int, remote: Any) -> Message:
    return _reply(Message(code=Code.EMPTY, _mtype=Type.RST, _mid=mid), remote)


def _bad_option(mid: int, data: bytes, remote: Any) -> Message:
    """A piggybacked 4.02 for the CON request in ``data`` (its token: the token length was checked)."""
    token = bytes(data[4:4 + (data[0] & 0x0F)])
    return _reply(Message(code=Code.BAD_OPTION, _mtype=Type.ACK, _mid=mid, _token=token), remote)


def _reply(message: Message, remote: Any) -> Message:
    message.remote = remote.as_response_address() if hasattr(remote, "as_response_address") else remote
    return message


def _peer(remote: Any) -> str:
    try:
        return str(remote.hostinfo)
    except Exception:
        return "an unknown peer"

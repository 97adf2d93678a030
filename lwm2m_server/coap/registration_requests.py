"""The Registration interface's requests read straight from a datagram, and their answers written straight into one
(sans I/O): the hot path of a server that takes thousands of Registers and Updates a second, without aiocoap's
Message object, its option objects and its encoder.

:func:`parse_registration` takes only the plainest requests: a CON or NON POST or DELETE whose first Uri-Path
segment is ``rd``, with no option but Uri-Path, Uri-Query, Content-Format, Uri-Host and Uri-Port (each
well-formed, RFC 7252 5.10; the last two are not used, as on the general path), and
whose header is one :func:`lwm2m_server.coap.datagrams.decode_datagram` accepts. Everything else (Block1, an
Observe, an unknown or odd option, a format error...) gives None and takes the general path, which answers it as
before. :func:`encode_answer` writes the piggybacked (or NON) answer: header, token, Location-Path options, payload.

Invariants (tests/unit/test_registration_requests.py, with hypothesis): a datagram that parses here decodes through
decode_datagram into a message of the same type, MID, token, code, path, query, content format and payload; an
encoded answer decodes (aiocoap's Message.decode) into the type, MID, token, code, Location-Path and payload given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from lwm2m_server.coap.datagrams import encode_message

__all__ = ["CON", "NON", "RegistrationRequest", "encode_answer", "parse_registration"]

CON, NON, ACK = 0, 1, 2
POST, DELETE = 2, 4
_URI_HOST, _URI_PORT, _URI_PATH, _CONTENT_FORMAT, _URI_QUERY = 3, 7, 11, 12, 15
_LOCATION_PATH: Final = 8
_RD: Final = b"rd"


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    """One Register, Update or De-register request, as it came (``remote``: the transport's handle of the sender,
    or None until the caller sets it)."""

    mtype: int
    mid: int
    token: bytes
    code: int
    path: tuple[str, ...]
    query: tuple[str, ...]
    content_format: int | None
    payload: bytes
    remote: object = None


def parse_registration(data: bytes, remote: object = None) -> RegistrationRequest | None:
    """The Registration interface request in ``data`` (sent by ``remote``), or None when it is not one of the plain
    kind (see the module docstring). Never raises."""
    n = len(data)
    if n < 4:
        return None
    first, code = data[0], data[1]
    mtype, tkl = (first >> 4) & 3, first & 0x0F
    if first >> 6 != 1 or mtype > NON or code not in (POST, DELETE) or tkl > 8 or n < 4 + tkl:
        return None
    pos, number = 4 + tkl, 0
    path: list[str] = []
    query: list[str] = []
    content_format: int | None = None
    host = port = False  # Uri-Host, Uri-Port: checked as the general path checks them, then not used
    payload = b""
    try:
        while pos < n:
            head = data[pos]
            pos += 1
            if head == 0xFF:
                if pos == n:
                    return None  # a marker without payload: a format error, the general path rejects it
                payload = data[pos:]
                break
            delta, length = head >> 4, head & 0x0F
            if delta >= 13 or length == 15:
                return None  # no option of ours is 13 or more past the previous one
            if length == 13:
                if pos >= n:
                    return None
                length = data[pos] + 13
                pos += 1
            elif length == 14:
                return None  # values of 269 bytes or more are not ours
            if length > 255:
                return None  # over the longest Uri-Path or Uri-Query (5.10): the general path answers 4.02
            number += delta
            end = pos + length
            if end > n:
                return None
            value = data[pos:end]
            pos = end
            if number in (_URI_PATH, _URI_QUERY):
                (path if number == _URI_PATH else query).append(value.decode("utf-8"))
            elif number == _CONTENT_FORMAT:
                if content_format is not None or length > 2:
                    return None
                content_format = int.from_bytes(value, "big")
            elif number == _URI_HOST:
                if host or not value:
                    return None
                value.decode("utf-8")
                host = True
            elif number == _URI_PORT:
                if port or length > 2:
                    return None
                port = True
            else:
                return None
    except UnicodeDecodeError:
        return None
    if not path or path[0] != "rd":
        return None
    return RegistrationRequest(mtype, int.from_bytes(data[2:4], "big"), bytes(data[4:4 + tkl]), code, tuple(path),
                               tuple(query), content_format, bytes(payload), remote)


def encode_answer(mtype: int, mid: int, token: bytes, code: int, location: tuple[str, ...] = (),
                  payload: bytes = b"") -> bytes:
    """A CoAP message of type ``mtype`` (ACK for a piggybacked answer, NON), MID, token and code, with one
    Location-Path option per segment of ``location`` and ``payload``."""
    return encode_message(mtype, code, mid, token, [(_LOCATION_PATH, s.encode("utf-8")) for s in location], payload)

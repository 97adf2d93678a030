"""A device's block-wise GET of a package (``/fw/<name>``) read straight from a datagram (sans I/O): the pull of a
package is one such request per block, and this is its hot path, without aiocoap's Message, resource and
request machinery. :func:`parse_download` takes only a CON or NON GET of exactly ``/<mount>/<name>`` whose options
are among Uri-Host, Uri-Port, Uri-Path, ETag, Block2 and Size2, each well-formed (RFC 7252 5.10, RFC 7959), in a
datagram :func:`lwm2m_server.coap.datagrams.decode_datagram` accepts; anything else gives None and takes the general
path. Answers are written with :func:`lwm2m_server.coap.datagrams.encode_message`.

Invariant (tests/unit/test_download_requests.py, hypothesis): a datagram that parses here decodes through
decode_datagram into a GET of the same type, MID, token, path, ETags and Block2.
"""

from __future__ import annotations

from dataclasses import dataclass

from lwm2m_server.coap.datagrams import _Rejected, _scan_options

__all__ = ["DownloadRequest", "parse_download"]

_GET = 1
_URI_HOST, _ETAG, _URI_PORT, _URI_PATH, _BLOCK2, _SIZE2 = 3, 4, 7, 11, 23, 28
_LENGTHS = {_URI_HOST: (1, 255), _ETAG: (1, 8), _URI_PORT: (0, 2), _URI_PATH: (0, 255), _BLOCK2: (0, 3),
            _SIZE2: (0, 4)}
_REPEATABLE = frozenset({_ETAG, _URI_PATH})


@dataclass(frozen=True, slots=True)
class DownloadRequest:
    """A GET of package ``name``: ``block2`` is (block number, size exponent) or None; ``etags`` the ETags the
    device already holds."""

    mtype: int
    mid: int
    token: bytes
    name: str
    block2: tuple[int, int] | None
    etags: tuple[bytes, ...]


def parse_download(data: bytes, mount: str) -> DownloadRequest | None:
    """The GET of ``/<mount>/<name>`` in ``data``, or None (see the module docstring). Never raises."""
    if len(data) < 4 or data[1] != _GET:
        return None
    first = data[0]
    mtype, tkl = (first >> 4) & 3, first & 0x0F
    if first >> 6 != 1 or mtype > 1 or tkl > 8 or len(data) < 4 + tkl:
        return None
    try:
        options, _payload = _scan_options(bytes(data), 4 + tkl)
    except _Rejected:
        return None
    path: list[str] = []
    etags: list[bytes] = []
    block2: tuple[int, int] | None = None
    seen: set[int] = set()
    try:
        for number, value in options:
            limits = _LENGTHS.get(number)
            if limits is None or not limits[0] <= len(value) <= limits[1]:
                return None
            if number in seen and number not in _REPEATABLE:
                return None
            seen.add(number)
            if number == _URI_PATH:
                path.append(value.decode("utf-8"))
            elif number == _URI_HOST:
                value.decode("utf-8")
            elif number == _ETAG:
                etags.append(value)
            elif number == _BLOCK2:
                raw = int.from_bytes(value, "big")
                if raw & 7 == 7:
                    return None  # BERT (szx 7) is for CoAP over TCP: the general path's
                block2 = (raw >> 4, raw & 7)
    except UnicodeDecodeError:
        return None
    if len(path) != 2 or path[0] != mount or _payload:
        return None
    return DownloadRequest(mtype, int.from_bytes(data[2:4], "big"), bytes(data[4:4 + tkl]), path[1], block2,
                           tuple(etags))

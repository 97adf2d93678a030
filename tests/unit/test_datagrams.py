"""decode_datagram (RFC 7252 rejections of malformed messages) and its rate-limited log.

``CASES`` is shared with tests/integration/test_malformed_messages.py, which sends the same datagrams to a real
server over plain CoAP and over DTLS.
"""

from __future__ import annotations

import logging

import aiocoap
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from hypothesis import given, settings
from hypothesis import strategies as st

from lwm2m_server.coap import datagrams
from lwm2m_server.coap.datagrams import RateLimitedLog, decode_datagram

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, CONTENT = 0x01, 0x02, 0x45
MID, TOKEN = 0x4A11, b"\x01\x02\x03\x04\x05\x06\x07\x08"
BAD_UTF8 = b"\xff\xfe"


def _ext(n: int) -> tuple[int, bytes]:
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes([n - 13])
    return 14, (n - 269).to_bytes(2, "big")


def options(*opts: tuple[int, bytes]) -> bytes:
    """Options in the wire format (sorted by number, as a sender must)."""
    out, last = b"", 0
    for number, value in sorted(opts, key=lambda o: o[0]):
        delta, dext = _ext(number - last)
        length, lext = _ext(len(value))
        out += bytes([delta << 4 | length]) + dext + lext + value
        last = number
    return out


def datagram(mtype: int = CON, code: int = GET, *opts: tuple[int, bytes], token: bytes = TOKEN, mid: int = MID,
             payload: bytes = b"", rest: bytes | None = None) -> bytes:
    """A CoAP message; ``rest`` replaces everything after the token (for broken option encodings)."""
    head = bytes([0x40 | mtype << 4 | len(token), code]) + mid.to_bytes(2, "big") + token
    if rest is not None:
        return head + rest
    return head + options(*opts) + (b"\xff" + payload if payload else b"")


# (name, datagram, expected): "4.02" piggybacked Bad Option, "RST", None (silence), "dispatch" (a message to serve)
CASES: list[tuple[str, bytes, str | None]] = [
    ("uri-host not utf-8", datagram(CON, GET, (3, BAD_UTF8)), "4.02"),
    ("uri-path not utf-8", datagram(CON, GET, (11, b"rd"), (11, BAD_UTF8)), "4.02"),
    ("uri-query not utf-8", datagram(CON, POST, (11, b"rd"), (15, b"ep=\xc3\x28")), "4.02"),
    ("proxy-uri not utf-8", datagram(CON, GET, (35, b"coap://x/\xed\xa0\x80")), "4.02"),
    ("proxy-scheme not utf-8", datagram(CON, GET, (39, BAD_UTF8)), "4.02"),
    ("uri-path over 255 bytes", datagram(CON, GET, (11, b"a" * 256)), "4.02"),
    ("uri-host empty", datagram(CON, GET, (3, b"")), "4.02"),
    ("uri-host repeated", datagram(CON, GET, (3, b"a"), (3, b"b")), "4.02"),
    ("uri-port of 3 bytes", datagram(CON, GET, (7, b"\x01\x02\x03")), "4.02"),
    ("block2 of 4 bytes", datagram(CON, GET, (23, b"\x00\x00\x00\x06")), "4.02"),
    ("if-none-match with a value", datagram(CON, GET, (5, b"x")), "4.02"),
    ("unknown critical option", datagram(CON, GET, (11, b"rd"), (2049, b"x")), "4.02"),
    ("unknown critical option 9 (OSCORE, not served)", datagram(CON, GET, (9, b"")), "4.02"),
    ("uri-path not utf-8 in a NON", datagram(NON, GET, (11, BAD_UTF8)), None),
    ("unknown critical option in a NON", datagram(NON, GET, (2049, b"x")), None),
    ("unknown critical option in a CON response", datagram(CON, CONTENT, (2049, b"x")), "RST"),
    ("bad critical option in an ACK response", datagram(ACK, CONTENT, (11, BAD_UTF8)), None),
    ("bad critical option in a NON response", datagram(NON, CONTENT, (2049, b"")), None),
    ("option value cut short", datagram(CON, GET, rest=bytes([0xB5]) + b"ab"), "RST"),
    ("extended delta cut short", datagram(CON, GET, rest=bytes([0xD0])), "RST"),
    ("extended length cut short", datagram(CON, GET, rest=bytes([0xBE, 0x01])), "RST"),
    ("option delta 15 (not the payload marker)", datagram(CON, GET, rest=bytes([0xF1, 0x61])), "RST"),
    ("option length 15", datagram(CON, GET, rest=bytes([0xBF]) + b"a" * 20), "RST"),
    ("payload marker without payload", datagram(CON, POST, (11, b"rd"), rest=options((11, b"rd")) + b"\xff"),
     "RST"),
    ("payload marker without payload in a NON", datagram(NON, POST, rest=b"\xff"), None),
    ("token length 9", bytes([0x49, GET, 0x4A, 0x11]) + b"123456789", "RST"),
    ("token length 15", bytes([0x4F, GET, 0x4A, 0x11]) + b"1" * 15, "RST"),
    ("token cut short", bytes([0x48, GET, 0x4A, 0x11]) + b"123", "RST"),
    ("version 2", bytes([0x80 | 0x08, GET, 0x4A, 0x11]) + TOKEN, None),
    ("version 0", bytes([0x00, GET, 0x4A, 0x11]), None),
    ("3 bytes", bytes([0x40, GET, 0x4A]), None),
    ("empty datagram", b"", None),
    ("Empty CON with a token", bytes([0x42, 0, 0x4A, 0x11]) + b"tk", "RST"),
    ("Empty CON with options", bytes([0x40, 0, 0x4A, 0x11, 0xB1, 0x61]), "RST"),
    ("Empty NON", bytes([0x50, 0, 0x4A, 0x11]), None),
    ("code of the reserved class 1", datagram(CON, 0x20), "RST"),
    ("code of the reserved class 7", datagram(CON, 0xE1), "RST"),
    ("code of the reserved class 6 in a NON", datagram(NON, 0xC0), None),
    ("RST with a code", datagram(RST, CONTENT), None),
    ("request in an ACK", datagram(ACK, GET), None),
]

# well-formed, or carrying only elective options RFC 7252 says to ignore: dispatched (without those options)
GOOD: list[tuple[str, bytes]] = [
    ("location-path not utf-8 (elective: ignored)", datagram(CON, CONTENT, (8, BAD_UTF8), payload=b"x")),
    ("location-query not utf-8 (elective: ignored)", datagram(NON, CONTENT, (20, BAD_UTF8))),
    ("content-format repeated (elective: ignored)", datagram(CON, POST, (11, b"rd"), (12, b""), (12, b"\x28"))),
    ("unknown elective option", datagram(CON, GET, (11, b"rd"), (2048, b"anything"))),
    ("a GET", datagram(CON, GET, (11, b"3"), (11, b"0"), (17, b"\x2d\x16"))),
    ("Empty ACK", bytes([0x60, 0, 0x4A, 0x11])),
    ("Empty RST", bytes([0x70, 0, 0x4A, 0x11])),
]


def kind(reply: Message | None, sent: bytes) -> str | None:
    """What ``reply`` is, checking that it is a well-formed answer to ``sent``."""
    if reply is None:
        return None
    assert reply.mid == int.from_bytes(sent[2:4], "big")
    if reply.mtype is Type.RST:
        assert reply.code == Code.EMPTY and reply.token == b"" and reply.payload == b""
        assert reply.encode() == bytes([0x70, 0]) + sent[2:4]
        return "RST"
    assert reply.mtype is Type.ACK and reply.code == Code.BAD_OPTION
    assert reply.token == sent[4:4 + (sent[0] & 0x0F)]
    return "4.02"


@pytest.mark.parametrize(("name", "data", "expected"), CASES, ids=[c[0] for c in CASES])
def test_malformed_messages_get_the_rfc_7252_answer(name: str, data: bytes, expected: str | None) -> None:
    message, reply = decode_datagram(data, None)
    assert message is None
    assert kind(reply, data) == expected


def test_a_ping_is_answered_with_a_reset_and_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=datagrams.log.name)
    message, reply = decode_datagram(bytes([0x40, 0, 0x4A, 0x11]), None)
    assert message is None and kind(reply, bytes([0x40, 0, 0x4A, 0x11])) == "RST"
    assert not caplog.records


@pytest.mark.parametrize(("name", "data"), GOOD, ids=[c[0] for c in GOOD])
def test_good_messages_are_dispatched_without_the_options_to_ignore(name: str, data: bytes) -> None:
    message, reply = decode_datagram(data, None)
    assert reply is None and message is not None
    assert message.mid == MID and message.token == data[4:4 + (data[0] & 0x0F)]
    assert message.opt.location_path == () and message.opt.location_query == ()
    if name.startswith("content-format repeated"):
        assert message.opt.content_format == 0  # the first occurrence is kept, the second one (40) is dropped


def test_the_reply_goes_to_the_response_address_and_never_to_multicast() -> None:
    class Remote:
        is_multicast_locally = False
        hostinfo = "192.0.2.1:5683"

        def as_response_address(self) -> str:
            return "response-address"

    bad = CASES[0][1]
    _, reply = decode_datagram(bad, Remote())
    assert reply is not None and reply.remote == "response-address"
    Remote.is_multicast_locally = True
    assert decode_datagram(bad, Remote()) == (None, None)


def test_the_report_names_the_peer_and_reason_but_not_token_or_content(caplog: pytest.LogCaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datagrams, "MALFORMED", RateLimitedLog(datagrams.log))
    caplog.set_level(logging.DEBUG, logger=datagrams.log.name)
    secret = b"\xa5\x5a\xc3\x3c\x0f\xf0\x99\x66"
    decode_datagram(datagram(CON, GET, (11, b"\xffsecret-path"), token=secret), None)
    (record,) = caplog.records
    text = record.getMessage()
    assert record.levelno == logging.WARNING and not record.exc_info
    assert "option 11" in text and "UTF-8" in text and "48014a11" in text
    assert secret.hex() not in text and "secret-path" not in text and len(text) < 200


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_one_line_per_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("test.limited"), logging.WARNING, interval=10.0, clock=clock)
    caplog.set_level(logging.DEBUG, logger="test.limited")
    assert limited("bad %s", 1)
    for i in range(1999):
        clock.now += 0.004  # 2000 in 8 s
        assert not limited("bad %s", i)
    assert [r.getMessage() for r in caplog.records] == ["bad 1"]
    clock.now += 2.1
    assert limited("bad %s", "again")
    assert caplog.records[-1].getMessage() == "bad again (and 1999 more in the last 10 s)"
    clock.now -= 50.0  # a clock going backwards lets one through
    assert limited("x") and not limited("y")
    assert (limited.total, limited.suppressed, len(caplog.records)) == (2003, 1, 3)


def test_two_thousand_malformed_datagrams_give_one_line(caplog: pytest.LogCaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(datagrams, "MALFORMED", RateLimitedLog(datagrams.log, clock=clock))
    caplog.set_level(logging.DEBUG)
    for i in range(2000):
        decode_datagram(CASES[i % len(CASES)][1], None)
        clock.now += 0.001
    assert len(caplog.records) == 1 and datagrams.MALFORMED.total == 2000


# -- properties

@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64) | st.builds(lambda h, t: h + t, st.sampled_from([c[1][:6] for c in CASES]),
                                          st.binary(max_size=40)))
def test_never_raises_and_replies_only_as_allowed(data: bytes) -> None:
    message, reply = decode_datagram(data, None)
    assert message is None or reply is None
    got = kind(reply, data)
    if got is not None:
        assert data[0] >> 4 == 0x4  # version 1, CON: only a CON is ever answered
    if got == "4.02":
        assert 1 <= data[1] < 32  # only a request gets a 4.02
    if message is not None:
        assert message.mid == int.from_bytes(data[2:4], "big") and int(message.mtype) == (data[0] >> 4) & 3


_STRINGS = st.text(max_size=12)
_SEGMENTS = st.lists(_STRINGS, max_size=4)


@settings(max_examples=300, deadline=None)
@given(mtype=st.sampled_from([Type.CON, Type.NON, Type.ACK]), code=st.sampled_from([Code.GET, Code.POST, Code.CONTENT,
                                                                                    Code.NOT_FOUND]),
       mid=st.integers(0, 0xFFFF), token=st.binary(max_size=8), path=_SEGMENTS, query=_SEGMENTS,
       location=_SEGMENTS, content_format=st.none() | st.integers(0, 0xFFFF),
       observe=st.none() | st.integers(0, 2**24 - 1),
       etag=st.none() | st.binary(min_size=1, max_size=8), payload=st.binary(max_size=20))
def test_well_formed_messages_decode_as_aiocoap_does(mtype: Type, code: Code, mid: int, token: bytes,
                                                     path: list[str], query: list[str], location: list[str],
                                                     content_format: int | None, observe: int | None,
                                                     etag: bytes | None, payload: bytes) -> None:
    if code.is_request() and mtype is Type.ACK:
        mtype = Type.CON
    m = Message(code=code, _mtype=mtype, _mid=mid, _token=token, payload=payload)
    m.opt.uri_path, m.opt.uri_query, m.opt.location_path = path, query, location
    m.opt.content_format, m.opt.observe, m.opt.etag = content_format, observe, etag
    wire = m.encode()
    message, reply = decode_datagram(wire, None)
    expected = aiocoap.Message.decode(wire)
    assert reply is None and message is not None
    assert (message.mtype, message.code, message.mid, message.token, message.payload) == (
        expected.mtype, expected.code, expected.mid, expected.token, expected.payload)
    assert [(o.number, o.value) for o in message.opt.option_list()] == [
        (o.number, o.value) for o in expected.opt.option_list()]

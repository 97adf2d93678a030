"""The Registration interface's datagram codec (lwm2m_server.coap.registration_requests) against the general path:
what it parses, decode_datagram decodes the same; what it encodes, aiocoap decodes as given."""

from __future__ import annotations

from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from hypothesis import given, settings
from hypothesis import strategies as st

from lwm2m_server.coap.datagrams import decode_datagram
from lwm2m_server.coap.registration_requests import encode_answer, parse_registration


class Remote:
    """A stand-in for the transport's address (decode_datagram asks only these)."""

    hostinfo = "127.0.0.1:5683"
    is_multicast_locally = False

    def as_response_address(self) -> Remote:
        return self


def option(number_delta: int, value: bytes) -> bytes:
    """One option with a delta under 13 and any value length up to 268 (and the 269+ form for longer)."""
    n = len(value)
    if n < 13:
        return bytes(((number_delta << 4) | n,)) + value
    if n < 269:
        return bytes(((number_delta << 4) | 13, n - 13)) + value
    return bytes(((number_delta << 4) | 14,)) + (n - 269).to_bytes(2, "big") + value


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=20).map(lambda s: s.encode())


@st.composite
def datagrams(draw: Any) -> bytes:
    """Mostly Registration-shaped datagrams, with every kind of deviation the codec must leave to the general path."""
    odd = draw(st.integers(0, 9)) == 0  # one datagram in ten with an odd header
    version = draw(st.sampled_from([0, 2, 3])) if odd and draw(st.booleans()) else 1
    mtype = draw(st.integers(0, 3)) if odd else draw(st.integers(0, 1))
    token = draw(st.binary(max_size=9 if odd else 8))
    code = draw(st.sampled_from([1, 3, 0, 65, 69, 160])) if odd and draw(st.booleans()) else draw(
        st.sampled_from([2, 2, 4]))
    mid = draw(st.integers(0, 0xFFFF))
    head = bytes(((version << 6) | (mtype << 4) | min(len(token), 15), code, mid >> 8, mid & 0xFF)) + token
    usual = st.sampled_from([11, 11, 11, 11, 12, 15, 15, 15, 3, 7])
    numbers = [11, *draw(st.lists(st.one_of(usual, usual, usual, st.sampled_from([6, 27, 23, 60, 2049])),
                                  max_size=6))]
    body, previous = b"", 0
    first_path = draw(st.sampled_from([b"rd"] * 8 + [b"x", b"", b"\xff"]))
    paths_done = 0
    for number in sorted(numbers):
        if number == 11 and paths_done == 0:
            value = first_path
        elif number in (7, 12):
            value = draw(st.sampled_from([b"", b"\x28", b"\x00\x28", b"\x00\x00\x28"]))
        elif number == 3:
            value = draw(st.sampled_from([b"", b"host", b"\xff", b"h" * 256]))
        elif number in (11, 15):
            value = draw(st.one_of(text, text, text, st.binary(max_size=4), st.just(b"a" * 256)))
        else:
            value = draw(st.binary(max_size=3))
        paths_done += number == 11
        delta = number - previous
        if delta >= 13:
            ext = delta - 13 if delta < 269 else None
            if ext is None:
                continue
            body += bytes((0xD0 | min(len(value), 12),)) + bytes((ext,)) + value[:12]
        else:
            body += option(delta, value)
        previous = number
    payload = draw(st.sampled_from([b"", b"</1/0>,</3/0>", b"\xff\xfe"]))
    marker = draw(st.sampled_from([b"\xff", b"\xff", b""])) if payload or draw(st.booleans()) else b""
    tail = draw(st.binary(max_size=3)) if draw(st.integers(0, 9)) == 0 else b""
    return head + body + marker + payload + tail


def same_as_general_path(data: bytes) -> None:
    parsed = parse_registration(data)
    message, _reply = decode_datagram(data, Remote())
    if parsed is None:
        return
    assert message is not None, data.hex()
    assert (int(message.mtype), message.mid, message.token, int(message.code)) == (
        parsed.mtype, parsed.mid, parsed.token, parsed.code)
    assert tuple(message.opt.uri_path) == parsed.path and tuple(message.opt.uri_query) == parsed.query
    cf = message.opt.content_format
    assert (None if cf is None else int(cf)) == parsed.content_format
    assert message.payload == parsed.payload
    assert parsed.path[0] == "rd" and parsed.code in (2, 4) and parsed.mtype in (0, 1)
    assert message.opt.block1 is None and message.opt.observe is None


@settings(max_examples=600)
@given(datagrams())
def test_what_the_codec_parses_the_general_path_decodes_the_same(data: bytes) -> None:
    same_as_general_path(data)


@given(st.binary(max_size=64))
def test_any_bytes_parse_or_are_left_to_the_general_path_and_never_raise(data: bytes) -> None:
    same_as_general_path(data)


def test_the_requests_a_client_sends_are_taken() -> None:
    for code, uri, payload, cf in ((Code.POST, "coap://h/rd?ep=dev-1&lt=300&lwm2m=1.1&b=U", b"</1/0>,</3/0>", 40),
                                   (Code.POST, "coap://127.0.0.1/rd/abc123?lt=60", b"", None),
                                   (Code.DELETE, "coap://h:5999/rd/abc123", b"", None)):
        m = Message(code=code, uri=uri, payload=payload, _mtype=Type.CON, _mid=7, _token=b"\x01\x02")
        if cf is not None:
            m.opt.content_format = cf
        parsed = parse_registration(m.encode())
        assert parsed is not None
        assert parsed.path[0] == "rd" and parsed.payload == payload and parsed.content_format == cf
        assert parsed.token == b"\x01\x02" and parsed.mid == 7 and parsed.code == int(code)
    blockwise = Message(code=Code.POST, uri="coap://h/rd?ep=d", payload=b"x", _mtype=Type.CON, _mid=1)
    blockwise.opt.block1 = (0, True, 6)
    assert parse_registration(blockwise.encode()) is None  # Block1: the general path assembles it
    assert parse_registration(Message(code=Code.GET, uri="coap://h/rd", _mtype=Type.CON, _mid=1).encode()) is None


@given(st.sampled_from([Type.ACK, Type.NON]), st.integers(0, 0xFFFF), st.binary(max_size=8),
       st.sampled_from([Code.CREATED, Code.CHANGED, Code.DELETED, Code.BAD_REQUEST, Code.FORBIDDEN]),
       st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=300), max_size=3), st.binary(max_size=40))
def test_an_encoded_answer_decodes_as_given(mtype: Type, mid: int, token: bytes, code: Code, location: list[str],
                                            payload: bytes) -> None:
    data = encode_answer(int(mtype), mid, token, int(code), tuple(location), payload)
    decoded = Message.decode(data)
    assert (decoded.mtype, decoded.mid, decoded.token, decoded.code) == (mtype, mid, token, code)
    assert tuple(decoded.opt.location_path) == tuple(location) and decoded.payload == payload

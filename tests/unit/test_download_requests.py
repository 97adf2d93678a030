"""The package GET's datagram reader (lwm2m_server.coap.download_requests) against the general path: what it parses,
decode_datagram decodes the same."""

from __future__ import annotations

from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from hypothesis import given, settings
from hypothesis import strategies as st

from lwm2m_server.coap.datagrams import decode_datagram
from lwm2m_server.coap.download_requests import parse_download
from tests.unit.test_registration_requests import Remote, option

text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12).map(lambda s: s.encode())


@st.composite
def gets(draw: Any) -> bytes:
    odd = draw(st.integers(0, 9)) == 0
    mtype = draw(st.integers(0, 3)) if odd else draw(st.integers(0, 1))
    token = draw(st.binary(max_size=9 if odd else 8))
    code = draw(st.sampled_from([2, 3, 4, 69])) if odd and draw(st.booleans()) else 1
    mid = draw(st.integers(0, 0xFFFF))
    head = bytes((0x40 | (mtype << 4) | len(token), code, mid >> 8, mid & 0xFF)) + token
    usual = st.sampled_from([4, 4, 11, 11, 23, 23, 28, 3, 7])
    numbers = sorted([11, 11, *draw(st.lists(st.one_of(usual, usual, st.sampled_from([1, 6, 17, 27, 60])),
                                             max_size=5))])
    body, previous, paths = b"", 0, 0
    for number in numbers:
        if number == 11:
            value = draw(st.sampled_from([b"fw"] * 6 + [b"x", b""])) if paths == 0 else draw(
                st.one_of(text, text, st.binary(max_size=3)))
            paths += 1
        elif number == 23:
            value = draw(st.sampled_from([b"", b"\x06", b"\x16", b"\x0e", b"\x07", b"\x01\x06", b"\x00\x00\x00\x06"]))
        elif number == 4:
            value = draw(st.sampled_from([b"\x01" * 8, b"abc", b"", b"\x00" * 9]))
        else:
            value = draw(st.binary(max_size=3))
        delta = number - previous
        if delta >= 13:
            body += bytes((0xD0 | min(len(value), 12), delta - 13)) + value[:12]
        else:
            body += option(delta, value)
        previous = number
    payload = draw(st.sampled_from([b"", b"", b"", b"\xffx"]))
    return head + body + payload


def same_as_general_path(data: bytes) -> None:
    parsed = parse_download(data, "fw")
    message, _reply = decode_datagram(data, Remote())
    if parsed is None:
        return
    assert message is not None, data.hex()
    assert (int(message.mtype), message.mid, message.token, message.code) == (
        parsed.mtype, parsed.mid, parsed.token, Code.GET)
    assert tuple(message.opt.uri_path) == ("fw", parsed.name) and tuple(message.opt.etags) == parsed.etags
    block2 = message.opt.block2
    assert (None if block2 is None else (block2.block_number, block2.size_exponent)) == parsed.block2
    assert not message.payload


@settings(max_examples=600)
@given(gets())
def test_what_the_reader_parses_the_general_path_decodes_the_same(data: bytes) -> None:
    same_as_general_path(data)


@given(st.binary(max_size=48))
def test_any_bytes_parse_or_are_left_to_the_general_path(data: bytes) -> None:
    same_as_general_path(data)


def test_the_gets_a_device_sends_are_taken() -> None:
    m = Message(code=Code.GET, uri="coap://127.0.0.1/fw/AbC-123", _mtype=Type.CON, _mid=9, _token=b"\x07")
    m.opt.block2 = (5, False, 4)
    m.opt.size2 = 0
    parsed = parse_download(m.encode(), "fw")
    assert parsed is not None and (parsed.name, parsed.block2, parsed.etags) == ("AbC-123", (5, 4), ())
    assert parse_download(Message(code=Code.GET, uri="coap://h/fw/a/b", _mtype=Type.CON, _mid=1).encode(),
                          "fw") is None
    assert parse_download(Message(code=Code.GET, uri="coap://h/rd", _mtype=Type.CON, _mid=1).encode(), "fw") is None

"""The server's DTLS transport gives tinydtls a client's handshake datagrams in record order (reordered flights
would fail the handshake): every datagram comes out exactly once, in (epoch, sequence number) order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lwm2m_server.coap.dtls import _HandshakeOrder


def record(ctype: int, epoch: int, seq: int, body: bytes = b"\x10") -> bytes:
    """One DTLS 1.2 record in one datagram (header: type, version, epoch, sequence number, length)."""
    return bytes([ctype, 0xFE, 0xFD]) + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big") + \
        len(body).to_bytes(2, "big") + body


def client_hello(seq: int, cookie: bytes = b"") -> bytes:
    hello = b"\xfe\xfd" + bytes(32) + b"\x00" + bytes([len(cookie)]) + cookie + b"\x00\x02\xc0\xa8\x01\x00"
    header = b"\x01" + len(hello).to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00" + len(hello).to_bytes(3, "big")
    return record(22, 0, seq, header + hello)


HELLOS = [client_hello(0), client_hello(1, b"cookie")]
# flight 3 of a PSK handshake, three datagrams: ClientKeyExchange, ChangeCipherSpec, Finished (epoch 1)
FLIGHT = [record(22, 0, 2, b"\x10psk"), record(20, 0, 3, b"\x01"), record(22, 1, 0, b"finished")]


def offer_all(order: _HandshakeOrder, datagrams: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for d in datagrams:
        out += order.offer(d)
    return out


@given(st.permutations(FLIGHT))
def test_any_order_of_the_clients_flight_comes_out_in_record_order(flight: list[bytes]) -> None:
    order = _HandshakeOrder()
    assert offer_all(order, HELLOS) == HELLOS
    assert offer_all(order, flight) == FLIGHT
    assert order.held == [] and order.flush() == []


@given(st.permutations(FLIGHT), st.integers(0, 2))
def test_a_lost_datagram_releases_the_others_in_order_at_the_flush(flight: list[bytes], lost: int) -> None:
    order = _HandshakeOrder()
    offer_all(order, HELLOS)
    kept = [d for d in flight if d != FLIGHT[lost]]
    given_now = offer_all(order, kept)
    out = given_now + order.flush()
    assert out == [d for d in FLIGHT if d != FLIGHT[lost]]  # each once, in record order
    assert order.flush() == []


def test_a_retransmitted_flight_with_new_sequence_numbers_passes_straight_through() -> None:
    order = _HandshakeOrder()
    offer_all(order, [*HELLOS, *FLIGHT])
    again = [record(22, 0, 4, b"\x10psk"), record(20, 0, 5, b"\x01"), record(22, 1, 1, b"finished")]
    assert offer_all(order, again) == again


def test_a_new_client_hello_starts_over() -> None:
    order = _HandshakeOrder()
    offer_all(order, [*HELLOS, FLIGHT[2]])  # a Finished before its ChangeCipherSpec waits
    assert len(order.held) == 1
    assert order.offer(client_hello(0)) == [client_hello(0)]  # the client starts a new handshake
    assert order.offer(record(20, 0, 5)) == []  # ahead of the new handshake's sequence numbers: it waits
    assert order.offer(record(22, 0, 1, b"x")) == [record(22, 0, 1, b"x")]
    assert len(order.flush()) == 2  # the old Finished and that ChangeCipherSpec, each once


def test_short_or_foreign_datagrams_are_not_held() -> None:
    order = _HandshakeOrder()
    assert order.offer(b"\x17\xfe") == [b"\x17\xfe"]

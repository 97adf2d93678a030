"""A strict, bounded CBOR decoder for SUIT envelopes and COSE messages, and the deterministic encoder.

The decoder accepts the subset of CBOR (RFC 8949) that SUIT and COSE use, and only in preferred serialization:
unsigned and negative integers up to 64 bits, byte and text strings, arrays, maps, tags, ``false``, ``true`` and
``null``. It refuses indefinite lengths, floats and other simple values, non-shortest integer and length
arguments, duplicate map keys, map keys other than integers, strings and arrays of those, invalid UTF-8, nesting
deeper than ``max_depth``, and trailing bytes. It never interprets a tag: tags come back as :class:`Tagged`.

Invariants: :func:`decode` returns a value or raises :class:`SuitDecodeError`, never anything else; every length is
checked against the bytes that remain before anything is sliced or allocated; because only preferred serialization
is accepted, ``encode(decode(b)) == b`` whenever ``b`` has its map keys in canonical order, and the bstr-wrapped form
of a decoded byte string is exactly :func:`encode` of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

import cbor2

from firmware_object.errors import SuitDecodeError

CborKey: TypeAlias = "int | str | bytes | tuple[CborKey, ...]"
"""A map key: an integer, a string, or an array of keys (decoded as a tuple)."""

CborValue: TypeAlias = "int | str | bytes | bool | list[CborValue] | dict[CborKey, CborValue] | Tagged | None"
"""A decoded item. Arrays are lists, except as map keys, where they are tuples."""

MAX_DEPTH: Final = 16
"""No SUIT or COSE structure nests deeper within one encoded layer (bstr-wrapped members are decoded separately)."""


@dataclass(frozen=True)
class Tagged:
    """A tagged item (major type 6), never interpreted by the decoder."""

    tag: int
    value: CborValue


def decode(data: bytes, *, max_depth: int = MAX_DEPTH) -> CborValue:
    """Decode exactly one item from ``data``; anything outside the accepted subset raises :class:`SuitDecodeError`."""
    decoder = _Decoder(bytes(data), max_depth)
    value = decoder.item(0)
    if decoder.pos != len(decoder.data):
        raise SuitDecodeError(f"{len(decoder.data) - decoder.pos} trailing bytes after the CBOR item")
    return value


def encode(value: object) -> bytes:
    """Deterministic encoding (cbor2 canonical: shortest forms, map keys sorted); tuples encode as arrays."""
    return cbor2.dumps(value, canonical=True)


class _Decoder:
    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise SuitDecodeError("CBOR item runs past the end of the data")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def head(self) -> tuple[int, int, int]:
        """Return (major type, additional info, argument), refusing non-shortest and indefinite arguments."""
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info > 27:
            raise SuitDecodeError(f"unsupported CBOR initial byte 0x{initial:02x} (indefinite length or reserved)")
        size = 1 << (info - 24)
        argument = int.from_bytes(self.take(size), "big")
        if major != 7 and argument < (24 if size == 1 else 1 << (4 * size)):
            raise SuitDecodeError("CBOR argument not in its shortest form")
        return major, info, argument

    def item(self, depth: int) -> CborValue:
        if depth > self.max_depth:
            raise SuitDecodeError(f"CBOR nests deeper than {self.max_depth}")
        major, info, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self.take(arg)
        if major == 3:
            try:
                return self.take(arg).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SuitDecodeError("CBOR text string is not valid UTF-8") from exc
        if major == 4:
            self.check_count(arg)
            return [self.item(depth + 1) for _ in range(arg)]
        if major == 5:
            self.check_count(2 * arg)
            result: dict[CborKey, CborValue] = {}
            for _ in range(arg):
                key = self.key(self.item(depth + 1))
                if key in result:
                    raise SuitDecodeError(f"duplicate CBOR map key {key!r}")
                result[key] = self.item(depth + 1)
            return result
        if major == 6:
            return Tagged(arg, self.item(depth + 1))
        return self.simple(info, arg)

    def check_count(self, items: int) -> None:
        if items > len(self.data) - self.pos:  # every item takes at least one byte
            raise SuitDecodeError("CBOR container claims more items than bytes remain")

    @staticmethod
    def simple(info: int, arg: int) -> CborValue:
        if info < 24 and arg == 20:
            return False
        if info < 24 and arg == 21:
            return True
        if info < 24 and arg == 22:
            return None
        raise SuitDecodeError("CBOR floats, undefined and other simple values are not accepted")

    @classmethod
    def key(cls, value: CborValue) -> CborKey:
        if isinstance(value, bool) or value is None or isinstance(value, dict | Tagged):
            raise SuitDecodeError(f"unsupported CBOR map key {value!r}")
        if isinstance(value, list):
            return tuple(cls.key(v) for v in value)
        return value

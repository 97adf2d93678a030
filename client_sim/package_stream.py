"""Streaming decoders for a Write of the Package (/5/0/0) in any format the device announces (sans-I/O).

A server may write the Package as opaque bytes (42), or wrapped in a container: TLV (11542, 1542), SenML CBOR
(112), LwM2M CBOR (11544), SenML JSON (110, ``vd`` in base64url) or text/plain (0, base64). Eclipse Leshan's server
picks TLV or SenML CBOR unless told otherwise. The body arrives block by block (Block1); :meth:`PackageStream.feed`
takes each block's bytes and returns the package bytes found in them at once, so the encoded body is never held
whole: only the container around the package value (its *skeleton*: a few dozen bytes, at most
:data:`MAX_SKELETON`) is kept. :meth:`PackageStream.finish` then hands the skeleton, with an empty value in place
of the package, to the core codec (:func:`lwm2m_server.core.codec.registry.decode`), which checks that it is one
Opaque resource at /5/0/0, exactly as it checks a whole body.

``declared`` is the package size as soon as the container states it (TLV length, CBOR byte-string head), so a
device refuses a package too large for it on the first block. Base64 (SenML JSON, text) states no size.

Invariants: every failure is a :class:`~lwm2m_server.core.errors.CodecError` (4.00; 4.15 for a format the device
does not take); the bytes returned, concatenated, are exactly the package the core codec decodes from the
concatenated body; memory beyond the returned bytes is bounded by :data:`MAX_SKELETON` whatever the input.
"""

from __future__ import annotations

import base64
import binascii

from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.codec.senml import MAX_CBOR_DEPTH
from lwm2m_server.core.errors import MalformedPayloadError, UnsupportedContentFormatError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import ResourceType, SingleResource
from lwm2m_server.core.paths import LwM2mPath

PACKAGE = LwM2mPath.of(5, 0, 0)
MAX_SKELETON = 1024
"""The most bytes a Package write may hold besides the package value itself (names, base name, headers)."""


class PackageStream:
    """The package bytes inside one streamed Package write; see the module docstring."""

    declared: int | None = None

    def __init__(self, fmt: ContentFormat, model: ObjectModel) -> None:
        self.fmt = fmt
        self.model = model
        self.skeleton = bytearray()
        self.values = 0  # package values met (exactly one is allowed)

    def feed(self, data: bytes) -> bytes:
        """The package bytes in ``data`` (the next bytes of the body)."""
        raise NotImplementedError

    def finish(self) -> bytes:
        """The body is complete: the last package bytes it held back; checks that the body was one Opaque value
        of /5/0/0 (:class:`CodecError` if not)."""
        self._check_complete()
        if self.values != 1:
            raise MalformedPayloadError(f"a Package write holds one opaque value, not {self.values}")
        node = registry.decode(bytes(self.skeleton), self.fmt, PACKAGE, self.model)
        if not (isinstance(node, SingleResource) and node.type is ResourceType.OPAQUE and node.value == b""):
            raise MalformedPayloadError("the body is not an opaque value of /5/0/0")
        return b""

    def smallest_package(self, body_size: int) -> int:
        """A lower bound of the package size in a body of ``body_size`` bytes (the request's Size1)."""
        return max(0, body_size - MAX_SKELETON)

    def _check_complete(self) -> None:
        pass

    def _keep(self, data: bytes | bytearray | memoryview) -> None:
        if len(self.skeleton) + len(data) > MAX_SKELETON:
            raise MalformedPayloadError(f"more than {MAX_SKELETON} bytes around the package value")
        self.skeleton += data


class OpaqueStream(PackageStream):
    """The body is the package."""

    def __init__(self, fmt: ContentFormat, model: ObjectModel) -> None:
        super().__init__(fmt, model)
        self.values = 1

    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""

    def smallest_package(self, body_size: int) -> int:
        return body_size


class TlvStream(PackageStream):
    """One resource TLV: its header (type, identifier, length), then exactly ``length`` package bytes."""

    def __init__(self, fmt: ContentFormat, model: ObjectModel) -> None:
        super().__init__(fmt, model)
        self._head = bytearray()
        self._left = 0

    def feed(self, data: bytes) -> bytes:
        i = 0
        while self.declared is None and i < len(data):
            self._head.append(data[i])
            i += 1
            self._read_head()
        if len(data) - i > self._left:
            raise MalformedPayloadError(f"{len(data) - i - self._left} bytes after the Package TLV")
        self._left -= len(data) - i
        return data[i:] if i else data

    def _read_head(self) -> None:
        head = self._head
        first = head[0]
        if first >> 6 != 3:
            raise MalformedPayloadError("the Package is written as one resource TLV")
        id_size, length_size = 2 if first & 0x20 else 1, (first >> 3) & 3
        if len(head) < 1 + id_size + length_size:
            return
        length = int.from_bytes(head[1 + id_size:], "big") if length_size else first & 7
        self.declared = self._left = length
        self.values = 1
        self._keep(bytes([first & 0xE0]) + head[1:1 + id_size])  # the same TLV with an empty value

    def _check_complete(self) -> None:
        if self.declared is None or self._left:
            raise MalformedPayloadError("the Package TLV ends early")


class CborStream(PackageStream):
    """SenML CBOR or LwM2M CBOR: every CBOR head is read as it arrives; text strings and the container go into
    the skeleton; the one byte string's contents are the package (its head becomes an empty byte string)."""

    def __init__(self, fmt: ContentFormat, model: ObjectModel) -> None:
        super().__init__(fmt, model)
        self._head = bytearray()
        self._stack: list[int | None] = []  # items left in each open array/map (None: indefinite length)
        self._left = 0  # bytes left of the current string's contents
        self._in_bytes = False  # those contents are the package
        self._done = False

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        view = memoryview(data)
        i = 0
        while i < len(view):
            if self._left:
                take = min(self._left, len(view) - i)
                if self._in_bytes:
                    out += view[i:i + take]
                else:
                    self._keep(view[i:i + take])
                self._left -= take
                i += take
                if not self._left:
                    self._item_done()
                continue
            if self._done:
                raise MalformedPayloadError(f"{len(view) - i} bytes after the CBOR item")
            self._head.append(view[i])
            i += 1
            self._read_head()
        return bytes(out)

    def _read_head(self) -> None:
        head = self._head
        major, info = head[0] >> 5, head[0] & 0x1F
        if info < 24:
            arg: int | None = info
        elif info <= 27:
            width = 1 << (info - 24)
            if len(head) < 1 + width:
                return
            arg = int.from_bytes(head[1:], "big")
        elif info == 31 and major in (4, 5):
            arg = None
        elif info == 31 and major == 7:  # break: ends an indefinite array or map
            self._head = bytearray()
            if not self._stack or self._stack[-1] is not None:
                raise MalformedPayloadError("a CBOR break outside an indefinite-length container")
            self._keep(head)
            self._stack.pop()
            self._item_done()
            return
        else:
            raise MalformedPayloadError(f"CBOR head {head[0]:#04x} is not allowed in a Package write")
        self._head = bytearray()
        if major == 2:
            assert arg is not None
            self.values += 1
            if self.values > 1:
                raise MalformedPayloadError("a Package write holds one opaque value")
            self.declared = arg
            self._keep(b"\x40")  # an empty byte string stands for the package
            self._start_string(arg, package=True)
        elif major == 3:
            self._keep(head)
            assert arg is not None
            self._start_string(arg, package=False)
        elif major in (4, 5):
            self._keep(head)
            if len(self._stack) >= MAX_CBOR_DEPTH:
                raise MalformedPayloadError("CBOR nested too deep")
            count = None if arg is None else arg * (2 if major == 5 else 1)
            self._stack.append(count)
            if count == 0:
                self._stack.pop()
                self._item_done()
        elif major == 6:
            self._keep(head)  # a tag: the next item completes it
        else:
            self._keep(head)
            self._item_done()

    def _start_string(self, length: int, *, package: bool) -> None:
        self._left, self._in_bytes = length, package
        if not length:
            self._item_done()

    def _item_done(self) -> None:
        self._in_bytes = False
        while self._stack:
            left = self._stack[-1]
            if left is None:
                return
            if left > 1:
                self._stack[-1] = left - 1
                return
            self._stack.pop()
        self._done = True

    def _check_complete(self) -> None:
        if not self._done:
            raise MalformedPayloadError("the CBOR body ends early")


_FROM_URL = bytes.maketrans(b"-_", b"+/")


class _Base64:
    """base64 in either alphabet, padding optional (as :func:`~lwm2m_server.core.codec.text.b64decode_lenient`),
    decoded 4 characters at a time."""

    def __init__(self) -> None:
        self._rest = b""
        self._padded = False

    def feed(self, text: bytes | memoryview) -> bytes:
        chars = bytes(text).translate(_FROM_URL)
        if self._padded:
            if chars.strip(b"="):
                raise MalformedPayloadError("invalid base64: characters after the padding")
            return b""
        cut = chars.find(b"=")
        if cut >= 0:
            if chars[cut:].strip(b"="):
                raise MalformedPayloadError("invalid base64: characters after the padding")
            self._padded, chars = True, chars[:cut]
        chars = self._rest + chars
        whole = len(chars) // 4 * 4
        self._rest = chars[whole:]
        return self._decode(chars[:whole])

    def end(self) -> bytes:
        rest, self._rest = self._rest, b""
        if len(rest) % 4 == 1:
            raise MalformedPayloadError("invalid base64 length")
        return self._decode(rest + b"=" * (-len(rest) % 4)) if rest else b""

    @staticmethod
    def _decode(chars: bytes) -> bytes:
        try:
            return base64.b64decode(chars, validate=True)
        except (binascii.Error, ValueError) as e:
            raise MalformedPayloadError(f"invalid base64: {e}") from None


class TextStream(PackageStream):
    """text/plain: the whole body is the package in base64."""

    def __init__(self, fmt: ContentFormat, model: ObjectModel) -> None:
        super().__init__(fmt, model)
        self._b64 = _Base64()
        self.values = 1

    def feed(self, data: bytes) -> bytes:
        return self._b64.feed(data)

    def finish(self) -> bytes:
        last = self._b64.end()
        super().finish()
        return last

    def smallest_package(self, body_size: int) -> int:
        return body_size * 3 // 4 - 2


class SenmlJsonStream(PackageStream):
    """SenML JSON: the JSON is lexed as it arrives (strings and the ``:`` after a key only); the string value of
    the key ``vd`` is decoded from base64 as it arrives and replaced by ``""`` in the skeleton. A ``vd`` value with
    an escape sequence (never needed for base64) is refused."""

    def __init__(self, fmt: ContentFormat, model: ObjectModel) -> None:
        super().__init__(fmt, model)
        self._in_string = self._escape = self._in_value = False
        self._string = bytearray()  # the current string, while it is short enough to be a key
        self._last: bytes | None = None  # the last string, while only blanks followed it
        self._vd_next = False  # the last tokens were "vd" and ':'
        self._b64 = _Base64()

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        i = 0
        while i < len(data):
            if self._in_value:
                end = data.find(b'"', i)
                stop = len(data) if end < 0 else end
                if b"\\" in data[i:stop]:
                    raise MalformedPayloadError("an escape in the vd value")
                out += self._b64.feed(memoryview(data)[i:stop])
                if end < 0:
                    return bytes(out)
                out += self._b64.end()
                self._keep(b'"')
                self._in_value = False
                i = end + 1
                continue
            c = data[i]
            self._keep(data[i:i + 1])
            i += 1
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif c == 0x5C:
                    self._escape = True
                elif c == 0x22:
                    self._in_string = False
                    self._last = bytes(self._string)
                    continue
                if len(self._string) < 8:
                    self._string.append(c)
                continue
            if c == 0x22:
                if self._vd_next:
                    self._vd_next = False
                    self.values += 1
                    if self.values > 1:
                        raise MalformedPayloadError("a Package write holds one opaque value")
                    self._in_value = True
                    continue
                self._in_string, self._string = True, bytearray()
            elif c == 0x3A:
                self._vd_next = self._last == b"vd"
            elif c not in b" \t\r\n":
                self._vd_next = False
            if c not in b" \t\r\n":
                self._last = None
        return bytes(out)

    def _check_complete(self) -> None:
        if self._in_value or self._in_string:
            raise MalformedPayloadError("the SenML JSON body ends inside a string")

    def smallest_package(self, body_size: int) -> int:
        return (body_size - MAX_SKELETON) * 3 // 4 - 2


_STREAMS: dict[ContentFormat, type[PackageStream]] = {
    ContentFormat.OPAQUE: OpaqueStream,
    ContentFormat.TEXT: TextStream,
    ContentFormat.TLV: TlvStream,
    ContentFormat.TLV_OLD: TlvStream,
    ContentFormat.SENML_CBOR: CborStream,
    ContentFormat.LWM2M_CBOR: CborStream,
    ContentFormat.SENML_JSON: SenmlJsonStream,
}
PACKAGE_FORMATS = frozenset(_STREAMS)
"""The formats a Package write may come in."""


def package_stream(content_format: int | None, model: ObjectModel) -> PackageStream:
    """The decoder for a Package write in ``content_format`` (None: opaque); 4.15 for any other format."""
    fmt = ContentFormat.OPAQUE if content_format is None else ContentFormat.of(content_format)
    stream = _STREAMS.get(fmt)
    if stream is None:
        raise UnsupportedContentFormatError(f"the Package cannot be written in {fmt.label}")
    return stream(fmt, model)


def decode_package(body: bytes, content_format: int | None, model: ObjectModel) -> bytes:
    """The package in a whole (not block-wise) body."""
    stream = package_stream(content_format, model)
    return stream.feed(body) + stream.finish()


__all__ = ["MAX_SKELETON", "PACKAGE_FORMATS", "PackageStream", "decode_package", "package_stream"]

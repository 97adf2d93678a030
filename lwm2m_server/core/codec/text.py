"""text/plain (content format 0): the value of one resource or one resource instance, as text.

Wire rules (LwM2M Core 1.1, 7.4.1): String and Corelnk as UTF-8; Integer, Unsigned Integer and Time as decimal
(Time in seconds since the epoch); Float as decimal (``repr``, so the round trip is exact, ``inf``/``-inf``
included); Boolean ``0``/``1``; Objlnk ``O:I``; Opaque as RFC 4648 base64 (padded on encode, padding optional
and either alphabet on decode); an executable resource (type NONE) as the empty payload.

Invariants: only a :class:`SingleResource` (at /O/I/R) or a :class:`ResourceInstance` (at /O/I/R/RI) travels as
text; ``decode_value(t, encode_value(t, v)) == v`` for every valid value ``v`` of type ``t``; decoding raises
:class:`CodecError` (never anything else) for any payload.

This module also holds the few value helpers the other codecs share (base64, strict Objlnk parsing and the
resolution of a single-value target path).
"""

from __future__ import annotations

import base64
import binascii
import re

from lwm2m_server.core.errors import CodecError, MalformedPayloadError, ModelError
from lwm2m_server.core.model.definitions import ObjectModel, ResourceDefinition
from lwm2m_server.core.nodes import Node, ObjectLink, ResourceInstance, ResourceType, SingleResource, Value
from lwm2m_server.core.paths import LwM2mPath

_INT_RE = re.compile(r"[+-]?[0-9]{1,20}", re.ASCII)
_FLOAT_RE = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,5})?|inf|infinity|nan)", re.ASCII | re.IGNORECASE
)
_OBJLNK_RE = re.compile(r"([0-9]{1,5}):([0-9]{1,5})", re.ASCII)
_B64_FROM_URL = str.maketrans("-_", "+/")
MAX_FLOAT_TEXT = 400  # longer than any repr of a float; longer input is refused before parsing


# --- shared value helpers -------------------------------------------------------------------------------------


def parse_objlnk(text: str) -> ObjectLink:
    """Parse ``O:I`` strictly (ASCII digits, ids in 0..65535); :class:`MalformedPayloadError` otherwise."""
    m = _OBJLNK_RE.fullmatch(text)
    if m is None:
        raise MalformedPayloadError(f"invalid object link {text[:40]!r}, expected 'O:I'")
    try:
        return ObjectLink(int(m.group(1)), int(m.group(2)))
    except ModelError as e:
        raise MalformedPayloadError(str(e)) from None


def b64decode_lenient(text: str) -> bytes:
    """Decode base64 in either alphabet (RFC 4648 sections 4 and 5), padding optional; no whitespace."""
    s = text.translate(_B64_FROM_URL).rstrip("=")
    if len(s) % 4 == 1:
        raise MalformedPayloadError("invalid base64 length")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedPayloadError(f"invalid base64: {e}") from None


def b64encode_text(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 section 4)."""
    return base64.b64encode(data).decode("ascii")


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5, as RFC 8428 wants for ``vd``)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def single_value_target(path: LwM2mPath, model: ObjectModel, fmt_name: str) -> ResourceDefinition | None:
    """The definition behind a single-value path (/O/I/R of a single resource or /O/I/R/RI), or None if the
    model does not know it. Raises :class:`CodecError` when the path cannot hold a single value."""
    ids = path.ids
    if len(ids) not in (3, 4):
        raise CodecError(f"{fmt_name} carries only a resource or resource instance value, not {path}")
    defn = model.resource(ids[0], ids[2])
    if defn is not None:
        if len(ids) == 3 and defn.multiple:
            raise CodecError(f"{fmt_name} cannot carry the multiple resource {path}")
        if len(ids) == 4 and not defn.multiple:
            raise CodecError(f"{path}: resource {ids[2]} is single-instance, it has no resource instances")
    return defn


def make_value_node(path: LwM2mPath, rtype: ResourceType, value: Value) -> SingleResource | ResourceInstance:
    """The node of a single value at /O/I/R or /O/I/R/RI; a value out of range is a malformed payload."""
    ids = path.ids
    try:
        if len(ids) == 3:
            return SingleResource(ids[2], rtype, value)
        return ResourceInstance(ids[3], rtype, value)
    except ModelError as e:
        raise MalformedPayloadError(f"{path}: {e}") from None


# --- the format -------------------------------------------------------------------------------------------------


def encode_value(rtype: ResourceType, value: Value) -> bytes:
    """The text representation of one value (the value is assumed valid for ``rtype``)."""
    if rtype is ResourceType.STRING or rtype is ResourceType.CORELNK:
        assert isinstance(value, str)
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise CodecError(f"string is not encodable as UTF-8: {e.reason}") from None
    if rtype is ResourceType.BOOLEAN:
        return b"1" if value else b"0"
    if rtype is ResourceType.FLOAT:
        assert isinstance(value, float)
        return repr(value).encode("ascii")
    if rtype is ResourceType.OPAQUE:
        assert isinstance(value, bytes)
        return base64.b64encode(value)
    if rtype is ResourceType.NONE:
        return b""
    # Integer, Unsigned Integer, Time, Objlnk: str() is the wire form
    return str(value).encode("ascii")


def decode_value(rtype: ResourceType, payload: bytes) -> Value:
    """Parse one value of ``rtype``; :class:`MalformedPayloadError` for anything that is not one."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPayloadError("text/plain payload is not UTF-8") from None
    if rtype is ResourceType.STRING or rtype is ResourceType.CORELNK:
        return text
    if rtype in (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.TIME):
        if _INT_RE.fullmatch(text) is None:
            raise MalformedPayloadError(f"{rtype.value}: {text[:40]!r} is not a decimal integer")
        return int(text)
    if rtype is ResourceType.FLOAT:
        if len(text) > MAX_FLOAT_TEXT or _FLOAT_RE.fullmatch(text) is None:
            raise MalformedPayloadError(f"Float: {text[:40]!r} is not a decimal number")
        return float(text)
    if rtype is ResourceType.BOOLEAN:
        if text == "1":
            return True
        if text == "0":
            return False
        raise MalformedPayloadError(f"Boolean: {text[:40]!r} is neither '0' nor '1'")
    if rtype is ResourceType.OPAQUE:
        return b64decode_lenient(text)
    if rtype is ResourceType.OBJLNK:
        return parse_objlnk(text)
    if text:
        raise MalformedPayloadError("an executable resource has no value")
    return None


def encode(node: Node) -> bytes:
    if not isinstance(node, SingleResource | ResourceInstance):
        raise CodecError(f"text/plain carries only a single value, not a {type(node).__name__}")
    return encode_value(node.type, node.value)


def decode(payload: bytes, path: LwM2mPath, model: ObjectModel) -> SingleResource | ResourceInstance:
    """Decode the value at ``path``; a resource the model does not know is read as a String."""
    defn = single_value_target(path, model, "text/plain")
    rtype = defn.type if defn is not None else ResourceType.STRING
    return make_value_node(path, rtype, decode_value(rtype, payload))

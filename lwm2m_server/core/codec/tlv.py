"""OMA TLV (content format 11542; LwM2M 1.0's 1542 is the same bytes), LwM2M Core 1.1 section 7.4.3.

A TLV is a header byte ``TT I LL lll`` (TT: 00 object instance, 01 resource instance, 10 multiple resource,
11 resource with value; I: identifier on 8 or 16 bits; LL: length in ``lll`` (0) or in a 8/16/24-bit field),
the identifier, the length field and the value. Values: Integer and Time in 1/2/4/8 bytes two's complement
(smallest that fits); Unsigned Integer in 1/2/4/8 bytes unsigned (never 9); Float on 4 bytes when the value is
exactly a float32, else 8; Boolean one byte 0/1; Objlnk two 16-bit ids; String/Corelnk UTF-8; Opaque raw;
an executable resource (type NONE) zero bytes.

Shapes: an :class:`Obj` at /O encodes as object-instance TLVs; an :class:`Instance` at /O/I as its resource TLVs;
a :class:`MultipleResource` at /O/I/R as one multiple-resource TLV; a :class:`SingleResource` as one resource TLV;
a :class:`ResourceInstance` as one resource-instance TLV. Decoding also accepts the other shapes clients send:
a wrapping object-instance TLV at /O/I, bare resource TLVs at /O (instance 0), bare resource-instance TLVs at
/O/I/R, and a multiple-resource TLV around the one instance asked for at /O/I/R/RI.

Invariants: ``decode(encode(n, p), p) == n`` for every node the model agrees with; decoding any bytes returns a
node or raises :class:`CodecError`; no length field is trusted beyond the payload; nesting is at most 3 deep by
construction (object instance > multiple resource > resource instance).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from lwm2m_server.core.errors import CodecError, MalformedPayloadError, ModelError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Node,
    Obj,
    ObjectLink,
    Resource,
    ResourceInstance,
    ResourceType,
    SingleResource,
    Value,
)
from lwm2m_server.core.paths import LwM2mPath

OBJECT_INSTANCE, RESOURCE_INSTANCE, MULTIPLE_RESOURCE, RESOURCE = 0, 1, 2, 3
_KIND_NAMES = ("object instance", "resource instance", "multiple resource", "resource")
MAX_LENGTH = 0xFFFFFF  # a 24-bit length field

_S8, _S16, _S32, _S64 = (struct.Struct(f) for f in (">b", ">h", ">i", ">q"))
_U8, _U16, _U32, _U64 = (struct.Struct(f) for f in (">B", ">H", ">I", ">Q"))
_F32, _F64 = struct.Struct(">f"), struct.Struct(">d")
_LINK = struct.Struct(">HH")
_SIGNED = {1: _S8, 2: _S16, 4: _S32, 8: _S64}
_UNSIGNED = {1: _U8, 2: _U16, 4: _U32, 8: _U64}
_INTEGERS = (ResourceType.INTEGER, ResourceType.TIME)

_Tlv = tuple[int, int, int, int]  # (kind, identifier, value start, value end) into the payload


# --- encoding ----------------------------------------------------------------------------------------------------


def _header(kind: int, ident: int, length: int) -> bytes:
    first = kind << 6
    if ident > 0xFF:
        first |= 0x20
        idb = ident.to_bytes(2, "big")
    else:
        idb = _U8.pack(ident)
    if length < 8:
        return _U8.pack(first | length) + idb
    if length <= 0xFF:
        return _U8.pack(first | 0x08) + idb + _U8.pack(length)
    if length <= 0xFFFF:
        return _U8.pack(first | 0x10) + idb + _U16.pack(length)
    if length <= MAX_LENGTH:
        return _U8.pack(first | 0x18) + idb + length.to_bytes(3, "big")
    raise CodecError(f"TLV value of {length} bytes exceeds the 24-bit length field")


def _encode_signed(v: int) -> bytes:
    if -0x80 <= v <= 0x7F:
        return _S8.pack(v)
    if -0x8000 <= v <= 0x7FFF:
        return _S16.pack(v)
    if -0x80000000 <= v <= 0x7FFFFFFF:
        return _S32.pack(v)
    return _S64.pack(v)


def _encode_unsigned(v: int) -> bytes:
    if v <= 0xFF:
        return _U8.pack(v)
    if v <= 0xFFFF:
        return _U16.pack(v)
    if v <= 0xFFFFFFFF:
        return _U32.pack(v)
    return _U64.pack(v)


def _encode_float(v: float) -> bytes:
    if v == v:  # NaN keeps its 8-byte form (its payload bits would not survive float32)
        try:
            b = _F32.pack(v)
        except OverflowError:
            return _F64.pack(v)
        if _F32.unpack(b)[0] == v:
            return b
    return _F64.pack(v)


def encode_value(rtype: ResourceType, value: Value) -> bytes:
    """The TLV value bytes of one value (assumed valid for ``rtype``)."""
    if rtype is ResourceType.STRING or rtype is ResourceType.CORELNK:
        assert isinstance(value, str)
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise CodecError(f"string is not encodable as UTF-8: {e.reason}") from None
    if rtype is ResourceType.OPAQUE:
        assert isinstance(value, bytes)
        return value
    if rtype in _INTEGERS:
        assert isinstance(value, int)
        return _encode_signed(value)
    if rtype is ResourceType.UNSIGNED_INTEGER:
        assert isinstance(value, int)
        return _encode_unsigned(value)
    if rtype is ResourceType.FLOAT:
        assert isinstance(value, float)
        return _encode_float(value)
    if rtype is ResourceType.BOOLEAN:
        return b"\x01" if value else b"\x00"
    if rtype is ResourceType.OBJLNK:
        assert isinstance(value, ObjectLink)
        return _LINK.pack(value.object_id, value.instance_id)
    return b""


def _encode_resource(r: Resource) -> bytes:
    if isinstance(r, SingleResource):
        v = encode_value(r.type, r.value)
        return _header(RESOURCE, r.id, len(v)) + v
    body = _encode_instances(r.type, r.instances)
    return _header(MULTIPLE_RESOURCE, r.id, len(body)) + body


def _encode_instances(rtype: ResourceType, instances: Mapping[int, Value]) -> bytes:
    parts = []
    for ri, value in instances.items():
        v = encode_value(rtype, value)
        parts.append(_header(RESOURCE_INSTANCE, ri, len(v)))
        parts.append(v)
    return b"".join(parts)


def _encode_resources(inst: Instance) -> bytes:
    return b"".join([_encode_resource(r) for r in inst.resources.values()])


def encode(node: Node) -> bytes:
    """Encode ``node`` in the shape its level calls for (see the module docstring)."""
    if isinstance(node, Obj):
        parts = []
        for inst in node.instances.values():
            body = _encode_resources(inst)
            parts.append(_header(OBJECT_INSTANCE, inst.id, len(body)))
            parts.append(body)
        return b"".join(parts)
    if isinstance(node, Instance):
        return _encode_resources(node)
    if isinstance(node, SingleResource | MultipleResource):
        return _encode_resource(node)
    v = encode_value(node.type, node.value)
    return _header(RESOURCE_INSTANCE, node.id, len(v)) + v


# --- decoding ----------------------------------------------------------------------------------------------------


def _parse(buf: bytes, start: int, end: int) -> list[_Tlv]:
    """Split ``buf[start:end]`` into TLVs without copying; every declared length is checked against ``end``."""
    out: list[_Tlv] = []
    i = start
    while i < end:
        h = buf[i]
        i += 1
        if h & 0x20:
            if i + 2 > end:
                raise MalformedPayloadError("TLV truncated in its 16-bit identifier")
            ident = (buf[i] << 8) | buf[i + 1]
            i += 2
        else:
            if i >= end:
                raise MalformedPayloadError("TLV truncated in its identifier")
            ident = buf[i]
            i += 1
        ltype = (h >> 3) & 0x03
        if ltype == 0:
            length = h & 0x07
        else:
            if i + ltype > end:
                raise MalformedPayloadError("TLV truncated in its length field")
            length = int.from_bytes(buf[i : i + ltype], "big")
            i += ltype
        if length > end - i:
            raise MalformedPayloadError(f"TLV declares {length} bytes, only {end - i} remain")
        out.append((h >> 6, ident, i, i + length))
        i += length
    return out


def decode_value(rtype: ResourceType, buf: bytes, start: int, end: int) -> Value:
    """One value of ``rtype`` from ``buf[start:end]``; :class:`MalformedPayloadError` when it is not one."""
    n = end - start
    if rtype is ResourceType.OPAQUE:
        return buf[start:end]
    if rtype is ResourceType.STRING or rtype is ResourceType.CORELNK:
        try:
            return buf[start:end].decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPayloadError(f"TLV {rtype.value} value is not UTF-8") from None
    if rtype in _INTEGERS:
        s = _SIGNED.get(n)
        if s is None:
            raise MalformedPayloadError(f"TLV {rtype.value} value of {n} bytes (1, 2, 4 or 8 expected)")
        v: int = s.unpack_from(buf, start)[0]
        return v
    if rtype is ResourceType.UNSIGNED_INTEGER:
        s = _UNSIGNED.get(n)
        if s is None:
            raise MalformedPayloadError(f"TLV Unsigned Integer value of {n} bytes (1, 2, 4 or 8 expected)")
        u: int = s.unpack_from(buf, start)[0]
        return u
    if rtype is ResourceType.FLOAT:
        if n == 4:
            f: float = _F32.unpack_from(buf, start)[0]
        elif n == 8:
            f = _F64.unpack_from(buf, start)[0]
        else:
            raise MalformedPayloadError(f"TLV Float value of {n} bytes (4 or 8 expected)")
        return f
    if rtype is ResourceType.BOOLEAN:
        if n != 1 or buf[start] > 1:
            raise MalformedPayloadError("TLV Boolean value must be one byte 0 or 1")
        return buf[start] == 1
    if rtype is ResourceType.OBJLNK:
        if n != 4:
            raise MalformedPayloadError(f"TLV Objlnk value of {n} bytes (4 expected)")
        o, i = _LINK.unpack_from(buf, start)
        return ObjectLink(o, i)
    if n:
        raise MalformedPayloadError("an executable resource has no value")
    return None


def _check_instance_id(ident: int, what: str) -> None:
    if ident == 0xFFFF:
        raise MalformedPayloadError(f"{what} id 65535 is reserved")


def _decode_instances(buf: bytes, tlvs: list[_Tlv], rtype: ResourceType) -> dict[int, Value]:
    out: dict[int, Value] = {}
    for kind, ident, s, e in tlvs:
        if kind != RESOURCE_INSTANCE:
            raise MalformedPayloadError(f"a {_KIND_NAMES[kind]} TLV inside a multiple resource")
        _check_instance_id(ident, "resource instance")
        if ident in out:
            raise MalformedPayloadError(f"resource instance {ident} appears twice")
        out[ident] = decode_value(rtype, buf, s, e)
    return out


def _decode_resource(buf: bytes, tlv: _Tlv, oid: int, model: ObjectModel) -> Resource:
    kind, rid, s, e = tlv
    defn = model.resource(oid, rid)
    rtype = defn.type if defn is not None else ResourceType.OPAQUE
    if kind == RESOURCE:
        if defn is not None and defn.multiple:
            raise MalformedPayloadError(f"resource {rid} of object {oid} is multiple, got a single value")
        return SingleResource(rid, rtype, decode_value(rtype, buf, s, e))
    if kind == MULTIPLE_RESOURCE:
        if defn is not None and not defn.multiple:
            raise MalformedPayloadError(f"resource {rid} of object {oid} is single, got a multiple resource")
        return MultipleResource(rid, rtype, _decode_instances(buf, _parse(buf, s, e), rtype))
    raise MalformedPayloadError(f"a {_KIND_NAMES[kind]} TLV where a resource was expected")


def _decode_resources(buf: bytes, tlvs: list[_Tlv], oid: int, model: ObjectModel) -> dict[int, Resource]:
    out: dict[int, Resource] = {}
    for tlv in tlvs:
        r = _decode_resource(buf, tlv, oid, model)
        if r.id in out:
            raise MalformedPayloadError(f"resource {r.id} appears twice")
        out[r.id] = r
    return out


def _all_resources(tlvs: list[_Tlv]) -> bool:
    return all(t[0] == RESOURCE or t[0] == MULTIPLE_RESOURCE for t in tlvs)


def _decode(buf: bytes, path: LwM2mPath, model: ObjectModel) -> Node:
    ids = path.ids
    depth = len(ids)
    tlvs = _parse(buf, 0, len(buf))
    if depth == 1:
        oid = ids[0]
        if not tlvs or all(t[0] == OBJECT_INSTANCE for t in tlvs):
            instances: dict[int, Instance] = {}
            for _, iid, s, e in tlvs:
                _check_instance_id(iid, "object instance")
                if iid in instances:
                    raise MalformedPayloadError(f"object instance {iid} appears twice")
                instances[iid] = Instance(iid, _decode_resources(buf, _parse(buf, s, e), oid, model))
            return Obj(oid, instances)
        if _all_resources(tlvs):  # a single-instance object sent without its object-instance TLV
            return Obj(oid, {0: Instance(0, _decode_resources(buf, tlvs, oid, model))})
        raise MalformedPayloadError(f"{path}: mixed TLV kinds at the object level")
    if depth == 2:
        oid, iid = ids
        if len(tlvs) == 1 and tlvs[0][0] == OBJECT_INSTANCE:
            _, ident, s, e = tlvs[0]
            if ident != iid:
                raise MalformedPayloadError(f"{path}: payload holds object instance {ident}")
            tlvs = _parse(buf, s, e)
        if not _all_resources(tlvs):
            raise MalformedPayloadError(f"{path}: only resource TLVs may describe an object instance")
        return Instance(iid, _decode_resources(buf, tlvs, oid, model))
    oid, rid = ids[0], ids[2]
    defn = model.resource(oid, rid)
    if depth == 3:
        if len(tlvs) == 1 and tlvs[0][0] in (RESOURCE, MULTIPLE_RESOURCE):
            if tlvs[0][1] != rid:
                raise MalformedPayloadError(f"{path}: payload holds resource {tlvs[0][1]}")
            return _decode_resource(buf, tlvs[0], oid, model)
        if all(t[0] == RESOURCE_INSTANCE for t in tlvs):  # bare instances of a multiple resource, or none
            if defn is not None and not defn.multiple:
                raise MalformedPayloadError(f"{path} is a single resource, the payload holds no value for it")
            rtype = defn.type if defn is not None else ResourceType.OPAQUE
            return MultipleResource(rid, rtype, _decode_instances(buf, tlvs, rtype))
        raise MalformedPayloadError(f"{path}: expected one resource TLV")
    ri = ids[3]
    if defn is not None and not defn.multiple:
        raise CodecError(f"{path}: resource {rid} is single-instance, it has no resource instances")
    rtype = defn.type if defn is not None else ResourceType.OPAQUE
    if len(tlvs) == 1 and tlvs[0][0] == MULTIPLE_RESOURCE and tlvs[0][1] == rid:
        tlvs = _parse(buf, tlvs[0][2], tlvs[0][3])
    if len(tlvs) != 1 or tlvs[0][0] != RESOURCE_INSTANCE or tlvs[0][1] != ri:
        raise MalformedPayloadError(f"{path}: expected one resource instance TLV with id {ri}")
    _, _, s, e = tlvs[0]
    return ResourceInstance(ri, rtype, decode_value(rtype, buf, s, e))


def decode(payload: bytes, path: LwM2mPath, model: ObjectModel) -> Node:
    """Decode the node at ``path`` (depth 1 to 4); types from the model, Opaque where it knows nothing."""
    if not 1 <= path.depth <= 4:
        raise CodecError(f"TLV describes an object, instance, resource or resource instance, not {path}")
    buf = payload if isinstance(payload, bytes) else bytes(payload)
    try:
        return _decode(buf, path, model)
    except ModelError as e:  # a value the node constructors refuse (an id or integer out of range)
        raise MalformedPayloadError(f"{path}: {e}") from None

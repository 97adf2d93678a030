"""text/plain (0) known answers, from the value rules of LwM2M Core 1.1 section 7.4.1 (Table "Data Types"):
decimal integers and floats, Boolean 0/1, Objlnk ``O:I``, Opaque as base64 (RFC 4648 test vectors)."""

from __future__ import annotations

import math

import pytest

from lwm2m_server.core.codec import registry, text
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import CodecError, MalformedPayloadError
from lwm2m_server.core.model.definitions import ObjectDefinition, ObjectModel, ResourceDefinition
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    ObjectLink,
    ResourceInstance,
    ResourceType,
    SingleResource,
)
from lwm2m_server.core.paths import LwM2mPath

T = ResourceType
F = ContentFormat
P = LwM2mPath.of
TYPES = list(ResourceType)
# object 9: resource k has type TYPES[k]; resource 20 + k is a multiple resource of the same type
MODEL = ObjectModel(
    [
        ObjectDefinition(9, "t", "1.0", "1.1", True, False, "urn:x", {
            **{k: ResourceDefinition(k, f"s{k}", "RW", False, False, t) for k, t in enumerate(TYPES)},
            **{20 + k: ResourceDefinition(20 + k, f"m{k}", "RW", True, False, t) for k, t in enumerate(TYPES)},
        })
    ]
)  # fmt: skip


def rid(t: ResourceType) -> int:
    return TYPES.index(t)


@pytest.mark.parametrize(
    ("rtype", "value", "wire"),
    [
        (T.STRING, "Open Mobile Alliance", b"Open Mobile Alliance"),
        (T.STRING, "", b""),
        (T.STRING, "h\u00e9", b"h\xc3\xa9"),
        (T.CORELNK, "</3/0>;ver=1.1", b"</3/0>;ver=1.1"),
        (T.INTEGER, -42, b"-42"),
        (T.INTEGER, -(2**63), b"-9223372036854775808"),
        (T.UNSIGNED_INTEGER, 2**64 - 1, b"18446744073709551615"),
        (T.TIME, 1367491215, b"1367491215"),
        (T.FLOAT, 0.1, b"0.1"),
        (T.FLOAT, -0.0, b"-0.0"),
        (T.FLOAT, 1e16, b"1e+16"),
        (T.FLOAT, math.inf, b"inf"),
        (T.BOOLEAN, True, b"1"),
        (T.BOOLEAN, False, b"0"),
        (T.OBJLNK, ObjectLink(66, 0), b"66:0"),
        (T.OPAQUE, b"foobar", b"Zm9vYmFy"),  # RFC 4648 section 10
        (T.OPAQUE, b"fo", b"Zm8="),
        (T.OPAQUE, b"", b""),
        (T.NONE, None, b""),
    ],
)
def test_known_answers(rtype: ResourceType, value: object, wire: bytes) -> None:
    node = SingleResource(rid(rtype), rtype, value)  # type: ignore[arg-type]
    path = P(9, 0, rid(rtype))
    assert registry.encode(node, path, F.TEXT, MODEL) == wire
    decoded = registry.decode(wire, F.TEXT, path, MODEL)
    assert decoded == node
    if isinstance(value, float):
        assert repr(decoded.value) == repr(value)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("rtype", "wire", "value"),
    [
        (T.INTEGER, b"+7", 7),
        (T.FLOAT, b"5", 5.0),
        (T.FLOAT, b"-1.5E3", -1500.0),
        (T.FLOAT, b".5", 0.5),
        (T.OPAQUE, b"Zm8", b"fo"),  # padding optional
        (T.OPAQUE, b"-_8", b"\xfb\xff"),  # base64url alphabet accepted
        (T.OPAQUE, b"+/8=", b"\xfb\xff"),
    ],
)
def test_lenient_decoding(rtype: ResourceType, wire: bytes, value: object) -> None:
    assert text.decode_value(rtype, wire) == value


@pytest.mark.parametrize(
    ("rtype", "wire"),
    [
        (T.INTEGER, b"1.0"),
        (T.INTEGER, b" 1"),
        (T.INTEGER, b"1_000"),
        (T.INTEGER, "\u0663".encode()),  # an Arabic-Indic digit: int() would take it
        (T.INTEGER, b"9223372036854775808"),  # int64 max + 1
        (T.INTEGER, b"1" * 5000),
        (T.UNSIGNED_INTEGER, b"-1"),
        (T.UNSIGNED_INTEGER, b"18446744073709551616"),
        (T.FLOAT, b"1_0.5"),
        (T.FLOAT, b"0x10"),
        (T.FLOAT, b""),
        (T.FLOAT, b"1" * 1000),
        (T.BOOLEAN, b"true"),
        (T.BOOLEAN, b"2"),
        (T.OBJLNK, b"1:"),
        (T.OBJLNK, b"1:70000"),
        (T.OBJLNK, b" 1:2"),
        (T.OPAQUE, b"Zm9v!"),
        (T.OPAQUE, b"A"),
        (T.STRING, b"\xff\xfe"),
        (T.NONE, b"x"),
    ],
)
def test_malformed(rtype: ResourceType, wire: bytes) -> None:
    with pytest.raises(MalformedPayloadError):
        registry.decode(wire, F.TEXT, P(9, 0, rid(rtype)), MODEL)


def test_resource_instance() -> None:
    node = ResourceInstance(3, T.INTEGER, 12)
    assert registry.encode(node, P(9, 0, 20 + rid(T.INTEGER), 3), F.TEXT, MODEL) == b"12"
    assert registry.decode(b"12", F.TEXT, P(9, 0, 20 + rid(T.INTEGER), 3), MODEL) == node


def test_unknown_resource_decodes_as_string() -> None:
    assert registry.decode(b"42", F.TEXT, P(9, 0, 99), MODEL) == SingleResource(99, T.STRING, "42")
    assert registry.decode(b"42", F.TEXT, P(500, 0, 1, 2), ObjectModel()) == ResourceInstance(2, T.STRING, "42")


def test_only_single_values() -> None:
    with pytest.raises(CodecError):
        registry.encode(Instance(0), P(9, 0), F.TEXT, MODEL)
    with pytest.raises(CodecError):
        registry.encode(MultipleResource(20, T.STRING, {0: "a"}), P(9, 0, 20), F.TEXT, MODEL)
    for path in (P(9), P(9, 0), P(9, 0, 20)):  # /9/0/20 is a multiple resource
        with pytest.raises(CodecError):
            registry.decode(b"1", F.TEXT, path, MODEL)
    with pytest.raises(CodecError):  # resource 1 is single: it has no instance 0
        registry.decode(b"1", F.TEXT, P(9, 0, 1, 0), MODEL)


def test_lone_surrogate_is_a_codec_error() -> None:
    with pytest.raises(CodecError):
        registry.encode(SingleResource(0, T.STRING, "\ud800"), P(9, 0, 0), F.TEXT, MODEL)

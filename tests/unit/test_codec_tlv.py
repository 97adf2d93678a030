"""OMA TLV known answers.

The byte vectors are the examples of the OMA LwM2M Technical Specification (Core 1.1 section 7.4.3.2; the same
examples are in 1.0 section 6.4.3), typed in from the specification as I know it (the search tool was not
available to check them against the document): the Device object instance /3/0, the same read at /3 (wrapped in
an object-instance TLV of length 0x79), and the two Access Control object instances /2/0 and /2/2. The few other
vectors are derived by hand from the header layout of 7.4.3 and say so.
"""

from __future__ import annotations

import math

import pytest

from lwm2m_server.core.codec import registry, tlv
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import MalformedPayloadError
from lwm2m_server.core.model.definitions import ObjectDefinition, ObjectModel, ResourceDefinition
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Obj,
    ObjectLink,
    ResourceInstance,
    ResourceType,
    SingleResource,
)
from lwm2m_server.core.paths import LwM2mPath

T = ResourceType
F = ContentFormat
P = LwM2mPath.of


def _rd(rid: int, t: ResourceType, multiple: bool = False) -> ResourceDefinition:
    return ResourceDefinition(rid, f"r{rid}", "RW", multiple, False, t)


def _od(oid: int, *resources: ResourceDefinition) -> ObjectDefinition:
    return ObjectDefinition(oid, f"o{oid}", "1.0", "1.1", True, False, f"urn:oma:lwm2m:oma:{oid}",
                            {r.id: r for r in resources})  # fmt: skip


# The Device object (3) resources the spec example uses, typed as in the OMA Device object 1.0/1.1.
DEVICE = _od(
    3,
    _rd(0, T.STRING), _rd(1, T.STRING), _rd(2, T.STRING), _rd(3, T.STRING),
    _rd(6, T.INTEGER, True), _rd(7, T.INTEGER, True), _rd(8, T.INTEGER, True),
    _rd(9, T.INTEGER), _rd(10, T.INTEGER), _rd(11, T.INTEGER, True), _rd(13, T.TIME),
    _rd(14, T.STRING), _rd(15, T.STRING), _rd(16, T.STRING),
)  # fmt: skip
# Access Control (2) 1.0: Object ID, Object Instance ID, ACL (multiple), Access Control Owner.
ACCESS_CONTROL = _od(2, _rd(0, T.INTEGER), _rd(1, T.INTEGER), _rd(2, T.INTEGER, True), _rd(3, T.INTEGER))
MODEL = ObjectModel([DEVICE, ACCESS_CONTROL])

DEVICE_INSTANCE = Instance.of(
    0,
    [
        SingleResource(0, T.STRING, "Open Mobile Alliance"),
        SingleResource(1, T.STRING, "Lightweight M2M Client"),
        SingleResource(2, T.STRING, "345000123"),
        SingleResource(3, T.STRING, "1.0"),
        MultipleResource(6, T.INTEGER, {0: 1, 1: 5}),
        MultipleResource(7, T.INTEGER, {0: 3800, 1: 5000}),
        MultipleResource(8, T.INTEGER, {0: 125, 1: 900}),
        SingleResource(9, T.INTEGER, 100),
        SingleResource(10, T.INTEGER, 15),
        MultipleResource(11, T.INTEGER, {0: 0}),
        SingleResource(13, T.TIME, 1367491215),
        SingleResource(14, T.STRING, "+02:00"),
        SingleResource(16, T.STRING, "U"),
    ],
)

# LwM2M Core 1.1, 7.4.3.2, "Single Object Instance" read of /3/0 (resource TLVs, no object-instance wrapper).
SPEC_DEVICE_3_0 = bytes.fromhex(
    "C8 00 14 4F 70 65 6E 20 4D 6F 62 69 6C 65 20 41 6C 6C 69 61 6E 63 65"  # 0 Manufacturer
    "C8 01 16 4C 69 67 68 74 77 65 69 67 68 74 20 4D 32 4D 20 43 6C 69 65 6E 74"  # 1 Model Number
    "C8 02 09 33 34 35 30 30 30 31 32 33"  # 2 Serial Number
    "C3 03 31 2E 30"  # 3 Firmware Version
    "86 06 41 00 01 41 01 05"  # 6 Available Power Sources [1, 5]
    "88 07 08 42 00 0E D8 42 01 13 88"  # 7 Power Source Voltage [3800, 5000] (8-bit length field)
    "87 08 41 00 7D 42 01 03 84"  # 8 Power Source Current [125, 900]
    "C1 09 64"  # 9 Battery Level 100
    "C1 0A 0F"  # 10 Memory Free 15
    "83 0B 41 00 00"  # 11 Error Code [0]
    "C4 0D 51 82 42 8F"  # 13 Current Time 0x5182428F
    "C6 0E 2B 30 32 3A 30 30"  # 14 UTC Offset "+02:00"
    "C1 10 55"  # 16 Supported Binding and Modes "U"
)
# The same instance read at /3: one object-instance TLV, id 0, 8-bit length 0x79 (121 bytes).
SPEC_DEVICE_3 = bytes.fromhex("08 00 79") + SPEC_DEVICE_3_0

# LwM2M Core 1.1, 7.4.3.2, "Multiple Object Instance" read of /2 (Access Control instances 0 and 2).
SPEC_ACCESS_CONTROL_2 = bytes.fromhex(
    "08 00 0E  C1 00 01  C1 01 00  83 02 41 7F 07  C1 03 7F"
    "08 02 12  C1 00 03  C1 01 00  87 02 41 7F 07 61 01 36 01  C1 03 7F"
)
ACCESS_CONTROL_OBJECT = Obj.of(
    2,
    [
        Instance.of(0, [SingleResource(0, T.INTEGER, 1), SingleResource(1, T.INTEGER, 0),
                        MultipleResource(2, T.INTEGER, {127: 7}), SingleResource(3, T.INTEGER, 127)]),
        Instance.of(2, [SingleResource(0, T.INTEGER, 3), SingleResource(1, T.INTEGER, 0),
                        MultipleResource(2, T.INTEGER, {127: 7, 310: 1}), SingleResource(3, T.INTEGER, 127)]),
    ],
)  # fmt: skip


@pytest.mark.parametrize("fmt", [F.TLV, F.TLV_OLD])
def test_spec_device_instance(fmt: ContentFormat) -> None:
    assert registry.decode(SPEC_DEVICE_3_0, fmt, P(3, 0), MODEL) == DEVICE_INSTANCE
    assert registry.encode(DEVICE_INSTANCE, P(3, 0), fmt, MODEL) == SPEC_DEVICE_3_0


def test_spec_device_object() -> None:
    obj = Obj.of(3, [DEVICE_INSTANCE])
    assert registry.decode(SPEC_DEVICE_3, F.TLV, P(3), MODEL) == obj
    assert registry.encode(obj, P(3), F.TLV, MODEL) == SPEC_DEVICE_3


def test_object_instance_wrapper_accepted_at_instance_path() -> None:
    assert registry.decode(SPEC_DEVICE_3, F.TLV, P(3, 0), MODEL) == DEVICE_INSTANCE
    with pytest.raises(MalformedPayloadError):
        registry.decode(SPEC_DEVICE_3, F.TLV, P(3, 1), MODEL)  # wraps instance 0, not 1


def test_bare_resources_at_object_path_are_instance_0() -> None:
    assert registry.decode(SPEC_DEVICE_3_0, F.TLV, P(3), MODEL) == Obj.of(3, [DEVICE_INSTANCE])


def test_spec_access_control_instances() -> None:
    assert registry.decode(SPEC_ACCESS_CONTROL_2, F.TLV, P(2), MODEL) == ACCESS_CONTROL_OBJECT
    assert registry.encode(ACCESS_CONTROL_OBJECT, P(2), F.TLV, MODEL) == SPEC_ACCESS_CONTROL_2


def test_spec_single_and_multiple_resource() -> None:
    manufacturer = SPEC_DEVICE_3_0[:23]
    assert registry.decode(manufacturer, F.TLV, P(3, 0, 0), MODEL) == DEVICE_INSTANCE.resources[0]
    power = bytes.fromhex("86 06 41 00 01 41 01 05")
    assert registry.decode(power, F.TLV, P(3, 0, 6), MODEL) == DEVICE_INSTANCE.resources[6]
    assert registry.encode(DEVICE_INSTANCE.resources[6], P(3, 0, 6), F.TLV, MODEL) == power
    # bare resource-instance TLVs at /O/I/R are accepted too
    assert registry.decode(power[2:], F.TLV, P(3, 0, 6), MODEL) == DEVICE_INSTANCE.resources[6]


def test_resource_instance() -> None:
    ri = ResourceInstance(1, T.INTEGER, 5)
    assert registry.encode(ri, P(3, 0, 6, 1), F.TLV, MODEL) == bytes.fromhex("41 01 05")
    assert registry.decode(bytes.fromhex("41 01 05"), F.TLV, P(3, 0, 6, 1), MODEL) == ri
    # the multiple-resource TLV around exactly that instance is accepted
    assert registry.decode(bytes.fromhex("83 06 41 01 05"), F.TLV, P(3, 0, 6, 1), MODEL) == ri
    with pytest.raises(MalformedPayloadError):
        registry.decode(bytes.fromhex("41 00 05"), F.TLV, P(3, 0, 6, 1), MODEL)


# --- hand-derived vectors (header layout of 7.4.3: TT I LL lll) ---------------------------------------------------


def test_16_bit_identifier_and_length_fields() -> None:
    model = ObjectModel([_od(9, _rd(300, T.OPAQUE))])
    for size, header in [
        (7, "E7 01 2C"),  # 11 1 00 111: length 7 in the type byte, 16-bit id 0x012C
        (8, "E8 01 2C 08"),  # 11 1 01 000: 8-bit length field
        (256, "F0 01 2C 01 00"),  # 11 1 10 000: 16-bit length field
        (65536, "F8 01 2C 01 00 00"),  # 11 1 11 000: 24-bit length field
    ]:
        node = SingleResource(300, T.OPAQUE, b"\xab" * size)
        payload = bytes.fromhex(header) + node.value  # type: ignore[operator]
        assert registry.encode(node, P(9, 0, 300), F.TLV, model) == payload
        assert registry.decode(payload, F.TLV, P(9, 0, 300), model) == node


@pytest.mark.parametrize(
    ("rtype", "value", "hexvalue"),
    [
        (T.INTEGER, 0, "00"),
        (T.INTEGER, -1, "FF"),
        (T.INTEGER, 127, "7F"),
        (T.INTEGER, 128, "00 80"),
        (T.INTEGER, -129, "FF 7F"),
        (T.INTEGER, 32768, "00 00 80 00"),
        (T.INTEGER, 2**31, "00 00 00 00 80 00 00 00"),
        (T.INTEGER, -(2**63), "80 00 00 00 00 00 00 00"),
        (T.UNSIGNED_INTEGER, 255, "FF"),
        (T.UNSIGNED_INTEGER, 256, "01 00"),
        (T.UNSIGNED_INTEGER, 2**32 - 1, "FF FF FF FF"),
        (T.UNSIGNED_INTEGER, 2**64 - 1, "FF FF FF FF FF FF FF FF"),
        (T.TIME, 1367491215, "51 82 42 8F"),
        (T.FLOAT, 1.5, "3F C0 00 00"),  # exact in float32
        (T.FLOAT, -0.0, "80 00 00 00"),
        (T.FLOAT, math.inf, "7F 80 00 00"),
        (T.FLOAT, 0.1, "3F B9 99 99 99 99 99 9A"),  # not a float32: 8 bytes
        (T.BOOLEAN, True, "01"),
        (T.BOOLEAN, False, "00"),
        (T.OBJLNK, ObjectLink(66, 65535), "00 42 FF FF"),
        (T.STRING, "é", "C3 A9"),
        (T.OPAQUE, b"", ""),
        (T.NONE, None, ""),
    ],
)
def test_value_encodings(rtype: ResourceType, value: object, hexvalue: str) -> None:
    raw = bytes.fromhex(hexvalue)
    assert tlv.encode_value(rtype, value) == raw  # type: ignore[arg-type]
    decoded = tlv.decode_value(rtype, raw, 0, len(raw))
    assert decoded == value and type(decoded) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, decoded) == math.copysign(1, value)  # type: ignore[arg-type]


def test_decoding_accepts_wider_integers_than_needed() -> None:
    assert tlv.decode_value(T.INTEGER, b"\x00\x00\x00\x05", 0, 4) == 5
    assert tlv.decode_value(T.UNSIGNED_INTEGER, b"\x00\x00\x00\x00\x00\x00\x00\xff", 0, 8) == 255
    assert tlv.decode_value(T.FLOAT, b"\x3f\xf8\x00\x00\x00\x00\x00\x00", 0, 8) == 1.5


@pytest.mark.parametrize(
    ("rtype", "raw"),
    [
        (T.INTEGER, b"\x00\x00\x00"),  # 3 bytes
        (T.UNSIGNED_INTEGER, b"\x00" * 9),  # 9 bytes never
        (T.FLOAT, b"\x00\x00"),
        (T.BOOLEAN, b"\x02"),
        (T.BOOLEAN, b""),
        (T.OBJLNK, b"\x00\x01\x00"),
        (T.STRING, b"\xff"),
        (T.NONE, b"\x00"),
    ],
)
def test_bad_values_are_malformed(rtype: ResourceType, raw: bytes) -> None:
    with pytest.raises(MalformedPayloadError):
        tlv.decode_value(rtype, raw, 0, len(raw))


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ("C8", (3, 0)),  # header only
        ("E8 01", (3, 0)),  # 16-bit id cut
        ("C8 00", (3, 0)),  # length field missing
        ("C8 00 14 4F 70", (3, 0)),  # declares 20 bytes, has 2
        ("F8 00 00 FF FF FF", (3, 0)),  # declares 16 MiB
        ("86 06 41 00 01 41 01", (3, 0)),  # inner TLV runs past its parent
        ("C1 09 64 C1 09 64", (3, 0)),  # resource 9 twice
        ("86 06 41 00 01 41 00 05", (3, 0)),  # resource instance 0 twice
        ("C1 06 01", (3, 0)),  # a single value for the multiple resource 6
        ("83 09 41 00 64", (3, 0)),  # a multiple resource for the single resource 9
        ("08 00 03 C1 09 64", (3, 0, 9)),  # an object instance TLV at a resource path
        ("C1 0A 64", (3, 0, 9)),  # resource 10 at /3/0/9
        ("41 00 64", (3, 0)),  # a resource instance TLV directly in an instance
        ("08 00 03 C1 09 64 C1 09 64", (3,)),  # mixed object instance and resource TLVs
        ("08 00 00 08 00 00", (3,)),  # object instance 0 twice
    ],
)
def test_malformed(payload: str, path: tuple[int, ...]) -> None:
    with pytest.raises(MalformedPayloadError):
        registry.decode(bytes.fromhex(payload), F.TLV, LwM2mPath(path), MODEL)


def test_reserved_instance_ids_refused() -> None:
    with pytest.raises(MalformedPayloadError):
        registry.decode(bytes.fromhex("28 FF FF 00"), F.TLV, P(3), MODEL)  # object instance 65535
    with pytest.raises(MalformedPayloadError):
        registry.decode(bytes.fromhex("84 06 61 FF FF 00"), F.TLV, P(3, 0, 6), MODEL)  # resource instance 65535


def test_unknown_resources_decode_as_opaque() -> None:
    node = registry.decode(bytes.fromhex("C2 05 12 34 83 06 41 00 09"), F.TLV, P(500, 1), ObjectModel())
    assert node == Instance.of(
        1, [SingleResource(5, T.OPAQUE, b"\x12\x34"), MultipleResource(6, T.OPAQUE, {0: b"\x09"})]
    )


def test_empty_payloads() -> None:
    assert registry.decode(b"", F.TLV, P(3), MODEL) == Obj(3)
    assert registry.decode(b"", F.TLV, P(3, 0), MODEL) == Instance(0)
    assert registry.decode(b"", F.TLV, P(3, 0, 6), MODEL) == MultipleResource(6, T.INTEGER)
    with pytest.raises(MalformedPayloadError):
        registry.decode(b"", F.TLV, P(3, 0, 9), MODEL)
    with pytest.raises(MalformedPayloadError):
        registry.decode(b"", F.TLV, P(3, 0, 6, 0), MODEL)


def test_empty_multiple_resource_round_trips_inside_an_instance() -> None:
    inst = Instance.of(0, [MultipleResource(6, T.INTEGER), SingleResource(9, T.INTEGER, 1)])
    payload = registry.encode(inst, P(3, 0), F.TLV, MODEL)
    assert payload == bytes.fromhex("80 06 C1 09 01")
    assert registry.decode(payload, F.TLV, P(3, 0), MODEL) == inst


def test_with_builtin_model_when_available() -> None:
    try:
        model = ObjectModel.default()
    except ImportError:
        pytest.skip("lwm2m_server.core.model.builtin is not there yet")
    node = registry.decode(SPEC_DEVICE_3_0, F.TLV, P(3, 0), model)
    assert isinstance(node, Instance)
    assert node.resources[0] == SingleResource(0, T.STRING, "Open Mobile Alliance")
    assert node.resources[13] == SingleResource(13, T.TIME, 1367491215)

"""LwM2M CBOR (11544) known answers, LwM2M Core 1.2 section 7.4.6.

The vectors are derived by hand from the rules of 7.4.6 (a map rooted at ``/``, keys that are ids or arrays of
ids, CBOR-typed leaves, Objlnk as the text "O:I") and RFC 8949 (major types and tag 1); each byte is annotated.
I could not check them against the specification's own examples (the search tool was not available).
"""

from __future__ import annotations

import pytest

from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import CodecError, MalformedPayloadError
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
from tests.unit.test_codec_tlv import DEVICE_INSTANCE, MODEL

T = ResourceType
F = ContentFormat
P = LwM2mPath.of
OMA = "4F70656E204D6F62696C6520416C6C69616E6365"  # "Open Mobile Alliance", 20 bytes
SMALL = Instance.of(
    0,
    [
        SingleResource(0, T.STRING, "Open Mobile Alliance"),
        MultipleResource(6, T.INTEGER, {0: 1, 1: 5}),
        SingleResource(9, T.INTEGER, 100),
    ],
)
# {[3, 0]: {0: "Open Mobile Alliance", 6: {0: 1, 1: 5}, 9: 100}}
SMALL_COMPRESSED = bytes.fromhex(
    "A1"  # map(1)
    "82 03 00"  # key [3, 0]
    "A3"  # map(3)
    f"00 74 {OMA}"  # 0: "Open Mobile Alliance"
    "06 A2 00 01 01 05"  # 6: {0: 1, 1: 5}
    "09 18 64"  # 9: 100
)


def test_small_instance_known_answer() -> None:
    assert registry.encode(SMALL, P(3, 0), F.LWM2M_CBOR, MODEL) == SMALL_COMPRESSED
    assert registry.decode(SMALL_COMPRESSED, F.LWM2M_CBOR, P(3, 0), MODEL) == SMALL


@pytest.mark.parametrize(
    "payload",
    [
        # {3: {0: {0: "...", 6: {0: 1, 1: 5}, 9: 100}}}  -- fully nested
        "A1 03 A1 00 A3 00 74" + OMA + "06 A2 00 01 01 05 09 18 64",
        # {[3, 0, 0]: "...", [3, 0, 6, 0]: 1, [3, 0, 6, 1]: 5, [3, 0, 9]: 100}  -- flat, one key per leaf
        "A4 83 03 00 00 74" + OMA + "84 03 00 06 00 01 84 03 00 06 01 05 83 03 00 09 18 64",
        # {3: {[0, 0]: "...", [0, 6]: {0: 1, 1: 5}}, [3, 0, 9]: 100}  -- mixed
        "A2 03 A2 82 00 00 74" + OMA + "82 00 06 A2 00 01 01 05 83 03 00 09 18 64",
    ],
)
def test_any_legal_nesting_decodes(payload: str) -> None:
    assert registry.decode(bytes.fromhex(payload), F.LWM2M_CBOR, P(3, 0), MODEL) == SMALL


def test_single_values() -> None:
    node = SingleResource(9, T.INTEGER, 100)
    assert registry.encode(node, P(3, 0, 9), F.LWM2M_CBOR, MODEL) == bytes.fromhex("A1 83 03 00 09 18 64")
    ri = ResourceInstance(1, T.INTEGER, 5)
    assert registry.encode(ri, P(3, 0, 6, 1), F.LWM2M_CBOR, MODEL) == bytes.fromhex("A1 84 03 00 06 01 05")
    assert registry.decode(bytes.fromhex("A1 84 03 00 06 01 05"), F.LWM2M_CBOR, P(3, 0, 6, 1), MODEL) == ri


TYPED = ObjectModel(
    [
        ObjectDefinition(66, "typed", "1.0", "1.2", True, False, "urn:x", {
            0: ResourceDefinition(0, "blob", "RW", False, False, T.OPAQUE),
            1: ResourceDefinition(1, "link", "RW", False, False, T.OBJLNK),
            2: ResourceDefinition(2, "flag", "RW", False, False, T.BOOLEAN),
            3: ResourceDefinition(3, "ratio", "RW", False, False, T.FLOAT),
            4: ResourceDefinition(4, "when", "RW", False, False, T.TIME),
            5: ResourceDefinition(5, "big", "RW", False, False, T.UNSIGNED_INTEGER),
        })
    ]
)  # fmt: skip


def test_leaf_types() -> None:
    inst = Instance.of(
        0,
        [
            SingleResource(0, T.OPAQUE, b"\x01\x02"),
            SingleResource(1, T.OBJLNK, ObjectLink(3, 0)),
            SingleResource(2, T.BOOLEAN, True),
            SingleResource(3, T.FLOAT, 1.5),
            SingleResource(4, T.TIME, 1367491215),
            SingleResource(5, T.UNSIGNED_INTEGER, 2**64 - 1),
        ],
    )
    expected = bytes.fromhex(
        "A1 82 18 42 00 A6"  # {[66, 0]: map(6)
        "00 42 0102"  # 0: h'0102'
        "01 63 333A30"  # 1: "3:0"
        "02 F5"  # 2: true
        "03 FB 3FF8000000000000"  # 3: 1.5 (float64)
        "04 1A 5182428F"  # 4: 1367491215
        "05 1B FFFFFFFFFFFFFFFF"  # 5: 2^64 - 1
    )
    assert registry.encode(inst, P(66, 0), F.LWM2M_CBOR, TYPED) == expected
    assert registry.decode(expected, F.LWM2M_CBOR, P(66, 0), TYPED) == inst


def test_time_as_tag_1_and_floats_as_half() -> None:
    # {[66, 0, 4]: 1(1367491215)}
    payload = bytes.fromhex("A1 83 18 42 00 04 C1 1A 5182428F")
    assert registry.decode(payload, F.LWM2M_CBOR, P(66, 0, 4), TYPED) == SingleResource(4, T.TIME, 1367491215)
    # {[66, 0, 3]: 1.5 as a half float}
    payload = bytes.fromhex("A1 83 18 42 00 03 F9 3E00")
    assert registry.decode(payload, F.LWM2M_CBOR, P(66, 0, 3), TYPED) == SingleResource(3, T.FLOAT, 1.5)


def test_empty_containers_are_kept() -> None:
    obj = Obj.of(3, [Instance.of(0, [MultipleResource(6, T.INTEGER)]), Instance(1)])
    payload = registry.encode(obj, P(3), F.LWM2M_CBOR, MODEL)
    # {3: {[0, 6]: {}, 1: {}}}
    assert payload == bytes.fromhex("A1 03 A2 82 00 06 A0 01 A0")
    assert registry.decode(payload, F.LWM2M_CBOR, P(3), MODEL) == obj
    assert registry.decode(bytes.fromhex("A1 03 A0"), F.LWM2M_CBOR, P(3), MODEL) == Obj(3)


def test_composite_merges_into_one_tree() -> None:
    nodes = {
        P(3, 0, 9): SingleResource(9, T.INTEGER, 100),
        P(3, 0, 6, 1): ResourceInstance(1, T.INTEGER, 5),
        P(66, 0, 2): SingleResource(2, T.BOOLEAN, False),
    }
    model = ObjectModel([*MODEL, *TYPED])
    payload = registry.encode_composite(nodes, F.LWM2M_CBOR, model)
    # {[3, 0]: {9: 100, [6, 1]: 5}, [66, 0, 2]: false}
    assert payload == bytes.fromhex("A2 82 03 00 A2 09 18 64 82 06 01 05 83 18 42 00 02 F4")
    assert registry.decode_composite(payload, F.LWM2M_CBOR, model) == nodes
    with pytest.raises(CodecError):  # overlapping paths
        registry.encode_composite({P(3, 0): Instance(0), P(3, 0, 9): nodes[P(3, 0, 9)]}, F.LWM2M_CBOR, model)


def test_composite_paths() -> None:
    paths = [P(3, 0, 9), P(1), P(3, 0, 6, 1)]
    payload = registry.encode_paths(paths, F.LWM2M_CBOR)
    # {[3, 0, 9]: null, 1: null, [3, 0, 6, 1]: null}
    assert payload == bytes.fromhex("A3 83 03 00 09 F6 01 F6 84 03 00 06 01 F6")
    assert registry.decode_paths(payload, F.LWM2M_CBOR) == paths
    with pytest.raises(CodecError):
        registry.encode_paths([LwM2mPath(())], F.LWM2M_CBOR)


def test_device_instance_round_trip() -> None:
    payload = registry.encode(DEVICE_INSTANCE, P(3, 0), F.LWM2M_CBOR, MODEL)
    assert registry.decode(payload, F.LWM2M_CBOR, P(3, 0), MODEL) == DEVICE_INSTANCE


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ("A1 83 03 00 09 63 313030", (3, 0, 9)),  # a text string for an Integer
        ("A1 83 03 00 09 F9 3E00", (3, 0, 9)),  # 1.5 for an Integer
        ("A1 83 03 00 09 1B FFFFFFFFFFFFFFFF", (3, 0, 9)),  # beyond int64
        ("A1 82 03 00 18 64", (3, 0)),  # a value at /3/0
        ("A1 85 03 00 06 00 00 01", (3, 0)),  # 5 levels
        ("A1 84 03 00 06 00 A1 00 01", (3, 0)),  # a map below a resource instance
        ("A1 80 01", (3, 0)),  # an empty array key
        ("A1 20 01", (3, 0)),  # a negative id
        ("A1 83 03 19 FFFF 09 01", (3,)),  # reserved instance id 65535
        ("A1 63 616263 01", (3, 0)),  # a text key
        ("A1 83 03 00 09 82 01 02", (3, 0)),  # an array value
        ("A1 83 03 00 09 D8 25 50" + "00" * 16, (3, 0)),  # a UUID (tag 37)
        ("A1 83 04 00 09 01", (3, 0)),  # outside the requested path
        ("A1 83 03 00 09 01 00", (3, 0)),  # trailing byte
        ("A1 83 03 00 09", (3, 0)),  # truncated
        ("81 A0", (3, 0)),  # an array, not a map
        ("A1 83 03 00 06 01", (3, 0)),  # a single value for the multiple resource 6
    ],
)
def test_malformed(payload: str, path: tuple[int, ...]) -> None:
    with pytest.raises(MalformedPayloadError):
        registry.decode(bytes.fromhex(payload), F.LWM2M_CBOR, LwM2mPath(path), MODEL)


def test_same_path_twice() -> None:
    # {[3, 0, 9]: 1, [3, 0, 9]: 2}: a duplicate CBOR map key; cbor2 keeps the last one (RFC 8949 leaves it to us)
    assert registry.decode(bytes.fromhex("A2 83 03 00 09 01 83 03 00 09 02"), F.LWM2M_CBOR, P(3, 0, 9), MODEL) == (
        SingleResource(9, T.INTEGER, 2)
    )
    # {[3, 0, 9]: 1, [3, 0]: {9: 2}}: different keys, the same path
    with pytest.raises(MalformedPayloadError):
        registry.decode(bytes.fromhex("A2 83 03 00 09 01 82 03 00 A1 09 02"), F.LWM2M_CBOR, P(3, 0), MODEL)


def test_empty_container_that_is_not_empty() -> None:
    # {[3, 0, 6]: {}, [3, 0, 6, 0]: 1}: at a path the tree simply merges both; as a composite it is ambiguous
    raw = bytes.fromhex("A2 83 03 00 06 A0 84 03 00 06 00 01")
    assert registry.decode(raw, F.LWM2M_CBOR, P(3, 0, 6), MODEL) == MultipleResource(6, T.INTEGER, {0: 1})
    with pytest.raises(MalformedPayloadError):
        registry.decode_composite(raw, F.LWM2M_CBOR, MODEL)


def test_unknown_resources_typed_by_cbor_type() -> None:
    # {[500, 0]: {0: 1, 1: 1.5, 2: "x", 3: false, 4: h'01', 5: null}}
    payload = bytes.fromhex("A1 82 19 01F4 00 A6 00 01 01 F9 3E00 02 61 78 03 F4 04 41 01 05 F6")
    assert registry.decode(payload, F.LWM2M_CBOR, P(500, 0), ObjectModel()) == Instance.of(
        0,
        [
            SingleResource(0, T.INTEGER, 1),
            SingleResource(1, T.FLOAT, 1.5),
            SingleResource(2, T.STRING, "x"),
            SingleResource(3, T.BOOLEAN, False),
            SingleResource(4, T.OPAQUE, b"\x01"),
            SingleResource(5, T.NONE, None),
        ],
    )


def test_cyclic_structure_does_not_recurse() -> None:
    # 28(map{3: 29(0)}): a shareable map that contains itself (RFC 8949 tags 28/29, decoded by cbor2)
    payload = bytes.fromhex("D8 1C A1 03 D8 1D 00")
    with pytest.raises(MalformedPayloadError):
        registry.decode(payload, F.LWM2M_CBOR, P(3, 0), MODEL)
    with pytest.raises(MalformedPayloadError):
        registry.decode_paths(payload, F.LWM2M_CBOR)

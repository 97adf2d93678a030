"""SenML JSON (110) and SenML CBOR (112) known answers.

The JSON document is the Device object example of LwM2M Core 1.1 section 7.4.4 (Read /3/0), typed in from the
specification as I know it (the search tool was not available to check it against the document). The CBOR
vectors are derived by hand from RFC 8428 section 6 (labels bn -2, n 0, v 2, vs 3, vb 4, vd 8) and RFC 8949
(major types), with LwM2M's text key "vlo" (Core 1.1, 7.4.5); each byte is annotated.
"""

from __future__ import annotations

import json

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

SPEC_DEVICE_JSON = b"""
[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},
 {"n":"1","vs":"Lightweight M2M Client"},
 {"n":"2","vs":"345000123"},
 {"n":"3","vs":"1.0"},
 {"n":"6/0","v":1},
 {"n":"6/1","v":5},
 {"n":"7/0","v":3800},
 {"n":"7/1","v":5000},
 {"n":"8/0","v":125},
 {"n":"8/1","v":900},
 {"n":"9","v":100},
 {"n":"10","v":15},
 {"n":"11/0","v":0},
 {"n":"13","v":1367491215},
 {"n":"14","vs":"+02:00"},
 {"n":"16","vs":"U"}]
"""


def test_spec_device_instance_json() -> None:
    assert registry.decode(SPEC_DEVICE_JSON, F.SENML_JSON, P(3, 0), MODEL) == DEVICE_INSTANCE
    ours = registry.encode(DEVICE_INSTANCE, P(3, 0), F.SENML_JSON, MODEL)
    assert json.loads(ours) == json.loads(SPEC_DEVICE_JSON)  # the same records, byte layout aside
    assert ours == json.dumps(json.loads(SPEC_DEVICE_JSON), separators=(",", ":")).encode()


def test_device_instance_cbor_matches_json() -> None:
    ours = registry.encode(DEVICE_INSTANCE, P(3, 0), F.SENML_CBOR, MODEL)
    assert registry.decode(ours, F.SENML_CBOR, P(3, 0), MODEL) == DEVICE_INSTANCE


# [{-2: "/3/0/", 0: "0", 3: "Open Mobile Alliance"}, {0: "6/0", 2: 1}, {0: "6/1", 2: 5}, {0: "9", 2: 100}]
SMALL_CBOR = bytes.fromhex(
    "84"  # array(4)
    "A3 21 65 2F332F302F 00 61 30 03 74 4F70656E204D6F62696C6520416C6C69616E6365"  # {-2: "/3/0/", 0: "0", 3: ...}
    "A2 00 63 362F30 02 01"  # {0: "6/0", 2: 1}
    "A2 00 63 362F31 02 05"  # {0: "6/1", 2: 5}
    "A2 00 61 39 02 18 64"  # {0: "9", 2: 100}
)
SMALL = Instance.of(
    0,
    [
        SingleResource(0, T.STRING, "Open Mobile Alliance"),
        MultipleResource(6, T.INTEGER, {0: 1, 1: 5}),
        SingleResource(9, T.INTEGER, 100),
    ],
)


def test_small_instance_cbor_known_answer() -> None:
    assert registry.encode(SMALL, P(3, 0), F.SENML_CBOR, MODEL) == SMALL_CBOR
    assert registry.decode(SMALL_CBOR, F.SENML_CBOR, P(3, 0), MODEL) == SMALL


LINKS = ObjectModel(
    [
        ObjectDefinition(66, "links", "1.0", "1.1", True, False, "urn:x", {
            0: ResourceDefinition(0, "blob", "RW", False, False, T.OPAQUE),
            1: ResourceDefinition(1, "link", "RW", False, False, T.OBJLNK),
            2: ResourceDefinition(2, "flag", "RW", False, False, T.BOOLEAN),
            3: ResourceDefinition(3, "ratio", "RW", False, False, T.FLOAT),
        })
    ]
)  # fmt: skip


def test_value_fields_json() -> None:
    inst = Instance.of(
        0,
        [
            SingleResource(0, T.OPAQUE, b"\xfb\xff"),
            SingleResource(1, T.OBJLNK, ObjectLink(3, 0)),
            SingleResource(2, T.BOOLEAN, True),
            SingleResource(3, T.FLOAT, 1.5),
        ],
    )
    # vd is base64url without padding (RFC 8428 section 4.3): 0xFB 0xFF -> "-_8"
    expected = b'[{"bn":"/66/0/","n":"0","vd":"-_8"},{"n":"1","vlo":"3:0"},{"n":"2","vb":true},{"n":"3","v":1.5}]'
    assert registry.encode(inst, P(66, 0), F.SENML_JSON, LINKS) == expected
    assert registry.decode(expected, F.SENML_JSON, P(66, 0), LINKS) == inst


def test_value_fields_cbor() -> None:
    node = SingleResource(1, T.OBJLNK, ObjectLink(3, 0))
    # [{-2: "/66/0/1", "vlo": "3:0"}]
    expected = bytes.fromhex("81 A2 21 67 2F36362F302F31 63 766C6F 63 333A30")
    assert registry.encode(node, P(66, 0, 1), F.SENML_CBOR, LINKS) == expected
    assert registry.decode(expected, F.SENML_CBOR, P(66, 0, 1), LINKS) == node
    blob = SingleResource(0, T.OPAQUE, b"\x01\x02")
    # [{-2: "/66/0/0", 8: h'0102'}]
    expected = bytes.fromhex("81 A2 21 67 2F36362F302F30 08 42 0102")
    assert registry.encode(blob, P(66, 0, 0), F.SENML_CBOR, LINKS) == expected
    assert registry.decode(expected, F.SENML_CBOR, P(66, 0, 0), LINKS) == blob


def test_single_value_layout() -> None:
    node = SingleResource(0, T.STRING, "Open Mobile Alliance")
    assert registry.encode(node, P(3, 0, 0), F.SENML_JSON, MODEL) == b'[{"bn":"/3/0/0","vs":"Open Mobile Alliance"}]'
    ri = ResourceInstance(1, T.INTEGER, 5)
    assert registry.encode(ri, P(3, 0, 6, 1), F.SENML_JSON, MODEL) == b'[{"bn":"/3/0/6/1","v":5}]'


@pytest.mark.parametrize(
    "records",
    [
        '[{"bn":"/3/0/","n":"9","v":100},{"n":"6/0","v":1}]',
        '[{"bn":"/3/0/9","v":100},{"bn":"/3/0/6/0","v":1}]',
        '[{"n":"/3/0/9","v":100},{"n":"/3/0/6/0","v":1}]',
        '[{"bn":"/","n":"3/0/9","v":100},{"n":"3/0/6/0","v":1}]',
        '[{"bn":"/3","n":"/0/9","v":100},{"n":"/0/6/0","v":1}]',
        '[{"bn":"/3/0/","n":"9","v":100},{"bn":"/3/0/6/","n":"0","v":1}]',
        '[{"bn":"/3/0/6/","n":"0","v":1},{"bn":"/3/0/","n":"9","v":100}]',
        '[{"bn":"/3/","n":"0/9","v":99,"bv":1},{"n":"0/6/0","v":0}]',  # bv adds to v from its record on
        '[{"bn":"/3/0/","n":"9","v":100.0},{"n":"6/0","v":1,"t":-5,"u":"V"}]',  # integral float; t and u ignored
    ],
)
def test_base_names_split_any_legal_way(records: str) -> None:
    expected = Instance.of(0, [SingleResource(9, T.INTEGER, 100), MultipleResource(6, T.INTEGER, {0: 1})])
    assert registry.decode(records.encode(), F.SENML_JSON, P(3, 0), MODEL) == expected


@pytest.mark.parametrize(
    ("records", "path"),
    [
        ('[{"bn":"/3/0/","n":"9"}]', (3, 0, 9)),  # no value for an Integer
        ('[{"n":"/3/0","v":1}]', (3, 0)),  # a value at an instance path
        ('[{"n":"/3/0/","v":1}]', (3, 0)),  # trailing slash
        ('[{"n":"3/0/9","v":1}]', (3, 0)),  # not absolute
        ('[{"n":"/3/0/09","v":1}]', (3, 0)),  # leading zero
        ('[{"n":"/3/0/9/0/1","v":1}]', (3, 0)),  # 5 levels
        ('[{"n":"/3/0/6/65535","v":1}]', (3, 0)),  # reserved resource instance id
        ('[{"n":"/3/0/9","v":1},{"n":"/3/0/9","v":2}]', (3, 0)),  # twice
        ('[{"n":"/3/0/9","v":1,"vs":"1"}]', (3, 0)),  # two values
        ('[{"n":"/3/0/9","vs":"1"}]', (3, 0)),  # a string for an Integer
        ('[{"n":"/3/0/9","v":1.5}]', (3, 0)),  # a fraction for an Integer
        ('[{"n":"/3/0/9","v":9223372036854775808}]', (3, 0)),  # beyond int64
        ('[{"n":"/3/0/9","v":true}]', (3, 0)),
        ('[{"n":"/3/0/9","v":1,"x_":1}]', (3, 0)),  # must-understand field
        ('[{"n":"/3/0/9","v":NaN}]', (3, 0)),
        ('[{"n":"/3/0/6","v":1}]', (3, 0)),  # a single value for the multiple resource 6
        ('[{"n":"/3/0/9/0","v":1}]', (3, 0)),  # an instance of the single resource 9
        ('[{"n":"/4/0/9","v":1}]', (3, 0)),  # outside the requested path
        ('[{"n":"/3/0/9","v":1}] x', (3, 0)),  # trailing garbage
        ('{"n":"/3/0/9","v":1}', (3, 0)),  # not an array
        ('[["/3/0/9"]]', (3, 0)),
        ('[{"bn":1,"n":"/3/0/9","v":1}]', (3, 0)),
        ('[{"n":"/66/0/0","vd":"***"}]', (66, 0)),
    ],
)
def test_malformed_json(records: str, path: tuple[int, ...]) -> None:
    with pytest.raises(MalformedPayloadError):
        registry.decode(records.encode(), F.SENML_JSON, LwM2mPath(path), ObjectModel([*MODEL, *LINKS]))


def test_unknown_resources_typed_by_value_field() -> None:
    payload = (
        b'[{"bn":"/500/0/","n":"0","v":1},{"n":"1","v":1.5},{"n":"2","vs":"x"},{"n":"3","vb":false},'
        b'{"n":"4","vd":"AQ"},{"n":"5","vlo":"1:2"},{"n":"6","v":18446744073709551615},{"n":"7/0","v":-1},'
        b'{"n":"7/1","v":18446744073709551615}]'
    )
    node = registry.decode(payload, F.SENML_JSON, P(500, 0), ObjectModel())
    assert node == Instance.of(
        0,
        [
            SingleResource(0, T.INTEGER, 1),
            SingleResource(1, T.FLOAT, 1.5),
            SingleResource(2, T.STRING, "x"),
            SingleResource(3, T.BOOLEAN, False),
            SingleResource(4, T.OPAQUE, b"\x01"),
            SingleResource(5, T.OBJLNK, ObjectLink(1, 2)),
            SingleResource(6, T.UNSIGNED_INTEGER, 2**64 - 1),
            MultipleResource(7, T.FLOAT, {0: -1.0, 1: float(2**64 - 1)}),  # mixed numbers unify to Float
        ],
    )


def test_non_finite_float_cannot_be_json() -> None:
    node = SingleResource(3, T.FLOAT, float("inf"))
    with pytest.raises(CodecError):
        registry.encode(node, P(66, 0, 3), F.SENML_JSON, LINKS)
    payload = registry.encode(node, P(66, 0, 3), F.SENML_CBOR, LINKS)
    assert registry.decode(payload, F.SENML_CBOR, P(66, 0, 3), LINKS) == node


def test_empty_containers() -> None:
    assert registry.encode(Obj(3), P(3), F.SENML_JSON, MODEL) == b"[]"
    assert registry.decode(b"[]", F.SENML_JSON, P(3), MODEL) == Obj(3)
    assert registry.decode(b"[]", F.SENML_JSON, P(3, 0), MODEL) == Instance(0)
    assert registry.decode(b"[]", F.SENML_JSON, P(3, 0, 6), MODEL) == MultipleResource(6, T.INTEGER)
    with pytest.raises(MalformedPayloadError):
        registry.decode(b"[]", F.SENML_JSON, P(3, 0, 9), MODEL)


def test_composite() -> None:
    nodes = {
        P(3, 0, 9): SingleResource(9, T.INTEGER, 100),
        P(3, 0, 6): MultipleResource(6, T.INTEGER, {0: 1, 1: 5}),
        P(66, 0, 1): SingleResource(1, T.OBJLNK, ObjectLink(3, 0)),
    }
    model = ObjectModel([*MODEL, *LINKS])
    payload = registry.encode_composite(nodes, F.SENML_JSON, model)
    assert payload == (
        b'[{"bn":"/3/0/9","v":100},{"bn":"/3/0/6/","n":"0","v":1},{"n":"1","v":5},{"bn":"/66/0/1","vlo":"3:0"}]'
    )
    assert registry.decode_composite(payload, F.SENML_JSON, model) == {
        P(3, 0, 9): SingleResource(9, T.INTEGER, 100),
        P(3, 0, 6, 0): ResourceInstance(0, T.INTEGER, 1),
        P(3, 0, 6, 1): ResourceInstance(1, T.INTEGER, 5),
        P(66, 0, 1): SingleResource(1, T.OBJLNK, ObjectLink(3, 0)),
    }


def test_composite_paths() -> None:
    paths = [P(3, 0, 9), P(1), P(3, 0, 6, 1)]
    payload = registry.encode_paths(paths, F.SENML_JSON)
    assert payload == b'[{"n":"/3/0/9"},{"n":"/1"},{"n":"/3/0/6/1"}]'
    assert registry.decode_paths(payload, F.SENML_JSON) == paths
    # base names, trailing slashes and the root are accepted in requests
    assert registry.decode_paths(b'[{"bn":"/3/0/","n":"1"},{"n":"6"},{"bn":"/1/"},{"bn":"/"}]', F.SENML_JSON) == [
        P(3, 0, 1),
        P(3, 0, 6),
        P(1),
        LwM2mPath(()),
    ]
    # [{0: "/3/0/9"}]
    assert registry.encode_paths([P(3, 0, 9)], F.SENML_CBOR) == bytes.fromhex("81 A1 00 66 2F332F302F39")


def test_cbor_labels_as_text_and_unknown_labels() -> None:
    # [{"bn": "/3/0/", 0: "9", 2: 100, 99: "ignored"}]  -- a text label is read like its JSON name
    payload = bytes.fromhex("81 A4 62 626E 65 2F332F302F 00 61 39 02 18 64 18 63 67 69676E6F726564")
    assert registry.decode(payload, F.SENML_CBOR, P(3, 0, 9), MODEL) == SingleResource(9, T.INTEGER, 100)


@pytest.mark.parametrize(
    "payload",
    [
        "81 A2 00 66 2F332F302F39 02",  # truncated
        "81 A2 00 66 2F332F302F39 02 01 00",  # trailing byte
        "81 A2 00 66 2F332F302F39 08 61 41",  # vd as text in CBOR
        "81 A2 00 66 2F332F302F39 F6 01",  # a null label
        "81 A2 00 66 2F332F302F39 02 C1 01",  # a tagged date for an Integer
        "A0",  # a map, not an array
        "81" * 40 + "A0",  # absurdly deep
    ],
)
def test_malformed_cbor(payload: str) -> None:
    with pytest.raises(MalformedPayloadError):
        registry.decode(bytes.fromhex(payload), F.SENML_CBOR, P(3, 0, 9), MODEL)

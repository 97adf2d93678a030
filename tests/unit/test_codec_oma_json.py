"""OMA JSON (11543, and LwM2M 1.0's 1543) decoding.

The Device example is the one of LwM2M 1.0 section 6.4.4 (Read /3/0), typed in from the specification as I know
it (the search tool was not available to check it against the document).
"""

from __future__ import annotations

import pytest

from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import MalformedPayloadError, UnsupportedContentFormatError
from lwm2m_server.core.model.definitions import ObjectDefinition, ObjectModel, ResourceDefinition
from lwm2m_server.core.nodes import Instance, MultipleResource, ObjectLink, ResourceType, SingleResource
from lwm2m_server.core.paths import LwM2mPath
from tests.unit.test_codec_tlv import DEVICE_INSTANCE, MODEL

T = ResourceType
F = ContentFormat
P = LwM2mPath.of

SPEC_DEVICE = b"""
{"bn":"/3/0/",
 "e":[{"n":"0","sv":"Open Mobile Alliance"},
      {"n":"1","sv":"Lightweight M2M Client"},
      {"n":"2","sv":"345000123"},
      {"n":"3","sv":"1.0"},
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
      {"n":"14","sv":"+02:00"},
      {"n":"16","sv":"U"}]
}"""


@pytest.mark.parametrize("fmt", [F.OMA_JSON, F.JSON_OLD])
def test_spec_device_instance(fmt: ContentFormat) -> None:
    assert registry.decode(SPEC_DEVICE, fmt, P(3, 0), MODEL) == DEVICE_INSTANCE


TYPED = ObjectModel(
    [
        ObjectDefinition(66, "typed", "1.0", "1.0", True, False, "urn:x", {
            0: ResourceDefinition(0, "blob", "RW", False, False, T.OPAQUE),
            1: ResourceDefinition(1, "link", "RW", False, False, T.OBJLNK),
            2: ResourceDefinition(2, "flag", "RW", False, False, T.BOOLEAN),
            3: ResourceDefinition(3, "ratio", "RW", False, False, T.FLOAT),
        })
    ]
)  # fmt: skip


def test_value_keys() -> None:
    payload = b'{"bn":"/66/0/","e":[{"n":"0","sv":"AQI="},{"n":"1","ov":"3:0"},{"n":"2","bv":true},{"n":"3","v":2}]}'
    assert registry.decode(payload, F.OMA_JSON, P(66, 0), TYPED) == Instance.of(
        0,
        [
            SingleResource(0, T.OPAQUE, b"\x01\x02"),  # Opaque travels as base64 in sv
            SingleResource(1, T.OBJLNK, ObjectLink(3, 0)),
            SingleResource(2, T.BOOLEAN, True),
            SingleResource(3, T.FLOAT, 2.0),
        ],
    )


@pytest.mark.parametrize(
    "payload",
    [
        b'{"e":[{"v":100}]}',  # no bn, no n: the request path itself
        b'{"e":[{"n":"/3/0/9","v":100}]}',  # no bn: absolute
        b'{"bn":"/","e":[{"n":"3/0/9","v":100}],"bt":25462634}',  # base time ignored
        b'{"bn":"/3/0/9","e":[{"v":100,"t":-5}]}',
    ],
)
def test_names(payload: bytes) -> None:
    assert registry.decode(payload, F.OMA_JSON, P(3, 0, 9), MODEL) == SingleResource(9, T.INTEGER, 100)


def test_names_relative_to_the_request_path() -> None:
    payload = b'{"e":[{"n":"9","v":100},{"n":"6/0","v":1}]}'
    expected = Instance.of(0, [SingleResource(9, T.INTEGER, 100), MultipleResource(6, T.INTEGER, {0: 1})])
    assert registry.decode(payload, F.OMA_JSON, P(3, 0), MODEL) == expected


def test_multiple_resource_and_unknown_resources() -> None:
    payload = b'{"bn":"/3/0/6/","e":[{"n":"0","v":1},{"n":"1","v":5}]}'
    assert registry.decode(payload, F.OMA_JSON, P(3, 0, 6), MODEL) == MultipleResource(6, T.INTEGER, {0: 1, 1: 5})
    payload = b'{"bn":"/500/0/","e":[{"n":"1","v":1.5},{"n":"2","sv":"x"},{"n":"3","ov":"1:2"}]}'
    assert registry.decode(payload, F.OMA_JSON, P(500, 0), ObjectModel()) == Instance.of(
        0,
        [
            SingleResource(1, T.FLOAT, 1.5),
            SingleResource(2, T.STRING, "x"),
            SingleResource(3, T.OBJLNK, ObjectLink(1, 2)),
        ],
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"[]",
        b'{"bn":"/3/0/"}',
        b'{"bn":3,"e":[]}',
        b'{"bn":"/3/0/","e":[{"n":"9","v":"100"}]}',  # a string in v
        b'{"bn":"/3/0/","e":[{"n":"9","v":100,"sv":"x"}]}',
        b'{"bn":"/3/0/","e":[{"n":"9","bv":1}]}',
        b'{"bn":"/3/0/","e":[{"n":9,"v":100}]}',
        b'{"bn":"/3/0/","e":[{"n":"9","v":1},{"n":"9","v":2}]}',
        b'{"bn":"/3/0/","e":[{"n":"","v":1}]}',  # the instance itself
        b'{"bn":"/3/1/","e":[{"n":"9","v":1}]}',  # outside /3/0
        b'{"bn":"/3/0/","e":[1]}',
        b"\xff",
    ],
)
def test_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedPayloadError):
        registry.decode(payload, F.OMA_JSON, P(3, 0), MODEL)


def test_decode_only() -> None:
    with pytest.raises(UnsupportedContentFormatError):
        registry.encode(DEVICE_INSTANCE, P(3, 0), F.OMA_JSON, MODEL)

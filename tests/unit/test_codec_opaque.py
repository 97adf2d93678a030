"""application/octet-stream (42): raw bytes of Opaque single values only (LwM2M Core 1.1 section 7.4.2)."""

from __future__ import annotations

import pytest

from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import CodecError
from lwm2m_server.core.model.definitions import ObjectDefinition, ObjectModel, ResourceDefinition
from lwm2m_server.core.nodes import Instance, MultipleResource, ResourceInstance, ResourceType, SingleResource
from lwm2m_server.core.paths import LwM2mPath

T = ResourceType
F = ContentFormat
P = LwM2mPath.of
# Firmware Update (5): 0 Package (Opaque), 1 Package URI (String); 9 a multiple Opaque resource for the test
MODEL = ObjectModel(
    [
        ObjectDefinition(5, "Firmware Update", "1.0", "1.0", False, False, "urn:oma:lwm2m:oma:5", {
            0: ResourceDefinition(0, "Package", "W", False, True, T.OPAQUE),
            1: ResourceDefinition(1, "Package URI", "RW", False, True, T.STRING),
            9: ResourceDefinition(9, "blobs", "RW", True, False, T.OPAQUE),
        })
    ]
)  # fmt: skip
IMAGE = bytes(range(256)) * 4


def test_package_round_trip() -> None:
    node = SingleResource(0, T.OPAQUE, IMAGE)
    assert registry.encode(node, P(5, 0, 0), F.OPAQUE, MODEL) == IMAGE
    assert registry.decode(IMAGE, F.OPAQUE, P(5, 0, 0), MODEL) == node
    assert registry.decode(b"", F.OPAQUE, P(5, 0, 0), MODEL) == SingleResource(0, T.OPAQUE, b"")


def test_resource_instance() -> None:
    node = ResourceInstance(4, T.OPAQUE, b"\x00\xff")
    assert registry.encode(node, P(5, 0, 9, 4), F.OPAQUE, MODEL) == b"\x00\xff"
    assert registry.decode(b"\x00\xff", F.OPAQUE, P(5, 0, 9, 4), MODEL) == node


def test_unknown_resource_is_opaque() -> None:
    assert registry.decode(b"\x01", F.OPAQUE, P(5, 0, 77), MODEL) == SingleResource(77, T.OPAQUE, b"\x01")


def test_not_for_other_types_or_shapes() -> None:
    with pytest.raises(CodecError):
        registry.encode(SingleResource(1, T.STRING, "coap://x"), P(5, 0, 1), F.OPAQUE, MODEL)
    with pytest.raises(CodecError):
        registry.decode(b"coap://x", F.OPAQUE, P(5, 0, 1), MODEL)
    with pytest.raises(CodecError):
        registry.encode(Instance(0), P(5, 0), F.OPAQUE, MODEL)
    with pytest.raises(CodecError):
        registry.encode(MultipleResource(9, T.OPAQUE, {0: b""}), P(5, 0, 9), F.OPAQUE, MODEL)
    for path in (P(5), P(5, 0), P(5, 0, 9)):
        with pytest.raises(CodecError):
            registry.decode(b"x", F.OPAQUE, path, MODEL)
    assert not registry.can_encode(F.OPAQUE, SingleResource(1, T.STRING, "x"), P(5, 0, 1), MODEL)
    assert registry.can_encode(F.OPAQUE, SingleResource(0, T.OPAQUE, b"x"), P(5, 0, 0), MODEL)

"""The registry's contract: dispatch by format, placement and model checks, and its error classes."""

from __future__ import annotations

import pytest

from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import CodecError, MalformedPayloadError, UnsupportedContentFormatError
from lwm2m_server.core.nodes import Instance, MultipleResource, Obj, ResourceInstance, ResourceType, SingleResource
from lwm2m_server.core.paths import LwM2mPath
from tests.unit.test_codec_tlv import DEVICE_INSTANCE, MODEL, SPEC_DEVICE_3_0

T = ResourceType
F = ContentFormat
P = LwM2mPath.of
EVERY_KIND = {Obj, Instance, SingleResource, MultipleResource, ResourceInstance}


def test_capability_tables() -> None:
    assert set(registry.ENCODERS) == {F.TEXT, F.OPAQUE, F.TLV, F.TLV_OLD, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_CBOR}
    assert set(registry.DECODERS) == set(registry.ENCODERS) | {F.OMA_JSON, F.JSON_OLD}
    assert registry.ENCODERS[F.TEXT] == {SingleResource, ResourceInstance}
    assert registry.ENCODERS[F.TLV] == EVERY_KIND
    assert registry.DECODERS[F.OMA_JSON] == EVERY_KIND
    with pytest.raises(TypeError):
        registry.ENCODERS[F.LINK] = frozenset()  # type: ignore[index]


@pytest.mark.parametrize("fmt", [9999, 40, 60, -1])  # unknown numbers, link format, plain CBOR
def test_unsupported_formats(fmt: int) -> None:
    node = SingleResource(9, T.INTEGER, 1)
    with pytest.raises(UnsupportedContentFormatError):
        registry.encode(node, P(3, 0, 9), fmt, MODEL)  # type: ignore[arg-type]
    with pytest.raises(UnsupportedContentFormatError):
        registry.decode(b"1", fmt, P(3, 0, 9), MODEL)  # type: ignore[arg-type]
    assert not registry.can_encode(fmt, node, P(3, 0, 9), MODEL)  # type: ignore[arg-type]


def test_plain_int_format_numbers_work() -> None:
    assert registry.decode(SPEC_DEVICE_3_0, 11542, P(3, 0), MODEL) == DEVICE_INSTANCE  # type: ignore[arg-type]
    assert registry.decode(SPEC_DEVICE_3_0, 1542, P(3, 0), MODEL) == DEVICE_INSTANCE  # type: ignore[arg-type]


def test_composite_only_where_the_format_can() -> None:
    for fmt in (F.TLV, F.TEXT, F.OMA_JSON):
        with pytest.raises(UnsupportedContentFormatError):
            registry.encode_composite({}, fmt, MODEL)
        with pytest.raises(UnsupportedContentFormatError):
            registry.decode_composite(b"", fmt, MODEL)
        with pytest.raises(UnsupportedContentFormatError):
            registry.encode_paths([], fmt)
        with pytest.raises(UnsupportedContentFormatError):
            registry.decode_paths(b"", fmt)


def test_error_classes_map_to_coap_codes() -> None:
    assert issubclass(UnsupportedContentFormatError, CodecError)
    assert issubclass(MalformedPayloadError, CodecError)
    assert UnsupportedContentFormatError.coap_code.dotted == "4.15"
    assert MalformedPayloadError.coap_code.dotted == "4.00"


@pytest.mark.parametrize(
    ("node", "path"),
    [
        (DEVICE_INSTANCE, P(3)),  # an instance at an object path
        (DEVICE_INSTANCE, P(3, 1)),  # id 0 at /3/1
        (SingleResource(9, T.INTEGER, 1), P(3, 0, 9, 0)),
        (ResourceInstance(0, T.INTEGER, 1), P(3, 0, 6)),
        (Obj(3), LwM2mPath(())),
    ],
)
def test_placement_is_checked(node: object, path: LwM2mPath) -> None:
    for fmt in registry.ENCODERS:
        with pytest.raises(CodecError):
            registry.encode(node, path, fmt, MODEL)  # type: ignore[arg-type]
        assert not registry.can_encode(fmt, node, path, MODEL)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("node", "path"),
    [
        (SingleResource(9, T.STRING, "100"), P(3, 0, 9)),  # a String value for an Integer resource
        (SingleResource(9, T.FLOAT, 1.0), P(3, 0, 9)),
        (MultipleResource(9, T.INTEGER, {0: 1}), P(3, 0, 9)),  # 9 is single
        (SingleResource(6, T.INTEGER, 1), P(3, 0, 6)),  # 6 is multiple
        (ResourceInstance(0, T.INTEGER, 1), P(3, 0, 9, 0)),  # 9 has no instances
        (Instance.of(0, [SingleResource(6, T.INTEGER, 1)]), P(3, 0)),
        (Obj.of(3, [Instance.of(0, [SingleResource(9, T.BOOLEAN, True)])]), P(3)),
        (Obj.of(3, [Instance(65535)]), P(3)),  # reserved instance id
        (MultipleResource(6, T.INTEGER, {65535: 1}), P(3, 0, 6)),  # reserved resource instance id
    ],
)
def test_nodes_must_agree_with_the_model(node: object, path: LwM2mPath) -> None:
    for fmt in (F.TLV, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_CBOR):
        with pytest.raises(CodecError):
            registry.encode(node, path, fmt, MODEL)  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        registry.encode_composite({path: node}, F.SENML_CBOR, MODEL)  # type: ignore[dict-item]


def test_compatible_types_are_retyped_to_the_model() -> None:
    # an Unsigned Integer node for the Integer resource 9: the value fits, the model's type is used
    node = SingleResource(9, T.UNSIGNED_INTEGER, 100)
    payload = registry.encode(node, P(3, 0, 9), F.TLV, MODEL)
    assert registry.decode(payload, F.TLV, P(3, 0, 9), MODEL) == SingleResource(9, T.INTEGER, 100)
    with pytest.raises(CodecError):  # 2^63 does not fit an Integer
        registry.encode(SingleResource(9, T.UNSIGNED_INTEGER, 2**63), P(3, 0, 9), F.TLV, MODEL)


def test_unknown_resources_use_the_node_type() -> None:
    node = SingleResource(5, T.FLOAT, 2.5)
    for fmt in (F.TLV, F.SENML_CBOR, F.TEXT):
        assert registry.encode(node, P(700, 0, 5), fmt, MODEL)


def test_decoding_refuses_a_root_path() -> None:
    with pytest.raises(CodecError):
        registry.decode(SPEC_DEVICE_3_0, F.TLV, LwM2mPath(()), MODEL)


def test_bytes_like_payloads() -> None:
    assert registry.decode(bytearray(SPEC_DEVICE_3_0), F.TLV, P(3, 0), MODEL) == DEVICE_INSTANCE  # type: ignore[arg-type]
    assert registry.decode(memoryview(SPEC_DEVICE_3_0), F.TLV, P(3, 0), MODEL) == DEVICE_INSTANCE  # type: ignore[arg-type]

"""A Package (/5/0/0) written in every format a simulated device announces, block-wise and whole, is installed.

Eclipse Leshan's server writes the Package in TLV or SenML CBOR unless told otherwise; our push driver writes the
body the core codec encodes, with its Content-Format, over a real socket. The streaming decoder
(client_sim.package_stream) is checked against the core codec for any split of the body into blocks.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client_sim.device import ANNOUNCED_FORMATS, SimulatedDevice
from client_sim.firmware import FirmwareOptions
from client_sim.package_stream import MAX_SKELETON, PACKAGE_FORMATS, decode_package, package_stream
from firmware_object.errors import State, UpdateResult
from firmware_object.suit.envelope import build_envelope
from firmware_object.suit.keys import generate_private_key
from firmware_object.suit.manifest import ReleaseManifest
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import CodecError, ErrorResponseError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import ResourceType, SingleResource
from lwm2m_server.core.operations import ExecuteRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.server import Lwm2mServer
from tests.harness import eventually, running_server

VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
OEM = generate_private_key("es256")
PACKAGE = LwM2mPath.of(5, 0, 0)
MODEL = ObjectModel.default()
F = ContentFormat
FORMATS = [F.OPAQUE, F.TEXT, F.TLV, F.TLV_OLD, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_CBOR]
assert set(ANNOUNCED_FORMATS) <= PACKAGE_FORMATS == set(FORMATS)  # every format the device announces


def package(image: bytes) -> bytes:
    manifest = ReleaseManifest(sequence_number=2, vendor_id=VENDOR, class_id=CLASS,
                               image_digest=hashlib.sha256(image).digest(), image_size=len(image), version="2.0.0")
    return build_envelope(manifest, [OEM], image=image)


def encoded(data: bytes, fmt: ContentFormat) -> bytes:
    return registry.encode(SingleResource(0, ResourceType.OPAQUE, data), PACKAGE, fmt, MODEL)


async def started(srv: Lwm2mServer, endpoint: str, **firmware: Any) -> SimulatedDevice:
    options = FirmwareOptions(trust_anchors=(OEM.public_key(),), vendor_id=VENDOR, class_id=CLASS,
                              sequence_number=1, **firmware)
    dev = SimulatedDevice(endpoint, srv.coap_uri, reboot_delay=0.05, firmware=options)
    assert await dev.start(timeout=10)
    return dev


async def push(srv: Lwm2mServer, endpoint: str, body: bytes, fmt: ContentFormat, block_size: int = 256) -> None:
    assert srv.management is not None and srv.registrations is not None
    reg = srv.registrations.by_endpoint(endpoint, tenant_id="default")
    assert reg is not None
    await srv.management.sender.push(reg, body, block_size=block_size, content_format=int(fmt), total_timeout=60)


@pytest.mark.parametrize("image_size", [200, 30_000], ids=["whole", "blockwise"])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.label)
async def test_the_package_in_every_announced_format_is_installed(tmp_path, fmt: ContentFormat,
                                                                  image_size: int) -> None:
    image = os.urandom(image_size)
    data = package(image)
    body = encoded(data, fmt)
    async with running_server(tmp_path) as srv:
        dev = await started(srv, "fmt-dev")
        try:
            fw = dev.firmware
            assert fw is not None and srv.management is not None
            await push(srv, "fmt-dev", body, fmt, block_size=1024 if image_size < 500 else 256)
            assert fw.push_blocks == -(-len(body) // (1024 if image_size < 500 else 256))
            assert fw.last_package == data and fw.machine.state == State.DOWNLOADED
            await srv.management.send("fmt-dev", ExecuteRequest(LwM2mPath.of(5, 0, 2)), tenant_id="default")
            await eventually(lambda: fw.machine.result == UpdateResult.SUCCESS, timeout=20)
            assert (fw.version, fw.slots[fw.active].image) == ("2.0.0", image)
        finally:
            await dev.stop()


async def test_refusals_a_format_the_device_does_not_take_a_malformed_body_and_a_too_large_tlv(tmp_path) -> None:
    data = package(os.urandom(5000))
    async with running_server(tmp_path) as srv:
        dev = await started(srv, "bad-dev", flash_size=4096)
        try:
            fw = dev.firmware
            assert fw is not None
            with pytest.raises(ErrorResponseError) as refused:  # OMA JSON is not announced
                await push(srv, "bad-dev", b'{"bn":"/5/0/0","e":[{"sv":"x"}]}', F.OMA_JSON)
            assert refused.value.code == 0x8F and fw.machine.state == State.IDLE  # 4.15, state untouched
            instance_tlv = bytes([0x08, 0x00, 0x80]) + bytes(128)  # an object-instance TLV, not a resource
            with pytest.raises(ErrorResponseError) as refused:
                await push(srv, "bad-dev", instance_tlv, F.TLV, block_size=64)
            assert refused.value.code == 0x80 and fw.machine.result == UpdateResult.UNSUPPORTED_PACKAGE_TYPE
            blocks = fw.push_blocks
            with pytest.raises(ErrorResponseError) as refused:  # the TLV header says 5,000+ bytes: block 1 is enough
                await push(srv, "bad-dev", encoded(data, F.TLV), F.TLV, block_size=1024)
            assert refused.value.code == 0x8D and fw.push_blocks == blocks + 1
            assert fw.machine.result == UpdateResult.NOT_ENOUGH_FLASH
        finally:
            await dev.stop()


# ------------------------------------------------------------------ the streaming decoder against the core codec


def other_encodings(data: bytes) -> list[tuple[ContentFormat, bytes]]:
    """Valid bodies the core codec does not write: a base name plus name, keys in another order, nested LwM2M
    CBOR maps, padded standard base64, a byte-string head longer than needed."""
    long_head = b"\x5a" + len(data).to_bytes(4, "big") + data
    return [
        (F.SENML_CBOR, cbor2.dumps([{8: data, 0: "0", -2: "/5/0/"}])),
        (F.SENML_CBOR, b"\x81\xa2\x21\x66/5/0/0\x08" + long_head),
        (F.LWM2M_CBOR, cbor2.dumps({5: {0: {0: data}}})),
        (F.LWM2M_CBOR, b"\xa1\x83\x05\x00\x00" + long_head),
        (F.SENML_JSON, b'[ {"bn" : "/5/0/", "n":"0", "vd" : "' + base64.b64encode(data) + b'"} ]'),
        (F.TEXT, base64.urlsafe_b64encode(data).rstrip(b"=")),
        (F.TLV, bytes([0xF8, 0x00, 0x00]) + len(data).to_bytes(3, "big") + data),  # 16-bit identifier
    ]


def fed(body: bytes, fmt: ContentFormat, cuts: list[int]) -> bytes:
    stream = package_stream(int(fmt), MODEL)
    out, previous = b"", 0
    for cut in [*sorted(c % (len(body) + 1) for c in cuts), len(body)]:
        out += stream.feed(body[previous:cut])
        previous = cut
    return out + stream.finish()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=3000), which=st.integers(0, 20), cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_streaming_decoder_matches_the_core_codec_for_any_split(data: bytes, which: int, cuts: list[int]) -> None:
    bodies = [(fmt, encoded(data, fmt)) for fmt in FORMATS] + other_encodings(data)
    fmt, body = bodies[which % len(bodies)]
    oracle = registry.decode(body, fmt, PACKAGE, MODEL)
    assert isinstance(oracle, SingleResource) and oracle.value == data
    assert fed(body, fmt, cuts) == data


@settings(max_examples=500, deadline=None)
@given(body=st.binary(max_size=200), fmt=st.sampled_from([*FORMATS, F.OMA_JSON, F.LINK, F.CBOR]),
       cuts=st.lists(st.integers(0, 300), max_size=4))
def test_any_body_decodes_to_what_the_core_codec_finds_or_fails_with_a_codec_error(
        body: bytes, fmt: ContentFormat, cuts: list[int]) -> None:
    try:
        got = fed(body, fmt, cuts)
    except CodecError:
        return
    node = registry.decode(body, fmt, PACKAGE, MODEL)
    assert isinstance(node, SingleResource) and node.value == got


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=200), fmt=st.sampled_from([F.TLV, F.SENML_CBOR, F.LWM2M_CBOR]))
def test_the_container_states_the_size_with_the_first_bytes(data: bytes, fmt: ContentFormat) -> None:
    body = encoded(data, fmt)
    stream = package_stream(int(fmt), MODEL)
    stream.feed(body[:len(body) - len(data)])
    assert stream.declared == len(data)


def test_memory_beyond_the_package_is_bounded() -> None:
    with pytest.raises(CodecError, match="around the package value"):
        decode_package(b'[{"bn":"/5/0/0","x":"' + b"a" * MAX_SKELETON + b'","vd":""}]', int(F.SENML_JSON), MODEL)
    with pytest.raises(CodecError, match="one opaque value"):
        decode_package(cbor2.dumps([{-2: "/5/0/0", 8: b"a"}, {-2: "/5/0/0", 8: b"b"}]), int(F.SENML_CBOR), MODEL)

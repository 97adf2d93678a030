"""A firmware update driven by Eclipse Leshan's server demo, with a package made by our SUIT builder.

Leshan writes the signed SUIT envelope to /5/0/0 of a simulated device (Write, opaque, block-wise: Californium
splits the request into Block1 blocks of its preferred size, 512 bytes), then executes /5/0/2. The device verifies
the envelope against its trust anchor, vendor and class ids, installs the image, reboots, registers again and
reports Update Result 1 and its new version, which Leshan reads back. Written without a format, Leshan picks its
default (TLV or SenML CBOR), which the device decodes as the blocks arrive.

Needs LESHAN_SERVER_DEMO; skipped, with the reason, otherwise.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from client_sim.firmware import FirmwareOptions
from firmware_object.errors import State, UpdateResult
from firmware_object.suit.envelope import build_envelope
from firmware_object.suit.keys import generate_private_key
from firmware_object.suit.manifest import ReleaseManifest
from tests.interop.leshan import LeshanEvents, LeshanRest, managed_by_leshan

pytestmark = [pytest.mark.interop]

VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
OEM = generate_private_key("es256")
BLOCK = 512  # Californium's COAP.PREFERRED_BLOCK_SIZE default


def package(image: bytes, *, seq: int = 2, version: str = "2.0.0") -> bytes:
    manifest = ReleaseManifest(sequence_number=seq, vendor_id=VENDOR, class_id=CLASS,
                               image_digest=hashlib.sha256(image).digest(), image_size=len(image), version=version)
    return build_envelope(manifest, [OEM], image=image)


def firmware(**overrides: object) -> FirmwareOptions:
    values: dict[str, object] = {"trust_anchors": (OEM.public_key(),), "vendor_id": VENDOR, "class_id": CLASS,
                                 "version": "1.0.0", "sequence_number": 1}
    values.update(overrides)
    return FirmwareOptions(**values)  # type: ignore[arg-type]


def opaque(data: bytes) -> dict[str, object]:
    return {"id": 0, "kind": "singleResource", "type": "opaque", "value": data.hex()}


async def text(rest: LeshanRest, ep: str, path: str) -> str:
    """A resource read as text/plain; Leshan M17 has no model of object 5 v1.2, so it shows those as strings."""
    answer = await rest.read(ep, path, "TEXT")
    assert answer.success, (path, answer.body)
    return str(answer.body["content"]["value"])


@pytest.mark.parametrize("size", [20 * 1024, 100 * 1024])
async def test_leshan_pushes_our_suit_package_and_the_device_installs_it(leshan_server, size):
    ep = f"fw-{size // 1024}k"
    image = os.urandom(size)
    data = package(image)
    async with managed_by_leshan(leshan_server, ep, firmware=firmware()) as (dev, rest):
        fw = dev.firmware
        assert fw is not None
        assert await text(rest, ep, "/3/0/3") == "1.0.0"
        async with LeshanEvents(rest.api, ep, keep_coap_log=True) as events:
            answer = await rest.write(ep, "/5/0/0", opaque(data), "OPAQUE", timeout=60)
            assert answer.code == 204, answer.body
            assert fw.last_package == data  # byte-identical after reassembly
            assert await text(rest, ep, "/5/0/3") == str(int(State.DOWNLOADED))
            puts = [e.data for e in events.seen if e.name == "COAPLOG" and not e.data["incoming"]
                    and e.data["code"] == "PUT"]
            assert len(puts) == -(-len(data) // BLOCK), "Leshan did not send the package block by block"
            assert all("Block1" in p["options"] for p in puts)
            before = (await rest.registration(ep) or {})["registrationId"]
            answer = await rest.execute(ep, "/5/0/2")
            assert answer.code == 204, answer.body
            registered = await events.next("REGISTRATION", timeout=20)  # the device rebooted into the new image
            assert registered.data["registrationId"] != before
        assert await text(rest, ep, "/5/0/5") == str(int(UpdateResult.SUCCESS))
        assert await text(rest, ep, "/5/0/7") == "2.0.0"
        assert await text(rest, ep, "/3/0/3") == "2.0.0"
        assert await text(rest, ep, "/5/0/3") == str(int(State.IDLE))
        assert (fw.version, fw.sequence_number, fw.slots[fw.active].image) == ("2.0.0", 2, image)
        assert dev.counters.reboots == 1


async def test_a_package_signed_by_another_key_is_refused(leshan_server):
    """The same path with an untrusted signer: the device refuses the package (Update Result 5) and keeps 1.0.0."""
    ep = "fw-untrusted"
    data = package(os.urandom(10_000))
    async with managed_by_leshan(leshan_server, ep, firmware=firmware(trust_anchors=(
            generate_private_key("es256").public_key(),))) as (dev, rest):
        answer = await rest.write(ep, "/5/0/0", opaque(data), "OPAQUE", timeout=60)
        assert answer.code == 204, answer.body  # the transfer itself succeeds; verification fails after it
        assert await text(rest, ep, "/5/0/5") == str(int(UpdateResult.INTEGRITY_CHECK_FAILURE))
        assert await text(rest, ep, "/5/0/3") == str(int(State.IDLE))
        assert (await rest.execute(ep, "/5/0/2")).code == 405  # nothing to install: Update is refused
        assert await text(rest, ep, "/3/0/3") == "1.0.0"
        assert dev.counters.reboots == 0


async def test_leshan_writes_the_package_in_its_default_format_and_the_device_installs_it(leshan_server):
    """No format forced: Leshan picks its own (TLV or SenML CBOR for a LwM2M 1.1 client, block-wise), which the
    device decodes as the blocks arrive (client_sim.package_stream), verifies and installs."""
    ep = "fw-default-format"
    image = os.urandom(20 * 1024)
    data = package(image)
    async with managed_by_leshan(leshan_server, ep, firmware=firmware()) as (dev, rest):
        fw = dev.firmware
        assert fw is not None
        async with LeshanEvents(rest.api, ep, keep_coap_log=True) as events:
            answer = await rest.write(ep, "/5/0/0", opaque(data), timeout=60)
            assert answer.code == 204, answer.body
            puts = [e.data for e in events.seen if e.name == "COAPLOG" and not e.data["incoming"]
                    and e.data["code"] == "PUT"]
            formats = {str(p["options"]).split("Content-Format")[1][:40] for p in puts
                       if "Content-Format" in str(p["options"])}
            print(f"Leshan's default format for /5/0/0: {formats}; {len(puts)} PUTs")
            assert formats and not any("octet-stream" in f for f in formats), formats  # not opaque: a container
            assert len(puts) > 1 and all("Block1" in p["options"] for p in puts)
            assert fw.last_package == data and fw.machine.state == State.DOWNLOADED
            answer = await rest.execute(ep, "/5/0/2")
            assert answer.code == 204, answer.body
            await events.next("REGISTRATION", timeout=20)  # the device rebooted into the new image
        assert await text(rest, ep, "/5/0/5") == str(int(UpdateResult.SUCCESS))
        assert (fw.version, fw.slots[fw.active].image) == ("2.0.0", image)

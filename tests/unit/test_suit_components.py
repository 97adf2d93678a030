"""System (multi-component) envelopes: layout, round trips through verification and installation, the verification
order and its errors, deltas and their base, tampering, and what the older readers make of these envelopes."""

from __future__ import annotations

import dataclasses
import uuid
from functools import cache

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_object.delta import DELTA_FORMAT, make_delta
from firmware_object.errors import (
    ConditionFailedError,
    DeltaBaseMismatchError,
    DeltaError,
    ImageMismatchError,
    PackageTooLargeError,
    RollbackError,
    SignatureError,
    SuitDecodeError,
    UpdateResult,
)
from firmware_object.suit import (
    PrivateKey,
    ReleaseManifest,
    build_envelope,
    decode_envelope,
    describe,
    generate_private_key,
    verify_envelope,
)
from firmware_object.suit.components import (
    COMPONENT_NAME,
    ComponentKind,
    ComponentRelease,
    SystemRelease,
    VerifiedSystem,
    apply_component,
    build_system_envelope,
    encode_system_manifest,
    is_system_envelope,
    read_system_manifest,
    verify_system_envelope,
)
from firmware_object.suit.envelope import _with_signature
from firmware_object.suit.labels import Command, Parameter, TextComponentKey, TextKey
from firmware_object.suit.manifest import parse_manifest
from firmware_object.suit.structure import SuitDigest

VENDOR = uuid.UUID("3f1c2a5e-9b7d-4c1e-8a2b-6d0f4e3c2b1a")
CLASS = uuid.UUID("b8e2f0a4-1c3d-4e5f-9a6b-7c8d9e0f1a2b")
MAX_SIZE = 1 << 20
SETTINGS = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])

APP_BASE = bytes(range(256)) * 3
APP = APP_BASE[:300] + b"patched function" + APP_BASE[316:]
RADIO = b"radio firmware " * 20
CONFIG = b'{"interval": 60}'


@cache
def key(name: str) -> PrivateKey:
    return generate_private_key(name.split("-")[1])


@cache
def app_delta() -> bytes:
    return make_delta(APP_BASE, APP)


def three(*, sequence: int = 8) -> tuple[SystemRelease, dict[str, bytes]]:
    """app (a delta from APP_BASE), radio (full, after app), config (a data file, after both)."""
    components = (
        ComponentRelease.from_delta("app", APP, app_delta(), APP_BASE, version="2.0.0", base_version="1.9.0"),
        ComponentRelease.full("radio", RADIO, version="3.1", after=["app"]),
        ComponentRelease.full("config", CONFIG, version="7", kind="data", after=["app", "radio"]),
    )
    release = SystemRelease(sequence, VENDOR, CLASS, "2025.1", components)
    return release, {"app": app_delta(), "radio": RADIO, "config": CONFIG}


def verify(data: bytes, *signers: PrivateKey, **kwargs: object) -> VerifiedSystem:
    options: dict[str, object] = {"max_size": MAX_SIZE, **kwargs}
    anchors = [signer.public_key() for signer in signers]
    return verify_system_envelope(data, trust_anchors=anchors, **options)  # type: ignore[arg-type]


def envelope_of_three(**kwargs: int) -> bytes:
    release, payloads = three(**kwargs)
    return build_system_envelope(release, payloads, [key("oem-es256"), key("operator-ed25519")])


# --- layout --------------------------------------------------------------------------------------------------------


def test_manifest_layout() -> None:
    release, _ = three()
    manifest = cbor2.loads(encode_system_manifest(release))
    common = cbor2.loads(manifest[3])
    assert common[2] == [[b"app"], [b"radio"], [b"config"], [b"app", b"delta"]]
    shared = cbor2.loads(common[4])
    assert shared[:8] == [12, True, 20, {1: VENDOR.bytes, 2: CLASS.bytes}, 1, 15, 2, 15]
    assert shared[8:12] == [12, 0, 20, {3: SuitDigest.sha256(APP).encode(), 14: len(APP)}]
    install = cbor2.loads(manifest[20])
    base = {3: SuitDigest.sha256(APP_BASE).encode(), 14: len(APP_BASE)}
    delta = {3: SuitDigest.sha256(app_delta()).encode(), 14: len(app_delta()), 21: "#app"}
    copy = {3: SuitDigest.sha256(APP).encode(), 14: len(APP), 22: 3, -256: DELTA_FORMAT}
    assert install[:22] == [
        12, 0, 20, base, 3, 15,  # the dependency, checked before anything is fetched
        12, 3, 20, delta, 21, 2, 3, 15,  # fetch the delta into [h'app', h'delta'] and check it
        12, 0, 20, copy, 22, 2, 3, 15,  # copy = apply the delta; then check the full image
    ]  # fmt: skip
    assert install[22:] == [12, 1, 20, {21: "#radio"}, 21, 2, 3, 15, 12, 2, 20, {21: "#config"}, 21, 2, 3, 15]
    assert cbor2.loads(manifest[7]) == [12, [0, 1, 2], 3, 15]
    assert cbor2.loads(manifest[9]) == [12, [0, 1], 23, 2]  # config is data: never invoked
    assert cbor2.loads(manifest[23]) == {
        "en": {
            -256: "2025.1",
            (b"app",): {6: "2.0.0", -256: "image", -258: "1.9.0"},
            (b"radio",): {6: "3.1", -256: "image", -257: "app"},
            (b"config",): {6: "7", -256: "data", -257: "app,radio"},
        }
    }
    private = {int(Parameter.DELTA_FORMAT), int(TextKey.SYSTEM_VERSION), int(TextComponentKey.COMPONENT_KIND)}
    assert private == {-256} and (int(Command.DIRECTIVE_COPY), int(Parameter.SOURCE_COMPONENT)) == (22, 22)
    assert read_system_manifest(encode_system_manifest(release)) == release


def test_only_data_components_have_no_invoke() -> None:
    release = SystemRelease(1, VENDOR, CLASS, "c1", (ComponentRelease.full("certs", b"pem", version="1", kind="data"),))
    assert 9 not in cbor2.loads(encode_system_manifest(release))
    assert read_system_manifest(encode_system_manifest(release)) == release


def test_envelopes_are_deterministic() -> None:
    release, payloads = three()
    signer = key("oem-ed25519")
    assert build_system_envelope(release, payloads, [signer]) == build_system_envelope(release, payloads, [signer])


# --- round trips -----------------------------------------------------------------------------------------------------


@st.composite
def systems(draw: st.DrawFn) -> tuple[SystemRelease, dict[str, bytes], dict[str, bytes], dict[str, bytes]]:
    """A random release of 1-4 components, its payloads, what each device component holds now, the new images."""
    names = draw(st.lists(st.from_regex(COMPONENT_NAME, fullmatch=True), min_size=1, max_size=4, unique=True))
    components, payloads, installed, images = [], {}, {}, {}
    for position, name in enumerate(names):
        kind: ComponentKind = draw(st.sampled_from(["image", "data"]))
        version = draw(st.text(min_size=1, max_size=12))
        after = draw(st.lists(st.sampled_from(names[:position]), unique=True)) if position else []
        image = draw(st.binary(max_size=400))
        if draw(st.booleans()):
            base = draw(st.binary(max_size=400))
            delta = make_delta(base, image)
            base_version = draw(st.none() | st.text(min_size=1, max_size=8))
            components.append(ComponentRelease.from_delta(
                name, image, delta, base, version=version, base_version=base_version, kind=kind, after=after
            ))  # fmt: skip
            payloads[name], installed[name] = delta, base
        else:
            components.append(ComponentRelease.full(name, image, version=version, kind=kind, after=after))
            payloads[name] = image
        images[name] = image
    release = SystemRelease(
        draw(st.integers(0, 2**64 - 1)), VENDOR, CLASS, draw(st.text(min_size=1)), tuple(components)
    )
    return release, payloads, installed, images


@SETTINGS
@given(systems())
def test_round_trip(system: tuple[SystemRelease, dict[str, bytes], dict[str, bytes], dict[str, bytes]]) -> None:
    release, payloads, installed, images = system
    signer = key("oem-ed25519")
    data = build_system_envelope(release, payloads, [signer])
    assert is_system_envelope(data)
    verified = verify(data, signer, vendor_id=VENDOR, class_id=CLASS)
    assert (verified.sequence_number, verified.version) == (release.sequence_number, release.version)
    assert (verified.vendor_id, verified.class_id) == (VENDOR, CLASS)
    assert [c.name for c in verified.components] == [c.name for c in release.components]
    for component, declared in zip(verified.components, release.components, strict=True):
        assert (component.kind, component.version, component.after) == (declared.kind, declared.version, declared.after)
        assert (component.digest, component.size, component.delta) == (declared.digest, declared.size, declared.delta)
        assert component.payload == payloads[component.name]
        assert apply_component(component, installed.get(component.name)) == images[component.name]
    assert describe(data)["manifest"]["text"]["en"]["manifest"] == {"system-version": release.version}  # type: ignore[index]


def test_three_components() -> None:
    data = envelope_of_three()
    verified = verify(data, key("oem-es256"), key("operator-ed25519"), installed_sequence=7, vendor_id=VENDOR,
                      class_id=CLASS)  # fmt: skip
    assert [(c.name, c.kind, c.version, c.after) for c in verified.components] == [
        ("app", "image", "2.0.0", ()),
        ("radio", "image", "3.1", ("app",)),
        ("config", "data", "7", ("app", "radio")),
    ]
    app = verified.component("app")
    assert app.delta is not None and app.delta.base_version == "1.9.0" and app.payload == app_delta()
    assert apply_component(app, APP_BASE) == APP
    assert apply_component(verified.component("config"), None) == CONFIG  # a full payload needs nothing installed
    assert len(verified.signer_key_ids) == 2


# --- verification order and its errors -----------------------------------------------------------------------------


def test_size_limit_comes_first() -> None:
    data = envelope_of_three()
    with pytest.raises(PackageTooLargeError):
        verify(b"\x00" + data[1:], key("oem-es256"), max_size=len(data) - 1)


def test_wrong_signer() -> None:
    with pytest.raises(SignatureError):
        verify(envelope_of_three(), key("other-es256"))
    with pytest.raises(SignatureError):  # every trust anchor must have signed
        verify(envelope_of_three(), key("oem-es256"), key("other-ed25519"))


@pytest.mark.parametrize("installed", [8, 9, 2**64 - 1])
def test_lower_or_equal_sequence_is_a_rollback(installed: int) -> None:
    with pytest.raises(RollbackError):
        verify(envelope_of_three(sequence=8), key("oem-es256"), installed_sequence=installed)


def test_wrong_class_or_vendor() -> None:
    data = envelope_of_three()
    with pytest.raises(ConditionFailedError):
        verify(data, key("oem-es256"), class_id=uuid.uuid4())
    with pytest.raises(ConditionFailedError):
        verify(data, key("oem-es256"), vendor_id=uuid.uuid4(), class_id=CLASS)


def test_non_system_envelope() -> None:
    image = b"firmware"
    plain = build_envelope(
        ReleaseManifest.for_image(image, sequence_number=1, vendor_id=VENDOR, class_id=CLASS, version="1"),
        [key("oem-es256")],
        image,
    )
    assert not is_system_envelope(plain)
    with pytest.raises(SuitDecodeError, match="not a system manifest"):
        verify(plain, key("oem-es256"))


@SETTINGS
@given(st.binary(max_size=300))
def test_is_system_envelope_never_raises(data: bytes) -> None:
    assert not is_system_envelope(data)


def test_every_payload_byte_flipped() -> None:
    data = envelope_of_three()
    signer = key("oem-es256")
    envelope = decode_envelope(data)
    verified = verify(data, signer)
    for name, payload in envelope.integrated.items():
        for index in range(len(payload)):
            flipped = bytearray(payload)
            flipped[index] ^= 0x01
            tampered = dataclasses.replace(envelope, integrated={**envelope.integrated, name: bytes(flipped)})
            with pytest.raises(ImageMismatchError):
                verify(tampered.encode(), signer)
            # The same bytes handed to the installer without the check: never a wrong image. A delta has bits that
            # do not matter (heatshrink padding, some seeks past the base): those still give exactly the image.
            component = dataclasses.replace(verified.component(name[1:]), payload=bytes(flipped))
            try:
                image = apply_component(component, APP_BASE)
            except (ImageMismatchError, DeltaError):
                continue
            assert component.delta is not None and image == APP


def test_missing_or_extra_payloads() -> None:
    envelope = decode_envelope(envelope_of_three())
    without = dataclasses.replace(envelope, integrated={k: v for k, v in envelope.integrated.items() if k != "#radio"})
    with pytest.raises(ImageMismatchError, match="#radio"):
        verify(without.encode(), key("oem-es256"))
    release, payloads = three()
    with pytest.raises(ValueError, match="does not match"):
        build_system_envelope(release, {**payloads, "radio": RADIO + b"!"}, [])
    with pytest.raises(ValueError, match="no payload"):
        build_system_envelope(release, {"app": app_delta()}, [])
    with pytest.raises(ValueError, match="unknown"):
        build_system_envelope(release, {**payloads, "modem": b""}, [])


def test_a_signed_manifest_outside_the_layout_is_refused() -> None:
    """Signed, digest-consistent, but not what encode_system_manifest writes: here, another delta format."""
    signer = key("oem-es256")
    envelope = decode_envelope(envelope_of_three())
    manifest = envelope.manifest_encoded.replace(DELTA_FORMAT.encode(), b"bsdiff4-raw-uncompressed-xxxx"[:29])
    digest = SuitDigest.sha256(cbor2.dumps(manifest))
    resigned = _with_signature(
        dataclasses.replace(
            envelope, digest=digest, digest_encoded=digest.encode(), auth_blocks=(), manifest_encoded=manifest
        ),
        signer,
        False,
    )
    assert not is_system_envelope(resigned.encode())
    with pytest.raises(SuitDecodeError, match="delta format"):
        verify(resigned.encode(), signer)


# --- deltas ----------------------------------------------------------------------------------------------------------


def test_delta_base_mismatch() -> None:
    app = verify(envelope_of_three(), key("oem-es256")).component("app")
    other_same_size = bytes(len(APP_BASE))
    for installed in (None, b"", APP_BASE[:-1], other_same_size, APP):
        with pytest.raises(DeltaBaseMismatchError) as caught:
            apply_component(app, installed)
        assert caught.value.update_result == UpdateResult.UNSUPPORTED_PACKAGE_TYPE


def test_from_delta_checks_the_delta() -> None:
    with pytest.raises(ValueError, match="does not give the image"):
        ComponentRelease.from_delta("app", APP, app_delta(), APP, version="2")
    with pytest.raises(ValueError, match="does not apply"):
        ComponentRelease.from_delta("app", APP, b"not a delta", APP_BASE, version="2")


def test_delta_result_is_checked_against_the_full_image() -> None:
    app = verify(envelope_of_three(), key("oem-es256")).component("app")
    wrong = make_delta(APP_BASE, APP[:-1] + b"?")  # a valid delta to another image of the same size
    with pytest.raises(ImageMismatchError):
        apply_component(dataclasses.replace(app, payload=wrong), APP_BASE)
    longer = make_delta(APP_BASE, APP + b"tail")
    with pytest.raises(DeltaError, match="limit"):  # refused from its header: more than the image's size
        apply_component(dataclasses.replace(app, payload=longer), APP_BASE)


# --- release rules ---------------------------------------------------------------------------------------------------


def test_after_must_name_an_earlier_component() -> None:
    radio = ComponentRelease.full("radio", RADIO, version="1", after=["app"])
    app = ComponentRelease.full("app", APP, version="1")
    with pytest.raises(ValueError, match="earlier"):
        SystemRelease(1, VENDOR, CLASS, "s", (radio, app))
    with pytest.raises(ValueError, match="earlier"):
        SystemRelease(1, VENDOR, CLASS, "s", (ComponentRelease.full("app", APP, version="1", after=["modem"]),))
    assert SystemRelease(1, VENDOR, CLASS, "s", (app, radio)).components == (app, radio)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ComponentRelease.full("App", APP, version="1"),
        lambda: ComponentRelease.full("a" * 33, APP, version="1"),
        lambda: ComponentRelease.full("app", APP, version=""),
        lambda: ComponentRelease.full("app", APP, version="1", kind="firmware"),  # type: ignore[arg-type]
        lambda: ComponentRelease.full("app", APP, version="1", after=["app"]),
        lambda: ComponentRelease.full("app", APP, version="1", after=["x", "x"]),
        lambda: dataclasses.replace(ComponentRelease.full("app", APP, version="1"), payload_size=1),
        lambda: SystemRelease(1, VENDOR, CLASS, "s", ()),
        lambda: SystemRelease(1, VENDOR, CLASS, "", (ComponentRelease.full("app", APP, version="1"),)),
        lambda: SystemRelease(1, VENDOR, CLASS, "s", (ComponentRelease.full("app", APP, version="1"),) * 2),
    ],
    ids=["upper-case", "long-name", "no-version", "kind", "after-self", "after-twice", "full-size", "empty",
         "no-system-version", "twice"],
)  # fmt: skip
def test_invalid_releases(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


# --- what the older readers make of a system envelope ----------------------------------------------------------------


def test_parse_manifest_and_describe_list_the_components() -> None:
    data = envelope_of_three()
    manifest = parse_manifest(decode_envelope(data).manifest_encoded)
    assert [c.identifier for c in manifest.components] == [(b"app",), (b"radio",), (b"config",), (b"app", b"delta")]
    assert manifest.components[1].uris == ("#radio",)
    assert manifest.components[3].uris == ("#app",)
    summary = describe(data)
    components = summary["manifest"]["components"]  # type: ignore[index]
    assert [c["id"] for c in components] == [
        [b"app".hex()],
        [b"radio".hex()],
        [b"config".hex()],
        [b"app".hex(), b"delta".hex()],
    ]
    text = summary["manifest"]["text"]["en"]  # type: ignore[index]
    assert text["manifest"] == {"system-version": "2025.1"}
    assert text["components"]["[h'636f6e666967']"] == {
        "component-version": "7", "component-kind": "data", "component-after": "app,radio"
    }  # fmt: skip
    assert set(summary["integrated_payloads"]) == {"#app", "#radio", "#config"}  # type: ignore[call-overload]


def test_verify_envelope_refuses_a_system_envelope() -> None:
    """The single-image verifier refuses a system envelope (it would see component 0 only): a device that knows
    only verify_envelope never installs one component of a system."""
    signer = key("oem-es256")
    with pytest.raises(SuitDecodeError, match="verify_system_envelope"):
        verify_envelope(envelope_of_three(), trust_anchors=[signer.public_key()], max_size=MAX_SIZE)
    release = SystemRelease(2, VENDOR, CLASS, "s", (ComponentRelease.full("radio", RADIO, version="3"),))
    with pytest.raises(SuitDecodeError, match="system manifest"):
        verify_envelope(build_system_envelope(release, {"radio": RADIO}, [signer]),
                        trust_anchors=[signer.public_key()], max_size=MAX_SIZE)  # fmt: skip

"""Envelopes we build: layout, round trips through verification, counter-signing, inspection, and robustness of the
verifier against tampering and arbitrary bytes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import uuid
from functools import cache

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_object.errors import (
    ConditionFailedError,
    DigestMismatchError,
    FirmwareError,
    ImageMismatchError,
    PackageTooLargeError,
    RollbackError,
    SignatureError,
    SuitDecodeError,
    SuitError,
)
from firmware_object.suit import (
    PrivateKey,
    ReleaseManifest,
    VerifiedEnvelope,
    add_signature,
    build_envelope,
    check_image,
    decode_envelope,
    describe,
    encode_manifest,
    generate_private_key,
    inspect_envelope,
    key_id,
    load_private_key,
    load_public_key,
    private_key_to_pem,
    public_key_to_pem,
    verify_envelope,
)
from firmware_object.suit.manifest import parse_manifest
from firmware_object.suit.structure import Envelope

VENDOR = uuid.UUID("3f1c2a5e-9b7d-4c1e-8a2b-6d0f4e3c2b1a")
CLASS = uuid.UUID("b8e2f0a4-1c3d-4e5f-9a6b-7c8d9e0f1a2b")
IMAGE = bytes(range(256)) * 5
URI = "coap://fota.example/fw/7.bin"
MAX_SIZE = 1 << 20
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def key(name: str) -> PrivateKey:
    """Session keys by role: ``oem-es256``, ``operator-ed25519``... (the part after the dash is the algorithm)."""
    return generate_private_key(name.split("-")[1])


def release(*, uri: str | None = None, sequence: int = 7, version: str | None = "1.2.3") -> ReleaseManifest:
    return ReleaseManifest.for_image(
        IMAGE, sequence_number=sequence, vendor_id=VENDOR, class_id=CLASS, image_uri=uri, version=version
    )


def verify(data: bytes, *signers: PrivateKey, **kwargs: object) -> VerifiedEnvelope:
    options: dict[str, object] = {"max_size": MAX_SIZE, **kwargs}
    return verify_envelope(data, trust_anchors=[s.public_key() for s in signers], **options)  # type: ignore[arg-type]


# --- layout --------------------------------------------------------------------------------------------------------


def test_manifest_layout() -> None:
    manifest = cbor2.loads(encode_manifest(release(uri=URI)))
    digest = cbor2.dumps([-16, hashlib.sha256(IMAGE).digest()])
    assert sorted(manifest) == [1, 2, 3, 7, 9, 20, 23]
    assert manifest[1] == 1 and manifest[2] == 7
    common = cbor2.loads(manifest[3])
    assert common[2] == [[b"\x00"]]
    assert cbor2.loads(common[4]) == [
        20,
        {1: VENDOR.bytes, 2: CLASS.bytes, 3: digest, 14: len(IMAGE)},
        1,
        15,
        2,
        15,
    ]
    assert cbor2.loads(manifest[7]) == [3, 15]
    assert cbor2.loads(manifest[9]) == [23, 2]
    assert cbor2.loads(manifest[20]) == [20, {21: URI}, 21, 2, 3, 15]
    assert cbor2.loads(manifest[23]) == {"en": {(b"\x00",): {6: "1.2.3"}}}


def test_envelope_layout_integrated() -> None:
    signer = key("oem-es256")
    envelope = cbor2.loads(build_envelope(release(version=None), [signer], IMAGE))
    assert envelope.tag == 107
    assert list(envelope.value) == [2, 3, "#firmware"]  # canonical order
    assert envelope.value["#firmware"] == IMAGE
    manifest = cbor2.loads(envelope.value[3])
    assert 23 not in manifest
    assert cbor2.loads(manifest[20]) == [20, {21: "#firmware"}, 21, 2, 3, 15]
    digest_bytes, signature_bytes = cbor2.loads(envelope.value[2])
    assert cbor2.loads(digest_bytes) == [-16, hashlib.sha256(cbor2.dumps(envelope.value[3])).digest()]
    signature = cbor2.loads(signature_bytes)
    assert signature.tag == 18
    protected, unprotected, payload, raw = signature.value
    assert protected == bytes.fromhex("a10126") and unprotected == {4: key_id(signer)}
    assert payload is None and len(raw) == 64


def test_envelope_structure_round_trips() -> None:
    for uri in (None, URI):
        data = build_envelope(release(uri=uri), [key("oem-es256"), key("operator-ed25519")], IMAGE)
        decoded = decode_envelope(data)
        assert isinstance(decoded, Envelope) and decoded.tagged
        assert decoded.encode() == data
        assert decoded.manifest_wrapped == cbor2.dumps(decoded.manifest_encoded)


def test_build_is_deterministic() -> None:
    for signer in (key("oem-es256"), key("oem-ed25519")):
        assert build_envelope(release(), [signer], IMAGE) == build_envelope(release(), [signer], IMAGE)
    assert encode_manifest(release()) != encode_manifest(release(sequence=8))


def test_unsigned_envelope_never_verifies_against_an_anchor() -> None:
    data = build_envelope(release(), [], IMAGE)
    assert decode_envelope(data).digest_matches()
    with pytest.raises(SignatureError):
        verify(data, key("oem-es256"))


# --- round trips ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["es256", "ed25519"])
@pytest.mark.parametrize("uri", [None, URI])
@pytest.mark.parametrize("fully_specified", [False, True])
def test_round_trip(alg: str, uri: str | None, fully_specified: bool) -> None:
    signer = key(f"oem-{alg}")
    data = build_envelope(release(uri=uri), [signer], IMAGE, fully_specified=fully_specified)
    verified = verify(data, signer, installed_sequence=6, vendor_id=VENDOR, class_id=CLASS)
    assert verified.sequence_number == 7
    assert verified.vendor_id == VENDOR and verified.class_id == CLASS
    assert verified.image_digest == hashlib.sha256(IMAGE).digest() and verified.image_size == len(IMAGE)
    assert verified.image_uri == uri
    assert verified.payload == (IMAGE if uri is None else None)
    assert verified.version == "1.2.3"
    assert verified.signer_key_ids == (key_id(signer),)
    expected_alg = {
        ("es256", False): "ES256",
        ("es256", True): "ESP256",
        ("ed25519", False): "EdDSA",
        ("ed25519", True): "Ed25519",
    }[alg, fully_specified]
    assert describe(data)["signatures"] == [{"cose": "COSE_Sign1", "alg": expected_alg, "kid": key_id(signer).hex()}]
    if uri is not None:
        check_image(verified, IMAGE)


@pytest.mark.parametrize(("first", "second"), [("oem-es256", "operator-ed25519"), ("oem-ed25519", "operator-es256")])
def test_two_signers_are_both_required(first: str, second: str) -> None:
    oem, operator, stranger = key(first), key(second), key("stranger-es256")
    data = build_envelope(release(), [oem, operator], IMAGE)
    verified = verify(data, oem, operator)
    assert verified.signer_key_ids == (key_id(oem), key_id(operator))
    assert verify(data, operator, oem).signer_key_ids == (key_id(operator), key_id(oem))
    assert verify(data, oem).sequence_number == 7  # a device that trusts only the OEM ignores the other signature
    with pytest.raises(SignatureError):
        verify(data, oem, stranger)
    only_oem = build_envelope(release(), [oem], IMAGE)
    with pytest.raises(SignatureError):
        verify(only_oem, oem, operator)


def test_add_signature_keeps_manifest_digest_and_signatures() -> None:
    oem, operator = key("oem-es256"), key("operator-ed25519")
    signed = build_envelope(release(uri=URI), [oem])
    countersigned = add_signature(signed, operator)
    before, after = decode_envelope(signed), decode_envelope(countersigned)
    assert after.manifest_encoded == before.manifest_encoded
    assert after.digest_encoded == before.digest_encoded
    assert after.auth_blocks[0].encoded == before.auth_blocks[0].encoded
    assert len(after.auth_blocks) == 2
    assert verify(countersigned, oem, operator).manifest_digest == verify(signed, oem).manifest_digest
    assert countersigned == build_envelope(release(uri=URI), [oem, operator])  # both signers deterministic
    assert add_signature(countersigned, operator) == countersigned  # already signed by this key: unchanged
    assert add_signature(countersigned, oem) == countersigned


def test_add_signature_refuses_a_tampered_manifest() -> None:
    signed = build_envelope(release(uri=URI), [key("oem-es256")])
    tampered = signed.replace(URI.encode(), URI.upper().encode())
    with pytest.raises(DigestMismatchError):
        add_signature(tampered, key("operator-es256"))
    with pytest.raises(SuitDecodeError):
        add_signature(b"\xd8\x6b\xa0", key("operator-es256"))


def test_signature_without_kid_and_with_a_wrong_kid_still_verifies() -> None:
    """The kid is a hint: a verifier tries every signature, so a rewritten kid changes nothing."""
    signer = key("oem-es256")
    data = build_envelope(release(), [signer], IMAGE)
    kid = key_id(signer)
    tampered = data.replace(kid, bytes(len(kid)))
    assert tampered != data
    assert verify(tampered, signer) == verify(data, signer)


# --- verification failures on envelopes we build -----------------------------------------------------------------


def test_rollback_and_replay() -> None:
    signer = key("oem-es256")
    data = build_envelope(release(sequence=10), [signer], IMAGE)
    assert verify(data, signer, installed_sequence=9).sequence_number == 10
    for installed in (10, 11, 2**64 - 1):
        with pytest.raises(RollbackError):
            verify(data, signer, installed_sequence=installed)


def test_conditions() -> None:
    signer = key("oem-es256")
    data = build_envelope(release(), [signer], IMAGE)
    other = uuid.UUID(int=1)
    with pytest.raises(ConditionFailedError):
        verify(data, signer, vendor_id=other)
    with pytest.raises(ConditionFailedError):
        verify(data, signer, class_id=other)
    assert verify(data, signer, vendor_id=VENDOR).class_id == CLASS


def test_signature_is_checked_before_everything_after_the_shape() -> None:
    signer = key("oem-es256")
    data = build_envelope(release(sequence=1), [signer], IMAGE)
    with pytest.raises(SignatureError):  # not RollbackError nor ConditionFailedError
        verify(data, key("stranger-es256"), installed_sequence=5, vendor_id=uuid.UUID(int=1))


def test_integrated_image_mismatch() -> None:
    signer = key("oem-ed25519")
    data = build_envelope(release(), [signer], IMAGE)
    envelope = decode_envelope(data)
    for payload in (IMAGE[:-1], IMAGE[:-1] + b"\x00", IMAGE + b"\x00"):
        tampered = dataclasses.replace(envelope, integrated={"#firmware": payload}).encode()
        with pytest.raises(ImageMismatchError):
            verify(tampered, signer)
    with pytest.raises(ImageMismatchError):
        verify(dataclasses.replace(envelope, integrated={}).encode(), signer)
    with pytest.raises(ImageMismatchError):
        verify(dataclasses.replace(envelope, integrated={"#other": IMAGE}).encode(), signer)


def test_check_image_for_a_fetched_image() -> None:
    signer = key("oem-es256")
    verified = verify(build_envelope(release(uri=URI), [signer]), signer)
    check_image(verified, IMAGE)
    with pytest.raises(ImageMismatchError, match="bytes"):
        check_image(verified, IMAGE + b"x")
    with pytest.raises(ImageMismatchError, match="SHA-256"):
        check_image(verified, bytes(len(IMAGE)))


def test_a_severed_member_without_digest_is_refused() -> None:
    signer = key("oem-es256")
    envelope = decode_envelope(build_envelope(release(uri=URI), [signer]))
    with pytest.raises(SuitDecodeError):
        verify(dataclasses.replace(envelope, severed={20: b"\x80"}).encode(), signer)


def test_no_trust_anchors_means_no_signature_is_required() -> None:
    unsigned = build_envelope(release(), [], IMAGE)
    verified = verify_envelope(unsigned, trust_anchors=[], max_size=MAX_SIZE)
    assert verified.signer_key_ids == () and verified.payload == IMAGE
    signed = build_envelope(release(), [key("oem-es256")], IMAGE)
    assert verify_envelope(signed, trust_anchors=[], max_size=MAX_SIZE).signer_key_ids == ()
    with pytest.raises(DigestMismatchError):  # the digest still binds the manifest
        verify_envelope(unsigned.replace(VENDOR.bytes, CLASS.bytes), trust_anchors=[], max_size=MAX_SIZE)


# --- building errors -----------------------------------------------------------------------------------------------


def test_build_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="pass it"):
        build_envelope(release(), [key("oem-es256")])
    with pytest.raises(ValueError, match="does not match"):
        build_envelope(release(), [key("oem-es256")], IMAGE + b"x")
    digest = hashlib.sha256(IMAGE).digest()
    for bad in (
        {"sequence_number": -1},
        {"sequence_number": 2**64},
        {"image_digest": digest[:31]},
        {"image_size": -1},
        {"image_uri": ""},
        {"image_uri": "#firmware"},
        {"version": ""},
    ):
        fields: dict[str, object] = {
            "sequence_number": 1,
            "vendor_id": VENDOR,
            "class_id": CLASS,
            "image_digest": digest,
            "image_size": len(IMAGE),
            **bad,
        }
        with pytest.raises(ValueError):
            ReleaseManifest(**fields)  # type: ignore[arg-type]


# --- inspection ----------------------------------------------------------------------------------------------------


def test_describe() -> None:
    oem, operator = key("oem-es256"), key("operator-ed25519")
    data = build_envelope(release(), [oem, operator], IMAGE)
    digest = decode_envelope(data).digest.value.hex()
    image_digest = hashlib.sha256(IMAGE).hexdigest()
    summary = describe(data)
    assert json.loads(json.dumps(summary)) == summary
    assert summary == {
        "tagged": True,
        "size": len(data),
        "manifest_digest": {"alg": "sha-256", "digest": digest, "matches": True},
        "signatures": [
            {"cose": "COSE_Sign1", "alg": "ES256", "kid": key_id(oem).hex()},
            {"cose": "COSE_Sign1", "alg": "EdDSA", "kid": key_id(operator).hex()},
        ],
        "manifest": {
            "manifest_version": 1,
            "sequence_number": 7,
            "members": [
                "manifest-version",
                "manifest-sequence-number",
                "common",
                "validate",
                "invoke",
                "install",
                "text",
            ],
            "reference_uri": None,
            "vendor_ids": [str(VENDOR)],
            "class_ids": [str(CLASS)],
            "checked_vendor_ids": [str(VENDOR)],
            "checked_class_ids": [str(CLASS)],
            "device_ids": [],
            "components": [
                {
                    "id": ["00"],
                    "images": [{"alg": "sha-256", "digest": image_digest, "size": len(IMAGE), "slot": None}],
                    "uris": ["#firmware"],
                }
            ],
            "version": "1.2.3",
            "text": {"en": {"manifest": {}, "components": {"[h'00']": {"component-version": "1.2.3"}}}},
        },
        "severed_members": {},
        "integrated_payloads": {"#firmware": {"size": len(IMAGE), "sha256": image_digest}},
    }


def test_inspect_needs_no_key() -> None:
    view = inspect_envelope(build_envelope(release(uri=URI), []))
    assert view.manifest.components[0].uris == (URI,)
    assert view.manifest.version == "1.2.3"
    assert view.envelope.signatures == ()


# --- keys ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["es256", "ed25519"])
def test_key_pem_round_trip(alg: str) -> None:
    private = generate_private_key(alg)
    loaded = load_private_key(private_key_to_pem(private))
    public = load_public_key(public_key_to_pem(private.public_key()))
    assert key_id(loaded) == key_id(public) == key_id(private.public_key())
    assert len(key_id(public)) == 8


def test_bad_keys() -> None:
    with pytest.raises(ValueError, match="unsupported key algorithm"):
        generate_private_key("rsa")
    public_pem = public_key_to_pem(key("oem-es256").public_key())
    for bad in (b"", b"not a key", public_pem):
        with pytest.raises(ValueError):
            load_private_key(bad)
    with pytest.raises(ValueError):
        load_public_key(private_key_to_pem(key("oem-es256")))
    with pytest.raises(ValueError):
        load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


# --- properties ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    image=st.binary(max_size=2048),
    sequence=st.integers(min_value=0, max_value=2**64 - 1),
    uri=st.none() | st.text(min_size=1, max_size=64).filter(lambda u: not u.startswith("#")),
    version=st.none() | st.text(min_size=1, max_size=32),
    alg=st.sampled_from(["es256", "ed25519"]),
)
def test_arbitrary_releases_round_trip(
    image: bytes, sequence: int, uri: str | None, version: str | None, alg: str
) -> None:
    signer = key(f"oem-{alg}")
    manifest = ReleaseManifest.for_image(
        image, sequence_number=sequence, vendor_id=VENDOR, class_id=CLASS, image_uri=uri, version=version
    )
    verified = verify(build_envelope(manifest, [signer], image), signer, vendor_id=VENDOR, class_id=CLASS)
    assert (verified.sequence_number, verified.image_uri, verified.version) == (sequence, uri, version)
    assert verified.image_digest == manifest.image_digest and verified.image_size == len(image)
    assert verified.payload == (image if uri is None else None)
    if sequence > 0:
        with pytest.raises(RollbackError):
            verify(build_envelope(manifest, [signer], image), signer, installed_sequence=sequence)


@cache
def built(variant: str) -> tuple[bytes, VerifiedEnvelope, tuple[PrivateKey, ...]]:
    """An envelope to tamper with: ``es256``/``ed25519`` integrated, or ``dual`` (both signers, URI)."""
    if variant == "dual":
        signers: tuple[PrivateKey, ...] = (key("oem-es256"), key("operator-ed25519"))
        data = build_envelope(release(uri=URI), signers)
    else:
        signers = (key(f"oem-{variant}"),)
        data = build_envelope(  # a small image, so that flips hit the structure more often
            ReleaseManifest.for_image(IMAGE[:64], sequence_number=7, vendor_id=VENDOR, class_id=CLASS, version="1"),
            signers,
            IMAGE[:64],
        )
    return data, verify(data, *signers), signers


@settings(SETTINGS, max_examples=400)
@given(
    variant=st.sampled_from(["es256", "ed25519", "dual"]),
    where=st.floats(min_value=0, max_value=1, exclude_max=True),
    mask=st.integers(min_value=1, max_value=255),
)
def test_byte_flips_fail_with_a_suit_error_or_change_nothing(variant: str, where: float, mask: int) -> None:
    data, original, signers = built(variant)
    position = int(where * len(data))
    tampered = data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]
    try:
        result = verify(tampered, *signers, vendor_id=VENDOR, class_id=CLASS)
    except SuitError:
        return
    assert result == original


@SETTINGS
@given(data=st.binary(max_size=600), tagged=st.booleans(), max_size=st.integers(min_value=0, max_value=1000))
def test_random_bytes_raise_only_suit_errors(data: bytes, tagged: bool, max_size: int) -> None:
    candidate = (b"\xd8\x6b" + data) if tagged else data
    with pytest.raises((SuitError, PackageTooLargeError)):
        verify_envelope(candidate, trust_anchors=[key("oem-ed25519").public_key()], max_size=max_size)
    with pytest.raises(SuitError):
        describe(candidate)


_cbor_leaves = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.booleans(),
    st.none(),
)
_cbor_values = st.recursive(
    _cbor_leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.integers(min_value=-30, max_value=30) | st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


@SETTINGS
@given(manifest=st.dictionaries(st.integers(min_value=0, max_value=30), _cbor_values, max_size=8))
def test_structured_nonsense_raises_only_suit_errors(manifest: dict[int, object]) -> None:
    """Well-formed CBOR of the wrong shape, at every layer the parser descends into."""
    encoded = cbor2.dumps(manifest)
    wrapper = cbor2.dumps([cbor2.dumps([-16, hashlib.sha256(cbor2.dumps(encoded)).digest()])])
    envelope = cbor2.dumps(cbor2.CBORTag(107, {2: wrapper, 3: encoded}))
    with contextlib.suppress(SuitDecodeError):
        parse_manifest(encoded)
    with contextlib.suppress(SuitDecodeError):
        inspect_envelope(envelope)
    with pytest.raises(SignatureError):
        verify(envelope, key("oem-es256"))


@SETTINGS
@given(
    position=st.integers(min_value=0, max_value=10_000),
    mask=st.integers(min_value=1, max_value=255),
    uri=st.sampled_from([None, URI]),
)
def test_manifest_byte_flips_parse_or_raise_suit_decode_error(position: int, mask: int, uri: str | None) -> None:
    encoded = bytearray(encode_manifest(release(uri=uri)))
    encoded[position % len(encoded)] ^= mask
    try:
        view = parse_manifest(bytes(encoded))
    except SuitDecodeError:
        return
    json.dumps(view.describe())


def test_error_types_are_firmware_errors() -> None:
    assert issubclass(SuitError, FirmwareError) and issubclass(PackageTooLargeError, FirmwareError)

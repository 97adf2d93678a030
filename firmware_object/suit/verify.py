"""Verification of SUIT envelopes, in the order the architecture fixes, each failure its own error:

1. size limit                                     -> :class:`PackageTooLargeError`
2. CBOR shape of the envelope and its wrapper     -> :class:`SuitDecodeError`
3. a valid COSE_Sign1 by EVERY trust anchor       -> :class:`SignatureError`
4. SUIT_Digest == SHA-256(bstr-wrapped manifest)  -> :class:`DigestMismatchError` (then severed members likewise)
5. sequence number above the installed one        -> :class:`RollbackError`
6. vendor/class identifier conditions             -> :class:`ConditionFailedError`
7. integrated image digest and size               -> :class:`ImageMismatchError`

Signatures cover the digest in the wrapper, not the manifest: step 3 authenticates the digest, step 4 binds the
manifest to it, and only then is the manifest parsed (its own shape errors are :class:`SuitDecodeError` too).

The image is component 0: its digest and size are the first alternative ``condition-image-match`` checks (A/B
manifests list one per slot, and an image matching any of them is accepted); its URI is the first one fetched into
component 0. A URI ``#key`` names the integrated payload at envelope key ``#key``.

Invariants: the functions here raise only :class:`SuitError` subclasses and :class:`PackageTooLargeError` for any
input bytes; a :class:`VerifiedEnvelope` exists only for an envelope that passed every step that applies.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from firmware_object.errors import (
    ConditionFailedError,
    DigestMismatchError,
    ImageMismatchError,
    PackageTooLargeError,
    RollbackError,
    SignatureError,
    SuitDecodeError,
)
from firmware_object.suit import cbor
from firmware_object.suit.cose import CoseSign1, verify_sign1
from firmware_object.suit.keys import PublicKey, key_id
from firmware_object.suit.labels import CoseAlg, TextKey
from firmware_object.suit.manifest import ImageSpec, ManifestView, parse_manifest, severed_digests
from firmware_object.suit.structure import Envelope, decode_envelope


@dataclass(frozen=True)
class VerifiedEnvelope:
    """An authenticated envelope's facts. ``image_uri`` is None for an integrated image (then ``payload`` holds it)
    and for a manifest that fetches nothing into component 0 (then ``payload`` is None too)."""

    sequence_number: int
    vendor_id: uuid.UUID | None
    class_id: uuid.UUID | None
    image_digest: bytes
    image_size: int
    image_uri: str | None
    version: str | None
    payload: bytes | None
    signer_key_ids: tuple[bytes, ...]
    """:func:`key_id` of each trust anchor, in the order given (all of them signed)."""
    manifest_digest: bytes
    images: tuple[ImageSpec, ...]
    """Every image component 0 accepts; the first is ``image_digest``/``image_size``."""
    manifest: ManifestView


def verify_envelope(
    data: bytes,
    *,
    trust_anchors: Sequence[PublicKey],
    max_size: int,
    installed_sequence: int | None = None,
    vendor_id: uuid.UUID | None = None,
    class_id: uuid.UUID | None = None,
) -> VerifiedEnvelope:
    """Verify ``data`` (steps in the module docstring). Each trust anchor is a required signer; signatures by
    other keys, in other algorithms or of other COSE types are ignored. An EMPTY ``trust_anchors`` requires no
    signature at all (unsigned development images and tests only: a device in the field always passes its
    anchors). A given ``vendor_id``/``class_id`` must be what the manifest's identifier conditions check, and the
    manifest must check it."""
    if len(data) > max_size:
        raise PackageTooLargeError(f"package of {len(data)} bytes exceeds the limit of {max_size}")
    envelope = decode_envelope(data)
    _check_signatures(envelope, trust_anchors)
    _check_digests(envelope)
    manifest = parse_manifest(envelope.manifest_encoded, envelope.severed)
    if any(TextKey.SYSTEM_VERSION in text.manifest for text in manifest.text):
        raise SuitDecodeError("a system manifest (several components): verify it with verify_system_envelope")
    if installed_sequence is not None and manifest.sequence_number <= installed_sequence:
        raise RollbackError(
            f"sequence number {manifest.sequence_number} is not above the installed {installed_sequence}"
        )
    _check_conditions(manifest, vendor_id, class_id)
    images, uri = _primary_image(manifest)
    payload: bytes | None = None
    if uri is not None and uri.startswith("#"):
        payload = envelope.integrated.get(uri)
        if payload is None:
            raise ImageMismatchError(f"integrated payload {uri!r} is missing from the envelope")
        _match_image(images, payload)
        uri = None
    return VerifiedEnvelope(
        sequence_number=manifest.sequence_number,
        vendor_id=_first_uuid(manifest.checked_vendor_ids or manifest.vendor_ids),
        class_id=_first_uuid(manifest.checked_class_ids or manifest.class_ids),
        image_digest=images[0].digest.value,
        image_size=_size(images[0]),
        image_uri=uri,
        version=manifest.version,
        payload=payload,
        signer_key_ids=tuple(key_id(anchor) for anchor in trust_anchors),
        manifest_digest=envelope.digest.value,
        images=images,
        manifest=manifest,
    )


def check_image(verified: VerifiedEnvelope, image: bytes) -> None:
    """Check an image fetched from ``verified.image_uri``: its SHA-256 and size must be one of ``verified.images``.
    Raises :class:`ImageMismatchError`."""
    _match_image(verified.images, image)


def _check_signatures(envelope: Envelope, trust_anchors: Sequence[PublicKey]) -> None:
    signatures = envelope.signatures
    for anchor in trust_anchors:
        kid = key_id(anchor)
        # The kid is an unauthenticated hint: signatures naming this anchor are tried first, then all the others.
        candidates = sorted(signatures, key=lambda s: s.kid != kid)
        if not any(_verifies(s, anchor, envelope.digest_encoded) for s in candidates):
            raise SignatureError(f"no valid signature by trust anchor {kid.hex()}")


def _verifies(signature: CoseSign1, anchor: PublicKey, digest_encoded: bytes) -> bool:
    return signature.payload is None and verify_sign1(signature, anchor, detached_payload=digest_encoded)


def _check_digests(envelope: Envelope) -> None:
    if envelope.digest.alg != CoseAlg.SHA_256:
        raise SuitDecodeError(f"digest algorithm {envelope.digest.alg} is not SHA-256 (-16)")
    if not envelope.digest_matches():
        raise DigestMismatchError("the manifest does not match the signed digest")
    declared = severed_digests(envelope.manifest_encoded, envelope.severed)
    for key, member in envelope.severed.items():
        if key not in declared:
            raise SuitDecodeError(f"envelope member {key} is not a severed member of the manifest")
        if not declared[key].matches(cbor.encode(member)):
            raise DigestMismatchError(f"severed member {key} does not match its digest in the manifest")


def _check_conditions(manifest: ManifestView, vendor_id: uuid.UUID | None, class_id: uuid.UUID | None) -> None:
    checks = (("vendor", vendor_id, manifest.checked_vendor_ids), ("class", class_id, manifest.checked_class_ids))
    for what, expected, declared in checks:
        if expected is None:
            continue
        if not declared:
            raise ConditionFailedError(f"the manifest does not check the {what} identifier")
        for value in declared:
            if value != expected:
                shown = value if isinstance(value, uuid.UUID) else f"pen:{value.hex()}"
                raise ConditionFailedError(f"{what} identifier {shown} is not this device's {expected}")
    if (vendor_id is not None or class_id is not None) and manifest.device_ids:
        raise ConditionFailedError("device identifier conditions are not supported")


def _primary_image(manifest: ManifestView) -> tuple[tuple[ImageSpec, ...], str | None]:
    if not manifest.components:
        raise SuitDecodeError("the manifest declares no component")
    component = manifest.components[0]
    images = tuple(image for image in component.images if image.size is not None)
    if not images:
        raise SuitDecodeError("the manifest checks no image digest and size for component 0")
    for image in images:
        if image.digest.alg != CoseAlg.SHA_256:
            raise SuitDecodeError(f"image digest algorithm {image.digest.alg} is not SHA-256 (-16)")
    return images, component.uris[0] if component.uris else None


def _match_image(images: Sequence[ImageSpec], image: bytes) -> None:
    digest = hashlib.sha256(image).digest()
    for spec in images:
        if spec.size == len(image) and hmac.compare_digest(spec.digest.value, digest):
            return
    sizes = ", ".join(str(spec.size) for spec in images)
    if all(spec.size != len(image) for spec in images):
        raise ImageMismatchError(f"image of {len(image)} bytes; the manifest declares {sizes}")
    raise ImageMismatchError(f"image SHA-256 {digest.hex()} is not the manifest's")


def _first_uuid(values: Sequence[object]) -> uuid.UUID | None:
    return next((value for value in values if isinstance(value, uuid.UUID)), None)


def _size(image: ImageSpec) -> int:
    assert image.size is not None  # _primary_image keeps only images with a size
    return image.size

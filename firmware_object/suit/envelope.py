"""Building SUIT envelopes for releases, and counter-signing them.

:func:`build_envelope` writes, for a :class:`ReleaseManifest` (diagnostic notation; ``#firmware`` only when the image
is integrated, ``23`` only with a version)::

    107({
      2: << [ << [-16, h'<sha-256 of the bstr-wrapped manifest>'] >>,
              << 18([<< {1: -7} >>, {4: h'<key id>'}, null, h'<r || s>']) >>, ... ] >>,
      3: << {
        1: 1,                                  / manifest-version /
        2: 7,                                  / manifest-sequence-number /
        3: << {                                / common /
          2: [[h'00']],                        / components /
          4: << [                              / shared-sequence /
            20, {1: h'<vendor uuid>', 2: h'<class uuid>', 3: << [-16, h'<image sha-256>'] >>, 14: 1024},
            1, 15,                             / condition-vendor-identifier /
            2, 15                              / condition-class-identifier /
          ] >>
        } >>,
        7: << [3, 15] >>,                      / validate: condition-image-match /
        9: << [23, 2] >>,                      / invoke: directive-invoke /
        20: << [20, {21: "coap://.../fw.bin"}, 21, 2, 3, 15] >>,   / install: set uri, fetch, image-match /
        23: << {"en": {[h'00']: {6: "1.2.3"}}} >>                  / text: component version /
      } >>,
      "#firmware": h'<image>'                  / integrated payload; then the install uri is "#firmware" /
    })

Invariants: the manifest is deterministic CBOR, so equal releases give equal manifests and equal digests;
:func:`add_signature` never changes the manifest, the digest, nor the signatures already present. ES256 (pycose,
RFC 6979) and EdDSA signatures are deterministic too, so the same release and keys give the same envelope.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from firmware_object.errors import DigestMismatchError
from firmware_object.suit import cbor
from firmware_object.suit.cose import decode_auth_block, sign1, verify_sign1
from firmware_object.suit.keys import PrivateKey, key_id
from firmware_object.suit.labels import (
    INTEGRATED_PAYLOAD_KEY,
    REPORT_ALL,
    REPORT_ON_FAILURE,
    Command,
    CommonKey,
    CoseAlg,
    ManifestKey,
    Parameter,
    TextComponentKey,
)
from firmware_object.suit.manifest import ReleaseManifest
from firmware_object.suit.structure import MAX_AUTH_BLOCKS, Envelope, SuitDigest, decode_envelope

COMPONENT_ID: Final = (b"\x00",)
TEXT_LANGUAGE: Final = "en"


def build_envelope(
    manifest: ReleaseManifest,
    signers: Sequence[PrivateKey],
    image: bytes | None = None,
    *,
    fully_specified: bool = False,
) -> bytes:
    """A tagged envelope for ``manifest``, signed by each of ``signers`` in order (none: an unsigned envelope).

    The image is integrated (at ``"#firmware"``) exactly when ``manifest.image_uri`` is None, and then ``image`` is
    required; when given, ``image`` must match the manifest's digest and size (ValueError otherwise). ES256 and
    EdDSA are used, or ESP256 and Ed25519 with ``fully_specified``.
    """
    if image is not None and (
        len(image) != manifest.image_size or hashlib.sha256(image).digest() != manifest.image_digest
    ):
        raise ValueError("image does not match the manifest's digest and size")
    integrated: dict[str, bytes] = {}
    if manifest.image_uri is None:
        if image is None:
            raise ValueError("a manifest without image URI integrates the image: pass it")
        integrated[INTEGRATED_PAYLOAD_KEY] = image
    return signed_envelope(encode_manifest(manifest), integrated, signers, fully_specified=fully_specified)


def signed_envelope(manifest_encoded: bytes, integrated: dict[str, bytes], signers: Sequence[PrivateKey], *,
                    fully_specified: bool = False) -> bytes:
    """The tagged envelope of an encoded manifest and its integrated payloads, signed by each of ``signers`` in
    order over the manifest's SUIT_Digest."""
    digest = SuitDigest.sha256(cbor.encode(manifest_encoded))
    envelope = Envelope(digest, digest.encode(), (), manifest_encoded, {}, integrated)
    for signer in signers:
        envelope = _with_signature(envelope, signer, fully_specified)
    return envelope.encode()


def encode_manifest(manifest: ReleaseManifest) -> bytes:
    """The deterministic SUIT_Manifest of a release (layout in the module docstring)."""
    image_digest = SuitDigest(CoseAlg.SHA_256, manifest.image_digest).encode()
    common = {
        CommonKey.COMPONENTS: [list(COMPONENT_ID)],
        CommonKey.SHARED_SEQUENCE: cbor.encode(
            [
                Command.DIRECTIVE_OVERRIDE_PARAMETERS,
                {
                    Parameter.VENDOR_IDENTIFIER: manifest.vendor_id.bytes,
                    Parameter.CLASS_IDENTIFIER: manifest.class_id.bytes,
                    Parameter.IMAGE_DIGEST: image_digest,
                    Parameter.IMAGE_SIZE: manifest.image_size,
                },
                Command.CONDITION_VENDOR_IDENTIFIER,
                REPORT_ALL,
                Command.CONDITION_CLASS_IDENTIFIER,
                REPORT_ALL,
            ]
        ),
    }
    uri = manifest.image_uri if manifest.image_uri is not None else INTEGRATED_PAYLOAD_KEY
    install = [
        Command.DIRECTIVE_OVERRIDE_PARAMETERS,
        {Parameter.URI: uri},
        Command.DIRECTIVE_FETCH,
        REPORT_ON_FAILURE,
        Command.CONDITION_IMAGE_MATCH,
        REPORT_ALL,
    ]
    members: dict[int, object] = {
        ManifestKey.MANIFEST_VERSION: 1,
        ManifestKey.MANIFEST_SEQUENCE_NUMBER: manifest.sequence_number,
        ManifestKey.COMMON: cbor.encode(common),
        ManifestKey.VALIDATE: cbor.encode([Command.CONDITION_IMAGE_MATCH, REPORT_ALL]),
        ManifestKey.INVOKE: cbor.encode([Command.DIRECTIVE_INVOKE, REPORT_ON_FAILURE]),
        ManifestKey.INSTALL: cbor.encode(install),
    }
    if manifest.version is not None:
        text = {TEXT_LANGUAGE: {COMPONENT_ID: {TextComponentKey.COMPONENT_VERSION: manifest.version}}}
        members[ManifestKey.TEXT] = cbor.encode(text)
    return cbor.encode(members)


def add_signature(envelope: bytes, signer: PrivateKey, *, fully_specified: bool = False) -> bytes:
    """``envelope`` with one more COSE_Sign1 by ``signer`` (e.g. an operator authorising an OEM release).

    The manifest, its digest and the signatures already there are kept byte for byte; an envelope that ``signer``
    already signed comes back unchanged (so authorising twice is harmless). Raises :class:`SuitDecodeError` for a
    malformed envelope and :class:`DigestMismatchError` when its digest does not match its manifest. It does NOT
    verify the other signatures: verify the envelope against the keys you rely on before counter-signing it.
    """
    decoded = decode_envelope(envelope)
    if not decoded.digest_matches():
        raise DigestMismatchError("the envelope's digest does not match its manifest; refusing to sign it")
    public = signer.public_key()
    if any(verify_sign1(s, public, detached_payload=decoded.digest_encoded) for s in decoded.signatures):
        return envelope
    return _with_signature(decoded, signer, fully_specified).encode()


def _with_signature(envelope: Envelope, signer: PrivateKey, fully_specified: bool) -> Envelope:
    if len(envelope.auth_blocks) >= MAX_AUTH_BLOCKS:
        raise ValueError(f"an envelope carries at most {MAX_AUTH_BLOCKS} signatures")
    encoded = sign1(signer, envelope.digest_encoded, kid=key_id(signer), fully_specified=fully_specified)
    return replace(envelope, auth_blocks=(*envelope.auth_blocks, decode_auth_block(encoded)))

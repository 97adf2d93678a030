"""SUIT envelopes (draft-ietf-suit-manifest-37) for firmware releases: keys, building, counter-signing, verification
and inspection. Pure code: bytes in, bytes or frozen values out; no I/O, no clock.

``ReleaseManifest`` and ``describe`` (manifest), ``build_envelope`` and ``add_signature`` (envelope),
``verify_envelope`` and ``check_image`` (verify) and the key helpers (keys) are the faces the CLI, the server and the
device simulator use. Layers, bottom up: cbor, labels, keys -> cose -> structure -> manifest -> envelope, verify.
"""

from firmware_object.suit.envelope import add_signature, build_envelope, encode_manifest
from firmware_object.suit.keys import (
    PrivateKey,
    PublicKey,
    generate_private_key,
    key_id,
    load_private_key,
    load_public_key,
    private_key_to_pem,
    public_key_to_pem,
)
from firmware_object.suit.manifest import (
    ComponentView,
    EnvelopeView,
    ImageSpec,
    ManifestView,
    ReleaseManifest,
    describe,
    inspect_envelope,
)
from firmware_object.suit.structure import Envelope, SuitDigest, decode_envelope
from firmware_object.suit.verify import VerifiedEnvelope, check_image, verify_envelope

__all__ = [
    "ComponentView",
    "Envelope",
    "EnvelopeView",
    "ImageSpec",
    "ManifestView",
    "PrivateKey",
    "PublicKey",
    "ReleaseManifest",
    "SuitDigest",
    "VerifiedEnvelope",
    "add_signature",
    "build_envelope",
    "check_image",
    "decode_envelope",
    "describe",
    "encode_manifest",
    "generate_private_key",
    "inspect_envelope",
    "key_id",
    "load_private_key",
    "load_public_key",
    "private_key_to_pem",
    "public_key_to_pem",
    "verify_envelope",
]

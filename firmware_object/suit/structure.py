"""The outer structure of SUIT envelopes: SUIT_Digest, and the envelope with its authentication wrapper.

An envelope is ``107({2: << [<< SUIT_Digest >>, * << COSE_Sign1 >>] >>, 3: << manifest >>, ...})``; integer keys
besides 2 and 3 hold severed members, text keys integrated payloads. :func:`decode_envelope` checks this shape only
and interprets nothing inside the manifest: it is the stage before the signature check.

Invariants: decoding raises only :class:`SuitDecodeError`; ``decode_envelope(e.encode())`` gives ``e`` back;
:meth:`Envelope.encode` keeps the manifest, the digest and every authentication block byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import cbor2

from firmware_object.errors import SuitDecodeError
from firmware_object.suit import cbor
from firmware_object.suit.cose import AuthBlock, CoseSign1, decode_auth_block
from firmware_object.suit.labels import ENVELOPE_TAG, CoseAlg, EnvelopeKey

MAX_AUTH_BLOCKS: Final = 16
"""More signatures than this are refused, which bounds the work of verification."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SuitDigest:
    """A SUIT_Digest ``[algorithm-id, digest-bytes]``. Only SHA-256 (-16) can be computed here."""

    alg: int
    value: bytes

    @classmethod
    def sha256(cls, data: bytes) -> SuitDigest:
        return cls(CoseAlg.SHA_256, hashlib.sha256(data).digest())

    @classmethod
    def from_item(cls, item: cbor.CborValue, what: str = "SUIT_Digest") -> SuitDigest:
        if not isinstance(item, list) or len(item) < 2 or not _is_int(item[0]) or not isinstance(item[1], bytes):
            raise SuitDecodeError(f"{what} is not [algorithm-id, digest-bytes]")
        alg = item[0]
        assert isinstance(alg, int)
        return cls(alg, item[1])

    @classmethod
    def decode(cls, data: bytes, what: str = "SUIT_Digest") -> SuitDigest:
        return cls.from_item(cbor.decode(data), what)

    def encode(self) -> bytes:
        return cbor.encode([self.alg, self.value])

    def matches(self, data: bytes) -> bool:
        """True when this is a SHA-256 digest of ``data``; any other algorithm never matches."""
        return self.alg == CoseAlg.SHA_256 and hashlib.sha256(data).digest() == self.value

    def describe(self) -> dict[str, object]:
        return {"alg": "sha-256" if self.alg == CoseAlg.SHA_256 else self.alg, "digest": self.value.hex()}


@dataclass(frozen=True)
class Envelope:
    """A SUIT envelope checked for shape only: nothing in it is authenticated yet."""

    digest: SuitDigest
    digest_encoded: bytes
    """The first element of the authentication wrapper as sent: the payload every signature covers."""
    auth_blocks: tuple[AuthBlock, ...]
    manifest_encoded: bytes
    """The content of member 3; the digest is over its bstr-wrapped form, :attr:`manifest_wrapped`."""
    severed: Mapping[int, bytes]
    integrated: Mapping[str, bytes]
    tagged: bool = True

    @property
    def manifest_wrapped(self) -> bytes:
        """Member 3 as encoded (bstr header + content); unique, as only shortest-form headers are accepted."""
        return cbor.encode(self.manifest_encoded)

    @property
    def signatures(self) -> tuple[CoseSign1, ...]:
        return tuple(block for block in self.auth_blocks if isinstance(block, CoseSign1))

    def digest_matches(self) -> bool:
        return self.digest.matches(self.manifest_wrapped)

    def encode(self) -> bytes:
        wrapper = cbor.encode([self.digest_encoded, *(block.encoded for block in self.auth_blocks)])
        members: dict[int | str, bytes] = {
            EnvelopeKey.AUTHENTICATION_WRAPPER: wrapper,
            EnvelopeKey.MANIFEST: self.manifest_encoded,
        }
        for number, member in self.severed.items():
            members[number] = member
        for name, payload in self.integrated.items():
            members[name] = payload
        return cbor.encode(cbor2.CBORTag(ENVELOPE_TAG, members) if self.tagged else members)


def decode_envelope(data: bytes, *, require_tag: bool = True) -> Envelope:
    """Check the envelope's shape: tag 107, the authentication wrapper (digest and COSE blocks), the manifest bstr,
    severed members and integrated payloads as byte strings. Raises :class:`SuitDecodeError`."""
    item = cbor.decode(data)
    tagged = isinstance(item, cbor.Tagged)
    if isinstance(item, cbor.Tagged):
        if item.tag != ENVELOPE_TAG:
            raise SuitDecodeError(f"CBOR tag {item.tag} is not a SUIT envelope (107)")
        item = item.value
    elif require_tag:
        raise SuitDecodeError("not a SUIT envelope: CBOR tag 107 missing")
    if not isinstance(item, dict):
        raise SuitDecodeError("SUIT envelope is not a map")
    severed: dict[int, bytes] = {}
    integrated: dict[str, bytes] = {}
    for key, value in item.items():
        if not isinstance(value, bytes):
            raise SuitDecodeError(f"envelope member {key!r} is not a byte string")
        if isinstance(key, str):
            integrated[key] = value
        elif isinstance(key, int) and key not in (EnvelopeKey.AUTHENTICATION_WRAPPER, EnvelopeKey.MANIFEST):
            severed[key] = value
        elif not isinstance(key, int):
            raise SuitDecodeError(f"envelope key {key!r} is neither an integer nor a text string")
    wrapper_bytes = item.get(EnvelopeKey.AUTHENTICATION_WRAPPER)
    manifest = item.get(EnvelopeKey.MANIFEST)
    if not isinstance(wrapper_bytes, bytes):
        raise SuitDecodeError("SUIT envelope has no authentication-wrapper")
    if not isinstance(manifest, bytes):
        raise SuitDecodeError("SUIT envelope has no manifest")
    wrapper = cbor.decode(wrapper_bytes)
    if not isinstance(wrapper, list) or not wrapper or not all(isinstance(part, bytes) for part in wrapper):
        raise SuitDecodeError("authentication-wrapper is not an array of byte strings starting with the digest")
    if len(wrapper) - 1 > MAX_AUTH_BLOCKS:
        raise SuitDecodeError(f"more than {MAX_AUTH_BLOCKS} authentication blocks")
    digest_encoded, *blocks = (part for part in wrapper if isinstance(part, bytes))
    return Envelope(
        digest=SuitDigest.decode(digest_encoded, "authentication-wrapper digest"),
        digest_encoded=digest_encoded,
        auth_blocks=tuple(decode_auth_block(block) for block in blocks),
        manifest_encoded=manifest,
        severed=severed,
        integrated=integrated,
        tagged=tagged,
    )

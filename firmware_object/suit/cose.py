"""COSE_Sign1 (RFC 9052) as SUIT uses it: decode, sign and verify, with ES256/ESP256 and EdDSA/Ed25519.

Invariants:

* The ``alg`` must sit in the protected header; an alg there that is not an integer, is unknown, or does not fit
  the key (ECDSA P-256 for -7 ES256 and -9 ESP256; Ed25519 for -8 EdDSA and -19 Ed25519) never verifies.
* Signatures are raw ``r || s`` (64 bytes) for ECDSA and 64 bytes for Ed25519.
* The signed bytes are ``Sig_structure = ["Signature1", protected, external_aad, payload]`` with ``protected`` the
  exact protected-header bytes received, and ``payload`` the attached payload or the caller's detached one.
* -7 and -8 are signed and verified with pycose; -9 and -19, which pycose 1.1 does not know, with ``cryptography``
  over :func:`sig_structure`. The two paths sign and check the same bytes (tests compare them).
* Decoding raises only :class:`SuitDecodeError`; verifying only returns ``True`` or ``False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import cbor2
import pycose.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from pycose.algorithms import EdDSA, Es256
from pycose.headers import KID, Algorithm
from pycose.keys.cosekey import CoseKey
from pycose.keys.ec2 import EC2Key
from pycose.keys.okp import OKPKey
from pycose.messages.sign1message import Sign1Message

from firmware_object.errors import SuitDecodeError
from firmware_object.suit import cbor
from firmware_object.suit.keys import PrivateKey, PublicKey, private_key_to_pem, public_key_to_pem
from firmware_object.suit.labels import COSE_MAC0_TAG, COSE_MAC_TAG, COSE_SIGN1_TAG, COSE_SIGN_TAG, CoseAlg, CoseHeader

ECDSA_ALGS: Final = frozenset({CoseAlg.ES256, CoseAlg.ESP256})
EDDSA_ALGS: Final = frozenset({CoseAlg.EDDSA, CoseAlg.ED25519})
SIGNATURE_LENGTH: Final = 64
_PYCOSE_ALGS: Final = {CoseAlg.ES256: Es256, CoseAlg.EDDSA: EdDSA}
_COSE_NAMES: Final = {
    COSE_SIGN1_TAG: "COSE_Sign1",
    COSE_MAC0_TAG: "COSE_Mac0",
    COSE_SIGN_TAG: "COSE_Sign",
    COSE_MAC_TAG: "COSE_Mac",
}
_ALG_NAMES: Final = {
    CoseAlg.ES256: "ES256",
    CoseAlg.ESP256: "ESP256",
    CoseAlg.EDDSA: "EdDSA",
    CoseAlg.ED25519: "Ed25519",
    -35: "ES384",
    -36: "ES512",
    5: "HMAC 256/256",
}
_PYCOSE_ERRORS: Final = (
    pycose.exceptions.CoseException,
    pycose.exceptions.CoseIllegalAlgorithm,
    pycose.exceptions.CoseUnsupportedCurve,
    pycose.exceptions.CoseIllegalKeyOps,
    pycose.exceptions.CoseIllegalKeyType,
    pycose.exceptions.CoseMalformedMessage,
    pycose.exceptions.CoseInvalidKey,
    cbor2.CBORError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
)


@dataclass(frozen=True)
class CoseSign1:
    """A decoded COSE_Sign1. ``protected`` is the protected-header bstr exactly as received."""

    protected: bytes
    protected_header: Mapping[cbor.CborKey, cbor.CborValue]
    unprotected_header: Mapping[cbor.CborKey, cbor.CborValue]
    payload: bytes | None
    signature: bytes
    encoded: bytes
    tagged: bool = True

    @property
    def alg(self) -> int | None:
        """The protected ``alg`` when it is an integer (an unprotected or text alg counts as none)."""
        alg = self.protected_header.get(CoseHeader.ALG)
        return alg if isinstance(alg, int) and not isinstance(alg, bool) else None

    @property
    def kid(self) -> bytes | None:
        """The ``kid``, protected or not: a hint for pairing with a key, never trusted on its own."""
        for header in (self.protected_header, self.unprotected_header):
            kid = header.get(CoseHeader.KID)
            if isinstance(kid, bytes):
                return kid
        return None


@dataclass(frozen=True)
class OtherCose:
    """An authentication block of another COSE type (COSE_Mac0, COSE_Sign, COSE_Mac): shown, never verified."""

    tag: int
    alg: int | None
    encoded: bytes

    @property
    def kind(self) -> str:
        return _COSE_NAMES[self.tag]


AuthBlock = CoseSign1 | OtherCose


def alg_name(alg: int | None) -> str:
    """``"ES256"`` for -7, ``"EdDSA"`` for -8 and so on; algorithms without a name here by number."""
    if alg is None:
        return "none"
    return _ALG_NAMES.get(alg, str(alg))


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The bytes a COSE_Sign1 signature covers: ``["Signature1", protected, external_aad, payload]``."""
    return cbor.encode(["Signature1", protected, external_aad, payload])


def decode_auth_block(data: bytes) -> AuthBlock:
    """Decode a tagged COSE message; COSE_Sign1 in full, the other COSE types only by tag and alg."""
    item = cbor.decode(data)
    if not isinstance(item, cbor.Tagged) or item.tag not in _COSE_NAMES:
        raise SuitDecodeError("authentication block is not a tagged COSE message")
    if item.tag == COSE_SIGN1_TAG:
        return _sign1_from_item(item.value, data, tagged=True)
    fields = item.value
    if not isinstance(fields, list) or len(fields) < 4 or not isinstance(fields[0], bytes):
        raise SuitDecodeError(f"malformed {_COSE_NAMES[item.tag]}")
    protected = _decode_protected(fields[0])
    alg = protected.get(CoseHeader.ALG)
    return OtherCose(item.tag, alg if isinstance(alg, int) and not isinstance(alg, bool) else None, data)


def decode_sign1(data: bytes, *, require_tag: bool = True) -> CoseSign1:
    """Decode a COSE_Sign1 (tag 18; untagged too when ``require_tag`` is false)."""
    item = cbor.decode(data)
    if isinstance(item, cbor.Tagged):
        if item.tag != COSE_SIGN1_TAG:
            raise SuitDecodeError(f"CBOR tag {item.tag} is not COSE_Sign1")
        return _sign1_from_item(item.value, data, tagged=True)
    if require_tag:
        raise SuitDecodeError("COSE_Sign1 is not tagged")
    return _sign1_from_item(item, data, tagged=False)


def _sign1_from_item(value: cbor.CborValue, encoded: bytes, *, tagged: bool) -> CoseSign1:
    if not isinstance(value, list) or len(value) != 4:
        raise SuitDecodeError("COSE_Sign1 is not an array of 4")
    protected, unprotected, payload, signature = value
    if not isinstance(protected, bytes):
        raise SuitDecodeError("COSE_Sign1 protected header is not a byte string")
    if not isinstance(unprotected, dict):
        raise SuitDecodeError("COSE_Sign1 unprotected header is not a map")
    if payload is not None and not isinstance(payload, bytes):
        raise SuitDecodeError("COSE_Sign1 payload is neither a byte string nor nil")
    if not isinstance(signature, bytes):
        raise SuitDecodeError("COSE_Sign1 signature is not a byte string")
    return CoseSign1(protected, _decode_protected(protected), unprotected, payload, signature, encoded, tagged)


def _decode_protected(protected: bytes) -> dict[cbor.CborKey, cbor.CborValue]:
    if not protected:
        return {}
    header = cbor.decode(protected)
    if not isinstance(header, dict):
        raise SuitDecodeError("COSE protected header is not a map")
    return header


def default_alg(key: PrivateKey | PublicKey, *, fully_specified: bool = False) -> CoseAlg:
    """The alg we sign with: ES256 (-7) or EdDSA (-8); ESP256 (-9) or Ed25519 (-19) when ``fully_specified``."""
    if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        return CoseAlg.ED25519 if fully_specified else CoseAlg.EDDSA
    return CoseAlg.ESP256 if fully_specified else CoseAlg.ES256


def sign1(
    key: PrivateKey, payload: bytes, *, kid: bytes | None = None, detached: bool = True, fully_specified: bool = False
) -> bytes:
    """A tagged COSE_Sign1 over ``payload`` (detached: the message carries ``nil``), ``kid`` unprotected."""
    alg = default_alg(key, fully_specified=fully_specified)
    unprotected: dict[int, bytes] = {} if kid is None else {CoseHeader.KID: kid}
    if alg in _PYCOSE_ALGS:
        message = Sign1Message(
            phdr={Algorithm: _PYCOSE_ALGS[alg]},
            uhdr={KID: kid} if kid is not None else {},
            payload=None if detached else payload,
            key=_pycose_key(CoseKey.from_pem_private_key(private_key_to_pem(key).decode("ascii"))),
        )
        encoded: bytes = message.encode(tag=True, detached_payload=payload if detached else None)
        return encoded
    protected = cbor.encode({CoseHeader.ALG: int(alg)})
    signature = _sign_with_cryptography(key, sig_structure(protected, payload))
    return cbor.encode(
        cbor2.CBORTag(COSE_SIGN1_TAG, [protected, unprotected, None if detached else payload, signature])
    )


def verify_sign1(
    message: CoseSign1, key: PublicKey, *, detached_payload: bytes | None = None, external_aad: bytes = b""
) -> bool:
    """Whether ``message`` carries a valid signature by ``key`` (payload attached, or passed when detached)."""
    alg = message.alg
    if alg is None or not _alg_fits_key(alg, key) or len(message.signature) != SIGNATURE_LENGTH:
        return False
    if (message.payload is None) == (detached_payload is None):
        return False  # exactly one of attached and detached payload
    payload = message.payload if message.payload is not None else detached_payload
    assert payload is not None
    if alg in _PYCOSE_ALGS:
        return _verify_with_pycose(message, key, detached_payload, external_aad)
    return _verify_with_cryptography(key, message.signature, sig_structure(message.protected, payload, external_aad))


def _alg_fits_key(alg: int, key: PublicKey) -> bool:
    if isinstance(key, Ed25519PublicKey):
        return alg in EDDSA_ALGS
    return alg in ECDSA_ALGS and isinstance(key.curve, ec.SECP256R1)


def _verify_with_pycose(message: CoseSign1, key: PublicKey, detached_payload: bytes | None, aad: bytes) -> bool:
    try:
        pycose_message = Sign1Message(
            phdr_encoded=message.protected,
            uhdr={},  # not covered by the signature; left out so no unprotected oddity can disturb pycose
            payload=message.payload,
            external_aad=aad,
            key=_pycose_key(CoseKey.from_pem_public_key(public_key_to_pem(key).decode("ascii"))),
        )
        pycose_message.signature = message.signature
        return bool(pycose_message.verify_signature(detached_payload=detached_payload))
    except _PYCOSE_ERRORS:
        return False


def _pycose_key(key: CoseKey) -> EC2Key | OKPKey:
    if not isinstance(key, EC2Key | OKPKey):
        raise TypeError(f"unexpected pycose key type {type(key).__name__}")
    return key


def _verify_with_cryptography(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, Ed25519PublicKey):
            key.verify(signature, data)
        else:
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def _sign_with_cryptography(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(data)
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")

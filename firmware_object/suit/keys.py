"""Signing keys for SUIT envelopes: ECDSA P-256 (ES256) and Ed25519 (EdDSA), as ``cryptography`` key objects.

Invariants: every key that leaves this module is a P-256 or Ed25519 key (any other curve or type raises
:class:`ValueError`); :func:`key_id` depends only on the public key, so a signer and a verifier holding the same key
compute the same id; private PEM is unencrypted PKCS#8, public PEM is SubjectPublicKeyInfo.
"""

from __future__ import annotations

import hashlib
from typing import Final, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | Ed25519PublicKey

KEY_ALGORITHMS: Final = ("es256", "ed25519")
KEY_ID_LENGTH: Final = 8


def generate_private_key(alg: str) -> PrivateKey:
    """A fresh key: ``"es256"`` (ECDSA P-256) or ``"ed25519"``."""
    if alg == "es256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ed25519":
        return Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported key algorithm {alg!r}; expected one of {', '.join(KEY_ALGORITHMS)}")


def key_algorithm(key: PrivateKey | PublicKey) -> str:
    """``"es256"`` or ``"ed25519"``."""
    return "ed25519" if isinstance(key, Ed25519PrivateKey | Ed25519PublicKey) else "es256"


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM. The caller decides where it may go (never a log)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_to_pem(key: PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key(pem: bytes) -> PrivateKey:
    """Load an unencrypted PEM private key; ValueError unless it is a P-256 or Ed25519 key."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not an unencrypted PEM private key: {exc}") from exc
    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ValueError(f"unsupported private key type {_describe_key(key)}; expected P-256 or Ed25519")


def load_public_key(pem: bytes) -> PublicKey:
    """Load a PEM public key (SubjectPublicKeyInfo); ValueError unless it is a P-256 or Ed25519 key."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from exc
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ValueError(f"unsupported public key type {_describe_key(key)}; expected P-256 or Ed25519")


def key_id(key: PublicKey | PrivateKey) -> bytes:
    """First 8 bytes of SHA-256 over the public key's SubjectPublicKeyInfo DER (the COSE ``kid`` we write)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()[:KEY_ID_LENGTH]


def _describe_key(key: object) -> str:
    curve = getattr(key, "curve", None)
    return f"{type(key).__name__}({curve.name})" if curve is not None else type(key).__name__

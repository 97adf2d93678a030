"""API tokens: minted at random, shown once, kept only as a salted hash.

A token reads ``scr_<id>.<secret>``: ``id`` (``tok-`` + 12 hex digits) names it in listings, audit lines and
revocations; ``secret`` is 32 random bytes (base64url, 43 characters). The store keeps the id, a 16-byte random
salt and ``SHA-256(salt || secret)``. A fast hash is the right one here: the secret carries 256 bits of entropy, so
a slow KDF would add nothing but the cost of every API call (as GitHub and PyPI do for their tokens).

Invariants: the secret never reaches a store, a log line, an exception text or a ``repr``; :func:`matches` compares
in constant time; :func:`parse` rejects anything not shaped like a token without saying more than "malformed".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Final

__all__ = ["TOKEN_PREFIX", "MintedToken", "digest", "matches", "mint", "parse"]

TOKEN_PREFIX: Final = "scr_"
_SHAPE = re.compile(r"scr_(tok-[0-9a-f]{12})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True, slots=True)
class MintedToken:
    """A new token: ``text`` goes to its holder once; the store gets ``id``, ``salt`` and ``digest`` only."""

    id: str
    salt: bytes
    digest: bytes
    text: str

    def __repr__(self) -> str:  # never the secret
        return f"MintedToken(id={self.id!r})"


def digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode("ascii")).digest()


def mint() -> MintedToken:
    token_id = "tok-" + secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    salt = secrets.token_bytes(16)
    return MintedToken(token_id, salt, digest(salt, secret), f"{TOKEN_PREFIX}{token_id}.{secret}")


def parse(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    m = _SHAPE.fullmatch(text.strip())
    return (m.group(1), m.group(2)) if m else None


def matches(salt: bytes, stored: bytes, secret: str) -> bool:
    return hmac.compare_digest(digest(salt, secret), stored)

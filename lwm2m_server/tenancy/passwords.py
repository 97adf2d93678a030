"""Passwords of web users: scrypt (memory-hard, RFC 7914) with a random salt per password.

A stored hash reads ``scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>``, so its cost travels with it and can grow
later without breaking stored ones. Invariants: a password is never stored, logged or echoed; :func:`verify`
compares in constant time and returns False for anything malformed; the cost (n = 2^15, r = 8: 32 MiB and about
50 ms per attempt here) is what makes a stolen table expensive to guess, and sign-in failures are throttled besides.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

from lwm2m_server.core.errors import InvalidRequestError

__all__ = ["MIN_LENGTH", "hash_password", "verify"]

MIN_LENGTH: Final = 12
MAX_LENGTH: Final = 1024
_LOG2_N, _R, _P = 15, 8, 1
_MAXMEM = 64 << 20


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=1 << log2_n, r=r, p=p, maxmem=_MAXMEM, dklen=32)


def hash_password(password: str) -> str:
    """The stored form of a new password (InvalidRequestError when it is too short or too long)."""
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise InvalidRequestError(f"a password has {MIN_LENGTH} to {MAX_LENGTH} characters")
    salt = secrets.token_bytes(16)
    return f"scrypt${_LOG2_N}${_R}${_P}${_b64(salt)}${_b64(_derive(password, salt, _LOG2_N, _R, _P))}"


def verify(stored: str, password: str) -> bool:
    try:
        scheme, log2_n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt" or not 10 <= int(log2_n) <= 20 or len(password) > MAX_LENGTH:
            return False
        derived = _derive(password, base64.b64decode(salt), int(log2_n), int(r), int(p))
        return hmac.compare_digest(derived, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False

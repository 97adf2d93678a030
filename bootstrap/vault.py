"""The credential vault: a key-encryption key (KEK) that seals secrets at rest with AES-256-GCM.

The KEK is 32 random bytes. It comes from the environment variable ``SCRATCH_VAULT_KEY`` (64 hex digits or
base64) when that is set, else from a key file that is created on first start (where: :func:`open_vault`, by
default outside the data directory, ``~/.config/scratch/vault.key``): the file exists with mode 0600
from its first byte (a private temporary file, ``O_CREAT | O_EXCL``, linked into place), so there is no window in
which another user could read it, and two processes starting together agree on one key.

Two sub-keys are derived from the KEK with HKDF-SHA256, so each has one job:

* the *seal key* (AES-256-GCM): a sealed blob is ``version (1) || key id (4) || nonce (12) || ciphertext || tag``;
  the header and the caller's associated data (AAD) are authenticated, so a blob bound to one record cannot be
  moved to another one, and a flipped bit or another KEK makes :meth:`Vault.open_sealed` fail;
* the *fingerprint key* (HMAC-SHA256): :meth:`Vault.fingerprint` gives a keyed hash of a secret, so a store can
  recognise a secret it has already issued without keeping it in the clear (and without a hash that could be
  brute-forced offline by whoever reads the database alone).

Nonces are random (96 bits): safe for far more seals than a fleet has credentials (NIST's bound is 2**32 per key).
Secrets never appear in a message: errors say what failed, never with which bytes; :class:`SecretBytes` is the
type secrets travel as, with a ``repr``/``str`` that hide the value.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from hashlib import sha256
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from lwm2m_server.core.errors import SecurityError
from lwm2m_server.data_dir import VAULT_KEY_FILE_ENV, create_private_file, default_config_dir, vault_key_location

__all__ = [
    "KEK_BYTES",
    "KEK_ENV_VAR",
    "KeyEncryptionKeyError",
    "SealedDataError",
    "SecretBytes",
    "Vault",
    "VaultError",
    "open_vault",
]

log = logging.getLogger(__name__)

KEK_ENV_VAR = "SCRATCH_VAULT_KEY"
KEK_BYTES = 32
_VERSION = 1
_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = 1 + _KEY_ID_BYTES
_OVERHEAD = _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES


class VaultError(SecurityError):
    """Root of the vault's errors. Messages never hold a key or a sealed secret."""


class KeyEncryptionKeyError(VaultError):
    """The key-encryption key cannot be loaded or created (malformed value, unreadable or unwritable file)."""


class SealedDataError(VaultError):
    """A sealed blob that does not open: malformed, tampered with, bound to another record, or sealed under
    another key-encryption key."""


class SecretBytes(bytes):
    """Bytes that are a secret: ``repr`` and ``str`` (hence logs, f-strings, tracebacks that print locals) show
    only the length. The value is there for whoever asks explicitly (``bytes(s)``, ``s.hex()``). Compare with
    :func:`hmac.compare_digest`, never with ``==``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<secret: {len(self)} bytes>"

    __str__ = __repr__


def _derive(kek: bytes, purpose: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=b"scratch/vault/v1/" + purpose).derive(kek)


def _decode_kek(text: str, where: str) -> bytes:
    """A KEK written as 64 hex digits or as base64 (standard or URL-safe, padding optional)."""
    value = "".join(text.split())
    candidates: list[bytes] = []
    if len(value) == 2 * KEK_BYTES:
        with contextlib.suppress(ValueError):
            candidates.append(bytes.fromhex(value))
    padded = (value + "=" * (-len(value) % 4)).encode("ascii", "replace")
    for altchars in (b"+/", b"-_"):  # standard, then URL-safe base64
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(base64.b64decode(padded, altchars=altchars, validate=True))
    for kek in candidates:
        if len(kek) == KEK_BYTES:
            return kek
    raise KeyEncryptionKeyError(
        f"{where} must be a {KEK_BYTES}-byte key written as {2 * KEK_BYTES} hex digits or as base64")


def _create_key_file(path: Path) -> bytes | None:
    """Create ``path`` holding a fresh KEK, mode 0600 from creation. None when another process created it first."""
    try:
        path.parent.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        pass  # an existing folder is left as it is
    else:
        path.parent.chmod(0o700)  # mkdir's mode is filtered by the umask
    kek = secrets.token_bytes(KEK_BYTES)
    try:
        create_private_file(path, kek)
    except FileExistsError:
        return None
    return kek


def _read_key_file(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("vault key file %s is accessible to other users (mode %03o); chmod 600 it", path, mode)
    raw = path.read_bytes()
    if len(raw) == KEK_BYTES:
        return raw
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    return _decode_kek(text, f"vault key file {path}")


class Vault:
    """Seals and opens secrets under one key-encryption key, and fingerprints them (keyed hash).

    Build one with :meth:`open` (environment variable or key file) or :meth:`generate` (a throwaway key, for
    tests); ``Vault(kek)`` takes the 32 key bytes directly. The KEK itself is not kept: only the two sub-keys
    derived from it, and neither ever appears in ``repr``.
    """

    __slots__ = ("_aead", "_fingerprint_key", "_key_id", "source")

    def __init__(self, kek: bytes, *, source: str = "given key") -> None:
        if not isinstance(kek, bytes) or len(kek) != KEK_BYTES:
            raise KeyEncryptionKeyError(f"a key-encryption key is {KEK_BYTES} bytes")
        self._aead = AESGCM(_derive(kek, b"seal"))
        self._fingerprint_key = _derive(kek, b"psk-fingerprint")
        self._key_id = _derive(kek, b"key-id", _KEY_ID_BYTES)
        self.source = source

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *,
             environ: Mapping[str, str] | None = None) -> Vault:
        """The vault of ``SCRATCH_VAULT_KEY`` when that variable is set (it takes precedence), else of the key
        file ``path``, which is created (mode 0600, its folder 0700 when missing) with a fresh random key on first
        start. Raises :class:`KeyEncryptionKeyError` when neither is given, or the value is malformed."""
        env = os.environ if environ is None else environ
        value = env.get(KEK_ENV_VAR, "")
        if value.strip():
            return cls(_decode_kek(value, KEK_ENV_VAR), source=f"${KEK_ENV_VAR}")
        if path is None:
            raise KeyEncryptionKeyError(f"no key-encryption key: set {KEK_ENV_VAR} or give a key file")
        key_path = Path(path)
        try:
            kek = _create_key_file(key_path) if not key_path.exists() else None
            if kek is None:
                kek = _read_key_file(key_path)
            else:
                log.warning("created a new vault key file %s: back it up, the credentials cannot be read without it",
                            key_path)
        except OSError as e:
            raise KeyEncryptionKeyError(f"cannot load or create the vault key file {key_path}: {e.strerror}") from e
        return cls(kek, source=str(key_path))

    @classmethod
    def generate(cls) -> Vault:
        """A vault under a fresh random key that lives only in this object (tests, throwaway runs)."""
        return cls(secrets.token_bytes(KEK_BYTES), source="generated key")

    @property
    def key_id(self) -> str:
        """A short public name of the KEK (hex), to tell keys apart in messages; reveals nothing about it."""
        return self._key_id.hex()

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``plaintext`` encrypted and authenticated, bound to ``aad`` (which must be given again to open it)."""
        header = bytes([_VERSION]) + self._key_id
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + self._aead.encrypt(nonce, bytes(plaintext), header + aad)

    def open_sealed(self, blob: bytes, aad: bytes) -> SecretBytes:
        """The plaintext of a blob made by :meth:`seal` with the same ``aad``. Raises :class:`SealedDataError`
        (never with any content) when the blob is malformed, tampered with, bound to other AAD or sealed under
        another KEK."""
        if len(blob) < _OVERHEAD or blob[0] != _VERSION:
            raise SealedDataError("sealed blob is malformed (truncated, or of an unknown format version)")
        header = blob[:_HEADER_BYTES]
        nonce, body = blob[_HEADER_BYTES:_HEADER_BYTES + _NONCE_BYTES], blob[_HEADER_BYTES + _NONCE_BYTES:]
        if not hmac.compare_digest(header[1:], self._key_id):
            raise SealedDataError(
                f"sealed under another key-encryption key (key id {header[1:].hex()}, this vault's is {self.key_id})")
        try:
            return SecretBytes(self._aead.decrypt(nonce, bytes(body), header + aad))
        except InvalidTag:
            raise SealedDataError("sealed blob failed authentication: tampered with, or bound to another record"
                                  ) from None

    def is_sealed_here(self, blob: bytes) -> bool:
        """Whether ``blob`` claims to be sealed under this vault's KEK (its header; nothing is decrypted)."""
        return len(blob) >= _OVERHEAD and blob[0] == _VERSION and hmac.compare_digest(
            blob[1:_HEADER_BYTES], self._key_id)

    def fingerprint(self, secret: bytes) -> bytes:
        """HMAC-SHA256 of ``secret`` under a key derived from the KEK: equal secrets, equal fingerprints."""
        return hmac.new(self._fingerprint_key, bytes(secret), sha256).digest()

    def __repr__(self) -> str:
        return f"Vault(source={self.source!r}, key_id={self.key_id!r})"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a Vault cannot be pickled (it holds key material)")


_warned_legacy: set[Path] = set()


def open_vault(data_dir: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Vault:
    """The vault of the data directory ``data_dir``, as every ``scratch`` command opens it: ``$SCRATCH_VAULT_KEY``
    when set, else the key file :func:`lwm2m_server.data_dir.vault_key_location` names (``$SCRATCH_VAULT_KEY_FILE``;
    an existing ``DATA_DIR/vault.key``, with a warning, once per process, saying how to move it; else
    ``~/.config/scratch/vault.key``), created on first use."""
    env = os.environ if environ is None else environ
    if env.get(KEK_ENV_VAR, "").strip():
        vault = Vault.open(None, environ=env)
        _check_marker(Path(data_dir), vault, f"${KEK_ENV_VAR}")
        return vault
    where = vault_key_location(Path(data_dir), env)
    if where.in_data_dir and where.path not in _warned_legacy:
        _warned_legacy.add(where.path)
        target = default_config_dir(env) / where.path.name
        how = (f"mkdir -m 700 -p {target.parent} && mv -n {where.path} {target}" if not target.exists() else
               f"{target} holds another key already: move it anywhere else outside the data directory")
        log.warning("the vault key file %s lies in the data directory, beside the database it protects: whoever "
                    "copies that folder can open every key. Move it out (%s; or set $%s to the file's new name)",
                    where.path, how, VAULT_KEY_FILE_ENV)
    vault = Vault.open(where.path, environ=env)
    _check_marker(Path(data_dir), vault, str(where.path))
    return vault


KEY_ID_FILE = "kek-id"  # in the data directory: the id (never the key) of the vault key its secrets use


def _check_marker(data_dir: Path, vault: Vault, source: str) -> None:
    """Refuse a vault key other than the one this data directory's secrets are sealed under: the default key lives
    per user (``~/.config``), so a server run as one user and a command run as another would otherwise each create
    and use their own key, and seal secrets the other cannot open. The data directory keeps the key's id (not the
    key) in :data:`KEY_ID_FILE`, written with the first key opened for it."""
    marker = data_dir / KEY_ID_FILE
    try:
        known = marker.read_text().strip()
    except FileNotFoundError:
        if data_dir.is_dir():
            with contextlib.suppress(OSError):
                marker.write_text(vault.key_id + "\n")
        return
    if known and not hmac.compare_digest(known, vault.key_id):
        raise KeyEncryptionKeyError(
            f"the vault key {source} (key id {vault.key_id}) is not the one the secrets in {data_dir} are sealed "
            f"under (key id {known}): point ${VAULT_KEY_FILE_ENV} at that key, or run as the user who holds it")

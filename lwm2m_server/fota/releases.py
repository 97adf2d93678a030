"""Releases and the keys that sign them: the I/O shell around :mod:`firmware_object.suit`.

* :class:`SigningKeys`: named signing keys per tenant, each with a role (``release``: the OEM signs releases;
  ``deployment``: the operator authorises a campaign; ``attestation``: the server signs reports). Private keys are
  sealed by the vault (AAD binds tenant, name and role) and never stored, logged or shown in the clear. A
  public-only key (:meth:`SigningKeys.add_public`: an OEM's key whose private part never leaves the OEM) only
  verifies; signing with it raises :class:`PublicOnlyKeyError`.
* :class:`BlobStore`: content-addressed files ``folder/sha256/<hex>`` (temp file + fsync + rename, mode 0600); a
  read checks the digest.
* :class:`Releases`: releases of images for a (vendor, class), each with the next sequence number of that class
  (the store refuses a taken one; we retry), packaged as one SUIT envelope per image signed with a release key, or
  opaque (the image is the package, for third-party clients); approvals add a deployment key's COSE_Sign1 to each
  envelope; device-class policies say whether campaigns need such an approval.
* Import of releases signed elsewhere (the OEM-to-operator path): :func:`verify_signed` checks each envelope against
  a release key's public key and returns what it declares (:class:`VerifiedImport`: vendor and class before anything
  is stored, for a caller's grant check); :meth:`Releases.store_import` stores it exactly as signed
  (anti-rollback: its sequence number must be above every release of its class in the tenant);
  :meth:`Releases.import_signed` does both.

Both services keep their records in the stores of :mod:`lwm2m_server.storage.release_store` (``.over(database,
...)`` opens the SQL ones); ``tenant_id`` is a required keyword of every public method.

Vendor and class may be UUIDs or names; names map to UUIDv5 as RFC 9124 suggests: ``vendor_id =
uuid5(NAMESPACE_DNS, vendor)``, ``class_id = uuid5(vendor_id, class_name)`` (exactly as given: no case folding).

Invariants: every query is scoped by tenant; a release record exists only once all its blobs are stored; a stored
package verifies against its release key (a key of ``origin_tenant`` for an imported release; and against each
approving deployment key for its approved copy); an imported package is stored byte for byte as it was signed;
errors are :class:`~lwm2m_server.core.errors.Lwm2mError` subclasses and carry no key material.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import json
import os
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_object.errors import (
    DigestMismatchError,
    FirmwareError,
    ImageMismatchError,
    PackageTooLargeError,
    SignatureError,
    SuitDecodeError,
)
from firmware_object.suit.envelope import add_signature, build_envelope
from firmware_object.suit.keys import (
    PrivateKey,
    PublicKey,
    generate_private_key,
    key_algorithm,
    key_id,
    load_private_key,
    load_public_key,
    public_key_to_pem,
)
from firmware_object.suit.manifest import ReleaseManifest
from firmware_object.suit.verify import verify_envelope
from lwm2m_server.core.errors import CoapCode, InvalidRequestError, NotFoundError, StorageError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.release_store import (
    ClassPolicy,
    KeyRecord,
    KeyStore,
    Release,
    ReleaseImage,
    ReleaseStore,
    SqlKeyStore,
    SqlReleaseStore,
)
from lwm2m_server.storage.stores import StorageConflictError

__all__ = [
    "ALGORITHMS",
    "BLOBS_DIR",
    "MAX_IMAGE_SIZE",
    "PACKAGE_FORMATS",
    "ROLES",
    "BlobCorruptedError",
    "BlobStore",
    "ClassPolicy",
    "DuplicateSigningKeyError",
    "InvalidReleaseError",
    "InvalidSigningKeyError",
    "KeyRoleError",
    "PublicOnlyKeyError",
    "Release",
    "ReleaseImage",
    "ReleaseRollbackError",
    "Releases",
    "SigningKey",
    "SigningKeys",
    "UnknownBlobError",
    "UnknownReleaseError",
    "UnknownSigningKeyError",
    "UntrustedReleaseError",
    "VerifiedImport",
    "VerifiedPackage",
    "class_matches",
    "class_uuid",
    "vendor_uuid",
    "verify_signed",
]

BLOBS_DIR: Final = "blobs"  # the BlobStore folder inside a data directory
ROLES: Final = ("release", "deployment", "attestation")
ALGORITHMS: Final = {"ES256": "es256", "EdDSA": "ed25519"}  # our name -> firmware_object.suit.keys name
PACKAGE_FORMATS: Final = ("suit", "opaque")
MAX_IMAGE_SIZE: Final = 64 << 20
MAX_IMAGES: Final = 16
MAX_ENVELOPE_OVERHEAD: Final = 1 << 16  # envelope bytes beyond the integrated image (manifest + signatures)
DEFAULT_RELEASE_KEY: Final = "release"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RELEASE_ID = re.compile(r"rel-[a-z2-7]{10}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ID_ATTEMPTS: Final = 8


# ----------------------------------------------------------------------------------------------------- errors


class UnknownSigningKeyError(NotFoundError):
    """No signing key of that name in the tenant."""


class DuplicateSigningKeyError(InvalidRequestError):
    """A signing key of that name already exists in the tenant (names are never reused)."""

    coap_code = CoapCode.CONFLICT


class InvalidSigningKeyError(InvalidRequestError):
    """A key name, role, algorithm or PEM that cannot be accepted."""


class KeyRoleError(InvalidRequestError):
    """A key used for something its role does not allow (e.g. approving with a release key)."""

    coap_code = CoapCode.FORBIDDEN


class PublicOnlyKeyError(KeyRoleError):
    """A public-only key asked to sign (its private part is held by its owner, not by this server)."""


class UnknownReleaseError(NotFoundError):
    """No release (or no such image, or no such approval of it) in the tenant."""


class InvalidReleaseError(InvalidRequestError):
    """A release that cannot be made or changed as asked (bad image, version, vendor, format...)."""


class UntrustedReleaseError(InvalidReleaseError):
    """An imported package that the given key did not sign as it is (signature, digest or image check failed)."""

    coap_code = CoapCode.FORBIDDEN


class ReleaseRollbackError(InvalidReleaseError):
    """An imported release whose sequence number is not above every release of its class in the tenant."""

    coap_code = CoapCode.CONFLICT


class UnknownBlobError(NotFoundError):
    """No blob with that digest."""


class BlobCorruptedError(StorageError):
    """A stored blob whose content no longer matches its digest."""


# ---------------------------------------------------------------------------------------------- signing keys


@dataclass(frozen=True)
class SigningKey:
    """The public face of a signing key; the private key is only ever reached through
    :meth:`SigningKeys.private_key`. ``has_private`` is False for a public-only key (verifies, never signs)."""

    tenant_id: str
    name: str
    role: str
    alg: str
    kid: str
    """:func:`~firmware_object.suit.keys.key_id` in hex (the COSE ``kid`` of its signatures)."""
    public_pem: str
    created_at: float
    has_private: bool = True

    def public_key(self) -> PublicKey:
        return load_public_key(self.public_pem.encode())

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant_id, "name": self.name, "role": self.role, "alg": self.alg, "kid": self.kid,
                "public_pem": self.public_pem, "created_at": self.created_at, "has_private": self.has_private}


def _check_name(name: str, what: str = "key name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidSigningKeyError(f"{what} {name!r} must start with a letter or digit and hold at most 64 "
                                     "letters, digits and ._-")
    return name


def _check_tenant(tenant_id: str) -> str:
    if not isinstance(tenant_id, str) or not tenant_id or len(tenant_id) > 64 or _CONTROL.search(tenant_id):
        raise InvalidRequestError("tenant id must be 1..64 printable characters")
    return tenant_id


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidSigningKeyError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def _normalise_alg(alg: str) -> str:
    for name, internal in ALGORITHMS.items():
        if alg.lower() in (name.lower(), internal):
            return name
    raise InvalidSigningKeyError(f"algorithm {alg!r} is not one of {', '.join(ALGORITHMS)}")


def _aad(tenant_id: str, name: str, role: str) -> bytes:
    return b"scratch/signing-key/v1\x00" + json.dumps([tenant_id, name, role]).encode()


class Vault(Protocol):
    """What the key store needs of :class:`bootstrap.vault.Vault` (only the CLI imports bootstrap, rule 7)."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def open_sealed(self, blob: bytes, aad: bytes) -> bytes: ...


class SigningKeys:
    """Named signing keys per tenant over a :class:`~lwm2m_server.storage.release_store.KeyStore`; private keys
    sealed by ``vault`` (a :class:`bootstrap.vault.Vault`) before they are stored."""

    def __init__(self, store: KeyStore, vault: Vault) -> None:
        self.store = store
        self._vault = vault

    @classmethod
    def over(cls, database: Database, vault: Vault) -> SigningKeys:
        """The keys of ``database`` (its ``signing_key`` table)."""
        return cls(SqlKeyStore(database), vault)

    def create(self, name: str, role: str, *, alg: str = "ES256", tenant_id: str, now: float) -> SigningKey:
        """A fresh key pair. Raises :class:`DuplicateSigningKeyError` when ``name`` is taken in the tenant."""
        alg = _normalise_alg(alg)
        return self._insert(name, role, generate_private_key(ALGORITHMS[alg]), tenant_id, now)

    def import_pem(self, name: str, role: str, pem: bytes, *, tenant_id: str, now: float) -> SigningKey:
        """Store an existing unencrypted PEM private key (P-256 or Ed25519) under ``name``."""
        try:
            private = load_private_key(pem)
        except ValueError:
            raise InvalidSigningKeyError("not an unencrypted PEM private key of type P-256 or Ed25519") from None
        return self._insert(name, role, private, tenant_id, now)

    def add_public(self, name: str, role: str, public_pem: bytes | str, *, tenant_id: str,
                   now: float) -> SigningKey:
        """Store a public-only key (PEM, P-256 or Ed25519) under ``name``: it verifies what its owner signed
        elsewhere; :meth:`private_key` refuses it with :class:`PublicOnlyKeyError`."""
        _check_name(name)
        _check_role(role)
        _check_tenant(tenant_id)
        try:
            public = load_public_key(public_pem.encode() if isinstance(public_pem, str) else bytes(public_pem))
        except (ValueError, TypeError, FirmwareError):
            raise InvalidSigningKeyError("not a PEM public key of type P-256 or Ed25519") from None
        return self._store(KeyRecord(tenant_id=tenant_id, name=name, role=role,
                                     alg="EdDSA" if key_algorithm(public) == "ed25519" else "ES256",
                                     kid=key_id(public).hex(), public_pem=public_key_to_pem(public).decode(),
                                     created_at=now, sealed_private=None))

    def get_or_create(self, name: str, role: str, *, alg: str = "ES256", tenant_id: str,
                      now: float) -> SigningKey:
        """The key ``name``, made on first use; :class:`KeyRoleError` when it exists with another role."""
        with contextlib.suppress(UnknownSigningKeyError):
            return self._with_role(self.get(name, tenant_id=tenant_id), role)
        try:
            return self.create(name, role, alg=alg, tenant_id=tenant_id, now=now)
        except DuplicateSigningKeyError:  # made meanwhile by another process
            return self._with_role(self.get(name, tenant_id=tenant_id), role)

    def get(self, name: str, *, tenant_id: str) -> SigningKey:
        """The public part of key ``name``; :class:`UnknownSigningKeyError` when there is none."""
        return _signing_key(self._record(name, tenant_id))

    def list(self, *, tenant_id: str) -> builtins.list[SigningKey]:
        """The tenant's keys, by name."""
        return [_signing_key(r) for r in self.store.list(tenant_id=_check_tenant(tenant_id))]

    def private_key(self, name: str, *, tenant_id: str, role: str | None = None) -> PrivateKey:
        """The private key ``name`` opened from the vault; with ``role``, :class:`KeyRoleError` unless it has that
        role. Never log or print what this returns."""
        record = self._record(name, tenant_id)
        if role is not None:
            self._with_role(_signing_key(record), role)
        if record.sealed_private is None:
            raise PublicOnlyKeyError(f"key {name!r} of tenant {tenant_id!r} is public-only: this server holds no "
                                     "private key to sign with")
        der = self._vault.open_sealed(record.sealed_private, _aad(record.tenant_id, record.name, record.role))
        key = serialization.load_der_private_key(bytes(der), password=None)
        del der
        if not isinstance(key, ec.EllipticCurvePrivateKey | Ed25519PrivateKey) or key_id(key).hex() != record.kid:
            raise StorageError(f"signing key {name!r} does not match its stored public key")
        return key

    @staticmethod
    def _with_role(key: SigningKey, role: str) -> SigningKey:
        if key.role != _check_role(role):
            raise KeyRoleError(f"key {key.name!r} has role {key.role!r}, not {role!r}")
        return key

    def _record(self, name: str, tenant_id: str) -> KeyRecord:
        record = self.store.get(name, tenant_id=_check_tenant(tenant_id))
        if record is None:
            raise UnknownSigningKeyError(f"no signing key {name!r} in tenant {tenant_id!r}")
        return record

    def _insert(self, name: str, role: str, private: PrivateKey, tenant_id: str, now: float) -> SigningKey:
        _check_name(name)
        _check_role(role)
        _check_tenant(tenant_id)
        der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        record = KeyRecord(tenant_id=tenant_id, name=name, role=role,
                           alg="EdDSA" if key_algorithm(private) == "ed25519" else "ES256",
                           kid=key_id(private).hex(), public_pem=public_key_to_pem(private.public_key()).decode(),
                           created_at=now, sealed_private=self._vault.seal(der, _aad(tenant_id, name, role)))
        del der
        return self._store(record)

    def _store(self, record: KeyRecord) -> SigningKey:
        try:
            self.store.add(record)
        except StorageConflictError:
            raise DuplicateSigningKeyError(f"a signing key named {record.name!r} exists in tenant "
                                           f"{record.tenant_id!r}") from None
        return _signing_key(record)


def _signing_key(record: KeyRecord) -> SigningKey:
    return SigningKey(record.tenant_id, record.name, record.role, record.alg, record.kid, record.public_pem,
                      record.created_at, record.sealed_private is not None)


# ------------------------------------------------------------------------------------------------------ blobs


class BlobStore:
    """Content-addressed files ``folder/sha256/<hex>``: written whole or not at all (temp file, fsync, rename),
    mode 0600 in a 0700 folder; :meth:`get` returns only bytes whose SHA-256 is the name they were asked by."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._dir = self.folder / "sha256"

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its SHA-256 hex. Storing the same bytes again is a no-op, and repairs a stored copy
        that no longer matches its digest."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._dir / digest
        with contextlib.suppress(OSError):
            if path.stat().st_size == len(data) and _file_sha256(path) == digest:
                return digest
        try:
            self._ensure_dir()
            tmp = self._dir / f".{digest}.{secrets.token_hex(6)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            _fsync_dir(self._dir)
        except OSError as e:
            raise StorageError(f"cannot store blob {digest} in {self._dir}: {e.strerror}") from None
        return digest

    def get(self, digest: str) -> bytes:
        """The blob ``digest``; :class:`UnknownBlobError` when absent, :class:`BlobCorruptedError` when its content
        no longer matches."""
        path = self._path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UnknownBlobError(f"no blob {digest}") from None
        except OSError as e:
            raise StorageError(f"cannot read blob {digest}: {e.strerror}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobCorruptedError(f"blob {digest} is corrupted (its content does not match its digest)")
        return data

    def has(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def _path(self, digest: str) -> Path:
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise InvalidRequestError("a blob is named by 64 lowercase hex digits (SHA-256)")
        return self._dir / digest

    def _ensure_dir(self) -> None:
        for folder in (self.folder, self._dir):
            if not folder.is_dir():
                with contextlib.suppress(FileExistsError):
                    folder.mkdir(parents=True, mode=0o700)
                    folder.chmod(0o700)  # mkdir's mode is filtered by the umask

    def __repr__(self) -> str:
        return f"BlobStore({str(self.folder)!r})"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------------------- releases


def _text(value: str, what: str, limit: int = 255) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or _CONTROL.search(value):
        raise InvalidReleaseError(f"{what} must be 1..{limit} printable characters")
    return value


def vendor_uuid(vendor: str) -> uuid.UUID:
    """``vendor`` as a UUID if it is one, else ``uuid5(NAMESPACE_DNS, vendor)`` (RFC 9124)."""
    _text(vendor, "vendor")
    try:
        return uuid.UUID(vendor)
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_DNS, vendor)


def class_uuid(vendor_id: uuid.UUID, class_name: str) -> uuid.UUID:
    """``class_name`` as a UUID if it is one, else ``uuid5(vendor_id, class_name)`` (RFC 9124)."""
    _text(class_name, "class")
    try:
        return uuid.UUID(class_name)
    except ValueError:
        return uuid.uuid5(vendor_id, class_name)


def class_matches(vendor_id: uuid.UUID, class_id: uuid.UUID, name: str) -> bool:
    """Whether class ``name`` (a UUID, or a name mapped by :func:`class_uuid` under ``vendor_id``) is ``class_id``;
    False for a name that is no valid class name."""
    try:
        return class_uuid(vendor_id, name) == class_id
    except InvalidReleaseError:
        return False


_CHECKS: Final = (  # verification failure -> (the check that failed, whether it means "not signed as it is")
    (PackageTooLargeError, "size limit", False),
    (SuitDecodeError, "CBOR shape", False),
    (SignatureError, "signature", True),
    (DigestMismatchError, "manifest digest", True),
    (ImageMismatchError, "image digest and size", True),
)


@dataclass(frozen=True)
class VerifiedPackage:
    """One imported envelope that verified against the release key, and its integrated image."""

    name: str
    envelope: bytes
    image: bytes


@dataclass(frozen=True)
class VerifiedImport:
    """What :func:`verify_signed` established: every package verifies against ``key`` and they all declare the
    same vendor, class, sequence number and version. Made only by :func:`verify_signed`."""

    key: SigningKey
    vendor_id: uuid.UUID
    class_id: uuid.UUID
    sequence_number: int
    version: str
    packages: tuple[VerifiedPackage, ...]


def verify_signed(packages: Sequence[tuple[str, bytes]], key: SigningKey) -> VerifiedImport:
    """Verify pre-signed SUIT envelopes ``(name, bytes)`` against release key ``key`` (public part only), in the
    house order (size, CBOR shape, signature, digest, image). A package not signed as it is by ``key`` raises
    :class:`UntrustedReleaseError`; anything else that cannot be imported :class:`InvalidReleaseError` (or
    :class:`KeyRoleError` for a key that is not a release key), each naming the package and the check that failed.
    Each manifest must check vendor and class identifiers (UUIDs) and integrate its image; the version is the
    manifest's component version, else the sequence number as text."""
    if not isinstance(key, SigningKey) or key.role != "release":
        raise KeyRoleError(f"key {getattr(key, 'name', key)!r} is not a release key: it cannot vouch for a release")
    if not packages:
        raise InvalidReleaseError("an import needs at least one package")
    if len(packages) > MAX_IMAGES:
        raise InvalidReleaseError(f"a release has at most {MAX_IMAGES} packages")
    anchor = key.public_key()
    seen: set[str] = set()
    verified: builtins.list[tuple[VerifiedPackage, tuple[uuid.UUID, uuid.UUID, int, str | None]]] = []
    for item in packages:
        if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[1], bytes | bytearray | memoryview):
            raise InvalidReleaseError("packages are (name, bytes) pairs")
        name, data = item[0], bytes(item[1])
        _text(name, "package name")
        if "/" in name or "\\" in name or name in seen:
            raise InvalidReleaseError(f"package name {name!r} holds a path separator or appears twice")
        seen.add(name)
        try:
            facts = verify_envelope(data, trust_anchors=[anchor], max_size=MAX_IMAGE_SIZE + MAX_ENVELOPE_OVERHEAD)
        except FirmwareError as e:
            check, untrusted = next(((c, u) for kind, c, u in _CHECKS if isinstance(e, kind)), ("manifest", False))
            error = UntrustedReleaseError if untrusted else InvalidReleaseError
            raise error(f"package {name!r}: {check} check failed against key {key.name!r} (kid {key.kid}): "
                        f"{e}") from None
        manifest = facts.manifest
        for what, checked in (("vendor", manifest.checked_vendor_ids), ("class", manifest.checked_class_ids)):
            if len(set(checked)) != 1 or not isinstance(checked[0], uuid.UUID):
                raise InvalidReleaseError(f"package {name!r}: the manifest must check exactly one {what} UUID")
        if facts.payload is None:
            raise InvalidReleaseError(f"package {name!r}: the image is not integrated in the envelope")
        if facts.version is not None:
            _text(facts.version, f"package {name!r}: version", 64)
        vendor_id, class_id = manifest.checked_vendor_ids[0], manifest.checked_class_ids[0]
        assert isinstance(vendor_id, uuid.UUID)  # checked above
        verified.append((VerifiedPackage(name, data, facts.payload),
                         (vendor_id, class_id, facts.sequence_number, facts.version)))
    first = verified[0][1]
    for package, declared in verified[1:]:
        if declared != first:
            raise InvalidReleaseError(f"package {package.name!r} declares another vendor, class, sequence number or "
                                      f"version than {verified[0][0].name!r}: one release, one of each")
    vendor_id, class_id, sequence, version = first
    return VerifiedImport(key, vendor_id, class_id, sequence, version or str(sequence),
                          tuple(p for p, _ in verified))


def _new_release_id() -> str:
    return "rel-" + base64.b32encode(secrets.token_bytes(7)).decode().lower()[:10]


class Releases:
    """Releases over a :class:`~lwm2m_server.storage.release_store.ReleaseStore`, their images and packages in
    ``blobs``, signed with ``keys``."""

    def __init__(self, store: ReleaseStore, blobs: BlobStore, keys: SigningKeys) -> None:
        self.store = store
        self.blobs = blobs
        self.keys = keys

    @classmethod
    def over(cls, database: Database, data_dir: str | os.PathLike[str], keys: SigningKeys) -> Releases:
        """The releases of ``database``, their blobs in ``data_dir``/:data:`BLOBS_DIR`."""
        return cls(SqlReleaseStore(database), BlobStore(Path(data_dir) / BLOBS_DIR), keys)

    # ------------------------------------------------------------------------------------------- create

    def create(self, images: Sequence[tuple[str, bytes]], *, vendor: str, class_name: str, version: str,
               key: str | None = None, package_format: str = "suit", tenant_id: str, now: float) -> Release:
        """A new release of ``images`` (name, bytes) with the next sequence number of its class.

        ``suit``: one envelope per image (integrated payload) signed with release key ``key`` (default: the
        tenant's key ``"release"``, created on first use). ``opaque``: each image is its own package (no key)."""
        _check_tenant(tenant_id)
        _text(version, "version", 64)
        if package_format not in PACKAGE_FORMATS:
            raise InvalidReleaseError(f"package format {package_format!r} is not one of {', '.join(PACKAGE_FORMATS)}")
        _check_images(images)
        images = [(name, bytes(data)) for name, data in images]
        vendor_id = vendor_uuid(vendor)
        class_id = class_uuid(vendor_id, class_name)
        signer: PrivateKey | None = None
        signing_key: SigningKey | None = None
        if package_format == "suit":
            if key is None:
                signing_key = self.keys.get_or_create(DEFAULT_RELEASE_KEY, "release", tenant_id=tenant_id, now=now)
            else:
                signing_key = self.keys.get(_check_name(key), tenant_id=tenant_id)
            signer = self.keys.private_key(signing_key.name, tenant_id=tenant_id, role="release")
        elif key is not None:
            raise InvalidReleaseError("an opaque release is not signed: give no key")
        image_shas = [self.blobs.put(data) for _, data in images]
        for _attempt in range(_ID_ATTEMPTS):
            sequence = self._next_sequence(tenant_id, vendor_id, class_id)
            stored: builtins.list[ReleaseImage] = []
            for (name, data), image_sha in zip(images, image_shas, strict=True):
                if signer is None:
                    package_sha, package_size = image_sha, len(data)
                else:
                    manifest = ReleaseManifest.for_image(data, sequence_number=sequence, vendor_id=vendor_id,
                                                         class_id=class_id, version=version)
                    envelope = build_envelope(manifest, [signer], image=data)
                    package_sha, package_size = self.blobs.put(envelope), len(envelope)
                    del envelope
                stored.append(ReleaseImage(name, len(data), image_sha, package_sha, package_size))
            release = Release(id=_new_release_id(), tenant_id=tenant_id, vendor=vendor, vendor_id=vendor_id,
                              class_name=class_name, class_id=class_id, version=version, sequence_number=sequence,
                              package_format=package_format, created_at=now,
                              signed_by=signing_key.kid if signing_key else None, approvals=(),
                              images=tuple(stored), key_name=signing_key.name if signing_key else None)
            if self._add(release):
                return self.get(release.id, tenant_id=tenant_id)
            # another release took this sequence number (or id) meanwhile: next one
        raise StorageError("cannot assign a sequence number: too many concurrent releases for this class")

    def _next_sequence(self, tenant_id: str, vendor_id: uuid.UUID, class_id: uuid.UUID) -> int:
        latest = self.store.latest(tenant_id=tenant_id, vendor_id=vendor_id, class_id=class_id)
        return 1 if latest is None else latest.sequence_number + 1

    def _add(self, release: Release) -> bool:
        """Store a new release; False when its id or sequence number was taken meanwhile."""
        try:
            self.store.add(release)
        except StorageConflictError:
            return False
        return True

    # ------------------------------------------------------------------------------------------- import

    def import_signed(self, packages: Sequence[tuple[str, bytes]], *, key: SigningKey, tenant_id: str,
                      origin_tenant: str | None = None, now: float) -> Release:
        """:func:`verify_signed` then :meth:`store_import`: a release of envelopes signed elsewhere by ``key``."""
        return self.store_import(verify_signed(packages, key), tenant_id=tenant_id, origin_tenant=origin_tenant,
                                 now=now)

    def store_import(self, verified: VerifiedImport, *, tenant_id: str, origin_tenant: str | None = None,
                     now: float) -> Release:
        """Store a verified import in ``tenant_id``, each package exactly as signed. The key must belong to
        ``origin_tenant`` when given (the OEM), else to ``tenant_id``. Vendor and class keep the names the tenant
        already uses for those UUIDs (a class policy, else an earlier release), else the UUIDs as text.
        :class:`ReleaseRollbackError` unless the sequence number is above every release of the class here."""
        _check_tenant(tenant_id)
        if not isinstance(verified, VerifiedImport):
            raise InvalidReleaseError("store_import takes what verify_signed returned")
        key_tenant = _check_tenant(origin_tenant) if origin_tenant is not None else tenant_id
        if verified.key.tenant_id != key_tenant:
            raise InvalidReleaseError(f"key {verified.key.name!r} is not a key of tenant {key_tenant!r}")
        vendor_id, class_id = verified.vendor_id, verified.class_id
        vendor, class_name = self._known_names(tenant_id, vendor_id, class_id)
        self._check_above(verified.sequence_number, tenant_id, vendor_id, class_id, class_name)  # before any blob
        images = tuple(ReleaseImage(package.name, len(package.image), self.blobs.put(package.image),
                                    self.blobs.put(package.envelope), len(package.envelope))
                       for package in verified.packages)
        for _attempt in range(_ID_ATTEMPTS):
            self._check_above(verified.sequence_number, tenant_id, vendor_id, class_id, class_name)
            release = Release(id=_new_release_id(), tenant_id=tenant_id, vendor=vendor, vendor_id=vendor_id,
                              class_name=class_name, class_id=class_id, version=verified.version,
                              sequence_number=verified.sequence_number, package_format="suit", created_at=now,
                              signed_by=verified.key.kid, approvals=(), images=images,
                              key_name=verified.key.name, origin_tenant=origin_tenant)
            if self._add(release):
                return self.get(release.id, tenant_id=tenant_id)
        raise StorageError("cannot store the imported release: too many concurrent releases for this class")

    def _check_above(self, sequence: int, tenant_id: str, vendor_id: uuid.UUID, class_id: uuid.UUID,
                     class_name: str) -> None:
        top = self._next_sequence(tenant_id, vendor_id, class_id) - 1
        if sequence <= top:
            raise ReleaseRollbackError(f"sequence number {sequence} is not above {top}, the latest release of class "
                                       f"{class_name} in tenant {tenant_id!r}")

    def _known_names(self, tenant_id: str, vendor_id: uuid.UUID, class_id: uuid.UUID) -> tuple[str, str]:
        policy = self.store.class_policy(tenant_id=tenant_id, vendor_id=vendor_id, class_id=class_id)
        if policy is not None:
            return policy.vendor, policy.class_name
        earlier = self.store.latest(tenant_id=tenant_id, vendor_id=vendor_id, class_id=class_id)
        if earlier is not None:
            return earlier.vendor, earlier.class_name
        return str(vendor_id), str(class_id)

    # --------------------------------------------------------------------------------------------- read

    def get(self, release_id: str, *, tenant_id: str) -> Release:
        """The release; :class:`UnknownReleaseError` when the tenant has none of that id."""
        _check_tenant(tenant_id)
        if not isinstance(release_id, str) or not _RELEASE_ID.fullmatch(release_id):
            raise UnknownReleaseError(f"no release {release_id!r} (release ids look like rel-abcdefghij)")
        release = self.store.get(release_id, tenant_id=tenant_id)
        if release is None:
            raise UnknownReleaseError(f"no release {release_id!r} in tenant {tenant_id!r}")
        return release

    def list(self, *, tenant_id: str) -> builtins.list[Release]:
        """The tenant's releases, newest first."""
        return self.store.list(tenant_id=_check_tenant(tenant_id))

    def package(self, release_id: str, image_name: str | None = None, *, tenant_id: str,
                approved_by: str | None = None) -> bytes:
        """The package of one image (``image_name``; may be omitted for a one-image release): the envelope as
        released, or as countersigned by deployment key ``approved_by``."""
        release = self.get(release_id, tenant_id=tenant_id)
        image = _pick_image(release, image_name)
        if approved_by is None:
            return self.blobs.get(image.package_sha256)
        sha = (image.approved_package_sha256 or {}).get(approved_by)
        if sha is None:
            raise UnknownReleaseError(f"release {release.id} has no approval by key {approved_by!r}")
        return self.blobs.get(sha)

    def image(self, release_id: str, image_name: str | None = None, *, tenant_id: str) -> bytes:
        """The raw image (same choice of image as :meth:`package`)."""
        release = self.get(release_id, tenant_id=tenant_id)
        return self.blobs.get(_pick_image(release, image_name).image_sha256)

    # ------------------------------------------------------------------------------------------ approve

    def approve(self, release_id: str, deployment_key: str, *, tenant_id: str, now: float) -> Release:
        """Countersign every envelope of the release with ``deployment_key`` (role ``deployment``) and record it.

        Idempotent for a key that already approved. Each envelope is verified against the release key first (a key
        of ``origin_tenant`` for an imported release), so an approval never vouches for a package the release key
        did not sign."""
        release = self.get(release_id, tenant_id=tenant_id)
        if release.package_format != "suit":
            raise InvalidReleaseError(f"release {release.id} is opaque: there is no signature to add to")
        key = self.keys.get(_check_name(deployment_key), tenant_id=tenant_id)
        self.keys._with_role(key, "deployment")
        if any(name == key.name for name, _, _ in release.approvals):
            return release
        if release.key_name is None:
            raise InvalidReleaseError(f"release {release.id} has no release key on record")
        anchor = self.keys.get(release.key_name, tenant_id=release.origin_tenant or tenant_id).public_key()
        signer = self.keys.private_key(key.name, tenant_id=tenant_id, role="deployment")
        packages: builtins.list[str] = []
        for image in release.images:
            envelope = self.blobs.get(image.package_sha256)
            try:
                verify_envelope(envelope, trust_anchors=[anchor],
                                max_size=image.package_size + MAX_ENVELOPE_OVERHEAD)
                countersigned = add_signature(envelope, signer)
            except FirmwareError as e:
                raise InvalidReleaseError(f"release {release.id} image {image.name!r}: stored package does not "
                                          f"verify against its release key: {e}") from None
            packages.append(self.blobs.put(countersigned))
        # approved meanwhile by the same key: the same packages (signatures are deterministic), already recorded
        self.store.add_approval(release.id, tenant_id=tenant_id, key_name=key.name, kid=key.kid, packages=packages,
                                approved_at=now)
        return self.get(release.id, tenant_id=tenant_id)

    # ------------------------------------------------------------------------------------ class policy

    def set_class_policy(self, class_name: str, vendor: str, *, require_approval: bool, tenant_id: str,
                         now: float | None = None) -> ClassPolicy:
        """Configure a device class (vendor and class as for :meth:`create`)."""
        _check_tenant(tenant_id)
        vendor_id = vendor_uuid(vendor)
        class_id = class_uuid(vendor_id, class_name)
        return self.store.set_class_policy(ClassPolicy(vendor, vendor_id, class_name, class_id,
                                                       bool(require_approval)), tenant_id=tenant_id, now=now)

    def class_policy(self, class_name: str, vendor: str, *, tenant_id: str) -> ClassPolicy:
        """The class's policy; an unconfigured class gets the default (nothing required, ``configured`` False)."""
        _check_tenant(tenant_id)
        vendor_id = vendor_uuid(vendor)
        class_id = class_uuid(vendor_id, class_name)
        policy = self.store.class_policy(tenant_id=tenant_id, vendor_id=vendor_id, class_id=class_id)
        return ClassPolicy(vendor, vendor_id, class_name, class_id) if policy is None else policy

    def class_policies(self, *, tenant_id: str) -> builtins.list[ClassPolicy]:
        """Every configured class of the tenant."""
        return self.store.class_policies(tenant_id=_check_tenant(tenant_id))


def _check_images(images: Sequence[tuple[str, bytes]]) -> None:
    if not images:
        raise InvalidReleaseError("a release needs at least one image")
    if len(images) > MAX_IMAGES:
        raise InvalidReleaseError(f"a release has at most {MAX_IMAGES} images")
    seen: set[str] = set()
    for item in images:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidReleaseError("images are (name, bytes) pairs")
        name, data = item
        _text(name, "image name")
        if "/" in name or "\\" in name:
            raise InvalidReleaseError(f"image name {name!r} must not hold a path separator")
        if name in seen:
            raise InvalidReleaseError(f"image name {name!r} appears twice")
        seen.add(name)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidReleaseError(f"image {name!r} is not bytes")
        if len(data) == 0:
            raise InvalidReleaseError(f"image {name!r} is empty")
        if len(data) > MAX_IMAGE_SIZE:
            raise InvalidReleaseError(f"image {name!r} has {len(data)} bytes; at most {MAX_IMAGE_SIZE}")


def _pick_image(release: Release, image_name: str | None) -> ReleaseImage:
    if image_name is None:
        if len(release.images) != 1:
            names = ", ".join(i.name for i in release.images)
            raise InvalidReleaseError(f"release {release.id} has {len(release.images)} images ({names}): name one")
        return release.images[0]
    for image in release.images:
        if image.name == image_name:
            return image
    raise UnknownReleaseError(f"release {release.id} has no image {image_name!r}")



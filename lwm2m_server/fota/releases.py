"""Releases and the keys that sign them: the I/O shell around :mod:`firmware_object.suit`.

* :class:`SigningKeys`: named signing keys per tenant, each with a role (``release``: the OEM signs releases;
  ``deployment``: the operator authorises a campaign; ``attestation``: the server signs reports). Private keys are
  sealed by the vault (AAD binds tenant, name and role) and never stored, logged or shown in the clear. A
  public-only key (:meth:`SigningKeys.add_public`: an OEM's key whose private part never leaves the OEM) only
  verifies; signing with it raises :class:`PublicOnlyKeyError`.
* blobs (:mod:`lwm2m_server.storage.blob_store`): content-addressed, files in the data directory with SQLite, the
  database with PostgreSQL (several nodes read the same bytes); a read checks the digest.
* :class:`Releases`: releases of images for a (vendor, class), each with the next sequence number of that class
  (the store refuses a taken one; we retry), packaged as one SUIT envelope per image signed with a release key, or
  opaque (the image is the package, for third-party clients), or ``system``: several components (images and data
  files, :class:`SystemComponent`) in ONE envelope (:mod:`firmware_object.suit.components`) that every image record
  of the release points at; approvals add a deployment key's COSE_Sign1 to each envelope; device-class policies say
  whether campaigns need such an approval.
* Differential packages of a system release (:meth:`Releases.add_delta`): one envelope per earlier release of the
  class (the base), with the release's sequence number and version, signed with its release key, in which each
  component the base also has travels as a delta (:func:`firmware_object.delta.make_delta`) from the base's image;
  approvals countersign deltas too (those made later are countersigned at once by every key that approved).
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
import json
import os
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_object.delta import make_delta
from firmware_object.errors import (
    DigestMismatchError,
    FirmwareError,
    ImageMismatchError,
    PackageTooLargeError,
    SignatureError,
    SuitDecodeError,
)
from firmware_object.suit.components import (
    COMPONENT_NAME,
    ComponentKind,
    ComponentRelease,
    SystemRelease,
    build_system_envelope,
    verify_system_envelope,
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
from lwm2m_server.storage.blob_store import (
    BlobCorruptedError,
    BlobStore,
    FileBlobStore,
    UnknownBlobError,
    blob_store_for,
)
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.release_store import (
    ClassPolicy,
    KeyRecord,
    KeyStore,
    Release,
    ReleaseDelta,
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
    "SYSTEM_FORMAT",
    "BlobCorruptedError",
    "BlobStore",
    "ClassPolicy",
    "DuplicateSigningKeyError",
    "FileBlobStore",
    "InvalidReleaseError",
    "InvalidSigningKeyError",
    "KeyRoleError",
    "PublicOnlyKeyError",
    "Release",
    "ReleaseDelta",
    "ReleaseImage",
    "ReleaseRollbackError",
    "Releases",
    "SigningKey",
    "SigningKeys",
    "SystemComponent",
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
PACKAGE_FORMATS: Final = ("suit", "opaque")  # what create() makes; create_system() makes SYSTEM_FORMAT
SYSTEM_FORMAT: Final = "system"
COMPONENT_KINDS: Final = ("image", "data")
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


@dataclass(frozen=True)
class SystemComponent:
    """One component of a system release (:meth:`Releases.create_system`): ``name`` (also its SUIT component
    identifier: ``[a-z][a-z0-9_-]{0,31}``), its bytes, ``kind`` (``image``: firmware the device boots; ``data``: a
    file it stores, e.g. a configuration or a certificate bundle), its ``version`` (None: the release's version) and
    ``after``: the names of components, EARLIER in the release, that must be installed before it."""

    name: str
    data: bytes = field(repr=False)
    kind: str = "image"
    version: str | None = None
    after: tuple[str, ...] = ()


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
        return cls(SqlReleaseStore(database), blob_store_for(database, Path(data_dir) / BLOBS_DIR), keys)

    # ------------------------------------------------------------------------------------------- create

    def create(self, images: Sequence[tuple[str, bytes]], *, vendor: str, class_name: str, version: str,
               key: str | None = None, package_format: str = "suit", tenant_id: str, now: float) -> Release:
        """A new release of ``images`` (name, bytes) with the next sequence number of its class.

        ``suit``: one envelope per image (integrated payload) signed with release key ``key`` (default: the
        tenant's key ``"release"``, created on first use). ``opaque``: each image is its own package (no key)."""
        _check_tenant(tenant_id)
        _text(version, "version", 64)
        if package_format not in PACKAGE_FORMATS:
            raise InvalidReleaseError(f"package format {package_format!r} is not one of {', '.join(PACKAGE_FORMATS)}"
                                      f" (a {SYSTEM_FORMAT} release is made of components by create_system)")
        _check_images(images)
        images = [(name, bytes(data)) for name, data in images]
        vendor_id = vendor_uuid(vendor)
        class_id = class_uuid(vendor_id, class_name)
        signer: PrivateKey | None = None
        signing_key: SigningKey | None = None
        if package_format == "suit":
            signing_key, signer = self._release_signer(key, tenant_id, now)
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

    def create_system(self, components: Sequence[SystemComponent], *, vendor: str, class_name: str, version: str,
                      key: str | None = None, tenant_id: str, now: float) -> Release:
        """A new ``system`` release of ``components`` (installed in the order given, all or none) with the next
        sequence number of its class: ONE SUIT envelope holding every component whole, signed with release key
        ``key`` as :meth:`create` signs, stored once. The release has one :class:`ReleaseImage` per component
        (name, kind, version, ``after``, size, image digest), and every one of them carries that one envelope's
        ``package_sha256`` and ``package_size``. :class:`InvalidReleaseError` for no component, a bad or repeated
        name, an unknown kind, an empty or oversized component, or an ``after`` that names no earlier component."""
        _check_tenant(tenant_id)
        _text(version, "version", 64)
        parts = _check_components(components)
        vendor_id = vendor_uuid(vendor)
        class_id = class_uuid(vendor_id, class_name)
        signing_key, signer = self._release_signer(key, tenant_id, now)
        image_shas = [self.blobs.put(c.data) for c in parts]
        full = [ComponentRelease.full(c.name, c.data, version=c.version or version, kind=_kind(c.kind),
                                      after=c.after) for c in parts]
        payloads = {c.name: c.data for c in parts}
        for _attempt in range(_ID_ATTEMPTS):
            sequence = self._next_sequence(tenant_id, vendor_id, class_id)
            try:
                envelope = build_system_envelope(SystemRelease(sequence, vendor_id, class_id, version, tuple(full)),
                                                 payloads, [signer])
            except ValueError as e:
                raise InvalidReleaseError(f"cannot build the system envelope: {e}") from None
            package_sha, package_size = self.blobs.put(envelope), len(envelope)
            del envelope
            images = tuple(ReleaseImage(c.name, len(c.data), image_sha, package_sha, package_size, kind=c.kind,
                                        version=c.version or version, after=c.after)
                           for c, image_sha in zip(parts, image_shas, strict=True))
            release = Release(id=_new_release_id(), tenant_id=tenant_id, vendor=vendor, vendor_id=vendor_id,
                              class_name=class_name, class_id=class_id, version=version, sequence_number=sequence,
                              package_format=SYSTEM_FORMAT, created_at=now, signed_by=signing_key.kid,
                              approvals=(), images=images, key_name=signing_key.name)
            if self._add(release):
                return self.get(release.id, tenant_id=tenant_id)
        raise StorageError("cannot assign a sequence number: too many concurrent releases for this class")

    def _release_signer(self, key: str | None, tenant_id: str, now: float) -> tuple[SigningKey, PrivateKey]:
        """Release key ``key`` (default: the tenant's key ``"release"``, made on first use) and its private part."""
        if key is None:
            signing_key = self.keys.get_or_create(DEFAULT_RELEASE_KEY, "release", tenant_id=tenant_id, now=now)
        else:
            signing_key = self.keys.get(_check_name(key), tenant_id=tenant_id)
        return signing_key, self.keys.private_key(signing_key.name, tenant_id=tenant_id, role="release")

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
        """The package of one image (``image_name``; may be omitted for a one-image release, and for a system
        release, whose images all share its one envelope): the envelope as released, or as countersigned by
        deployment key ``approved_by``."""
        release = self.get(release_id, tenant_id=tenant_id)
        image = (_pick_image(release, image_name) if image_name is not None or release.package_format != SYSTEM_FORMAT
                 else release.images[0])
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
        """Countersign every envelope of the release with ``deployment_key`` (role ``deployment``) and record it,
        then every delta package of it (:meth:`add_delta` countersigns a later delta with the keys that approved).

        Idempotent for a key that already approved (and it countersigns any delta still missing that key's
        signature). Each envelope is verified against the release key first (a key of ``origin_tenant`` for an
        imported release), so an approval never vouches for a package the release key did not sign."""
        release = self.get(release_id, tenant_id=tenant_id)
        if release.package_format not in ("suit", SYSTEM_FORMAT):
            raise InvalidReleaseError(f"release {release.id} is opaque: there is no signature to add to")
        key = self.keys.get(_check_name(deployment_key), tenant_id=tenant_id)
        self.keys._with_role(key, "deployment")
        approved = any(name == key.name for name, _, _ in release.approvals)
        if approved and all(key.name in (d.approved_package_sha256 or {}) for d in release.deltas):
            return release
        anchor = self._release_anchor(release)
        signer = self.keys.private_key(key.name, tenant_id=tenant_id, role="deployment")
        if not approved:
            countersigned: dict[str, str] = {}  # package -> its countersigned copy (a system release: one package)
            for image in release.images:
                if image.package_sha256 not in countersigned:
                    countersigned[image.package_sha256] = self._countersign(
                        release, image.package_sha256, image.package_size, anchor, signer,
                        f"release {release.id} image {image.name!r}")
            # approved meanwhile by the same key: the same packages (signatures are deterministic), already recorded
            self.store.add_approval(release.id, tenant_id=tenant_id, key_name=key.name, kid=key.kid,
                                    packages=[countersigned[i.package_sha256] for i in release.images],
                                    approved_at=now)
        # after the approval is on record: a delta added meanwhile is seen here, or sees the approval (add_delta)
        for delta in self.store.deltas(release.id, tenant_id=tenant_id):
            self._approve_delta(release, delta, key.name, anchor, signer)
        return self.get(release.id, tenant_id=tenant_id)

    def _release_anchor(self, release: Release) -> PublicKey:
        """The public key of the release's release key (a key of ``origin_tenant`` for an imported release)."""
        if release.key_name is None:
            raise InvalidReleaseError(f"release {release.id} has no release key on record")
        return self.keys.get(release.key_name, tenant_id=release.origin_tenant or release.tenant_id).public_key()

    def _countersign(self, release: Release, package_sha256: str, package_size: int, anchor: PublicKey,
                     signer: PrivateKey, what: str) -> str:
        """Verify stored package ``package_sha256`` against the release key, add ``signer``'s signature, store the
        copy; its SHA-256 hex."""
        envelope = self.blobs.get(package_sha256)
        try:
            if release.package_format == SYSTEM_FORMAT:
                verify_system_envelope(envelope, trust_anchors=[anchor], max_size=package_size + MAX_ENVELOPE_OVERHEAD)
            else:
                verify_envelope(envelope, trust_anchors=[anchor], max_size=package_size + MAX_ENVELOPE_OVERHEAD)
            countersigned = add_signature(envelope, signer)
        except FirmwareError as e:
            raise InvalidReleaseError(f"{what}: stored package does not verify against its release key: {e}") from None
        return self.blobs.put(countersigned)

    def _approve_delta(self, release: Release, delta: ReleaseDelta, key_name: str, anchor: PublicKey,
                       signer: PrivateKey) -> None:
        if key_name in (delta.approved_package_sha256 or {}):
            return
        sha = self._countersign(release, delta.package_sha256, delta.package_size, anchor, signer,
                                f"release {release.id} delta from {delta.base_release_id}")
        self.store.add_delta_approval(release.id, delta.base_release_id, tenant_id=release.tenant_id,
                                      key_name=key_name, package_sha256=sha)

    # ------------------------------------------------------------------------------------------- deltas

    def add_delta(self, release_id: str, *, base_release_id: str, tenant_id: str, now: float) -> ReleaseDelta:
        """The differential package of system release ``release_id`` for devices that run ``base_release_id``, made
        and stored on first call (idempotent per release and base: later calls return the stored one).

        Both must be system releases of the tenant, of the same vendor and class, the base's sequence number lower.
        One envelope with the release's sequence number and version, signed with the release's key: each component
        the base also has (same name) travels as a delta from the base's image (even when unchanged: a tiny delta)
        unless the delta is not smaller than the image (then whole, as does a component the base lacks). Every
        deployment key that approved the release countersigns it at once. :class:`InvalidReleaseError` for releases
        that do not fit, or a release whose key has no private part here (e.g. an imported release)."""
        release = self.get(release_id, tenant_id=tenant_id)
        base = self.get(base_release_id, tenant_id=tenant_id)
        for r in (release, base):
            if r.package_format != SYSTEM_FORMAT:
                raise InvalidReleaseError(f"release {r.id} is {r.package_format}, not {SYSTEM_FORMAT}: deltas are "
                                          "made between system releases")
        if (base.vendor_id, base.class_id) != (release.vendor_id, release.class_id):
            raise InvalidReleaseError(f"release {base.id} is of another vendor or class than {release.id}")
        if base.sequence_number >= release.sequence_number:
            raise InvalidReleaseError(f"release {base.id} (sequence {base.sequence_number}) is not older than "
                                      f"{release.id} (sequence {release.sequence_number})")
        stored = self.store.get_delta(release.id, base.id, tenant_id=tenant_id)
        if stored is None:
            self._make_delta(release, base, now)
        fresh = self.get(release.id, tenant_id=tenant_id)  # the delta is on record: read the approvals after it
        delta = next(d for d in fresh.deltas if d.base_release_id == base.id)
        if fresh.approvals and any(k not in (delta.approved_package_sha256 or {}) for k, _, _ in fresh.approvals):
            anchor = self._release_anchor(fresh)
            for key_name, _, _ in fresh.approvals:
                signer = self.keys.private_key(key_name, tenant_id=tenant_id, role="deployment")
                self._approve_delta(fresh, delta, key_name, anchor, signer)
        found = self.store.get_delta(release.id, base.id, tenant_id=tenant_id)
        assert found is not None  # deltas are never removed
        return found

    def _make_delta(self, release: Release, base: Release, now: float) -> None:
        if release.origin_tenant is not None or release.key_name is None:
            raise InvalidReleaseError(f"release {release.id} was imported signed elsewhere: its release key has no "
                                      "private part here to sign a delta with")
        try:
            key = self.keys.get(release.key_name, tenant_id=release.tenant_id)
            signer = self.keys.private_key(key.name, tenant_id=release.tenant_id, role="release")
        except PublicOnlyKeyError:
            raise InvalidReleaseError(f"release {release.id}'s key {release.key_name!r} is public-only: this server "
                                      "holds no private part to sign a delta with") from None
        if key.kid != release.signed_by:
            raise InvalidReleaseError(f"release {release.id}'s key {key.name!r} is not the key that signed it")
        base_images = {i.name: i for i in base.images}
        components: builtins.list[ComponentRelease] = []
        payloads: dict[str, bytes] = {}
        base_digests: dict[str, str] = {}
        for image in release.images:
            data = self.blobs.get(image.image_sha256)
            version, kind = image.version or release.version, _kind(image.kind)
            component = ComponentRelease.full(image.name, data, version=version, kind=kind, after=image.after)
            payload = data
            if image.name in base_images:
                base_data = self.blobs.get(base_images[image.name].image_sha256)
                delta = make_delta(base_data, data)
                if len(delta) < len(data):
                    try:
                        component = ComponentRelease.from_delta(image.name, data, delta, base_data, version=version,
                                                                base_version=base.version, kind=kind,
                                                                after=image.after)
                    except ValueError as e:
                        raise InvalidReleaseError(f"release {release.id} component {image.name!r}: {e}") from None
                    payload = delta
                    base_digests[image.name] = base_images[image.name].image_sha256
                del base_data
            components.append(component)
            payloads[image.name] = payload
        try:
            envelope = build_system_envelope(SystemRelease(release.sequence_number, release.vendor_id,
                                                           release.class_id, release.version, tuple(components)),
                                             payloads, [signer])
        except ValueError as e:
            raise InvalidReleaseError(f"cannot build the delta envelope of release {release.id}: {e}") from None
        payloads.clear()
        # stored meanwhile from the same base: that one stays (either verifies), this blob is left unreferenced
        self.store.add_delta(ReleaseDelta(release.id, release.tenant_id, base.id, base.version,
                                          self.blobs.put(envelope), len(envelope), now, base_digests))

    def deltas(self, release_id: str, *, tenant_id: str) -> builtins.list[ReleaseDelta]:
        """The release's deltas (by creation time); :class:`UnknownReleaseError` when the tenant has no such
        release."""
        return self.store.deltas(self.get(release_id, tenant_id=tenant_id).id, tenant_id=tenant_id)

    def delta_package(self, release_id: str, base_release_id: str, *, tenant_id: str,
                      approved_by: str | None = None) -> bytes:
        """The delta package of the release from ``base_release_id``, as signed, or as countersigned by deployment
        key ``approved_by``; :class:`UnknownReleaseError` when there is no such release, delta or approval."""
        release = self.get(release_id, tenant_id=tenant_id)
        delta = self.store.get_delta(release.id, base_release_id, tenant_id=tenant_id)
        if delta is None:
            raise UnknownReleaseError(f"release {release.id} has no delta from {base_release_id!r}")
        if approved_by is None:
            return self.blobs.get(delta.package_sha256)
        sha = (delta.approved_package_sha256 or {}).get(approved_by)
        if sha is None:
            raise UnknownReleaseError(f"the delta of release {release.id} from {base_release_id} has no approval by "
                                      f"key {approved_by!r}")
        return self.blobs.get(sha)

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


def _kind(kind: str) -> ComponentKind:
    if kind == "image":
        return "image"
    if kind == "data":
        return "data"
    raise InvalidReleaseError(f"component kind {kind!r} is not one of {', '.join(COMPONENT_KINDS)}")


def _check_components(components: Sequence[SystemComponent]) -> builtins.list[SystemComponent]:
    """``components`` checked (see :meth:`Releases.create_system`), as bytes with ``after`` as tuples."""
    if not components:
        raise InvalidReleaseError("a system release needs at least one component")
    if len(components) > MAX_IMAGES:
        raise InvalidReleaseError(f"a system release has at most {MAX_IMAGES} components")
    checked: builtins.list[SystemComponent] = []
    seen: builtins.list[str] = []
    total = 0
    for c in components:
        if not isinstance(c, SystemComponent):
            raise InvalidReleaseError("components are SystemComponent records")
        if not isinstance(c.name, str) or not COMPONENT_NAME.fullmatch(c.name):
            raise InvalidReleaseError(f"component name {c.name!r} must be a lowercase letter then at most 31 "
                                      "lowercase letters, digits, _ or -")
        if c.name in seen:
            raise InvalidReleaseError(f"component {c.name!r} appears twice")
        _kind(c.kind)
        if c.version is not None:
            _text(c.version, f"component {c.name!r}: version", 64)
        if not isinstance(c.data, bytes | bytearray | memoryview) or len(c.data) == 0:
            raise InvalidReleaseError(f"component {c.name!r} is empty or not bytes")
        total += len(c.data)
        if total > MAX_IMAGE_SIZE:
            raise InvalidReleaseError(f"the components total more than {MAX_IMAGE_SIZE} bytes")
        after = tuple(c.after) if not isinstance(c.after, str) else (c.after,)
        for name in after:
            if name == c.name or name not in seen:
                raise InvalidReleaseError(f"component {c.name!r} must install after {name!r}, which is not an "
                                          f"earlier component (components install in the order given)")
        if len(set(after)) != len(after):
            raise InvalidReleaseError(f"component {c.name!r}: 'after' names a component twice")
        seen.append(c.name)
        checked.append(SystemComponent(c.name, bytes(c.data), c.kind, c.version, after))
    return checked


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



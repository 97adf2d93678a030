"""The release and signing-key stores, each a Protocol with a memory and a SQL implementation.

* :class:`KeyStore`: signing key records (:class:`KeyRecord`: public part, the vault-sealed private part or None
  for a public-only key, role, algorithm, kid, creation time), keyed by ``(tenant_id, name)``;
* :class:`ReleaseStore`: releases (:class:`Release`) with their images, approvals and differential packages
  (:class:`ReleaseDelta`), and device-class policies (:class:`ClassPolicy`).

The services that sign, package and verify (:mod:`lwm2m_server.fota.releases`) take these stores. Every
implementation passes tests/unit/test_release_store_contract.py. Invariants:

* every read is scoped by ``tenant_id`` (a required keyword): another tenant's record is not found (``None``, ``[]``);
  a write takes the tenant from its record or keyword;
* a key name is never reused in a tenant; a release id is unique across tenants, and so is a sequence number within
  ``(tenant_id, vendor_id, class_id)``: :meth:`ReleaseStore.add` of a taken one raises
  :class:`~lwm2m_server.storage.stores.StorageConflictError` and writes nothing (this is what makes sequence-number
  assignment atomic: the caller takes :meth:`ReleaseStore.latest` + 1 and retries on a conflict);
* a release is stored with all its images or not at all; approvals and deltas are added later, an approval once
  per key, a delta once per ``(release, base release)`` (the first stays), a delta's approval once per key;
* every call is atomic and durable once it returns; records are frozen and come back equal to what was stored;
* a database failure raises :class:`~lwm2m_server.core.errors.StorageError` whose text holds no stored value (a
  statement's parameters may hold a sealed private key).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from lwm2m_server.core.errors import StorageError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.release_tables import (
    DeviceClassRow,
    ReleaseApprovalRow,
    ReleaseDeltaApprovalRow,
    ReleaseDeltaRow,
    ReleaseImageRow,
    ReleaseRow,
    SigningKeyRow,
)
from lwm2m_server.storage.sql import chunks
from lwm2m_server.storage.stores import StorageConflictError

__all__ = [
    "ClassPolicy",
    "KeyRecord",
    "KeyStore",
    "MemoryKeyStore",
    "MemoryReleaseStore",
    "Release",
    "ReleaseDelta",
    "ReleaseImage",
    "ReleaseStore",
    "SqlKeyStore",
    "SqlReleaseStore",
]



# ---------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored signing key. ``sealed_private`` is the vault's blob of the PKCS#8 DER private key (never the key in
    the clear), or None for a public-only key; ``kid`` is the hex of its COSE key id."""

    tenant_id: str
    name: str
    role: str
    alg: str
    kid: str
    public_pem: str
    created_at: float
    sealed_private: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ReleaseImage:
    """One image of a release and its package; ``approved_package_sha256`` maps each approving deployment key's
    name to the countersigned package's SHA-256 hex (None: not approved, or opaque).

    In a ``system`` release an image is a component: ``kind`` (``image`` or ``data``), its own ``version`` and
    ``after`` (the components installed before it), and EVERY image of the release points at the same package (the
    one envelope of all components: same ``package_sha256``, ``package_size`` and approved copies). Other releases'
    images have kind ``image``, no version and no dependency."""

    name: str
    size: int
    image_sha256: str
    package_sha256: str
    package_size: int
    approved_package_sha256: dict[str, str] | None = None
    kind: str = "image"
    version: str | None = None
    after: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "version": self.version, "after": list(self.after),
                "size": self.size, "image_sha256": self.image_sha256,
                "package_sha256": self.package_sha256, "package_size": self.package_size,
                "approved_package_sha256": None if self.approved_package_sha256 is None
                else dict(self.approved_package_sha256)}


@dataclass(frozen=True)
class ReleaseDelta:
    """A differential package of system release ``release_id`` for devices that run release ``base_release_id``
    (version ``base_version``): one envelope signed like the release, with the release's sequence number and version,
    in which each component named in ``base_digests`` travels as a delta from the base image of that SHA-256 hex and
    every other component whole. ``approved_package_sha256`` as for :class:`ReleaseImage`."""

    release_id: str
    tenant_id: str
    base_release_id: str
    base_version: str
    package_sha256: str
    package_size: int
    created_at: float
    base_digests: dict[str, str] = field(default_factory=dict)
    approved_package_sha256: dict[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"release": self.release_id, "base_release": self.base_release_id, "base_version": self.base_version,
                "package_sha256": self.package_sha256, "package_size": self.package_size,
                "created_at": self.created_at, "base_digests": dict(self.base_digests),
                "approved_package_sha256": None if self.approved_package_sha256 is None
                else dict(self.approved_package_sha256)}


@dataclass(frozen=True)
class Release:
    """A stored release. ``signed_by`` is the release key's kid (hex; None when opaque); ``approvals`` holds
    ``(key name, kid hex, approved at)`` in approval order. ``origin_tenant`` is set for a release imported
    pre-signed with another tenant's key (the OEM): its ``key_name`` is a key of that tenant. ``deltas``: its
    differential packages (system releases only), by creation time then base release id."""

    id: str
    tenant_id: str
    vendor: str
    vendor_id: uuid.UUID
    class_name: str
    class_id: uuid.UUID
    version: str
    sequence_number: int
    package_format: str
    created_at: float
    signed_by: str | None
    approvals: tuple[tuple[str, str, float], ...]
    images: tuple[ReleaseImage, ...]
    key_name: str | None = None
    origin_tenant: str | None = None
    deltas: tuple[ReleaseDelta, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-native (UUIDs as strings); each delta with ``saving_percent``, the bytes it saves against the full
        package."""
        full = self.images[0].package_size if self.images else 0
        return {"id": self.id, "tenant": self.tenant_id, "vendor": self.vendor, "vendor_id": str(self.vendor_id),
                "class_name": self.class_name, "class_id": str(self.class_id), "version": self.version,
                "sequence_number": self.sequence_number, "package_format": self.package_format,
                "created_at": self.created_at, "key": self.key_name, "signed_by": self.signed_by,
                "origin_tenant": self.origin_tenant,
                "approvals": [{"key": k, "kid": kid, "at": at} for k, kid, at in self.approvals],
                "images": [i.as_dict() for i in self.images],
                "deltas": [{**d.as_dict(), "saving_percent": saving_percent(d.package_size, full)}
                           for d in self.deltas]}


def saving_percent(delta_size: int, full_size: int) -> float:
    """How much smaller ``delta_size`` is than ``full_size``, in percent (one decimal; 0 for an empty full size)."""
    return round(100.0 * (1 - delta_size / full_size), 1) if full_size > 0 else 0.0


@dataclass(frozen=True)
class ClassPolicy:
    """A device class's policy; ``configured`` is False for a class nobody set (then nothing is required)."""

    vendor: str
    vendor_id: uuid.UUID
    class_name: str
    class_id: uuid.UUID
    require_approval: bool = False
    configured: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"vendor": self.vendor, "vendor_id": str(self.vendor_id), "class_name": self.class_name,
                "class_id": str(self.class_id), "require_approval": self.require_approval,
                "configured": self.configured}


@dataclass(frozen=True, slots=True)
class _Approval:
    key_name: str
    kid: str
    packages: tuple[str, ...]
    approved_at: float


def _with_approvals(release: Release, approvals: Sequence[_Approval]) -> Release:
    """``release`` (as added) with its approvals, in approval order (time, then key name)."""
    ordered = sorted(approvals, key=lambda a: (a.approved_at, a.key_name))
    approved: builtins.list[dict[str, str]] = [{} for _ in release.images]
    for a in ordered:
        for position, sha in enumerate(a.packages[:len(approved)]):
            approved[position][a.key_name] = sha
    return replace(release, approvals=tuple((a.key_name, a.kid, a.approved_at) for a in ordered),
                   images=tuple(replace(i, approved_package_sha256=approved[n] or None)
                                for n, i in enumerate(release.images)))


def _check_new(release: Release) -> None:
    if release.approvals or release.deltas or any(i.approved_package_sha256 for i in release.images):
        raise StorageError(f"release {release.id!r}: a new release has no approvals or deltas yet")


def _check_new_delta(delta: ReleaseDelta) -> None:
    if delta.approved_package_sha256:
        raise StorageError(f"delta of {delta.release_id!r}: a new delta has no approvals yet")


def _delta_order(delta: ReleaseDelta) -> tuple[float, str]:
    return delta.created_at, delta.base_release_id


# -------------------------------------------------------------------------------------------------- protocols


@runtime_checkable
class KeyStore(Protocol):
    """Signing key records keyed by ``(tenant_id, name)``; see the module docstring."""

    def add(self, key: KeyRecord) -> None:
        """Store a new key; :class:`StorageConflictError` (nothing written) when its name is taken in its tenant."""
        ...

    def get(self, name: str, *, tenant_id: str) -> KeyRecord | None: ...

    def list(self, *, tenant_id: str) -> builtins.list[KeyRecord]:
        """The tenant's keys, by name."""
        ...


@runtime_checkable
class ReleaseStore(Protocol):
    """Releases keyed by id, device-class policies by ``(tenant_id, vendor_id, class_id)``; see the module
    docstring."""

    def add(self, release: Release) -> None:
        """Store a new release (no approvals yet) with all its images, in its tenant. :class:`StorageConflictError`
        (nothing written) when its id, or its sequence number within its tenant, vendor and class, is taken."""
        ...

    def get(self, release_id: str, *, tenant_id: str) -> Release | None: ...

    def list(self, *, tenant_id: str) -> builtins.list[Release]:
        """The tenant's releases, newest first (``created_at`` descending, then sequence number descending, then
        id)."""
        ...

    def latest(self, *, tenant_id: str, vendor_id: uuid.UUID, class_id: uuid.UUID) -> Release | None:
        """The release of that vendor and class with the highest sequence number in the tenant."""
        ...

    def add_approval(self, release_id: str, *, tenant_id: str, key_name: str, kid: str, packages: Sequence[str],
                     approved_at: float) -> bool:
        """Record that deployment key ``key_name`` countersigned the release (``packages``: the countersigned
        envelopes' SHA-256 hex, in image order). Whether it was recorded: False when the tenant has no such release
        or that key approved it already (the first approval stays)."""
        ...

    def add_delta(self, delta: ReleaseDelta) -> bool:
        """Store a new differential package (no approvals yet) in ``delta.tenant_id``. Whether it was stored: False
        when that tenant has no release ``delta.release_id`` or a delta of it from ``delta.base_release_id`` exists
        (the first stays)."""
        ...

    def deltas(self, release_id: str, *, tenant_id: str) -> builtins.list[ReleaseDelta]:
        """The release's deltas with their approvals, by creation time then base release id (``[]``: none, or no
        such release in the tenant)."""
        ...

    def get_delta(self, release_id: str, base_release_id: str, *, tenant_id: str) -> ReleaseDelta | None: ...

    def add_delta_approval(self, release_id: str, base_release_id: str, *, tenant_id: str, key_name: str,
                           package_sha256: str) -> bool:
        """Record deployment key ``key_name``'s countersigned copy of a delta (its SHA-256 hex). Whether it was
        recorded: False when the tenant has no such delta or that key approved it already (the first stays)."""
        ...

    def set_class_policy(self, policy: ClassPolicy, *, tenant_id: str, now: float | None) -> ClassPolicy:
        """Create or update the policy of ``policy``'s vendor and class ids; an existing policy keeps the vendor and
        class names it was first stored with and takes ``require_approval``. Returns the stored policy."""
        ...

    def class_policy(self, *, tenant_id: str, vendor_id: uuid.UUID, class_id: uuid.UUID) -> ClassPolicy | None: ...

    def class_policies(self, *, tenant_id: str) -> builtins.list[ClassPolicy]:
        """The tenant's configured classes, by vendor then class name."""
        ...


# ----------------------------------------------------------------------------------------------------- memory


class MemoryKeyStore:
    """Key records in a dict by ``(tenant_id, name)``."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], KeyRecord] = {}
        self._lock = threading.Lock()

    def add(self, key: KeyRecord) -> None:
        with self._lock:
            if (key.tenant_id, key.name) in self._keys:
                raise StorageConflictError(f"a signing key named {key.name!r} exists in tenant {key.tenant_id!r}")
            self._keys[key.tenant_id, key.name] = key

    def get(self, name: str, *, tenant_id: str) -> KeyRecord | None:
        with self._lock:
            return self._keys.get((tenant_id, name))

    def list(self, *, tenant_id: str) -> builtins.list[KeyRecord]:
        with self._lock:
            return sorted((k for k in self._keys.values() if k.tenant_id == tenant_id), key=lambda k: k.name)


class MemoryReleaseStore:
    """Releases in a dict by id, their approvals by id then key name, class policies by tenant, vendor and class;
    one lock makes each call atomic (a sequence number is checked and taken under it)."""

    def __init__(self) -> None:
        self._releases: dict[str, Release] = {}
        self._approvals: dict[str, dict[str, _Approval]] = {}
        self._deltas: dict[str, dict[str, ReleaseDelta]] = {}  # release id -> base release id -> delta
        self._policies: dict[tuple[str, uuid.UUID, uuid.UUID], ClassPolicy] = {}
        self._lock = threading.Lock()

    def _mine(self, release_id: str, tenant_id: str) -> Release | None:
        found = self._releases.get(release_id)
        return found if found is not None and found.tenant_id == tenant_id else None

    def _full(self, release: Release) -> Release:
        return replace(_with_approvals(release, builtins.list(self._approvals[release.id].values())),
                       deltas=tuple(sorted(self._deltas[release.id].values(), key=_delta_order)))

    def add(self, release: Release) -> None:
        _check_new(release)
        with self._lock:
            if release.id in self._releases:
                raise StorageConflictError(f"release id {release.id!r} is taken")
            if any(r.tenant_id == release.tenant_id and r.vendor_id == release.vendor_id
                   and r.class_id == release.class_id and r.sequence_number == release.sequence_number
                   for r in self._releases.values()):
                raise StorageConflictError(f"sequence number {release.sequence_number} of that class is taken")
            self._releases[release.id] = release
            self._approvals[release.id] = {}
            self._deltas[release.id] = {}

    def get(self, release_id: str, *, tenant_id: str) -> Release | None:
        with self._lock:
            found = self._mine(release_id, tenant_id)
            return None if found is None else self._full(found)

    def list(self, *, tenant_id: str) -> builtins.list[Release]:
        with self._lock:
            mine = [self._full(r) for r in self._releases.values() if r.tenant_id == tenant_id]
        return sorted(mine, key=lambda r: (-r.created_at, -r.sequence_number, r.id))

    def latest(self, *, tenant_id: str, vendor_id: uuid.UUID, class_id: uuid.UUID) -> Release | None:
        with self._lock:
            of_class = [r for r in self._releases.values()
                        if r.tenant_id == tenant_id and r.vendor_id == vendor_id and r.class_id == class_id]
            return self._full(max(of_class, key=lambda r: r.sequence_number)) if of_class else None

    def add_approval(self, release_id: str, *, tenant_id: str, key_name: str, kid: str, packages: Sequence[str],
                     approved_at: float) -> bool:
        with self._lock:
            if self._mine(release_id, tenant_id) is None or key_name in self._approvals[release_id]:
                return False
            self._approvals[release_id][key_name] = _Approval(key_name, kid, tuple(packages), approved_at)
            return True

    def add_delta(self, delta: ReleaseDelta) -> bool:
        _check_new_delta(delta)
        with self._lock:
            if (self._mine(delta.release_id, delta.tenant_id) is None
                    or delta.base_release_id in self._deltas[delta.release_id]):
                return False
            self._deltas[delta.release_id][delta.base_release_id] = replace(
                delta, base_digests=dict(delta.base_digests), approved_package_sha256=None)
            return True

    def deltas(self, release_id: str, *, tenant_id: str) -> builtins.list[ReleaseDelta]:
        with self._lock:
            if self._mine(release_id, tenant_id) is None:
                return []
            return sorted(self._deltas[release_id].values(), key=_delta_order)

    def get_delta(self, release_id: str, base_release_id: str, *, tenant_id: str) -> ReleaseDelta | None:
        with self._lock:
            if self._mine(release_id, tenant_id) is None:
                return None
            return self._deltas[release_id].get(base_release_id)

    def add_delta_approval(self, release_id: str, base_release_id: str, *, tenant_id: str, key_name: str,
                           package_sha256: str) -> bool:
        with self._lock:
            delta = self._deltas[release_id].get(base_release_id) if self._mine(release_id, tenant_id) else None
            approved = dict(delta.approved_package_sha256 or {}) if delta is not None else {}
            if delta is None or key_name in approved:
                return False
            approved[key_name] = package_sha256
            self._deltas[release_id][base_release_id] = replace(delta, approved_package_sha256=approved)
            return True

    def set_class_policy(self, policy: ClassPolicy, *, tenant_id: str, now: float | None) -> ClassPolicy:
        key = (tenant_id, policy.vendor_id, policy.class_id)
        with self._lock:
            base = self._policies.get(key, policy)
            stored = replace(base, require_approval=bool(policy.require_approval), configured=True)
            self._policies[key] = stored
            return stored

    def class_policy(self, *, tenant_id: str, vendor_id: uuid.UUID, class_id: uuid.UUID) -> ClassPolicy | None:
        with self._lock:
            return self._policies.get((tenant_id, vendor_id, class_id))

    def class_policies(self, *, tenant_id: str) -> builtins.list[ClassPolicy]:
        with self._lock:
            mine = [p for (t, _, _), p in self._policies.items() if t == tenant_id]
        return sorted(mine, key=lambda p: (p.vendor, p.class_name))


# -------------------------------------------------------------------------------------------------------- SQL


@contextlib.contextmanager
def _storage(what: str) -> Iterator[None]:
    """Database failures as :class:`StorageError`, naming only the failure's type (a statement's parameters may
    hold a sealed private key); an :class:`IntegrityError` passes through for the caller to map."""
    try:
        yield
    except IntegrityError:
        raise
    except SQLAlchemyError as e:
        raise StorageError(f"cannot {what}: {type(e).__name__}") from None


def _key(row: SigningKeyRow) -> KeyRecord:
    return KeyRecord(row.tenant_id, row.name, row.role, row.alg, row.kid, row.public_pem, row.created_at,
                     None if row.sealed_private is None else bytes(row.sealed_private))


class SqlKeyStore:
    """Key records in the ``signing_key`` table; every call commits before it returns."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, key: KeyRecord) -> None:
        row = SigningKeyRow(tenant_id=key.tenant_id, name=key.name, role=key.role, alg=key.alg, kid=key.kid,
                            public_pem=key.public_pem, sealed_private=key.sealed_private, created_at=key.created_at)
        try:
            with _storage("store a signing key"), self.database.session() as session:
                session.add(row)
                session.commit()
        except IntegrityError:
            raise StorageConflictError(f"a signing key named {key.name!r} exists in tenant "
                                       f"{key.tenant_id!r}") from None

    def get(self, name: str, *, tenant_id: str) -> KeyRecord | None:
        with _storage("read a signing key"), self.database.session() as session:
            row = session.get(SigningKeyRow, (tenant_id, name))
            return None if row is None else _key(row)

    def list(self, *, tenant_id: str) -> builtins.list[KeyRecord]:
        with _storage("list signing keys"), self.database.session() as session:
            rows = session.exec(select(SigningKeyRow).where(SigningKeyRow.tenant_id == tenant_id)
                                .order_by(col(SigningKeyRow.name))).all()
            return [_key(r) for r in rows]


def _class_policy(row: DeviceClassRow) -> ClassPolicy:
    return ClassPolicy(row.vendor, uuid.UUID(row.vendor_id), row.class_name, uuid.UUID(row.class_id),
                       row.require_approval, True)


class SqlReleaseStore:
    """Releases in ``release`` + ``release_image``, approvals in ``release_approval``, deltas in ``release_delta`` +
    ``release_delta_approval``, class policies in ``device_class``; the unique ``(tenant_id, vendor_id, class_id,
    sequence_number)`` constraint makes a taken sequence number a conflict. Every call commits before it returns."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def add(self, release: Release) -> None:
        _check_new(release)
        row = ReleaseRow(id=release.id, tenant_id=release.tenant_id, vendor=release.vendor,
                         vendor_id=str(release.vendor_id), class_name=release.class_name,
                         class_id=str(release.class_id), version=release.version,
                         sequence_number=release.sequence_number, package_format=release.package_format,
                         key_name=release.key_name, signed_by=release.signed_by,
                         origin_tenant=release.origin_tenant, created_at=release.created_at)
        images = [ReleaseImageRow(release_id=release.id, position=n, tenant_id=release.tenant_id, name=i.name,
                                  size=i.size, image_sha256=i.image_sha256, package_sha256=i.package_sha256,
                                  package_size=i.package_size, kind=i.kind, version=i.version,
                                  install_after=json.dumps(builtins.list(i.after)) if i.after else None)
                  for n, i in enumerate(release.images)]
        try:
            with _storage("store a release"), self.database.session() as session:
                session.add(row)
                session.flush()  # the release row first: its children follow
                session.add_all(images)
                session.commit()
        except IntegrityError:
            raise StorageConflictError(f"release id {release.id!r} or sequence number {release.sequence_number} "
                                       "of its class is taken") from None

    def get(self, release_id: str, *, tenant_id: str) -> Release | None:
        with _storage("read a release"), self.database.session() as session:
            row = session.get(ReleaseRow, release_id)
            if row is None or row.tenant_id != tenant_id:
                return None
            return self._assemble(session, [row])[0]

    def list(self, *, tenant_id: str) -> builtins.list[Release]:
        with _storage("list releases"), self.database.session() as session:
            rows = session.exec(select(ReleaseRow).where(ReleaseRow.tenant_id == tenant_id).order_by(
                col(ReleaseRow.created_at).desc(), col(ReleaseRow.sequence_number).desc(),
                col(ReleaseRow.id))).all()
            return self._assemble(session, builtins.list(rows))

    def latest(self, *, tenant_id: str, vendor_id: uuid.UUID, class_id: uuid.UUID) -> Release | None:
        with _storage("read a release"), self.database.session() as session:
            top = session.exec(select(func.max(ReleaseRow.sequence_number)).where(
                ReleaseRow.tenant_id == tenant_id, ReleaseRow.vendor_id == str(vendor_id),
                ReleaseRow.class_id == str(class_id))).one()
            if top is None:
                return None
            row = session.exec(select(ReleaseRow).where(
                ReleaseRow.tenant_id == tenant_id, ReleaseRow.vendor_id == str(vendor_id),
                ReleaseRow.class_id == str(class_id), ReleaseRow.sequence_number == top)).first()
            return None if row is None else self._assemble(session, [row])[0]

    def add_approval(self, release_id: str, *, tenant_id: str, key_name: str, kid: str, packages: Sequence[str],
                     approved_at: float) -> bool:
        try:
            with _storage("record an approval"), self.database.session() as session:
                release = session.get(ReleaseRow, release_id)
                if release is None or release.tenant_id != tenant_id:
                    return False
                if session.get(ReleaseApprovalRow, (release_id, key_name)) is not None:
                    return False
                session.add(ReleaseApprovalRow(release_id=release_id, key_name=key_name, tenant_id=tenant_id,
                                               kid=kid, packages=json.dumps(builtins.list(packages)),
                                               approved_at=approved_at))
                session.commit()
        except IntegrityError:  # approved meanwhile by the same key
            return False
        return True

    def add_delta(self, delta: ReleaseDelta) -> bool:
        _check_new_delta(delta)
        try:
            with _storage("store a delta"), self.database.session() as session:
                release = session.get(ReleaseRow, delta.release_id)
                if release is None or release.tenant_id != delta.tenant_id:
                    return False
                if session.get(ReleaseDeltaRow, (delta.release_id, delta.base_release_id)) is not None:
                    return False
                session.add(ReleaseDeltaRow(release_id=delta.release_id, base_release_id=delta.base_release_id,
                                            tenant_id=delta.tenant_id, base_version=delta.base_version,
                                            package_sha256=delta.package_sha256, package_size=delta.package_size,
                                            base_digests=json.dumps(dict(delta.base_digests), sort_keys=True),
                                            created_at=delta.created_at))
                session.commit()
        except IntegrityError:  # stored meanwhile from the same base
            return False
        return True

    def deltas(self, release_id: str, *, tenant_id: str) -> builtins.list[ReleaseDelta]:
        with _storage("list deltas"), self.database.session() as session:
            return self._deltas_of(session, [release_id], tenant_id).get(release_id, [])

    def get_delta(self, release_id: str, base_release_id: str, *, tenant_id: str) -> ReleaseDelta | None:
        return next((d for d in self.deltas(release_id, tenant_id=tenant_id)
                     if d.base_release_id == base_release_id), None)

    def add_delta_approval(self, release_id: str, base_release_id: str, *, tenant_id: str, key_name: str,
                           package_sha256: str) -> bool:
        try:
            with _storage("record a delta approval"), self.database.session() as session:
                delta = session.get(ReleaseDeltaRow, (release_id, base_release_id))
                if delta is None or delta.tenant_id != tenant_id:
                    return False
                if session.get(ReleaseDeltaApprovalRow, (release_id, base_release_id, key_name)) is not None:
                    return False
                session.add(ReleaseDeltaApprovalRow(release_id=release_id, base_release_id=base_release_id,
                                                    key_name=key_name, tenant_id=tenant_id,
                                                    package_sha256=package_sha256))
                session.commit()
        except IntegrityError:  # approved meanwhile by the same key
            return False
        return True

    def set_class_policy(self, policy: ClassPolicy, *, tenant_id: str, now: float | None) -> ClassPolicy:
        key = (tenant_id, str(policy.vendor_id), str(policy.class_id))
        for _attempt in range(2):
            try:
                with _storage("store a class policy"), self.database.session() as session:
                    row = session.get(DeviceClassRow, key)
                    if row is None:
                        row = DeviceClassRow(tenant_id=tenant_id, vendor_id=key[1], class_id=key[2],
                                             vendor=policy.vendor, class_name=policy.class_name)
                    row.require_approval = bool(policy.require_approval)
                    row.updated_at = now
                    session.add(row)
                    session.commit()
                    return _class_policy(row)
            except IntegrityError:
                continue  # created meanwhile: update it
        raise StorageError("cannot store a class policy: it keeps changing")

    def class_policy(self, *, tenant_id: str, vendor_id: uuid.UUID, class_id: uuid.UUID) -> ClassPolicy | None:
        with _storage("read a class policy"), self.database.session() as session:
            row = session.get(DeviceClassRow, (tenant_id, str(vendor_id), str(class_id)))
            return None if row is None else _class_policy(row)

    def class_policies(self, *, tenant_id: str) -> builtins.list[ClassPolicy]:
        with _storage("list class policies"), self.database.session() as session:
            rows = session.exec(select(DeviceClassRow).where(DeviceClassRow.tenant_id == tenant_id).order_by(
                col(DeviceClassRow.vendor), col(DeviceClassRow.class_name))).all()
            return [_class_policy(r) for r in rows]

    @staticmethod
    def _assemble(session: Session, rows: builtins.list[ReleaseRow]) -> builtins.list[Release]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        images: dict[str, builtins.list[ReleaseImage]] = {i: [] for i in ids}
        approvals: dict[str, builtins.list[_Approval]] = {i: [] for i in ids}
        for chunk in chunks(ids):
            for i in session.exec(select(ReleaseImageRow).where(col(ReleaseImageRow.release_id).in_(chunk))
                                  .order_by(col(ReleaseImageRow.position))).all():
                images[i.release_id].append(ReleaseImage(
                    i.name, i.size, i.image_sha256, i.package_sha256, i.package_size, kind=i.kind or "image",
                    version=i.version, after=tuple(json.loads(i.install_after)) if i.install_after else ()))
            for a in session.exec(select(ReleaseApprovalRow)
                                  .where(col(ReleaseApprovalRow.release_id).in_(chunk))).all():
                approvals[a.release_id].append(_Approval(a.key_name, a.kid, tuple(json.loads(a.packages)),
                                                         a.approved_at))
        deltas = SqlReleaseStore._deltas_of(session, ids, None)
        return [_with_approvals(Release(
            id=r.id, tenant_id=r.tenant_id, vendor=r.vendor, vendor_id=uuid.UUID(r.vendor_id),
            class_name=r.class_name, class_id=uuid.UUID(r.class_id), version=r.version,
            sequence_number=r.sequence_number, package_format=r.package_format, created_at=r.created_at,
            signed_by=r.signed_by, approvals=(), images=tuple(images[r.id]), key_name=r.key_name,
            origin_tenant=r.origin_tenant, deltas=tuple(deltas.get(r.id, ()))), approvals[r.id]) for r in rows]

    @staticmethod
    def _deltas_of(session: Session, ids: builtins.list[str], tenant_id: str | None
                   ) -> dict[str, builtins.list[ReleaseDelta]]:
        """The deltas of releases ``ids`` (in ``tenant_id`` when given), with their approvals, in delta order."""
        found: dict[str, builtins.list[ReleaseDelta]] = {}
        for chunk in chunks(ids):
            query = select(ReleaseDeltaRow).where(col(ReleaseDeltaRow.release_id).in_(chunk))
            if tenant_id is not None:
                query = query.where(ReleaseDeltaRow.tenant_id == tenant_id)
            rows = session.exec(query).all()
            if not rows:
                continue
            approved: dict[tuple[str, str], dict[str, str]] = {}
            for a in session.exec(select(ReleaseDeltaApprovalRow)
                                  .where(col(ReleaseDeltaApprovalRow.release_id).in_(chunk))).all():
                approved.setdefault((a.release_id, a.base_release_id), {})[a.key_name] = a.package_sha256
            for d in rows:
                found.setdefault(d.release_id, []).append(ReleaseDelta(
                    d.release_id, d.tenant_id, d.base_release_id, d.base_version, d.package_sha256, d.package_size,
                    d.created_at, dict(json.loads(d.base_digests)),
                    approved.get((d.release_id, d.base_release_id)) or None))
        for listed in found.values():
            listed.sort(key=_delta_order)
        return found

"""SQL tables of the releases (sqlmodel). Same invariants as :mod:`lwm2m_server.storage.tables`: tenant-scoped,
portable SQL, times as float seconds.

* ``signing_key``: named signing keys per tenant; ``sealed_private`` is the vault's AES-GCM blob of the PKCS#8 DER
  private key (AAD binds tenant, name and role), never the key in the clear, or NULL for a public-only key (an OEM's
  key whose private part stays on the OEM's premises);
* ``release`` + ``release_image``: a release and its images (content-addressed blobs, by SHA-256 hex); the sequence
  number is unique per ``(tenant_id, vendor_id, class_id)``, which is what makes its assignment atomic;
* ``release.origin_tenant``: for a release imported pre-signed, the tenant whose public key signed it (the OEM);
* ``release_image.kind``, ``.version``, ``.install_after`` (nullable, since 0005): a component of a ``system``
  release (``image`` or ``data``, its own version, JSON list of the components installed before it); NULL for the
  images of older releases (read as ``image``, no version, no dependency). In a system release every image row holds
  the one envelope's ``package_sha256`` and ``package_size``;
* ``release_approval``: one row per deployment key that countersigned a release (``packages``: JSON list of the
  countersigned envelopes' SHA-256 hex, in image order);
* ``release_delta``: a differential package of a system release from an earlier one of its class (one per
  ``(release_id, base_release_id)``; ``base_digests``: JSON object, component name -> SHA-256 hex of the base image
  its delta applies to); ``release_delta_approval``: a deployment key's countersigned copy of it;
* ``device_class``: per-class policy (whether campaigns need a deployment approval).

The schema is made and upgraded by the migrations (:mod:`lwm2m_server.storage.migrations`): a change to a table
here comes with a new revision there.
"""

# No ``from __future__ import annotations`` here: sqlmodel reads the field annotations at class creation.

from sqlalchemy import BigInteger, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = ["DeviceClassRow", "ReleaseApprovalRow", "ReleaseDeltaApprovalRow", "ReleaseDeltaRow", "ReleaseImageRow",
           "ReleaseRow", "SigningKeyRow"]


class SigningKeyRow(SQLModel, table=True):
    """One named signing key of a tenant: public part in the clear, private part sealed by the vault."""

    __tablename__ = "signing_key"

    tenant_id: str = Field(default="default", primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=16)
    alg: str = Field(max_length=16)
    kid: str = Field(max_length=64, index=True)  # hex of firmware_object.suit.keys.key_id
    public_pem: str = Field(sa_type=Text)
    sealed_private: bytes | None = Field(default=None, sa_type=LargeBinary, nullable=True)  # None: public-only
    created_at: float


class ReleaseRow(SQLModel, table=True):
    """One release: what it is for (vendor, class), its version and sequence number, how it was packaged."""

    __tablename__ = "release"
    __table_args__ = (
        UniqueConstraint("tenant_id", "vendor_id", "class_id", "sequence_number", name="uq_release_sequence"),
        Index("ix_release_tenant_created", "tenant_id", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=32)
    tenant_id: str = Field(default="default", max_length=64)
    vendor: str = Field(sa_type=Text)
    vendor_id: str = Field(max_length=36)
    class_name: str = Field(sa_type=Text)
    class_id: str = Field(max_length=36)
    version: str = Field(sa_type=Text)
    sequence_number: int = Field(sa_type=BigInteger)
    package_format: str = Field(max_length=16)
    key_name: str | None = Field(default=None, max_length=64)  # the release key (None: opaque)
    signed_by: str | None = Field(default=None, max_length=64)  # its kid, hex
    origin_tenant: str | None = Field(default=None, max_length=64)  # imported: the tenant of the signing key
    created_at: float


class ReleaseImageRow(SQLModel, table=True):
    """One image of a release and its package (envelope, or the image itself when opaque)."""

    __tablename__ = "release_image"

    release_id: str = Field(primary_key=True, max_length=32)
    position: int = Field(primary_key=True)
    tenant_id: str = Field(default="default", max_length=64)
    name: str = Field(sa_type=Text)
    size: int = Field(sa_type=BigInteger)
    image_sha256: str = Field(max_length=64)
    package_sha256: str = Field(max_length=64)
    package_size: int = Field(sa_type=BigInteger)
    kind: str | None = Field(default=None, max_length=16)  # system component: image or data (None: image)
    version: str | None = Field(default=None, sa_type=Text)  # system component's version
    install_after: str | None = Field(default=None, sa_type=Text)  # JSON list of component names (None: [])


class ReleaseApprovalRow(SQLModel, table=True):
    """A deployment key's countersignature of a release."""

    __tablename__ = "release_approval"

    release_id: str = Field(primary_key=True, max_length=32)
    key_name: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(default="default", max_length=64)
    kid: str = Field(max_length=64)
    packages: str = Field(sa_type=Text)  # JSON list of SHA-256 hex, one per image position
    approved_at: float


class ReleaseDeltaRow(SQLModel, table=True):
    """A differential package of a system release from an earlier release of its class."""

    __tablename__ = "release_delta"

    release_id: str = Field(primary_key=True, max_length=32)
    base_release_id: str = Field(primary_key=True, max_length=32)
    tenant_id: str = Field(default="default", max_length=64)
    base_version: str = Field(sa_type=Text)
    package_sha256: str = Field(max_length=64)
    package_size: int = Field(sa_type=BigInteger)
    base_digests: str = Field(sa_type=Text)  # JSON object: component name -> base image SHA-256 hex
    created_at: float


class ReleaseDeltaApprovalRow(SQLModel, table=True):
    """A deployment key's countersignature of a delta package."""

    __tablename__ = "release_delta_approval"

    release_id: str = Field(primary_key=True, max_length=32)
    base_release_id: str = Field(primary_key=True, max_length=32)
    key_name: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(default="default", max_length=64)
    package_sha256: str = Field(max_length=64)


class DeviceClassRow(SQLModel, table=True):
    """The policy of one device class (identified by vendor and class UUIDs)."""

    __tablename__ = "device_class"

    tenant_id: str = Field(default="default", primary_key=True, max_length=64)
    vendor_id: str = Field(primary_key=True, max_length=36)
    class_id: str = Field(primary_key=True, max_length=36)
    vendor: str = Field(sa_type=Text)
    class_name: str = Field(sa_type=Text)
    require_approval: bool = False
    updated_at: float | None = None

"""Releases and signing keys on real SQLite (tmp_path) with a real vault and real blob files.

Envelopes are checked with :func:`firmware_object.suit.verify_envelope` against the keys' public parts, as a device
would; the database files are searched for the private keys in every plain form.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from bootstrap.vault import SealedDataError, Vault
from firmware_object.errors import DeltaBaseMismatchError, SignatureError
from firmware_object.suit import (
    ReleaseManifest,
    build_envelope,
    generate_private_key,
    key_id,
    private_key_to_pem,
    public_key_to_pem,
    verify_envelope,
)
from firmware_object.suit.components import apply_component, verify_system_envelope
from firmware_object.suit.keys import PrivateKey
from lwm2m_server.core.errors import CoapCode, InvalidRequestError, NotFoundError, StorageError
from lwm2m_server.fota.releases import (
    BlobCorruptedError,
    DuplicateSigningKeyError,
    FileBlobStore,
    InvalidReleaseError,
    InvalidSigningKeyError,
    KeyRoleError,
    PublicOnlyKeyError,
    Release,
    ReleaseRollbackError,
    Releases,
    SigningKey,
    SigningKeys,
    SystemComponent,
    UnknownBlobError,
    UnknownReleaseError,
    UnknownSigningKeyError,
    UntrustedReleaseError,
    class_matches,
    class_uuid,
    vendor_uuid,
    verify_signed,
)
from lwm2m_server.storage.database import DB_FILENAME, Database
from lwm2m_server.storage.migrations import alembic_config
from lwm2m_server.storage.release_store import SqlReleaseStore
from lwm2m_server.tenancy.model import Role, TenantKind
from lwm2m_server.tenancy.service import system_principal
from tests.harness import running_server

MAX = 1 << 20
IMAGE = bytes(range(256)) * 8
NOW = 1_700_000_000.0
TENANT = "default"  # the tenant of every call that names none other


@dataclass
class Env:
    folder: Path
    database: Database
    vault: Vault
    keys: SigningKeys
    blobs: FileBlobStore
    releases: Releases


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    folder = tmp_path / "data"
    database = Database.for_data_dir(folder)
    vault = Vault.generate()
    keys = SigningKeys.over(database, vault)
    blobs = FileBlobStore(folder / "blobs")
    try:
        yield Env(folder, database, vault, keys, blobs, Releases(SqlReleaseStore(database), blobs, keys))
    finally:
        database.close()


def verify(env: Env, package: bytes, *key_names: str, release: Release | None = None) -> int:
    anchors = [env.keys.get(name, tenant_id=TENANT).public_key() for name in key_names]
    verified = verify_envelope(package, trust_anchors=anchors, max_size=MAX,
                               vendor_id=release.vendor_id if release else None,
                               class_id=release.class_id if release else None)
    return verified.sequence_number


def private_forms(key: PrivateKey) -> list[bytes]:
    """The private key as DER, PEM and its raw secret value."""
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.private_numbers().private_value.to_bytes(32, "big")
    else:
        raw = key.private_bytes_raw()
    return [der, private_key_to_pem(key), raw, raw.hex().encode()]


# -------------------------------------------------------------------------------------------------- keys


def test_keys_are_created_listed_and_opened_per_tenant(env: Env) -> None:
    rel = env.keys.create("oem", "release", now=NOW, tenant_id=TENANT)
    dep = env.keys.create("ops", "deployment", alg="EdDSA", now=NOW + 1, tenant_id=TENANT)
    other = env.keys.create("oem", "release", tenant_id="acme", now=NOW)
    assert (rel.role, rel.alg, dep.alg) == ("release", "ES256", "EdDSA")
    assert re.fullmatch(r"[0-9a-f]{16}", rel.kid) and rel.kid != other.kid
    assert [k.name for k in env.keys.list(tenant_id=TENANT)] == ["oem", "ops"]
    assert [k.name for k in env.keys.list(tenant_id="acme")] == ["oem"]
    assert env.keys.get("ops", tenant_id=TENANT) == dep
    for key in (rel, dep):
        private = env.keys.private_key(key.name, tenant_id=TENANT)
        assert key_id(private).hex() == key.kid == key_id(key.public_key()).hex()
    assert key_id(env.keys.private_key("oem", tenant_id="acme")).hex() == other.kid
    assert "PRIVATE" not in repr(rel) + json.dumps(rel.as_dict())


def test_key_errors_carry_their_meaning(env: Env) -> None:
    env.keys.create("oem", "release", now=NOW, tenant_id=TENANT)
    with pytest.raises(DuplicateSigningKeyError) as dup:
        env.keys.create("oem", "deployment", now=NOW, tenant_id=TENANT)
    assert isinstance(dup.value, InvalidRequestError)
    with pytest.raises(UnknownSigningKeyError) as unknown:
        env.keys.get("nope", tenant_id=TENANT)
    assert isinstance(unknown.value, NotFoundError)
    with pytest.raises(UnknownSigningKeyError):
        env.keys.get("oem", tenant_id="acme")  # scoped by tenant
    with pytest.raises(KeyRoleError):
        env.keys.get_or_create("oem", "deployment", now=NOW, tenant_id=TENANT)
    with pytest.raises(KeyRoleError):
        env.keys.private_key("oem", role="attestation", tenant_id=TENANT)
    for bad in ("", "-x", "a b", "x" * 65, "é"):
        with pytest.raises(InvalidSigningKeyError):
            env.keys.create(bad, "release", now=NOW, tenant_id=TENANT)
    with pytest.raises(InvalidSigningKeyError):
        env.keys.create("k", "admin", now=NOW, tenant_id=TENANT)
    with pytest.raises(InvalidSigningKeyError):
        env.keys.create("k", "release", alg="RS256", now=NOW, tenant_id=TENANT)
    with pytest.raises(InvalidSigningKeyError):
        env.keys.import_pem("k", "release", b"-----BEGIN NOTHING-----", now=NOW, tenant_id=TENANT)


def test_get_or_create_makes_the_key_once(env: Env) -> None:
    first = env.keys.get_or_create("attest", "attestation", now=NOW, tenant_id=TENANT)
    again = env.keys.get_or_create("attest", "attestation", now=NOW + 5, tenant_id=TENANT)
    assert first == again and len(env.keys.list(tenant_id=TENANT)) == 1


def test_imported_pem_key_signs_as_itself(env: Env) -> None:
    private = generate_private_key("ed25519")
    key = env.keys.import_pem("legacy", "release", private_key_to_pem(private), now=NOW, tenant_id=TENANT)
    assert key.kid == key_id(private).hex() and key.alg == "EdDSA"
    release = env.releases.create([("fw.bin", IMAGE)], vendor="acme.example", class_name="sensor", version="1",
                                  key="legacy", now=NOW, tenant_id=TENANT)
    verify_envelope(env.releases.package(release.id, tenant_id=TENANT), trust_anchors=[private.public_key()],
                    max_size=MAX)


def test_private_keys_never_reach_the_database_in_the_clear(env: Env) -> None:
    names = [("oem", "release", "ES256"), ("ops", "deployment", "EdDSA"), ("att", "attestation", "ES256")]
    for name, role, alg in names:
        env.keys.create(name, role, alg=alg, now=NOW, tenant_id=TENANT)
    imported = generate_private_key("es256")
    env.keys.import_pem("imp", "release", private_key_to_pem(imported), now=NOW, tenant_id=TENANT)
    env.releases.create([("fw.bin", IMAGE)], vendor="v", class_name="c", version="1", key="oem", now=NOW,
                        tenant_id=TENANT)
    forms = [f for name, _, _ in names for f in private_forms(env.keys.private_key(name, tenant_id=TENANT))]
    forms += private_forms(imported)
    env.database.close()  # checkpoint the WAL; the files are read with it and without it
    files = [p for p in env.folder.iterdir() if p.is_file() and p.name.startswith(DB_FILENAME)]
    files += [p for p in (env.folder / "blobs").rglob("*") if p.is_file()]
    assert any(p.name == DB_FILENAME for p in files)
    for path in files:
        blob = path.read_bytes()
        for form in forms:
            assert form not in blob, f"a private key in {path.name}"


def test_a_sealed_key_is_bound_to_its_tenant_name_and_role(env: Env) -> None:
    env.keys.create("a", "release", now=NOW, tenant_id=TENANT)
    env.keys.create("b", "release", now=NOW, tenant_id=TENANT)
    db_file = env.folder / DB_FILENAME
    with sqlite3.connect(db_file) as conn:  # an attacker with the database swaps two sealed keys
        sealed = dict(conn.execute("SELECT name, sealed_private FROM signing_key").fetchall())
        conn.execute("UPDATE signing_key SET sealed_private = ? WHERE name = 'a'", (sealed["b"],))
        conn.execute("UPDATE signing_key SET role = 'deployment' WHERE name = 'b'")
    for name in ("a", "b"):
        with pytest.raises(SealedDataError):
            env.keys.private_key(name, tenant_id=TENANT)
    with pytest.raises(SealedDataError):  # and another vault opens nothing
        SigningKeys.over(env.database, Vault.generate()).private_key("a", tenant_id=TENANT)


# ------------------------------------------------------------------------------------------------- blobs


def test_blobs_are_content_addressed_private_and_checked(env: Env) -> None:
    sha = env.blobs.put(b"hello")
    path = env.folder / "blobs" / "sha256" / sha
    assert env.blobs.get(sha) == b"hello" and env.blobs.has(sha)
    assert env.blobs.put(b"hello") == sha
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    path.write_bytes(b"jello")
    with pytest.raises(BlobCorruptedError):
        env.blobs.get(sha)
    assert env.blobs.put(b"hello") == sha and env.blobs.get(sha) == b"hello"  # repaired
    with pytest.raises(UnknownBlobError):
        env.blobs.get("0" * 64)
    assert not env.blobs.has("0" * 64)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63):
        with pytest.raises(InvalidRequestError):
            env.blobs.get(bad)


@pytest.fixture(scope="module")
def blob_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("blob-property")


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4096))
def test_blob_round_trip_property(blob_dir: Path, data: bytes) -> None:
    blobs = FileBlobStore(blob_dir)
    sha = blobs.put(data)
    assert blobs.get(sha) == data and blobs.has(sha)


# ---------------------------------------------------------------------------------------------- releases


def test_release_is_signed_into_a_verifiable_envelope(env: Env) -> None:
    release = env.releases.create([("fw.bin", IMAGE)], vendor="acme.example", class_name="sensor",
                                  version="2.0.0", now=NOW, tenant_id=TENANT)
    assert re.fullmatch(r"rel-[a-z2-7]{10}", release.id)
    assert release.vendor_id == uuid.uuid5(uuid.NAMESPACE_DNS, "acme.example")
    assert release.class_id == uuid.uuid5(release.vendor_id, "sensor")
    key = env.keys.get("release", tenant_id=TENANT)  # made on first use
    assert key.role == "release" and release.signed_by == key.kid and release.key_name == "release"
    (image,) = release.images
    package = env.releases.package(release.id, tenant_id=TENANT)
    assert image.package_sha256 == env.blobs.put(package) and image.package_size == len(package)
    assert image.image_sha256 == env.blobs.put(IMAGE) and image.size == len(IMAGE)
    assert env.releases.image(release.id, tenant_id=TENANT) == IMAGE
    verified = verify_envelope(package, trust_anchors=[key.public_key()], max_size=MAX,
                               vendor_id=release.vendor_id, class_id=release.class_id)
    assert (verified.sequence_number, verified.version, verified.payload) == (1, "2.0.0", IMAGE)
    assert image.approved_package_sha256 is None and release.approvals == ()
    assert env.releases.get(release.id, tenant_id=TENANT) == release
    assert json.loads(json.dumps(release.as_dict()))["vendor_id"] == str(release.vendor_id)


def test_uuid_vendor_and_class_are_taken_as_given(env: Env) -> None:
    vendor, klass = uuid.uuid4(), uuid.uuid4()
    release = env.releases.create([("fw.bin", IMAGE)], vendor=str(vendor), class_name=str(klass), version="1",
                                  now=NOW, tenant_id=TENANT)
    assert (release.vendor_id, release.class_id) == (vendor, klass)
    verify(env, env.releases.package(release.id, tenant_id=TENANT), "release", release=release)


def test_sequence_numbers_increase_per_class_and_are_independent(env: Env) -> None:
    def make(vendor: str, klass: str, tenant: str = "default") -> int:
        return env.releases.create([("fw.bin", IMAGE)], vendor=vendor, class_name=klass, version="v",
                                   tenant_id=tenant, now=NOW).sequence_number

    assert [make("acme.example", "sensor") for _ in range(3)] == [1, 2, 3]
    assert make("acme.example", "gateway") == 1
    assert make("other.example", "sensor") == 1
    assert make("acme.example", "sensor", tenant="t2") == 1
    assert make("acme.example", "sensor") == 4
    vid = vendor_uuid("acme.example")  # the same class named by its UUIDs
    assert make(str(vid), str(class_uuid(vid, "sensor"))) == 5
    for release in env.releases.list(tenant_id=TENANT):
        package = env.releases.package(release.id, tenant_id=TENANT)
        assert verify(env, package, "release", release=release) == release.sequence_number


def test_concurrent_releases_of_one_class_get_distinct_sequence_numbers(env: Env) -> None:
    env.keys.create("release", "release", now=NOW, tenant_id=TENANT)  # before the race (its creation: elsewhere)
    barrier = threading.Barrier(6, timeout=20)

    def make(i: int) -> int:
        barrier.wait()
        return env.releases.create([("fw.bin", IMAGE + bytes([i]))], vendor="acme.example", class_name="sensor",
                                   version=f"1.{i}", now=NOW + i, tenant_id=TENANT).sequence_number

    with ThreadPoolExecutor(6) as pool:
        numbers = list(pool.map(make, range(6), timeout=60))
    assert sorted(numbers) == [1, 2, 3, 4, 5, 6]
    assert len({r.id for r in env.releases.list(tenant_id=TENANT)}) == 6


def test_several_images_one_package_each(env: Env) -> None:
    release = env.releases.create([("app.bin", IMAGE), ("radio.bin", IMAGE[::-1])], vendor="acme.example",
                                  class_name="sensor", version="3", now=NOW, tenant_id=TENANT)
    assert [i.name for i in release.images] == ["app.bin", "radio.bin"]
    for image, data in zip(release.images, (IMAGE, IMAGE[::-1]), strict=True):
        package = env.releases.package(release.id, image.name, tenant_id=TENANT)
        assert verify_envelope(package, trust_anchors=[env.keys.get("release", tenant_id=TENANT).public_key()],
                               max_size=MAX).payload == data
    with pytest.raises(InvalidReleaseError):
        env.releases.package(release.id, tenant_id=TENANT)  # which one?
    with pytest.raises(UnknownReleaseError):
        env.releases.package(release.id, "nope.bin", tenant_id=TENANT)


def test_opaque_release_is_the_image_itself(env: Env) -> None:
    release = env.releases.create([("vendor.img", IMAGE)], vendor="third.example", class_name="meter",
                                  version="9", package_format="opaque", now=NOW, tenant_id=TENANT)
    assert release.signed_by is None and release.package_format == "opaque"
    assert env.releases.package(release.id, tenant_id=TENANT) == IMAGE
    assert release.images[0].package_sha256 == release.images[0].image_sha256
    assert env.keys.list(tenant_id=TENANT) == []  # nothing was signed, no key was made
    env.keys.create("ops", "deployment", now=NOW, tenant_id=TENANT)
    with pytest.raises(InvalidReleaseError):
        env.releases.approve(release.id, "ops", now=NOW, tenant_id=TENANT)
    with pytest.raises(InvalidReleaseError):
        env.releases.create([("x", IMAGE)], vendor="v", class_name="c", version="1", package_format="opaque",
                            key="ops", now=NOW, tenant_id=TENANT)


def test_bad_releases_are_refused(env: Env) -> None:
    ok = {"vendor": "acme.example", "class_name": "sensor", "version": "1", "now": NOW}
    env.keys.create("ops", "deployment", now=NOW, tenant_id=TENANT)
    cases: list[tuple[list[tuple[str, bytes]], dict[str, object], type[Exception]]] = [
        ([], {}, InvalidReleaseError),
        ([("fw.bin", b"")], {}, InvalidReleaseError),
        ([("a", IMAGE), ("a", IMAGE)], {}, InvalidReleaseError),
        ([("../x", IMAGE)], {}, InvalidReleaseError),
        ([("fw.bin", IMAGE)], {"version": ""}, InvalidReleaseError),
        ([("fw.bin", IMAGE)], {"vendor": ""}, InvalidReleaseError),
        ([("fw.bin", IMAGE)], {"package_format": "zip"}, InvalidReleaseError),
        ([("fw.bin", IMAGE)], {"key": "nope"}, UnknownSigningKeyError),
        ([("fw.bin", IMAGE)], {"key": "ops"}, KeyRoleError),
    ]
    for images, changes, error in cases:
        with pytest.raises(error):
            env.releases.create(images, **{**ok, **changes}, tenant_id=TENANT)  # type: ignore[arg-type]
    assert env.releases.list(tenant_id=TENANT) == []


def test_oversized_image_is_refused(env: Env) -> None:
    from lwm2m_server.fota.releases import MAX_IMAGE_SIZE

    with pytest.raises(InvalidReleaseError):
        env.releases.create([("big", bytes(MAX_IMAGE_SIZE + 1))], vendor="v", class_name="c", version="1", now=NOW,
                            tenant_id=TENANT)


def test_get_and_list_are_scoped_and_newest_first(env: Env) -> None:
    a = env.releases.create([("fw", IMAGE)], vendor="v.example", class_name="c", version="1", now=NOW, tenant_id=TENANT)
    b = env.releases.create([("fw", IMAGE)], vendor="v.example", class_name="d", version="1", now=NOW + 10,
                            tenant_id=TENANT)
    c = env.releases.create([("fw", IMAGE)], vendor="v.example", class_name="c", version="2", tenant_id="t2",
                            now=NOW + 5)
    assert [r.id for r in env.releases.list(tenant_id=TENANT)] == [b.id, a.id]
    assert [r.id for r in env.releases.list(tenant_id="t2")] == [c.id]
    with pytest.raises(UnknownReleaseError) as e:
        env.releases.get(c.id, tenant_id=TENANT)
    assert isinstance(e.value, NotFoundError)
    for bad in ("rel-zzzzzzzzzz", "nope", ""):
        with pytest.raises(UnknownReleaseError):
            env.releases.get(bad, tenant_id=TENANT)


def test_approval_countersigns_each_envelope_once_per_key(env: Env) -> None:
    release = env.releases.create([("app.bin", IMAGE), ("radio.bin", IMAGE[::-1])], vendor="acme.example",
                                  class_name="sensor", version="2", now=NOW, tenant_id=TENANT)
    ops = env.keys.create("ops", "deployment", now=NOW, tenant_id=TENANT)
    env.keys.create("ops2", "deployment", alg="EdDSA", now=NOW, tenant_id=TENANT)
    with pytest.raises(KeyRoleError):
        env.releases.approve(release.id, "release", now=NOW, tenant_id=TENANT)
    with pytest.raises(UnknownSigningKeyError):
        env.releases.approve(release.id, "nope", now=NOW, tenant_id=TENANT)
    with pytest.raises(UnknownReleaseError):
        env.releases.package(release.id, "app.bin", approved_by="ops", tenant_id=TENANT)

    approved = env.releases.approve(release.id, "ops", now=NOW + 1, tenant_id=TENANT)
    assert approved.approvals == (("ops", ops.kid, NOW + 1),)
    again = env.releases.approve(release.id, "ops", now=NOW + 2, tenant_id=TENANT)
    assert again == approved  # idempotent
    both = env.releases.approve(release.id, "ops2", now=NOW + 3, tenant_id=TENANT)
    assert [a[0] for a in both.approvals] == ["ops", "ops2"]
    for image in both.images:
        assert image.approved_package_sha256 is not None and set(image.approved_package_sha256) == {"ops", "ops2"}
        original = env.releases.package(release.id, image.name, tenant_id=TENANT)
        for key in ("ops", "ops2"):
            package = env.releases.package(release.id, image.name, approved_by=key, tenant_id=TENANT)
            assert env.blobs.put(package) == image.approved_package_sha256[key]
            assert verify(env, package, "release", key, release=release) == release.sequence_number
            assert verify(env, package, "release") == release.sequence_number  # devices without the key
        with pytest.raises(SignatureError):
            verify(env, original, "release", "ops")
        with pytest.raises(SignatureError):
            verify(env, env.releases.package(release.id, image.name, approved_by="ops", tenant_id=TENANT), "release",
                   "ops2")
    assert env.releases.get(release.id, tenant_id=TENANT) == both


def test_approval_refuses_a_package_the_release_key_did_not_sign(env: Env) -> None:
    release = env.releases.create([("fw", IMAGE)], vendor="v", class_name="c", version="1", now=NOW, tenant_id=TENANT)
    env.keys.create("ops", "deployment", now=NOW, tenant_id=TENANT)
    path = env.folder / "blobs" / "sha256" / release.images[0].package_sha256
    original = path.read_bytes()
    path.write_bytes(b"\x00" + original[1:])  # a flipped byte: caught by the digest
    with pytest.raises(BlobCorruptedError) as e:
        env.releases.approve(release.id, "ops", now=NOW, tenant_id=TENANT)
    assert isinstance(e.value, StorageError)
    path.write_bytes(original)
    # a well-stored envelope by another key, swapped in by whoever can write the database: caught by the signature
    rogue = generate_private_key("es256")
    manifest = ReleaseManifest.for_image(IMAGE, sequence_number=1, vendor_id=release.vendor_id,
                                         class_id=release.class_id, version="1")
    swapped = env.blobs.put(build_envelope(manifest, [rogue], image=IMAGE))
    with sqlite3.connect(env.folder / DB_FILENAME) as conn:
        conn.execute("UPDATE release_image SET package_sha256 = ? WHERE release_id = ?", (swapped, release.id))
    with pytest.raises(InvalidReleaseError, match="does not verify"):
        env.releases.approve(release.id, "ops", now=NOW, tenant_id=TENANT)
    assert env.releases.get(release.id, tenant_id=TENANT).approvals == ()


def test_class_policy_is_stored_per_class(env: Env) -> None:
    default = env.releases.class_policy("sensor", "acme.example", tenant_id=TENANT)
    assert (default.require_approval, default.configured) == (False, False)
    policy = env.releases.set_class_policy("sensor", "acme.example", require_approval=True, now=NOW, tenant_id=TENANT)
    assert (policy.require_approval, policy.configured) == (True, True)
    vid = vendor_uuid("acme.example")
    by_uuid = env.releases.class_policy(str(class_uuid(vid, "sensor")), str(vid), tenant_id=TENANT)
    assert by_uuid.require_approval and by_uuid.class_id == policy.class_id
    assert not env.releases.class_policy("gateway", "acme.example", tenant_id=TENANT).require_approval
    assert not env.releases.class_policy("sensor", "acme.example", tenant_id="t2").require_approval
    env.releases.set_class_policy("sensor", "acme.example", require_approval=False, tenant_id=TENANT)
    assert not env.releases.class_policy("sensor", "acme.example", tenant_id=TENANT).require_approval
    assert [p.class_name for p in env.releases.class_policies(tenant_id=TENANT)] == ["sensor"]


def test_stores_survive_a_reopen(env: Env, tmp_path: Path) -> None:
    release = env.releases.create([("fw", IMAGE)], vendor="v", class_name="c", version="1", now=NOW, tenant_id=TENANT)
    env.database.close()
    with Database.for_data_dir(env.folder) as database:
        keys = SigningKeys.over(database, env.vault)
        releases = Releases.over(database, env.folder, keys)
        assert releases.get(release.id, tenant_id=TENANT) == release
        keys.create("ops", "deployment", now=NOW, tenant_id=TENANT)
        approved = releases.approve(release.id, "ops", now=NOW, tenant_id=TENANT)
        assert approved.approvals[0][0] == "ops"
        assert releases.create([("fw", IMAGE)], vendor="v", class_name="c", version="2",
                               now=time.time(), tenant_id=TENANT).sequence_number == 2


# ---------------------------------------------------------------------------------------- name -> UUID


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60).filter(lambda s: not any(ord(c) < 32 or ord(c) == 127 for c in s)),
       st.text(min_size=1, max_size=60).filter(lambda s: not any(ord(c) < 32 or ord(c) == 127 for c in s)))
def test_names_map_to_uuid5_and_uuids_to_themselves(vendor: str, klass: str) -> None:
    vid = vendor_uuid(vendor)
    try:
        assert vid == uuid.UUID(vendor)
    except ValueError:
        assert vid == uuid.uuid5(uuid.NAMESPACE_DNS, vendor)
    cid = class_uuid(vid, klass)
    try:
        assert cid == uuid.UUID(klass)
    except ValueError:
        assert cid == uuid.uuid5(vid, klass)
    assert vendor_uuid(str(vid)) == vid and class_uuid(vid, str(cid)) == cid


# ------------------------------------------------------- public-only keys and pre-signed imports (issue 13)


OEM_VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
OEM_CLASS = uuid.uuid5(OEM_VENDOR, "sensor")


def oem_envelope(key: PrivateKey, *, seq: int = 5, version: str | None = "3.1.0", image: bytes = IMAGE,
                 vendor_id: uuid.UUID = OEM_VENDOR, class_id: uuid.UUID = OEM_CLASS) -> bytes:
    """An envelope as an OEM makes it on its own premises (what `scratch firmware sign` does)."""
    manifest = ReleaseManifest.for_image(image, sequence_number=seq, vendor_id=vendor_id, class_id=class_id,
                                         version=version)
    return build_envelope(manifest, [key], image=image)


@pytest.fixture
def oem_key() -> PrivateKey:
    return generate_private_key("es256")


@pytest.fixture
def oem(env: Env, oem_key: PrivateKey) -> SigningKey:
    """The OEM's public key, registered in the OEM's own tenant."""
    return env.keys.add_public("oem-release", "release", public_key_to_pem(oem_key.public_key()), tenant_id="oem",
                               now=NOW)


def test_a_public_only_key_verifies_but_never_signs(env: Env, oem: SigningKey, oem_key: PrivateKey) -> None:
    assert not oem.has_private and oem.as_dict()["has_private"] is False
    assert oem.kid == key_id(oem_key).hex() and env.keys.get("oem-release", tenant_id="oem") == oem
    assert env.keys.create("own", "release", tenant_id="oem", now=NOW).has_private
    with pytest.raises(PublicOnlyKeyError) as refused:
        env.keys.private_key("oem-release", tenant_id="oem")
    assert refused.value.coap_code == CoapCode.FORBIDDEN and "public-only" in str(refused.value)
    assert "BEGIN" not in str(refused.value) and oem.kid not in str(refused.value)
    with pytest.raises(PublicOnlyKeyError):
        env.releases.create([("fw", IMAGE)], vendor="v", class_name="c", version="1", key="oem-release",
                            tenant_id="oem", now=NOW)
    env.keys.add_public("ops-pub", "deployment", public_key_to_pem(generate_private_key("ed25519").public_key()),
                        tenant_id="oem", now=NOW)
    own = env.releases.create([("fw", IMAGE)], vendor="v", class_name="c", version="1", key="own", tenant_id="oem",
                              now=NOW)
    with pytest.raises(PublicOnlyKeyError):
        env.releases.approve(own.id, "ops-pub", tenant_id="oem", now=NOW)
    with pytest.raises(DuplicateSigningKeyError):
        env.keys.add_public("oem-release", "release", oem.public_pem, tenant_id="oem", now=NOW)
    for bad in (b"not a key", private_key_to_pem(oem_key), b""):
        with pytest.raises(InvalidSigningKeyError) as e:
            env.keys.add_public("x", "release", bad, tenant_id="oem", now=NOW)
        assert "BEGIN" not in str(e.value)
    with pytest.raises(InvalidSigningKeyError):
        env.keys.add_public("x", "admin", oem.public_pem, tenant_id="oem", now=NOW)
    raw = b"".join(p.read_bytes() for p in env.folder.iterdir() if p.name.startswith(DB_FILENAME))
    assert all(form not in raw for form in private_forms(oem_key))


def test_import_stores_the_envelope_exactly_as_the_oem_signed_it(env: Env, oem: SigningKey,
                                                                 oem_key: PrivateKey) -> None:
    envelope = oem_envelope(oem_key)
    verified = verify_signed([("app.suit", envelope)], oem)
    assert (verified.vendor_id, verified.class_id, verified.sequence_number) == (OEM_VENDOR, OEM_CLASS, 5)
    assert class_matches(verified.vendor_id, verified.class_id, "sensor")
    assert class_matches(verified.vendor_id, verified.class_id, str(OEM_CLASS))
    assert not class_matches(verified.vendor_id, verified.class_id, "gateway")
    assert not class_matches(verified.vendor_id, verified.class_id, "")
    assert env.releases.list(tenant_id="op") == []  # verifying stores nothing

    release = env.releases.store_import(verified, tenant_id="op", origin_tenant="oem", now=NOW)
    assert (release.vendor_id, release.class_id, release.sequence_number) == (OEM_VENDOR, OEM_CLASS, 5)
    assert (release.vendor, release.class_name) == (str(OEM_VENDOR), str(OEM_CLASS))  # no names known here
    assert (release.version, release.package_format, release.key_name, release.signed_by) == (
        "3.1.0", "suit", "oem-release", oem.kid)
    assert release.origin_tenant == "oem" and release.as_dict()["origin_tenant"] == "oem"
    assert env.releases.package(release.id, tenant_id="op") == envelope
    assert env.releases.image(release.id, tenant_id="op") == IMAGE
    assert verify_envelope(envelope, trust_anchors=[oem.public_key()], max_size=MAX,
                           vendor_id=OEM_VENDOR, class_id=OEM_CLASS).payload == IMAGE
    with pytest.raises(UnknownReleaseError):
        env.releases.get(release.id, tenant_id="oem")  # stored in the operator's tenant only
    assert env.releases.get(release.id, tenant_id="op") == release

    # known names are kept: a class policy of the tenant names these UUIDs
    env.releases.set_class_policy("sensor", str(OEM_VENDOR), require_approval=True, tenant_id="op2")
    named = env.releases.import_signed([("app.suit", envelope)], key=oem, tenant_id="op2", origin_tenant="oem",
                                       now=NOW)
    assert (named.vendor, named.class_name) == (str(OEM_VENDOR), "sensor")
    assert env.releases.class_policy(named.class_name, named.vendor, tenant_id="op2").require_approval


def test_import_without_origin_uses_a_key_of_the_same_tenant(env: Env) -> None:
    """The one-company case: OEM and operator in one tenant, with today's vault-held release key."""
    key = env.keys.create("release", "release", tenant_id="both", now=NOW)
    envelope = oem_envelope(env.keys.private_key("release", tenant_id="both"), seq=1, version=None)
    release = env.releases.import_signed([("fw", envelope)], key=key, tenant_id="both", now=NOW)
    assert (release.origin_tenant, release.version, release.sequence_number) == (None, "1", 1)
    nxt = env.releases.create([("fw", IMAGE)], vendor=str(OEM_VENDOR), class_name=str(OEM_CLASS), version="2",
                              tenant_id="both", now=NOW)
    assert nxt.sequence_number == 2  # an import takes its place in the class's sequence
    with pytest.raises(InvalidReleaseError, match="not a key of tenant"):
        env.releases.store_import(verify_signed([("fw", oem_envelope(env.keys.private_key(
            "release", tenant_id="both"), seq=9))], key), tenant_id="other", now=NOW)


def test_import_refuses_what_the_key_did_not_sign(env: Env, oem: SigningKey, oem_key: PrivateKey) -> None:
    rogue = generate_private_key("es256")
    with pytest.raises(UntrustedReleaseError, match="signature check failed") as refused:
        env.releases.import_signed([("app.suit", oem_envelope(rogue))], key=oem, tenant_id="op", origin_tenant="oem",
                                   now=NOW)
    assert refused.value.coap_code == CoapCode.FORBIDDEN and isinstance(refused.value, InvalidReleaseError)
    assert "app.suit" in str(refused.value) and "BEGIN" not in str(refused.value)

    good = oem_envelope(oem_key, version="3.1.0", image=bytes(range(200, 256)) * 40)
    manifest_tampered = good.replace(b"3.1.0", b"3.1.9")
    payload_tampered = good.replace(bytes(range(200, 256)), bytes(range(199, 255)), 1)
    assert manifest_tampered != good and payload_tampered != good and len(payload_tampered) == len(good)
    for tampered, check in ((manifest_tampered, "manifest digest"), (payload_tampered, "image digest and size")):
        with pytest.raises(UntrustedReleaseError, match=f"{check} check failed"):
            env.releases.import_signed([("app.suit", tampered)], key=oem, tenant_id="op", origin_tenant="oem",
                                       now=NOW)
    with pytest.raises(InvalidReleaseError, match="CBOR shape check failed"):
        env.releases.import_signed([("app.suit", b"\xd8\x6b" + good[2:40])], key=oem, tenant_id="op",
                                   origin_tenant="oem", now=NOW)
    assert env.releases.list(tenant_id="op") == []


def test_import_refuses_mixed_or_unfit_packages(env: Env, oem: SigningKey, oem_key: PrivateKey) -> None:
    def refused(packages: list[tuple[str, bytes]], match: str) -> None:
        with pytest.raises(InvalidReleaseError, match=match):
            env.releases.import_signed(packages, key=oem, tenant_id="op", origin_tenant="oem", now=NOW)

    refused([("a", oem_envelope(oem_key, seq=5)), ("b", oem_envelope(oem_key, seq=6))], "another vendor, class")
    refused([("a", oem_envelope(oem_key)), ("b", oem_envelope(oem_key, class_id=uuid.uuid4()))], "another vendor")
    refused([("a", oem_envelope(oem_key)), ("a", oem_envelope(oem_key))], "appears twice")
    refused([], "at least one package")
    uri_manifest = ReleaseManifest.for_image(IMAGE, sequence_number=5, vendor_id=OEM_VENDOR, class_id=OEM_CLASS,
                                             image_uri="coaps://oem.example/fw")
    refused([("a", build_envelope(uri_manifest, [oem_key], image=None))], "not integrated")
    deployment = env.keys.create("ops", "deployment", tenant_id="op", now=NOW)
    with pytest.raises(KeyRoleError):
        verify_signed([("a", oem_envelope(oem_key))], deployment)
    two = env.releases.import_signed([("a", oem_envelope(oem_key)), ("b", oem_envelope(oem_key, image=b"b" * 99))],
                                     key=oem, tenant_id="op", origin_tenant="oem", now=NOW)
    assert [(i.name, i.size) for i in two.images] == [("a", len(IMAGE)), ("b", 99)]


def test_import_refuses_a_rollback(env: Env, oem: SigningKey, oem_key: PrivateKey) -> None:
    first = env.releases.import_signed([("fw", oem_envelope(oem_key, seq=5))], key=oem, tenant_id="op",
                                       origin_tenant="oem", now=NOW)
    for seq in (5, 4, 0):
        with pytest.raises(ReleaseRollbackError, match=f"sequence number {seq} is not above 5") as refused:
            env.releases.import_signed([("fw", oem_envelope(oem_key, seq=seq))], key=oem, tenant_id="op",
                                       origin_tenant="oem", now=NOW)
        assert refused.value.coap_code == CoapCode.CONFLICT
    assert env.releases.list(tenant_id="op") == [first]
    later = env.releases.import_signed([("fw", oem_envelope(oem_key, seq=6, version="3.2.0"))], key=oem,
                                       tenant_id="op", origin_tenant="oem", now=NOW + 1)
    assert later.sequence_number == 6
    # another tenant has its own history of the class
    assert env.releases.import_signed([("fw", oem_envelope(oem_key, seq=1))], key=oem, tenant_id="op2",
                                      origin_tenant="oem", now=NOW).sequence_number == 1


def test_concurrent_imports_of_one_sequence_number_store_one(env: Env, oem: SigningKey, oem_key: PrivateKey) -> None:
    envelope = oem_envelope(oem_key, seq=7)

    def attempt(_: int) -> str:
        try:
            return env.releases.import_signed([("fw", envelope)], key=oem, tenant_id="op", origin_tenant="oem",
                                              now=NOW).id
        except ReleaseRollbackError:
            return "refused"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(attempt, range(4)))
    assert outcomes.count("refused") == 3 and len(env.releases.list(tenant_id="op")) == 1


def test_an_imported_release_is_countersigned_so_devices_get_both_signatures(
        env: Env, oem: SigningKey, oem_key: PrivateKey) -> None:
    release = env.releases.import_signed([("fw", oem_envelope(oem_key))], key=oem, tenant_id="op",
                                         origin_tenant="oem", now=NOW)
    ops = env.keys.create("ops", "deployment", tenant_id="op", now=NOW)
    approved = env.releases.approve(release.id, "ops", tenant_id="op", now=NOW + 1)
    assert [a[0] for a in approved.approvals] == ["ops"]
    package = env.releases.package(release.id, tenant_id="op", approved_by="ops")
    both = verify_envelope(package, trust_anchors=[oem.public_key(), ops.public_key()], max_size=MAX,
                           vendor_id=OEM_VENDOR, class_id=OEM_CLASS)
    assert (both.sequence_number, both.payload) == (5, IMAGE)
    with pytest.raises(SignatureError):
        verify_envelope(env.releases.package(release.id, tenant_id="op"),
                        trust_anchors=[oem.public_key(), ops.public_key()], max_size=MAX)


def test_an_older_database_gains_public_only_keys_and_origin_tenants(tmp_path: Path, oem_key: PrivateKey) -> None:
    folder = tmp_path / "old"
    folder.mkdir(mode=0o700)
    with sqlite3.connect(folder / DB_FILENAME) as db:  # the tables as they shipped before issue 13
        db.executescript("""
            CREATE TABLE signing_key (tenant_id VARCHAR(64) NOT NULL, name VARCHAR(64) NOT NULL,
                role VARCHAR(16) NOT NULL, alg VARCHAR(16) NOT NULL, kid VARCHAR(64) NOT NULL, public_pem TEXT NOT NULL,
                sealed_private BLOB NOT NULL, created_at FLOAT NOT NULL, PRIMARY KEY (tenant_id, name));
            CREATE INDEX ix_signing_key_kid ON signing_key (kid);
            CREATE TABLE release (id VARCHAR(32) NOT NULL, tenant_id VARCHAR(64) NOT NULL, vendor TEXT NOT NULL,
                vendor_id VARCHAR(36) NOT NULL, class_name TEXT NOT NULL, class_id VARCHAR(36) NOT NULL,
                version TEXT NOT NULL, sequence_number BIGINT NOT NULL, package_format VARCHAR(16) NOT NULL,
                key_name VARCHAR(64), signed_by VARCHAR(64), created_at FLOAT NOT NULL, PRIMARY KEY (id),
                CONSTRAINT uq_release_sequence UNIQUE (tenant_id, vendor_id, class_id, sequence_number));
            INSERT INTO signing_key VALUES ('default', 'old', 'release', 'ES256', 'k', 'pem', x'00', 1.0);
            INSERT INTO release VALUES ('rel-aaaaaaaaaa', 'default', 'v', '0833a41f-253f-4b5e-b836-cbc9d20de52c', 'c',
                'ded2aef3-8818-46ef-87a9-758835a6c97a', '1', 1, 'opaque', NULL,
                NULL, 1.0);
        """)
    db.close()
    with Database.for_data_dir(folder) as database:
        keys = SigningKeys.over(database, Vault.generate())
        oem = keys.add_public("oem", "release", public_key_to_pem(oem_key.public_key()), tenant_id="oem", now=NOW)
        releases = Releases.over(database, folder, keys)
        imported = releases.import_signed([("fw", oem_envelope(oem_key))], key=oem, tenant_id=TENANT,
                                          origin_tenant="oem", now=NOW)
    with Database.for_data_dir(folder) as database:  # the upgrade ran once; this open leaves the tables alone
        keys = SigningKeys.over(database, Vault.generate())
        assert [(k.name, k.has_private) for k in keys.list(tenant_id=TENANT)] == [("old", True)]
        assert keys.list(tenant_id="oem") == [oem]
        releases = Releases.over(database, folder, keys)
        assert releases.get(imported.id, tenant_id=TENANT).origin_tenant == "oem"
        assert releases.get("rel-aaaaaaaaaa", tenant_id=TENANT).origin_tenant is None
    with sqlite3.connect(folder / DB_FILENAME) as db:
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert "ix_signing_key_kid" in indexes and "signing_key_old" not in tables


# ------------------------------------------------------------------------------------------ system releases and deltas

MIB = 1 << 20
SYSTEM_MAX = 4 * MIB


def system_parts(seed: int, *, changed: int = 0, extra: bool = False) -> list[SystemComponent]:
    """app: 1 MiB (``changed`` bytes differ from seed's base in the middle); radio: 64 KiB after app; config: data."""
    app = bytearray(random.Random(seed).randbytes(MIB))
    if changed:
        app[MIB // 2:MIB // 2 + changed] = random.Random(seed + 1).randbytes(changed)
    parts = [SystemComponent("app", bytes(app)),
             SystemComponent("radio", random.Random(seed + 2).randbytes(64 << 10), version="7.0", after=("app",)),
             SystemComponent("config", b'{"interval": 60}\n', kind="data", after=("app", "radio"))]
    if extra:
        parts.append(SystemComponent("model", b"\x42" * 2048, kind="data"))
    return parts


def make_system(env: Env, version: str, parts: list[SystemComponent], *, class_name: str = "sensor",
                tenant_id: str = TENANT) -> Release:
    return env.releases.create_system(parts, vendor="acme.example", class_name=class_name, version=version,
                                      tenant_id=tenant_id, now=NOW)


def test_a_system_release_is_one_envelope_of_every_component(env: Env) -> None:
    parts = system_parts(1)
    release = make_system(env, "2.0.0", parts)
    assert release.package_format == "system" and release.key_name == "release"
    assert [(i.name, i.kind, i.version, i.after, i.size) for i in release.images] == [
        ("app", "image", "2.0.0", (), MIB), ("radio", "image", "7.0", ("app",), 64 << 10),
        ("config", "data", "2.0.0", ("app", "radio"), len(parts[2].data))]
    package = env.releases.package(release.id, tenant_id=TENANT)
    assert {(i.package_sha256, i.package_size) for i in release.images} == {(env.blobs.put(package), len(package))}
    assert env.releases.package(release.id, "radio", tenant_id=TENANT) == package
    assert env.releases.image(release.id, "config", tenant_id=TENANT) == parts[2].data
    anchor = env.keys.get("release", tenant_id=TENANT).public_key()
    verified = verify_system_envelope(package, trust_anchors=[anchor], max_size=SYSTEM_MAX,
                                      vendor_id=release.vendor_id, class_id=release.class_id)
    assert (verified.sequence_number, verified.version) == (1, "2.0.0")
    assert [(c.name, c.kind, c.version, c.after, c.delta) for c in verified.components] == [
        ("app", "image", "2.0.0", (), None), ("radio", "image", "7.0", ("app",), None),
        ("config", "data", "2.0.0", ("app", "radio"), None)]
    assert [apply_component(c, None) for c in verified.components] == [p.data for p in parts]
    assert env.releases.get(release.id, tenant_id=TENANT) == release
    shown = json.loads(json.dumps(release.as_dict()))
    assert [i["kind"] for i in shown["images"]] == ["image", "image", "data"] and shown["deltas"] == []
    # the next release of the class, whatever its format, takes the next sequence number
    assert env.releases.create([("fw", IMAGE)], vendor="acme.example", class_name="sensor", version="x", now=NOW,
                               tenant_id=TENANT).sequence_number == 2


def test_bad_system_releases_are_refused(env: Env) -> None:
    one = SystemComponent("app", IMAGE)
    cases: list[tuple[list[SystemComponent], str]] = [
        ([], "at least one component"),
        ([SystemComponent("App.bin", IMAGE)], "component name 'App.bin'"),
        ([one, SystemComponent("app", IMAGE[::-1])], "'app' appears twice"),
        ([SystemComponent("radio", IMAGE, after=("app",)), one], "after 'app', which is not an earlier component"),
        ([SystemComponent("app", IMAGE, after=("app",))], "after 'app'"),
        ([SystemComponent("app", IMAGE, kind="firmware")], "kind 'firmware'"),
        ([SystemComponent("app", b"")], "'app' is empty"),
        ([SystemComponent("app", IMAGE, version="")], "version"),
    ]
    for parts, message in cases:
        with pytest.raises(InvalidReleaseError, match=re.escape(message)):
            make_system(env, "1", parts)
    with pytest.raises(InvalidReleaseError, match="create_system"):
        env.releases.create([("fw", IMAGE)], vendor="v", class_name="c", version="1", package_format="system",
                            now=NOW, tenant_id=TENANT)
    assert env.releases.list(tenant_id=TENANT) == []


def test_a_delta_carries_a_small_change_in_a_fifth_of_the_bytes(env: Env) -> None:
    base_parts = system_parts(7)
    new_parts = system_parts(7, changed=4096, extra=True)
    base = make_system(env, "1.0.0", base_parts)
    release = make_system(env, "1.1.0", new_parts)
    delta = env.releases.add_delta(release.id, base_release_id=base.id, tenant_id=TENANT, now=NOW + 5)
    full = release.images[0].package_size
    assert delta.package_size <= full // 5, (delta.package_size, full)
    assert (delta.release_id, delta.base_release_id, delta.base_version, delta.created_at) == (
        release.id, base.id, "1.0.0", NOW + 5)
    assert delta.base_digests == {i.name: i.image_sha256 for i in base.images}  # model: not in the base
    package = env.releases.delta_package(release.id, base.id, tenant_id=TENANT)
    assert (env.blobs.put(package), len(package)) == (delta.package_sha256, delta.package_size)
    anchor = env.keys.get("release", tenant_id=TENANT).public_key()
    verified = verify_system_envelope(package, trust_anchors=[anchor], max_size=SYSTEM_MAX,
                                      installed_sequence=base.sequence_number, vendor_id=release.vendor_id,
                                      class_id=release.class_id)
    assert (verified.sequence_number, verified.version) == (release.sequence_number, "1.1.0")
    installed = {p.name: p.data for p in base_parts}
    assert [c.delta is not None for c in verified.components] == [True, True, True, False]
    assert [apply_component(c, installed.get(c.name)) for c in verified.components] == [p.data for p in new_parts]
    assert verified.component("app").delta.base_version == "1.0.0"  # type: ignore[union-attr]
    with pytest.raises(DeltaBaseMismatchError):  # a device whose app is not the base's
        apply_component(verified.component("app"), new_parts[0].data)

    again = env.releases.add_delta(release.id, base_release_id=base.id, tenant_id=TENANT, now=NOW + 9)
    assert again == delta  # idempotent: the first stays
    assert env.releases.deltas(release.id, tenant_id=TENANT) == [delta]
    stored = env.releases.get(release.id, tenant_id=TENANT)
    assert stored.deltas == (delta,)
    assert stored.as_dict()["deltas"][0]["saving_percent"] >= 80


def test_deltas_that_cannot_be_made_are_refused(env: Env) -> None:
    parts = [SystemComponent("app", IMAGE)]
    first = make_system(env, "1", parts)
    second = make_system(env, "2", parts)
    other_class = make_system(env, "1", parts, class_name="gateway")
    other_tenant = make_system(env, "1", parts, tenant_id="acme")
    plain = env.releases.create([("fw", IMAGE)], vendor="acme.example", class_name="sensor", version="3", now=NOW,
                                tenant_id=TENANT)

    def refused(target: str, base: str, error: type[Exception], message: str) -> None:
        with pytest.raises(error, match=re.escape(message)):
            env.releases.add_delta(target, base_release_id=base, tenant_id=TENANT, now=NOW)

    refused(first.id, second.id, InvalidReleaseError, "is not older than")
    refused(first.id, first.id, InvalidReleaseError, "is not older than")
    refused(second.id, other_class.id, InvalidReleaseError, "another vendor or class")
    refused(second.id, other_tenant.id, UnknownReleaseError, "no release")
    refused(plain.id, first.id, InvalidReleaseError, "is suit, not system")
    refused(second.id, "rel-zzzzzzzzzz", UnknownReleaseError, "no release")
    with pytest.raises(UnknownReleaseError):
        env.releases.deltas(other_tenant.id, tenant_id=TENANT)
    with pytest.raises(UnknownReleaseError, match="no delta"):
        env.releases.delta_package(second.id, first.id, tenant_id=TENANT)
    # a release whose key has no private part here: imported, or signed by a public-only key
    env.keys.add_public("oem", "release", env.keys.get("release", tenant_id=TENANT).public_pem, tenant_id=TENANT,
                        now=NOW)
    for record in (dataclasses.replace(second, id="rel-importedsa", sequence_number=10, origin_tenant="oem-tenant"),
                   dataclasses.replace(second, id="rel-importedsb", sequence_number=11, key_name="oem")):
        env.releases.store.add(record)
        refused(record.id, first.id, InvalidReleaseError, "private part")
    assert env.releases.deltas(second.id, tenant_id=TENANT) == []


def test_approvals_countersign_deltas_made_before_and_after(env: Env) -> None:
    base = make_system(env, "1", system_parts(3))
    middle = make_system(env, "2", system_parts(3, changed=100))
    release = make_system(env, "3", system_parts(3, changed=300, extra=True))
    env.keys.create("ops", "deployment", now=NOW, tenant_id=TENANT)
    env.keys.create("ops2", "deployment", alg="EdDSA", now=NOW, tenant_id=TENANT)
    early = env.releases.add_delta(release.id, base_release_id=base.id, tenant_id=TENANT, now=NOW)
    approved = env.releases.approve(release.id, "ops", now=NOW + 1, tenant_id=TENANT)
    (image_approved,) = {tuple(sorted((i.approved_package_sha256 or {}).items())) for i in approved.images}
    assert [k for k, _ in image_approved] == ["ops"]  # every component: the one countersigned envelope
    late = env.releases.add_delta(release.id, base_release_id=middle.id, tenant_id=TENANT, now=NOW + 2)
    assert set(late.approved_package_sha256 or {}) == {"ops"}  # countersigned at once by the key that approved
    env.releases.approve(release.id, "ops2", now=NOW + 3, tenant_id=TENANT)
    anchors = {name: env.keys.get(name, tenant_id=TENANT).public_key() for name in ("release", "ops", "ops2")}
    for delta in env.releases.deltas(release.id, tenant_id=TENANT):
        assert set(delta.approved_package_sha256 or {}) == {"ops", "ops2"}
        assert delta.base_release_id in (early.base_release_id, late.base_release_id)
        original = env.releases.delta_package(release.id, delta.base_release_id, tenant_id=TENANT)
        for key in ("ops", "ops2"):
            package = env.releases.delta_package(release.id, delta.base_release_id, approved_by=key,
                                                 tenant_id=TENANT)
            assert env.blobs.put(package) == (delta.approved_package_sha256 or {})[key]
            verify_system_envelope(package, trust_anchors=[anchors["release"], anchors[key]], max_size=SYSTEM_MAX)
        with pytest.raises(SignatureError):
            verify_system_envelope(original, trust_anchors=[anchors["release"], anchors["ops"]], max_size=SYSTEM_MAX)
        with pytest.raises(UnknownReleaseError, match="no approval"):
            env.releases.delta_package(release.id, delta.base_release_id, approved_by="nope", tenant_id=TENANT)
    full = env.releases.package(release.id, approved_by="ops2", tenant_id=TENANT)
    verify_system_envelope(full, trust_anchors=[anchors["release"], anchors["ops2"]], max_size=SYSTEM_MAX)


def test_an_image_row_of_revision_0004_reads_as_a_plain_image(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    Database.for_data_dir(folder).close()
    engine = create_engine(f"sqlite:///{folder / DB_FILENAME}")
    try:
        with engine.begin() as conn:  # back to 0004 (0005's downgrade), then a release as 0004 stored it
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0004")
            conn.execute(text("INSERT INTO release (id, tenant_id, vendor, vendor_id, class_name, class_id, version, "
                              "sequence_number, package_format, created_at) VALUES ('rel-aaaaaaaaaa', 'default', "
                              "'v', :v, 'c', :c, '1', 1, 'opaque', 1.0)"),
                         {"v": str(uuid.uuid4()), "c": str(uuid.uuid4())})
            conn.execute(text("INSERT INTO release_image (release_id, position, tenant_id, name, size, image_sha256, "
                              "package_sha256, package_size) VALUES ('rel-aaaaaaaaaa', 0, 'default', 'fw', 3, "
                              ":sha, :sha, 3)"), {"sha": "a" * 64})
    finally:
        engine.dispose()
    with Database.for_data_dir(folder) as database:  # upgraded to head again
        release = SqlReleaseStore(database).get("rel-aaaaaaaaaa", tenant_id=TENANT)
        assert release is not None and release.deltas == ()
        assert [(i.kind, i.version, i.after) for i in release.images] == [("image", None, ())]


async def test_the_api_makes_a_system_release_and_its_delta(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    async with running_server(data, api_port=0, vault=Vault.generate()) as srv:  # a vault: releases and keys
        assert srv.tenancy is not None and srv.api_url
        root = system_principal("test")
        srv.tenancy.create_tenant("acme", kind=TenantKind.OPERATOR, by=root)
        tokens = {role: srv.tenancy.create_token(tenant_id="acme", roles=frozenset({role}), by=root,
                                                 expires_days=1, name=str(role))[1]
                  for role in (Role.RELEASE_MANAGER, Role.OPERATOR)}

        def client(role: Role) -> httpx.AsyncClient:
            return httpx.AsyncClient(base_url=srv.api_url, timeout=60,
                                     headers={"Authorization": f"Bearer {tokens[role]}"})

        def form(version: str, parts: list[SystemComponent]) -> dict[str, Any]:
            return {"data": {"vendor": "acme.example", "class_name": "sensor", "version": version,
                             "package_format": "system",
                             "components": json.dumps([{"name": p.name, "kind": p.kind, "version": p.version,
                                                        "after": list(p.after)} for p in parts])},
                    "files": [("file", (f"{p.name}.bin", p.data)) for p in parts]}

        base_parts, new_parts = system_parts(11), system_parts(11, changed=4096)
        async with client(Role.OPERATOR) as operator:
            r = await operator.post("/api/releases", **form("1.0", base_parts))
            assert r.status_code == 403, r.text
        async with client(Role.RELEASE_MANAGER) as rm:
            r = await rm.post("/api/releases", **form("1.0", base_parts))
            assert r.status_code == 201, r.text
            base = r.json()
            r = await rm.post("/api/releases", **form("1.1", new_parts))
            assert r.status_code == 201, r.text
            release = r.json()
            assert release["package_format"] == "system" and [
                (c["name"], c["kind"], c["version"], c["after"]) for c in release["images"]] == [
                ("app", "image", "1.1", []), ("radio", "image", "7.0", ["app"]),
                ("config", "data", "1.1", ["app", "radio"])]
            r = await rm.post("/api/releases", **form("2", new_parts[:1]) | {"data": {
                "vendor": "v", "class_name": "c", "version": "2", "package_format": "system",
                "components": json.dumps([{"name": "app"}, {"name": "radio"}])}})
            assert r.status_code == 400 and "2 component(s) for 1 file(s)" in r.json()["error"], r.text
            async with client(Role.OPERATOR) as operator:
                r = await operator.post(f"/api/releases/{release['id']}/deltas", json={"base_release": base["id"]})
                assert r.status_code == 403, r.text
            r = await rm.post(f"/api/releases/{release['id']}/deltas", json={"base_release": base["id"]})
            assert r.status_code == 200, r.text
            delta = r.json()
            assert delta["base_release"] == base["id"] and delta["saving_percent"] >= 80
            assert delta["package_size"] <= delta["full_package_size"] // 5
            r = await rm.post(f"/api/releases/{base['id']}/deltas", json={"base_release": release["id"]})
            assert r.status_code == 400 and "not older" in r.json()["error"], r.text
            shown = (await rm.get(f"/api/releases/{release['id']}")).json()
            assert [d["base_release"] for d in shown["deltas"]] == [base["id"]]
            assert (await rm.get(f"/api/releases/{release['id']}/deltas")).json() == shown["deltas"]

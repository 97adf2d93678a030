"""One contract for every release store and key store: the memory stores and the SQL stores (a real SQLite file).

A new backend joins by adding a case to the ``backend`` fixture; it must pass every test here unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lwm2m_server.core.errors import StorageError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.release_store import (
    ClassPolicy,
    KeyRecord,
    KeyStore,
    MemoryKeyStore,
    MemoryReleaseStore,
    Release,
    ReleaseDelta,
    ReleaseImage,
    ReleaseStore,
    SqlKeyStore,
    SqlReleaseStore,
)
from lwm2m_server.storage.stores import StorageConflictError
from tests.store_backends import BACKENDS, SQL_BACKENDS, database_opener, shared_database

T0 = 1_700_000_000.125
VENDOR = uuid.uuid5(uuid.NAMESPACE_DNS, "acme.example")
CLASS = uuid.uuid5(VENDOR, "sensor")
OTHER_CLASS = uuid.uuid5(VENDOR, "gateway")
SEALED = b"\x00sealed\xffblob" * 4


class Backend:
    """A key store and a release store, and ``second()``: the same data seen through another connection (SQL:
    another engine on the same file, so only what was committed shows; memory: the stores themselves)."""

    def __init__(self, kind: str, open_database: Callable[[], Database] | None) -> None:
        self.kind = kind
        self._open_database = open_database
        self.dbs: list[Database] = []
        self.keys, self.releases = self._open()

    def _open(self) -> tuple[KeyStore, ReleaseStore]:
        if self._open_database is None:
            return MemoryKeyStore(), MemoryReleaseStore()
        db = self._open_database()
        self.dbs.append(db)
        return SqlKeyStore(db), SqlReleaseStore(db)

    def second(self) -> tuple[KeyStore, ReleaseStore]:
        return (self.keys, self.releases) if self.kind == "memory" else self._open()

    def close(self) -> None:
        for db in self.dbs:
            db.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    b = Backend(kind, None if kind == "memory" else database_opener(request, kind, tmp_path / "data"))
    yield b
    b.close()


def make_key(name: str = "oem", tenant: str = "acme", sealed: bytes | None = SEALED, **changes: object) -> KeyRecord:
    record = KeyRecord(tenant_id=tenant, name=name, role="release", alg="ES256", kid="ab" * 16,
                       public_pem="-----BEGIN PUBLIC KEY-----\nMFk=\n-----END PUBLIC KEY-----\n", created_at=T0,
                       sealed_private=sealed)
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def make_release(rid: str = "rel-aaaaaaaaaa", tenant: str = "acme", seq: int = 1, **changes: object) -> Release:
    images = (ReleaseImage("app.bin", 2048, "1" * 64, "2" * 64, 2300), ReleaseImage("radio.bin", 10, "3" * 64,
                                                                                      "4" * 64, 250))
    record = Release(id=rid, tenant_id=tenant, vendor="acme.example", vendor_id=VENDOR, class_name="sensor",
                     class_id=CLASS, version="2.0.0-ß", sequence_number=seq, package_format="suit", created_at=T0,
                     signed_by="ab" * 16, approvals=(), images=images, key_name="oem", origin_tenant=None)
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------------------------------- keys


def test_the_backends_are_the_protocols(backend: Backend) -> None:
    assert isinstance(backend.keys, KeyStore) and isinstance(backend.releases, ReleaseStore)


def test_a_key_comes_back_as_stored_in_its_tenant_only(backend: Backend) -> None:
    sealed, public_only = make_key("oem"), make_key("pub", sealed=None, role="deployment", alg="EdDSA")
    backend.keys.add(sealed)
    backend.keys.add(public_only)
    keys, _ = backend.second()
    assert keys.get("oem", tenant_id="acme") == sealed
    assert keys.get("pub", tenant_id="acme") == public_only and public_only.sealed_private is None
    assert keys.get("oem", tenant_id="other") is None and keys.get("nope", tenant_id="acme") is None
    assert keys.list(tenant_id="other") == []


def test_keys_are_listed_by_name(backend: Backend) -> None:
    for name in ("m", "a", "z"):
        backend.keys.add(make_key(name))
    backend.keys.add(make_key("b", tenant="other"))
    assert [k.name for k in backend.keys.list(tenant_id="acme")] == ["a", "m", "z"]
    assert [k.name for k in backend.keys.list(tenant_id="other")] == ["b"]


def test_a_key_name_is_never_reused_in_a_tenant(backend: Backend) -> None:
    first = make_key("oem")
    backend.keys.add(first)
    with pytest.raises(StorageConflictError) as caught:
        backend.keys.add(make_key("oem", sealed=b"another", role="deployment"))
    assert "another" not in str(caught.value) and SEALED.hex() not in str(caught.value)
    assert backend.keys.get("oem", tenant_id="acme") == first  # unchanged
    backend.keys.add(make_key("oem", tenant="other"))  # the same name in another tenant is another key
    assert len(backend.keys.list(tenant_id="other")) == 1


def test_a_key_record_does_not_show_its_sealed_part() -> None:
    assert "sealed" not in repr(make_key()) and repr(SEALED) not in repr(make_key())


# ---------------------------------------------------------------------------------------------------- releases


def test_a_release_comes_back_as_stored_in_its_tenant_only(backend: Backend) -> None:
    release = make_release(origin_tenant="oem-tenant")
    backend.releases.add(release)
    _, releases = backend.second()
    assert releases.get(release.id, tenant_id="acme") == release
    assert releases.get(release.id, tenant_id="other") is None
    assert releases.get("rel-bbbbbbbbbb", tenant_id="acme") is None
    assert releases.list(tenant_id="other") == []


def test_an_opaque_release_round_trips(backend: Backend) -> None:
    release = make_release(package_format="opaque", signed_by=None, key_name=None,
                           images=(ReleaseImage("vendor.img", 7, "5" * 64, "5" * 64, 7),))
    backend.releases.add(release)
    assert backend.releases.get(release.id, tenant_id="acme") == release


def test_releases_are_listed_newest_first(backend: Backend) -> None:
    a = make_release("rel-aaaaaaaaaa", seq=1, created_at=T0)
    b = make_release("rel-bbbbbbbbbb", seq=2, created_at=T0 + 10)
    c = make_release("rel-cccccccccc", seq=3, created_at=T0 + 10)  # same time: higher sequence first
    d = make_release("rel-dddddddddd", seq=1, created_at=T0 + 10, class_id=OTHER_CLASS)  # then by id
    for r in (a, b, c, d):
        backend.releases.add(r)
    backend.releases.add(make_release("rel-eeeeeeeeee", tenant="other"))
    assert [r.id for r in backend.releases.list(tenant_id="acme")] == [c.id, b.id, d.id, a.id]


def test_a_taken_sequence_number_is_a_conflict_and_writes_nothing(backend: Backend) -> None:
    first = make_release("rel-aaaaaaaaaa", seq=4)
    backend.releases.add(first)
    with pytest.raises(StorageConflictError):
        backend.releases.add(make_release("rel-bbbbbbbbbb", seq=4, version="other"))
    with pytest.raises(StorageConflictError):  # a taken id, whatever its tenant
        backend.releases.add(make_release("rel-aaaaaaaaaa", tenant="other", seq=9))
    _, releases = backend.second()
    assert releases.list(tenant_id="acme") == [first] and releases.list(tenant_id="other") == []
    assert releases.get("rel-bbbbbbbbbb", tenant_id="acme") is None
    # the same number in another class or tenant is free
    backend.releases.add(make_release("rel-cccccccccc", seq=4, class_id=OTHER_CLASS))
    backend.releases.add(make_release("rel-dddddddddd", tenant="other", seq=4))


def test_a_new_release_carries_no_approvals(backend: Backend) -> None:
    with pytest.raises(StorageError):
        backend.releases.add(make_release(approvals=(("ops", "cd" * 16, T0),)))
    assert backend.releases.list(tenant_id="acme") == []


def test_latest_is_the_highest_sequence_number_of_the_class_in_the_tenant(backend: Backend) -> None:
    assert backend.releases.latest(tenant_id="acme", vendor_id=VENDOR, class_id=CLASS) is None
    for rid, seq in (("rel-aaaaaaaaaa", 3), ("rel-bbbbbbbbbb", 7), ("rel-cccccccccc", 5)):
        backend.releases.add(make_release(rid, seq=seq))
    backend.releases.add(make_release("rel-dddddddddd", seq=99, class_id=OTHER_CLASS))
    backend.releases.add(make_release("rel-eeeeeeeeee", tenant="other", seq=50))
    latest = backend.releases.latest(tenant_id="acme", vendor_id=VENDOR, class_id=CLASS)
    assert latest is not None and latest.id == "rel-bbbbbbbbbb" and latest.sequence_number == 7
    assert backend.releases.latest(tenant_id="acme", vendor_id=CLASS, class_id=CLASS) is None


def test_concurrent_adds_of_one_sequence_number_store_exactly_one(backend: Backend) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def add(i: int) -> None:
        start.wait()
        try:
            backend.releases.add(make_release(f"rel-{'abcdef'[i]}aaaaaaaaa", seq=1))
            outcome = "stored"
        except StorageConflictError:
            outcome = "conflict"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["conflict"] * 5 + ["stored"]
    assert len(backend.releases.list(tenant_id="acme")) == 1


# --------------------------------------------------------------------------------------------------- approvals


def test_approvals_are_recorded_once_per_key_in_approval_order(backend: Backend) -> None:
    release = make_release()
    backend.releases.add(release)
    assert backend.releases.add_approval(release.id, tenant_id="acme", key_name="ops2", kid="cd" * 16,
                                         packages=["6" * 64, "7" * 64], approved_at=T0 + 2)
    assert backend.releases.add_approval(release.id, tenant_id="acme", key_name="ops", kid="ef" * 16,
                                         packages=["8" * 64, "9" * 64], approved_at=T0 + 1)
    assert not backend.releases.add_approval(release.id, tenant_id="acme", key_name="ops", kid="ef" * 16,
                                             packages=["a" * 64, "b" * 64], approved_at=T0 + 3)  # the first stays
    _, releases = backend.second()
    got = releases.get(release.id, tenant_id="acme")
    assert got is not None
    assert got.approvals == (("ops", "ef" * 16, T0 + 1), ("ops2", "cd" * 16, T0 + 2))
    assert [i.approved_package_sha256 for i in got.images] == [{"ops": "8" * 64, "ops2": "6" * 64},
                                                               {"ops": "9" * 64, "ops2": "7" * 64}]
    assert dataclasses.replace(got, approvals=(), images=release.images) == release
    assert releases.list(tenant_id="acme") == [got]


def test_an_approval_of_another_tenants_or_no_release_is_not_recorded(backend: Backend) -> None:
    release = make_release()
    backend.releases.add(release)
    assert not backend.releases.add_approval(release.id, tenant_id="other", key_name="ops", kid="ef" * 16,
                                             packages=["8" * 64, "9" * 64], approved_at=T0)
    assert not backend.releases.add_approval("rel-zzzzzzzzzz", tenant_id="acme", key_name="ops", kid="ef" * 16,
                                             packages=["8" * 64], approved_at=T0)
    assert backend.releases.get(release.id, tenant_id="acme") == release


# ------------------------------------------------------------------------------------------------ system releases


def make_system(rid: str = "rel-ssssssssss", tenant: str = "acme", seq: int = 2) -> Release:
    """A system release: three components, every image row pointing at the one envelope."""
    package, size = "e" * 64, 9000
    images = (ReleaseImage("app", 4096, "1" * 64, package, size, kind="image", version="2.1"),
              ReleaseImage("radio", 2048, "3" * 64, package, size, kind="image", version="7.0", after=("app",)),
              ReleaseImage("config", 100, "5" * 64, package, size, kind="data", version="2.0.0-ß",
                           after=("app", "radio")))
    return make_release(rid, tenant, seq, package_format="system", images=images)


def make_delta(release_id: str = "rel-ssssssssss", base: str = "rel-aaaaaaaaaa", tenant: str = "acme",
               at: float = T0, **changes: object) -> ReleaseDelta:
    delta = ReleaseDelta(release_id=release_id, tenant_id=tenant, base_release_id=base, base_version="1.0",
                         package_sha256="d" * 64, package_size=700, created_at=at,
                         base_digests={"app": "a" * 64, "radio": "b" * 64})
    return dataclasses.replace(delta, **changes)  # type: ignore[arg-type]


def test_a_system_release_keeps_its_components(backend: Backend) -> None:
    release = make_system()
    backend.releases.add(release)
    _, releases = backend.second()
    got = releases.get(release.id, tenant_id="acme")
    assert got == release
    assert got is not None and [(i.kind, i.version, i.after) for i in got.images] == [
        ("image", "2.1", ()), ("image", "7.0", ("app",)), ("data", "2.0.0-ß", ("app", "radio"))]
    assert {i.package_sha256 for i in got.images} == {"e" * 64}
    plain = make_release()  # the images of other releases: kind image, no version, no dependency
    backend.releases.add(plain)
    got = releases.get(plain.id, tenant_id="acme")
    assert got is not None and [(i.kind, i.version, i.after) for i in got.images] == [("image", None, ())] * 2


def test_deltas_are_stored_once_per_base_and_scoped(backend: Backend) -> None:
    backend.releases.add(make_release("rel-aaaaaaaaaa", seq=1))
    backend.releases.add(make_release("rel-bbbbbbbbbb", seq=3))
    backend.releases.add(make_system(seq=4))
    later, first = make_delta(base="rel-bbbbbbbbbb", at=T0 + 5), make_delta(base="rel-aaaaaaaaaa", at=T0 + 5)
    assert backend.releases.add_delta(later)
    assert backend.releases.add_delta(first)
    assert not backend.releases.add_delta(make_delta(package_sha256="f" * 64))  # from that base: the first stays
    assert not backend.releases.add_delta(make_delta(tenant="other", base="rel-cccccccccc"))  # not its release
    assert not backend.releases.add_delta(make_delta("rel-zzzzzzzzzz"))  # no such release
    with pytest.raises(StorageError):  # a new delta carries no approvals
        backend.releases.add_delta(make_delta(base="rel-cccccccccc", approved_package_sha256={"ops": "0" * 64}))
    _, releases = backend.second()
    assert releases.deltas("rel-ssssssssss", tenant_id="acme") == [first, later]  # by time, then base
    assert releases.get_delta("rel-ssssssssss", "rel-aaaaaaaaaa", tenant_id="acme") == first
    assert releases.get_delta("rel-ssssssssss", "rel-cccccccccc", tenant_id="acme") is None
    assert releases.get_delta("rel-ssssssssss", "rel-aaaaaaaaaa", tenant_id="other") is None
    assert releases.deltas("rel-ssssssssss", tenant_id="other") == []
    assert releases.deltas("rel-aaaaaaaaaa", tenant_id="acme") == []
    got = releases.get("rel-ssssssssss", tenant_id="acme")
    assert got is not None and got.deltas == (first, later)
    assert dataclasses.replace(got, deltas=()) == make_system(seq=4)
    assert [r.deltas for r in releases.list(tenant_id="acme") if r.id == got.id] == [(first, later)]
    latest = releases.latest(tenant_id="acme", vendor_id=VENDOR, class_id=CLASS)
    assert latest is not None and latest.deltas == (first, later)
    with pytest.raises(StorageError):  # a new release carries no deltas
        backend.releases.add(make_release("rel-eeeeeeeeee", seq=9, deltas=(first,)))


def test_delta_approvals_are_recorded_once_per_key(backend: Backend) -> None:
    backend.releases.add(make_system())
    delta = make_delta()
    assert backend.releases.add_delta(delta)
    kw = {"tenant_id": "acme"}
    assert backend.releases.add_delta_approval(delta.release_id, delta.base_release_id, key_name="ops",
                                               package_sha256="6" * 64, **kw)
    assert backend.releases.add_delta_approval(delta.release_id, delta.base_release_id, key_name="ops2",
                                               package_sha256="7" * 64, **kw)
    assert not backend.releases.add_delta_approval(delta.release_id, delta.base_release_id, key_name="ops",
                                                   package_sha256="8" * 64, **kw)  # the first stays
    assert not backend.releases.add_delta_approval(delta.release_id, delta.base_release_id, key_name="x",
                                                   package_sha256="8" * 64, tenant_id="other")
    assert not backend.releases.add_delta_approval(delta.release_id, "rel-zzzzzzzzzz", key_name="x",
                                                   package_sha256="8" * 64, **kw)
    _, releases = backend.second()
    approved = dataclasses.replace(delta, approved_package_sha256={"ops": "6" * 64, "ops2": "7" * 64})
    assert releases.get_delta(delta.release_id, delta.base_release_id, tenant_id="acme") == approved
    assert releases.deltas(delta.release_id, tenant_id="acme") == [approved]
    got = releases.get(delta.release_id, tenant_id="acme")
    assert got is not None and got.deltas == (approved,)
    assert got.as_dict()["deltas"][0]["approved_package_sha256"] == {"ops": "6" * 64, "ops2": "7" * 64}
    assert got.as_dict()["deltas"][0]["saving_percent"] == round(100 * (1 - 700 / 9000), 1)


# ------------------------------------------------------------------------------------------------ class policy


def test_class_policies_are_set_updated_and_scoped(backend: Backend) -> None:
    assert backend.releases.class_policy(tenant_id="acme", vendor_id=VENDOR, class_id=CLASS) is None
    stored = backend.releases.set_class_policy(ClassPolicy("acme.example", VENDOR, "sensor", CLASS, True),
                                               tenant_id="acme", now=T0)
    assert stored == ClassPolicy("acme.example", VENDOR, "sensor", CLASS, True, configured=True)
    # set again under other names (e.g. the UUIDs as text): the first names stay, the requirement changes
    again = backend.releases.set_class_policy(ClassPolicy(str(VENDOR), VENDOR, str(CLASS), CLASS, False),
                                              tenant_id="acme", now=None)
    assert again == dataclasses.replace(stored, require_approval=False)
    _, releases = backend.second()
    assert releases.class_policy(tenant_id="acme", vendor_id=VENDOR, class_id=CLASS) == again
    assert releases.class_policy(tenant_id="other", vendor_id=VENDOR, class_id=CLASS) is None
    assert releases.class_policies(tenant_id="other") == []


def test_class_policies_are_listed_by_vendor_then_class(backend: Backend) -> None:
    zeta = uuid.uuid5(uuid.NAMESPACE_DNS, "zeta.example")
    for vendor, vid, name in (("zeta.example", zeta, "a"), ("acme.example", VENDOR, "sensor"),
                              ("acme.example", VENDOR, "gateway")):
        backend.releases.set_class_policy(ClassPolicy(vendor, vid, name, uuid.uuid5(vid, name), True),
                                          tenant_id="acme", now=T0)
    assert [(p.vendor, p.class_name) for p in backend.releases.class_policies(tenant_id="acme")] == [
        ("acme.example", "gateway"), ("acme.example", "sensor"), ("zeta.example", "a")]


# ------------------------------------------------------------------------------------------------- properties

_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=40)
_sha = st.text("0123456789abcdef", min_size=64, max_size=64)
_image = st.builds(ReleaseImage, _text, st.integers(1, 1 << 26), _sha, _sha, st.integers(1, 1 << 26),
                   kind=st.sampled_from(["image", "data"]), version=st.none() | _text,
                   after=st.lists(_text, max_size=3).map(tuple))
_ids = itertools.count()


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def shared_sql(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[SqlReleaseStore]:
    db = shared_database(request, request.param, tmp_path_factory)
    yield SqlReleaseStore(db)
    db.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vendor=_text, class_name=_text, version=_text, images=st.lists(_image, min_size=1, max_size=4),
       seq=st.integers(0, (1 << 63) - 1), created=st.floats(0, 4e9, allow_nan=False))
def test_any_release_round_trips_in_both_backends(shared_sql: SqlReleaseStore, vendor: str, class_name: str,
                                                  version: str, images: list[ReleaseImage], seq: int,
                                                  created: float) -> None:
    n = next(_ids)
    release = make_release(f"rel-p{n:09d}", vendor=vendor, class_name=class_name, version=version,
                           images=tuple(images), sequence_number=seq, created_at=created,
                           class_id=uuid.uuid5(VENDOR, f"class-{n}"))
    for store in (MemoryReleaseStore(), shared_sql):
        store.add(release)
        assert store.get(release.id, tenant_id="acme") == release
        assert store.latest(tenant_id="acme", vendor_id=VENDOR, class_id=release.class_id) == release

"""One contract suite for the tenancy stores, run against the memory and the SQL (SQLite, PostgreSQL) stores."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lwm2m_server.core.errors import NotFoundError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.stores import StorageConflictError
from lwm2m_server.tenancy.memory import (
    MemoryAuditStore,
    MemoryGrantStore,
    MemorySessionStore,
    MemoryTenantStore,
    MemoryTokenStore,
    MemoryUserStore,
)
from lwm2m_server.tenancy.model import Role, TenantKind
from lwm2m_server.tenancy.service import TenancyStores
from lwm2m_server.tenancy.sql import (
    SqlAuditStore,
    SqlGrantStore,
    SqlSessionStore,
    SqlTenantStore,
    SqlTokenStore,
    SqlUserStore,
)
from lwm2m_server.tenancy.stores import (
    AuditEntry,
    AuditStore,
    Brand,
    GrantRecord,
    SessionRecord,
    TenantRecord,
    TokenRecord,
    UserRecord,
)
from tests.store_backends import BACKENDS, SQL_BACKENDS, database_opener


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TenancyStores]:
    if request.param == "memory":
        yield TenancyStores(MemoryTenantStore(), MemoryTokenStore(), MemoryGrantStore(), MemoryAuditStore(),
                            MemoryUserStore(), MemorySessionStore())
        return
    db = database_opener(request, request.param, tmp_path / "data")()
    try:
        yield TenancyStores(SqlTenantStore(db), SqlTokenStore(db), SqlGrantStore(db), SqlAuditStore(db),
                            SqlUserStore(db), SqlSessionStore(db))
    finally:
        db.close()


def token(tid: str, tenant: str = "acme", *, at: float = 1.0) -> TokenRecord:
    return TokenRecord(tid, tenant, frozenset({Role.OPERATOR, Role.AUDITOR}), f"name of {tid}", b"s" * 16,
                       b"d" * 32, at, "local:test", expires_at=at + 100)


def test_tenants_round_trip_and_brand(stores: TenancyStores) -> None:
    stores.tenants.add(TenantRecord("zeta", "Zeta", TenantKind.OPERATOR, 2.0))
    stores.tenants.add(TenantRecord("acme", "ACME", TenantKind.OEM, 1.0))
    assert [t.id for t in stores.tenants.list()] == ["acme", "zeta"]
    assert stores.tenants.get("acme") == TenantRecord("acme", "ACME", TenantKind.OEM, 1.0)
    assert stores.tenants.get("nobody") is None
    with pytest.raises(StorageConflictError):
        stores.tenants.add(TenantRecord("acme", "other", TenantKind.BOTH, 3.0))
    assert stores.tenants.get("acme") == TenantRecord("acme", "ACME", TenantKind.OEM, 1.0)
    brand = Brand("Blue Fleet", report_issuer="Blue Fleet GmbH", primary_color="#0044ff", accent_color="#ffaa00",
                  support_url="https://support.example", logo=b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
                  logo_type="image/png")
    assert stores.tenants.set_brand("acme", brand).brand == brand
    assert stores.tenants.get("acme").brand == brand  # type: ignore[union-attr]
    assert stores.tenants.set_brand("acme", None).brand is None
    with pytest.raises(NotFoundError):
        stores.tenants.set_brand("nobody", brand)


def test_tokens_keep_digests_and_revoke_once(stores: TenancyStores) -> None:
    stores.tokens.add(token("tok-000000000002", at=2.0))
    stores.tokens.add(token("tok-000000000001", at=1.0))
    stores.tokens.add(token("tok-000000000003", tenant="other"))
    assert stores.tokens.get("tok-000000000001") == token("tok-000000000001", at=1.0)
    assert [t.id for t in stores.tokens.list(tenant_id="acme")] == ["tok-000000000001", "tok-000000000002"]
    with pytest.raises(StorageConflictError):
        stores.tokens.add(token("tok-000000000001", tenant="other"))
    first = stores.tokens.revoke("tok-000000000001", now=50.0)
    assert first.revoked_at == 50.0 and not first.active(10.0)
    assert stores.tokens.revoke("tok-000000000001", now=60.0).revoked_at == 50.0
    assert stores.tokens.get("tok-000000000001").revoked_at == 50.0  # type: ignore[union-attr]
    with pytest.raises(NotFoundError):
        stores.tokens.revoke("tok-ffffffffffff", now=1.0)
    live = stores.tokens.get("tok-000000000002")
    assert live is not None and live.active(50.0) and not live.active(102.0)  # expires at 102


def test_grants_by_giver_and_receiver(stores: TenancyStores) -> None:
    g1 = GrantRecord("oem", "op-a", "sensor", 1.0, "tok-1")
    g2 = GrantRecord("oem", "op-b", "sensor", 2.0, "tok-1")
    g3 = GrantRecord("oem2", "op-a", "meter", 3.0, "tok-2")
    for g in (g1, g2, g3):
        stores.grants.add(g)
    with pytest.raises(StorageConflictError):
        stores.grants.add(GrantRecord("oem", "op-a", "sensor", 9.0, "x"))
    assert stores.grants.list(oem_tenant="oem") == [g1, g2]
    assert stores.grants.list(operator_tenant="op-a") == [g1, g3]
    assert stores.grants.list(oem_tenant="oem", operator_tenant="op-b") == [g2]
    assert stores.grants.list() == [g1, g2, g3]
    assert stores.grants.remove("oem", "op-a", "sensor") and not stores.grants.remove("oem", "op-a", "sensor")
    assert stores.grants.list(operator_tenant="op-a") == [g3]


def test_audit_trail_is_append_only_and_ordered(stores: TenancyStores) -> None:
    seqs = [stores.audit.append(AuditEntry(t, float(i), "tok-1", ("operator",), "start-campaign", f"c{i}", "ok"))
            for i, t in enumerate(["a", "b", "a", "a"])]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4
    mine = stores.audit.list(tenant_id="a")
    assert [e.target for e in mine] == ["c0", "c2", "c3"] and [e.seq for e in mine] == [seqs[0], seqs[2], seqs[3]]
    assert [e.target for e in stores.audit.list(tenant_id="a", after=seqs[0], limit=1)] == ["c2"]
    assert len(stores.audit.list(tenant_id=None)) == 4
    assert not any(hasattr(stores.audit, name) for name in ("delete", "update", "remove", "clear"))


_NO_NUL = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")  # PostgreSQL text holds no NUL


@pytest.fixture(params=SQL_BACKENDS)
def new_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Callable[[], Database]:
    """An empty database at every call (SQLite: a new file; PostgreSQL: one database, emptied)."""
    if request.param == "sqlite":
        return lambda: Database.for_data_dir(tmp_path_factory.mktemp("audit"))
    server = request.getfixturevalue("postgres")
    url = server.new_database()
    return lambda: (server.empty(url), Database(url))[1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.text(_NO_NUL, max_size=20)), max_size=20))
def test_audit_listing_agrees_between_memory_and_sql(new_database: Callable[[], Database],
                                                     entries: list[tuple[str, str]]) -> None:
    db = new_database()
    try:
        backends: list[AuditStore] = [MemoryAuditStore(), SqlAuditStore(db)]
        for tenant, target in entries:
            for store in backends:
                store.append(AuditEntry(tenant, 1.0, "s", ("auditor",), "act", target, "ok"))
        for tenant in ("a", "b", "c", None):
            lists = [[(e.tenant_id, e.target) for e in s.list(tenant_id=tenant)] for s in backends]
            assert lists[0] == lists[1] == [(t, x) for t, x in entries if tenant is None or t == tenant]
    finally:
        db.close()


def test_users_have_unique_logins_and_are_disabled_not_deleted(stores: TenancyStores) -> None:
    ana = UserRecord("usr-1", "acme", "ana", frozenset({Role.OPERATOR}), "scrypt$x", 1.0, "local:test")
    stores.users.add(ana)
    stores.users.add(UserRecord("usr-2", "acme", "bea", frozenset({Role.AUDITOR}), "scrypt$y", 2.0, "local:test"))
    with pytest.raises(StorageConflictError):  # a login is unique across tenants
        stores.users.add(UserRecord("usr-3", "other", "ana", frozenset({Role.ADMIN}), "h", 3.0, "local:test"))
    assert stores.users.get("usr-1") == ana and stores.users.by_login("ana") == ana
    assert stores.users.by_login("nobody") is None and [u.login for u in stores.users.list(tenant_id="acme")] == [
        "ana", "bea"]
    assert stores.users.disable("usr-1", now=9.0).disabled_at == 9.0
    assert stores.users.disable("usr-1", now=10.0).disabled_at == 9.0
    with pytest.raises(NotFoundError):
        stores.users.disable("usr-9", now=1.0)


def test_sessions_are_kept_by_digest_and_revoked(stores: TenancyStores) -> None:
    one = SessionRecord(b"\x01" * 32, "usr-1", "acme", "csrf-1", 1.0, 100.0)
    two = SessionRecord(b"\x02" * 32, "usr-1", "acme", "csrf-2", 2.0, 100.0)
    other = SessionRecord(b"\x03" * 32, "usr-2", "acme", "csrf-3", 2.0, 100.0)
    for s in (one, two, other):
        stores.sessions.add(s)
    assert stores.sessions.get(b"\x01" * 32) == one and stores.sessions.get(b"\x09" * 32) is None
    stores.sessions.revoke(b"\x01" * 32, now=5.0)
    stores.sessions.revoke(b"\x01" * 32, now=6.0)
    assert stores.sessions.get(b"\x01" * 32).revoked_at == 5.0  # type: ignore[union-attr]
    assert stores.sessions.revoke_user("usr-1", now=7.0) == 1
    assert not stores.sessions.get(b"\x02" * 32).active(8.0)  # type: ignore[union-attr]
    assert stores.sessions.get(b"\x03" * 32).active(8.0)  # type: ignore[union-attr]

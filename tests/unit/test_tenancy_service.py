"""The tenancy service over memory stores: the role table, tokens (shown once, salted digests, expiry,
revocation), tenant isolation (another tenant's things are not found) and the audit trail."""

from __future__ import annotations

import uuid

import pytest

from lwm2m_server.core.errors import InvalidRequestError, NotFoundError
from lwm2m_server.storage.stores import StorageConflictError
from lwm2m_server.tenancy import tokens
from lwm2m_server.tenancy.memory import (
    MemoryAuditStore,
    MemoryGrantStore,
    MemorySessionStore,
    MemoryTenantStore,
    MemoryTokenStore,
    MemoryUserStore,
)
from lwm2m_server.tenancy.model import (
    PERMISSIONS,
    Action,
    ForbiddenError,
    Principal,
    Role,
    TenantKind,
    authorize,
    parse_roles,
    permitted,
)
from lwm2m_server.tenancy.service import TenancyService, TenancyStores, class_matches, system_principal
from lwm2m_server.tenancy.stores import Brand


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(clock: Clock) -> TenancyService:
    stores = TenancyStores(MemoryTenantStore(), MemoryTokenStore(), MemoryGrantStore(), MemoryAuditStore(),
                           MemoryUserStore(), MemorySessionStore())
    s = TenancyService(stores, clock=clock)
    root = system_principal("root")
    s.create_tenant("oem", kind=TenantKind.OEM, name="Sensor Works", by=root)
    s.create_tenant("op-a", kind=TenantKind.OPERATOR, by=root)
    s.create_tenant("op-b", kind=TenantKind.OPERATOR, by=root)
    return s


def principal(svc: TenancyService, tenant: str, *roles: Role, days: float = 30) -> tuple[Principal, str]:
    _, text = svc.create_token(tenant_id=tenant, roles=frozenset(roles), expires_days=days,
                               by=system_principal("root"))
    found = svc.authenticate(text)
    assert found is not None
    return found, text


def test_the_role_table_is_least_privilege() -> None:
    assert not any(PERMISSIONS[r] == frozenset(Action) for r in Role)
    assert permitted(TenantKind.OPERATOR, {Role.OPERATOR}, Action.RUN_CAMPAIGNS)
    assert not permitted(TenantKind.OPERATOR, {Role.AUDITOR}, Action.RUN_CAMPAIGNS)
    assert not permitted(TenantKind.OPERATOR, {Role.OPERATOR}, Action.MANAGE_KEYS)
    assert not permitted(TenantKind.OEM, {Role.OPERATOR}, Action.RUN_CAMPAIGNS)  # an OEM has no devices
    assert not permitted(TenantKind.OPERATOR, {Role.RELEASE_MANAGER}, Action.GRANT)
    assert permitted(TenantKind.BOTH, {Role.RELEASE_MANAGER}, Action.GRANT)
    assert parse_roles(["operator,auditor"]) == {Role.OPERATOR, Role.AUDITOR}
    with pytest.raises(InvalidRequestError):
        parse_roles(["root"])


def test_a_token_is_shown_once_and_stored_as_a_salted_digest(svc: TenancyService) -> None:
    record, text = svc.create_token(tenant_id="op-a", roles=frozenset({Role.OPERATOR}), by=system_principal())
    token_id, secret = tokens.parse(text)  # type: ignore[misc]
    assert token_id == record.id and secret not in repr(record) and text not in repr(record)
    stored = svc.stores.tokens.get(record.id)
    assert stored is not None and secret.encode() not in stored.digest + stored.salt
    assert stored.digest == tokens.digest(stored.salt, secret)
    other, _ = svc.create_token(tenant_id="op-a", roles=frozenset({Role.OPERATOR}), by=system_principal())
    assert svc.stores.tokens.get(other.id).salt != stored.salt  # type: ignore[union-attr]
    who = svc.authenticate(text)
    assert who == Principal("op-a", TenantKind.OPERATOR, frozenset({Role.OPERATOR}), record.id)
    assert all(text not in repr(e) and secret not in repr(e) for e in svc.stores.audit.list(tenant_id=None))


def test_bad_expired_and_revoked_tokens_are_all_just_refused(svc: TenancyService, clock: Clock) -> None:
    _, text = principal(svc, "op-a", Role.OPERATOR, days=1)
    _, secret = tokens.parse(text)  # type: ignore[misc]
    wrong = text[:-1] + ("A" if text[-1] != "A" else "B")
    for bad in ("", "Bearer x", text + "x", wrong, f"scr_tok-ffffffffffff.{secret}"):
        assert svc.authenticate(bad) is None
    clock.now += 86_400 + 1
    assert svc.authenticate(text) is None  # expired
    _, text2 = principal(svc, "op-a", Role.OPERATOR)
    record = svc.revoke_token(tokens.parse(text2)[0], by=system_principal())  # type: ignore[index]
    assert record.revoked_at == clock.now and svc.authenticate(text2) is None


def test_tokens_are_scoped_and_cannot_grow_roles(svc: TenancyService) -> None:
    admin_a, _ = principal(svc, "op-a", Role.ADMIN)
    op_b, text_b = principal(svc, "op-b", Role.OPERATOR)
    with pytest.raises(NotFoundError):  # another tenant: not found, not forbidden
        svc.create_token(tenant_id="op-b", roles=frozenset({Role.AUDITOR}), by=admin_a)
    with pytest.raises(NotFoundError):  # revoking another tenant's token: as if it did not exist
        svc.revoke_token(op_b.subject, by=admin_a)
    assert svc.authenticate(text_b) is not None
    with pytest.raises(ForbiddenError):  # an operator makes no tokens
        svc.create_token(tenant_id="op-b", roles=frozenset({Role.OPERATOR}), by=op_b)
    with pytest.raises(ForbiddenError):  # an admin cannot mint an operator token: it does not hold the role
        svc.create_token(tenant_id="op-a", roles=frozenset({Role.OPERATOR}), by=admin_a)
    with pytest.raises(InvalidRequestError):
        svc.create_token(tenant_id="op-a", roles=frozenset({Role.ADMIN}), by=admin_a, expires_days=None)
    made, _ = svc.create_token(tenant_id="op-a", roles=frozenset({Role.ADMIN}), by=admin_a, expires_days=7)
    assert made.tenant_id == "op-a" and made.created_by == admin_a.subject
    assert made.id in [t.id for t in svc.tokens(tenant_id="op-a", by=admin_a)]


def test_grants_name_a_class_and_only_an_oem_gives_them(svc: TenancyService) -> None:
    rm, _ = principal(svc, "oem", Role.RELEASE_MANAGER)
    op_rm, _ = principal(svc, "op-a", Role.RELEASE_MANAGER)
    vendor = uuid.uuid5(uuid.NAMESPACE_DNS, "sensor-works.example")
    klass = uuid.uuid5(vendor, "thermo-v2")
    assert not svc.may_deploy(oem_tenant="oem", operator_tenant="op-a", vendor_id=vendor, class_id=klass)
    svc.grant(oem_tenant="oem", operator_tenant="op-a", class_name="thermo-v2", by=rm)
    assert svc.may_deploy(oem_tenant="oem", operator_tenant="op-a", vendor_id=vendor, class_id=klass)
    assert not svc.may_deploy(oem_tenant="oem", operator_tenant="op-b", vendor_id=vendor, class_id=klass)
    assert not svc.may_deploy(oem_tenant="oem", operator_tenant="op-a", vendor_id=vendor,
                              class_id=uuid.uuid5(vendor, "thermo-v3"))
    with pytest.raises(StorageConflictError):
        svc.grant(oem_tenant="oem", operator_tenant="op-a", class_name="thermo-v2", by=rm)
    with pytest.raises(ForbiddenError):  # an operator tenant grants nothing
        svc.grant(oem_tenant="op-a", operator_tenant="op-b", class_name="thermo-v2", by=op_rm)
    with pytest.raises(InvalidRequestError):
        svc.grant(oem_tenant="oem", operator_tenant="oem", class_name="x", by=system_principal())
    assert class_matches(str(klass), vendor, klass) and not class_matches("thermo", vendor, klass)
    svc.revoke_grant(oem_tenant="oem", operator_tenant="op-a", class_name="thermo-v2", by=rm)
    assert not svc.may_deploy(oem_tenant="oem", operator_tenant="op-a", vendor_id=vendor, class_id=klass)


def test_every_privileged_call_is_audited_per_tenant_refusals_included(svc: TenancyService) -> None:
    admin_a, _ = principal(svc, "op-a", Role.ADMIN)
    auditor_a, _ = principal(svc, "op-a", Role.AUDITOR)
    with pytest.raises(ForbiddenError):
        svc.set_brand("op-a", Brand("X"), by=auditor_a)
    svc.set_brand("op-a", Brand("Blue Fleet"), by=admin_a)
    with pytest.raises(NotFoundError):
        svc.set_brand("op-b", Brand("Hijack"), by=admin_a)
    trail = svc.audit_trail(tenant_id="op-a", by=auditor_a)
    seen = [(e.subject, e.action, e.outcome) for e in trail if e.action in ("brand", "lookup-tenant")]
    assert seen == [(auditor_a.subject, "brand", "refused"), (admin_a.subject, "brand", "ok"),
                    (admin_a.subject, "lookup-tenant", "refused")]
    assert svc.brand("op-a") == Brand("Blue Fleet") and svc.brand("op-b") is None
    assert all(e.tenant_id == "op-a" for e in trail)
    operator_a, _ = principal(svc, "op-a", Role.OPERATOR)
    with pytest.raises(ForbiddenError):  # an operator does not read the audit trail
        svc.audit_trail(tenant_id="op-a", by=operator_a)
    with pytest.raises(ForbiddenError):
        authorize(auditor_a, Action.READ, "op-b")


def test_web_users_sign_in_and_out_and_disabled_users_lose_their_sessions(svc: TenancyService, clock: Clock) -> None:
    admin, _ = principal(svc, "op-a", Role.ADMIN, Role.OPERATOR)
    user = svc.create_user(tenant_id="op-a", login="ana@op-a.example", roles=frozenset({Role.OPERATOR}),
                           password="a long enough secret", by=admin)
    assert "a long enough secret" not in repr(user) and user.password_hash.startswith("scrypt$15$")
    with pytest.raises(StorageConflictError):
        svc.create_user(tenant_id="op-a", login="ana@op-a.example", roles=frozenset({Role.OPERATOR}),
                        password="another long secret", by=admin)
    with pytest.raises(InvalidRequestError):
        svc.create_user(tenant_id="op-a", login="bob", roles=frozenset({Role.OPERATOR}), password="short", by=admin)
    with pytest.raises(ForbiddenError):  # no more roles than its maker
        svc.create_user(tenant_id="op-a", login="eve", roles=frozenset({Role.AUDITOR}),
                        password="a long enough secret", by=admin)
    assert svc.sign_in("ana@op-a.example", "a wrong password!") is None
    assert svc.sign_in("nobody", "a long enough secret") is None
    secret, session = svc.sign_in("ana@op-a.example", "a long enough secret")  # type: ignore[misc]
    found = svc.session(secret)
    assert found is not None and found[0] == Principal("op-a", TenantKind.OPERATOR, frozenset({Role.OPERATOR}),
                                                       "user:ana@op-a.example")
    assert found[1].csrf == session.csrf and secret.encode() not in session.digest
    svc.sign_out(secret)
    assert svc.session(secret) is None
    secret, _ = svc.sign_in("ana@op-a.example", "a long enough secret")  # type: ignore[misc]
    clock.now += 13 * 3600
    assert svc.session(secret) is None  # expired
    secret, _ = svc.sign_in("ana@op-a.example", "a long enough secret")  # type: ignore[misc]
    svc.disable_user(user.id, by=admin)
    assert svc.session(secret) is None and svc.sign_in("ana@op-a.example", "a long enough secret") is None
    outcomes = [(e.action, e.outcome) for e in svc.stores.audit.list(tenant_id="op-a") if "sign" in e.action]
    assert outcomes == [("sign-in", "refused"), ("sign-in", "ok"), ("sign-out", "ok"), ("sign-in", "ok"),
                        ("sign-in", "ok"), ("sign-in", "refused")]

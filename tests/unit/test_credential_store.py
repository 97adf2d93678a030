"""One contract for every credential store: the memory store and the SQL store (SQLite and PostgreSQL, opened
the way the server opens its database). A new backend joins by adding a case to the ``backend`` fixture.

Then the SQL specifics: nothing in the database file is a PSK, a sealed key moved or altered does not open, a wrong
key-encryption key is caught at load, other processes' credentials are found."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from bootstrap.credentials import (
    PSK_MIN_BYTES,
    Credential,
    CredentialConflictError,
    CredentialKind,
    CredentialStore,
    InvalidCredentialError,
    IssuedCredential,
    MemoryCredentialStore,
    PskReuseError,
    UnknownCredentialError,
    credential_aad,
)
from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import SealedDataError, SecretBytes, Vault
from lwm2m_server.core.errors import SecurityError, StorageError
from lwm2m_server.storage.database import DB_FILENAME, Database
from tests.store_backends import BACKENDS, database_opener

BS, SV = CredentialKind.BOOTSTRAP, CredentialKind.SERVER
T0 = 1_700_000_000.25


class Backend:
    """A credential store plus ``reopen()``: what a restart does to it (SQL: a new engine on the same file)."""

    def __init__(self, kind: str, open_database: Callable[[], Database] | None, vault: Vault) -> None:
        self.kind = kind
        self._open_database = open_database
        self.vault = vault
        self.db: Database | None = None
        self.store: CredentialStore
        self._open()

    def _open(self) -> None:
        if self._open_database is None:
            self.store = MemoryCredentialStore(self.vault)
        else:
            self.db = self._open_database()
            self.store = SqlCredentialStore(self.db, self.vault)
        self.store.load()

    def reopen(self) -> None:
        if self.db is not None:
            self.db.close()
            self._open()
        else:
            self.store.load()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    b = Backend(kind, None if kind == "memory" else database_opener(request, kind, tmp_path / "data"),
                Vault.generate())
    yield b
    b.close()


def forms(secret: bytes) -> list[bytes]:
    """The ways a secret could be written down: raw, hex, base64."""
    raw = bytes(secret)
    return [raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw),
            base64.urlsafe_b64encode(raw).rstrip(b"="), repr(raw)[2:-1].encode()]


def assert_hidden(text: str | bytes, secrets: list[bytes]) -> None:
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    for secret in secrets:
        for form in forms(secret):
            assert form not in data


# ---------------------------------------------------------------- issuing and looking up


def test_implements_the_protocol(backend: Backend) -> None:
    assert isinstance(backend.store, CredentialStore)


def test_issue_round_trip(backend: Backend) -> None:
    store = backend.store
    issued = store.issue("urn:dev:ops:ünï-1", BS, now=T0, tenant_id="default")
    cred, psk = issued
    assert isinstance(issued, IssuedCredential) and issued.credential is cred
    assert cred == Credential("default", "urn:dev:ops:ünï-1", cred.identity, BS, T0)
    assert isinstance(psk, SecretBytes) and len(psk) >= PSK_MIN_BYTES
    assert store.psk_for(cred.identity) == psk
    assert store.psk_for(cred.identity.encode()) == psk  # as the DTLS handshake gives it
    assert isinstance(store.psk_for(cred.identity), SecretBytes)
    assert store.verify(cred.identity, psk) and store.verify(cred.identity.encode(), bytes(psk))
    assert store.endpoint_for(cred.identity) == "urn:dev:ops:ünï-1"
    assert store.credential_for(cred.identity) == cred
    assert store.by_endpoint("urn:dev:ops:ünï-1", BS, tenant_id="default") == cred
    assert store.by_endpoint("urn:dev:ops:ünï-1", "bootstrap", tenant_id="default") == cred
    assert store.by_endpoint("urn:dev:ops:ünï-1", SV, tenant_id="default") is None
    assert store.by_endpoint("urn:dev:ops:ünï-1", BS, tenant_id="acme") is None
    assert store.has_active("urn:dev:ops:ünï-1", BS, tenant_id="default")
    assert store.has_active("urn:dev:ops:ünï-1", "bootstrap", tenant_id="default")
    assert not store.has_active("urn:dev:ops:ünï-1", SV, tenant_id="default")
    assert not store.has_active("urn:dev:ops:ünï-1", BS, tenant_id="acme")
    store.revoke("urn:dev:ops:ünï-1", now=T0 + 1, tenant_id="default")
    assert not store.has_active("urn:dev:ops:ünï-1", BS, tenant_id="default")


def test_unknown_identities(backend: Backend) -> None:
    store = backend.store
    store.issue("dev", BS, now=T0, tenant_id="default")
    for identity in ("nobody", b"nobody", b"\xff\xfe not utf-8", ""):
        assert store.psk_for(identity) is None
        assert store.endpoint_for(identity) is None
        assert store.credential_for(identity) is None
        assert not store.verify(identity, bytes(16))


def test_verify_refuses_wrong_keys(backend: Backend) -> None:
    store = backend.store
    cred, psk = store.issue("dev", BS, now=T0, tenant_id="default")
    wrong = bytearray(psk)
    wrong[-1] ^= 1
    assert not store.verify(cred.identity, bytes(wrong))
    assert not store.verify(cred.identity, bytes(psk)[:-1])
    assert not store.verify(cred.identity, b"")
    assert not store.verify(cred.identity, bytes(psk) + b"\0")


def test_fresh_psks_and_identities(backend: Backend) -> None:
    store = backend.store
    issued = [store.issue(f"dev-{i}", kind, now=T0 + i, tenant_id="default") for i in range(40) for kind in (BS, SV)]
    psks = [bytes(i.psk) for i in issued]
    identities = [i.credential.identity for i in issued]
    assert len(set(psks)) == len(psks) and len(set(identities)) == len(identities)
    assert all(len(p) == PSK_MIN_BYTES for p in psks)
    assert all(len(i.encode()) <= 32 for i in identities)  # fits tinydtls' default identity limit
    assert all(i.startswith("bs-") for i in identities[0::2]) and all(i.startswith("sv-") for i in identities[1::2])
    for item in issued:
        assert store.psk_for(item.credential.identity) == item.psk


def test_given_identity_and_psk(backend: Backend) -> None:
    store = backend.store
    key = bytes(range(32))
    cred, psk = store.issue("dev", SV, now=T0, identity="dev-identity-ü", psk=key, tenant_id="acme")
    assert cred.identity == "dev-identity-ü" and cred.tenant_id == "acme"
    assert psk == key and store.psk_for("dev-identity-ü".encode()) == key


@pytest.mark.parametrize("changes", [
    {"psk": bytes(15)}, {"psk": bytes(65)}, {"psk": b""}, {"identity": ""}, {"identity": "x" * 129},
    {"endpoint": ""}, {"kind": "firmware"}, {"tenant_id": ""},
])
def test_invalid_arguments(backend: Backend, changes: dict[str, object]) -> None:
    args: dict[str, object] = {"endpoint": "dev", "kind": BS, "now": T0, "tenant_id": "default", **changes}
    with pytest.raises(InvalidCredentialError) as info:
        backend.store.issue(**args)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert backend.store.list(tenant_id=None, include_revoked=True) == []


def test_psk_length_of_a_store_is_configurable(tmp_path: Path) -> None:
    store = MemoryCredentialStore(Vault.generate(), psk_bytes=32)
    assert len(store.issue("dev", BS, now=T0, tenant_id="default").psk) == 32
    for bad in (15, 65):
        with pytest.raises(InvalidCredentialError):
            MemoryCredentialStore(Vault.generate(), psk_bytes=bad)


# ---------------------------------------------------------------- uniqueness


def test_one_active_credential_per_endpoint_and_kind(backend: Backend) -> None:
    store = backend.store
    first = store.issue("dev", BS, now=T0, tenant_id="default").credential
    with pytest.raises(CredentialConflictError, match="replace it to rekey"):
        store.issue("dev", BS, now=T0 + 1, tenant_id="default")
    server = store.issue("dev", SV, now=T0 + 1, tenant_id="default").credential  # the other kind is its own credential
    other_tenant = store.issue("dev", BS, now=T0 + 1, tenant_id="acme").credential  # and so is another tenant
    assert store.by_endpoint("dev", BS, tenant_id="default") == first
    assert store.by_endpoint("dev", SV, tenant_id="default") == server
    assert store.by_endpoint("dev", BS, tenant_id="acme") == other_tenant
    assert len(store.list(tenant_id=None)) == 3


def test_identities_are_unique_across_tenants_and_forever(backend: Backend) -> None:
    store = backend.store
    store.issue("a", BS, now=T0, identity="shared", tenant_id="default")
    for args in ({"endpoint": "b"}, {"endpoint": "b", "tenant_id": "acme"}, {"endpoint": "a", "kind": SV}):
        with pytest.raises(CredentialConflictError, match="already in use"):
            store.issue(**{"kind": BS, "now": T0, "tenant_id": "default", **args,  # type: ignore[arg-type]
                           "identity": "shared"})
    store.revoke("a", now=T0 + 1, tenant_id="default")
    with pytest.raises(CredentialConflictError, match="already in use"):  # a revoked identity is never reissued
        store.issue("a", BS, now=T0 + 2, identity="shared", tenant_id="default")
    assert store.by_endpoint("a", BS, tenant_id="default") is None


def test_psk_reuse_is_refused_everywhere(backend: Backend) -> None:
    store = backend.store
    cred, psk = store.issue("dev", BS, now=T0, tenant_id="default")
    attempts: list[Callable[[], object]] = [
        lambda: store.issue("other", BS, now=T0, psk=psk, tenant_id="default"),
        lambda: store.issue("other", SV, now=T0, psk=bytes(psk), tenant_id="acme"),
        lambda: store.replace("dev", BS, now=T0, psk=psk, tenant_id="default"),  # a rekey to the same key is no rekey
    ]
    for attempt in attempts:
        with pytest.raises(PskReuseError) as info:
            attempt()
        assert isinstance(info.value, SecurityError)
        assert_hidden(str(info.value), [psk])
    assert store.psk_for(cred.identity) == psk  # the failed replace changed nothing
    store.revoke("dev", now=T0 + 1, tenant_id="default")
    with pytest.raises(PskReuseError):  # not even after the credential that held it is gone
        store.issue("dev", BS, now=T0 + 2, psk=psk, tenant_id="default")
    assert store.list(tenant_id=None) == []


def test_a_failed_issue_applies_nothing(backend: Backend) -> None:
    store = backend.store
    _, psk = store.issue("dev", BS, now=T0, identity="taken", tenant_id="default")
    key = bytes(range(100, 116))
    with pytest.raises(CredentialConflictError):
        store.issue("fresh", BS, now=T0, identity="taken", psk=key, tenant_id="default")
    assert store.by_endpoint("fresh", BS, tenant_id="default") is None
    store.issue("fresh", BS, now=T0, psk=key, tenant_id="default")  # the refused issue did not burn the key
    with pytest.raises(PskReuseError):
        store.issue("fresh2", BS, now=T0, identity="new-id", psk=psk, tenant_id="default")
    assert store.credential_for("new-id") is None


# ---------------------------------------------------------------- revoke and replace


def test_revoke_stops_the_key_at_once(backend: Backend) -> None:
    store = backend.store
    bs, bs_psk = store.issue("dev", BS, now=T0, tenant_id="default")
    sv, _ = store.issue("dev", SV, now=T0, tenant_id="default")
    keep, keep_psk = store.issue("other", BS, now=T0, tenant_id="default")
    revoked = store.revoke("dev", now=T0 + 5, kind=BS, tenant_id="default")
    assert revoked == [Credential("default", "dev", bs.identity, BS, T0, True, T0 + 5)]
    assert store.psk_for(bs.identity) is None
    assert not store.verify(bs.identity, bs_psk)
    assert store.endpoint_for(bs.identity) is None
    assert store.credential_for(bs.identity) == revoked[0]
    assert store.by_endpoint("dev", BS, tenant_id="default") is None
    assert store.by_endpoint("dev", SV, tenant_id="default") == sv and store.psk_for(sv.identity) is not None
    assert store.psk_for(keep.identity) == keep_psk
    assert store.revoke("dev", now=T0 + 6, kind=BS, tenant_id="default") == []  # nothing active left of that kind
    assert [c.identity for c in store.revoke("dev", now=T0 + 7, tenant_id="default")] == [sv.identity]  # all kinds
    assert store.psk_for(sv.identity) is None
    assert store.revoke("never-seen", now=T0, tenant_id="default") == []
    assert store.revoke("other", now=T0, tenant_id="acme") == []  # scoped by tenant
    assert store.psk_for(keep.identity) == keep_psk


def test_after_revoke_a_new_credential_may_be_issued(backend: Backend) -> None:
    store = backend.store
    old, _ = store.issue("dev", BS, now=T0, tenant_id="default")
    store.revoke("dev", now=T0 + 1, tenant_id="default")
    new, psk = store.issue("dev", BS, now=T0 + 2, tenant_id="default")
    assert new.identity != old.identity and store.by_endpoint("dev", BS, tenant_id="default") == new
    assert store.psk_for(new.identity) == psk and store.psk_for(old.identity) is None


def test_replace_rekeys_and_the_old_key_stops_at_once(backend: Backend) -> None:
    store = backend.store
    old, old_psk = store.issue("dev", SV, now=T0, tenant_id="default")
    other, _ = store.issue("dev", BS, now=T0, tenant_id="default")
    new, new_psk = store.replace("dev", SV, now=T0 + 10, tenant_id="default")
    assert new.identity != old.identity and bytes(new_psk) != bytes(old_psk)
    assert new == Credential("default", "dev", new.identity, SV, T0 + 10)
    assert store.psk_for(old.identity) is None and not store.verify(old.identity, old_psk)
    assert store.verify(new.identity, new_psk)
    assert store.credential_for(old.identity) == Credential("default", "dev", old.identity, SV, T0, True, T0 + 10)
    assert store.by_endpoint("dev", SV, tenant_id="default") == new
    assert store.by_endpoint("dev", BS, tenant_id="default") == other  # the other kind is untouched
    newer, _ = store.replace("dev", SV, now=T0 + 20, identity="chosen", tenant_id="default")
    assert newer.identity == "chosen" and store.psk_for(new.identity) is None


def test_replace_needs_an_active_credential(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(UnknownCredentialError) as info:
        store.replace("dev", BS, now=T0, tenant_id="default")
    assert isinstance(info.value, StorageError) and isinstance(info.value, LookupError)
    store.issue("dev", BS, now=T0, tenant_id="default")
    store.revoke("dev", now=T0 + 1, tenant_id="default")
    with pytest.raises(UnknownCredentialError):
        store.replace("dev", BS, now=T0 + 2, tenant_id="default")
    with pytest.raises(UnknownCredentialError):
        store.replace("dev", BS, now=T0 + 2, tenant_id="acme")


def test_replace_with_a_used_identity_applies_nothing(backend: Backend) -> None:
    store = backend.store
    old, old_psk = store.issue("dev", BS, now=T0, tenant_id="default")
    with pytest.raises(CredentialConflictError):
        store.replace("dev", BS, now=T0 + 1, identity=old.identity,
                      tenant_id="default")  # identities are never reissued
    assert store.by_endpoint("dev", BS, tenant_id="default") == old and store.psk_for(old.identity) == old_psk


# ---------------------------------------------------------------- listing, tenants, restarts


def test_listing_order_and_scoping(backend: Backend) -> None:
    store = backend.store
    store.issue("b", BS, now=T0, identity="b-bs", tenant_id="default")
    store.issue("a", SV, now=T0, identity="a-sv", tenant_id="default")
    store.issue("a", BS, now=T0, identity="a-bs", tenant_id="default")
    store.issue("a", BS, now=T0, identity="acme-a-bs", tenant_id="acme")
    store.replace("a", BS, now=T0 + 1, identity="a-bs-2", tenant_id="default")
    assert [c.identity for c in store.list(tenant_id="default")] == ["a-bs-2", "a-sv", "b-bs"]
    listed = store.list(tenant_id="default", include_revoked=True)
    assert [c.identity for c in listed] == ["a-bs", "a-bs-2", "a-sv", "b-bs"]
    assert [c.identity for c in store.list(tenant_id="acme")] == ["acme-a-bs"]
    assert [c.identity for c in store.list(tenant_id=None)] == ["acme-a-bs", "a-bs-2", "a-sv", "b-bs"]
    assert store.list(tenant_id="nobody") == []


def test_reopening_gives_the_same_credentials_and_keys(backend: Backend) -> None:
    store = backend.store
    issued = [store.issue(f"dev-{i}", BS, now=T0 + i, tenant_id="acme" if i % 2 else "default") for i in range(6)]
    store.revoke("dev-0", now=T0 + 9, tenant_id="default")
    before = store.list(tenant_id=None, include_revoked=True)
    backend.reopen()
    store = backend.store
    assert store.list(tenant_id=None, include_revoked=True) == before
    assert store.psk_for(issued[0].credential.identity) is None
    for cred, psk in issued[1:]:
        assert store.psk_for(cred.identity) == psk and store.verify(cred.identity, psk)
    with pytest.raises(PskReuseError):  # the fingerprints survive a restart too
        store.issue("dev-0", BS, now=T0 + 10, psk=issued[0].psk, tenant_id="default")
    with pytest.raises(CredentialConflictError):
        store.issue("dev-1", BS, now=T0 + 10, tenant_id="acme")
    assert store.load() == 5


async def test_from_a_worker_thread(backend: Backend) -> None:
    cred, psk = await asyncio.to_thread(backend.store.issue, "threaded", BS, now=T0, tenant_id="default")
    assert await asyncio.to_thread(backend.store.verify, cred.identity, psk)


def test_sealed_keys_are_bound_to_their_record() -> None:
    vault = Vault.generate()
    a = Credential("default", "dev", "id-1", BS, T0)
    blob = vault.seal(b"k" * 16, credential_aad(a))
    for other in (Credential("acme", "dev", "id-1", BS, T0), Credential("default", "dev2", "id-1", BS, T0),
                  Credential("default", "dev", "id-2", BS, T0), Credential("default", "dev", "id-1", SV, T0)):
        with pytest.raises(SealedDataError):
            vault.open_sealed(blob, credential_aad(other))
    assert vault.open_sealed(blob, credential_aad(Credential("default", "dev", "id-1", BS, T0 + 99, True)))
    # length prefixes: moving a character from one field to the next gives other bytes
    assert credential_aad(Credential("t", "ab", "c", BS, 0)) != credential_aad(Credential("t", "a", "bc", BS, 0))


# ---------------------------------------------------------------- secrets never leak


def test_no_psk_in_logs_reprs_or_errors(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # statements, parameters and result rows too
    store = backend.store
    texts: list[str] = [repr(store), str(store)]
    issued = [store.issue("dev", BS, now=T0, tenant_id="default"), store.issue("dev", SV, now=T0, tenant_id="acme"),
              store.issue("dev2", BS, now=T0, psk=bytes(range(200, 216)), tenant_id="default")]
    issued.append(store.replace("dev", BS, now=T0 + 1, tenant_id="default"))
    psks = [bytes(i.psk) for i in issued]
    for item in issued:
        texts += [repr(item), str(item), f"{item}", repr(item.psk), str(item.psk), f"{item.psk}", repr(item.credential)]
        store.psk_for(item.credential.identity)
        store.verify(item.credential.identity, item.psk)
        store.verify(item.credential.identity, b"\0" * 16)
    failures: list[Callable[[], object]] = [
        lambda: store.issue("dev2", SV, now=T0, psk=psks[0], tenant_id="default"),
        lambda: store.issue("dev2", BS, now=T0, tenant_id="default"),
        lambda: store.issue("x", BS, now=T0, identity=issued[0].credential.identity, tenant_id="default"),
        lambda: store.issue("x", BS, now=T0, psk=psks[1][:8], tenant_id="default"),
        lambda: store.replace("none", BS, now=T0, tenant_id="default"),
    ]
    for failure in failures:
        with pytest.raises(Exception) as info:
            failure()
        texts += [str(info.value), repr(info.value), str(info.getrepr())]
    store.revoke("dev2", now=T0 + 2, tenant_id="default")
    backend.reopen()
    store = backend.store
    texts += [repr(c) for c in store.list(tenant_id=None, include_revoked=True)]
    store.psk_for(issued[1].credential.identity)
    store.psk_for("unknown")
    assert any("issued" in r.getMessage() for r in caplog.records)
    if backend.kind != "memory":
        assert any(r.name.startswith("sqlalchemy") for r in caplog.records)  # the database's own log was on
    assert_hidden(caplog.text, psks)
    assert_hidden("\n".join(texts), psks)


# ---------------------------------------------------------------- SQL specifics


def all_database_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


def test_database_file_holds_no_psk(tmp_path: Path) -> None:
    key_file = tmp_path / "vault.key"
    vault = Vault.open(key_file, environ={})
    db = Database.for_data_dir(tmp_path / "data")
    store = SqlCredentialStore(db, vault)
    psks = [bytes(store.issue(f"dev-{i}", kind, now=T0, tenant_id="default").psk)
            for i in range(25) for kind in (BS, SV)]
    psks.append(bytes(store.replace("dev-0", BS, now=T0 + 1, tenant_id="default").psk))
    psks.append(bytes(store.issue("given", BS, now=T0, psk=b"A" * 8 + bytes(range(8)), tenant_id="default").psk))
    while_open = all_database_bytes(tmp_path / "data")  # the WAL file included
    db.close()
    on_disk = all_database_bytes(tmp_path / "data")
    assert b"dev-24" in on_disk  # the search does see the rows
    for data in (while_open, on_disk, key_file.read_bytes()):
        assert_hidden(data, psks)


def test_tables_live_beside_the_servers(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path) as db:
        SqlCredentialStore(db, Vault.generate())
        SqlCredentialStore(db.engine, Vault.generate())  # an engine does too; creating the tables is idempotent
        tables = set(inspect(db.engine).get_table_names())
        assert {"registration", "device", "credential", "credential_psk_fingerprint"} <= tables
        assert (tmp_path / DB_FILENAME).exists()


def test_in_memory_sqlite_and_a_plain_engine_work(tmp_path: Path) -> None:
    with Database("sqlite://") as db:
        store = SqlCredentialStore(db, Vault.generate())
        cred, psk = store.issue("dev", BS, now=T0, tenant_id="default")
        assert store.verify(cred.identity, psk)
    engine = create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        store = SqlCredentialStore(engine, Vault.generate())
        cred, psk = store.issue("dev", BS, now=T0, tenant_id="default")
        assert store.psk_for(cred.identity) == psk
    finally:
        engine.dispose()


def test_the_database_enforces_the_rules_itself(tmp_path: Path) -> None:
    """Two processes racing past each other's checks still cannot break uniqueness: the schema refuses it."""
    with Database.for_data_dir(tmp_path) as db:
        store = SqlCredentialStore(db, Vault.generate())
        cred, _ = store.issue("dev", BS, now=T0, tenant_id="default")
        row = {"tenant_id": "default", "endpoint": "dev", "kind": "bootstrap", "created_at": T0, "revoked": False}
        insert = text("INSERT INTO credential (identity, tenant_id, endpoint, kind, created_at, revoked) "
                      "VALUES (:identity, :tenant_id, :endpoint, :kind, :created_at, :revoked)")
        with pytest.raises(IntegrityError), db.engine.begin() as conn:  # a second active bootstrap credential
            conn.execute(insert, {**row, "identity": "another"})
        with pytest.raises(IntegrityError), db.engine.begin() as conn:  # an identity used twice
            conn.execute(insert, {**row, "identity": cred.identity, "endpoint": "other"})
        with db.engine.begin() as conn:  # revoked ones do not count as active
            conn.execute(insert, {**row, "identity": "old", "revoked": True})


def test_a_credential_issued_elsewhere_is_found(tmp_path: Path) -> None:
    vault = Vault.generate()
    with Database.for_data_dir(tmp_path) as db:
        server = SqlCredentialStore(db, vault)
        assert server.load() == 0
        cli = SqlCredentialStore(db, vault)  # e.g. the provisioning CLI, another process on the same database
        cred, psk = cli.issue("dev", BS, now=T0, tenant_id="default")
        assert server.psk_for(cred.identity) == psk and server.endpoint_for(cred.identity) == "dev"
        assert server.by_endpoint("dev", BS, tenant_id="default") == cred
        with pytest.raises(CredentialConflictError):  # the database, not the index, is the judge
            server.issue("dev", BS, now=T0, tenant_id="default")
        with pytest.raises(PskReuseError):
            server.issue("dev2", BS, now=T0, psk=psk, tenant_id="default")
        cli.revoke("dev", now=T0 + 1, tenant_id="default")
        assert server.load() == 0  # another process's revocation is seen at the next load
        assert server.psk_for(cred.identity) is None


def test_a_tampered_or_moved_sealed_key_does_not_open(tmp_path: Path) -> None:
    vault = Vault.generate()
    with Database.for_data_dir(tmp_path) as db:
        store = SqlCredentialStore(db, vault)
        a, _ = store.issue("dev-a", BS, now=T0, tenant_id="default")
        b, _ = store.issue("dev-b", BS, now=T0, tenant_id="default")
        with db.engine.begin() as conn:  # copy a's sealed key over b's
            conn.execute(text("UPDATE credential SET sealed_psk = (SELECT sealed_psk FROM credential "
                              "WHERE identity = :a) WHERE identity = :b"), {"a": a.identity, "b": b.identity})
        store.load()
        with pytest.raises(SealedDataError, match="bound to another record"):
            store.psk_for(b.identity)
        blob = bytearray(conn_blob(db, a.identity))
        blob[-1] ^= 0x01
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE credential SET sealed_psk = :blob WHERE identity = :a"),
                         {"blob": bytes(blob), "a": a.identity})
        store.load()
        with pytest.raises(SealedDataError):
            store.verify(a.identity, bytes(16))


def conn_blob(db: Database, identity: str) -> bytes:
    with db.engine.connect() as conn:
        return bytes(conn.execute(text("SELECT sealed_psk FROM credential WHERE identity = :i"),
                                  {"i": identity}).scalar_one())


def test_revoked_credentials_keep_no_sealed_key(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path) as db:
        store = SqlCredentialStore(db, Vault.generate())
        a, _ = store.issue("dev", BS, now=T0, tenant_id="default")
        b, _ = store.replace("dev", BS, now=T0 + 1, tenant_id="default")
        with db.engine.connect() as conn:
            found = conn.execute(text("SELECT identity, sealed_psk FROM credential")).all()
        rows: dict[str, bytes | None] = {r[0]: r[1] for r in found}
        assert rows[a.identity] is None and rows[b.identity] is not None


def test_a_wrong_kek_is_caught_at_load(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path) as db:
        cred, _ = SqlCredentialStore(db, Vault.generate()).issue("dev", BS, now=T0, tenant_id="default")
        other = SqlCredentialStore(db, Vault.generate())  # e.g. the key file was lost and made anew
        with pytest.raises(SealedDataError, match="another key-encryption key") as info:
            other.load()
        assert cred.identity in str(info.value)


def test_database_failures_raise_storage_error(tmp_path: Path) -> None:
    with Database.for_data_dir(tmp_path) as db:
        store = SqlCredentialStore(db, Vault.generate())
        store.issue("dev", BS, now=T0, tenant_id="default")
        with db.engine.begin() as conn:
            conn.execute(text("DROP TABLE credential"))
        for call in (lambda: store.issue("x", BS, now=T0, tenant_id="default"), lambda: store.load(),
                     lambda: store.list(tenant_id="default"), lambda: store.revoke("dev", now=T0, tenant_id="default"),
                     lambda: store.psk_for("unknown")):
            with pytest.raises(StorageError, match="no such table"):
                call()

"""Credentials changed by another process reach a running server: a revocation or a replacement written by a second
store on the same SQLite file (what ``scratch factory revoke`` or the bootstrap server do) closes the device's live
DTLS session within the poll interval, emits ``security.credential_revoked`` and makes its next handshake fail.
The server accepts server credentials only: a bootstrap credential never completes a handshake with it.

Real DTLS on 127.0.0.1 (tinydtls on both sides), real SQLite, two store instances = two processes' views.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiocoap
import pytest
from aiocoap import resource

from bootstrap.credentials import CredentialKind, MemoryCredentialStore
from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from lwm2m_server.coap.dtls import dtls_client_context
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import UnknownEndpointError
from lwm2m_server.core.operations import ReadRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.events import Event
from lwm2m_server.server import SECURITY_CREDENTIAL_REVOKED, Lwm2mServer, ServerSettings
from lwm2m_server.storage.database import Database
from tests.harness import eventually

SV, BS = CredentialKind.SERVER, CredentialKind.BOOTSTRAP


class Manufacturer(resource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"ACME", content_format=int(ContentFormat.TEXT))


def device_site() -> resource.Site:
    site = resource.Site()
    site.add_resource(("3", "0", "0"), Manufacturer())
    return site


def opener(vault: Vault) -> Callable[[Database], object]:
    """What the CLI hands the server: the SQL store on the server's own database, server credentials only."""

    def open_credentials(database: Database) -> object:
        view = SqlCredentialStore(database, vault).for_kind(CredentialKind.SERVER)
        view.load()
        return view

    return open_credentials


@contextlib.asynccontextmanager
async def dtls_only_server(data_dir: Path, vault: Vault, **settings: object) -> AsyncIterator[Lwm2mServer]:
    settings.setdefault("credential_poll_interval", 0.1)
    s = ServerSettings(data_dir=data_dir, coap_port=None, coaps_port=0, api_port=None, **settings)  # type: ignore[arg-type]
    srv = Lwm2mServer(s, open_credentials=opener(vault))  # type: ignore[arg-type]
    try:
        await srv.start()
        yield srv
    finally:
        await srv.stop()


@contextlib.contextmanager
def other_process(data_dir: Path, vault: Vault) -> object:
    """A second credential store on the same database file: the CLI's or the bootstrap server's view."""
    database = Database.for_data_dir(data_dir)
    try:
        store = SqlCredentialStore(database, vault)
        store.load()
        yield store
    finally:
        database.close()


async def register(srv: Lwm2mServer, identity: str, psk: bytes, endpoint: str,
                   timeout: float = 10) -> tuple[aiocoap.Context, int]:
    client = await dtls_client_context(device_site(), srv.coaps_uri, identity.encode(), psk)
    request = aiocoap.Message(code=aiocoap.POST, uri=f"{srv.coaps_uri}/rd", payload=b"</3/0>",
                              content_format=int(ContentFormat.LINK))
    request.opt.uri_query = (f"ep={endpoint}", "lt=300", "lwm2m=1.1")
    try:
        answer = await asyncio.wait_for(client.request(request).response, timeout)
    except BaseException:
        await client.shutdown()
        raise
    client._kept_remote = answer.remote  # type: ignore[attr-defined]  # keeps the session alive
    return client, int(answer.code)


async def refused(srv: Lwm2mServer, identity: str, psk: bytes, endpoint: str) -> bool:
    """Whether a registration with these credentials fails (the handshake does not complete)."""
    try:
        client, code = await register(srv, identity, psk, endpoint, timeout=6)
    except (aiocoap.error.Error, TimeoutError):
        return True
    await client.shutdown()
    return code != aiocoap.CREATED


def sessions_of(srv: Lwm2mServer, identity: str) -> int:
    assert srv.dtls is not None
    return sum(1 for r in srv.dtls.sessions() if r.identity == identity.encode())


async def read_manufacturer(srv: Lwm2mServer, endpoint: str) -> object:
    assert srv.management is not None
    return (await srv.management.send(endpoint, ReadRequest(LwM2mPath.of(3, 0, 0)), timeout=5,
                                      tenant_id="default")).content


@pytest.fixture
def vault() -> Vault:
    return Vault.generate()


async def test_a_revocation_by_another_process_closes_the_session_and_the_next_handshake_fails(
        tmp_path: Path, vault: Vault) -> None:
    async with dtls_only_server(tmp_path, vault) as srv:
        seen: list[Event] = []
        srv.events.subscribe(seen.append, "security")
        with other_process(tmp_path, vault) as cli:
            # issued after the server started: found on a miss
            cred, psk = cli.issue("dev-1", SV, now=time.time(), tenant_id="default")
            client, code = await register(srv, cred.identity, bytes(psk), "dev-1")
            try:
                assert code == aiocoap.CREATED
                assert (await read_manufacturer(srv, "dev-1")).value == "ACME"  # type: ignore[attr-defined]
                assert sessions_of(srv, cred.identity) == 1

                cli.revoke("dev-1", now=time.time(), tenant_id="default")
                await eventually(lambda: sessions_of(srv, cred.identity) == 0
                                 and any(e.kind == SECURITY_CREDENTIAL_REVOKED for e in seen), timeout=10)
                with pytest.raises(UnknownEndpointError):  # its registration went with the key
                    await read_manufacturer(srv, "dev-1")
            finally:
                await client.shutdown()
        (event,) = [e for e in seen if e.kind == SECURITY_CREDENTIAL_REVOKED]
        assert event.endpoint == "dev-1" and event.tenant_id == "default"
        assert event.data["identity"] == cred.identity and event.data["kind"] == "server"
        assert event.data["sessions_closed"] == 1 and event.data["registration_removed"] is True
        assert srv.registrations is not None and srv.registrations.by_endpoint("dev-1", tenant_id="default") is None
        assert bytes(psk).hex() not in repr(event) and repr(bytes(psk)) not in repr(event)
        assert await refused(srv, cred.identity, bytes(psk), "dev-1")


async def test_a_replacement_by_another_process_ends_the_old_identity_and_admits_the_new(
        tmp_path: Path, vault: Vault) -> None:
    with other_process(tmp_path, vault) as cli:
        old, old_psk = cli.issue("dev-1", SV, now=time.time(), tenant_id="default")
        async with dtls_only_server(tmp_path, vault) as srv:
            client, code = await register(srv, old.identity, bytes(old_psk), "dev-1")
            try:
                assert code == aiocoap.CREATED
                removals: list[Event] = []
                srv.events.subscribe(removals.append, "registration.deregistered")
                new, new_psk = cli.replace("dev-1", SV, now=time.time(), tenant_id="default")
                await eventually(lambda: sessions_of(srv, old.identity) == 0, timeout=10)
                # the registration made with the old key went with it
                assert [e.data["reason"] for e in removals] == ["credential_revoked"]
            finally:
                await client.shutdown()
            client, code = await register(srv, new.identity, bytes(new_psk), "dev-1")
            try:
                assert code == aiocoap.CREATED
                assert (await read_manufacturer(srv, "dev-1")).value == "ACME"  # type: ignore[attr-defined]
            finally:
                await client.shutdown()
            assert await refused(srv, old.identity, bytes(old_psk), "dev-1")


async def test_a_revocation_committed_after_later_polls_is_still_seen(tmp_path: Path, vault: Vault) -> None:
    """A writer stamps revoked_at, then waits (a database lock) while the server polls; the overlap margin of the
    polls still catches its row once it is committed."""
    async with dtls_only_server(tmp_path, vault, credential_poll_margin=5.0) as srv:
        with other_process(tmp_path, vault) as cli:
            cred, psk = cli.issue("dev-1", SV, now=time.time(), tenant_id="default")
            client, code = await register(srv, cred.identity, bytes(psk), "dev-1")
            try:
                assert code == aiocoap.CREATED
                stamped = time.time()
                polls = srv.credential_polls
                await eventually(lambda: srv.credential_polls >= polls + 3, timeout=10)  # polls after the stamp
                cli.revoke("dev-1", now=stamped, tenant_id="default")
                await eventually(lambda: sessions_of(srv, cred.identity) == 0, timeout=10)
            finally:
                await client.shutdown()


async def test_a_bootstrap_credential_does_not_open_a_session_with_the_lwm2m_server(
        tmp_path: Path, vault: Vault) -> None:
    with other_process(tmp_path, vault) as cli:
        bs, bs_psk = cli.issue("dev-1", BS, now=time.time(), tenant_id="default")
        async with dtls_only_server(tmp_path, vault) as srv:
            assert await refused(srv, bs.identity, bytes(bs_psk), "dev-1")
            assert srv.registrations is not None and srv.registrations.count() == 0
            assert srv.dtls is not None and srv.dtls.handshakes_completed == 0 and srv.dtls.handshakes_failed >= 1


async def test_credentials_revoked_before_the_start_are_not_reported_again(tmp_path: Path, vault: Vault) -> None:
    with other_process(tmp_path, vault) as cli:
        cli.issue("dev-1", SV, now=time.time(), tenant_id="default")
        cli.revoke("dev-1", now=time.time(), tenant_id="default")
        async with dtls_only_server(tmp_path, vault) as srv:
            seen: list[Event] = []
            srv.events.subscribe(seen.append, SECURITY_CREDENTIAL_REVOKED)
            polls = srv.credential_polls
            await eventually(lambda: srv.credential_polls >= polls + 2, timeout=10)
            assert seen == []


# -- the store side: revoked_since and the kind views, for every backend


@pytest.fixture(params=["memory", "sql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path, vault: Vault) -> object:
    """(writer, reader): the same store twice for memory; two SQL stores on one file (two processes)."""
    if request.param == "memory":
        store = MemoryCredentialStore(vault)
        yield store, store
        return
    with other_process(tmp_path, vault) as writer, other_process(tmp_path, vault) as reader:
        yield writer, reader


def test_revoked_since_reports_revocations_and_replacements_and_applies_them(stores: object) -> None:
    writer, reader = stores  # type: ignore[misc]
    a, a_psk = writer.issue("dev-a", SV, now=10, tenant_id="default")
    writer.issue("dev-b", SV, now=10, tenant_id="default")
    assert reader.psk_for(a.identity) == a_psk  # in the reader's index now
    assert reader.revoked_since(0) == []
    writer.revoke("dev-a", now=20, tenant_id="default")
    b2, _ = writer.replace("dev-b", SV, now=30, tenant_id="default")
    revoked = reader.revoked_since(15)
    assert [(c.endpoint, c.revoked_at) for c in revoked] == [("dev-a", 20.0), ("dev-b", 30.0)]
    assert all(c.revoked for c in revoked)
    assert reader.psk_for(a.identity) is None and reader.endpoint_for(a.identity) is None
    assert [c.endpoint for c in reader.revoked_since(25)] == ["dev-b"]
    assert reader.revoked_since(31) == []
    assert reader.endpoint_for(b2.identity) == "dev-b"


def test_a_kind_view_knows_its_own_kind_only(stores: object) -> None:
    writer, reader = stores  # type: ignore[misc]
    sv, sv_psk = writer.issue("dev-1", SV, now=10, tenant_id="default")
    bs, bs_psk = writer.issue("dev-1", BS, now=10, tenant_id="default")
    server, bootstrap = reader.for_kind(SV), reader.for_kind("bootstrap")
    assert server.kind is SV and bootstrap.kind is BS
    assert server.psk_for(sv.identity) == sv_psk and server.psk_for(bs.identity.encode()) is None
    assert bootstrap.psk_for(bs.identity) == bs_psk and bootstrap.psk_for(sv.identity) is None
    assert server.endpoint_for(sv.identity) == "dev-1" and server.endpoint_for(bs.identity) is None
    assert server.credential_for(bs.identity) is None and bootstrap.credential_for(bs.identity) == bs
    assert server.verify(sv.identity, sv_psk) and not server.verify(bs.identity, bs_psk)
    assert not server.verify(sv.identity, bytes(bs_psk))
    assert server.load() == 1 and bootstrap.load() == 1
    writer.revoke("dev-1", now=20, tenant_id="default")
    assert [c.identity for c in server.revoked_since(0)] == [sv.identity]
    assert [c.identity for c in bootstrap.revoked_since(0)] == [bs.identity]
    assert server.psk_for(sv.identity) is None and bootstrap.psk_for(bs.identity) is None
    assert bytes(sv_psk).hex() not in repr(server)


async def test_a_whole_store_given_to_the_server_is_restricted_to_server_credentials(tmp_path: Path,
                                                                                   vault: Vault) -> None:
    store = MemoryCredentialStore(vault)
    bs, bs_psk = store.issue("dev-1", BS, now=0, tenant_id="default")
    sv, sv_psk = store.issue("dev-1", SV, now=0, tenant_id="default")
    s = ServerSettings(data_dir=tmp_path, coap_port=None, coaps_port=0, api_port=None)
    srv = Lwm2mServer(s, credentials=store)
    try:
        await srv.start()
        assert await refused(srv, bs.identity, bytes(bs_psk), "dev-1")
        client, code = await register(srv, sv.identity, bytes(sv_psk), "dev-1")
        await client.shutdown()
        assert code == aiocoap.CREATED
    finally:
        await srv.stop()

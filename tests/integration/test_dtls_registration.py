"""Registration over DTLS-PSK with credentials from the vault-backed store: the identity binds the endpoint.

Real DTLS on 127.0.0.1 (tinydtls on both sides); the server reads the device over the device's own session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiocoap
import pytest
from aiocoap import resource

from bootstrap.credentials import MemoryCredentialStore
from bootstrap.vault import Vault
from lwm2m_server.coap.dtls import dtls_client_context
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.operations import ReadRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.events import Event
from lwm2m_server.server import Lwm2mServer
from tests.harness import running_server


class Manufacturer(resource.Resource):
    """/3/0/0 of a minimal device."""

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"ACME", content_format=int(ContentFormat.TEXT))


def device_site() -> resource.Site:
    site = resource.Site()
    site.add_resource(("3", "0", "0"), Manufacturer())
    return site


@pytest.fixture
def store() -> MemoryCredentialStore:
    return MemoryCredentialStore(Vault.generate())


@contextlib.asynccontextmanager
async def dtls_server(tmp_path: Path, store: MemoryCredentialStore) -> AsyncIterator[Lwm2mServer]:
    async with running_server(tmp_path, coaps_port=0, credentials=store) as srv:
        yield srv


async def register(srv: Lwm2mServer, identity: str, psk: bytes, endpoint: str) -> tuple[aiocoap.Context, int]:
    client = await dtls_client_context(device_site(), srv.coaps_uri, identity.encode(), psk)
    request = aiocoap.Message(code=aiocoap.POST, uri=f"{srv.coaps_uri}/rd", payload=b"</3/0>",
                              content_format=int(ContentFormat.LINK))
    request.opt.uri_query = (f"ep={endpoint}", "lt=300", "lwm2m=1.1")
    try:
        answer = await asyncio.wait_for(client.request(request).response, 10)
    except BaseException:
        await client.shutdown()
        raise
    client._kept_remote = answer.remote  # type: ignore[attr-defined]  # keeps the session alive
    return client, int(answer.code)


async def test_a_device_registers_as_its_bound_endpoint_and_is_read_over_its_session(
        tmp_path: Path, store: MemoryCredentialStore) -> None:
    cred, psk = store.issue("dev-1", "server", now=0, tenant_id="default")
    async with dtls_server(tmp_path, store) as srv:
        client, code = await register(srv, cred.identity, bytes(psk), "dev-1")
        try:
            assert code == aiocoap.CREATED
            assert srv.registrations is not None
            reg = srv.registrations.by_endpoint("dev-1", tenant_id="default")
            assert reg is not None and reg.secure and reg.identity == cred.identity
            assert srv.management is not None
            read = await srv.management.send("dev-1", ReadRequest(LwM2mPath.of(3, 0, 0)), timeout=10,
                                             tenant_id="default")
            assert read.content.value == "ACME"  # type: ignore[union-attr]
        finally:
            await client.shutdown()


async def test_an_identity_claiming_another_endpoint_is_refused_and_nothing_changes(
        tmp_path: Path, store: MemoryCredentialStore) -> None:
    mine, my_psk = store.issue("dev-1", "server", now=0, tenant_id="default")
    store.issue("dev-2", "server", now=0, tenant_id="default")
    async with dtls_server(tmp_path, store) as srv:
        seen: list[Event] = []
        srv.events.subscribe(seen.append, "security")
        client, code = await register(srv, mine.identity, bytes(my_psk), "dev-2")
        await client.shutdown()
        assert code == aiocoap.FORBIDDEN
        assert srv.registrations is not None and srv.registrations.count() == 0
        assert [e.kind for e in seen] == ["security.identity_mismatch"]
        assert seen[0].data["claimed"] == "dev-2" and seen[0].data["identity"] == mine.identity
        assert bytes(my_psk).hex() not in repr(seen[0].data)


async def test_a_revoked_credential_no_longer_completes_a_handshake(
        tmp_path: Path, store: MemoryCredentialStore) -> None:
    cred, psk = store.issue("dev-1", "server", now=0, tenant_id="default")
    store.revoke("dev-1", now=1, tenant_id="default")
    async with dtls_server(tmp_path, store) as srv:
        with pytest.raises((aiocoap.error.Error, TimeoutError)):
            client, _ = await register(srv, cred.identity, bytes(psk), "dev-1")
            await client.shutdown()
        assert srv.registrations is not None and srv.registrations.count() == 0


async def test_plain_coap_cannot_register_an_endpoint_that_has_a_dtls_credential(
        tmp_path: Path, store: MemoryCredentialStore) -> None:
    store.issue("bound-1", "server", now=0, tenant_id="default")
    async with running_server(tmp_path, coaps_port=0, credentials=store) as srv:
        client = await aiocoap.Context.create_client_context()
        try:
            codes = {}
            for endpoint in ("bound-1", "unbound-1"):
                request = aiocoap.Message(code=aiocoap.POST, uri=f"{srv.coap_uri}/rd", payload=b"</3/0>",
                                          content_format=int(ContentFormat.LINK))
                request.opt.uri_query = (f"ep={endpoint}", "lt=300")
                codes[endpoint] = (await asyncio.wait_for(client.request(request).response, 10)).code
        finally:
            await client.shutdown()
        assert codes == {"bound-1": aiocoap.FORBIDDEN, "unbound-1": aiocoap.CREATED}
        assert srv.registrations is not None and srv.registrations.by_endpoint("bound-1", tenant_id="default") is None

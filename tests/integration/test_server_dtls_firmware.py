"""Firmware pull over DTLS: a device that registered over coaps:// is given a coaps:// Package URI (the file server
sits on the same site, so it serves that device over its DTLS session); a device on plain CoAP gets coap://.

The devices are minimal aiocoap sites serving /5/0 (a real DTLS client for one, plain UDP for the other): they
record what the server writes to /5/0/1, and the DTLS one then fetches the package from that URI.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiocoap
from aiocoap import resource

from bootstrap.credentials import MemoryCredentialStore
from bootstrap.vault import Vault
from lwm2m_server.coap.dtls import dtls_client_context
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.codec.registry import decode, encode
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.nodes import Instance, ResourceType, SingleResource
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.fota.service import Method
from lwm2m_server.server import Lwm2mServer
from tests.harness import eventually, running_server

MODEL = ObjectModel.default()
FIRMWARE, PACKAGE_URI = LwM2mPath.of(5, 0), LwM2mPath.of(5, 0, 1)
PACKAGE = bytes(range(256)) * 8


class FirmwareInstance(resource.Resource):
    """/5/0 of an idle device that takes pulled packages only (/5/0/9 = 0)."""

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        node = Instance(0, {rid: SingleResource(rid, ResourceType.INTEGER, 0) for rid in (3, 5, 9)})
        fmt = ContentFormat.of(request.opt.accept) if request.opt.accept is not None else ContentFormat.TLV
        return aiocoap.Message(payload=encode(node, FIRMWARE, fmt, MODEL), content_format=int(fmt))


class PackageUri(resource.Resource):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[str] = []

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        node = decode(request.payload, ContentFormat.of(request.opt.content_format or 0), PACKAGE_URI, MODEL)
        assert isinstance(node, SingleResource)
        self.written.append(str(node.value))
        return aiocoap.Message(code=aiocoap.CHANGED)

    render_post = render_put


def device_site() -> tuple[resource.Site, PackageUri]:
    site, uri = resource.Site(), PackageUri()
    site.add_resource(("5", "0"), FirmwareInstance())
    site.add_resource(("5", "0", "1"), uri)
    return site, uri


async def register(client: aiocoap.Context, base: str, endpoint: str) -> aiocoap.Message:
    request = aiocoap.Message(code=aiocoap.POST, uri=f"{base}/rd", payload=b"</5/0>",
                              content_format=int(ContentFormat.LINK))
    request.opt.uri_query = (f"ep={endpoint}", "lt=300", "lwm2m=1.1")
    answer = await asyncio.wait_for(client.request(request).response, 10)
    assert answer.code == aiocoap.CREATED
    return answer


@contextlib.asynccontextmanager
async def server_with_both(tmp_path: Path, store: MemoryCredentialStore) -> AsyncIterator[Lwm2mServer]:
    async with running_server(tmp_path, coap_port=0, coaps_port=0, credentials=store) as srv:
        yield srv


async def test_a_device_registered_over_dtls_pulls_from_a_coaps_uri_over_its_session(tmp_path: Path) -> None:
    store = MemoryCredentialStore(Vault.generate())
    cred, psk = store.issue("secure-dev", "server", now=0, tenant_id="default")
    async with server_with_both(tmp_path, store) as srv:
        site, written = device_site()
        client = await dtls_client_context(site, srv.coaps_uri, cred.identity.encode(), bytes(psk))
        try:
            answer = await register(client, srv.coaps_uri, "secure-dev")
            assert srv.firmware is not None and srv.registrations is not None
            reg = srv.registrations.by_endpoint("secure-dev", tenant_id="default")
            assert reg is not None and reg.secure
            assert srv.firmware.file_base_uri_for(reg) == srv.coaps_uri

            srv.firmware.start("secure-dev", PACKAGE, method=Method.PULL, timeout=60, tenant_id="default")
            await eventually(lambda: written.written)
            (uri,) = written.written
            assert uri.startswith(f"{srv.coaps_uri}/fw/")

            fetched = await asyncio.wait_for(client.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response, 10)
            assert fetched.code == aiocoap.CONTENT and fetched.payload == PACKAGE
            assert answer.remote is not None  # the registration's session carried it all
        finally:
            await client.shutdown()


async def test_a_device_on_plain_coap_gets_a_coap_uri(tmp_path: Path) -> None:
    store = MemoryCredentialStore(Vault.generate())
    async with server_with_both(tmp_path, store) as srv:
        site, written = device_site()
        client = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", 0))
        try:
            await register(client, srv.coap_uri, "plain-dev")
            assert srv.firmware is not None
            srv.firmware.start("plain-dev", PACKAGE, method=Method.PULL, timeout=60, tenant_id="default")
            await eventually(lambda: written.written)
            assert written.written[0].startswith(f"{srv.coap_uri}/fw/")
        finally:
            await client.shutdown()

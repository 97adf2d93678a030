"""The bootstrap server over real DTLS on 127.0.0.1, driven by a scripted device (an aiocoap resource that answers
each bootstrap request as a configurable LwM2M client would): the sequence, the fresh server key, refusals.

The end-to-end path with simulated devices (factory -> bootstrap -> register) is in test_sim_bootstrap*.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiocoap
import pytest
from aiocoap import resource

from bootstrap.credentials import CredentialKind, MemoryCredentialStore
from bootstrap.server import BootstrapServer, BootstrapSettings
from bootstrap.vault import Vault
from lwm2m_server.coap.dtls import dtls_client_context
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.nodes import Instance, SingleResource
from lwm2m_server.core.paths import LwM2mPath

MODEL = ObjectModel.default()
SERVER_URI = "coaps://127.0.0.1:5684"


class ScriptedDevice(resource.Resource):
    """Answers Bootstrap-Discover/Delete/Write/Read/Finish; ``refuse`` maps (method, path) to an error code."""

    def __init__(self, refuse: dict[tuple[str, str], aiocoap.numbers.codes.Code] | None = None,
                 discover: bytes = b'</>;lwm2m=1.1,</0/0>;uri="coaps://bs",</1>,</3/0>') -> None:
        super().__init__()
        self.refuse = refuse or {}
        self.silent: set[tuple[str, str]] = set()  # requests never answered (the answer lost on the way back)
        self.discover = discover
        self.log: list[tuple[str, str]] = []
        self.objects: dict[str, Instance] = {}
        self.finished = asyncio.Event()

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        path = "/" + "/".join(request.opt.uri_path)
        method = str(request.code).split()[0]
        self.log.append((method, path))
        if (method, path) in self.refuse:
            return aiocoap.Message(code=self.refuse[(method, path)])
        if (method, path) in self.silent:
            if path == "/bs":
                self.finished.set()  # applied: the device goes on with its new configuration
            await asyncio.Event().wait()
        if method == "GET" and path == "/":
            return aiocoap.Message(code=aiocoap.CONTENT, payload=self.discover,
                                   content_format=int(ContentFormat.LINK))
        if method == "DELETE":
            self.objects = {k: v for k, v in self.objects.items() if not k.startswith(path + "/")}
            return aiocoap.Message(code=aiocoap.DELETED)
        if method == "PUT":
            p = LwM2mPath.parse(path)
            node = registry.decode(request.payload, ContentFormat.of(int(request.opt.content_format)), p, MODEL)
            assert isinstance(node, Instance)
            self.objects[path] = node
            return aiocoap.Message(code=aiocoap.CHANGED)
        if method == "GET" and path == "/1":
            inst = self.objects["/1/0"]
            payload = registry.encode(inst, LwM2mPath.of(1, 0), ContentFormat.TLV, MODEL)
            return aiocoap.Message(code=aiocoap.CONTENT, payload=payload, content_format=int(ContentFormat.TLV))
        if method == "POST" and path == "/bs":
            self.finished.set()
            return aiocoap.Message(code=aiocoap.CHANGED)
        return aiocoap.Message(code=aiocoap.METHOD_NOT_ALLOWED)

    def value(self, path: str, rid: int) -> object:
        res = self.objects[path].resources[rid]
        assert isinstance(res, SingleResource)
        return res.value


@pytest.fixture
def store() -> MemoryCredentialStore:
    return MemoryCredentialStore(Vault.generate())


@contextlib.asynccontextmanager
async def bootstrap_server(store: MemoryCredentialStore, **settings: object) -> AsyncIterator[BootstrapServer]:
    events: list[tuple[str, dict[str, object]]] = []
    srv = BootstrapServer(BootstrapSettings(server_uri=SERVER_URI, coaps_port=0, **settings),  # type: ignore[arg-type]
                          store, on_event=lambda k, d: events.append((k, d)))
    srv.outcomes = asyncio.Queue()
    srv.events = events  # type: ignore[attr-defined]
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@contextlib.asynccontextmanager
async def device_session(srv: BootstrapServer, identity: str, psk: bytes,
                         device: ScriptedDevice) -> AsyncIterator[aiocoap.Context]:
    ctx = await dtls_client_context(device, srv.coaps_uri, identity.encode(), psk)
    try:
        yield ctx
    finally:
        await ctx.shutdown()


async def request(ctx: aiocoap.Context, srv: BootstrapServer, path: str, query: tuple[str, ...],
                  code: aiocoap.numbers.codes.Code = aiocoap.POST, accept: int | None = None,
                  timeout: float = 10) -> aiocoap.Message:
    msg = aiocoap.Message(code=code, uri=f"{srv.coaps_uri}/{path}")
    msg.opt.uri_query = query
    if accept is not None:
        msg.opt.accept = accept
    answer = await asyncio.wait_for(ctx.request(msg).response, timeout)
    ctx._kept_remote = answer.remote  # type: ignore[attr-defined]  # the session lives while referenced
    return answer


async def test_bootstrap_writes_accounts_and_issues_a_fresh_server_key(store: MemoryCredentialStore) -> None:
    bs, bs_psk = store.issue("dev-1", "bootstrap", now=0, tenant_id="default")
    device = ScriptedDevice()
    async with bootstrap_server(store) as srv, device_session(srv, bs.identity, bytes(bs_psk), device) as ctx:
        answer = await request(ctx, srv, "bs", ("ep=dev-1",))
        assert answer.code == aiocoap.CHANGED
        endpoint, outcome = await asyncio.wait_for(srv.outcomes.get(), 20)  # type: ignore[union-attr]
        assert endpoint == "dev-1" and outcome.success, outcome
        assert [m for m, _ in device.log] == ["GET", "DELETE", "DELETE", "PUT", "PUT", "PUT", "GET", "POST"]
        assert [p for _, p in device.log] == ["/", "/0", "/1", "/0/0", "/0/1", "/1/0", "/1", "/bs"]
        # the bootstrap account keeps the factory credential; the server account carries a new one
        assert device.value("/0/0", 1) is True and device.value("/0/0", 3) == bs.identity.encode()
        assert device.value("/0/0", 5) == bytes(bs_psk)
        server_identity = device.value("/0/1", 3)
        server_psk = device.value("/0/1", 5)
        assert isinstance(server_identity, bytes) and isinstance(server_psk, bytes)
        assert device.value("/0/1", 0) == SERVER_URI and device.value("/0/1", 2) == 0
        assert device.value("/0/1", 10) == 1 and device.value("/1/0", 0) == 1 and device.value("/1/0", 7) == "U"
        assert len(server_psk) >= 16 and server_psk != bytes(bs_psk)
        cred = store.credential_for(server_identity)
        assert cred is not None and cred.kind is CredentialKind.SERVER and cred.endpoint == "dev-1"
        assert store.verify(server_identity, server_psk)
        events = [k for k, _ in srv.events]  # type: ignore[attr-defined]
        assert events == ["bootstrap.finished"]
        assert all(bytes(bs_psk).hex() not in repr(d) and server_psk.hex() not in repr(d)
                   for _, d in srv.events)  # type: ignore[attr-defined]

        # a second bootstrap replaces the server key: the first one stops working at once
        device.log.clear()
        await request(ctx, srv, "bs", ("ep=dev-1",))
        _, outcome = await asyncio.wait_for(srv.outcomes.get(), 20)  # type: ignore[union-attr]
        assert outcome.success
        assert device.value("/0/1", 3) != server_identity and device.value("/0/1", 5) != server_psk
        assert store.psk_for(server_identity) is None
        assert store.verify(device.value("/0/1", 3), device.value("/0/1", 5))  # type: ignore[arg-type]


async def test_refused_steps_are_handled_and_a_refused_server_account_revokes_the_new_key(
        store: MemoryCredentialStore) -> None:
    bs, bs_psk = store.issue("dev-2", "bootstrap", now=0, tenant_id="default")
    # a 1.0-style client: no Discover, no Delete /0 (falls back to Delete /), no Bootstrap-Read
    device = ScriptedDevice(refuse={("GET", "/"): aiocoap.NOT_FOUND, ("DELETE", "/0"): aiocoap.METHOD_NOT_ALLOWED,
                                    ("GET", "/1"): aiocoap.METHOD_NOT_ALLOWED})
    async with bootstrap_server(store) as srv, device_session(srv, bs.identity, bytes(bs_psk), device) as ctx:
        await request(ctx, srv, "bs", ("ep=dev-2", "pct=112"))
        _, outcome = await asyncio.wait_for(srv.outcomes.get(), 20)  # type: ignore[union-attr]
        assert outcome.success, outcome
        assert ("DELETE", "/") in device.log and ("DELETE", "/1") not in device.log
        assert set(outcome.notes) == {"discover: 4.04", "delete /0: 4.05", "read /1: 4.05"}
        first = device.value("/0/1", 3)

        device.refuse[("PUT", "/0/1")] = aiocoap.BAD_REQUEST
        await request(ctx, srv, "bs", ("ep=dev-2",))
        _, outcome = await asyncio.wait_for(srv.outcomes.get(), 20)  # type: ignore[union-attr]
        assert not outcome.success and outcome.code == "4.00" and outcome.step is not None
        # the half-delivered key was revoked ...
        assert store.by_endpoint("dev-2", "server", tenant_id="default") is None
        assert store.psk_for(first) is None  # ... and so was the one before
        assert [k for k, _ in srv.events][-1] == "bootstrap.failed"  # type: ignore[attr-defined]

        device.refuse.pop(("PUT", "/0/1"))
        device.refuse[("POST", "/bs")] = aiocoap.NOT_ACCEPTABLE
        await request(ctx, srv, "bs", ("ep=dev-2",))
        _, outcome = await asyncio.wait_for(srv.outcomes.get(), 20)  # type: ignore[union-attr]
        assert not outcome.success and outcome.code == "4.06"


async def test_an_unanswered_finish_keeps_the_key_the_device_may_be_using(store: MemoryCredentialStore) -> None:
    """Finish applied on the device, its 2.04 lost: revoking the key would lock a configured device out, so the key
    stays (``unconfirmed``); a failure at an earlier step, where the device cannot have applied it, revokes it."""
    bs, bs_psk = store.issue("dev-5", "bootstrap", now=0, tenant_id="default")
    device = ScriptedDevice()
    device.silent.add(("POST", "/bs"))
    async with (bootstrap_server(store, request_timeout=1.0) as srv,
                device_session(srv, bs.identity, bytes(bs_psk), device) as ctx):
        await request(ctx, srv, "bs", ("ep=dev-5",))
        _, outcome = await asyncio.wait_for(srv.outcomes.get(), 20)  # type: ignore[union-attr]
        assert not outcome.success and outcome.step is not None and outcome.step.value == "finish"
        assert outcome.code is None
        kept = store.by_endpoint("dev-5", "server", tenant_id="default")
        assert kept is not None and kept.identity.encode() == device.value("/0/1", 3)
        assert store.verify(device.value("/0/1", 3), device.value("/0/1", 5))  # type: ignore[arg-type]
        assert srv.stats.unconfirmed == 1 and srv.stats.failed == 0
        kind, data = srv.events[-1]  # type: ignore[attr-defined]
        assert kind == "bootstrap.unconfirmed" and data["server_identity"] == kept.identity

        device.silent = {("GET", "/1")}  # no answer to Bootstrap-Read: Finish was never sent
        await request(ctx, srv, "bs", ("ep=dev-5",))
        _, outcome = await asyncio.wait_for(srv.outcomes.get(), 20)  # type: ignore[union-attr]
        assert not outcome.success and outcome.step is not None and outcome.step.value == "read /1"
        assert outcome.reason == "the device did not answer: no answer within 1 s"
        assert store.by_endpoint("dev-5", "server", tenant_id="default") is None and srv.stats.failed == 1
        assert srv.events[-1][0] == "bootstrap.failed"  # type: ignore[attr-defined]


async def test_an_identity_claiming_another_endpoint_is_refused(store: MemoryCredentialStore) -> None:
    bs, bs_psk = store.issue("dev-3", "bootstrap", now=0, tenant_id="default")
    store.issue("dev-4", "bootstrap", now=0, tenant_id="default")
    device = ScriptedDevice()
    async with bootstrap_server(store) as srv, device_session(srv, bs.identity, bytes(bs_psk), device) as ctx:
        for path, code in (("bs", aiocoap.POST), ("bspack", aiocoap.GET)):
            answer = await request(ctx, srv, path, ("ep=dev-4",), code)
            assert answer.code == aiocoap.FORBIDDEN
        answer = await request(ctx, srv, "bs", ())
        assert answer.code == aiocoap.BAD_REQUEST
        assert device.log == [] and srv.stats.started == 0
        assert store.by_endpoint("dev-4", "server", tenant_id="default") is None
        assert store.by_endpoint("dev-3", "server", tenant_id="default") is None
        kinds = [k for k, _ in srv.events]  # type: ignore[attr-defined]
        assert kinds == ["security.bootstrap_refused", "security.bootstrap_refused"]


async def test_only_bootstrap_credentials_open_the_bootstrap_server(store: MemoryCredentialStore) -> None:
    sv, sv_psk = store.issue("dev-5", "server", now=0, tenant_id="default")
    bs, _ = store.issue("dev-6", "bootstrap", now=0, tenant_id="default")
    async with bootstrap_server(store) as srv:
        for identity, psk in ((sv.identity, bytes(sv_psk)), (bs.identity, b"\x01" * 16), ("nobody", b"\x02" * 16)):
            async with device_session(srv, identity, psk, ScriptedDevice()) as ctx:
                with pytest.raises((aiocoap.error.Error, TimeoutError)):  # a failed handshake: no answer
                    await request(ctx, srv, "bs", ("ep=dev-5",), timeout=3)
        assert srv.stats.started == 0


async def test_bootstrap_pack_carries_the_whole_configuration(store: MemoryCredentialStore) -> None:
    bs, bs_psk = store.issue("dev-7", "bootstrap", now=0, tenant_id="default")
    async with bootstrap_server(store) as srv, device_session(srv, bs.identity, bytes(bs_psk),
                                                              ScriptedDevice()) as ctx:
        for accept in (None, int(ContentFormat.SENML_JSON), int(ContentFormat.LWM2M_CBOR)):
            answer = await request(ctx, srv, "bspack", ("ep=dev-7",), aiocoap.GET, accept=accept)
            assert answer.code == aiocoap.CONTENT
            fmt = ContentFormat.of(int(answer.opt.content_format))
            assert (accept is None and fmt is ContentFormat.SENML_CBOR) or int(fmt) == accept
            nodes = registry.decode_composite(answer.payload, fmt, MODEL)
            values = {str(p): n.value for p, n in nodes.items() if isinstance(n, SingleResource)}
            identity, psk = values["/0/1/3"], values["/0/1/5"]
            assert values["/0/0/1"] is True and values["/0/1/0"] == SERVER_URI and values["/1/0/1"] == 300
            assert store.verify(identity, psk)  # type: ignore[arg-type]
        answer = await request(ctx, srv, "bspack", ("ep=dev-7",), aiocoap.GET, accept=int(ContentFormat.TLV))
        assert answer.code == aiocoap.NOT_ACCEPTABLE
        assert store.psk_for(identity) is not None  # type: ignore[arg-type]  # a refused pack issues nothing


async def test_bootstrap_requests_are_rate_limited_per_identity(store: MemoryCredentialStore) -> None:
    bs, bs_psk = store.issue("dev-8", "bootstrap", now=0, tenant_id="default")
    async with bootstrap_server(store, rate=0.5, burst=2) as srv, device_session(
            srv, bs.identity, bytes(bs_psk), ScriptedDevice()) as ctx:
        codes = [(await request(ctx, srv, "bspack", ("ep=dev-8",), aiocoap.GET)) for _ in range(3)]
        assert [c.code for c in codes] == [aiocoap.CONTENT, aiocoap.CONTENT, aiocoap.SERVICE_UNAVAILABLE]
        assert codes[-1].opt.max_age is not None and codes[-1].opt.max_age >= 1
        assert "security.rate_limited" in [k for k, _ in srv.events]  # type: ignore[attr-defined]

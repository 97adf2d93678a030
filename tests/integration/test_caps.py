"""Caps on every table a peer can grow, over real CoAP on loopback: the registration table (5.03 with Max-Age for a
new endpoint when full), the lifetime clamp, concurrent Block1 assemblies (in all and per remote), the per-endpoint
/rd rate limit, and the defaults (on, and generous enough for 1,000 devices behind one address)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiocoap
import pytest
from aiocoap import Message
from aiocoap.blockwise import ContinueException
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from bootstrap.server import BootstrapSettings
from lwm2m_server.coap.dtls import PskClaim
from lwm2m_server.coap.udp import exclusive_context, release
from lwm2m_server.core.rate_limit import RateLimiter
from lwm2m_server.events import EventBus
from lwm2m_server.registry.service import RegistrationService
from lwm2m_server.server import ServerSettings
from lwm2m_server.storage.memory import MemoryDeviceStore, MemoryRegistrationStore
from lwm2m_server.transport.site import Block1BusyError, BoundedBlock1Spool, ServerSite
from tests.harness import coap_client, request, running_server

LINKS = b"</1/0>,</3/0>,</5/0>"
BODY = b'</3/0>;t="' + b"a" * 117 + b'"'  # 128 bytes of link format: two 64-byte blocks


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def register(uri: str, ep: str, lt: int = 300) -> Message:
    msg = Message(code=Code.POST, uri=f"{uri}/rd", payload=LINKS, content_format=40)
    msg.opt.uri_query = (f"ep={ep}", f"lt={lt}")
    return msg


async def test_defaults_are_on_and_let_1000_devices_behind_one_address_register(tmp_path: Path) -> None:
    s = ServerSettings(data_dir=tmp_path)
    assert (s.rd_rate, s.rd_burst, s.rd_endpoint_rate, s.rd_endpoint_burst) == (100.0, 2000, 1.0, 20)
    assert (s.max_registrations, s.max_lifetime, s.max_block1_assemblies, s.max_block1_per_remote) == (
        100_000, 86_400, 1000, 4)
    b = BootstrapSettings(server_uri="coaps://127.0.0.1:5684")
    assert (b.rate, b.burst, b.identity_rate, b.identity_burst, b.max_sessions) == (100.0, 2000, 0.2, 20, 1000)

    async with running_server(tmp_path) as srv, coap_client() as ctx:
        assert srv.registrations is not None
        limit = asyncio.Semaphore(50)

        async def one(i: int) -> aiocoap.numbers.codes.Code:
            async with limit:
                return (await request(ctx, register(srv.coap_uri, f"fleet-{i:04d}"), timeout=30)).code

        codes = await asyncio.gather(*(one(i) for i in range(1000)))
        assert set(codes) == {Code.CREATED} and srv.registrations.count() == 1000
        # ... while one endpoint hammering /rd is cut off past its burst (20, then 1/s): of 60 Registers sent
        # back to back at most 20 + 1/s pass, so some are refused unless they took 40 s
        answers = [await request(ctx, register(srv.coap_uri, "chatty")) for _ in range(60)]
        refused = [a for a in answers if a.code == Code.SERVICE_UNAVAILABLE]
        assert 0 < len(refused) <= 40 and all(a.opt.max_age is not None and a.opt.max_age >= 1 for a in refused)
        assert {a.code for a in answers} == {Code.CREATED, Code.SERVICE_UNAVAILABLE}


async def test_a_full_registration_table_answers_503_and_lifetimes_are_clamped(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_registrations=5, max_lifetime=3600) as srv, coap_client() as ctx:
        assert srv.registrations is not None
        for i in range(5):
            answer = await request(ctx, register(srv.coap_uri, f"cap-{i}", lt=2**32 - 1))
            assert answer.code == Code.CREATED
        assert {r.lifetime for r in srv.registrations.all()} == {3600}  # asked 2**32-1 s, granted one hour
        refused = await request(ctx, register(srv.coap_uri, "cap-5"))
        assert refused.code == Code.SERVICE_UNAVAILABLE and refused.opt.max_age is not None
        assert 1 <= refused.opt.max_age <= 600  # until the first registration is due to expire, at most 10 min
        assert srv.registrations.by_endpoint("cap-5", tenant_id="default") is None and srv.registrations.count() == 5
        assert srv.registrations.refused_full == 1
        again = await request(ctx, register(srv.coap_uri, "cap-0", lt=60))  # a registered device always gets in
        assert again.code == Code.CREATED and srv.registrations.count() == 5
        loc = "/".join(again.opt.location_path)
        deleted = await request(ctx, Message(code=Code.DELETE, uri=f"{srv.coap_uri}/{loc}"))
        assert deleted.code == Code.DELETED
        assert (await request(ctx, register(srv.coap_uri, "cap-5"))).code == Code.CREATED  # room again


@asynccontextmanager
async def site_on_loopback(**kw: object) -> AsyncIterator[tuple[ServerSite, str, Clock]]:
    clock = Clock()
    registrations = RegistrationService(MemoryRegistrationStore(), MemoryDeviceStore(), EventBus(), clock)
    site = ServerSite(registrations, clock=clock, **kw)  # type: ignore[arg-type]
    context, port = await exclusive_context(site, "127.0.0.1", 0)
    try:
        yield site, f"coap://127.0.0.1:{port}", clock
    finally:
        await context.shutdown()
        release("127.0.0.1", port)


def block(uri: str, ep: str, num: int, more: bool, payload: bytes | None = None) -> Message:
    payload = BODY[64 * num:64 * (num + 1)] if payload is None else payload
    msg = Message(code=Code.POST, uri=f"{uri}/rd", payload=payload, content_format=40)
    msg.opt.uri_query = (f"ep={ep}", "lt=300")  # a distinct query: a distinct transfer (RFC 7959 2.4)
    msg.opt.block1 = BlockOption.BlockwiseTuple(num, more, 2)  # 64-byte blocks
    return msg


async def send(ctx: aiocoap.Context, msg: Message) -> Message:
    return await asyncio.wait_for(ctx.request(msg, handle_blockwise=False).response, 10)


async def test_block1_assemblies_are_capped_in_all_and_per_remote() -> None:
    async with site_on_loopback(max_block1_assemblies=3, max_block1_per_remote=2) as (site, uri, clock), \
            coap_client() as a, coap_client() as b:
        spool = site._block1
        spool.max_unauthenticated = spool.max_assemblies  # these plain-CoAP clients stand for any remote here
        assert (await send(a, block(uri, "a1", 0, True))).code == Code.CONTINUE
        assert (await send(a, block(uri, "a2", 0, True))).code == Code.CONTINUE
        busy = await send(a, block(uri, "a3", 0, True))  # a third transfer from one remote
        assert busy.code == Code.SERVICE_UNAVAILABLE and busy.opt.max_age is not None and busy.opt.max_age >= 1
        assert (await send(b, block(uri, "b1", 0, True))).code == Code.CONTINUE  # another remote: still room
        full = await send(b, block(uri, "b2", 0, True))  # three in all
        assert full.code == Code.SERVICE_UNAVAILABLE and len(spool) == 3
        # a transfer that completes frees its place at once (and registers)
        done = await send(a, block(uri, "a1", 1, False))
        assert done.code == Code.CREATED and site.registrations.by_endpoint("a1", tenant_id="default") is not None
        assert len(spool) == 2 and (await send(b, block(uri, "b2", 0, True))).code == Code.CONTINUE
        # a stalled transfer times out (MAX_TRANSMIT_WAIT after its last block), then its place is free too
        clock.now += spool.timeout
        assert (await send(a, block(uri, "a3", 0, True))).code == Code.CONTINUE
        assert len(spool) == 1
        assert (await send(a, block(uri, "a2", 1, False))).code == Code.REQUEST_ENTITY_INCOMPLETE  # forgotten
        # a request that fits one block needs no place at all
        spool.max_assemblies = 1
        whole = await send(b, block(uri, "b3", 0, False, b"</3/0>"))
        assert whole.code == Code.CREATED


async def test_the_endpoint_limit_counts_only_requests_allowed_to_act_for_the_endpoint() -> None:
    """An unauthenticated Register naming a DTLS device's endpoint is refused (4.03) and spends none of that
    device's tokens; the device's own Registers and Updates do."""

    class DtlsRemote:
        hostinfo = "10.0.0.9:5684"
        authenticated_claims = [PskClaim(b"psk-dev")]

    class PlainRemote:
        hostinfo = "10.0.0.66:5683"

    async with site_on_loopback(endpoint_limiter=RateLimiter(rate=0.5, burst=2),
                                endpoint_for_identity={"psk-dev": "dev"}.get,
                                endpoint_is_bound={"dev"}.__contains__) as (site, _uri, clock):
        def msg(remote: object, path: tuple[str, ...] = ("rd",), query: tuple[str, ...] = ("ep=dev",)) -> Message:
            m = Message(code=Code.POST, uri_path=path, uri_query=query, payload=b"</3/0>")
            m.remote = remote
            return m

        for _ in range(5):  # an attacker on plain CoAP naming the device's endpoint
            assert (await site.render(msg(PlainRemote()))).code == Code.FORBIDDEN
        first = await site.render(msg(DtlsRemote()))
        assert first.code == Code.CREATED
        update = await site.render(msg(DtlsRemote(), ("rd", first.opt.location_path[1]), ()))
        assert update.code == Code.CHANGED
        limited = await site.render(msg(DtlsRemote()))
        assert limited.code == Code.SERVICE_UNAVAILABLE and limited.opt.max_age == 2
        other = await site.render(msg(PlainRemote(), query=("ep=someone-else",)))
        assert other.code == Code.CREATED  # another endpoint has its own bucket
        clock.now += 2
        assert (await site.render(msg(DtlsRemote()))).code == Code.CREATED


def test_plain_coap_senders_get_a_quarter_of_the_block1_places() -> None:
    """Plain-CoAP source addresses can be forged: however many there are, they fill only a quarter of the places,
    and DTLS-authenticated devices still find room for their uploads."""

    class Remote:
        def __init__(self, n: int, secure: bool) -> None:
            self.hostinfo = f"10.0.{n // 250}.{n % 250}:5683"
            self.authenticated_claims = [PskClaim(b"dev-%d" % n)] if secure else []
            self.blockwise_key = self

    spool = BoundedBlock1Spool(16384, max_assemblies=8, max_per_remote=4)

    def first_block(remote: Remote, ep: str) -> Message:
        msg = Message(code=Code.POST, uri_path=("rd",), uri_query=(f"ep={ep}",), payload=BODY[:64])
        msg.opt.block1 = BlockOption.BlockwiseTuple(0, True, 2)
        msg.remote = remote
        return msg

    admitted = busy = 0
    for n in range(100):  # a hundred forged plain senders
        try:
            spool.feed_and_take(first_block(Remote(n, secure=False), f"p{n}"))
        except ContinueException:
            admitted += 1
        except Block1BusyError:
            busy += 1
    assert (admitted, busy) == (2, 98)  # a quarter of 8
    for n in range(6):  # the rest is there for authenticated devices
        with pytest.raises(ContinueException):
            spool.feed_and_take(first_block(Remote(1000 + n, secure=True), f"d{n}"))
    with pytest.raises(Block1BusyError):
        spool.feed_and_take(first_block(Remote(2000, secure=True), "d-late"))
    assert len(spool) == 8

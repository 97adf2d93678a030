"""Rate limiting of the Registration interface (/rd) over real CoAP on loopback: a ServerSite with a tight
RateLimiter and a hand-moved clock; excess gets 5.03 with Max-Age and a security event."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from lwm2m_server.coap.dtls import PskClaim
from lwm2m_server.coap.remotes import remote_host
from lwm2m_server.coap.udp import exclusive_context, release
from lwm2m_server.core.rate_limit import RateLimiter
from lwm2m_server.events import EventBus
from lwm2m_server.registry.service import RegistrationService
from lwm2m_server.storage.memory import MemoryDeviceStore, MemoryRegistrationStore
from lwm2m_server.transport.site import ServerSite
from tests.harness import coap_client, request


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def site_on_loopback(limiter: RateLimiter | None, clock: Clock, host: str = "127.0.0.1"
                           ) -> AsyncIterator[tuple[ServerSite, int, list[tuple[str, dict[str, object]]]]]:
    registrations = RegistrationService(MemoryRegistrationStore(), MemoryDeviceStore(), EventBus(), clock)
    security: list[tuple[str, dict[str, object]]] = []
    site = ServerSite(registrations, rate_limiter=limiter, clock=clock,
                      on_security_event=lambda kind, data: security.append((kind, data)))
    context, port = await exclusive_context(site, host, 0)
    try:
        yield site, port, security
    finally:
        await context.shutdown()
        release(host, port)


def register(host: str, port: int, ep: str) -> Message:
    return Message(code=Code.POST, uri=f"coap://{host}:{port}/rd?ep={ep}&lt=300", payload=b"</3/0>",
                   content_format=40)


async def test_registrations_beyond_the_burst_get_503_with_max_age() -> None:
    clock = Clock()
    async with site_on_loopback(RateLimiter(rate=0.25, burst=2), clock) as (site, port, security), \
            coap_client() as ctx:
        for i in range(2):
            assert (await request(ctx, register("127.0.0.1", port, f"d{i}"))).code == Code.CREATED
        refused = await request(ctx, register("127.0.0.1", port, "d2"))
        assert refused.code == Code.SERVICE_UNAVAILABLE
        assert refused.opt.max_age == 4  # one token at 0.25/s
        assert site.registrations.by_endpoint("d2", tenant_id="default") is None
        assert [k for k, _ in security] == ["security.rate_limited"]
        data = security[0][1]
        assert data["limited_by"] == "address" and str(data["address"]).startswith("127.0.0.1:")

        clock.now += 1  # partly refilled: still refused, Max-Age counts down
        again = await request(ctx, register("127.0.0.1", port, "d2"))
        assert again.code == Code.SERVICE_UNAVAILABLE and again.opt.max_age == 3

        clock.now += 3  # refilled by one token
        assert (await request(ctx, register("127.0.0.1", port, "d2"))).code == Code.CREATED
        assert (await request(ctx, register("127.0.0.1", port, "d3"))).code == Code.SERVICE_UNAVAILABLE


async def test_update_and_deregister_count_too_and_other_paths_do_not() -> None:
    clock = Clock()
    async with site_on_loopback(RateLimiter(rate=1, burst=2), clock) as (_, port, _security), coap_client() as ctx:
        r = await request(ctx, register("127.0.0.1", port, "u"))
        loc = "/".join(r.opt.location_path)
        upd = Message(code=Code.POST, uri=f"coap://127.0.0.1:{port}/{loc}")
        assert (await request(ctx, upd)).code == Code.CHANGED
        wk = await request(ctx, Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/.well-known/core"))
        assert wk.code == Code.CONTENT  # not limited
        dereg = await request(ctx, Message(code=Code.DELETE, uri=f"coap://127.0.0.1:{port}/{loc}"))
        assert dereg.code == Code.SERVICE_UNAVAILABLE and dereg.opt.max_age == 1
        clock.now += 1
        dereg = await request(ctx, Message(code=Code.DELETE, uri=f"coap://127.0.0.1:{port}/{loc}"))
        assert dereg.code == Code.DELETED


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_another_source_address_is_not_limited() -> None:
    clock = Clock()
    async with site_on_loopback(RateLimiter(rate=0.1, burst=1), clock, host="::") as (_, port, security), \
            coap_client() as ctx:
        assert (await request(ctx, register("127.0.0.1", port, "a1"))).code == Code.CREATED
        assert (await request(ctx, register("127.0.0.1", port, "a2"))).code == Code.SERVICE_UNAVAILABLE
        assert (await request(ctx, register("[::1]", port, "b1"))).code == Code.CREATED  # another source host
        assert (await request(ctx, register("[::1]", port, "b2"))).code == Code.SERVICE_UNAVAILABLE
        assert len(security) == 2


async def test_no_limiter_means_unlimited() -> None:
    async with site_on_loopback(None, Clock()) as (_, port, security), coap_client() as ctx:
        for i in range(10):
            assert (await request(ctx, register("127.0.0.1", port, f"n{i}"))).code == Code.CREATED
        assert security == []


class _Remote:
    def __init__(self, hostinfo: str) -> None:
        self.hostinfo = hostinfo


@pytest.mark.parametrize(("hostinfo", "host"), [("127.0.0.1:5683", "127.0.0.1"), ("[::1]:5683", "::1"),
                                                ("[fe80::1%eth0]:1", "fe80::1%eth0"), ("example", "example"),
                                                ("::1", "::1")])
def test_remote_host_drops_the_port(hostinfo: str, host: str) -> None:
    assert remote_host(_Remote(hostinfo)) == host


class _DtlsRemote:
    """Stands in for a DTLS remote: what psk_identity and remote_address read."""

    def __init__(self, hostinfo: str, identity: bytes) -> None:
        self.hostinfo = hostinfo
        self.authenticated_claims = [PskClaim(identity)]


async def test_psk_identity_is_limited_across_source_addresses() -> None:
    clock = Clock()
    registrations = RegistrationService(MemoryRegistrationStore(), MemoryDeviceStore(), EventBus(), clock)
    security: list[tuple[str, dict[str, object]]] = []
    site = ServerSite(registrations, rate_limiter=RateLimiter(rate=0.5, burst=1), clock=clock,
                      endpoint_for_identity=lambda identity: identity,
                      on_security_event=lambda kind, data: security.append((kind, data)))

    def reg(host: str) -> Message:
        m = Message(code=Code.POST, uri_path=("rd",), uri_query=("ep=dev-psk",), payload=b"</3/0>")
        m.remote = _DtlsRemote(f"{host}:5684", b"dev-psk")
        return m

    assert (await site.render(reg("10.0.0.1"))).code == Code.CREATED
    refused = await site.render(reg("10.0.0.2"))  # a fresh address, but the same identity
    assert refused.code == Code.SERVICE_UNAVAILABLE and refused.opt.max_age == 2
    kind, data = security[-1]
    assert kind == "security.rate_limited"
    assert data["limited_by"] == "identity" and data["identity"] == "dev-psk"
    assert not any(isinstance(v, bytes) for v in data.values())
    clock.now += 2
    assert (await site.render(reg("10.0.0.3"))).code == Code.CREATED


async def test_the_server_settings_turn_the_limiter_on(tmp_path) -> None:
    """``ServerSettings.rd_rate``/``rd_burst``: a real server refuses the Register past its burst with 5.03."""
    from aiocoap import Message
    from aiocoap.numbers.codes import Code

    from tests.harness import coap_client, request, running_server

    async with running_server(tmp_path, rd_rate=0.01, rd_burst=2) as srv, coap_client() as ctx:
        codes = []
        for i in range(3):
            msg = Message(code=Code.POST, uri=f"{srv.coap_uri}/rd", payload=b"</3/0>", content_format=40)
            msg.opt.uri_query = (f"ep=limited-{i}", "lt=300")
            answer = await request(ctx, msg)
            codes.append(answer.code)
        assert codes == [Code.CREATED, Code.CREATED, Code.SERVICE_UNAVAILABLE]
        assert answer.opt.max_age is not None and answer.opt.max_age >= 1


async def test_a_flood_of_refused_requests_is_reported_once_per_interval_with_a_count() -> None:
    """A host over its rate gets 5.03 for every request, but its refusals are logged and sent as security events
    (the audit log) at most once every 10 s per key, the next report saying how many were held back."""
    clock = Clock()
    async with site_on_loopback(RateLimiter(rate=0.25, burst=1), clock) as (_, port, security), \
            coap_client() as ctx:
        assert (await request(ctx, register("127.0.0.1", port, "f0"))).code == Code.CREATED
        for i in range(50):
            assert (await request(ctx, register("127.0.0.1", port, f"f{i + 1}"))).code == Code.SERVICE_UNAVAILABLE
        assert len(security) == 1 and "held_back" not in security[0][1]
        clock.now += 3.9  # 1/0.25 s = one token comes at +4 s: still refused, still held back
        assert (await request(ctx, register("127.0.0.1", port, "g"))).code == Code.SERVICE_UNAVAILABLE
        clock.now += 6.2  # 10 s after the first report: the next refusal is reported, with the count
        assert (await request(ctx, register("127.0.0.1", port, "h0"))).code == Code.CREATED
        assert (await request(ctx, register("127.0.0.1", port, "h1"))).code == Code.SERVICE_UNAVAILABLE
        assert [d.get("held_back") for _, d in security] == [None, 50]

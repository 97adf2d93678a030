"""The Registration interface over real CoAP on loopback: Register, Update, De-register, expiry, bad input."""

from __future__ import annotations

import asyncio

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from tests.harness import coap_client, eventually, request, running_server

LINKS = b'</>;rt="oma.lwm2m";ct="110 112 11542",</1/0>,</3/0>;ver=1.2,</5/0>'


def rd(port: int, path: str = "rd", query: str = "") -> str:
    return f"coap://127.0.0.1:{port}/{path}" + (f"?{query}" if query else "")


async def test_register_update_deregister(tmp_path):
    async with running_server(tmp_path) as srv, coap_client() as ctx:
        r = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=dev-1&lt=300&lwm2m=1.1&b=U"),
                                       payload=LINKS, content_format=40))
        assert r.code == Code.CREATED
        assert r.opt.location_path[0] == "rd" and len(r.opt.location_path) == 2
        reg = srv.registrations.by_endpoint("dev-1", tenant_id="default")
        assert reg is not None and reg.id == r.opt.location_path[1]
        assert (reg.lifetime, reg.lwm2m_version, reg.binding, reg.queue_mode) == (300, "1.1", "U", False)
        assert [str(p) for p in reg.summary.instances] == ["/1/0", "/3/0", "/5/0"]
        assert reg.remote is not None and reg.address.startswith("127.0.0.1:")

        loc = "/".join(r.opt.location_path)
        r = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, loc, "lt=600"),
                                       payload=b"</1/0>,</3/0>", content_format=40))
        assert r.code == Code.CHANGED
        reg2 = srv.registrations.by_endpoint("dev-1", tenant_id="default")
        assert reg2.lifetime == 600 and [str(p) for p in reg2.summary.instances] == ["/1/0", "/3/0"]
        assert reg2.updated_at >= reg.updated_at and reg2.registered_at == reg.registered_at

        r = await request(ctx, Message(code=Code.DELETE, uri=rd(srv.coap_port, loc)))
        assert r.code == Code.DELETED
        assert srv.registrations.by_endpoint("dev-1", tenant_id="default") is None
        r = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, loc)))
        assert r.code == Code.NOT_FOUND


async def test_reregistration_replaces_the_old_one(tmp_path):
    async with running_server(tmp_path) as srv, coap_client() as ctx:
        first = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=dup"), payload=b"</3/0>"))
        second = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=dup"), payload=b"</3/0>"))
        assert first.code == second.code == Code.CREATED
        assert first.opt.location_path != second.opt.location_path
        assert srv.registrations.count() == 1
        stale = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, "/".join(first.opt.location_path))))
        assert stale.code == Code.NOT_FOUND


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
async def test_every_lwm2m_version_is_accepted(tmp_path, version):
    async with running_server(tmp_path) as srv, coap_client() as ctx:
        r = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query=f"ep=v{version}&lwm2m={version}"),
                                       payload=b"</1/0>,</3/0>"))
        assert r.code == Code.CREATED
        assert srv.registrations.by_endpoint(f"v{version}", tenant_id="default").lwm2m_version == version


async def test_queue_mode_in_both_spellings(tmp_path):
    async with running_server(tmp_path) as srv, coap_client() as ctx:
        await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=q10&lwm2m=1.0&b=UQ"),
                                   payload=b"</3/0>"))
        await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=q11&lwm2m=1.1&b=U&Q"),
                                   payload=b"</3/0>"))
        for ep in ("q10", "q11"):
            reg = srv.registrations.by_endpoint(ep, tenant_id="default")
            assert reg.queue_mode and reg.binding == "U"


async def test_registration_expires_after_lifetime_and_grace(tmp_path):
    async with running_server(tmp_path, lifetime_grace=0.2) as srv, coap_client() as ctx:
        r = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=short&lt=1"), payload=b"</3/0>"))
        assert r.code == Code.CREATED
        events = []
        srv.events.subscribe(events.append, "registration.expired")
        await eventually(lambda: srv.registrations.by_endpoint("short", tenant_id="default") is None, timeout=10)
        assert [e.endpoint for e in events] == ["short"]
        # An Update after expiry is refused: the device must register again.
        r = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, "/".join(r.opt.location_path))))
        assert r.code == Code.NOT_FOUND


async def test_update_keeps_a_registration_alive(tmp_path):
    async with running_server(tmp_path, lifetime_grace=0.2) as srv, coap_client() as ctx:
        r = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=kept&lt=1"), payload=b"</3/0>"))
        loc = "/".join(r.opt.location_path)
        for _ in range(4):
            await asyncio.sleep(0.5)
            u = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, loc)))
            assert u.code == Code.CHANGED
        assert srv.registrations.by_endpoint("kept", tenant_id="default") is not None


BAD_REQUESTS = [
    # (description, method, path, query, payload, content format, expected code)
    ("no endpoint name", Code.POST, "rd", "lt=60", b"</3/0>", 40, Code.BAD_REQUEST),
    ("empty endpoint name", Code.POST, "rd", "ep=", b"</3/0>", 40, Code.BAD_REQUEST),
    ("lifetime not a number", Code.POST, "rd", "ep=x&lt=soon", b"</3/0>", 40, Code.BAD_REQUEST),
    ("lifetime zero", Code.POST, "rd", "ep=x&lt=0", b"</3/0>", 40, Code.BAD_REQUEST),
    ("unsupported LwM2M version", Code.POST, "rd", "ep=x&lwm2m=9.9", b"</3/0>", 40, Code.PRECONDITION_FAILED),
    ("bad binding", Code.POST, "rd", "ep=x&b=XYZ", b"</3/0>", 40, Code.BAD_REQUEST),
    ("endpoint given twice", Code.POST, "rd", "ep=x&ep=y", b"</3/0>", 40, Code.BAD_REQUEST),
    ("broken link format", Code.POST, "rd", "ep=x", b"</3/0;ver=1", 40, Code.BAD_REQUEST),
    ("links that are not UTF-8", Code.POST, "rd", "ep=x", b"</3/0>,<\xff>", 40, Code.BAD_REQUEST),
    ("trailing comma", Code.POST, "rd", "ep=x", b"</3/0>,", 40, Code.BAD_REQUEST),
    ("JSON instead of link format", Code.POST, "rd", "ep=x", b'{"a":1}', 50, Code.UNSUPPORTED_CONTENT_FORMAT),
    ("GET on the registration resource", Code.GET, "rd", "", b"", None, Code.METHOD_NOT_ALLOWED),
    ("unknown registration", Code.POST, "rd/nope", "", b"", None, Code.NOT_FOUND),
    ("path below a registration", Code.POST, "rd/a/b", "", b"", None, Code.NOT_FOUND),
    ("unknown resource", Code.GET, "nothing/here", "", b"", None, Code.NOT_FOUND),
    ("unknown Update parameter", Code.POST, "rd/nope", "ep=x", b"", None, Code.BAD_REQUEST),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_malformed_requests_get_the_right_4xx(tmp_path, case):
    _, method, path, query, payload, cf, expected = case
    async with running_server(tmp_path) as srv, coap_client() as ctx:
        msg = Message(code=method, uri=rd(srv.coap_port, path, query), payload=payload)
        if cf is not None:
            msg.opt.content_format = cf
        r = await request(ctx, msg)
        assert r.code == expected, r.payload
        assert srv.registrations.count() == 0
        # The server is still fine afterwards.
        ok = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=after"), payload=b"</3/0>"))
        assert ok.code == Code.CREATED


async def test_oversized_registration_payload_is_refused_with_4_13(tmp_path):
    async with running_server(tmp_path, max_body=4096) as srv, coap_client() as ctx:
        links = ",".join(f"</{i}/0>" for i in range(10, 2000)).encode()
        assert len(links) > 4096
        r = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=big"), payload=links))
        assert r.code == Code.REQUEST_ENTITY_TOO_LARGE
        assert r.opt.size1 == 4096
        assert srv.registrations.count() == 0
        ok = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=after"), payload=b"</3/0>"))
        assert ok.code == Code.CREATED


async def test_blockwise_registration_payload_is_assembled(tmp_path):
    async with running_server(tmp_path) as srv, coap_client() as ctx:
        links = ",".join(f"</{i}/0>" for i in range(10, 400)).encode()
        assert 1024 < len(links) < 16384
        r = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=many"), payload=links))
        assert r.code == Code.CREATED
        assert len(srv.registrations.by_endpoint("many", tenant_id="default").summary.instances) == 390


async def test_registrations_survive_a_restart(tmp_path):
    async with running_server(tmp_path) as srv, coap_client() as ctx:
        r = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, query="ep=persist&lt=300"),
                                       payload=b"</3/0>"))
        loc = "/".join(r.opt.location_path)
    async with running_server(tmp_path) as srv, coap_client() as ctx:
        reg = srv.registrations.by_endpoint("persist", tenant_id="default")
        assert reg is not None and reg.remote is None  # known, but not reachable until it speaks again
        u = await request(ctx, Message(code=Code.POST, uri=rd(srv.coap_port, loc)))
        assert u.code == Code.CHANGED
        assert srv.registrations.by_endpoint("persist", tenant_id="default").remote is not None

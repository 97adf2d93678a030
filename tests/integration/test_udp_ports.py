"""A UDP port belongs to one context: a second server on a port in use is refused, not silently shared."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.harness import running_server


async def test_second_server_on_the_same_port_is_refused(tmp_path):
    async with running_server(tmp_path / "a") as first:
        with pytest.raises(OSError):
            async with running_server(tmp_path / "b", coap_port=first.coap_port):
                pass


async def test_a_retransmitted_register_gets_the_same_answer_from_the_compact_cache(tmp_path: Path) -> None:
    """RFC 7252 4.5: a duplicate CON is answered again, not processed twice; what is kept for it is the encoded
    answer (bytes), not a Message with its request; a NON with the same Message ID from another port is another
    message."""
    import socket as socket_module

    from aiocoap import CON, Message
    from aiocoap.numbers.codes import Code

    from lwm2m_server.coap.udp import _message_manager

    async with running_server(tmp_path) as srv:
        request = Message(code=Code.POST, uri_path=("rd",), payload=b"</1/0>,</3/0>", content_format=40)
        request.mtype, request.mid, request.token = CON, 4242, b"\x01\x02"
        request.opt.uri_query = ("ep=dup-1", "lt=300", "lwm2m=1.1")
        wire = request.encode()
        loop = asyncio.get_running_loop()
        with socket_module.socket(socket_module.AF_INET, socket_module.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(("127.0.0.1", srv.coap_port))
            answers = []
            for _ in range(2):
                await loop.sock_sendall(sock, wire)
                answers.append(Message.decode(await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)))
        assert answers[0].code == Code.CREATED
        assert [a.opt.location_path for a in answers] == [answers[0].opt.location_path] * 2
        assert [a.mid for a in answers] == [4242, 4242] and answers[0].token == answers[1].token == b"\x01\x02"
        assert srv.registrations is not None and srv.registrations.count() == 1
        assert srv.context is not None
        kept = _message_manager(srv.context)._scratch_answers
        assert len(kept) == 1 and isinstance(kept.get(next(iter(kept._answers)), 0.0), bytes)

        other = Message(code=Code.POST, uri_path=("rd",), payload=b"</3/0>", content_format=40)
        other.mtype, other.mid, other.token = CON, 4242, b"\x03"  # same Message ID, another port: a new message
        other.opt.uri_query = ("ep=dup-2", "lt=300", "lwm2m=1.1")
        with socket_module.socket(socket_module.AF_INET, socket_module.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(("127.0.0.1", srv.coap_port))
            await loop.sock_sendall(sock, other.encode())
            answer = Message.decode(await asyncio.wait_for(loop.sock_recv(sock, 2048), 5))
        assert answer.code == Code.CREATED and answer.token == b"\x03"
        assert srv.registrations.count() == 2


@pytest.mark.parametrize("tuned", [False, True])
async def test_nstart_per_message_lets_requests_to_a_gateway_overlap(tuned: bool) -> None:
    """RFC 7252 4.7: at most NSTART outstanding CON requests per remote; aiocoap keeps 1. Requests relayed through an
    LwM2M gateway carry GatewayTuning (NSTART 8): several are outstanding at the gateway at once, the rest wait."""
    from aiocoap import Context, Message
    from aiocoap.numbers.codes import Code
    from aiocoap.resource import Resource, Site

    from lwm2m_server.coap.udp import GatewayTuning, exclusive_context, release, slim_duplicate_cache

    count = 10
    arrived = asyncio.Event()
    active = seen = most = 0

    class Slow(Resource):  # answers once every request has arrived (or 1 s passed): outstanding ones overlap here
        async def render_get(self, request: Message) -> Message:
            nonlocal active, seen, most
            active, seen = active + 1, seen + 1
            most = max(most, active)
            if seen >= min(count, GatewayTuning.NSTART if tuned else 1):
                arrived.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), 1.0)
            active -= 1
            return Message(code=Code.CONTENT, payload=b"ok")

    site = Site()
    site.add_resource(("slow",), Slow())
    server, port = await exclusive_context(site, "127.0.0.1", 0)
    client = await Context.create_client_context()
    slim_duplicate_cache(client)
    try:
        requests = []
        for _ in range(count):
            msg = Message(code=Code.GET, uri=f"coap://127.0.0.1:{port}/slow")
            if tuned:
                msg.transport_tuning = GatewayTuning()
            requests.append(client.request(msg).response)
        answers = await asyncio.wait_for(asyncio.gather(*requests), 30)
        assert [a.payload for a in answers] == [b"ok"] * count
        assert most == (GatewayTuning.NSTART if tuned else 1)
    finally:
        await client.shutdown()
        await server.shutdown()
        release("127.0.0.1", port)


async def test_a_block_dropped_from_the_duplicate_cache_is_not_popped_again_with_an_error(tmp_path: Path) -> None:
    """The slim duplicate cache drops a download block's entry at once; aiocoap pops every entry again 247 s later,
    which raised (and logged) a KeyError per block served until the cache tolerated it."""
    import functools

    from aiocoap import Message
    from aiocoap.numbers.codes import Code
    from aiocoap.optiontypes import BlockOption

    from lwm2m_server.coap.udp import _message_manager

    async with running_server(tmp_path) as srv:
        manager = _message_manager(srv.context)
        recent = manager._recent_messages
        key = ("peer", 7)
        later = functools.partial(recent.pop, key)  # what _deduplicate_message schedules, bound now
        recent[key] = None
        response = Message(code=Code.CONTENT, payload=b"x" * 16)
        response.mid, response.remote = 7, "peer"
        response.opt.block2 = BlockOption.BlockwiseTuple(0, True, 0)
        response.request = Message(code=Code.GET)
        manager._store_response_for_duplicates(response)  # a block of a download: dropped at once
        assert key not in recent
        later()  # 247 s later in real life: must not raise


async def test_a_port_being_bound_is_held_against_other_processes(tmp_path: Path) -> None:
    """exclusive_context holds the port it picked until aiocoap's socket (bound with SO_REUSEPORT) is there: another
    process picking ports the same way cannot take it meanwhile (it did: two simulated devices of two processes
    shared a port, and one never got its answers); afterwards nobody joins it, with or without SO_REUSEPORT."""
    import socket as socket_module

    from aiocoap.resource import Site

    from lwm2m_server.coap.udp import _hold, exclusive_context, release

    holder = _hold("127.0.0.1", 0)
    try:
        port = holder.getsockname()[1]
        with pytest.raises(OSError):  # what another process's pick of that port does while it is held
            _hold("127.0.0.1", port)
        joiner = socket_module.socket(socket_module.AF_INET6, socket_module.SOCK_DGRAM)
        try:  # what aiocoap's socket does: it joins
            joiner.setsockopt(socket_module.IPPROTO_IPV6, socket_module.IPV6_V6ONLY, 0)
            joiner.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_REUSEPORT, 1)
            joiner.bind(("::ffff:127.0.0.1", port))
        finally:
            joiner.close()
    finally:
        holder.close()

    context, port = await exclusive_context(Site(), "127.0.0.1", 0)
    try:
        for reuse in (0, 1):
            other = socket_module.socket(socket_module.AF_INET, socket_module.SOCK_DGRAM)
            try:
                other.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_REUSEPORT, reuse)
                with pytest.raises(OSError):
                    other.bind(("127.0.0.1", port))
            finally:
                other.close()
    finally:
        await context.shutdown()
        release("127.0.0.1", port)

"""The CoAP file server for pull, block by block over real UDP: any size, any order, ETag, Size2, errors."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiocoap
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from lwm2m_server.fota.file_server import FileServer, Package
from tests.harness import coap_client, running_server


async def request(ctx: aiocoap.Context, msg: Message) -> Message:
    """One exchange, with no block-wise assembly by aiocoap: we look at each block ourselves."""
    return await asyncio.wait_for(ctx.request(msg, handle_blockwise=False).response, 10)


def block(number: int, szx: int) -> BlockOption.BlockwiseTuple:
    return BlockOption.BlockwiseTuple(number, False, szx)


async def test_blocks_in_any_order_and_size_carry_etag_and_size2(tmp_path: Path) -> None:
    package = os.urandom(5000)
    async with running_server(tmp_path) as srv, coap_client() as ctx:
        uri = f"{srv.coap_uri}/fw/{srv.files.publish(package)}"
        etags = set()
        for number, szx in [(3, 4), (0, 6), (311, 0), (4, 6), (1, 2)]:
            msg = Message(code=Code.GET, uri=uri)
            msg.opt.block2 = block(number, szx)
            answer = await request(ctx, msg)
            size = 1 << (szx + 4)
            assert answer.code == Code.CONTENT
            assert answer.payload == package[number * size:(number + 1) * size]
            assert answer.opt.block2 == (number, (number + 1) * size < len(package), szx)
            assert answer.opt.size2 == len(package)
            etags.add(answer.opt.etag)
        assert len(etags) == 1
        valid = Message(code=Code.GET, uri=uri, etag=etags.pop())
        assert (await request(ctx, valid)).code == Code.VALID


async def test_small_package_comes_whole_and_errors_have_their_codes(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, coap_client() as ctx:
        name = srv.files.publish(b"tiny")
        uri = f"{srv.coap_uri}/fw/{name}"
        whole = await request(ctx, Message(code=Code.GET, uri=uri))
        assert (whole.code, whole.payload, whole.opt.block2) == (Code.CONTENT, b"tiny", None)
        past = Message(code=Code.GET, uri=uri)
        past.opt.block2 = block(1, 0)
        assert (await request(ctx, past)).code == Code.BAD_OPTION
        assert (await request(ctx, Message(code=Code.PUT, uri=uri, payload=b"x"))).code == Code.METHOD_NOT_ALLOWED
        assert (await request(ctx, Message(code=Code.GET, uri=f"{srv.coap_uri}/fw/guess"))).code == Code.NOT_FOUND
        srv.files.withdraw(name)
        assert (await request(ctx, Message(code=Code.GET, uri=uri))).code == Code.NOT_FOUND


@pytest.mark.parametrize("copies", [1, 3])
async def test_one_copy_of_the_bytes_however_many_publications(tmp_path: Path, copies: int) -> None:
    async with running_server(tmp_path) as srv:
        data = os.urandom(2048)
        names = [srv.files.publish(data) for _ in range(copies)]
        assert len(set(names)) == copies and srv.files.published == copies
        held = {id(srv.files._by_name[n].package.data) for n in names}
        assert len(held) == 1
        for n in names:
            srv.files.withdraw(n)
        assert srv.files.published == 0 and not srv.files._by_digest


def test_a_kept_name_publishes_the_same_bytes_again_and_nothing_else() -> None:
    files = FileServer()
    data = os.urandom(300)
    name = files.new_name()
    assert files.publish(data, name) == name == files.publish(data, name)  # again (a restart): no second copy
    assert files.published == 1 and files._by_digest[Package.of(data).digest][1] == 1
    with pytest.raises(ValueError):
        files.publish(b"other bytes", name)
    files.withdraw(name)
    assert files.published == 0 and not files._by_digest

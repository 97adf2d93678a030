"""libcoap's coap-client (Debian libcoap3-bin, installed by ./dev) against our server over plain CoAP.

A peer nobody here wrote: resource discovery in link format, and block-wise GET (RFC 7959 Block2) of a package
from the firmware file server at every block size a client may ask for.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from lwm2m_server.core.codec import link
from tests.harness import running_server

COAP_CLIENT = shutil.which(os.environ.get("SCRATCH_COAP_CLIENT", "coap-client-openssl"))

pytestmark = pytest.mark.skipif(
    COAP_CLIENT is None, reason="coap-client-openssl not found: install Debian's libcoap3-bin (./dev does)")


async def coap_client(*args: str, timeout: float = 30.0) -> tuple[int, bytes, bytes]:
    assert COAP_CLIENT is not None
    proc = await asyncio.create_subprocess_exec(COAP_CLIENT, "-B", "20", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_discovery_is_link_format(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        rc, out, err = await coap_client("-m", "get", "-A", "40", f"{srv.coap_uri}/.well-known/core")
    assert rc == 0, err
    links = link.decode(out.strip())
    rd = [lk for lk in links if lk.target == "/rd"]
    assert rd and rd[0].get("rt") == "core.rd"
    assert not any(lk.target.startswith("/fw") for lk in links), "published packages must not be listed"


@pytest.mark.parametrize("block_size", [16, 64, 256, 1024])
async def test_blockwise_get_of_a_package(tmp_path: Path, block_size: int) -> None:
    package = os.urandom(20_000 + 123)  # not a multiple of any block size
    out_file = tmp_path / "received.bin"
    async with running_server(tmp_path / "data") as srv:
        name = srv.files.publish(package)
        rc, _, err = await coap_client("-m", "get", "-b", str(block_size), "-o", str(out_file),
                                       f"{srv.coap_uri}/fw/{name}")
        blocks, served = srv.files.served(name)
    assert rc == 0, err
    assert hashlib.sha256(out_file.read_bytes()).hexdigest() == hashlib.sha256(package).hexdigest()
    assert blocks == -(-len(package) // block_size)  # libcoap asked for exactly the size we gave it
    assert served == len(package)


async def test_unknown_package_is_not_found(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        rc, out, err = await coap_client("-m", "get", "-v", "0", f"{srv.coap_uri}/fw/no-such-package")
    assert b"4.04" in out + err or rc != 0

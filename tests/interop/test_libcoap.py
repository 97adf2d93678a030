"""libcoap's coap-client (Debian libcoap3-bin, installed by ./dev) against our servers.

A peer nobody here wrote: resource discovery in link format, block-wise GET (RFC 7959 Block2) of a package from
the firmware file server at every block size a client may ask for, and DTLS-PSK (OpenSSL's DTLS, not tinydtls)
with both the LwM2M server (Register, a package over coaps) and the bootstrap server (Bootstrap-Pack-Request),
including refusals: wrong key, unknown identity, an identity claiming another endpoint.

coap-client takes its key as a command-line string, so the credentials here are issued with printable keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from bootstrap.credentials import MemoryCredentialStore
from bootstrap.server import BootstrapServer, BootstrapSettings
from bootstrap.vault import Vault
from lwm2m_server.core.codec import link, registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.nodes import SingleResource
from tests.harness import running_server

BS_KEY = b"bootstrap-key-01"  # 16 printable bytes: coap-client's -k takes a string
SV_KEY = b"server-key-00001"

COAP_CLIENT = shutil.which(os.environ.get("SCRATCH_COAP_CLIENT", "coap-client-openssl"))

pytestmark = pytest.mark.skipif(
    COAP_CLIENT is None, reason="coap-client-openssl not found: install Debian's libcoap3-bin (./dev does)")


async def coap_client(*args: str, timeout: float = 30.0, wait: int = 20) -> tuple[int, bytes, bytes]:
    assert COAP_CLIENT is not None
    proc = await asyncio.create_subprocess_exec(COAP_CLIENT, "-B", str(wait), *args, stdout=asyncio.subprocess.PIPE,
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


# -- DTLS-PSK (libcoap on OpenSSL) against the LwM2M server and the bootstrap server

async def test_dtls_register_with_the_lwm2m_server_and_refusals(tmp_path: Path) -> None:
    store = MemoryCredentialStore(Vault.generate())
    cred, _ = store.issue("lc-1", "server", now=0, psk=SV_KEY, tenant_id="default")
    store.issue("lc-2", "server", now=0, tenant_id="default")
    async with running_server(tmp_path, coaps_port=0, credentials=store) as srv:
        register = ("-m", "post", "-t", "40", "-e", "</3/0>")
        rc, out, err = await coap_client(*register, "-u", cred.identity, "-k", SV_KEY.decode(),
                                         f"{srv.coaps_uri}/rd?ep=lc-1&lt=60&lwm2m=1.1")
        assert rc == 0, err
        assert srv.registrations is not None
        reg = srv.registrations.by_endpoint("lc-1", tenant_id="default")
        assert reg is not None and reg.secure and reg.identity == cred.identity

        # the same identity claiming another endpoint: 4.03, and lc-2 stays unregistered
        rc, out, err = await coap_client(*register, "-u", cred.identity, "-k", SV_KEY.decode(),
                                         f"{srv.coaps_uri}/rd?ep=lc-2&lt=60&lwm2m=1.1")
        assert b"4.03" in out + err and srv.registrations.by_endpoint("lc-2", tenant_id="default") is None

        # a wrong key and an unknown identity never get an answer: no registration changes
        for identity, key in ((cred.identity, "wrong-key-000001"), ("nobody", SV_KEY.decode())):
            rc, out, err = await coap_client(*register, "-u", identity, "-k", key,
                                             f"{srv.coaps_uri}/rd?ep=lc-1&lt=99&lwm2m=1.1", timeout=60, wait=5)
            assert rc != 0 or b"ERR" in out + err  # libcoap: 'cannot send CoAP pdu' (no session)
        after = srv.registrations.by_endpoint("lc-1", tenant_id="default")
        assert after is not None and after.id == reg.id and after.lifetime == 60

        # a package over coaps, block-wise
        package = os.urandom(5000)
        name = srv.files.publish(package)
        out_file = tmp_path / "pkg.bin"
        rc, _, err = await coap_client("-m", "get", "-b", "256", "-o", str(out_file), "-u", cred.identity,
                                       "-k", SV_KEY.decode(), f"{srv.coaps_uri}/fw/{name}")
        assert rc == 0, err
        assert out_file.read_bytes() == package


async def test_dtls_bootstrap_pack_from_the_bootstrap_server_and_refusals(tmp_path: Path) -> None:
    store = MemoryCredentialStore(Vault.generate())
    bs, _ = store.issue("lc-3", "bootstrap", now=0, psk=BS_KEY, tenant_id="default")
    sv, _ = store.issue("lc-4", "server", now=0, psk=SV_KEY, tenant_id="default")
    srv = BootstrapServer(BootstrapSettings(server_uri="coaps://127.0.0.1:5684", coaps_port=0), store)
    await srv.start()
    try:
        pack = tmp_path / "pack.cbor"
        rc, out, err = await coap_client("-m", "get", "-A", "112", "-o", str(pack), "-u", bs.identity, "-k",
                                         BS_KEY.decode(), f"{srv.coaps_uri}/bspack?ep=lc-3")
        assert rc == 0, err
        nodes = registry.decode_composite(pack.read_bytes(), ContentFormat.SENML_CBOR, ObjectModel.default())
        values = {str(p): n.value for p, n in nodes.items() if isinstance(n, SingleResource)}
        assert values["/0/1/0"] == "coaps://127.0.0.1:5684" and values["/0/0/5"] == BS_KEY
        assert store.verify(values["/0/1/3"], values["/0/1/5"])  # type: ignore[arg-type]

        refusals = (
            (bs.identity, "wrong-key-000001"),  # wrong key: the handshake fails
            ("nobody", BS_KEY.decode()),  # unknown identity
            (sv.identity, SV_KEY.decode()),  # a server credential does not open the bootstrap server
        )
        for identity, key in refusals:
            rc, out, err = await coap_client("-m", "get", "-A", "112", "-u", identity, "-k", key,
                                             f"{srv.coaps_uri}/bspack?ep=lc-3", timeout=60, wait=5)
            assert rc != 0 or b"ERR" in out + err  # libcoap: 'cannot send CoAP pdu' (no session)
        assert srv.stats.packs == 1
    finally:
        await srv.stop()

"""Failed DTLS handshakes are counted per (address, identity), per identity and (unknown identities) per address;
refused handshakes fail exactly like wrong keys, a security event is emitted; other identities, addresses the
identity authenticated from, established sessions and good handshakes are not affected, and a failing credential
store is not the peer's fault.

Real DTLS on loopback: libcoap (OpenSSL) and aiocoap (tinydtls) clients; 127.0.0.2 is another source address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiocoap
import pytest
from aiocoap import resource

from bootstrap.credentials import MemoryCredentialStore
from bootstrap.vault import Vault
from lwm2m_server.coap.dtls import (
    SECURITY_DTLS_LOCKOUT,
    DtlsServerTransport,
    dtls_client_context,
    dtls_server_context,
    dtls_transport,
    psk_identity,
)
from lwm2m_server.core.rate_limit import Lockout
from lwm2m_server.events import Event
from tests.harness import eventually, running_server

COAP_CLIENT = shutil.which("coap-client-openssl")
needs_libcoap = pytest.mark.skipif(COAP_CLIENT is None, reason="coap-client-openssl (Debian libcoap3-bin) not found")

GOOD = b"s3cretPSK-one!"
KEYS = {b"dev-one": GOOD}
WRONG = [b"wrong-key-1", b"wrong-key-2", b"wrong-key-3"]


class WhoAmI(resource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"server " + (psk_identity(request.remote) or b"-"))


def site() -> resource.Site:
    s = resource.Site()
    s.add_resource(("hello",), WhoAmI())
    return s


@pytest.fixture(autouse=True)
def no_key_in_logs(caplog: pytest.LogCaptureFixture) -> object:
    caplog.set_level(logging.DEBUG)
    yield
    for key in [GOOD, *WRONG]:
        assert key.decode() not in caplog.text and key.hex() not in caplog.text, "a key appeared in the logs"


Events = list[tuple[str, dict[str, object]]]


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, DtlsServerTransport, Events]]:
    events: Events = []
    context, port = await dtls_server_context(site(), "127.0.0.1", 0, psk_for=KEYS.get,
                                              lockout=Lockout(3, 60, 300),
                                              on_security_event=lambda kind, data: events.append((kind, data)))
    try:
        yield port, dtls_transport(context), events
    finally:
        await asyncio.wait_for(context.shutdown(), 10)


async def libcoap_get(port: int, identity: bytes, key: bytes, *, source: str = "127.0.0.1") -> str:
    """One coap-client-openssl GET of /hello from ``source``; its stdout (it exits 0 when the handshake fails)."""
    assert COAP_CLIENT is not None
    proc = await asyncio.create_subprocess_exec(
        COAP_CLIENT, "-B", "3", "-m", "get", "-a", source, "-u", identity.decode(), "-k", key.decode(),
        f"coaps://127.0.0.1:{port}/hello", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace")


@needs_libcoap
async def test_wrong_keys_are_reported_per_identity_and_refuse_nobody_else(server) -> None:
    port, transport, events = server
    assert "server dev-one" in await libcoap_get(port, b"dev-one", GOOD)
    assert transport.handshakes_failed == 0  # a good handshake is no failure

    assert "server" not in await libcoap_get(port, b"dev-one", WRONG[0])  # a Finished that does not verify
    assert "server" not in await libcoap_get(port, b"nobody", GOOD)  # an unknown identity: the same
    await eventually(lambda: transport.handshakes_failed == 2)
    assert events == []

    assert "server" not in await libcoap_get(port, b"dev-one", WRONG[1], source="127.0.0.3")
    assert "server" not in await libcoap_get(port, b"dev-one", WRONG[2], source="127.0.0.4")
    await eventually(lambda: len(events) == 1)
    ((kind, data),) = events
    assert kind == SECURITY_DTLS_LOCKOUT and data["scope"] == "identity"
    assert data["failures"] == 3 and data["seconds"] == 0  # reported: someone is trying dev-one's key
    assert data["identity"] == "dev-one"

    # dev-one's own key still works, from an address it never used (a device whose NAT address changed)
    assert "server dev-one" in await libcoap_get(port, b"dev-one", GOOD, source="127.0.0.2")
    assert transport.dropped_locked_out == 0 and transport.handshakes_completed == 2


async def test_a_session_established_before_the_lockout_keeps_working(server) -> None:
    port, transport, events = server
    uri = f"coaps://127.0.0.1:{port}"
    good = await dtls_client_context(None, uri, b"dev-one", GOOD)
    try:
        answer = await asyncio.wait_for(good.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/hello")).response,
                                        10)
        assert answer.payload == b"server dev-one"
        for n, key in enumerate(WRONG, 1):  # each wrong-key client is counted once, then left to time out
            bad = await dtls_client_context(None, uri, b"dev-one", key)
            attempt = bad.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/hello")).response
            try:
                await eventually(lambda n=n: transport.handshakes_failed == n)  # type: ignore[misc]
            finally:
                await bad.shutdown()  # fails the pending request (do not cancel it: aiocoap 0.4 trips over that)
                with contextlib.suppress(aiocoap.error.Error, asyncio.CancelledError):
                    await attempt
        assert len(events) == 1 and events[0][1]["scope"] == "identity"
        assert events[0][1]["reason"] == "Finished did not verify (wrong PSK?)"
        # the established session proved its key: it is not cut off
        answer = await asyncio.wait_for(good.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/hello")).response,
                                        10)
        assert answer.payload == b"server dev-one"
    finally:
        await good.shutdown()


async def test_a_failing_credential_store_is_not_counted_against_the_peer() -> None:
    lookups: list[bytes] = []

    def broken(identity: bytes) -> bytes | None:
        lookups.append(identity)
        raise RuntimeError("store down")

    context, port = await dtls_server_context(site(), "127.0.0.1", 0, psk_for=broken, lockout=Lockout(1, 60, 300))
    transport = dtls_transport(context)
    try:
        uri = f"coaps://127.0.0.1:{port}"
        client = await dtls_client_context(None, uri, b"dev-one", GOOD)
        try:
            with pytest.raises((aiocoap.error.Error, TimeoutError)):
                await asyncio.wait_for(client.request(aiocoap.Message(code=aiocoap.GET, uri=uri + "/hello"))
                                       .response, 6)
        finally:
            await client.shutdown()
        assert lookups and transport.handshakes_failed == 0 and transport.locked_out("127.0.0.1") is None
        assert transport.pending_handshakes == 0  # the refused handshake is dropped, not left to time out
    finally:
        await context.shutdown()


async def test_the_server_audits_a_lockout_and_takes_its_settings(tmp_path: Path) -> None:
    store = MemoryCredentialStore(Vault.generate())
    _, psk = store.issue("dev-1", "server", now=0, tenant_id="default")
    async with running_server(tmp_path, coap_port=None, coaps_port=0, credentials=store, dtls_lockout_failures=2,
                              dtls_lockout_seconds=120) as srv:
        seen: list[Event] = []
        srv.events.subscribe(seen.append, "security")
        assert srv.dtls is not None and srv.dtls.lockout is not None
        assert (srv.dtls.lockout.threshold, srv.dtls.lockout.period) == (2, 120)
        for n, identity in enumerate((b"nobody-1", b"nobody-2"), 1):  # unknown identities fail at the Finished
            client = await dtls_client_context(None, srv.coaps_uri, identity, bytes(psk))
            attempt = client.request(aiocoap.Message(code=aiocoap.GET, uri=srv.coaps_uri + "/rd")).response
            try:
                await eventually(lambda n=n: srv.dtls is not None and srv.dtls.handshakes_failed == n)  # type: ignore[misc]
            finally:
                await client.shutdown()
                with contextlib.suppress(aiocoap.error.Error, asyncio.CancelledError):
                    await attempt
        await eventually(lambda: any(e.kind == SECURITY_DTLS_LOCKOUT for e in seen))
        (event,) = [e for e in seen if e.kind == SECURITY_DTLS_LOCKOUT]
        assert event.data["address"] == "127.0.0.1" and event.data["identity"] == "nobody-2"
        assert bytes(psk).hex() not in repr(event)
        assert srv.dtls.locked_out("127.0.0.1") is not None


async def test_lockout_can_be_turned_off(tmp_path: Path) -> None:
    store = MemoryCredentialStore(Vault.generate())
    async with running_server(tmp_path, coap_port=None, coaps_port=0, credentials=store,
                              dtls_lockout_failures=0) as srv:
        assert srv.dtls is not None and srv.dtls.lockout is None and srv.dtls.locked_out("127.0.0.1") is None

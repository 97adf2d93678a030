"""Devices closing their DTLS sessions (close_notify: a reboot, a shutdown) while others stay connected must not
bring the server down. tinydtls removes an alerting peer from its peer table twice (``handle_alert``, then
``dtls_destroy_peer``); with other peers held, the table's item count drifts down by one each time until an
expansion divides by it: SIGFPE, the whole server gone (seen with 20 devices rebooting after an update, about one
run in five; `gdb` showed ``num_items = 0`` in a table of live peers). The transport ends such sessions itself and
never hands tinydtls the alert (``lwm2m_server.coap.dtls._before_closing_alert``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiocoap
import pytest

from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from lwm2m_server.coap.dtls import _before_closing_alert, dtls_client_context
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.storage.database import Database
from tests.harness import eventually, running_server

STEADY, CYCLES = 5, 25


def record(content_type: int, epoch: int, body: bytes) -> bytes:
    return bytes([content_type, 0xFE, 0xFD]) + epoch.to_bytes(2, "big") + (7).to_bytes(6, "big") + \
        len(body).to_bytes(2, "big") + body


def test_which_alerts_end_a_session_before_tinydtls_sees_them() -> None:
    data, hello = record(23, 1, b"\x01" * 40), record(22, 0, b"\x01" * 20)
    assert _before_closing_alert(data) is None and _before_closing_alert(hello) is None
    assert _before_closing_alert(record(21, 1, b"\x99" * 26)) == b""  # encrypted: any alert ends it
    assert _before_closing_alert(data + record(21, 1, b"\x99" * 26)) == data  # what came before still counts
    assert _before_closing_alert(record(21, 0, b"\x02\x28")) == b""  # epoch 0, fatal
    assert _before_closing_alert(record(21, 0, b"\x01\x00")) == b""  # epoch 0, close_notify
    assert _before_closing_alert(record(21, 0, b"\x01\x5a")) is None  # epoch 0 warning: tinydtls keeps the peer
    assert _before_closing_alert(data[:20]) is None and _before_closing_alert(b"") is None  # truncated


REMOTES: list[object] = []  # aiocoap pools client sessions weakly: the steady ones are kept by their remotes


async def register(uri: str, endpoint: str, identity: str, psk: bytes) -> aiocoap.Context:
    client = await dtls_client_context(None, uri, identity.encode(), psk)
    request = aiocoap.Message(code=aiocoap.POST, uri=f"{uri}/rd", payload=b"</3/0>",
                              content_format=int(ContentFormat.LINK))
    request.opt.uri_query = (f"ep={endpoint}", "lt=300", "lwm2m=1.1")
    answer = await asyncio.wait_for(client.request(request).response, 10)
    assert answer.code == aiocoap.CREATED, (endpoint, answer)
    REMOTES.append(answer.remote)
    return client


@pytest.mark.timeout(120)
async def test_sessions_closing_beside_others_end_cleanly_and_the_others_stay(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = Database.for_data_dir(data)
    vault = Vault.open(data / "vault.key")
    store = SqlCredentialStore(database, vault)
    creds = {f"d-{i}": store.issue(f"d-{i}", "server", now=time.time(), tenant_id="default")
             for i in range(STEADY + 1)}
    steady: list[aiocoap.Context] = []
    try:
        async with running_server(data, coaps_port=0, coap_port=None, credentials=store, vault=vault,
                                  rd_endpoint_rate=0) as srv:
            transport = srv.dtls
            assert transport is not None
            for i in range(STEADY):
                cred, psk = creds[f"d-{i}"]
                steady.append(await register(srv.coaps_uri, f"d-{i}", cred.identity, bytes(psk)))
            cred, psk = creds[f"d-{STEADY}"]
            for cycle in range(CYCLES):  # connect, register, close (close_notify) while the steady ones stay
                client = await register(srv.coaps_uri, f"d-{STEADY}", cred.identity, bytes(psk))
                await client.shutdown()
                await eventually(lambda c=cycle: transport.alerts_received == c + 1, timeout=10)
            await eventually(lambda: transport.peers == STEADY, timeout=10)
            for client in steady:  # the others' sessions are untouched
                request = aiocoap.Message(code=aiocoap.GET, uri=f"{srv.coaps_uri}/.well-known/core")
                answer = await asyncio.wait_for(client.request(request).response, 10)
                assert answer.code.is_successful(), answer
            assert transport.handshakes_completed == STEADY + CYCLES  # nobody had to handshake again
    finally:
        for client in steady:
            await client.shutdown()
        REMOTES.clear()
        database.close()

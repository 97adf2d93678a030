"""The DTLS stacks of real constrained devices against ``scratch bootstrap-server`` and ``scratch server``
(real processes on free loopback ports, one data directory, credentials from ``scratch factory provision``).

- mbedTLS (python-mbedtls, installed by the project: these tests always run): a minimal LwM2M client
  (tests/interop/embedded_clients.py) bootstraps over DTLS-PSK with its factory key, takes the server URI, PSK
  identity and key from the Bootstrap-Writes, registers over DTLS-PSK with them, shows up in ``scratch device
  list`` and de-registers; once with the record-layer version a DTLS 1.2 client normally sends, once with 0xFE00
  in the first ClientHello's record, as mbedTLS 2.x devices left at the library's default minimum version do
  (RFC 6347 4.1, RFC 5246 E.1: a server accepts any 0xFEXX there).
- tinydtls: the upstream example client (eclipse/tinydtls ``tests/dtls-client`` at 86f23c65, built outside the
  checkout; ``TINYDTLS_CLIENT`` names it, else these tests are skipped). It sends each stdin line as one record,
  so it can send requests but cannot answer the bootstrap server's requests (their tokens are random): it shows
  the handshake and a Bootstrap-Request answered 2.04 at the bootstrap server, and the handshake and a Register
  answered 2.01 at the server with the server key our bootstrap server issued (docs/interop.md).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from aiocoap.numbers.codes import Code

from lwm2m_server.core.codec.formats import ContentFormat
from tests.interop.embedded_clients import (
    MBEDTLS_FIRST_VERSION,
    TINYDTLS_ENV,
    MbedtlsLink,
    MiniLwm2mClient,
    ServerAccount,
    Servers,
    TinydtlsClient,
    hostport,
    line_message,
    run_scratch,
    scratch_servers,
)


def provision(servers: Servers, data: Path, out: Path, prefix: str) -> dict[str, str]:
    """One factory record (endpoint, bootstrap PSK identity and hex key) from ``scratch factory provision``."""
    r = run_scratch("factory", "provision", "--count", "1", "--prefix", prefix, "--out", str(out), "--format",
                    "json", "--bootstrap-uri", servers.bootstrap_uri, data_dir=data)
    assert r.returncode == 0, r.stderr
    (record,) = json.loads(out.read_text())
    return dict(record)


def devices(data: Path) -> dict[str, dict[str, object]]:
    r = run_scratch("device", "list", "--json", data_dir=data)
    assert r.returncode == 0, r.stderr
    return {d["endpoint"]: d for d in json.loads(r.stdout)}


def handshake(link: MbedtlsLink, what: str, servers: Servers) -> None:
    try:
        link.handshake()
    except Exception as e:  # mbedTLS's own error, or a timeout: the server never answered
        link.close()
        version = f"0x{MBEDTLS_FIRST_VERSION:04X}" if link.relay else "0xFEFD"
        pytest.fail(f"mbedTLS DTLS-PSK handshake with {what} failed (first ClientHello record version {version}): "
                    f"{type(e).__name__}\n{servers.logs()}", pytrace=False)


def mbedtls_bootstrap(servers: Servers, record: dict[str, str], *, first_record_version: int | None = None,
                      pct: int | None = None) -> tuple[MiniLwm2mClient, ServerAccount, int]:
    """Bootstrap one device with the minimal mbedTLS client; (client, the account it got, records rewritten)."""
    host, port = hostport(servers.bootstrap_uri)
    link = MbedtlsLink(host, port, record["psk_identity"], bytes.fromhex(record["psk_key"]),
                       first_record_version=first_record_version)
    handshake(link, "scratch bootstrap-server", servers)
    client = MiniLwm2mClient(record["endpoint"], link)
    try:
        account = client.bootstrap(pct=pct)
    finally:
        link.close()
    return client, account, link.relay.rewritten if link.relay else 0


# ---------------------------------------------------------------------------------------------- mbedTLS


@pytest.mark.parametrize(("first_record_version", "pct"), [(None, None), (MBEDTLS_FIRST_VERSION, 112)],
                         ids=["record-fefd-tlv", "record-fe00-senml-cbor"])
def test_mbedtls_client_bootstraps_and_registers(tmp_path: Path, first_record_version: int | None,
                                                 pct: int | None) -> None:
    data = tmp_path / "data"
    with scratch_servers(data) as servers:
        record = provision(servers, data, tmp_path / "line.json", "mb-")
        ep = record["endpoint"]
        client, account, rewritten = mbedtls_bootstrap(servers, record, first_record_version=first_record_version,
                                                       pct=pct)
        assert rewritten == (1 if first_record_version else 0)  # the relay did change the first ClientHello
        writes = [(path, cf) for method, path, cf in client.seen if method == "PUT"]
        fmt = pct if pct is not None else int(ContentFormat.TLV)  # the device's pct, else TLV (bootstrap/sequence)
        assert writes == [("/0/0", fmt), ("/0/1", fmt), ("/1/0", fmt)], client.seen
        assert [m for m, _, _ in client.seen][-1] == "POST"  # Bootstrap-Finish, answered 2.04
        assert account.uri == servers.uri and account.lifetime == 300 and account.short_server_id is not None
        assert account.identity != record["psk_identity"] and len(account.key) == 16

        host, port = hostport(account.uri)
        link = MbedtlsLink(host, port, account.identity, account.key, first_record_version=first_record_version)
        handshake(link, "scratch server", servers)
        client.link = link
        try:
            location = client.register(lifetime=account.lifetime or 300)
            shown = devices(data)[ep]
            assert shown["secure"] is True and shown["identity"] == account.identity
            assert location == f"/rd/{shown['registration_id']}" and shown["lwm2m_version"] == "1.1"
            assert client.deregister(location) == Code.DELETED
            assert ep not in devices(data)
        finally:
            link.close()
        logs = servers.logs().lower()
    for key in (bytes.fromhex(record["psk_key"]), account.key):
        assert key.hex() not in logs


# ---------------------------------------------------------------------------------------------- tinydtls


def tinydtls_binary() -> str:
    value = os.environ.get(TINYDTLS_ENV, "").strip()
    what = "the tinydtls example client (tests/dtls-client of eclipse/tinydtls 86f23c65, see docs/interop.md)"
    if not value:
        pytest.skip(f"{TINYDTLS_ENV} is not set: point it at {what}")
    found = shutil.which(value)
    if found is None:
        pytest.skip(f"{TINYDTLS_ENV}={value!r} is not an executable file: point it at {what}")
    return found


# MIDs and tokens without a 0x00 or 0x0A byte: each request must be one fgets() line (see line_message)
BS_MID, BS_TOKEN = 0x1234, bytes.fromhex("11223344")
REG_MID, REG_TOKEN = 0x1235, bytes.fromhex("21324354")
DEREG_MID, DEREG_TOKEN = 0x1236, bytes.fromhex("31425364")
DISCOVER = bytes([0xD1, 0x04, int(ContentFormat.LINK)])  # Accept: 40 as a request's first option (GET /)


def test_tinydtls_client_bootstrap_request_is_answered(tmp_path: Path) -> None:
    binary = tinydtls_binary()
    data = tmp_path / "data"
    with scratch_servers(data) as servers:
        record = provision(servers, data, tmp_path / "line.json", "td-")
        host, port = hostport(servers.bootstrap_uri)
        client = TinydtlsClient(binary, host, port, record["psk_identity"], bytes.fromhex(record["psk_key"]),
                                tmp_path / "tinydtls")
        try:
            line = line_message(Code.POST, BS_MID, BS_TOKEN, ("bs",), (f"ep={record['endpoint']}",))
            answer = client.ask(line, BS_MID, BS_TOKEN)
            assert answer is not None, f"no answer to the Bootstrap-Request over tinydtls\n{servers.logs()}"
            assert answer[0] == Code.CHANGED
            # the bootstrap server goes on over the same session: its Bootstrap-Discover reaches the client
            client.wait_for(DISCOVER)
        finally:
            client.stop()


def test_tinydtls_client_registers_with_the_issued_server_key(tmp_path: Path) -> None:
    binary = tinydtls_binary()
    data = tmp_path / "data"
    with scratch_servers(data) as servers:
        record = provision(servers, data, tmp_path / "line.json", "td-")
        ep = record["endpoint"]
        # the server key comes from our bootstrap server (the minimal mbedTLS client runs the bootstrap for it)
        _, account, _ = mbedtls_bootstrap(servers, record)
        host, port = hostport(account.uri)
        client = TinydtlsClient(binary, host, port, account.identity, account.key, tmp_path / "tinydtls")
        try:
            line = line_message(Code.POST, REG_MID, REG_TOKEN, ("rd",), (f"ep={ep}", "lt=300", "lwm2m=1.1"),
                                b"</1/0>,</3/0>", int(ContentFormat.LINK))
            answer = client.ask(line, REG_MID, REG_TOKEN)
            assert answer is not None, f"no answer to the Register over tinydtls\n{servers.logs()}"
            code, location = answer
            assert code == Code.CREATED
            shown = devices(data)[ep]
            assert shown["secure"] is True and shown["identity"] == account.identity
            assert location == ("rd", shown["registration_id"])
            line = line_message(Code.DELETE, DEREG_MID, DEREG_TOKEN, location)
            assert client.ask(line, DEREG_MID, DEREG_TOKEN) == (Code.DELETED, ())
            assert ep not in devices(data)
        finally:
            client.stop()

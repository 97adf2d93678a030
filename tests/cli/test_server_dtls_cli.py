"""``scratch server`` is secure by default: DTLS-PSK on --coaps with the data directory's server credentials, plain
CoAP only with --insecure. ``scratch factory revoke`` against the running server (another process, same database)
drops the device's live DTLS session and its next handshake fails.

Real processes: the server and the CLI are ``scratch`` subprocesses; the device is a DTLS client in the test."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiocoap
import pytest
from aiocoap import resource

from bootstrap.credentials import CredentialKind
from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from lwm2m_server.coap.dtls import dtls_client_context
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.data_dir import vault_key_location
from lwm2m_server.storage.database import Database
from tests.cli.test_cli import SCRATCH
from tests.harness import die_with_parent


def env_for(data_dir: Path) -> dict[str, str]:
    drop = ("SCRATCH_API", "SCRATCH_API_TOKEN", "SCRATCH_VAULT_KEY", "SCRATCH_VAULT_KEY_FILE", "SCRATCH_DATA_DIR")
    base = {k: v for k, v in os.environ.items() if k not in drop}
    return {**base, "SCRATCH_DATA_DIR": str(data_dir), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def run(*args: str, data_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCRATCH, *args], capture_output=True, text=True, timeout=timeout, env=env_for(data_dir))


def show(r: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(r.args)}\nexit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}"


class ScratchProcess:
    """``scratch <command> ARGS`` on ``data_dir``, in its own process group, with its output in a file (read,
    never blocked on)."""

    def __init__(self, data_dir: Path, command: str, *args: str, log_name: str | None = None) -> None:
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{log_name or data_dir.name + '-' + command}.out"
        self._start = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("a") as out:  # a restarted process adds to the log of the one before
            self.proc = subprocess.Popen([*SCRATCH, command, *args], env=env_for(data_dir), stdout=out,
                                         stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                         preexec_fn=die_with_parent)  # also when pytest itself is killed

    def output(self) -> str:
        """What this process wrote (not the processes before it on the same log)."""
        with self.log.open("rb") as f:
            f.seek(self._start)
            return f.read().decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output(), re.M)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not printed:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class ServerProcess(ScratchProcess):
    """``scratch server ARGS``."""

    def __init__(self, data_dir: Path, *args: str, log_name: str | None = None) -> None:
        super().__init__(data_dir, "server", *args, log_name=log_name)


# -- usage


def test_plain_coap_needs_insecure(tmp_path: Path) -> None:
    r = run("server", "--coap", "127.0.0.1:0", "--api", "127.0.0.1:0", data_dir=tmp_path / "data")
    assert r.returncode == 2, show(r)
    assert "--insecure" in r.stderr and "no authentication" in r.stderr, show(r)
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_the_help_shows_the_security_options(tmp_path: Path) -> None:
    r = run("server", "--help", data_dir=tmp_path)
    assert r.returncode == 0, show(r)
    for option in ("--coaps", "--coap", "--insecure", "--rd-rate", "--rd-burst", "--dtls-lockout-failures",
                   "--dtls-lockout-window", "--dtls-lockout-seconds"):
        assert option in r.stdout, option


def test_insecure_serves_plain_coap_beside_dtls_and_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, "--insecure", "--coap", "127.0.0.1:0", "--coaps", "127.0.0.1:0", "--api",
                           "127.0.0.1:0", "--rd-rate", "5", "--rd-burst", "3", "--dtls-lockout-failures", "4")
    try:
        server.wait_for(r"LwM2M server on coaps://127\.0\.0\.1:\d+ \(DTLS-PSK\) and coap://127\.0\.0\.1:\d+ "
                        r"\(plain CoAP\)")
        server.wait_for(r"^warning: plain CoAP on coap://\S+ has no authentication and no confidentiality")
        assert re.search(r"WARNING lwm2m_server\.server: .*plain CoAP", server.output())
    finally:
        server.stop()


# -- DTLS by default, and a revocation from another process


class Manufacturer(resource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"ACME", content_format=int(ContentFormat.TEXT))


def device_site() -> resource.Site:
    site = resource.Site()
    site.add_resource(("3", "0", "0"), Manufacturer())
    return site


async def register(coaps_uri: str, identity: str, psk: bytes, timeout: float = 10) -> aiocoap.Context:
    client = await dtls_client_context(device_site(), coaps_uri, identity.encode(), psk)
    request = aiocoap.Message(code=aiocoap.POST, uri=f"{coaps_uri}/rd", payload=b"</3/0>",
                              content_format=int(ContentFormat.LINK))
    request.opt.uri_query = ("ep=dev-1", "lt=300", "lwm2m=1.1")
    try:
        answer = await asyncio.wait_for(client.request(request).response, timeout)
        assert answer.code == aiocoap.CREATED, answer
    except BaseException:
        await client.shutdown()
        raise
    client._kept_remote = answer.remote  # type: ignore[attr-defined]  # keeps the session alive
    return client


@pytest.fixture
def dtls_server(tmp_path: Path) -> Iterator[tuple[Path, ServerProcess, str]]:
    data = tmp_path / "data"
    server = ServerProcess(data, "--coaps", "127.0.0.1:0", "--api", "127.0.0.1:0")
    try:
        uri = server.wait_for(r"LwM2M server on (coaps://\S+) \(DTLS-PSK\), API").group(1)
        yield data, server, uri
    finally:
        server.stop()


async def test_a_device_with_a_server_credential_works_until_factory_revoke(dtls_server) -> None:
    data, server, coaps_uri = dtls_server
    assert "coap://" not in server.output() and "plain CoAP" not in server.output()  # no plain listener
    assert not (data / "vault.key").exists()  # the key is kept out of the data folder
    key_file = vault_key_location(data).path
    assert key_file.stat().st_mode & 0o777 == 0o600
    database = Database.for_data_dir(data)  # the production line's view of the same database
    try:
        store = SqlCredentialStore(database, Vault.open(key_file, environ={}))
        cred, psk = store.issue("dev-1", CredentialKind.SERVER, now=time.time(), tenant_id="default")
        bootstrap, bs_psk = store.issue("dev-1", CredentialKind.BOOTSTRAP, now=time.time(), tenant_id="default")
    finally:
        database.close()

    with pytest.raises((aiocoap.error.Error, TimeoutError)):  # a bootstrap credential does not open this server
        await (await register(coaps_uri, bootstrap.identity, bytes(bs_psk), timeout=6)).shutdown()

    client = await register(coaps_uri, cred.identity, bytes(psk))
    try:
        r = await asyncio.to_thread(run, "device", "read", "dev-1", "/3/0/0", "--json", data_dir=data)
        assert r.returncode == 0 and '"ACME"' in r.stdout, show(r)

        r = await asyncio.to_thread(run, "factory", "revoke", "dev-1", data_dir=data)
        assert r.returncode == 0 and "revoked 2 credential(s)" in r.stdout, show(r)
        # the server sees it at its next poll (about a second) and drops the live session
        server.wait_for(rf"credential '{cred.identity}' \(server\) of endpoint 'dev-1' was revoked: 1 DTLS session")
        r = await asyncio.to_thread(run, "device", "read", "dev-1", "/3/0/0", "--json", "--timeout", "5",
                                    data_dir=data)
        assert r.returncode != 0, show(r)
    finally:
        await client.shutdown()

    with pytest.raises((aiocoap.error.Error, TimeoutError)):  # and its next handshake fails
        await (await register(coaps_uri, cred.identity, bytes(psk), timeout=6)).shutdown()
    out = server.output()
    for key in (bytes(psk), bytes(bs_psk)):
        assert key.hex() not in out.lower() and key.hex().upper() not in out

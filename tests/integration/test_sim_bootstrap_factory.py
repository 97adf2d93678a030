"""From the production line to registered simulated devices: ``scratch factory provision`` (a real subprocess)
writes the manufacturing file; ``scratch sim --credentials`` (its fleet runner, in process) starts one device per
record; each bootstraps at the real bootstrap server and registers over DTLS at the real LwM2M server, both on the
SQL credential store the factory wrote into. Plus the manufacturing-file reader's refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bootstrap.server import BootstrapServer, BootstrapSettings
from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import Vault
from client_sim.cli import run_fleet
from client_sim.credentials import CredentialsFileError, FactoryCredentials, load_factory_file, parse_text
from client_sim.firmware import FirmwareOptions
from lwm2m_server.cli.app import app
from lwm2m_server.server import Lwm2mServer
from lwm2m_server.storage.database import Database
from tests.harness import eventually, running_server

SCRATCH = [sys.executable, "-m", "lwm2m_server.cli.app"]
KEY = "00112233445566778899aabbccddeeff"


@contextlib.asynccontextmanager
async def production(tmp_path: Path) -> AsyncIterator[tuple[Path, Lwm2mServer, BootstrapServer]]:
    """A data folder with its vault and credential database, and both servers running on it."""
    data_dir = tmp_path / "data"
    store = SqlCredentialStore(Database.for_data_dir(data_dir), Vault.open(data_dir / "vault.key"))
    async with running_server(tmp_path / "server", coaps_port=0, credentials=store) as srv:
        bs = BootstrapServer(BootstrapSettings(server_uri=srv.coaps_uri, coaps_port=0), store)
        await bs.start()
        try:
            yield data_dir, srv, bs
        finally:
            await bs.stop()


async def provision(data_dir: Path, out: Path, bootstrap_uri: str, *, count: int, prefix: str, fmt: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("SCRATCH_VAULT_KEY", "SCRATCH_DATA_DIR")}
    env["SCRATCH_DATA_DIR"] = str(data_dir)
    process = await asyncio.create_subprocess_exec(
        *SCRATCH, "factory", "provision", "--count", str(count), "--prefix", prefix, "--out", str(out),
        "--format", fmt, "--bootstrap-uri", bootstrap_uri, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_factory_file_to_registered_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with production(tmp_path) as (data_dir, srv, bs):
        await provision(data_dir, tmp_path / "line-1.csv", bs.coaps_uri, count=3, prefix="fab-", fmt="csv")
        await provision(data_dir, tmp_path / "line-2.json", bs.coaps_uri, count=2, prefix="fabj-", fmt="json")
        records = load_factory_file(tmp_path / "line-1.csv") + load_factory_file(tmp_path / "line-2.json")
        assert [r.endpoint for r in records] == ["fab-0001", "fab-0002", "fab-0003", "fabj-0001", "fabj-0002"]
        assert all(len(r.psk_key) == 16 and r.bootstrap_uri == bs.coaps_uri for r in records)

        stop = asyncio.Event()
        runner = asyncio.create_task(run_fleet(None, 4, credentials=records, stop=stop,  # the first 4 only
                                               firmware=FirmwareOptions(insecure_accept_any=True)))
        try:
            assert srv.registrations is not None
            registrations = srv.registrations
            await eventually(lambda: all(registrations.by_endpoint(r.endpoint, tenant_id="default") is not None
                                         for r in records[:4]),
                             timeout=60)
            for record in records[:4]:
                reg = registrations.by_endpoint(record.endpoint, tenant_id="default")
                assert reg is not None and reg.secure and reg.identity != record.psk_identity
            assert registrations.by_endpoint("fabj-0002", tenant_id="default") is None
        finally:
            stop.set()
            status = await asyncio.wait_for(runner, 30)
        assert status.stopped == 4 and bs.stats.succeeded == 4
        # de-registered on exit
        assert all(registrations.by_endpoint(r.endpoint, tenant_id="default") is None for r in records)
    out = capsys.readouterr().out
    assert "starting 4 device(s) fab-0001..fabj-0001 from the factory" in out and "fab-0001: bootstrapping" in out
    assert "fab-0001: registered at /rd/" in out and "stopped: 0/4 registered" in out
    assert all(r.psk_key.hex() not in out.lower() for r in records)


def run_cli(*args: str, columns: int) -> tuple[int, str]:
    """``scratch sim ARGS`` through the real root command (its error formatting), in a terminal ``columns`` wide:
    the exit code and stderr, which must be one line whatever the width."""
    result = CliRunner().invoke(app, ["sim", *args], env={"COLUMNS": str(columns), "TERM": "xterm"})
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return result.exit_code, lines[0]


@pytest.mark.parametrize("columns", [40, 300])
def test_sim_cli_refuses_bad_combinations_and_files(tmp_path: Path, columns: int) -> None:
    """Each refusal is the same single line ``error: ...`` on stderr (exit 2), however narrow the terminal and
    however long the temporary path in it."""
    good = tmp_path / "good.csv"
    good.write_text(f"endpoint,psk_identity,psk_key,bootstrap_uri\nd-0,bs-d-0,{KEY},coaps://127.0.0.1:5784\n")
    code, out = run_cli("--server", "coap://127.0.0.1:5683", "--credentials", str(good), columns=columns)
    assert code == 2 and "leave --server out" in out
    code, out = run_cli("--count", "3", columns=columns)
    assert code == 2 and "--credentials" in out
    bad = tmp_path / "bad.csv"
    bad.write_text(f"endpoint,psk_identity,psk_key,bootstrap_uri\nd-0,bs-d-0,{KEY}00,coaps://127.0.0.1:5784\n")
    code, out = run_cli("--credentials", str(bad), columns=columns)
    assert code == 2 and f"{bad}: record 1: psk_key: must be 1..16 bytes" in out
    assert KEY not in out
    missing = tmp_path / "missing.csv"
    code, out = run_cli("--credentials", str(missing), columns=columns)
    assert code == 2 and f"cannot read {missing}" in out


def test_manufacturing_files_are_read_and_checked() -> None:
    csv_text = f"endpoint,psk_identity,psk_key,bootstrap_uri\nd-0,bs-d-0,{KEY},coaps://bs.example:5784\n\n"
    (record,) = parse_text(csv_text)
    assert record == FactoryCredentials("d-0", "bs-d-0", bytes.fromhex(KEY), "coaps://bs.example:5784")
    assert KEY not in repr(record) and KEY not in str(record) and "psk_key" not in repr(record)
    as_json = json.dumps([{"endpoint": "d-0", "psk_identity": "bs-d-0", "psk_key": KEY,
                           "bootstrap_uri": "coaps://[::1]:5784"}])
    assert parse_text(as_json)[0].bootstrap_uri == "coaps://[::1]:5784"
    assert parse_text(json.dumps({"devices": json.loads(as_json)}))[0].endpoint == "d-0"
    cases = {
        "psk_key is not hex": f"d-0,bs-d-0,{KEY[:-1]}x,coaps://bs.example",
        "psk_key: must be 1..16 bytes": f"d-0,bs-d-0,{KEY}ab,coaps://bs.example",
        "bootstrap_uri: must be coaps://": f"d-0,bs-d-0,{KEY},coap://bs.example",
        "without a path or query": f"d-0,bs-d-0,{KEY},coaps://bs.example/bs",
        "psk_identity: must be 1..32 bytes": f"d-0,{'i' * 33},{KEY},coaps://bs.example",
        "missing or empty field(s) endpoint": f",bs-d-0,{KEY},coaps://bs.example",
        "more fields than the header": f"d-0,bs-d-0,{KEY},coaps://bs.example,extra",
        "appears twice": f"d-0,bs-d-0,{KEY},coaps://bs.example\nd-0,bs-d-1,{KEY},coaps://bs.example",
    }
    for needle, row in cases.items():
        with pytest.raises(CredentialsFileError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
            parse_text(f"endpoint,psk_identity,psk_key,bootstrap_uri\n{row}\n", fmt="csv")
        assert KEY not in str(e.value) and KEY[:-1] not in str(e.value)
    with pytest.raises(CredentialsFileError, match="header lacks psk_key"):
        parse_text("endpoint,psk_identity,bootstrap_uri\nd-0,x,coaps://bs.example\n", fmt="csv")
    with pytest.raises(CredentialsFileError, match="not JSON"):
        parse_text("[{", fmt="json")
    with pytest.raises(CredentialsFileError, match="list of records"):
        parse_text('{"endpoint": "d-0"}', fmt="json")

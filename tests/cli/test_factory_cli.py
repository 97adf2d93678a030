"""``scratch factory`` as the production line runs it: every command a ``scratch`` subprocess on a fresh data
directory; the manufacturing file, the database files and the command output are inspected for keys."""

from __future__ import annotations

import csv
import json
import os
import secrets
import stat
import subprocess
from pathlib import Path

import pytest

from tests.cli.test_cli import SCRATCH

URI = "coaps://bs.example.test:5784"


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    drop = ("SCRATCH_API", "SCRATCH_API_TOKEN", "SCRATCH_VAULT_KEY", "SCRATCH_VAULT_KEY_FILE", "SCRATCH_DATA_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "SCRATCH_DATA_DIR": str(data_dir), "COLUMNS": "200", **extra}


def run(*args: str, data_dir: Path, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCRATCH, "factory", *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(data_dir, **extra))


def show(r: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(r.args)}\nexit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}"


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert r.returncode == code, show(r)
    assert needle in r.stderr, show(r)
    assert "Traceback" not in r.stderr + r.stdout, show(r)
    assert len(r.stderr.strip().splitlines()) == 1, show(r)


def read_records(path: Path, fmt: str) -> list[dict[str, str]]:
    text = path.read_text()
    return json.loads(text) if fmt == "json" else list(csv.DictReader(text.splitlines()))


def assert_no_key_leaks(records: list[dict[str, str]], data_dir: Path, *outputs: str) -> None:
    """No key, as hex (either case) or as raw bytes, in any file of the data directory (database, WAL, SHM) or in
    any command output."""
    blobs = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.is_file() and p.name != "vault.key"}
    assert "scratch.db" in blobs
    for rec in records:
        key = rec["psk_key"]
        raw = bytes.fromhex(key)
        for name, blob in blobs.items():
            assert raw not in blob, f"raw key of {rec['endpoint']} in {name}"
            assert key.encode() not in blob.lower(), f"hex key of {rec['endpoint']} in {name}"
        for out in outputs:
            assert key not in out.lower()


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_provision_writes_private_file_and_keeps_keys_out_of_db_and_output(tmp_path: Path, fmt: str,
                                                                          vault_key_in_tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / f"line.{fmt}"
    r = run("provision", "--count", "5", "--prefix", "dev-", "--out", str(out), "--format", fmt,
            "--bootstrap-uri", URI, data_dir=data_dir)
    assert r.returncode == 0, show(r)
    assert len(r.stdout.strip().splitlines()) == 1 and "provisioned 5" in r.stdout, show(r)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # the key is created outside the data folder ($XDG_CONFIG_HOME/scratch/vault.key), 0600 in a 0700 folder
    assert not (data_dir / "vault.key").exists()
    assert stat.S_IMODE(vault_key_in_tmp_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(vault_key_in_tmp_path.parent.stat().st_mode) == 0o700
    records = read_records(out, fmt)
    assert len(records) == 5
    assert all(set(rec) == {"endpoint", "psk_identity", "psk_key", "bootstrap_uri"} for rec in records)
    assert [rec["endpoint"] for rec in records] == [f"dev-000{i}" for i in range(1, 6)]
    assert all(rec["bootstrap_uri"] == URI for rec in records)
    assert len({rec["psk_identity"] for rec in records}) == 5
    assert len({rec["psk_key"] for rec in records}) == 5
    assert all(len(bytes.fromhex(rec["psk_key"])) >= 16 for rec in records)
    listed = run("list", "--json", data_dir=data_dir)
    assert listed.returncode == 0, show(listed)
    rows = json.loads(listed.stdout)
    assert {(x["endpoint"], x["psk_identity"], x["kind"], x["revoked"]) for x in rows} == {
        (rec["endpoint"], rec["psk_identity"], "bootstrap", False) for rec in records}
    table = run("list", data_dir=data_dir)
    assert table.returncode == 0, show(table)
    assert_no_key_leaks(records, data_dir, r.stdout, r.stderr, listed.stdout, listed.stderr, table.stdout,
                        table.stderr)


def test_refuses_to_overwrite_out(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "line.csv"
    out.write_text("precious\n")
    r = run("provision", "--count", "2", "--prefix", "dev-", "--out", str(out), data_dir=data_dir)
    assert_one_line_error(r, 2, "exists")
    assert out.read_text() == "precious\n"
    listed = run("list", "--json", data_dir=data_dir)
    assert json.loads(listed.stdout) == [], show(listed)


def test_same_prefix_again_refused_and_nothing_written(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = run("provision", "--count", "3", "--prefix", "p", "--out", str(tmp_path / "a.csv"), data_dir=data_dir)
    assert first.returncode == 0, show(first)
    again = run("provision", "--count", "5", "--prefix", "p", "--out", str(tmp_path / "b.csv"), data_dir=data_dir)
    assert_one_line_error(again, 2, "already has a credential")
    assert not (tmp_path / "b.csv").exists()
    assert len(json.loads(run("list", "--json", data_dir=data_dir).stdout)) == 3


def test_revoke_then_list_shows_revoked(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "line.json"
    assert run("provision", "--count", "2", "--prefix", "r", "--out", str(out), "--format", "json",
               data_dir=data_dir).returncode == 0
    records = read_records(out, "json")
    r = run("revoke", "r0001", data_dir=data_dir)
    assert r.returncode == 0, show(r)
    assert "revoked 1" in r.stdout
    rows = {x["endpoint"]: x for x in json.loads(run("list", "--json", data_dir=data_dir).stdout)}
    assert rows["r0001"]["revoked"] is True and rows["r0001"]["revoked_at"]
    assert rows["r0002"]["revoked"] is False
    assert_no_key_leaks(records, data_dir, r.stdout, r.stderr)


def test_revoke_unknown_endpoint_exits_1(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert_one_line_error(run("revoke", "ghost", data_dir=data_dir), 1, "unknown endpoint")
    assert run("provision", "--count", "1", "--prefix", "x", "--out", str(tmp_path / "o.csv"),
               data_dir=data_dir).returncode == 0
    assert_one_line_error(run("revoke", "ghost", data_dir=data_dir), 1, "unknown endpoint 'ghost'")


def test_env_key_used_instead_of_key_file(tmp_path: Path, vault_key_in_tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "line.csv"
    r = run("provision", "--count", "2", "--prefix", "e", "--out", str(out), data_dir=data_dir,
            SCRATCH_VAULT_KEY=secrets.token_hex(32))
    assert r.returncode == 0, show(r)
    assert not (data_dir / "vault.key").exists() and not vault_key_in_tmp_path.exists()
    assert sorted(p.name for p in data_dir.iterdir() if p.name.startswith("vault")) == []
    assert "warning" not in r.stderr, show(r)
    assert_no_key_leaks(read_records(out, "csv"), data_dir, r.stdout, r.stderr)


@pytest.mark.parametrize(("args", "needle"), [
    (("--count", "0"), "--count"),
    (("--count", "100001"), "--count"),
    (("--count", "2", "--format", "xml"), "--format"),
    (("--count", "2", "--bootstrap-uri", "coap://h:5683"), "--bootstrap-uri"),
    (("--count", "2", "--prefix", "bad name/"), "--prefix"),
])
def test_bad_input_exits_2(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    full = ("--prefix", "ok", *args) if "--prefix" not in args else args
    r = run("provision", *full, "--out", str(tmp_path / "o.csv"), data_dir=tmp_path / "data")
    assert_one_line_error(r, 2, needle)
    assert not (tmp_path / "o.csv").exists()


def test_vault_key_location_legacy_file_and_named_file(tmp_path: Path, vault_key_in_tmp_path: Path) -> None:
    """The one rule (lwm2m_server.data_dir.vault_key_location): a data folder made before the key moved out keeps
    its DATA_DIR/vault.key, with a one-line warning saying how to move it; $SCRATCH_VAULT_KEY_FILE names a file
    elsewhere; the default is outside the data folder and shared by the user's data folders."""
    from bootstrap.vault import Vault

    legacy_dir = tmp_path / "legacy"
    legacy_dir.mkdir(mode=0o700)
    legacy = Vault.open(legacy_dir / "vault.key", environ={})
    r = run("provision", "--count", "1", "--prefix", "old", "--out", str(tmp_path / "old.csv"), data_dir=legacy_dir)
    assert r.returncode == 0, show(r)
    (warning,) = r.stderr.splitlines()
    assert warning.startswith("warning: the vault key file ") and "mv -n " in warning, show(r)
    assert f"{vault_key_in_tmp_path}" in warning and not vault_key_in_tmp_path.exists()
    assert Vault.open(legacy_dir / "vault.key", environ={}).key_id == legacy.key_id  # used, not replaced

    named = tmp_path / "elsewhere" / "kek"
    named_dir = tmp_path / "named"
    r = run("provision", "--count", "1", "--prefix", "n", "--out", str(tmp_path / "n.csv"), data_dir=named_dir,
            SCRATCH_VAULT_KEY_FILE=str(named))
    assert r.returncode == 0 and "warning: created a new vault key file" in r.stderr, show(r)
    assert stat.S_IMODE(named.stat().st_mode) == 0o600 and not vault_key_in_tmp_path.exists()
    assert not (named_dir / "vault.key").exists()

    fresh = tmp_path / "fresh"
    r = run("provision", "--count", "1", "--prefix", "f", "--out", str(tmp_path / "f.csv"), data_dir=fresh)
    assert r.returncode == 0 and str(vault_key_in_tmp_path) in r.stderr, show(r)
    assert vault_key_in_tmp_path.is_file() and not (fresh / "vault.key").exists()
    assert sorted(p.name for p in fresh.iterdir() if "vault" in p.name) == []


def test_a_data_folder_refuses_a_vault_key_other_than_its_own(tmp_path: Path, vault_key_in_tmp_path: Path) -> None:
    """The default key is per user: a command run by another user (or with another $SCRATCH_VAULT_KEY_FILE) would
    create a second key and seal what the server cannot open. The data folder remembers its key's id, never the key,
    and such a command is refused, saying why, before it writes anything."""
    from bootstrap.vault import KEY_ID_FILE, Vault

    data = tmp_path / "data"
    r = run("provision", "--count", "1", "--prefix", "a", "--out", str(tmp_path / "a.csv"), data_dir=data)
    assert r.returncode == 0, show(r)
    own = Vault.open(vault_key_in_tmp_path, environ={})
    assert (data / KEY_ID_FILE).read_text().strip() == own.key_id
    other = tmp_path / "other-user" / "vault.key"
    r = run("provision", "--count", "1", "--prefix", "b", "--out", str(tmp_path / "b.csv"), data_dir=data,
            SCRATCH_VAULT_KEY_FILE=str(other))
    assert r.returncode != 0 and "is not the one the secrets in" in r.stderr, show(r)
    assert len(r.stderr.strip().splitlines()) <= 2 and not (tmp_path / "b.csv").exists()
    r = run("list", "--json", data_dir=data)  # the folder's own key still opens everything
    assert r.returncode == 0 and '"a' in r.stdout, show(r)

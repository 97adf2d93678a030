"""Rule 6 at rest: the data folder holds no PSK in the clear (only sealed), and the leak scan itself can fail.

The data folder is made the way the production line makes it: ``scratch factory provision`` (a subprocess) issues
bootstrap credentials, then server credentials are issued through :class:`SqlCredentialStore`, as the bootstrap
server does at every bootstrap. Then every file of the folder (database, its -wal/-shm, anything else) is read as
bytes and searched for every key and for the vault's key-encryption key (which is kept outside the data folder),
in every encoding tests/secret_scan.py knows. Assertion messages
name a key by its label only: a failing test does not print a key either.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import secrets
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootstrap.credentials import MemoryCredentialStore
from bootstrap.sql_credentials import SqlCredentialStore
from bootstrap.vault import KEK_ENV_VAR, Vault
from lwm2m_server.data_dir import vault_key_location
from lwm2m_server.storage.database import DB_FILENAME, Database
from tests.cli.test_cli import SCRATCH
from tests.secret_scan import (
    CHILD_LOG_DIR_ENV,
    SecretSet,
    SuiteSecretScan,
    describe,
    encodings,
    manufacturing_keys,
)

COUNT = 20
T0 = 1_700_000_000.0


@pytest.fixture
def outside_basetemp() -> Iterator[Path]:
    """A folder outside pytest's base temporary folder, for files that hold keys on purpose (the suite-wide scan
    must not find them there)."""
    with tempfile.TemporaryDirectory(prefix="scratch-planted-") as folder:
        yield Path(folder)


# ---------------------------------------------------------------- the scanner finds what it must, and only that


TRICKY_KEY = b"'\"\\\n\t\r\x00\x7f\xffAbc=+/-_" + bytes(range(0x80, 0x88))  # quotes, escapes, base64 specials


def written_forms(key: bytes) -> dict[str, bytes]:
    """How a key may end up written: each encoding the scanner knows, and the whole strings code prints."""
    forms = dict(encodings(key))
    forms["repr(key), whole"] = repr(key).encode()
    forms["str(bytes(key)) in an f-string"] = f"psk={bytes(key)}".encode()
    forms["repr of a longer payload"] = repr(b"\x01\x02head" + key + b"tail").encode()
    forms["padded base64"] = base64.b64encode(key)
    forms["padded URL-safe base64"] = base64.urlsafe_b64encode(key)
    forms["JSON log line with repr"] = json.dumps({"msg": f"write {key!r}"}).encode()
    forms["hex inside a longer hex dump"] = (b"\xaa\xbb\xcc" + key + b"\xdd").hex().encode()
    return forms


@pytest.mark.parametrize("key", [TRICKY_KEY, secrets.token_bytes(16), secrets.token_bytes(64)],
                         ids=["tricky", "random-16", "random-64"])
def test_scanner_finds_a_key_in_every_encoding_at_every_offset(tmp_path: Path, key: bytes) -> None:
    found = SecretSet()
    found.add(key, "the planted key")
    for name, form in written_forms(key).items():
        for shift in range(9):  # every alignment against the scanner's 8-byte stride
            path = tmp_path / f"planted-{shift}.log"
            path.write_bytes(b"a clean first line\n" + b"x" * shift + b"key: " + form + b" end\nlast line\n")
            findings = found.scan_file(path)
            assert findings, f"{name} at shift {shift}: not found"
            assert all(f.line == 2 and f.secret.startswith("the planted key") for f in findings), findings
            for f in findings:  # the report names the key by its label only
                text = str(f).encode()
                assert all(form not in text for form in encodings(key).values()), f"{name}: report shows the key"
    for name, form in encodings(key).items():
        findings = found.scan_bytes(b"\n\n" + form, "blob")
        assert name in [f.encoding for f in findings] and {f.line for f in findings} == {3}, findings


def test_scanner_encodings_cover_what_python_prints() -> None:
    forms = encodings(TRICKY_KEY).values()
    logged = logging.LogRecord("bootstrap", logging.DEBUG, __file__, 1, "psk %r", (TRICKY_KEY,), None).getMessage()
    for printed in (repr(TRICKY_KEY), str(TRICKY_KEY), f"{TRICKY_KEY!r}", logged, TRICKY_KEY.hex(),
                    TRICKY_KEY.hex().upper(), base64.b64encode(TRICKY_KEY).decode(),
                    base64.urlsafe_b64encode(TRICKY_KEY).decode(), json.dumps(repr(TRICKY_KEY))):
        assert any(form in printed.encode() for form in forms)


def test_clean_file_passes(tmp_path: Path) -> None:
    found = SecretSet()
    for i in range(200):
        found.add(secrets.token_bytes(16), f"key {i}")
    others = [secrets.token_bytes(16) for _ in range(50)]  # keys of nobody, in every encoding
    lines = [b"2024-01-01 INFO lwm2m_server issued server credential 'sv-abc' to 'dev-0001'"]
    for other in others:
        lines.extend(written_forms(other).values())
    path = tmp_path / "clean.log"
    path.write_bytes(b"\n".join(lines) + b"\n" + os.urandom(256 * 1024))
    assert found.scan_file(path) == []
    assert found.scan_bytes(b"", "empty") == [] and SecretSet().scan_bytes(b"anything", "no keys") == []


def test_short_values_are_not_looked_for() -> None:
    found = SecretSet()
    found.add(b"1234567", "seven bytes")
    assert len(found) == 0 and found.scan_bytes(b"1234567 31323334353637", "blob") == []
    found.add(b"12345678", "eight bytes")
    assert [f.encoding for f in found.scan_bytes(b"x 3132333435363738 x", "blob")] == ["hex (lowercase)"]


def test_suite_scan_learns_the_keys_of_data_folders_and_skips_manufacturing_files(outside_basetemp: Path) -> None:
    """A miniature run of the suite-wide scan on a planted base folder: a server's data folder whose key turns up
    in a log and an audit file, a manufacturing file (.txt) holding its keys on purpose, and a clean log."""
    data_dir = outside_basetemp / "server-data"
    with Database.for_data_dir(data_dir) as db:
        store = SqlCredentialStore(db, Vault.open(data_dir / "vault.key", environ={}))
        _, psk = store.issue("dev-1", "server", now=T0,
                             tenant_id="default")  # issued before the scan starts: it must learn it from disk
        _, other = store.issue("dev-2", "server", now=T0, tenant_id="default")
    (data_dir / "server.log").write_text(f"ok\nok\nDEBUG wrote /0/1/5 = {bytes(psk)!r}\n")
    (data_dir / "audit.jsonl").write_text(json.dumps({"kind": "bootstrap.done", "psk": psk.hex()}) + "\n")
    (outside_basetemp / "line.txt").write_text(f"endpoint,psk_identity,psk_key\ndev-2,id,{other.hex()}\n")
    (outside_basetemp / "clean.out").write_text("nothing to see\n")

    scan = SuiteSecretScan(outside_basetemp, outside_basetemp / "work")
    scan.workdir.mkdir()
    scan.start()
    report = scan.finish()

    assert report.data_dirs == 1 and report.manufacturing_files == 1 and not report.unreadable, report.summary()
    where = sorted((Path(f.source).name, f.line, f.encoding) for f in report.findings)
    assert where == [("audit.jsonl", 1, "hex (lowercase)"), ("server.log", 3, "Python bytes repr")], \
        describe(report.findings)
    assert all("server PSK of 'dev-1' in the credential store" in f.secret for f in report.findings)


def test_the_run_records_issued_keys_and_captures_debug_logs_and_child_logs(
        secrets_never_leak: SuiteSecretScan) -> None:
    scan = secrets_never_leak
    store = MemoryCredentialStore(Vault.generate())
    _, drawn = store.issue("probe", "server", now=T0, tenant_id="default")
    given = secrets.token_bytes(16)
    store.issue("probe-given", "bootstrap", now=T0, psk=given, tenant_id="default")
    assert drawn in scan.secrets and given in scan.secrets

    marker = f"debug-probe-{secrets.token_hex(4)}"
    logging.getLogger("bootstrap.probe").debug("%s", marker)
    logging.getLogger("aiocoap.probe").info("%s-info", marker)
    logging.getLogger("aiocoap.probe").debug("%s-aiocoap-debug", marker)
    text = scan.log_file.read_text()
    assert marker in text and f"{marker}-info" in text and f"{marker}-aiocoap-debug" not in text

    code = f"import logging; logging.basicConfig(); logging.getLogger('child').warning('{marker}-child')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"{marker}-child" in r.stderr, r.stderr
    child_dir = Path(os.environ[CHILD_LOG_DIR_ENV])
    assert any(f"{marker}-child" in p.read_text() for p in child_dir.glob("subprocess-*.log"))


# ---------------------------------------------------------------- the data folder at rest


def _env(**extra: str) -> dict[str, str]:
    drop = ("SCRATCH_API", "SCRATCH_API_TOKEN", KEK_ENV_VAR, "SCRATCH_VAULT_KEY_FILE", "SCRATCH_DATA_DIR")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "COLUMNS": "200", **extra}


def scratch(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCRATCH, *args], capture_output=True, text=True, timeout=120, env=_env(**extra))


def show(r: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(r.args)}\nexit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}"


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kek_source", ["key file", "environment"])
def test_vault_and_database_hold_no_plaintext_key(tmp_path: Path, kek_source: str) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "line.csv"
    kek = secrets.token_bytes(32)
    env = {KEK_ENV_VAR: kek.hex()} if kek_source == "environment" else {}

    r = scratch("factory", "provision", "--count", str(COUNT), "--prefix", "dev-", "--out", str(out),
                "--data-dir", str(data_dir), **env)
    assert r.returncode == 0, show(r)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    bootstrap_keys = manufacturing_keys(out)
    assert bootstrap_keys is not None and len(bootstrap_keys) == COUNT
    keys = SecretSet()
    keys.update(bootstrap_keys)
    endpoints = [f"dev-{i:04d}" for i in range(1, COUNT + 1)]

    # server credentials, issued as the bootstrap server issues them; one is rekeyed (its old key is erased)
    db = Database.for_data_dir(data_dir)
    key_file = vault_key_location(data_dir).path  # the same rule as the command's: outside the data folder
    assert data_dir not in key_file.parents
    vault = Vault.open(key_file, environ=env)
    store = SqlCredentialStore(db, vault)
    server_keys: dict[str, bytes] = {}
    for ep in endpoints:
        credential, psk = store.issue(ep, "server", now=T0, tenant_id="default")
        server_keys[credential.identity] = bytes(psk)
        keys.add(psk, f"server PSK of {ep!r}")
    replaced_identity = store.by_endpoint(endpoints[0], "server", tenant_id="default").identity
    credential, psk = store.replace(endpoints[0], "server", now=T0 + 1, tenant_id="default")
    server_keys[credential.identity] = bytes(psk)
    keys.add(psk, f"new server PSK of {endpoints[0]!r}")
    del server_keys[replaced_identity]
    assert len(keys) == 2 * COUNT + 1

    kek_in_use = kek if kek_source == "environment" else key_file.read_bytes()
    kek_set = SecretSet()
    kek_set.add(kek_in_use, "the vault's key-encryption key")

    def assert_nothing_in_the_clear(files: dict[str, bytes]) -> None:
        assert DB_FILENAME in files, sorted(files)
        findings = [f for name, blob in files.items() for f in keys.scan_bytes(blob, name)]
        findings += [f for name, blob in files.items() for f in kek_set.scan_bytes(blob, name)]  # no key here
        assert findings == [], describe(findings)

    try:
        assert_nothing_in_the_clear(files_of(data_dir))  # while the database is open (-wal and -shm hold pages)
    finally:
        db.close()
    assert_nothing_in_the_clear(files_of(data_dir))  # and once it is closed (WAL checkpointed)

    assert stat.S_IMODE((data_dir / DB_FILENAME).stat().st_mode) == 0o600
    if kek_source == "key file":
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
        assert not (data_dir / "vault.key").exists()
    else:
        assert not list(tmp_path.rglob("vault.key")), "a key file was created although $SCRATCH_VAULT_KEY was set"

    # the keys are really there, sealed: the raw rows hold one sealed blob per active credential ...
    with sqlite3.connect(data_dir / DB_FILENAME) as conn:
        rows = conn.execute("SELECT identity, kind, revoked, sealed_psk FROM credential").fetchall()
    assert len(rows) == 2 * COUNT + 1
    for identity, _kind, revoked, sealed in rows:
        if identity == replaced_identity:
            assert revoked and sealed is None
        else:
            assert not revoked and sealed is not None and vault.is_sealed_here(sealed)
    # ... which a store opened afresh with the same vault opens back into the very keys handed out
    with Database.for_data_dir(data_dir) as again:
        reopened = SqlCredentialStore(again, Vault.open(key_file, environ=env))
        assert reopened.load() == 2 * COUNT
        by_endpoint = {c.endpoint: c.identity for c in reopened.list(tenant_id=None) if c.kind.value == "bootstrap"}
        for key, label in bootstrap_keys:
            endpoint = label.split("'")[1]
            assert hmac.compare_digest(bytes(reopened.psk_for(by_endpoint[endpoint]) or b""), key), label
        for identity, key in server_keys.items():
            assert hmac.compare_digest(bytes(reopened.psk_for(identity) or b""), key), identity
        assert reopened.psk_for(replaced_identity) is None

    # and the search would have seen them: the manufacturing file (keys in the clear on purpose) is full of them
    in_file = keys.scan_file(out)
    assert len(in_file) == COUNT and {f.encoding for f in in_file} == {"hex (lowercase)"}


def test_factory_list_prints_no_key(tmp_path: Path) -> None:
    data_dir, out = tmp_path / "data", tmp_path / "line.json"
    r = scratch("factory", "provision", "--count", str(COUNT), "--prefix", "dev-", "--out", str(out),
                "--format", "json", "--data-dir", str(data_dir))
    assert r.returncode == 0, show(r)
    keys = SecretSet()
    keys.update(manufacturing_keys(out) or [])
    with Database.for_data_dir(data_dir) as db:
        store = SqlCredentialStore(db, Vault.open(vault_key_location(data_dir).path, environ={}))
        for i in range(1, 6):
            issued = store.issue(f"dev-{i:04d}", "server", now=T0, tenant_id="default")
            keys.add(issued.psk, f"server PSK of dev-{i:04d}")
    assert len(keys) == COUNT + 5

    table = scratch("factory", "list", "--data-dir", str(data_dir))
    as_json = scratch("factory", "list", "--json", "--data-dir", str(data_dir))
    assert table.returncode == 0 and "dev-0001" in table.stdout, show(table)
    assert as_json.returncode == 0, show(as_json)
    assert len(json.loads(as_json.stdout)) == COUNT + 5
    findings = [f for r in (r, table, as_json) for name, text in (("stdout", r.stdout), ("stderr", r.stderr))
                for f in keys.scan_text(text, f"scratch {' '.join(r.args[3:5])} {name}")]
    assert findings == [], describe(findings)

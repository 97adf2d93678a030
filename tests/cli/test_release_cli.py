"""``scratch release`` through typer's CliRunner on a fresh data directory (real SQLite, a real vault key file):
keys made and exported, releases signed and approved, checked as devices would with the exported public keys;
bad input exits 2 with one line on stderr and no traceback."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from bootstrap.vault import Vault
from firmware_object.errors import SignatureError
from firmware_object.suit import key_id, load_public_key, verify_envelope
from firmware_object.suit.components import verify_system_envelope
from lwm2m_server.cli.release import release_app
from lwm2m_server.fota.releases import Releases, SigningKeys, class_uuid, vendor_uuid
from lwm2m_server.storage.database import Database

IMAGE = bytes(range(256)) * 64
MAX = 64 << 20


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def scratch(data: Path, *args: str) -> Result:
    runner = CliRunner()
    return runner.invoke(release_app, [*args, "--data-dir", str(data)], env={"SCRATCH_VAULT_KEY": "",
                                                                           "COLUMNS": "200"})


def ok(r: Result) -> Result:
    assert r.exit_code == 0, f"exit {r.exit_code}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}\n{r.exception!r}"
    return r


def bad(r: Result, needle: str, code: int = 2) -> None:
    shown = f"exit {r.exit_code}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}"
    assert r.exit_code == code, shown
    assert needle in r.stderr, shown
    assert len(r.stderr.strip().splitlines()) == 1, shown
    assert "Traceback" not in r.stdout + r.stderr, shown


def image_file(tmp_path: Path, name: str, content: bytes = IMAGE) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def stored_package(data: Path, release_id: str, approved_by: str | None = None) -> bytes:
    with Database.for_data_dir(data) as database:
        keys = SigningKeys.over(database, Vault.generate())  # reading packages opens no private key
        return Releases.over(database, data, keys).package(release_id, tenant_id="default", approved_by=approved_by)


def test_keys_are_created_listed_and_exported_never_the_private_key(tmp_path: Path, data: Path,
                                                                      vault_key_in_tmp_path: Path) -> None:
    created = ok(scratch(data, "key", "create", "oem"))
    kid = re.search(r"kid ([0-9a-f]{16})", created.stdout)
    assert kid is not None and "PRIVATE" not in created.stdout + created.stderr
    assert vault_key_in_tmp_path.is_file() and not (data / "vault.key").exists()
    ok(scratch(data, "key", "create", "ops", "--role", "deployment", "--alg", "EdDSA"))
    listed = json.loads(ok(scratch(data, "key", "list", "--json")).stdout)
    assert [(k["name"], k["role"], k["alg"]) for k in listed] == [("oem", "release", "ES256"),
                                                                  ("ops", "deployment", "EdDSA")]
    assert all("public_pem" not in k and "PRIVATE" not in json.dumps(k) for k in listed)
    assert "oem" in ok(scratch(data, "key", "list")).stdout

    pem = ok(scratch(data, "key", "export", "oem")).stdout
    assert pem.startswith("-----BEGIN PUBLIC KEY-----") and "PRIVATE" not in pem
    assert key_id(load_public_key(pem.encode())).hex() == kid.group(1)
    out = tmp_path / "oem.pub"
    ok(scratch(data, "key", "export", "oem", "--out", str(out)))
    assert out.read_text() == pem
    bad(scratch(data, "key", "export", "oem", "--out", str(out)), "exists")
    bad(scratch(data, "key", "export", "nope"), "no signing key 'nope'")
    bad(scratch(data, "key", "create", "oem"), "exists")
    bad(scratch(data, "key", "create", "x", "--role", "admin"), "--role")
    bad(scratch(data, "key", "create", "x", "--alg", "RS256"), "--alg")
    bad(scratch(data, "key", "create", "bad name"), "key name")


def test_release_create_sign_show_and_approve(tmp_path: Path, data: Path) -> None:
    fw = image_file(tmp_path, "fw.bin")
    created = ok(scratch(data, "create", str(fw), "--vendor", "acme.example", "--class", "sensor",
                         "--version", "2.0.0"))
    release_id = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"rel-[a-z2-7]{10}", release_id)
    second = ok(scratch(data, "create", str(fw), "--vendor", "acme.example", "--class", "sensor",
                        "--version", "2.0.1")).stdout.strip().splitlines()[-1]
    other = ok(scratch(data, "create", str(fw), "--vendor", "acme.example", "--class", "gateway",
                       "--version", "1")).stdout.strip().splitlines()[-1]

    shown = json.loads(ok(scratch(data, "show", release_id, "--json")).stdout)
    vid = vendor_uuid("acme.example")
    assert shown["vendor_id"] == str(vid) and shown["class_id"] == str(class_uuid(vid, "sensor"))
    assert shown["sequence_number"] == 1 and shown["key"] == "release" and shown["approvals"] == []
    listed = json.loads(ok(scratch(data, "list", "--json")).stdout)
    assert {r["id"]: r["sequence_number"] for r in listed} == {release_id: 1, second: 2, other: 1}
    assert release_id in ok(scratch(data, "list")).stdout
    assert "2.0.0" in ok(scratch(data, "show", release_id)).stdout

    anchor = load_public_key(ok(scratch(data, "key", "export", "release")).stdout.encode())
    package = stored_package(data, release_id)
    verified = verify_envelope(package, trust_anchors=[anchor], max_size=MAX, vendor_id=vid,
                               class_id=class_uuid(vid, "sensor"))
    assert (verified.sequence_number, verified.version, verified.payload) == (1, "2.0.0", IMAGE)

    ok(scratch(data, "key", "create", "ops", "--role", "deployment"))
    bad(scratch(data, "approve", release_id, "--key", "release"), "role")
    bad(scratch(data, "approve", release_id, "--key", "nope"), "no signing key")
    bad(scratch(data, "approve", "rel-aaaaaaaaaa", "--key", "ops"), "no release")
    assert "approved by ops" in ok(scratch(data, "approve", release_id, "--key", "ops")).stdout
    ok(scratch(data, "approve", release_id, "--key", "ops"))  # idempotent
    shown = json.loads(ok(scratch(data, "show", release_id, "--json")).stdout)
    assert [a["key"] for a in shown["approvals"]] == ["ops"]
    ops = load_public_key(ok(scratch(data, "key", "export", "ops")).stdout.encode())
    verify_envelope(stored_package(data, release_id, "ops"), trust_anchors=[anchor, ops], max_size=MAX)
    with pytest.raises(SignatureError):
        verify_envelope(package, trust_anchors=[anchor, ops], max_size=MAX)


def test_named_key_and_opaque_format(tmp_path: Path, data: Path) -> None:
    fw = image_file(tmp_path, "fw.bin")
    ok(scratch(data, "key", "create", "oem2", "--alg", "EdDSA"))
    rid = ok(scratch(data, "create", str(fw), "--vendor", "v.example", "--class", "c", "--version", "1",
                     "--key", "oem2")).stdout.strip().splitlines()[-1]
    anchor = load_public_key(ok(scratch(data, "key", "export", "oem2")).stdout.encode())
    verify_envelope(stored_package(data, rid), trust_anchors=[anchor], max_size=MAX)

    opaque = ok(scratch(data, "create", str(fw), "--vendor", "v.example", "--class", "meter", "--version", "7",
                        "--format", "opaque")).stdout.strip().splitlines()[-1]
    assert stored_package(data, opaque) == IMAGE
    ok(scratch(data, "key", "create", "ops", "--role", "deployment"))
    bad(scratch(data, "approve", opaque, "--key", "ops"), "opaque")


def test_big_image_shows_progress_and_still_ends_with_the_id(tmp_path: Path, data: Path) -> None:
    big = image_file(tmp_path, "big.bin", bytes(9 << 20))
    r = ok(scratch(data, "create", str(big), "--vendor", "v.example", "--class", "c", "--version", "1"))
    rid = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"rel-[a-z2-7]{10}", rid)
    assert json.loads(ok(scratch(data, "show", rid, "--json")).stdout)["images"][0]["size"] == 9 << 20


def test_bad_release_input_exits_2(tmp_path: Path, data: Path) -> None:
    fw = image_file(tmp_path, "fw.bin")
    empty = image_file(tmp_path, "empty.bin", b"")
    huge = tmp_path / "huge.bin"
    with huge.open("wb") as f:
        f.truncate(MAX + 1)  # sparse: costs no disk
    common = ["--vendor", "v.example", "--class", "c", "--version", "1"]
    bad(scratch(data, "create", str(tmp_path / "missing.bin"), *common), "no such file")
    bad(scratch(data, "create", str(empty), *common), "is empty")
    bad(scratch(data, "create", str(huge), *common), "at most")
    bad(scratch(data, "create", str(fw), *common, "--format", "zip"), "--format")
    bad(scratch(data, "create", str(fw), *common, "--key", "nope"), "no signing key")
    bad(scratch(data, "create", str(fw), *common, "--format", "opaque", "--key", "release"), "not signed")
    bad(scratch(data, "create", str(fw), "--vendor", "v", "--class", "c", "--version", ""), "version")
    ok(scratch(data, "key", "create", "ops", "--role", "deployment"))
    bad(scratch(data, "create", str(fw), *common, "--key", "ops"), "role")
    bad(scratch(data, "show", "rel-aaaaaaaaaa"), "no release")
    bad(scratch(data, "show", "not-an-id"), "no release")
    assert json.loads(ok(scratch(data, "list", "--json")).stdout) == []


def test_class_policy(data: Path, vault_key_in_tmp_path: Path) -> None:
    r = ok(scratch(data, "class", "set", "sensor", "--vendor", "acme.example", "--require-approval"))
    assert "requires" in r.stdout
    listed = json.loads(ok(scratch(data, "class", "list", "--json")).stdout)
    assert [(p["class_name"], p["require_approval"]) for p in listed] == [("sensor", True)]
    ok(scratch(data, "class", "set", "sensor", "--vendor", "acme.example", "--no-require-approval"))
    listed = json.loads(ok(scratch(data, "class", "list", "--json")).stdout)
    assert [(p["class_name"], p["require_approval"]) for p in listed] == [("sensor", False)]
    assert not (data / "vault.key").exists() and not vault_key_in_tmp_path.exists()  # nothing sealed: no key made
    r = scratch(data, "class", "set", "sensor", "--vendor", "acme.example")
    assert r.exit_code == 2  # the flag is required (typer's usage error)


def test_system_release_delta_and_show(tmp_path: Path, data: Path) -> None:
    app_v1 = random.Random(5).randbytes(256 << 10)
    app_v2 = bytearray(app_v1)
    app_v2[1000:3000] = bytes(2000)  # a small change
    radio = image_file(tmp_path, "radio.bin", random.Random(6).randbytes(32 << 10))
    config = image_file(tmp_path, "config.json", b'{"interval": 60}\n')
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    old_app, new_app = image_file(old_dir, "app.bin", app_v1), image_file(new_dir, "app.bin", bytes(app_v2))
    common = ["--system", "--vendor", "acme.example", "--class", "sensor"]
    base = ok(scratch(data, "create", *common, "--version", "1.0", f"app={old_app}", f"radio@7.0={radio}",
                      f"config={config}:data", "--after", "config=app,radio")).stdout.strip().splitlines()[-1]
    made = ok(scratch(data, "create", *common, "--version", "1.1", f"app={new_app}", f"radio@7.0={radio}",
                      f"config={config}:data", "--after", "config=app", "--after", "config=radio"))
    assert "system of 3 component(s) (app, radio, config)" in made.stdout
    release = made.stdout.strip().splitlines()[-1]

    delta = ok(scratch(data, "delta", release, "--from", base))
    saving = re.search(r"(\d+) bytes, full package (\d+) bytes, saving (\d+\.\d) %", delta.stdout)
    assert saving is not None and float(saving.group(3)) >= 80, delta.stdout
    assert ok(scratch(data, "delta", release, "--from", base)).stdout == delta.stdout  # made once
    again = json.loads(ok(scratch(data, "delta", release, "--from", base, "--json")).stdout)
    assert (again["package_size"], again["full_package_size"]) == (int(saving.group(1)), int(saving.group(2)))

    shown = ok(scratch(data, "show", release)).stdout
    for needle in ("components", "radio", "7.0", "data", "app, radio", "deltas", base, "1.0", saving.group(3)):
        assert needle in shown, (needle, shown)
    as_json = json.loads(ok(scratch(data, "show", release, "--json")).stdout)
    assert [(c["name"], c["kind"], c["version"], c["after"]) for c in as_json["images"]] == [
        ("app", "image", "1.1", []), ("radio", "image", "7.0", []), ("config", "data", "1.1", ["app", "radio"])]
    assert [d["base_release"] for d in as_json["deltas"]] == [base]

    anchor = load_public_key(ok(scratch(data, "key", "export", "release")).stdout.encode())
    verified = verify_system_envelope(stored_package(data, release), trust_anchors=[anchor], max_size=MAX)
    assert [c.name for c in verified.components] == ["app", "radio", "config"]

    bad(scratch(data, "delta", base, "--from", release), "not older")
    bad(scratch(data, "delta", release, "--from", "rel-aaaaaaaaaa"), "no release")
    bad(scratch(data, "create", *common, "--version", "2", "App=x.bin"), "no such file")
    bad(scratch(data, "create", *common, "--version", "2", f"App={radio}"), "component name 'App'")
    bad(scratch(data, "create", *common, "--version", "2", str(radio)), "NAME[@VERSION]=FILE")
    bad(scratch(data, "create", *common, "--version", "2", f"radio={radio}", f"app={radio}", "--after",
                "radio=app"), "not an earlier component")
    bad(scratch(data, "create", *common, "--version", "2", f"app={radio}", "--after", "nope=app"), "--after")
    bad(scratch(data, "create", str(radio), "--vendor", "v", "--class", "c", "--version", "1", "--after", "a=b"),
        "only with --system")

"""``scratch release key add --public`` and ``scratch release import`` through typer's CliRunner on a fresh data
directory (real SQLite, real files): the OEM makes its key and signs on its own premises with ``scratch firmware
keygen``/``sign``; the operator's data directory only ever holds the OEM's public key. Refusals exit 2 with one line
on stderr naming the check that failed."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner, Result

from bootstrap.vault import Vault
from firmware_object.suit import key_id, load_private_key, load_public_key, verify_envelope
from lwm2m_server.cli.firmware import firmware_app
from lwm2m_server.cli.release import release_app
from lwm2m_server.cli.tenant import tenant_app
from lwm2m_server.fota.releases import Releases, SigningKeys
from lwm2m_server.storage.database import DB_FILENAME, Database

IMAGE = bytes(range(256)) * 64
MAX = 64 << 20
VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.uuid5(VENDOR, "sensor")
ENV = {"SCRATCH_VAULT_KEY": "", "COLUMNS": "200"}


def release(data: Path, *args: str) -> Result:
    return CliRunner().invoke(release_app, [*args, "--data-dir", str(data)], env=ENV)


def tenant(data: Path, *args: str) -> Result:
    return CliRunner().invoke(tenant_app, [*args, "--data-dir", str(data)], env=ENV)


def partners(data: Path, *, grant: bool = True) -> None:
    """The OEM ``acme`` and the operator ``op``; with ``grant``, acme lets op deploy its class ``sensor``."""
    ok(tenant(data, "create", "acme", "--kind", "oem"))
    ok(tenant(data, "create", "op", "--kind", "operator"))
    if grant:
        ok(tenant(data, "grant", "acme", "op", "--class", "sensor"))


def firmware(*args: str) -> Result:
    return CliRunner().invoke(firmware_app, list(args), env=ENV)


def ok(r: Result) -> Result:
    assert r.exit_code == 0, f"exit {r.exit_code}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}\n{r.exception!r}"
    return r


def bad(r: Result, needle: str, code: int = 2) -> None:
    shown = f"exit {r.exit_code}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}"
    assert r.exit_code == code, shown
    assert needle in r.stderr, shown
    assert len(r.stderr.strip().splitlines()) == 1, shown
    assert "Traceback" not in r.stdout + r.stderr, shown


def sign(oem_dir: Path, key: Path, *, seq: int, version: str, out: str, image: bytes = IMAGE,
         device_class: uuid.UUID = CLASS) -> Path:
    """The OEM signs an image on its own premises."""
    fw = oem_dir / f"{out}.bin"
    fw.write_bytes(image)
    package = oem_dir / out
    ok(firmware("sign", str(fw), "--key", str(key), "--vendor", str(VENDOR), "--class", str(device_class),
                "--version", version, "--seq", str(seq), "--out", str(package)))
    return package


def stored_package(data: Path, release_id: str, tenant: str, approved_by: str | None = None) -> bytes:
    with Database.for_data_dir(data) as database:
        keys = SigningKeys.over(database, Vault.generate())  # reading packages opens no private key
        return Releases.over(database, data, keys).package(release_id, tenant_id=tenant,
                                                                               approved_by=approved_by)


@pytest.fixture
def oem_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "oem-premises"
    folder.mkdir()
    return folder


@pytest.fixture
def oem_key(oem_dir: Path) -> Path:
    key = oem_dir / "release.pem"
    ok(firmware("keygen", "--out", str(key)))
    return key


def test_oem_signs_offline_operator_imports_and_countersigns(tmp_path: Path, oem_dir: Path, oem_key: Path) -> None:
    data = tmp_path / "operator-data"
    pub = oem_key.with_name(oem_key.name + ".pub")
    added = ok(release(data, "key", "add", "acme-release", "--public", str(pub), "--tenant", "acme"))
    kid = key_id(load_public_key(pub.read_bytes())).hex()
    assert f"kid {kid}" in added.stdout and "public-only" in added.stdout
    listed = json.loads(ok(release(data, "key", "list", "--tenant", "acme", "--json")).stdout)
    assert [(k["name"], k["role"], k["has_private"]) for k in listed] == [("acme-release", "release", False)]
    assert "public-only" in ok(release(data, "key", "list", "--tenant", "acme")).stdout

    package = sign(oem_dir, oem_key, seq=3, version="2.0.0", out="fw-2.0.0.suit")
    partners(data, grant=False)
    bad(release(data, "import", str(package), "--tenant", "op", "--key", "acme-release", "--origin", "acme"),
        "no release key 'acme-release' of a tenant that granted 'op'")
    ok(tenant(data, "grant", "acme", "op", "--class", "thermostat"))  # another class: still refused
    bad(release(data, "import", str(package), "--tenant", "op", "--key", "acme-release", "--origin", "acme"),
        "holds no grant of 'acme' for device class", code=1)
    assert json.loads(ok(release(data, "list", "--tenant", "op", "--json")).stdout) == []
    ok(tenant(data, "grant", "acme", "op", "--class", "sensor"))
    imported = ok(release(data, "import", str(package), "--tenant", "op", "--key", "acme-release"))  # found by grant
    rid = imported.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"rel-[a-z2-7]{10}", rid)
    shown = json.loads(ok(release(data, "show", rid, "--tenant", "op", "--json")).stdout)
    assert (shown["vendor_id"], shown["class_id"], shown["sequence_number"], shown["version"]) == (
        str(VENDOR), str(CLASS), 3, "2.0.0")
    assert (shown["key"], shown["signed_by"], shown["origin_tenant"], shown["package_format"]) == (
        "acme-release", kid, "acme", "suit")
    assert stored_package(data, rid, "op") == package.read_bytes()  # exactly as the OEM signed it
    bad(release(data, "show", rid, "--tenant", "acme"), "no release")

    # the operator's deployment key (vault-held) countersigns: devices that trust both keys accept the package
    ok(release(data, "key", "create", "ops", "--role", "deployment", "--tenant", "op"))
    ok(release(data, "approve", rid, "--key", "ops", "--tenant", "op"))
    ops = load_public_key(ok(release(data, "key", "export", "ops", "--tenant", "op")).stdout.encode())
    oem = load_public_key(pub.read_bytes())
    verified = verify_envelope(stored_package(data, rid, "op", "ops"), trust_anchors=[oem, ops], max_size=MAX,
                               vendor_id=VENDOR, class_id=CLASS)
    assert (verified.sequence_number, verified.payload) == (3, IMAGE)

    nxt = sign(oem_dir, oem_key, seq=4, version="2.1.0", out="fw-2.1.0.suit")
    as_json = json.loads(ok(release(data, "import", str(nxt), "--tenant", "op", "--key", "acme-release",
                                    "--origin", "acme", "--json")).stdout)
    assert (as_json["sequence_number"], as_json["version"]) == (4, "2.1.0")

    # the operator's data never held the OEM's private key
    private = load_private_key(oem_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    secret = private.private_numbers().private_value.to_bytes(32, "big")
    raw = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith(DB_FILENAME))
    assert secret not in raw and oem_key.read_bytes() not in raw


def test_import_refuses_other_signers_tampering_and_rollback(tmp_path: Path, oem_dir: Path, oem_key: Path) -> None:
    data = tmp_path / "operator-data"
    ok(release(data, "key", "add", "acme-release", "--public", str(oem_key) + ".pub", "--tenant", "acme"))
    partners(data)
    imp = ("--tenant", "op", "--key", "acme-release", "--origin", "acme")

    rogue_key = oem_dir / "rogue.pem"
    ok(firmware("keygen", "--out", str(rogue_key), "--alg", "ed25519"))
    resigned = sign(oem_dir, rogue_key, seq=9, version="6.6.6", out="rogue.suit")
    bad(release(data, "import", str(resigned), *imp), "signature check failed")
    good = sign(oem_dir, oem_key, seq=5, version="3.0.0", out="good.suit")
    tampered = oem_dir / "tampered.suit"
    tampered.write_bytes(good.read_bytes().replace(b"3.0.0", b"3.0.1"))
    bad(release(data, "import", str(tampered), *imp), "manifest digest check failed")
    ok(tenant(data, "create", "op2", "--kind", "operator"))  # no grant: the OEM's key is not even found
    bad(release(data, "import", str(good), "--tenant", "op2", "--key", "acme-release"), "no release key")
    assert json.loads(ok(release(data, "list", "--tenant", "op", "--json")).stdout) == []

    ok(release(data, "import", str(good), *imp))
    older = sign(oem_dir, oem_key, seq=4, version="2.9.0", out="older.suit")
    bad(release(data, "import", str(older), *imp), "sequence number 4 is not above 5")
    bad(release(data, "import", str(good), *imp), "sequence number 5 is not above 5")
    other_class = sign(oem_dir, oem_key, seq=6, version="3.1.0", out="other.suit", device_class=uuid.uuid4())
    bad(release(data, "import", str(good), str(other_class), *imp), "another vendor, class")
    assert len(json.loads(ok(release(data, "list", "--tenant", "op", "--json")).stdout)) == 1
    bad(release(data, "import", str(oem_dir / "missing.suit"), *imp), "no such file")


def test_key_add_refuses_private_keys_and_bad_input(tmp_path: Path, oem_key: Path,
                                                    vault_key_in_tmp_path: Path) -> None:
    data = tmp_path / "operator-data"
    bad(release(data, "key", "add", "k", "--public", str(oem_key)), "private key")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    bad(release(data, "key", "add", "k", "--public", str(garbage)), "not a PEM public key")
    bad(release(data, "key", "add", "k", "--public", str(tmp_path / "none.pem")), "cannot read")
    bad(release(data, "key", "add", "k", "--public", str(oem_key) + ".pub", "--role", "admin"), "--role")
    ok(release(data, "key", "add", "k", "--public", str(oem_key) + ".pub"))
    bad(release(data, "key", "add", "k", "--public", str(oem_key) + ".pub"), "exists")
    assert not vault_key_in_tmp_path.exists()  # a public key needs no vault
    fw = tmp_path / "fw.bin"
    fw.write_bytes(IMAGE)
    bad(release(data, "create", str(fw), "--vendor", "v.example", "--class", "c", "--version", "1", "--key", "k"),
        "public-only")

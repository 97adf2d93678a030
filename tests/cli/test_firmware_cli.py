"""``scratch firmware`` as an operator runs it: keys and SUIT packages made by the CLI, then updates delivered by a
real ``scratch server`` process to real ``scratch sim`` devices in other processes (loopback, ephemeral ports).

Every CLI command is a subprocess with a time limit; the long-running processes are stopped in fixture teardown,
also when a test fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.test_cli import SCRATCH, stop

VENDOR = str(uuid.uuid4())
CLASS = str(uuid.uuid4())
SEQ = 5
VERSION = "2.0.0"
OLD_VERSION = "1.0.0"  # what `scratch sim` devices run by default


# ---------------------------------------------------------------------------------------------- helpers


# Each CLI command is a fresh interpreter; cache the bytecode outside the repository so they start faster.
PYCACHE = Path(tempfile.gettempdir()) / "scratch-cli-test-pycache"


def _env(data_dir: Path) -> dict[str, str]:
    drop = ("SCRATCH_API", "SCRATCH_API_TOKEN", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "SCRATCH_DATA_DIR": str(data_dir), "COLUMNS": "200", "PYTHONUNBUFFERED": "1",
            "PYTHONPYCACHEPREFIX": str(PYCACHE)}


def run_many(*commands: Sequence[str], data_dir: Path, timeout: float = 45) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``scratch`` commands at once (they are independent); each is killed if time runs out."""
    deadline = time.monotonic() + timeout
    procs = [subprocess.Popen([*SCRATCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(data_dir)) for args in commands]
    results = []
    try:
        for args, p in zip(commands, procs, strict=True):
            out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(list(args), p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def run(*args: str, data_dir: Path, timeout: float = 45) -> subprocess.CompletedProcess[str]:
    return run_many(args, data_dir=data_dir, timeout=timeout)[0]


def show(r: subprocess.CompletedProcess[str]) -> str:
    return f"$ scratch {' '.join(r.args)}\nexit {r.returncode}\n--- stdout\n{r.stdout}--- stderr\n{r.stderr}"


def assert_one_line_error(r: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert r.returncode == code, show(r)
    assert needle in r.stderr, show(r)
    assert "Traceback" not in r.stderr + r.stdout, show(r)
    assert len(r.stderr.strip().splitlines()) == 1, show(r)


def pem_body(path: Path) -> list[str]:
    """The base64 lines of a PEM file (what must never show up in any output)."""
    return [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]


def assert_no_secret(r: subprocess.CompletedProcess[str], private_key: Path) -> None:
    output = r.stdout + r.stderr
    assert "PRIVATE KEY" not in output, show(r)
    for line in pem_body(private_key):
        assert line not in output, f"a line of {private_key} was printed\n{show(r)}"


class Proc:
    """A long-running ``scratch`` process whose merged output a thread keeps reading (so it never blocks)."""

    def __init__(self, args: Sequence[str], data_dir: Path) -> None:
        self.args = list(args)
        self.popen = subprocess.Popen([*SCRATCH, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=_env(data_dir))
        self.lines: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for line in self.lines if (m := re.search(pattern, line))]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    raise AssertionError(f"{pattern!r} not printed {count} time(s) by scratch {' '.join(self.args)}"
                                         f"\n{self.output()}")
                self._cond.wait(left)

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        stop(self.popen)
        self._reader.join(timeout=5)


# ---------------------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Keys:
    """Key pairs made by ``scratch firmware keygen``: oem (the default alg, es256), operator (ed25519), stranger
    (es256). ``kid`` maps each name to the key id keygen printed, ``keygen`` to its completed run."""

    dir: Path
    kid: dict[str, str]
    keygen: dict[str, subprocess.CompletedProcess[str]]

    @property
    def oem(self) -> Path:
        return self.dir / "oem"

    @property
    def operator(self) -> Path:
        return self.dir / "operator"

    @property
    def stranger(self) -> Path:
        return self.dir / "stranger"

    @staticmethod
    def pub(private: Path) -> Path:
        return private.with_name(private.name + ".pub")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    names = ("oem", "operator", "stranger")
    results = run_many(["firmware", "keygen", "--out", str(d / "oem")],  # no --alg: es256
                       ["firmware", "keygen", "--out", str(d / "operator"), "--alg", "ed25519"],
                       ["firmware", "keygen", "--out", str(d / "stranger"), "--alg", "es256"], data_dir=d)
    kid = {}
    for name, r in zip(names, results, strict=True):
        assert r.returncode == 0, show(r)
        kid[name] = re.search(r"key ([0-9a-f]{16}):", r.stdout).group(1)
    return Keys(d, kid, dict(zip(names, results, strict=True)))


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "app.bin"
    path.write_bytes(os.urandom(5000))  # five 1 KiB blocks
    return path


def sign(image: Path, key: Path, out: Path, *, seq: int = SEQ, version: str = VERSION, vendor: str = VENDOR,
         device_class: str = CLASS) -> subprocess.CompletedProcess[str]:
    return run("firmware", "sign", str(image), "--key", str(key), "--vendor", vendor, "--class", device_class,
               "--version", version, "--seq", str(seq), "--out", str(out), data_dir=out.parent)


@pytest.fixture(scope="module")
def package(keys: Keys, image: Path) -> Path:
    """OEM-signed package of ``image``: sequence SEQ, version VERSION, for VENDOR/CLASS."""
    out = keys.dir / "release.suit"
    r = sign(image, keys.oem, out)
    assert r.returncode == 0, show(r)
    assert out.is_file()
    assert f"version {VERSION}" in r.stdout and f"sequence {SEQ}" in r.stdout, show(r)
    assert_no_secret(r, keys.oem)
    return out


@dataclass
class Fleet:
    data_dir: Path
    server: Proc
    sims: list[Proc]

    def logs(self) -> str:
        return "\n".join(f"=== scratch {' '.join(p.args)}\n{p.output()}" for p in [self.server, *self.sims])

    def run(self, *args: str, timeout: float = 45) -> subprocess.CompletedProcess[str]:
        return run(*args, data_dir=self.data_dir, timeout=timeout)

    def explain(self, r: subprocess.CompletedProcess[str]) -> str:
        return f"{show(r)}\n{self.logs()}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, keys: Keys) -> Iterator[Fleet]:
    """A server; devices sim-0..sim-2 that trust the OEM key and take VENDOR/CLASS packages; fb-0 like them but
    every image it installs fails its health check."""
    data_dir = tmp_path_factory.mktemp("scratch-fw-data")
    server = Proc(["server", "--insecure", "--coap", "127.0.0.1:0", "--coaps", "127.0.0.1:0", "--api", "127.0.0.1:0"],
                  data_dir)
    sims: list[Proc] = []
    try:
        uri = server.wait_for(r"LwM2M server on coaps://\S+ \(DTLS-PSK\) and (coap://\S+) \(plain")[0].group(1)
        common = ["--server", uri, "--trust", str(Keys.pub(keys.oem)), "--vendor", VENDOR, "--class", CLASS]
        sims.append(Proc(["sim", *common, "--count", "3", "--prefix", "sim-"], data_dir))
        sims.append(Proc(["sim", *common, "--count", "1", "--prefix", "fb-", "--fail-boot"], data_dir))
        sims[0].wait_for(r"^sim-\d: registered", count=3)
        sims[1].wait_for(r"^fb-0: registered")
        yield Fleet(data_dir, server, sims)
    finally:
        for p in sims:
            p.stop()
        server.stop()


def read_version(fleet: Fleet, endpoint: str) -> str:
    r = fleet.run("device", "read", endpoint, "/3/0/3", "--json")
    assert r.returncode == 0, fleet.explain(r)
    return json.loads(r.stdout)["content"]["value"]


def update(fleet: Fleet, endpoint: str, package: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return fleet.run("firmware", "update", endpoint, "--package", str(package), "--timeout", "30", *options)


# ---------------------------------------------------------------------------------------------- keygen


@pytest.mark.parametrize("name,alg", [("oem", "es256"), ("operator", "ed25519")])
def test_keygen_writes_a_private_and_a_public_pem(keys, name, alg):
    r, key = keys.keygen[name], keys.dir / name
    pub = Keys.pub(key)
    assert key.stat().st_mode & 0o777 == 0o600
    assert pub.stat().st_mode & 0o400 and not pub.stat().st_mode & 0o022  # public: readable, not writable by others
    private_text, public_text = key.read_text(), pub.read_text()
    assert private_text.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert private_text.rstrip().endswith("-----END PRIVATE KEY-----")
    assert public_text.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert public_text.rstrip().endswith("-----END PUBLIC KEY-----")
    assert r.stdout.startswith(f"{alg} key {keys.kid[name]}:"), show(r)
    assert str(key) in r.stdout and str(pub) in r.stdout, show(r)
    assert r.stderr == ""
    assert_no_secret(r, key)


def test_keys_of_both_algorithms_sign(keys, image, tmp_path):
    """The ed25519 key signs on its own (EdDSA, under the key id keygen printed); the es256 signature is checked in
    test_inspect_json_shows_the_manifest, both together in test_authorise_adds_the_operator_signature."""
    out = tmp_path / "p.suit"
    r = sign(image, keys.operator, out)
    assert r.returncode == 0, show(r)
    assert_no_secret(r, keys.operator)
    r = run("firmware", "inspect", str(out), "--trust", str(Keys.pub(keys.operator)), "--json", data_dir=tmp_path)
    assert r.returncode == 0, show(r)
    doc = json.loads(r.stdout)
    assert doc["manifest"]["signatures"] == [{"cose": "COSE_Sign1", "alg": "EdDSA", "kid": keys.kid["operator"]}]
    assert doc["verification"] == {"verified": True, "trusted_keys": [keys.kid["operator"]]}


def test_keygen_refuses_to_overwrite_a_key(keys, tmp_path):
    pair, alone, lone = tmp_path / "pair", tmp_path / "alone", tmp_path / "lone"
    shutil.copy2(keys.oem, pair)  # a whole key pair
    shutil.copy2(Keys.pub(keys.oem), Keys.pub(pair))
    shutil.copy2(keys.operator, alone)  # only a private key
    Keys.pub(lone).write_text("not mine to overwrite\n")  # only a public key
    files = [pair, Keys.pub(pair), alone, Keys.pub(lone)]
    before = {p: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns) for p in files}

    both, private_only, public_only = run_many(
        ["firmware", "keygen", "--out", str(pair), "--alg", "ed25519"],
        ["firmware", "keygen", "--out", str(alone)],
        ["firmware", "keygen", "--out", str(lone)], data_dir=tmp_path)
    for r, existing in ((both, pair), (private_only, alone), (public_only, lone)):
        assert_one_line_error(r, 2, "exists; not overwriting a key")
        assert str(existing) in r.stderr, show(r)
        assert r.stdout == ""
    assert_no_secret(both, pair)
    assert_no_secret(private_only, alone)
    assert {p: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns) for p in files} == before
    assert not Keys.pub(alone).exists()  # nothing half-written either
    assert not lone.exists()


# ---------------------------------------------------------------------------------------------- sign and inspect


def test_inspect_json_shows_the_manifest(package, image, keys):
    r = run("firmware", "inspect", str(package), "--json", data_dir=keys.dir)
    assert r.returncode == 0, show(r)
    doc = json.loads(r.stdout)
    assert doc["verification"] is None  # no --trust: nothing checked, nothing claimed
    env = doc["manifest"]
    assert env["size"] == package.stat().st_size
    assert env["manifest_digest"]["matches"] is True
    assert env["signatures"] == [{"cose": "COSE_Sign1", "alg": "ES256", "kid": keys.kid["oem"]}]
    m = env["manifest"]
    assert m["sequence_number"] == SEQ
    assert m["vendor_ids"] == [VENDOR] and m["checked_vendor_ids"] == [VENDOR]
    assert m["class_ids"] == [CLASS] and m["checked_class_ids"] == [CLASS]
    assert m["version"] == VERSION
    data = image.read_bytes()
    [component] = m["components"]
    [img] = component["images"]
    assert img["size"] == len(data)
    assert img["alg"] == "sha-256" and img["digest"] == hashlib.sha256(data).hexdigest()
    assert env["integrated_payloads"] == {"#firmware": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}


def test_inspect_trust_checks_the_signer(package, keys):
    right, wrong, wrong_json = run_many(
        ["firmware", "inspect", str(package), "--trust", str(Keys.pub(keys.oem))],
        ["firmware", "inspect", str(package), "--trust", str(Keys.pub(keys.stranger))],
        ["firmware", "inspect", str(package), "--trust", str(Keys.pub(keys.stranger)), "--json"],
        data_dir=keys.dir)
    assert right.returncode == 0, show(right)
    assert f"signatures verified by {keys.kid['oem']}" in right.stdout, show(right)
    assert VERSION in right.stdout

    assert wrong.returncode == 1, show(wrong)
    message = f"no valid signature by trust anchor {keys.kid['stranger']}"
    assert "verification failed" in wrong.stdout + wrong.stderr and message in wrong.stdout + wrong.stderr, show(wrong)
    assert "signatures verified" not in wrong.stdout
    assert "Traceback" not in wrong.stderr

    assert wrong_json.returncode == 1, show(wrong_json)
    verdict = json.loads(wrong_json.stdout)["verification"]
    assert verdict["verified"] is False and verdict["error"] == "SignatureError"
    assert message in verdict["message"] and verdict["update_result"] == 5


def test_a_tampered_manifest_fails_inspect_trust(package, keys, tmp_path):
    data = bytearray(package.read_bytes())
    vendor = uuid.UUID(VENDOR).bytes  # lives in the manifest's common parameters, once
    assert data.count(vendor) == 1
    data[data.index(vendor) + 7] ^= 0x01
    tampered = tmp_path / "tampered.suit"
    tampered.write_bytes(bytes(data))
    trust = ["--trust", str(Keys.pub(keys.oem))]
    text, as_json, untrusted = run_many(["firmware", "inspect", str(tampered), *trust],
                                        ["firmware", "inspect", str(tampered), *trust, "--json"],
                                        ["firmware", "inspect", str(tampered), "--json"], data_dir=tmp_path)
    assert text.returncode == 1, show(text)
    assert "verification failed" in text.stdout + text.stderr, show(text)
    assert "the manifest does not match the signed digest" in text.stdout + text.stderr, show(text)
    assert "signatures verified" not in text.stdout
    assert as_json.returncode == 1, show(as_json)
    doc = json.loads(as_json.stdout)
    assert doc["manifest"]["manifest_digest"]["matches"] is False
    assert doc["verification"]["verified"] is False and doc["verification"]["update_result"] == 5
    # without --trust inspect only describes, but it still shows the digest does not match
    assert untrusted.returncode == 0, show(untrusted)
    assert json.loads(untrusted.stdout)["manifest"]["manifest_digest"]["matches"] is False


@pytest.mark.parametrize("case", ["missing-image", "vendor-not-uuid", "key-not-pem", "key-is-public",
                                  "trust-is-private", "package-missing", "package-not-suit", "update-bad-method"])
def test_bad_inputs_give_one_line_and_exit_2(case, keys, image, package, tmp_path):
    out = tmp_path / "out.suit"
    sign_args = ["firmware", "sign", str(image), "--key", str(keys.oem), "--vendor", VENDOR, "--class", CLASS,
                 "--version", "9", "--seq", "9", "--out", str(out)]

    def sign_with(option: str, value: str) -> list[str]:
        """``sign_args`` with the value after ``option`` (or the IMAGE argument itself) replaced."""
        args = list(sign_args)
        at = args.index(option)
        args[at if option == str(image) else at + 1] = value
        return args

    args, needle, code = {
        "missing-image": (sign_with(str(image), str(tmp_path / "nope.bin")), "cannot read image", 2),
        "vendor-not-uuid": (sign_with("--vendor", "acme"), "'acme' is not a UUID", 2),
        "key-not-pem": (sign_with("--key", str(image)), "not an unencrypted PEM private key", 2),
        "key-is-public": (sign_with("--key", str(Keys.pub(keys.oem))), "not an unencrypted PEM private key", 2),
        "trust-is-private": (["firmware", "inspect", str(package), "--trust", str(keys.oem)], "not a PEM public key",
                             2),
        "package-missing": (["firmware", "inspect", str(tmp_path / "none.suit")], "cannot read package", 2),
        "package-not-suit": (["firmware", "inspect", str(image)], "is not a SUIT envelope", 2),
        "update-bad-method": (["firmware", "update", "sim-0", "--package", str(package), "--method", "ftp"],
                              "'ftp' is not push or pull", 2),
    }[case]
    r = run(*args, data_dir=tmp_path)
    assert r.returncode == code, show(r)
    assert needle in r.stderr, show(r)
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stdout == ""
    assert not out.exists()
    assert_no_secret(r, keys.oem)
    lines = r.stderr.strip().splitlines()
    assert len([line for line in lines if needle in line]) == 1, show(r)
    assert len(lines) == 1, show(r)


# ---------------------------------------------------------------------------------------------- authorise


def test_authorise_adds_the_operator_signature(package, keys, tmp_path):
    authorised = tmp_path / "authorised.suit"
    r = run("firmware", "authorise", str(package), "--key", str(keys.operator), "--out", str(authorised),
            data_dir=tmp_path)
    assert r.returncode == 0, show(r)
    assert keys.kid["operator"] in r.stdout, show(r)
    assert_no_secret(r, keys.operator)
    both = ["--trust", str(Keys.pub(keys.oem)), "--trust", str(Keys.pub(keys.operator))]
    auth, auth_oem_only, original, original_oem_only = run_many(
        ["firmware", "inspect", str(authorised), *both, "--json"],
        ["firmware", "inspect", str(authorised), "--trust", str(Keys.pub(keys.oem)), "--json"],
        ["firmware", "inspect", str(package), *both],
        ["firmware", "inspect", str(package), "--trust", str(Keys.pub(keys.oem))], data_dir=tmp_path)

    assert auth.returncode == 0, show(auth)
    doc = json.loads(auth.stdout)
    assert doc["verification"] == {"verified": True, "trusted_keys": [keys.kid["oem"], keys.kid["operator"]]}
    assert [(s["alg"], s["kid"]) for s in doc["manifest"]["signatures"]] == [
        ("ES256", keys.kid["oem"]), ("EdDSA", keys.kid["operator"])]
    assert auth_oem_only.returncode == 0, show(auth_oem_only)
    # the manifest itself is unchanged: same digest as the OEM's release
    assert (doc["manifest"]["manifest_digest"]["digest"]
            == json.loads(auth_oem_only.stdout)["manifest"]["manifest_digest"]["digest"])
    assert doc["manifest"]["manifest"]["sequence_number"] == SEQ

    assert original.returncode == 1, show(original)
    assert f"no valid signature by trust anchor {keys.kid['operator']}" in original.stdout + original.stderr
    assert original_oem_only.returncode == 0, show(original_oem_only)


# ---------------------------------------------------------------------------------------------- update


def test_update_by_push(fleet, package):
    r = update(fleet, "sim-0", package, "--method", "push", "--wait")
    assert r.returncode == 0, fleet.explain(r)
    assert "sim-0 updated" in r.stdout and f"runs {VERSION}" in r.stdout, fleet.explain(r)
    assert "Update Result 1" in r.stdout
    assert "push" in r.stderr  # the progress went to stderr
    assert read_version(fleet, "sim-0") == VERSION
    status = fleet.run("firmware", "status", "sim-0")
    assert status.returncode == 0, fleet.explain(status)
    job = json.loads(status.stdout)
    assert job["done"] is True and job["method"] == "push" and job["previous_version"] == OLD_VERSION
    assert job["last"]["phase"] == "succeeded" and job["last"]["version"] == VERSION and job["last"]["result"] == 1


def test_update_by_pull(fleet, package):
    r = update(fleet, "sim-1", package, "--method", "pull", "--wait")
    assert r.returncode == 0, fleet.explain(r)
    assert "sim-1 updated" in r.stdout and f"runs {VERSION}" in r.stdout, fleet.explain(r)
    assert "pull" in r.stderr
    assert read_version(fleet, "sim-1") == VERSION


def test_update_signed_by_a_stranger_fails_the_integrity_check(fleet, keys, image, tmp_path):
    evil = tmp_path / "evil.suit"
    r = sign(image, keys.stranger, evil, seq=99, version="6.6.6")
    assert r.returncode == 0, show(r)
    r = update(fleet, "sim-2", evil, "--method", "push", "--wait")
    assert r.returncode == 1, fleet.explain(r)
    assert "integrity check failure" in r.stderr and "Update Result 5" in r.stderr, fleet.explain(r)
    assert "updated" not in r.stdout
    assert read_version(fleet, "sim-2") != "6.6.6"


def test_update_that_fails_its_boot_rolls_back(fleet, package):
    r = update(fleet, "fb-0", package, "--wait")
    assert r.returncode == 1, fleet.explain(r)
    assert "Update Result 8" in r.stderr, fleet.explain(r)
    assert f"runs {OLD_VERSION}" in r.stderr
    assert read_version(fleet, "fb-0") == OLD_VERSION
    job = json.loads(fleet.run("firmware", "status", "fb-0").stdout)
    assert job["last"]["phase"] == "failed" and job["last"]["result"] == 8


def test_update_of_an_unknown_endpoint(fleet, package):
    wait, status = run_many(["firmware", "update", "nobody", "--package", str(package), "--wait"],
                            ["firmware", "status", "nobody"], data_dir=fleet.data_dir)
    assert_one_line_error(wait, 1, "no device registered as 'nobody'")
    assert_one_line_error(status, 1, "no firmware update of nobody")


def test_update_without_wait_returns_at_once(fleet, package):
    started = time.monotonic()
    r = update(fleet, "sim-2", package)
    assert r.returncode == 0, fleet.explain(r)
    assert "update of sim-2 started" in r.stdout and "scratch firmware status sim-2" in r.stdout, fleet.explain(r)
    assert r.stderr == ""  # no progress shown: it did not follow the update
    assert time.monotonic() - started < 15
    deadline = time.monotonic() + 20
    while True:
        s = fleet.run("firmware", "status", "sim-2")
        assert s.returncode == 0, fleet.explain(s)
        job = json.loads(s.stdout)
        if job["done"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job["done"] is True, fleet.explain(s)
    assert job["last"]["phase"] == "succeeded" and job["last"]["version"] == VERSION, fleet.explain(s)
    assert read_version(fleet, "sim-2") == VERSION

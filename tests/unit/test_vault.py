"""The vault: key-encryption key from a file (created 0600 from the start) or the environment, AES-GCM sealing
bound to associated data, keyed fingerprints, and secrets that never show in a repr."""

from __future__ import annotations

import base64
import logging
import os
import pickle
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootstrap.vault import (
    KEK_BYTES,
    KEK_ENV_VAR,
    KeyEncryptionKeyError,
    SealedDataError,
    SecretBytes,
    Vault,
    VaultError,
)
from lwm2m_server.core.errors import SecurityError

KEK = bytes(range(32))
AAD = b"tenant=default|endpoint=dev-1|identity=bs-1|kind=bootstrap"
SECRET = b"\x13\x37 sixteen+ byte key!"


def forms(secret: bytes) -> list[str]:
    """The ways a secret could show up in text."""
    return [secret.hex(), secret.hex().upper(), repr(bytes(secret))[2:-1], base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode().rstrip("=")]


def assert_hidden(text: str, *secrets: bytes) -> None:
    for secret in secrets:
        for form in forms(secret):
            assert form not in text


# ---------------------------------------------------------------- sealing


def test_seal_round_trip() -> None:
    vault = Vault(KEK)
    blob = vault.seal(SECRET, AAD)
    assert SECRET not in blob
    opened = vault.open_sealed(blob, AAD)
    assert opened == SECRET and isinstance(opened, SecretBytes)
    assert vault.seal(SECRET, AAD) != blob  # a fresh nonce every time
    assert len(blob) == len(SECRET) + 1 + 4 + 12 + 16


def test_same_kek_opens_across_vault_objects() -> None:
    assert Vault(KEK).open_sealed(Vault(KEK).seal(SECRET, AAD), AAD) == SECRET


def test_every_flipped_bit_is_detected() -> None:
    vault = Vault(KEK)
    blob = vault.seal(SECRET, AAD)
    for i in range(len(blob) * 8):
        tampered = bytearray(blob)
        tampered[i // 8] ^= 1 << (i % 8)
        with pytest.raises(SealedDataError) as info:
            vault.open_sealed(bytes(tampered), AAD)
        assert_hidden(str(info.value), SECRET)


def test_wrong_aad_is_refused() -> None:
    vault = Vault(KEK)
    blob = vault.seal(SECRET, AAD)
    for aad in (b"", AAD + b"x", AAD.replace(b"dev-1", b"dev-2")):
        with pytest.raises(SealedDataError, match="tampered with, or bound to another record"):
            vault.open_sealed(blob, aad)


def test_wrong_kek_is_refused_with_a_clear_message() -> None:
    blob = Vault(KEK).seal(SECRET, AAD)
    other = Vault(bytes(32))
    assert not other.is_sealed_here(blob) and Vault(KEK).is_sealed_here(blob)
    with pytest.raises(SealedDataError, match="another key-encryption key") as info:
        other.open_sealed(blob, AAD)
    assert Vault(KEK).key_id in str(info.value) and other.key_id in str(info.value)


def test_malformed_blobs_are_refused() -> None:
    vault = Vault(KEK)
    blob = vault.seal(SECRET, AAD)
    for bad in (b"", blob[:20], b"\x02" + blob[1:], blob[:-1]):
        with pytest.raises(SealedDataError):
            vault.open_sealed(bad, AAD)


def test_errors_belong_to_the_security_tree() -> None:
    assert issubclass(SealedDataError, VaultError) and issubclass(KeyEncryptionKeyError, VaultError)
    assert issubclass(VaultError, SecurityError)


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(max_size=512), aad=st.binary(max_size=256))
def test_seal_open_round_trip_property(plaintext: bytes, aad: bytes) -> None:
    vault = Vault(KEK)
    blob = vault.seal(plaintext, aad)
    assert vault.open_sealed(blob, aad) == plaintext


@settings(max_examples=200, deadline=None)
@given(plaintext=st.binary(min_size=1, max_size=64), aad=st.binary(max_size=64), data=st.data())
def test_tampering_property(plaintext: bytes, aad: bytes, data: st.DataObject) -> None:
    vault = Vault(KEK)
    blob = bytearray(vault.seal(plaintext, aad))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SealedDataError):
        vault.open_sealed(bytes(blob), aad)


def test_fingerprint_is_keyed_and_deterministic() -> None:
    a, b = Vault(KEK), Vault(bytes(32))
    assert a.fingerprint(SECRET) == Vault(KEK).fingerprint(SECRET)
    assert a.fingerprint(SECRET) != b.fingerprint(SECRET)
    assert a.fingerprint(SECRET) != a.fingerprint(SECRET + b"\0")
    assert len(a.fingerprint(SECRET)) == 32
    assert_hidden(a.fingerprint(SECRET).hex(), SECRET)


# ---------------------------------------------------------------- secrets stay hidden


def test_secret_bytes_hide_their_value() -> None:
    s = SecretBytes(SECRET)
    texts = [repr(s), str(s), f"{s}", f"{s!r}", "%s %r" % (s, s),  # type: ignore[str-bytes-safe]  # noqa: UP031
             repr([s]), repr((1, s)), repr({"k": s})]
    for text in texts:
        assert_hidden(text, SECRET)
    assert repr(s) == f"<secret: {len(SECRET)} bytes>"
    assert s == SECRET and bytes(s) == SECRET and s.hex() == SECRET.hex()  # explicit asks get the value


def test_vault_repr_hides_the_key_and_refuses_pickling() -> None:
    vault = Vault(KEK, source="unit test")
    for text in (repr(vault), str(vault)):
        assert_hidden(text, KEK)
        assert "unit test" in text and vault.key_id in text
    with pytest.raises(TypeError):
        pickle.dumps(vault)
    assert not hasattr(vault, "__dict__")


def test_kek_must_be_32_bytes() -> None:
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(KeyEncryptionKeyError):
            Vault(bad)


# ---------------------------------------------------------------- the key file


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "vault.key"
    first = Vault.open(path, environ={})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.stat().st_size == KEK_BYTES
    assert [p.name for p in path.parent.iterdir()] == ["vault.key"]  # no temporary file left behind
    blob = first.seal(SECRET, AAD)
    again = Vault.open(path, environ={})
    assert again.key_id == first.key_id
    assert again.open_sealed(blob, AAD) == SECRET
    assert str(path) in repr(again)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_key_file_mode_does_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        Vault.open(tmp_path / "vault.key", environ={})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "vault.key").stat().st_mode) == 0o600


def test_key_file_is_private_from_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file the vault opens for writing is opened O_CREAT|O_EXCL with mode 0600: no window."""
    calls: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, *args: object, **kw: object) -> int:
        if flags & os.O_CREAT:
            calls.append((flags, mode))
        return real_open(path, flags, mode, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    Vault.open(tmp_path / "vault.key", environ={})
    assert calls and all(flags & os.O_EXCL and mode == 0o600 for flags, mode in calls)


def test_racing_first_starts_agree_on_one_key(tmp_path: Path) -> None:
    for round_ in range(20):
        path = tmp_path / f"r{round_}" / "vault.key"
        path.parent.mkdir()
        barrier = threading.Barrier(4)
        ids: list[str] = []

        def start(path: Path = path, barrier: threading.Barrier = barrier, ids: list[str] = ids) -> None:
            barrier.wait()
            ids.append(Vault.open(path, environ={}).key_id)

        threads = [threading.Thread(target=start) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ids) == 4 and len(set(ids)) == 1
        assert [p.name for p in path.parent.iterdir()] == ["vault.key"]


def test_key_file_in_text_form_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "hex.key").write_text(KEK.hex() + "\n")
    (tmp_path / "b64.key").write_text(base64.b64encode(KEK).decode())
    assert Vault.open(tmp_path / "hex.key", environ={}).key_id == Vault(KEK).key_id
    assert Vault.open(tmp_path / "b64.key", environ={}).key_id == Vault(KEK).key_id


def test_malformed_key_file_is_refused_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    content = b"\x99" * 31
    path.write_bytes(content)
    with pytest.raises(KeyEncryptionKeyError) as info:
        Vault.open(path, environ={})
    assert_hidden(str(info.value), content)
    assert path.read_bytes() == content  # never overwritten


def test_unusable_key_file_location_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(KeyEncryptionKeyError, match="cannot load or create"):
        Vault.open(blocker / "vault.key", environ={})


def test_group_readable_key_file_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "vault.key"
    path.write_bytes(KEK)
    path.chmod(0o644)
    with caplog.at_level(logging.DEBUG):
        Vault.open(path, environ={})
    assert "accessible to other users" in caplog.text
    assert_hidden(caplog.text, KEK)


def test_creating_a_key_file_logs_a_warning_without_the_key(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "vault.key"
    with caplog.at_level(logging.DEBUG):
        Vault.open(path, environ={})
    assert "created a new vault key file" in caplog.text
    assert_hidden(caplog.text, path.read_bytes())


# ---------------------------------------------------------------- the environment variable


@pytest.mark.parametrize("encode", [
    bytes.hex,
    lambda k: k.hex().upper(),
    lambda k: base64.b64encode(k).decode(),
    lambda k: base64.urlsafe_b64encode(k).decode().rstrip("="),
    lambda k: f"  {k.hex()}\n",
])
def test_env_kek_in_every_form(encode: object, tmp_path: Path) -> None:
    kek = b"\xfb\xff" + bytes(range(30))  # '+' and '/' in standard base64
    vault = Vault.open(None, environ={KEK_ENV_VAR: encode(kek)})  # type: ignore[operator]
    assert vault.key_id == Vault(kek).key_id
    assert vault.source == f"${KEK_ENV_VAR}"


def test_env_kek_takes_precedence_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "vault.key"
    vault = Vault.open(path, environ={KEK_ENV_VAR: KEK.hex()})
    assert vault.key_id == Vault(KEK).key_id
    assert not path.exists()  # no key file is made when the environment gives the key
    path.write_bytes(bytes(32))
    assert Vault.open(path, environ={KEK_ENV_VAR: KEK.hex()}).key_id == Vault(KEK).key_id
    assert Vault.open(path, environ={KEK_ENV_VAR: ""}).key_id == Vault(bytes(32)).key_id  # empty means unset


def test_env_kek_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEK_ENV_VAR, base64.b64encode(KEK).decode())
    assert Vault.open().key_id == Vault(KEK).key_id


@pytest.mark.parametrize("value", ["zz" * 32, KEK.hex()[:-2], base64.b64encode(bytes(31)).decode(), "not a key"])
def test_malformed_env_kek_is_refused_without_its_value(value: str) -> None:
    with pytest.raises(KeyEncryptionKeyError, match=KEK_ENV_VAR) as info:
        Vault.open(None, environ={KEK_ENV_VAR: value})
    assert value not in str(info.value)


def test_no_key_source_at_all_is_an_error() -> None:
    with pytest.raises(KeyEncryptionKeyError, match=KEK_ENV_VAR):
        Vault.open(None, environ={})


def test_generated_vaults_differ() -> None:
    a, b = Vault.generate(), Vault.generate()
    assert a.key_id != b.key_id
    with pytest.raises(SealedDataError):
        b.open_sealed(a.seal(SECRET, AAD), AAD)

"""The server's data directory: where it is, and the files in it that clients read (API URL, API token); and
where the vault key file is, which is *not* in the data directory by default (whoever copies that folder would
otherwise get the database and the key that opens every secret in it).

Stdlib only, so that CLI commands find the server without importing it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TOKEN_FILE = "api-token"
API_URL_FILE = "api-url"
VAULT_KEY_FILE = "vault.key"
VAULT_KEY_FILE_ENV = "SCRATCH_VAULT_KEY_FILE"


def default_data_dir() -> Path:
    env = os.environ.get("SCRATCH_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "scratch"


def default_config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/scratch``, else ``~/.config/scratch``: where the vault key file lives by default."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "scratch"


@dataclass(frozen=True, slots=True)
class VaultKeyLocation:
    """Where the vault key file of a data directory is, and why: ``"env"`` ($SCRATCH_VAULT_KEY_FILE), ``"legacy"``
    (an existing ``DATA_DIR/vault.key``, from before the key moved out: it keeps working, with a warning) or
    ``"default"`` (:func:`default_config_dir`, shared by every data directory of the user)."""

    path: Path
    origin: str

    @property
    def in_data_dir(self) -> bool:
        return self.origin == "legacy"


def vault_key_location(data_dir: Path, environ: Mapping[str, str] | None = None) -> VaultKeyLocation:
    """The one rule every command uses to find the vault key file of ``data_dir`` (``$SCRATCH_VAULT_KEY``, the
    key itself, still takes precedence over any file: see :func:`bootstrap.vault.open_vault`):

    1. ``$SCRATCH_VAULT_KEY_FILE`` when set (a file name; created on first use);
    2. ``DATA_DIR/vault.key`` when that file exists (a data directory made before the key moved out);
    3. ``$XDG_CONFIG_HOME/scratch/vault.key`` (``~/.config/scratch/vault.key``), created on first use, mode 0600
       in a 0700 folder.
    """
    env = os.environ if environ is None else environ
    named = env.get(VAULT_KEY_FILE_ENV, "").strip()
    if named:
        return VaultKeyLocation(Path(named).expanduser(), "env")
    legacy = Path(data_dir) / VAULT_KEY_FILE
    if legacy.is_file():
        return VaultKeyLocation(legacy, "legacy")
    return VaultKeyLocation(default_config_dir(env) / VAULT_KEY_FILE, "default")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (mode 0600 from creation, no window)."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def ensure_token(data_dir: Path) -> str:
    """The API token of this data directory, created (random, mode 0600) on first use."""
    path = data_dir / TOKEN_FILE
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


def create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, readable by the owner only, or raise FileExistsError if it exists.

    Written to a private (0600) temporary file in the same folder, synced, then linked into place (exclusive and
    atomic): the file appears whole or not at all, never wider than 0600, and an existing file is never replaced.
    """
    write_private_file(path, data, replace=False)


def write_private_file(path: Path, data: bytes, *, replace: bool) -> None:
    """:func:`create_private_file`, or with ``replace`` the same write that renames over an existing file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may have taken the owner's bits too; never widens
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    with contextlib.suppress(OSError):  # make the new directory entry durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

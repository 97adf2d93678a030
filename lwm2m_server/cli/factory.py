"""``scratch factory``: bootstrap credentials for the production line.

``provision`` issues a bootstrap PSK credential to each of N new endpoints in the vault-backed credential store of
the data directory and writes the manufacturing file (endpoint, PSK identity, PSK in hex, bootstrap URI) that the
line flashes into the devices. That file is the only place the keys appear in the clear: it is created mode 0600,
never overwritten, and no key is ever printed. ``revoke`` ends a device's credentials; ``list`` shows them, never
with keys.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lwm2m_server.cli.common import err_console, fail, new_app, quiet_logs
from lwm2m_server.core.errors import Lwm2mError
from lwm2m_server.data_dir import create_private_file

factory_app = new_app(help="Provision devices on the production line: bootstrap "
                      "credentials and the manufacturing file.")
console = Console(soft_wrap=True)

MAX_COUNT = 100_000
PROGRESS_FROM = 200  # a progress bar (stderr) from this many devices on
DEFAULT_BOOTSTRAP_URI = "coaps://localhost:5784"
FIELDS = ("endpoint", "psk_identity", "psk_key", "bootstrap_uri")
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_URI = re.compile(r"coaps://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", envvar="SCRATCH_DATA_DIR",
                                                 help="Server data directory (holds the database; the vault key is "
                                                 "kept elsewhere, see `scratch server --help`)")]
TenantOpt = Annotated[str, typer.Option("--tenant", help="Tenant the credentials belong to")]

def _data_dir(data_dir: Path | None) -> Path:
    from lwm2m_server.data_dir import default_data_dir

    return data_dir or default_data_dir()


def _store(data_dir: Path, *, need_keys: bool) -> Any:
    """The SQL credential store of ``data_dir``. With ``need_keys`` its vault is the real one
    (:func:`bootstrap.vault.open_vault`: $SCRATCH_VAULT_KEY, else the key file, created on first use); without
    (revoke, list: nothing is sealed or opened) a throwaway vault, so those commands never create a key file."""
    from bootstrap.sql_credentials import SqlCredentialStore
    from bootstrap.vault import Vault, open_vault
    from lwm2m_server.storage.database import Database

    try:
        database = Database.for_data_dir(data_dir)
        vault = open_vault(data_dir) if need_keys else Vault.generate()
        return SqlCredentialStore(database, vault)
    except Lwm2mError as e:
        raise fail(str(e)) from None


def _has_database(data_dir: Path) -> bool:
    from lwm2m_server.storage.database import DB_FILENAME

    return (data_dir / DB_FILENAME).is_file()


def _render(records: list[dict[str, str]], fmt: str) -> bytes:
    if fmt == "json":
        return (json.dumps(records, indent=2) + "\n").encode()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buf.getvalue().encode()


def _write_new_private(path: Path, data: bytes) -> None:
    """``data`` into ``path``, which must not exist (0600 from creation, atomic, never overwriting)."""
    create_private_file(path, data)


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@factory_app.command("provision")
def provision(
    count: Annotated[int, typer.Option("--count", help=f"How many devices (1..{MAX_COUNT})")],
    prefix: Annotated[str, typer.Option("--prefix", help="Endpoint name prefix; names are PREFIX + a zero-padded "
                                        "index")],
    out: Annotated[Path, typer.Option("--out", help="Manufacturing file to create (mode 0600; never overwritten)")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "csv",
    bootstrap_uri: Annotated[str, typer.Option("--bootstrap-uri", help="Bootstrap server, coaps://HOST:PORT")]
    = DEFAULT_BOOTSTRAP_URI,
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Issue a bootstrap PSK to COUNT new endpoints and write the manufacturing file with their keys.

    Refuses (writing nothing) when a generated name already has a credential (active or revoked, of any kind) in
    the tenant, or when --out exists. Keys are never printed; the file is the only copy outside the vault.
    """
    quiet_logs()
    if not 1 <= count <= MAX_COUNT:
        raise fail(f"--count: {count} is not between 1 and {MAX_COUNT}", 2)
    if not _PREFIX.fullmatch(prefix):
        raise fail(f"--prefix: {prefix!r} must start with a letter or digit and hold only letters, digits and "
                    "._:- (at most 200 characters)", 2)
    if fmt not in ("csv", "json"):
        raise fail(f"--format: {fmt!r} is not csv or json", 2)
    m = _URI.fullmatch(bootstrap_uri)
    if m is None or not 0 < int(m["port"]) < 65536:
        raise fail(f"--bootstrap-uri: {bootstrap_uri!r} is not coaps://HOST:PORT", 2)
    if not tenant:
        raise fail("--tenant: empty tenant id", 2)
    if os.path.lexists(out):
        raise fail(f"{out} exists; not overwriting a manufacturing file", 2)
    if not out.parent.is_dir():
        raise fail(f"cannot write {out}: folder {out.parent} does not exist", 2)

    width = max(4, len(str(count)))
    names = [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]
    folder = _data_dir(data_dir)
    store = _store(folder, need_keys=True)
    try:
        taken = {c.endpoint for c in store.list(tenant_id=tenant, include_revoked=True)}
    except Lwm2mError as e:
        raise fail(str(e)) from None
    clash = [n for n in names if n in taken]
    if clash:
        more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
        raise fail(f"endpoint {clash[0]!r}{more} already has a credential in tenant {tenant!r}; choose another "
                    "--prefix", 2)

    records: list[dict[str, str]] = []
    issued: list[str] = []
    try:
        with Progress(TextColumn("issuing credentials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err_console, transient=True, disable=count < PROGRESS_FROM) as progress:
            task = progress.add_task("issue", total=count)
            for name in names:
                credential, psk = store.issue(name, "bootstrap", now=time.time(), tenant_id=tenant)
                issued.append(name)
                records.append({"endpoint": name, "psk_identity": credential.identity, "psk_key": psk.hex(),
                                "bootstrap_uri": bootstrap_uri})
                progress.advance(task)
        _write_new_private(out, _render(records, fmt))
    except BaseException as e:
        # keys that never reached the file must not stay valid: take back what was issued
        with contextlib.suppress(Exception):
            for name in issued:
                store.revoke(name, now=time.time(), tenant_id=tenant, kind="bootstrap")
        records.clear()
        undone = f"; the {len(issued)} credential(s) issued were revoked" if issued else ""
        if isinstance(e, FileExistsError):
            raise fail(f"{out} appeared meanwhile; not overwriting a manufacturing file{undone}", 2) from None
        if isinstance(e, OSError):
            raise fail(f"cannot write {out}: {e.strerror}{undone}") from None
        if isinstance(e, Lwm2mError):
            raise fail(f"{e}{undone}") from None
        raise
    records.clear()
    console.print(f"provisioned {count} device(s) {names[0]}..{names[-1]} (tenant {tenant}, bootstrap "
                  f"{bootstrap_uri}): wrote {out} ({fmt}, mode 0600) - it holds the keys, keep it safe",
                  highlight=False)


@factory_app.command("revoke")
def revoke(
    endpoint: Annotated[str, typer.Argument(help="The device's endpoint name")],
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Revoke all of a device's credentials (bootstrap and server) in the store; their keys are erased.

    A server running on this data directory's database sees the revocation at its next poll (about a second):
    it closes the DTLS sessions of the revoked identities and refuses their handshakes from then on.
    """
    quiet_logs()
    folder = _data_dir(data_dir)
    if not _has_database(folder):
        raise fail(f"unknown endpoint {endpoint!r}: no database in {folder}")
    store = _store(folder, need_keys=False)
    try:
        known = store.list(tenant_id=tenant, include_revoked=True)
        if not any(c.endpoint == endpoint for c in known):
            raise fail(f"unknown endpoint {endpoint!r}: no credential in tenant {tenant!r}")
        revoked = store.revoke(endpoint, now=time.time(), tenant_id=tenant)
    except Lwm2mError as e:
        raise fail(str(e)) from None
    if not revoked:
        console.print(f"{endpoint}: no active credential (already revoked)", highlight=False)
        return
    kinds = ", ".join(f"{c.kind.value} {c.identity}" for c in revoked)
    console.print(f"{endpoint}: revoked {len(revoked)} credential(s): {kinds}", highlight=False)


@factory_app.command("list")
def list_credentials(
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant (default: all)")] = None,
) -> None:
    """List credentials (active and revoked): endpoint, identity, kind, created, revoked. Never keys."""
    quiet_logs()
    folder = _data_dir(data_dir)
    credentials = []
    if _has_database(folder):
        try:
            credentials = _store(folder, need_keys=False).list(tenant_id=tenant, include_revoked=True)
        except Lwm2mError as e:
            raise fail(str(e)) from None
    rows = [{"tenant": c.tenant_id, "endpoint": c.endpoint, "psk_identity": c.identity, "kind": c.kind.value,
             "created": _when(c.created_at), "revoked": c.revoked, "revoked_at": _when(c.revoked_at)}
            for c in credentials]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no credentials", highlight=False)
        return
    from rich.table import Table

    table = Table()
    for column in ("tenant", "endpoint", "identity", "kind", "created", "revoked"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["tenant"], r["endpoint"], r["psk_identity"], r["kind"], r["created"],
                      r["revoked_at"] if r["revoked"] else "")
    console.print(table)

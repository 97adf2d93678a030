"""``scratch webhook``: subscribe URLs to events (campaign results by default) in the local data directory.

The server posts each matching event to the URL as JSON signed with the subscription's secret (header
``X-Scratch-Signature: t=<unix ts>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``). ``add`` prints that secret once,
in hex (the HMAC key is the 32 bytes it encodes); nothing else ever prints it, and the database holds it only sealed
by the vault. A running server picks a new subscription up within a few seconds.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lwm2m_server.cli.common import err_console, fail, new_app, quiet_logs
from lwm2m_server.core.errors import Lwm2mError

if TYPE_CHECKING:
    from lwm2m_server.fota.webhooks import Webhooks

webhook_app = new_app(help="Send events (campaign results...) to HTTP(S) URLs as signed "
                      "JSON POSTs; see what was delivered.")
console = Console(soft_wrap=True)

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", envvar="SCRATCH_DATA_DIR",
                                                 help="Server data directory (holds the database; the vault key is "
                                                 "kept elsewhere, see `scratch server --help`)")]
TenantOpt = Annotated[str, typer.Option("--tenant", help="Tenant the webhooks belong to")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]

def _folder(data_dir: Path | None) -> Path:
    from lwm2m_server.data_dir import default_data_dir

    return data_dir or default_data_dir()


def _has_database(folder: Path) -> bool:
    from lwm2m_server.storage.database import DB_FILENAME

    return (folder / DB_FILENAME).is_file()


@contextlib.contextmanager
def _webhooks(folder: Path, *, need_vault: bool) -> Iterator[Webhooks]:
    """The webhooks of ``folder`` (its database closed on exit). With ``need_vault`` the real vault
    (:func:`bootstrap.vault.open_vault`: $SCRATCH_VAULT_KEY, else the key file, created on first use); without
    (nothing is sealed or opened) a throwaway
    one, so no key file is created. A store error becomes a one-line error and exit code 1."""
    from bootstrap.vault import Vault, open_vault
    from lwm2m_server.fota.webhooks import Webhooks
    from lwm2m_server.storage.database import Database

    try:
        database = Database.for_data_dir(folder)
    except Lwm2mError as e:
        raise fail(str(e)) from None
    try:
        vault = open_vault(folder) if need_vault else Vault.generate()
        yield Webhooks.over(database, vault)
    except Lwm2mError as e:
        raise fail(str(e)) from None
    finally:
        database.close()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _kinds(values: list[str]) -> list[str]:
    return [k.strip() for v in values for k in v.split(",") if k.strip()]


@webhook_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="Where to POST the events: http(s)://HOST[:PORT]/PATH")],
    events: Annotated[list[str] | None, typer.Option(
        "--events", help="Event-kind prefix to send (repeat it, or comma-separate) [default: campaign.]")] = None,
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Subscribe URL to events; prints the webhook's id and its signing secret (shown this once only)."""
    from lwm2m_server.fota.webhooks import DEFAULT_KINDS, validate_kinds, validate_url

    quiet_logs()
    try:
        validate_url(url)
        kinds = validate_kinds(_kinds(events) if events else DEFAULT_KINDS)
    except Lwm2mError as e:
        raise fail(str(e), 2) from None
    if not tenant:
        raise fail("--tenant: empty tenant id", 2)
    with _webhooks(_folder(data_dir), need_vault=True) as webhooks:
        webhook, secret = webhooks.add(url, kinds=kinds, tenant_id=tenant, now=time.time())
    if as_json:
        print(json.dumps({"id": webhook.id, "tenant": webhook.tenant_id, "url": webhook.url,
                          "events": list(webhook.kinds), "secret": secret.hex()}, indent=2))
    else:
        console.print(f"added webhook {webhook.id}: {escape(webhook.url)} <- {', '.join(webhook.kinds)} (tenant "
                      f"{webhook.tenant_id})", highlight=False)
        console.print(f"secret: {secret.hex()}", highlight=False)
    err_console.print("[yellow]warning:[/yellow] store this secret now: it is not shown again. Receivers verify "
                      "X-Scratch-Signature with it (the HMAC-SHA256 key is the 32 bytes of this hex).",
                      highlight=False)


@webhook_app.command("list")
def list_webhooks(
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
    include_removed: Annotated[bool, typer.Option("--all", help="Also removed webhooks")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List webhooks: id, URL, events, created, active. Never secrets."""
    quiet_logs()
    folder = _folder(data_dir)
    hooks = []
    if _has_database(folder):
        with _webhooks(folder, need_vault=False) as webhooks:
            hooks = webhooks.list(tenant_id=tenant, include_removed=include_removed)
    if as_json:
        print(json.dumps([{"id": w.id, "tenant": w.tenant_id, "url": w.url, "events": list(w.kinds),
                           "created": _when(w.created_at), "active": w.active} for w in hooks], indent=2))
        return
    if not hooks:
        console.print("no webhooks", highlight=False)
        return
    table = Table()
    for column in ("id", "url", "events", "created", "active"):
        table.add_column(column, overflow="fold")
    for w in hooks:
        table.add_row(w.id, escape(w.url), ", ".join(w.kinds), _when(w.created_at), "yes" if w.active else "removed")
    console.print(table)


@webhook_app.command("remove")
def remove(
    webhook_id: Annotated[str, typer.Argument(metavar="ID", help="The webhook's id (see `webhook list`)")],
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
) -> None:
    """Stop sending events to a webhook and erase its secret (its delivery log stays)."""
    quiet_logs()
    folder = _folder(data_dir)
    if not _has_database(folder):
        raise fail(f"no webhook {webhook_id!r}: no database in {folder}")
    with _webhooks(folder, need_vault=False) as webhooks:
        webhook = webhooks.remove(webhook_id, tenant_id=tenant)
    console.print(f"removed webhook {webhook.id} ({escape(webhook.url)})", highlight=False)


@webhook_app.command("deliveries")
def deliveries(
    webhook_id: Annotated[str | None, typer.Option("--webhook", metavar="ID", help="Only this webhook")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many attempts, newest first")] = 100,
    data_dir: DataDirOpt = None,
    tenant: TenantOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """The delivery log, newest first: every attempt with its HTTP status or error."""
    quiet_logs()
    if not 1 <= limit <= 100_000:
        raise fail(f"--limit: {limit} is not in 1..100000", 2)
    folder = _folder(data_dir)
    log = []
    if _has_database(folder):
        with _webhooks(folder, need_vault=False) as webhooks:
            log = webhooks.deliveries(tenant_id=tenant, webhook_id=webhook_id, limit=limit)
    if as_json:
        print(json.dumps([d.as_dict() for d in log], indent=2))
        return
    if not log:
        console.print("no deliveries", highlight=False)
        return
    table = Table()
    for column in ("at", "webhook", "event", "delivery", "attempt", "status", "result", "ms"):
        table.add_column(column, overflow="fold")
    for d in log:
        result = "[green]delivered[/green]" if d.delivered else f"[red]{escape(d.error or 'failed')}[/red]"
        table.add_row(_when(d.at), d.webhook_id, d.event_kind, d.event_id, str(d.attempt),
                      "" if d.status_code is None else str(d.status_code), result, f"{d.duration * 1000:.0f}")
    console.print(table)

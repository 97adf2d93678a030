"""``scratch tenant`` and ``scratch token``: tenants, their grants, brands and audit trail, and API tokens.

These commands work locally on the data directory (its database), like ``scratch release``: whoever can run them
there holds the server's data, so they act as the system principal (``local:<user>`` in the audit trail) for any
tenant. Each is audited. A token is printed once, alone on stdout (so ``TOKEN=$(scratch token create ...)`` works);
everything else about it goes to stderr. Bad input exits 2 with a one-line error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lwm2m_server.cli.common import err_console, fail, new_app, quiet_logs
from lwm2m_server.core.errors import InvalidRequestError, Lwm2mError, NotFoundError

if TYPE_CHECKING:
    from lwm2m_server.tenancy.service import TenancyService

tenant_app = new_app(help="Tenants (OEMs, operators, or both), their grants, brands and audit trail.")
token_app = new_app(help="API tokens: scoped to a tenant and roles, shown once, expiring, revocable.")
user_app = new_app(help="Web users: a login and a password (scrypt-hashed) in one tenant, with roles.")

console = Console(soft_wrap=True)

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", envvar="SCRATCH_DATA_DIR",
                                                 help="Server data directory (holds the database)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@contextmanager
def _tenancy(data_dir: Path | None) -> Iterator[TenancyService]:
    from lwm2m_server.data_dir import default_data_dir
    from lwm2m_server.storage.database import Database
    from lwm2m_server.storage.stores import StorageConflictError
    from lwm2m_server.tenancy.model import ForbiddenError
    from lwm2m_server.tenancy.sql import open_tenancy

    quiet_logs()
    try:
        database = Database.for_data_dir(data_dir or default_data_dir())
    except Lwm2mError as e:
        raise fail(str(e)) from None
    try:
        yield open_tenancy(database)
    except (InvalidRequestError, NotFoundError, StorageConflictError, ForbiddenError) as e:
        raise fail(str(e), 2) from None
    except Lwm2mError as e:
        raise fail(str(e)) from None
    finally:
        database.close()


def _system() -> Any:
    from lwm2m_server.tenancy.service import system_principal

    return system_principal()


# ---------------------------------------------------------------------------------------------------- tenants


@tenant_app.command("create")
def tenant_create(
    tenant_id: Annotated[str, typer.Argument(metavar="NAME", help="Tenant id: lower-case letters, digits, '-'")],
    kind: Annotated[str, typer.Option("--kind", help="oem (signs releases), operator (runs devices and "
                                      "campaigns) or both")] = "both",
    display: Annotated[str, typer.Option("--display-name", help="Human name (default: the id)")] = "",
    data_dir: DataDirOpt = None,
) -> None:
    """Create a tenant. Then give it a first admin token: ``scratch token create --tenant NAME --role admin``."""
    from lwm2m_server.tenancy.model import TenantKind

    try:
        k = TenantKind(kind)
    except ValueError:
        raise fail("--kind is oem, operator or both", 2) from None
    with _tenancy(data_dir) as tenancy:
        t = tenancy.create_tenant(tenant_id, kind=k, name=display, by=_system())
    console.print(f"tenant {t.id} ({t.kind.value}) created", highlight=False)


@tenant_app.command("list")
def tenant_list(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    from lwm2m_server.api.tenancy import tenant_to_json

    with _tenancy(data_dir) as tenancy:
        rows = [tenant_to_json(t) for t in tenancy.tenants(by=_system())]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("tenant", "kind", "name", "brand")
    for r in rows:
        table.add_row(r["id"], r["kind"], r["name"], (r["brand"] or {}).get("product_name", "-"))
    console.print(table)


@tenant_app.command("grant")
def tenant_grant(
    oem: Annotated[str, typer.Argument(help="The OEM tenant that signs the releases")],
    operator: Annotated[str, typer.Argument(help="The operator tenant allowed to deploy them")],
    device_class: Annotated[str, typer.Option("--class", help="Device class name (or class UUID) of the releases")],
    data_dir: DataDirOpt = None,
) -> None:
    """Let OPERATOR import and deploy OEM's releases of one device class."""
    with _tenancy(data_dir) as tenancy:
        g = tenancy.grant(oem_tenant=oem, operator_tenant=operator, class_name=device_class, by=_system())
    console.print(f"{g.operator_tenant} may deploy {g.oem_tenant}'s releases of class {g.class_name}", highlight=False)


@tenant_app.command("revoke-grant")
def tenant_revoke_grant(oem: str, operator: str,
                        device_class: Annotated[str, typer.Option("--class", help="Device class")],
                        data_dir: DataDirOpt = None) -> None:
    with _tenancy(data_dir) as tenancy:
        tenancy.revoke_grant(oem_tenant=oem, operator_tenant=operator, class_name=device_class, by=_system())
    console.print(f"grant of {device_class} to {operator} revoked", highlight=False)


@tenant_app.command("grants")
def tenant_grants(tenant_id: Annotated[str, typer.Argument(metavar="TENANT")], data_dir: DataDirOpt = None,
                  as_json: JsonOpt = False) -> None:
    """Grants given by or to TENANT."""
    with _tenancy(data_dir) as tenancy:
        rows = [asdict(g) for g in tenancy.grants(tenant_id=tenant_id, by=_system())]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("OEM", "operator", "class", "since")
    for r in rows:
        table.add_row(r["oem_tenant"], r["operator_tenant"], r["class_name"], _when(r["created_at"]))
    console.print(table)


@tenant_app.command("brand")
def tenant_brand(
    tenant_id: Annotated[str, typer.Argument(metavar="TENANT")],
    name: Annotated[str | None, typer.Option("--name", help="Product name shown instead of SCRATCh")] = None,
    logo: Annotated[Path | None, typer.Option("--logo", help="PNG or SVG file (at most 256 KiB)",
                                              exists=True, dir_okay=False)] = None,
    color: Annotated[str | None, typer.Option("--color", help="Primary colour #RRGGBB")] = None,
    accent: Annotated[str | None, typer.Option("--accent", help="Accent colour #RRGGBB")] = None,
    support_url: Annotated[str | None, typer.Option("--support-url", help="https:// link for help")] = None,
    issuer: Annotated[str | None, typer.Option("--issuer", help="Issuer named in attestation reports "
                                               "(default: --name)")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the brand")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Set TENANT's white label: what its users, reports, webhooks and CLI banners show."""
    from lwm2m_server.tenancy.brand import MAX_LOGO, brand_from_fields

    if clear == (name is not None):
        raise fail("give --name (to set the brand) or --clear", 2)
    with _tenancy(data_dir) as tenancy:
        brand = None
        if name is not None:
            data = None
            if logo is not None:
                if logo.stat().st_size > MAX_LOGO:
                    raise fail(f"--logo: larger than {MAX_LOGO} bytes", 2)
                data = logo.read_bytes()
            brand = brand_from_fields(name, report_issuer=issuer, primary_color=color, accent_color=accent,
                                      support_url=support_url, logo=data)
        tenancy.set_brand(tenant_id, brand, by=_system())
    console.print(f"tenant {tenant_id}: " + (f"brand {name}" if name else "brand removed"), highlight=False)


@tenant_app.command("audit")
def tenant_audit(tenant_id: Annotated[str, typer.Argument(metavar="TENANT")],
                 limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 100,
                 data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """TENANT's audit trail: every privileged action, who did it with which roles, and how it ended."""
    with _tenancy(data_dir) as tenancy:
        entries = list(tenancy.audit_trail(tenant_id=tenant_id, by=_system(), limit=1_000_000))[-limit:]
    if as_json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
        return
    table = Table("#", "when", "who", "roles", "action", "target", "outcome")
    for e in entries:
        table.add_row(str(e.seq), _when(e.at), e.subject, ",".join(e.roles), e.action, e.target, e.outcome)
    console.print(table)


# ---------------------------------------------------------------------------------------------------- tokens


@token_app.command("create")
def token_create(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant the token acts for")],
    role: Annotated[list[str], typer.Option("--role", help="admin, release-manager, operator or auditor "
                                            "(repeat, or comma-separated)")],
    expires: Annotated[float, typer.Option("--expires", help="Days until it expires")] = 90.0,
    name: Annotated[str, typer.Option("--name", help="What it is for (shown in listings and the audit trail)")]
    = "",
    data_dir: DataDirOpt = None,
) -> None:
    """Make an API token and print it ONCE on stdout (it is stored only as a salted hash)."""
    from lwm2m_server.tenancy.model import parse_roles

    with _tenancy(data_dir) as tenancy:
        record, text = tenancy.create_token(tenant_id=tenant, roles=parse_roles(role), name=name,
                                            expires_days=expires, by=_system())
    err_console.print(f"token {record.id} for tenant {record.tenant_id} ({', '.join(sorted(record.roles))}), "
                      f"expires {_when(record.expires_at)}; it is shown once, keep it now:", highlight=False)
    print(text, flush=True)


@token_app.command("list")
def token_list(tenant: Annotated[str, typer.Option("--tenant")], data_dir: DataDirOpt = None,
               as_json: JsonOpt = False) -> None:
    from lwm2m_server.api.tenancy import token_to_json

    with _tenancy(data_dir) as tenancy:
        rows = [token_to_json(t) for t in tenancy.tokens(tenant_id=tenant, by=_system())]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("token", "name", "roles", "created", "expires", "revoked")
    for r in rows:
        table.add_row(r["id"], r["name"], ",".join(r["roles"]), _when(r["created_at"]), _when(r["expires_at"]),
                      _when(r["revoked_at"]))
    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(metavar="ID", help="tok-... (from token list)")],
                 data_dir: DataDirOpt = None) -> None:
    """Revoke a token at once: the next API call with it gets 401."""
    with _tenancy(data_dir) as tenancy:
        record = tenancy.revoke_token(token_id, by=_system())
    console.print(f"token {record.id} of tenant {record.tenant_id} revoked", highlight=False)


# ---------------------------------------------------------------------------------------------------- users


@user_app.command("add")
def user_add(
    login: Annotated[str, typer.Argument(help="The sign-in name (unique across tenants), e.g. an e-mail address")],
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant the user belongs to")],
    role: Annotated[list[str], typer.Option("--role", help="admin, release-manager, operator or auditor "
                                            "(repeat, or comma-separated)")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from standard input "
                                                 "(one line) instead of asking for it twice")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a web user; its password is asked for (or read from stdin), never taken from the command line."""
    import sys

    from lwm2m_server.tenancy.model import parse_roles

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with _tenancy(data_dir) as tenancy:
        user = tenancy.create_user(tenant_id=tenant, login=login, roles=parse_roles(role), password=password,
                                   by=_system())
    console.print(f"user {user.login} ({user.id}) of tenant {user.tenant_id}: {', '.join(sorted(user.roles))}",
                  highlight=False)


@user_app.command("list")
def user_list(tenant: Annotated[str, typer.Option("--tenant")], data_dir: DataDirOpt = None,
              as_json: JsonOpt = False) -> None:
    with _tenancy(data_dir) as tenancy:
        rows = [{"id": u.id, "login": u.login, "roles": sorted(u.roles), "created_at": u.created_at,
                 "disabled_at": u.disabled_at} for u in tenancy.users(tenant_id=tenant, by=_system())]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("user", "login", "roles", "created", "disabled")
    for r in rows:
        table.add_row(r["id"], r["login"], ",".join(r["roles"]), _when(r["created_at"]), _when(r["disabled_at"]))
    console.print(table)


@user_app.command("disable")
def user_disable(user_id: Annotated[str, typer.Argument(metavar="ID", help="usr-... (from user list)")],
                 data_dir: DataDirOpt = None) -> None:
    """Disable a user and end its sessions at once."""
    with _tenancy(data_dir) as tenancy:
        user = tenancy.disable_user(user_id, by=_system())
    console.print(f"user {user.login} of tenant {user.tenant_id} disabled", highlight=False)

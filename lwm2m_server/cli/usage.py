"""``scratch usage``: a tenant's metered usage per day (hash-chained), exported to CSV or JSON, and verified.

``export`` works locally on the data directory, like ``scratch release``: it seals the days that are over, checks
the stored chain, and writes the sealed days in range (the day under way is not exported: it is still counting).
``verify`` needs nothing but the file: exit 0 with ``OK: N days, head <hash prefix>``, or 1 naming the first bad
day (a malformed file: 1 too, naming the line). Bad input exits 2; every error is one line on stderr.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from lwm2m_server.cli.common import fail, new_app, quiet_logs
from lwm2m_server.core.errors import Lwm2mError

usage_app = new_app(help="Usage per tenant and day (hash-chained): export as CSV or JSON, verify a file.")

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", envvar="SCRATCH_DATA_DIR",
                                                 help="Server data directory (holds the database)")]
HEAD_SHOWN = 16  # hex digits of the head hash printed


@usage_app.command("export")
def export(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant whose usage is exported")],
    out: Annotated[Path, typer.Option("--out", help="File to write (replaced if it exists)")],
    first: Annotated[str | None, typer.Option("--from", help="First day, YYYY-MM-DD (UTC); default: the first")] = None,
    last: Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD (UTC); default: the last")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or json (default: json for a .json file, "
                                            "else csv)")] = None,
    include_today: Annotated[bool, typer.Option(
        "--include-today", help="Also write the day under way, chained after the sealed days (its counts may still "
        "grow: a later export supersedes it; the store seals it only once it is over)")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Seal the finished days, then write the tenant's sealed days (with their hashes) to --out."""
    from lwm2m_server.data_dir import default_data_dir
    from lwm2m_server.metering.store import SqlUsageStore, exported_days
    from lwm2m_server.metering.usage import UsageFormatError, parse_day, to_csv, to_json, verify
    from lwm2m_server.storage.database import Database

    kind = fmt.lower() if fmt else ("json" if out.suffix.lower() == ".json" else "csv")
    if kind not in ("csv", "json"):
        raise fail(f"--format: {fmt!r} is not csv or json", 2)
    if not tenant:
        raise fail("--tenant: empty", 2)
    for option, value in (("--from", first), ("--to", last)):
        try:
            if value is not None:
                parse_day(value)
        except UsageFormatError as e:
            raise fail(f"{option}: {e}", 2) from None
    if first is not None and last is not None and first > last:
        raise fail(f"--from {first} is after --to {last}", 2)
    quiet_logs()
    try:
        database = Database.for_data_dir(data_dir or default_data_dir())
    except Lwm2mError as e:
        raise fail(str(e)) from None
    try:
        store = SqlUsageStore(database)
        days = exported_days(store, tenant_id=tenant, now=time.time(), first=first, last=last,
                             include_today=include_today)
    except Lwm2mError as e:
        raise fail(str(e)) from None
    finally:
        database.close()
    problems = verify(days)
    if problems:
        raise fail(f"the stored usage of tenant {tenant} does not verify (nothing written): {problems[0]}")
    try:
        out.write_bytes((to_json(days, tenant_id=tenant) if kind == "json" else to_csv(days)).encode())
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror or e}") from None
    if not days:
        print(f"exported 0 days of tenant {tenant} to {out} ({kind})")
        return
    total = sum((d.counts for d in days[1:]), days[0].counts)
    print(f"exported {len(days)} days of tenant {tenant} ({days[0].day}..{days[-1].day}) to {out} ({kind}): "
          f"{total.devices_registered} device registrations (distinct per day), {total.deliveries_started} "
          f"deliveries started, {total.deliveries_succeeded} succeeded, {total.deliveries_failed} failed, "
          f"{total.bytes_delivered} bytes, {total.campaigns_started} campaigns started, "
          f"{total.campaigns_finished} finished; head {days[-1].hash[:HEAD_SHOWN]}")


@usage_app.command("verify")
def verify_file(file: Annotated[Path, typer.Argument(help="A file written by `scratch usage export`")]) -> None:
    """Check a usage file on its own: every day's hash, the links between days, the dates (and a JSON header)."""
    from lwm2m_server.metering.usage import UsageFormatError, parse_export, verify_export

    try:
        text = file.read_bytes().decode("utf-8")  # not read_text: a CSV's line ends must stay as written
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot read {file}: {getattr(e, 'strerror', None) or e}", 2) from None
    try:
        export = parse_export(text)
    except UsageFormatError as e:
        raise fail(f"{file}: not a well-formed usage file: {e}") from None
    problems = verify_export(export)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise fail(f"{file} does not verify: {problems[0]}{more}")
    head = export.days[-1].hash[:HEAD_SHOWN] if export.days else "-"
    print(f"OK: {len(export.days)} days, head {head}")

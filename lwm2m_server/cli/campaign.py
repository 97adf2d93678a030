"""``scratch campaign``: staged rollouts of releases to target lists, run by the server; signed reports."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from lwm2m_server.cli.client import ApiClient, CliError
from lwm2m_server.cli.common import err_console, fail, new_app

campaign_app = new_app(help="Roll releases out to devices in waves; signed reports.")
console = Console(soft_wrap=True)

ApiOpt = Annotated[str | None, typer.Option("--api", help="API base URL [default: from the data directory]")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", envvar="SCRATCH_DATA_DIR",
                                                 help="The server's data directory (API URL and token)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]
MAX_TARGET_FILE = 16 << 20
STATES = ("pending", "delivering", "downloaded", "updating", "succeeded", "failed", "rolled-back", "skipped")
STATE_STYLE = {"succeeded": "green", "failed": "red", "rolled-back": "yellow", "skipped": "dim", "pending": "",
               "delivering": "cyan", "downloaded": "cyan", "updating": "magenta"}




def _client(api: str | None, data_dir: Path | None, timeout: float = 60.0) -> ApiClient:
    try:
        return ApiClient.locate(api, data_dir, timeout=timeout)
    except CliError as e:
        raise fail(str(e)) from None


def _call(fn: Any, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except CliError as e:
        raise fail(str(e)) from None


def read_targets(path: Path) -> list[str]:
    """Endpoints from a file: one per line (or the first column of a CSV line); blank lines and ``#`` comments
    are ignored; duplicates are an error."""
    try:
        if path.stat().st_size > MAX_TARGET_FILE:
            raise fail(f"{path} is larger than {MAX_TARGET_FILE >> 20} MiB", 2)
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise fail(f"cannot read the target list {path}: {e.strerror}", 2) from None
    except UnicodeDecodeError:
        raise fail(f"{path} is not UTF-8 text", 2) from None
    targets: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        endpoint = line.split("#", 1)[0].split(",", 1)[0].strip()
        if not endpoint or (n == 1 and endpoint.lower() == "endpoint"):
            continue
        if endpoint in seen:
            raise fail(f"{path}:{n}: {endpoint!r} is listed twice", 2)
        seen.add(endpoint)
        targets.append(endpoint)
    if not targets:
        raise fail(f"{path} lists no endpoint", 2)
    return targets


def parse_canary(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        if text.endswith("%"):
            return {"canary_percent": float(text[:-1])}
        return {"canary": int(text)}
    except ValueError:
        raise fail(f"--canary: {text!r} is neither a device count (10) nor a percentage (5%)", 2) from None


@campaign_app.command("create")
def create(
    release: Annotated[list[str], typer.Option("--release", help="Release id (repeat for several classes)")],
    targets: Annotated[Path | None, typer.Option("--targets", help="File of endpoints, one per line")] = None,
    filter_: Annotated[str | None, typer.Option("--filter", help="Registered devices to target: endpoint=GLOB, "
                                                "tag=T, class=C (/3/0/1), version=X (/3/0/3), each also with !=, "
                                                "joined by 'and'")] = None,
    canary: Annotated[str | None, typer.Option("--canary", help="Canary wave: N devices or P% [default: 5%]",
                                               show_default=False)] = None,
    waves: Annotated[int | None, typer.Option("--waves", min=1, help="Waves after the canary [default: 3]",
                                              show_default=False)] = None,
    success_threshold: Annotated[float | None, typer.Option(
        "--success-threshold", help="Share of a wave that must succeed before the next opens [default: 0.9]",
        show_default=False)] = None,
    error_threshold: Annotated[float | None, typer.Option(
        "--error-threshold", help="Share of failures (opened waves) that halts the campaign [default: 0.2]",
        show_default=False)] = None,
    max_parallel: Annotated[int | None, typer.Option("--max-parallel", min=1, help="Devices updating at once "
                                                     "[default: 50]", show_default=False)] = None,
    max_attempts: Annotated[int | None, typer.Option("--max-attempts", min=1, help="Tries per device for "
                                                     "transient failures [default: 3]", show_default=False)] = None,
    device_timeout: Annotated[float | None, typer.Option(
        "--device-timeout", help="Seconds a device may stay offline once its wave opened before it counts as "
        "failed [default: wait]", show_default=False)] = None,
    method: Annotated[str | None, typer.Option("--method", help="push or pull [default: each device's choice]",
                                               show_default=False)] = None,
    name: Annotated[str, typer.Option("--name", help="A name for people")] = "",
    api: ApiOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a campaign (state created); prints its id on the last line. Start it with `scratch campaign start`."""
    if (targets is None) == (filter_ is None):
        raise fail("give --targets FILE or --filter EXPR (one of them)", 2)
    if method not in (None, "push", "pull"):
        raise fail("--method is push or pull", 2)
    policy: dict[str, Any] = parse_canary(canary)
    for key, value in (("waves", waves), ("success_threshold", success_threshold),
                       ("error_threshold", error_threshold), ("max_parallel", max_parallel),
                       ("max_attempts", max_attempts), ("device_timeout", device_timeout)):
        if value is not None:
            policy[key] = value
    body: dict[str, Any] = {"releases": release, "name": name, "method": method, "policy": policy}
    if targets is not None:
        body["targets"] = read_targets(targets)
        body["targets_from"] = targets.name
    else:
        body["filter"] = filter_
    client = _client(api, data_dir)
    try:
        status = _call(client.post, "/api/campaigns", body)
    finally:
        client.close()
    if as_json:
        console.print_json(json.dumps(status))
        return
    sizes = ", ".join(str(w["size"]) for w in status["waves"])
    err_console.print(f"campaign {status['id']}: {status['targets']} targets in {len(status['waves'])} waves "
                      f"({sizes}); start it with `scratch campaign start {status['id']}`", highlight=False)
    console.print(status["id"], highlight=False)


def _simple(action: str, help_text: str) -> None:
    def command(campaign_id: Annotated[str, typer.Argument(help="Campaign id")], api: ApiOpt = None,
                data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        client = _client(api, data_dir)
        try:
            status = _call(client.post, f"/api/campaigns/{campaign_id}/{action}", {})
        finally:
            client.close()
        if as_json:
            console.print_json(json.dumps(status))
        else:
            console.print(f"campaign {status['id']}: {status['state']}", highlight=False)

    command.__doc__ = help_text
    campaign_app.command(action)(command)


@campaign_app.command("start")
def start(campaign_id: Annotated[str, typer.Argument(help="Campaign id")],
          approve_with: Annotated[str | None, typer.Option(
              "--approve-with", help="Deployment key (scratch release key create K --role deployment): "
              "countersigns the releases; classes that require approval need it")] = None,
          api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Start a created campaign (the canary wave first)."""
    client = _client(api, data_dir)
    try:
        status = _call(client.post, f"/api/campaigns/{campaign_id}/start", {"approve_with": approve_with})
    finally:
        client.close()
    if as_json:
        console.print_json(json.dumps(status))
    else:
        console.print(f"campaign {status['id']}: {status['state']}"
                      + (f" (approved with {approve_with})" if approve_with else ""), highlight=False)


_simple("pause", "Pause: no device starts; updates under way finish.")
_simple("resume", "Resume a paused campaign.")
_simple("cancel", "Cancel: pending devices are skipped; downloads are cancelled; installs under way finish.")


@campaign_app.command("list")
def list_(api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """The campaigns, newest first."""
    client = _client(api, data_dir)
    try:
        rows = _call(client.get, "/api/campaigns")
    finally:
        client.close()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("id", "name", "state", "targets", "succeeded", "failed", "rolled back", "skipped", "pending")
    for r in rows:
        c = r["counts"]
        table.add_row(r["id"], r["name"], r["state"], str(r["targets"]), str(c["succeeded"]), str(c["failed"]),
                      str(c["rolled-back"]), str(c["skipped"]),
                      str(c["pending"] + c["delivering"] + c["downloaded"] + c["updating"]))
    console.print(table)


@campaign_app.command("status")
def status(campaign_id: Annotated[str, typer.Argument(help="Campaign id")],
           jobs: Annotated[bool, typer.Option("--jobs", help="Also every device's job")] = False,
           api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Where a campaign stands: its state, each wave, counts by state."""
    client = _client(api, data_dir)
    try:
        st = _call(client.get, f"/api/campaigns/{campaign_id}", jobs=jobs or None)
    finally:
        client.close()
    if as_json:
        console.print_json(json.dumps(st))
        return
    console.print(f"campaign [bold]{st['id']}[/bold] {st['name']}: [bold]{st['state']}[/bold]"
                  + (f" ({st['reason']})" if st["reason"] else ""), highlight=False)
    console.print(_wave_table(st))
    if jobs:
        table = Table("endpoint", "wave", "state", "attempts", "before", "after", "result", "path", "sent",
                      "components", "reason")
        for j in st["jobs"]:
            components = ", ".join(f"{c['name']} {c['version']} {c['state']}" for c in j.get("components") or ())
            table.add_row(j["endpoint"], str(j["wave"]), f"[{STATE_STYLE[j['state']]}]{j['state']}",
                          str(j["attempts"]), j["version_before"] or "-", j["version_after"] or "-",
                          str(j["update_result"]) if j["update_result"] is not None else "-",
                          j.get("path") or "-", j.get("delivery") or "-", components or "-", j["reason"] or "")
        console.print(table)


def _wave_table(st: dict[str, Any]) -> Table:
    table = Table("wave", "size", "opened", "pending", "active", "succeeded", "failed", "rolled back", "skipped")
    for w in st["waves"]:
        opened = time.strftime("%H:%M:%S", time.localtime(w["opened_at"])) if w["opened_at"] else "-"
        table.add_row("canary" if w["wave"] == 0 else str(w["wave"]), str(w["size"]), opened, str(w["pending"]),
                      str(w["active"]), f"[green]{w['succeeded']}", f"[red]{w['failed']}",
                      f"[yellow]{w['rolled_back']}", str(w["skipped"]))
    return table


@campaign_app.command("watch")
def watch(campaign_id: Annotated[str, typer.Argument(help="Campaign id")],
          api: ApiOpt = None, data_dir: DataDirOpt = None) -> None:
    """Follow a campaign until it ends: a progress bar per wave and the counts by state."""
    client = _client(api, data_dir)
    try:
        follow(client, campaign_id, console)
    except CliError as e:
        raise fail(str(e)) from None
    finally:
        client.close()


def follow(client: ApiClient, campaign_id: str, out: Console) -> dict[str, Any]:
    """Show the campaign's progress from its event stream until it ends; returns its last status."""
    st: dict[str, Any] = client.get(f"/api/campaigns/{campaign_id}")
    with Progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=out,
                  transient=False) as progress:
        bars: dict[int, TaskID] = {}

        def show(status: dict[str, Any]) -> None:
            for w in status["waves"]:
                done = w["succeeded"] + w["failed"] + w["rolled_back"] + w["skipped"]
                counts = (f"[green]{w['succeeded']} ok[/] [red]{w['failed']} failed[/] "
                          f"[yellow]{w['rolled_back']} rolled back[/] {w['skipped']} skipped {w['active']} active")
                name = "canary" if w["wave"] == 0 else f"wave {w['wave']}"
                if w["wave"] not in bars:
                    bars[w["wave"]] = progress.add_task(name, total=w["size"], counts=counts)
                progress.update(bars[w["wave"]], completed=done, counts=counts)

        show(st)
        last = 0.0
        for event in client.stream_lines(f"/api/campaigns/{campaign_id}/events"):
            kind = event.get("kind", "")
            if kind == "status":
                st = event["status"]
            elif kind == "campaign.halted":
                progress.console.print(f"[red]halted:[/red] {event['data'].get('reason')}", highlight=False)
            now = time.monotonic()
            if kind == "campaign.finished" or now - last > 0.2:
                last = now
                st = client.get(f"/api/campaigns/{campaign_id}")
                show(st)
            if kind == "campaign.finished":
                break
    st = client.get(f"/api/campaigns/{campaign_id}")
    c = st["counts"]
    out.print(f"campaign {st['id']} {st['state']}" + (f" ({st['reason']})" if st["reason"] else "")
              + f": {c['succeeded']} succeeded, {c['failed']} failed, {c['rolled-back']} rolled back, "
              f"{c['skipped']} skipped of {st['targets']}", highlight=False)
    return st


@campaign_app.command("report")
def report(campaign_id: Annotated[str, typer.Argument(help="Campaign id")],
           out: Annotated[Path, typer.Option("--out", help="File to write")],
           fmt: Annotated[str, typer.Option("--format", help="json or csv (csv also writes FILE.cose)")] = "json",
           api: ApiOpt = None, data_dir: DataDirOpt = None) -> None:
    """Write the campaign's signed attestation report (the final one once it has ended)."""
    from lwm2m_server.fota.attestation import write_report_files

    if fmt not in ("json", "csv"):
        raise fail("--format is json or csv", 2)
    client = _client(api, data_dir)
    try:
        answer = _call(client.get, f"/api/campaigns/{campaign_id}/report")
    finally:
        client.close()
    cose = base64.b64decode(answer["cose_sign1"])
    try:
        written = write_report_files(answer["report"], cose, out, fmt)  # type: ignore[arg-type]
    except OSError as e:
        raise fail(f"cannot write {out}: {e.strerror}") from None
    s = answer["report"]["summary"]
    err_console.print(f"report of {answer['report']['campaign']['id']} "
                      f"({answer['report']['campaign']['state']}): {s}", highlight=False)
    console.print(" ".join(str(p) for p in written), highlight=False)


@campaign_app.command("verify-report")
def verify_report(file: Annotated[Path, typer.Argument(help="A report from `scratch campaign report`")],
                  key: Annotated[Path | None, typer.Option(
                      "--key", help="The server's attestation public key (PEM) [default: ask the server]",
                      show_default=False)] = None,
                  api: ApiOpt = None, data_dir: DataDirOpt = None) -> None:
    """Check a report's signature and that its content is what was signed. Exit 1 when it does not verify."""
    from firmware_object.suit.keys import load_public_key
    from lwm2m_server.fota.attestation import ReportError, verify_report_file

    try:
        if key is not None:
            pem = key.read_bytes()
        else:
            client = _client(api, data_dir)
            try:
                pem = _call(client.get, "/api/attestation-key")["public_key_pem"].encode()
            finally:
                client.close()
        public = load_public_key(pem)
    except OSError as e:
        raise fail(f"cannot read the key {key}: {e.strerror}", 2) from None
    except ValueError as e:
        raise fail(f"not a public key: {e}", 2) from None
    try:
        verified = verify_report_file(file, public)
    except ReportError as e:
        raise fail(f"{file} does not verify: {e}") from None
    except OSError as e:
        raise fail(f"cannot read {file}: {e.strerror}", 2) from None
    report_ = verified.report
    console.print(f"[green]verified[/green]: {file} is the signed report of campaign "
                  f"{report_['campaign']['id']} ({report_['campaign']['state']}), key {verified.kid}; "
                  f"{report_['summary']}", highlight=False)

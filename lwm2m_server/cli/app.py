"""``scratch``: the operator's command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lwm2m_server.cli.client import ApiClient, CliError
from lwm2m_server.cli.common import err_console, new_app, wait_for_signal
from lwm2m_server.cli.render import components_table, device_details, devices_table, print_response
from lwm2m_server.core.errors import Lwm2mError
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.paths import LwM2mPath

app = new_app(name="scratch", add_completion=False,
                  help="SCRATCh: secure firmware updates for fleets of LwM2M devices.")
device_app = new_app(help="Manage registered devices through the running server.")


@app.callback()
def _root(token: Annotated[str | None, typer.Option(
        "--token", envvar="SCRATCH_TOKEN", show_envvar=True,
        help="API token of the commands that talk to a running server (prefer the environment variable: a command "
        "line is visible to other local users)")] = None) -> None:
    """SCRATCh: secure firmware updates for fleets of LwM2M devices."""
    from lwm2m_server.cli import client

    client.token_override = token
app.add_typer(device_app, name="device")

console = Console()

ApiOpt = Annotated[str | None, typer.Option("--api", help="API base URL (default: $SCRATCH_API, or the server's "
                                            "api-url file in the data directory)")]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="Server data directory (default: "
                                                 "$SCRATCH_DATA_DIR or ~/.local/share/scratch)",
                                                 envvar="SCRATCH_DATA_DIR")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
FormatOpt = Annotated[str | None, typer.Option(
    "--format", help="Content format: text, opaque, tlv, senml-json, senml-cbor, lwm2m-cbor")]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="Seconds to wait for the device.")]


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST``, ``:PORT`` or ``[v6]:PORT``."""
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise typer.BadParameter(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise typer.BadParameter(f"expected ':PORT' after ']' in {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(p, text)
    return host or "127.0.0.1", port


def _port(p: str, text: str) -> int:
    if not p.isdigit() or not 0 <= int(p) <= 65535:
        raise typer.BadParameter(f"invalid port in {text!r}")
    return int(p)


def _run_client(fn: Any) -> None:
    try:
        fn()
    except CliError as e:
        err_console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(1) from None
    except Lwm2mError as e:  # bad path or value, caught before anything is sent
        err_console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None


def _client(api: str | None, data_dir: Path | None, timeout: float | None = None) -> ApiClient:
    return ApiClient.locate(api, data_dir, timeout=(timeout or 30.0) + 10.0)


def _path(text: str) -> str:
    return str(LwM2mPath.parse(text))


PLAIN_COAP_DEFAULT = "127.0.0.1:5683"
COAPS_DEFAULT = "127.0.0.1:5684"
PLAIN_COAP_WARNING = ("plain CoAP on {uri} has no authentication and no confidentiality: any host that reaches it "
                      "can register as any endpoint and read what devices send. Use it on a trusted network only.")


@app.command()
def server(
    coaps: Annotated[str, typer.Option("--coaps", help="CoAP over DTLS-PSK (UDP) address to serve LwM2M on; "
                                       "devices authenticate with their server credential")] = COAPS_DEFAULT,
    coap: Annotated[str | None, typer.Option("--coap", help="Also serve plain CoAP (no security) on this address; "
                                             f"needs --insecure [default with --insecure: {PLAIN_COAP_DEFAULT}]",
                                             show_default=False)] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Serve plain CoAP (no authentication, no "
                                           "confidentiality) beside DTLS, on --coap")] = False,
    api: Annotated[str, typer.Option("--api", help="Address of the management API (loopback)")] = "127.0.0.1:8080",
    data_dir: DataDirOpt = None,
    models: Annotated[Path | None, typer.Option("--models", help="Folder of OMA DDF XML files to add",
                                                exists=True, file_okay=False)] = None,
    rd_rate: Annotated[float, typer.Option(
        "--rd-rate", min=0, help="Registration requests (/rd: Register, Update, De-register) per second allowed per "
        "source address and per DTLS identity; beyond: 5.03 with Max-Age. 0: unlimited")] = 100.0,
    rd_burst: Annotated[int, typer.Option("--rd-burst", min=1, help="Burst of /rd requests allowed above --rd-rate "
                                          "(sized for 1,000 devices behind one address registering at once)")]
    = 2000,
    rd_endpoint_rate: Annotated[float, typer.Option(
        "--rd-endpoint-rate", min=0, help="/rd requests per second allowed per endpoint name. 0: unlimited")] = 1.0,
    rd_endpoint_burst: Annotated[int, typer.Option("--rd-endpoint-burst", min=1, help="Burst of /rd requests "
                                                   "allowed per endpoint above --rd-endpoint-rate")] = 20,
    max_registrations: Annotated[int, typer.Option(
        "--max-registrations", min=1, help="Registrations held at most; beyond, a new endpoint gets 5.03 with "
        "Max-Age (a DTLS device may take the place of a plain-CoAP one; a live DTLS one is never evicted)")]
    = 100_000,
    max_lifetime: Annotated[int, typer.Option(
        "--max-lifetime", min=1, help="Longest registration lifetime granted (s); a device asking for more "
        "expires as if it had asked for this")] = 86_400,
    max_block1: Annotated[int, typer.Option(
        "--max-block1", min=1, help="Block-wise request bodies assembled at once (5.03 beyond)")] = 1000,
    max_block1_per_remote: Annotated[int, typer.Option(
        "--max-block1-per-remote", min=1, help="... from one remote address and port")] = 4,
    lockout_failures: Annotated[int, typer.Option(
        "--dtls-lockout-failures", min=0, help="Failed DTLS handshakes of one identity (from any "
        "address: reported), or of unknown identities from one address (locked out) (0: never)")] = 10,
    lockout_window: Annotated[float, typer.Option("--dtls-lockout-window", help="... within this many "
                                                  "seconds")] = 60.0,
    lockout_seconds: Annotated[float, typer.Option("--dtls-lockout-seconds", help="How long a locked-out address "
                                                   "is refused unknown identities")] = 300.0,
    node_id: Annotated[str, typer.Option("--node-id", help="This server node's name (1-64 characters): recorded "
                                         "with each registration and campaign job it holds")] = "node-1",
    cluster: Annotated[bool, typer.Option(
        "--cluster", help="One of several nodes on one database ($SCRATCH_DATABASE_URL, PostgreSQL): hold only this "
        "node's registrations, write a heartbeat, take over the campaign jobs of dead nodes (docs/cluster.md)")]
    = False,
    public_coaps: Annotated[str | None, typer.Option(
        "--public-coaps", help="HOST:PORT devices reach this node's DTLS listener at, when a balancer is in front "
        "(Package URIs name it)", show_default=False)] = None,
    public_coap: Annotated[str | None, typer.Option(
        "--public-coap", help="... and its plain CoAP listener", show_default=False)] = None,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="Server processes sharing the UDP ports (SO_REUSEPORT) and the database, one per "
        "core: each a cluster node (NODE-ID-wK); worker 1 serves --api, the others a free port (docs/cluster.md)")]
    = 1,
    worker: Annotated[int | None, typer.Option("--worker", min=1, hidden=True,
                                               help="(internal) run as worker K of --workers")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at debug level")] = False,
    bench_api: Annotated[bool, typer.Option(
        "--bench-api", help="Also serve Leshan's write route PUT /api/clients/EP/PATH WITHOUT authentication, for "
        "the neutral load tool (loopback API only)")] = False,
) -> None:
    """Run the LwM2M server and its management API until interrupted.

    Devices connect over CoAP with DTLS-PSK (--coaps); each one's PSK identity is its server credential in the
    data directory's vault-backed store and binds it to its endpoint name. Plain CoAP only with --insecure.

    The vault key is $SCRATCH_VAULT_KEY, else the file $SCRATCH_VAULT_KEY_FILE names, else DATA_DIR/vault.key if
    it exists (from older versions: move it out), else ~/.config/scratch/vault.key ($XDG_CONFIG_HOME), made on
    first start.
    """
    from lwm2m_server.object_files import model_with_dir
    from lwm2m_server.server import Lwm2mServer, ServerSettings, default_data_dir

    if coap is not None and not insecure:
        raise typer.BadParameter("plain CoAP has no authentication and no confidentiality: add --insecure to serve "
                                 "it (beside DTLS on --coaps)", param_hint="'--coap'")
    if not (lockout_window > 0 and lockout_seconds > 0):
        raise typer.BadParameter("must be positive", param_hint="'--dtls-lockout-window' / '--dtls-lockout-seconds'")
    if workers > 1:
        from lwm2m_server.cluster.workers import run_workers

        if worker is not None:
            raise typer.BadParameter("a worker starts no workers", param_hint="'--workers'")
        given = [parse_hostport(coaps, 5684)[1], parse_hostport(api, 8080)[1]]
        if insecure:
            given.append(parse_hostport(coap or PLAIN_COAP_DEFAULT, 5683)[1])
        if not all(given):
            raise typer.BadParameter("workers share given ports: port 0 (any free port) would give each its own",
                                     param_hint="'--workers'")
        argv = sys.argv[sys.argv.index("server") + 1:] if "server" in sys.argv else []
        raise typer.Exit(run_workers(argv, workers, say=lambda text: console.print(text, highlight=False)))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shost, sport = parse_hostport(coaps, 5684)
    chost, cport = parse_hostport(coap or PLAIN_COAP_DEFAULT, 5683)
    ahost, aport = parse_hostport(api, 8080)
    try:
        model = model_with_dir(models)
    except Lwm2mError as e:
        err_console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    folder = data_dir or default_data_dir()
    if worker is not None:  # one of --workers: a cluster node on the shared ports
        node_id, cluster = f"{node_id}-w{worker}", True
        if worker > 1:
            aport = 0
    try:
        settings = ServerSettings(data_dir=folder, coap_host=chost, coap_port=cport if insecure else None,
                                  coaps_host=shost, coaps_port=sport, api_host=ahost, api_port=aport, models_dir=models,
                                  bench_api=bench_api, rd_rate=rd_rate, rd_burst=rd_burst,
                                  rd_endpoint_rate=rd_endpoint_rate, rd_endpoint_burst=rd_endpoint_burst,
                                  max_registrations=max_registrations, max_lifetime=max_lifetime,
                                  max_block1_assemblies=max_block1, max_block1_per_remote=max_block1_per_remote,
                                  dtls_lockout_failures=lockout_failures, dtls_lockout_window=lockout_window,
                                  dtls_lockout_seconds=lockout_seconds, node_id=node_id, cluster=cluster,
                                  public_coaps=_public(public_coaps, "--public-coaps"),
                                  public_coap=_public(public_coap, "--public-coap"),
                                  shared_ports=worker is not None, api_url_file=worker in (None, 1))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None

    async def main() -> None:
        from bootstrap.vault import VaultError, open_vault

        try:
            vault = open_vault(folder)
        except VaultError as e:
            raise CliError(f"cannot open the vault: {e}") from None
        srv = Lwm2mServer(settings, model=model, open_credentials=_server_credentials(folder), vault=vault)
        try:
            await srv.start()
        except (OSError, ValueError, Lwm2mError) as e:
            await srv.stop()
            raise CliError(f"cannot start the server: {e}") from None
        where = f"{srv.coaps_uri} (DTLS-PSK)" + (f" and {srv.coap_uri} (plain CoAP)" if insecure else "")
        console.print(f"LwM2M server on [bold]{where}[/bold], API on [bold]{srv.api_url}[/bold], "
                      f"data in {settings.data_dir} ({len(model)} object definitions)", highlight=False,
                      soft_wrap=True)
        if insecure:
            err_console.print(f"[yellow]warning:[/yellow] {PLAIN_COAP_WARNING.format(uri=srv.coap_uri)}",
                              highlight=False)
        await wait_for_signal()
        console.print("stopping...")
        await srv.stop()

    _run_client(lambda: asyncio.run(main()))


def _public(value: str | None, option: str) -> str | None:
    """A ``--public-*`` address as ``host:port`` for a URI (an IPv6 host in brackets)."""
    if value is None:
        return None
    host, port = parse_hostport(value, 0)
    if not port:
        raise typer.BadParameter("give HOST:PORT", param_hint=f"'{option}'")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _server_credentials(data_dir: Path) -> Any:
    """What the server calls with its database to get the device credentials: the vault-backed SQL store
    (:func:`bootstrap.vault.open_vault`), loaded, restricted to server credentials (a bootstrap
    credential never opens a session with the LwM2M server)."""

    def open_credentials(database: Any) -> Any:
        from bootstrap.credentials import CredentialKind
        from bootstrap.sql_credentials import SqlCredentialStore
        from bootstrap.vault import open_vault

        store = SqlCredentialStore(database, open_vault(data_dir))
        credentials = store.for_kind(CredentialKind.SERVER)
        logging.getLogger(__name__).info("%d active server credential(s)", credentials.load())
        return credentials

    return open_credentials


@app.command("whoami")
def whoami(api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Who the API token acts as: its tenant (and that tenant's brand), roles and id."""

    def run() -> None:
        client = _client(api, data_dir)
        me, tenant = client.get("/api/whoami"), client.get("/api/tenant")
        if as_json:
            print(json.dumps({**me, "tenant_name": tenant["name"], "brand": tenant["brand"]}, indent=2))
            return
        product = (tenant["brand"] or {}).get("product_name") or "SCRATCh"
        console.print(f"[bold]{product}[/bold]: tenant {me['tenant']} ({me['kind']}, {tenant['name']}), roles "
                      f"{', '.join(me['roles'])}, token {me['subject']}", highlight=False)

    _run_client(run)


@device_app.command("list")
def device_list(api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False,
                gateway: Annotated[str | None, typer.Option(
                    "--gateway", help="Only the end devices behind this gateway")] = None) -> None:
    """List registered devices (an end device behind a gateway shows 'via GATEWAY /PREFIX' as its address)."""
    def run() -> None:
        devices = _client(api, data_dir).get("/api/devices", **({"gateway": gateway} if gateway else {}))
        if as_json:
            print(json.dumps(devices, indent=2))
        else:
            console.print(devices_table(devices))
    _run_client(run)


@device_app.command("show")
def device_show(endpoint: str, api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """One device: its registration, the gateway it sits behind, or the end devices behind it."""
    def run() -> None:
        device = _client(api, data_dir).get(f"/api/devices/{endpoint}")
        if as_json:
            print(json.dumps(device, indent=2))
        else:
            console.print(device_details(device))
    _run_client(run)


@device_app.command("components")
def device_components(endpoint: str, api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False,
                      timeout: TimeoutOpt = None) -> None:
    """The components of a device's system (object 32700), read now: name, kind, version, state, digest."""
    def run() -> None:
        answer = _client(api, data_dir, timeout).get(f"/api/devices/{endpoint}/components", timeout=timeout)
        if as_json:
            print(json.dumps(answer, indent=2))
        else:
            console.print(components_table(endpoint, answer["components"]))
    _run_client(run)


def _answer(answer: dict[str, Any], path: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(answer, indent=2))
    else:
        print_response(console, answer, path, ObjectModel.default())


@device_app.command("read")
def device_read(endpoint: str, path: str, format: FormatOpt = None, api: ApiOpt = None,
                data_dir: DataDirOpt = None, as_json: JsonOpt = False, timeout: TimeoutOpt = None) -> None:
    """Read an object, instance, resource or resource instance."""
    def run() -> None:
        p = _path(path)
        answer = _client(api, data_dir, timeout).get(f"/api/devices/{endpoint}/read", path=p, format=format,
                                                     timeout=timeout)
        _answer(answer, p, as_json)
    _run_client(run)


@device_app.command("write")
def device_write(
    endpoint: str, path: str,
    value: Annotated[str, typer.Argument(help="The value (opaque in hex, booleans true/false, links O:I); for an "
                                         "object instance or multiple resource, a JSON object of id -> value")],
    format: FormatOpt = None,
    update: Annotated[bool, typer.Option("--update", help="Partial update (POST) instead of replace (PUT)")] = False,
    type: Annotated[str | None, typer.Option("--type", help="Resource type, for resources the model lacks")] = None,
    api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False, timeout: TimeoutOpt = None,
) -> None:
    """Write a resource, resource instance or object instance."""
    def run() -> None:
        p = _path(path)
        depth = len(LwM2mPath.parse(p).ids)
        body: dict[str, Any] = {"path": p, "format": format, "type": type, "mode": "update" if update else "replace"}
        structured = value.lstrip().startswith("{")
        if depth == 2:
            body["resources"] = _json_object(value)
        elif depth == 3 and structured:
            body["values"] = _json_object(value)
        else:
            body["value"] = value
        _answer(_client(api, data_dir, timeout).post(f"/api/devices/{endpoint}/write", body, timeout=timeout),
                p, as_json)
    _run_client(run)


def _json_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise CliError(f"expected a JSON object of id -> value: {e}") from None
    if not isinstance(obj, dict):
        raise CliError("expected a JSON object of id -> value")
    return obj


@device_app.command("execute")
def device_execute(endpoint: str, path: str,
                   args: Annotated[str, typer.Argument(help="Execute arguments, e.g. 0='x',1")] = "",
                   api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False,
                   timeout: TimeoutOpt = None) -> None:
    """Execute a resource (with optional arguments)."""
    def run() -> None:
        p = _path(path)
        _answer(_client(api, data_dir, timeout).post(f"/api/devices/{endpoint}/execute", {"path": p, "args": args},
                                                     timeout=timeout), p, as_json)
    _run_client(run)


@device_app.command("rekey")
def device_rekey(endpoint: str, api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False,
                 timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the device to "
                                                        "register with its new key")] = 60.0) -> None:
    """Rotate a device's server key: it bootstraps again (/1/x/9) and registers with a fresh PSK; the old one
    stops working. Prints the old and new PSK identities (never a key)."""
    def run() -> None:
        answer = _client(api, data_dir, timeout).post(f"/api/devices/{endpoint}/rekey", {}, timeout=timeout)
        if as_json:
            print(json.dumps(answer, indent=2))
            return
        console.print(f"{endpoint}: rekeyed in {answer['seconds']:.1f} s; identity {answer['old_identity']} -> "
                      f"{answer['new_identity']}", highlight=False)
    _run_client(run)


@device_app.command("discover")
def device_discover(endpoint: str, path: Annotated[str, typer.Argument()] = "/", api: ApiOpt = None,
                    data_dir: DataDirOpt = None, as_json: JsonOpt = False, timeout: TimeoutOpt = None) -> None:
    """Discover the objects, instances, resources and attributes a device has."""
    def run() -> None:
        p = _path(path)
        _answer(_client(api, data_dir, timeout).get(f"/api/devices/{endpoint}/discover", path=p, timeout=timeout),
                p, as_json)
    _run_client(run)


@device_app.command("attributes")
def device_attributes(
    endpoint: str, path: str,
    attributes: Annotated[list[str], typer.Argument(help="NAME=VALUE (pmin, pmax, gt, lt, st, ...); NAME alone "
                                                    "removes it")],
    api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False, timeout: TimeoutOpt = None,
) -> None:
    """Write-Attributes (notification attributes such as pmin and pmax)."""
    def run() -> None:
        p = _path(path)
        attrs: dict[str, float | None] = {}
        for item in attributes:
            name, sep, val = item.partition("=")
            try:
                attrs[name] = (float(val) if "." in val else int(val)) if sep else None
            except ValueError:
                raise CliError(f"attribute {name} needs a number, not {val!r}") from None
        _answer(_client(api, data_dir, timeout).post(f"/api/devices/{endpoint}/attributes",
                                                     {"path": p, "attributes": attrs}, timeout=timeout), p, as_json)
    _run_client(run)


@device_app.command("delete")
def device_delete(endpoint: str, path: str, api: ApiOpt = None, data_dir: DataDirOpt = None,
                  as_json: JsonOpt = False, timeout: TimeoutOpt = None) -> None:
    """Delete an object instance."""
    def run() -> None:
        p = _path(path)
        _answer(_client(api, data_dir, timeout).post(f"/api/devices/{endpoint}/delete", {"path": p},
                                                     timeout=timeout), p, as_json)
    _run_client(run)


@device_app.command("observe")
def device_observe(
    endpoint: str, path: str,
    count: Annotated[int, typer.Option("--count", help="Stop after this many notifications", min=0)] = 1,
    format: FormatOpt = None, api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after this many seconds without a "
                                           "notification")] = 60.0,
) -> None:
    """Observe a path: print its value, then each notification, then cancel the observation."""
    def run() -> None:
        p = _path(path)
        client = _client(api, data_dir, timeout)
        for line in client.stream_lines(f"/api/devices/{endpoint}/observe", path=p, count=count, format=format,
                                        timeout=timeout):
            if as_json:
                print(json.dumps(line), flush=True)
            elif "end" in line:
                if line["end"] != "done":
                    raise CliError(f"observation ended: {line.get('error') or line['end']}")
            elif "notification" in line:
                _answer({"code": "notification", **line}, p, False)
            else:
                if not line.get("observing", True):
                    raise CliError(f"{endpoint} answered the Observe of {p} without starting an observation")
                _answer(line, p, False)
    _run_client(run)


TagsArg = Annotated[list[str], typer.Argument(help="Tags: 1 to 64 characters among letters, digits and . _ : -")]


def _print_tags(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(answer, indent=2))
    else:
        console.print(f"{answer['endpoint']}: {', '.join(answer['tags']) or '(no tags)'}", highlight=False)


@device_app.command("tag")
def device_tag(endpoint: str, tags: TagsArg, api: ApiOpt = None, data_dir: DataDirOpt = None,
               as_json: JsonOpt = False) -> None:
    """Put tags on a device (it need not be registered); prints its tags. Tags pick campaign targets (tag=T)."""
    _run_client(lambda: _print_tags(_client(api, data_dir).post(f"/api/devices/{endpoint}/tags", {"add": tags}),
                                    as_json))


@device_app.command("untag")
def device_untag(endpoint: str, tags: TagsArg, api: ApiOpt = None, data_dir: DataDirOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Take tags off a device (a tag it does not carry is no error); prints its tags."""
    _run_client(lambda: _print_tags(_client(api, data_dir).post(f"/api/devices/{endpoint}/tags",
                                                                {"remove": tags}), as_json))


@device_app.command("tags")
def device_tags(endpoint: Annotated[str | None, typer.Argument(help="One device (default: every tagged one)")] = None,
                api: ApiOpt = None, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Show the tags of one device, or of every tagged device."""
    def run() -> None:
        client = _client(api, data_dir)
        if endpoint is not None:
            _print_tags(client.get(f"/api/devices/{endpoint}/tags"), as_json)
            return
        every: dict[str, list[str]] = client.get("/api/tags")
        if as_json:
            print(json.dumps(every, indent=2))
            return
        if not every:
            console.print("no tagged devices")
            return
        table = Table(title=f"{len(every)} tagged device{'s' if len(every) != 1 else ''}")
        table.add_column("endpoint", overflow="fold")
        table.add_column("tags", overflow="fold")
        for ep, ep_tags in every.items():
            table.add_row(ep, ", ".join(ep_tags))
        console.print(table)
    _run_client(run)


def _mount_subcommands() -> None:
    from client_sim.cli import sim

    app.command("sim", help="Run simulated LwM2M devices against a server until interrupted.")(sim)

    from lwm2m_server.cli.firmware import firmware_app

    app.add_typer(firmware_app, name="firmware")

    from lwm2m_server.cli.factory import factory_app

    app.add_typer(factory_app, name="factory")

    from lwm2m_server.cli.bootstrap import bootstrap_server

    app.command("bootstrap-server", help="Run the LwM2M bootstrap server until interrupted.")(bootstrap_server)

    from lwm2m_server.cli.release import release_app

    app.add_typer(release_app, name="release")

    from lwm2m_server.cli.campaign import campaign_app

    app.add_typer(campaign_app, name="campaign")

    from lwm2m_server.cli.webhook import webhook_app

    app.add_typer(webhook_app, name="webhook")

    from lwm2m_server.cli.tenant import tenant_app, token_app, user_app

    app.add_typer(tenant_app, name="tenant")
    app.add_typer(token_app, name="token")
    app.add_typer(user_app, name="user")

    from lwm2m_server.cli.usage import usage_app

    app.add_typer(usage_app, name="usage")

    from lwm2m_server.cli.cluster import cluster_app

    app.add_typer(cluster_app, name="cluster")

    from lwm2m_server.cli.demo import demo

    app.command("demo", help="The main job: a server and simulated devices on loopback, managed end to end.")(demo)


_mount_subcommands()


def main() -> None:
    app(prog_name="scratch")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``scratch bootstrap-server``: the LwM2M bootstrap server on the data directory the LwM2M server uses.

It shares the database (credentials) and the vault key with ``scratch server``: the server PSKs it issues are
found by the LwM2M server's DTLS handshake, and the keys it retires stop working there. Security events go to
the shared audit log (``DATA_DIR/audit.jsonl``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lwm2m_server.cli.common import err_console

console = Console(soft_wrap=True)

DEFAULT_COAPS = "127.0.0.1:5784"
DEFAULT_SERVER_URI = "coaps://127.0.0.1:5684"


def bootstrap_server(
    coaps: Annotated[str, typer.Option("--coaps", help="DTLS-PSK address to serve bootstrap on")] = DEFAULT_COAPS,
    server_uri: Annotated[str, typer.Option("--server-uri", help="LwM2M server the devices are sent to "
                                            "(coaps://HOST:PORT)")] = DEFAULT_SERVER_URI,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="SCRATCH_DATA_DIR",
                                                  help="Data directory shared with `scratch server`")] = None,
    lifetime: Annotated[int, typer.Option("--lifetime", min=30, help="Registration lifetime given to devices (s)")]
    = 300,
    rate: Annotated[float, typer.Option("--rate", min=0, help="Bootstrap requests per second allowed per source "
                                        "address and per identity; beyond: 5.03 with Max-Age. 0: unlimited")]
    = 100.0,
    burst: Annotated[int, typer.Option("--burst", min=1, help="Requests allowed at once before --rate applies "
                                       "(sized for 1,000 devices behind one address bootstrapping at once)")]
    = 2000,
    identity_rate: Annotated[float, typer.Option(
        "--identity-rate", min=0, help="Bootstrap requests per second allowed per identity alone (each one issues "
        "a key). 0: unlimited")] = 0.2,
    identity_burst: Annotated[int, typer.Option("--identity-burst", min=1, help="... with this burst")] = 20,
    max_sessions: Annotated[int, typer.Option("--max-sessions", min=1, help="Bootstraps run at once (5.03 beyond)")]
    = 1000,
    lockout_failures: Annotated[int, typer.Option(
        "--dtls-lockout-failures", min=0, help="Failed DTLS handshakes of one identity (from any "
        "address: reported), or of unknown identities from one address (locked out) (0: never)")] = 10,
    lockout_window: Annotated[float, typer.Option("--dtls-lockout-window", min=0.001,
                                                  help="... within this many seconds")] = 60.0,
    lockout_seconds: Annotated[float, typer.Option(
        "--dtls-lockout-seconds", min=0.001,
        help="How long a locked-out address is refused unknown identities")] = 300.0,
    coap: Annotated[str | None, typer.Option("--coap", help="Also serve plain CoAP here (needs --insecure)")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow --coap: keys then travel in clear text to "
                                           "whoever names an endpoint. For lab use only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at debug level")] = False,
) -> None:
    """Run the bootstrap server until interrupted: devices with factory credentials get their LwM2M server
    account and a fresh PSK for it."""
    from bootstrap.server import BootstrapServer, BootstrapSettings
    from lwm2m_server.audit import AuditLog
    from lwm2m_server.cli.app import parse_hostport
    from lwm2m_server.cli.common import wait_for_signal
    from lwm2m_server.cli.factory import _store
    from lwm2m_server.data_dir import default_data_dir

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if coap is not None and not insecure:
        raise typer.BadParameter("plain CoAP hands out keys in clear text: add --insecure to allow it",
                                 param_hint="--coap")
    if not server_uri.startswith("coaps://") and not insecure:
        raise typer.BadParameter("must be coaps://HOST:PORT (coap:// only with --insecure)", param_hint="--server-uri")
    host, port = parse_hostport(coaps, 5784)
    folder = data_dir or default_data_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings = BootstrapSettings(server_uri=server_uri, coaps_host=host, coaps_port=port, lifetime=lifetime,
                                 rate=rate, burst=burst, identity_rate=identity_rate, identity_burst=identity_burst,
                                 max_sessions=max_sessions, lockout_failures=lockout_failures,
                                 lockout_window=lockout_window, lockout_seconds=lockout_seconds)
    if coap is not None:
        settings.coap_host, settings.coap_port = parse_hostport(coap, 5783)
        err_console.print("[yellow]warning:[/yellow] --insecure: plain CoAP on "
                          f"{settings.coap_host}:{settings.coap_port} sends device keys unencrypted", highlight=False)
    store = _store(folder, need_keys=True)
    active = store.load()
    audit = AuditLog.in_data_dir(folder)

    def record(kind: str, data: dict[str, object]) -> None:
        audit.record(kind, time.time(), data, source="bootstrap-server")

    async def main() -> None:
        srv = BootstrapServer(settings, store, on_event=record)
        try:
            await srv.start()
        except OSError as e:
            err_console.print(f"[red]error:[/red] cannot start the bootstrap server: {e}", highlight=False)
            raise typer.Exit(1) from None
        console.print(f"bootstrap server on [bold]{srv.coaps_uri}[/bold], sending devices to {server_uri} "
                      f"({active} active credentials, data in {folder})", highlight=False)
        try:
            await wait_for_signal()
        finally:
            console.print("stopping...")
            await srv.stop()
            audit.close()

    asyncio.run(main())

"""``scratch cluster``: the nodes sharing the database, and the UDP balancer's configuration in front of them.

``nodes`` reads the ``node`` table of the data directory's database (``$SCRATCH_DATABASE_URL`` when set): each
node's id, when it started, when it was last heard of, whether it counts as alive (heard of within
``--timeout`` seconds, the servers' default 10) and where it serves. ``nginx-config`` prints the nginx.conf that
docs/cluster.md explains and tests/integration/test_nginx_balancer.py tests. Bad input exits 2, one line on stderr.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from lwm2m_server.cli.common import fail, new_app, quiet_logs
from lwm2m_server.core.errors import Lwm2mError

cluster_app = new_app(help="Several nodes on one database: list them, print the UDP balancer's nginx.conf.")

DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", envvar="SCRATCH_DATA_DIR",
                                                 help="Server data directory (holds the database)")]


@cluster_app.command("nodes")
def nodes(
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds without a heartbeat after which a "
                                           "node is dead")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """The nodes of the database: id, started, last heartbeat, alive, addresses."""
    from lwm2m_server.data_dir import default_data_dir
    from lwm2m_server.storage.database import Database
    from lwm2m_server.storage.node_store import SqlNodeStore

    quiet_logs()
    try:
        with Database.for_data_dir(data_dir or default_data_dir()) as database:
            records = SqlNodeStore(database).list()
    except Lwm2mError as e:
        raise fail(str(e)) from None
    now = time.time()
    rows = [{"node": n.node_id, "started_at": n.started_at, "seen_at": n.seen_at, "alive": n.seen_at >= now - timeout,
             "coaps": n.coaps_uri, "coap": n.coap_uri, "api": n.api_url} for n in records]
    if as_json:
        print(json.dumps({"nodes": rows}, indent=2))
        return
    if not rows:
        print("no node has written a heartbeat (nodes run with scratch server --cluster or --workers)")
        return
    for row in rows:
        state = "alive" if row["alive"] else "dead"
        print(f"{row['node']}  {state}  seen {now - float(row['seen_at']):.1f} s ago  started "
              f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(float(row['started_at'])))} UTC  "
              + "  ".join(str(row[k]) for k in ("coaps", "coap", "api") if row[k]))


@cluster_app.command("nginx-config")
def nginx_config(
    listen: Annotated[str, typer.Option("--listen", help="HOST:PORT devices send to (the balancer's)")],
    node: Annotated[list[str], typer.Option("--node", help="HOST:PORT of a node's listener (repeat per node)")],
    fail_timeout: Annotated[int, typer.Option("--fail-timeout", min=1, help="Seconds a failed node gets no new "
                                              "device session")] = 10,
) -> None:
    """Print an nginx.conf balancing LwM2M UDP (CoAP or DTLS) over the nodes, one device per node (source address
    and port), with failover to the live nodes (see docs/cluster.md)."""
    from lwm2m_server.cluster.nginx import render_nginx_config

    try:
        print(render_nginx_config(listen=listen, nodes=node, fail_timeout=fail_timeout), end="")
    except ValueError as e:
        raise fail(str(e), 2) from None

"""The UDP balancer in front of several server nodes: a complete nginx.conf for nginx's stream module.

:func:`render_nginx_config` guarantees a configuration in which

- every datagram of one device (one source *address and port*) goes to one node, and keeps going there while the
  node lives: an nginx UDP session per device, and a consistent hash of ``$remote_addr:$remote_port`` that picks the
  node of each new session;
- the nodes can send to a device at any time (Read, Write, Execute, Observe notifications, block-wise push): the
  number of datagrams a node may send in a session is not limited (``proxy_responses`` is left unset);
- a session lasts ``session_timeout`` seconds after its last datagram either way, so that it spans the gap between
  two Updates of a device (the LwM2M default lifetime is 86,400 s);
- when a node dies (its port answers ICMP port-unreachable), each session on it ends, as failed, at one of the
  device's next datagrams, and the device's next session goes to a live node: nginx 1.22 loses the device's first
  three datagrams after the death (the 4th reaches the live node; a CoAP client retransmits 4 times). The dead node
  gets no new session for ``fail_timeout`` seconds, then one new session tries it again. (nginx 1.22 also relays
  the first ICMP error to the device as an empty datagram, which CoAP and DTLS stacks drop; fixed in 1.23.0.)

It does not guarantee, and cannot:

- that a node sees the device's address: it sees nginx's, one port per session. A session that ends (idle for
  ``session_timeout``, nginx reloaded, the node died) gives the device a new port at the node, so its DTLS session
  is gone (the device handshakes again) and its registration's address changes with its next Update.
  ``proxy_bind $remote_addr:$remote_port transparent;`` in the ``server`` block makes nginx send from the device's
  own address and port, so a node sees the device (and a later session of the device reaches the same node from
  the same address): it needs nginx's master to run as root (on Linux the workers keep CAP_NET_RAW for it, nginx
  1.13.8 and later), and routing that brings the nodes' replies back to the nginx machine (policy routing to a
  local table, see nginx's "IP Transparency and Direct Server Return" article). It is not used by the tests.
- that a device moves back to its node when that node comes back: a session stays on the node it was given until
  it ends.
- detection of a dead node before a device sends to it: open-source nginx has no active UDP health checks, and
  ``proxy_next_upstream`` only acts when connecting to a node fails, which for UDP means a local error (no route).
- leaving a node that swallows datagrams without an ICMP error (a firewall's DROP, a hung process): nginx sees no
  error, and a timed-out session does not count as a failure, so the hash keeps sending the device there.

Nothing here starts nginx; tests/nginx_balancer.py does, and docs/cluster.md explains the deployment.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Literal

__all__ = ["DEFAULT_MODULE_PATH", "parse_endpoint", "render_nginx_config"]

DEFAULT_MODULE_PATH = "/usr/lib/nginx/modules/ngx_stream_module.so"  # Debian's libnginx-mod-stream
UPSTREAM = "lwm2m_nodes"

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}( [A-Za-z_][A-Za-z0-9_.-]{0,31})?")  # user [group]


def parse_endpoint(text: str, *, wildcard: bool = False) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as ``(host, port)``; the host an IP literal or a DNS name (``*``
    too when ``wildcard``), the port 1-65535. Raises ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"an endpoint is a 'host:port' string, not {type(text).__name__}")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not 'host:port' (IPv6 as '[::1]:5683')")
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{text!r}: {host} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as '[::1]:5683'")
    elif not (host == "*" and wildcard) and _HOSTNAME.fullmatch(host) is None:
        raise ValueError(f"{text!r}: {host!r} is neither an IP address nor a host name")
    return host, int(port_text)


def _duration(name: str, seconds: float, *, whole_seconds: bool = False) -> str:
    """nginx's time syntax: whole milliseconds, at least one; whole seconds where nginx takes no less (the
    ``fail_timeout`` of an upstream server)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"{name} is a number of seconds, not {seconds!r}")
    if whole_seconds:
        if not (seconds >= 1 and float(seconds).is_integer()):
            raise ValueError(f"{name} must be a whole number of seconds, at least 1, not {seconds!r}")
        return f"{int(seconds)}s"
    milliseconds = round(seconds * 1000)
    if not milliseconds >= 1:
        raise ValueError(f"{name} must be at least 0.001 s, not {seconds!r}")
    return f"{milliseconds // 1000}s" if milliseconds % 1000 == 0 else f"{milliseconds}ms"


def _path(name: str, value: str) -> str:
    """A file path as a quoted nginx string."""
    if not value or any(c in value for c in '"\\') or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{name} must be a non-empty path without quotes, backslashes or control characters")
    return f'"{value}"'


def render_nginx_config(
    *,
    listen: str,
    nodes: Sequence[str],
    module: str | None = DEFAULT_MODULE_PATH,
    pid_file: str = "/run/scratch-balancer.pid",
    error_log: str = "stderr",
    user: str | None = None,
    worker_processes: int | Literal["auto"] = "auto",
    session_timeout: float = 90_000.0,
    fail_timeout: float = 10.0,
    buffer_size: int = 4096,
    connections: int = 16_384,
) -> str:
    """A complete nginx.conf balancing LwM2M over UDP (CoAP and DTLS datagrams alike) from ``listen`` to ``nodes``.

    ``module``: the stream module to load (None when nginx has it built in). ``pid_file`` and ``error_log`` are
    the master's. ``user``: the account (``"user group"``) the workers run as; None is nginx's built-in default
    when started as root, ``nobody nogroup`` on Debian (``user nobody;`` alone fails there: it means group
    ``nobody``, which does not exist). ``session_timeout``: seconds a device's session outlives its last datagram
    (longer than the device's Update period, else each Update arrives from a new nginx port). ``fail_timeout``:
    whole seconds (nginx takes no fraction there) a node that failed once gets no new session. ``buffer_size``:
    bytes of one datagram (nginx cuts larger ones, silently); a 1,024-byte block with its CoAP and DTLS headers
    takes about 1,200. ``connections``: per worker, two a device session (the device's and the socket to its
    node). Raises ValueError on a bad argument.
    """
    listen_host, listen_port = parse_endpoint(listen, wildcard=True)
    if isinstance(nodes, str) or not nodes:
        raise ValueError("at least one node is needed, as a sequence of 'host:port' strings")
    parsed = [parse_endpoint(node) for node in nodes]
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"a node is listed twice: {list(nodes)}")
    if module is not None:
        module = _path("module", module)
    if user is not None and _USER.fullmatch(user) is None:
        raise ValueError(f"{user!r} is not 'user' or 'user group'")
    if worker_processes != "auto" and (
            isinstance(worker_processes, bool) or not isinstance(worker_processes, int) or worker_processes < 1):
        raise ValueError(f"worker_processes is 'auto' or a positive number, not {worker_processes!r}")
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1280:
        raise ValueError(f"buffer_size must hold a whole datagram: at least 1280 bytes, not {buffer_size!r}")
    if isinstance(connections, bool) or not isinstance(connections, int) or connections < 16:
        raise ValueError(f"connections must be at least 16, not {connections!r}")
    session = _duration("session_timeout", session_timeout)
    fail = _duration("fail_timeout", fail_timeout, whole_seconds=True)

    lines = ["# nginx.conf of the UDP balancer in front of the SCRATCh LwM2M nodes",
             "# (rendered by lwm2m_server.cluster.nginx; docs/cluster.md explains it)."]
    if module is not None:
        lines.append(f"load_module {module};")
    if user is not None:
        lines.append(f"user {user};")
    lines += [
        f"worker_processes {worker_processes};",
        f"worker_rlimit_nofile {connections};",
        f"pid {_path('pid_file', pid_file)};",
        f"error_log {_path('error_log', error_log)} notice;",
        "",
        "events {",
        "    # Per worker: two for each device session (the device's and the socket to its node).",
        f"    worker_connections {connections};",
        "}",
        "",
        "stream {",
        f"    upstream {UPSTREAM} {{",
        "        # Source affinity. A device's DTLS session and its CoAP registration belong to its address AND",
        "        # port, and many devices behind one NAT share one address: keying on the address alone would pin a",
        "        # whole NAT to one node. Consistent hashing: a node that leaves moves only its own devices.",
        "        # (The ':' keeps 1.2.3.4 port 5683 apart from 1.2.3.45 port 683.)",
        "        hash $remote_addr:$remote_port consistent;",
        "        # The nodes' failure counts, shared by all workers.",
        f"        zone {UPSTREAM} 64k;",
        "        # Passive failover: a dead node's port answers ICMP port-unreachable; when that error comes back on",
        "        # a send, nginx ends the session as failed (the datagrams in between are lost), the node gets no new",
        f"        # session for {fail}, and the device's next session goes to the next live node on the hash ring.",
    ]
    lines += [f"        server {node} max_fails=1 fail_timeout={fail};" for node in nodes]
    lines += [
        "    }",
        "",
        "    server {",
        "        # One socket per worker (reuseport): the kernel hashes each device's address and port to one worker,",
        "        # so one worker holds the device's session (another would open a second session, a second port).",
        f"        listen {listen_host}:{listen_port} udp reuseport;",
        f"        proxy_pass {UPSTREAM};",
        "        # A session lives this long after its last datagram either way: longer than a device's Update",
        "        # period, else each Update comes to the node from a new nginx port (a new DTLS handshake).",
        f"        proxy_timeout {session};",
        "        # proxy_responses is not set: a node may send any number of datagrams in a session, whenever it",
        "        # wants (Read, Write, Execute, Observe notifications, block-wise push), not only replies.",
        "        # Retry another node when connecting fails (for UDP: a local error, such as no route).",
        "        proxy_next_upstream on;",
        "        # One datagram: a 1,024-byte block with its CoAP and DTLS headers takes about 1,200 bytes.",
        f"        proxy_buffer_size {buffer_size};",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"

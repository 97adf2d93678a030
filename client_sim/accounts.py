"""The server accounts of a simulated device, read from its Security (/0) and Server (/1) objects, sans I/O.

A *server account* is a non-bootstrap /0 instance with a Short Server ID (/0/x/10) that a /1 instance carries too
(/1/y/0); it is *usable* when its URI and security mode fit together: NoSec (3) with ``coap://``, PSK (0) with
``coaps://``, an identity (/0/x/3) and a key (/0/x/5) of at most 16 bytes (tinydtls). The *bootstrap account* is the
/0 instance whose /0/x/1 (Bootstrap-Server) is true.

Invariants: keys appear only in :attr:`Account.key`, which no ``repr`` shows; nothing here changes the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from client_sim.objects import ObjectTree
from lwm2m_server.coap.dtls import MAX_IDENTITY_LENGTH, MAX_PSK_LENGTH
from lwm2m_server.core.paths import LwM2mPath

SECURITY, SERVER = 0, 1
MODE_PSK, MODE_NOSEC = 0, 3
URI, IS_BOOTSTRAP, MODE, IDENTITY, SERVER_KEY, KEY, SSID = 0, 1, 2, 3, 4, 5, 10
SERVER_SSID = 0


@dataclass(frozen=True, slots=True)
class Account:
    """One /0 instance as the device uses it to connect (``key`` never shows in a ``repr``)."""

    security_iid: int
    uri: str
    mode: int
    identity: bytes
    key: bytes = field(repr=False)
    short_server_id: int | None
    bootstrap: bool
    server_iid: int | None = None  # the /1 instance with the same Short Server ID (server accounts)

    @property
    def secure(self) -> bool:
        return self.uri.lower().startswith("coaps:")

    @property
    def connection(self) -> tuple[str, int, bytes, bytes]:
        """What a transport context is made for: a different tuple needs a new context."""
        return self.uri, self.mode, self.identity, self.key

    def problem(self) -> str:
        """Why this account cannot be used to connect ('' when it can)."""
        try:
            parts = urlsplit(self.uri)
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            return "the URI is not valid"
        scheme = parts.scheme.lower()
        if scheme not in ("coap", "coaps") or not parts.hostname:
            return "the URI is not coap://HOST[:PORT] or coaps://HOST[:PORT]"
        if self.mode == MODE_NOSEC:
            return "" if scheme == "coap" else "NoSec (mode 3) needs a coap:// URI"
        if self.mode != MODE_PSK:
            return f"security mode {self.mode} is not supported (PSK 0 or NoSec 3)"
        if scheme != "coaps":
            return "PSK (mode 0) needs a coaps:// URI"
        if not 1 <= len(self.identity) <= MAX_IDENTITY_LENGTH:
            return f"the PSK identity must be 1..{MAX_IDENTITY_LENGTH} bytes"
        if not 1 <= len(self.key) <= MAX_PSK_LENGTH:
            return f"the PSK must be 1..{MAX_PSK_LENGTH} bytes"
        return ""

    @property
    def usable(self) -> bool:
        return not self.problem()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def accounts(tree: ObjectTree) -> list[Account]:
    """Every /0 instance, in instance order, with the /1 instance of its Short Server ID (if any)."""
    servers: dict[int, int] = {}
    for iid in tree.instance_ids(SERVER):
        ssid = _int(tree.raw_instance(SERVER, iid).get(SERVER_SSID))
        if ssid is not None:
            servers.setdefault(ssid, iid)
    out = []
    for iid in tree.instance_ids(SECURITY):
        values = tree.raw_instance(SECURITY, iid)
        ssid = _int(values.get(SSID))
        bootstrap = values.get(IS_BOOTSTRAP) is True
        uri, identity, key = values.get(URI), values.get(IDENTITY), values.get(KEY)
        mode = _int(values.get(MODE))
        out.append(Account(
            security_iid=iid, uri=uri if isinstance(uri, str) else "", mode=MODE_NOSEC if mode is None else mode,
            identity=identity if isinstance(identity, bytes) else b"", key=key if isinstance(key, bytes) else b"",
            short_server_id=ssid, bootstrap=bootstrap,
            server_iid=None if bootstrap or ssid is None else servers.get(ssid)))
    return out


def server_account(tree: ObjectTree) -> Account | None:
    """The first usable server account (one with a matching /1 instance), None when there is none."""
    for account in accounts(tree):
        if not account.bootstrap and account.server_iid is not None and account.usable:
            return account
    return None


def bootstrap_account(tree: ObjectTree) -> Account | None:
    """The bootstrap account (the first /0 instance marked Bootstrap-Server), usable or not."""
    return next((a for a in accounts(tree) if a.bootstrap), None)


def configuration_problem(tree: ObjectTree) -> str:
    """Why Bootstrap-Finish must be refused with 4.06 ('' when the configuration is usable): the device needs a
    usable server account whose Short Server ID a /1 instance carries."""
    found = [a for a in accounts(tree) if not a.bootstrap]
    if not found:
        return "no LwM2M server account in /0"
    for account in found:
        if account.short_server_id is None:
            continue
        if account.server_iid is None:
            continue
        if account.usable:
            return ""
    problems = []
    for account in found:
        if account.short_server_id is None:
            problems.append(f"/0/{account.security_iid} has no Short Server ID")
        elif account.server_iid is None:
            problems.append(f"no /1 instance has Short Server ID {account.short_server_id}")
        else:
            problems.append(f"/0/{account.security_iid}: {account.problem()}")
    return "; ".join(problems)


def server_path(account: Account | None, rid: int) -> LwM2mPath | None:
    """/1/y/rid of the account's /1 instance, None without one."""
    if account is None or account.server_iid is None:
        return None
    return LwM2mPath.of(SERVER, account.server_iid, rid)

"""The LwM2M server process: CoAP transport, registration service, storage, device management and the API.

``Lwm2mServer`` wires the pieces for one process; it owns every task and socket it starts and releases them all
in :meth:`Lwm2mServer.stop`.

Listeners: coaps:// (DTLS-PSK, ``coaps_port``) and/or plain coap:// (``coap_port``; no authentication, no
confidentiality), both on one aiocoap context. With DTLS, the device credentials (``credentials``, or
``open_credentials(database)`` on the server's own database) give the PSK of an identity and the endpoint it is
bound to; when they can also say what was revoked (``revoked_since``), the server polls them every
``credential_poll_interval`` seconds and, for each credential revoked or replaced elsewhere (``scratch factory
revoke``, the bootstrap server), ends the DTLS sessions of its identity, removes the registration made with it
(``registration.deregistered``, reason ``credential_revoked``) and emits ``security.credential_revoked``.
Failed handshakes back off per (address, identity) and lock an identity (or, for unknown identities, an address)
out (``dtls_lockout_*``; ``security.dtls_lockout``; see :mod:`lwm2m_server.coap.dtls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiocoap

from lwm2m_server.audit import AUDITED_KINDS, AuditLog
from lwm2m_server.coap.dtls import DtlsServerTransport, add_dtls_server, dtls_server_context, dtls_transport
from lwm2m_server.coap.udp import exclusive_context, release
from lwm2m_server.core.errors import UnknownRegistrationError
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.rate_limit import Lockout, RateLimiter
from lwm2m_server.data_dir import API_URL_FILE, default_data_dir, ensure_token
from lwm2m_server.events import EventBus
from lwm2m_server.fota.file_server import MOUNT as FILES_MOUNT
from lwm2m_server.fota.file_server import FileServer
from lwm2m_server.fota.service import FirmwareService
from lwm2m_server.management import DeviceManagement, end_devices_over
from lwm2m_server.metering.meter import UsageMeter
from lwm2m_server.metering.store import SqlUsageStore
from lwm2m_server.outbox import OutboxWriter
from lwm2m_server.registry.end_devices import EndDevices
from lwm2m_server.registry.service import DEFAULT_MAX_LIFETIME, DEFAULT_MAX_REGISTRATIONS, RegistrationService
from lwm2m_server.registry.tags import DeviceTags
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.outbox_store import SqlOutboxStore
from lwm2m_server.storage.sql import SqlDeviceStore, SqlRegistrationStore
from lwm2m_server.tenancy.brand import product_name
from lwm2m_server.tenancy.model import DEFAULT_TENANT, Principal
from lwm2m_server.tenancy.service import TenancyService, local_admin
from lwm2m_server.tenancy.sql import open_tenancy
from lwm2m_server.transport.downlink import DownlinkSender
from lwm2m_server.transport.site import DEFAULT_MAX_BLOCK1_ASSEMBLIES, DEFAULT_MAX_BLOCK1_PER_REMOTE, ServerSite

if TYPE_CHECKING:
    from lwm2m_server.fota.campaigns import CampaignService
    from lwm2m_server.fota.webhooks import WebhookNotifier
    from lwm2m_server.storage.node_store import NodeStore

log = logging.getLogger(__name__)

SECURITY_CREDENTIAL_REVOKED = "security.credential_revoked"
LOCATE_RETRIES, LOCATE_RETRY_DELAY = 4, 0.05  # a device unknown here and in the database: looked for again


@dataclass
class ServerSettings:
    data_dir: Path = field(default_factory=default_data_dir)
    coap_host: str = "127.0.0.1"
    coap_port: int | None = 5683  # plain CoAP (no security); None: no plain listener; 0: any free port
    api_host: str = "127.0.0.1"
    api_port: int | None = 8080  # None: no API
    models_dir: Path | None = None
    database_url: str | None = None  # default: SQLite in the data directory
    request_timeout: float = 30.0
    lifetime_grace: float = 15.0  # seconds a registration outlives its lifetime before it expires
    max_body: int = 16384
    node_id: str = "node-1"
    bench_api: bool = False  # the Leshan-shaped write route for bench/, unauthenticated, loopback only
    web: bool = True  # the web interface under /ui on the API port (users sign in; see docs/web.md)
    coaps_host: str = "127.0.0.1"
    coaps_port: int | None = None  # None: no DTLS listener; 0: any free port
    # caps on what peers can grow (see docs/security.md); a rate of None or 0 turns that limit off
    rd_rate: float | None = 100.0  # /rd requests per second per source host and per PSK identity ...
    rd_burst: int = 2000  # ... with this burst: 1,000 devices behind one address (NAT, loopback) register at once
    rd_endpoint_rate: float | None = 1.0  # /rd requests per second per endpoint ...
    rd_endpoint_burst: int = 20  # ... with this burst (a device registers once and updates every lifetime)
    max_registrations: int = DEFAULT_MAX_REGISTRATIONS  # beyond: 5.03 for new endpoints (see RegistrationService)
    max_lifetime: int = DEFAULT_MAX_LIFETIME  # longer lifetimes asked for are cut to this (seconds)
    max_block1_assemblies: int = DEFAULT_MAX_BLOCK1_ASSEMBLIES  # request bodies assembled at once (5.03 beyond)
    max_block1_per_remote: int = DEFAULT_MAX_BLOCK1_PER_REMOTE  # ... from one address and port
    dtls_lockout_failures: int = 10  # failed DTLS handshakes: of one identity (reported), of unknown ones (0: off)
    dtls_lockout_window: float = 60.0  # ... within this many seconds
    dtls_lockout_seconds: float = 300.0  # how long an address is refused unknown identities; back-offs' cap
    credential_poll_interval: float = 1.0  # seconds between looks for credentials revoked by other processes
    credential_poll_margin: float = 60.0  # how far back each look reaches (writes racing a look, clock skew)
    campaign_tick: float = 1.0  # a running campaign looks again at least this often (events wake it sooner)
    campaign_job_timeout: float = 600.0  # one device's update at least (its phase deadlines may give it more)
    # several nodes on one database (see docs/cluster.md): each holds its own devices' sessions and registrations,
    # writes a heartbeat, and takes over the campaign jobs of a node not heard of for node_timeout seconds
    cluster: bool = False
    # where devices reach this node when that is not its own listener (a balancer in front): "host:port" of the
    # DTLS / plain CoAP address devices use; Package URIs name it, so a pull goes the way the device's session goes
    public_coaps: str | None = None
    public_coap: str | None = None
    shared_ports: bool = False  # one of several workers on the same UDP ports (SO_REUSEPORT; see --workers)
    api_url_file: bool = True  # write the API's URL into the data directory (for the CLI): one node per folder
    node_heartbeat: float = 2.0
    node_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.coap_port is None and self.coaps_port is None:
            raise ValueError("no listener: give a plain CoAP port, a DTLS port, or both")
        if self.dtls_lockout_failures < 0 or self.dtls_lockout_window <= 0 or self.dtls_lockout_seconds <= 0:
            raise ValueError("DTLS lockout: failures must be 0 (off) or more, window and seconds positive")
        if not 0 < self.node_heartbeat < self.node_timeout:
            raise ValueError("the node heartbeat must be positive and shorter than the node timeout")
        if not self.node_id or len(self.node_id) > 64:
            raise ValueError("a node id is 1 to 64 characters")
        if self.shared_ports and not (self.cluster and all(p for p in (self.coap_port, self.coaps_port)
                                                            if p is not None)):
            raise ValueError("workers sharing their ports are cluster nodes on given (non-zero) ports")
        if not 0 < self.credential_poll_interval <= self.credential_poll_margin:
            raise ValueError("the credential poll interval must be positive and at most the poll margin")
        for name in ("rd_rate", "rd_endpoint_rate"):
            rate = getattr(self, name)
            if rate is not None and not (rate >= 0 and math.isfinite(rate)):
                raise ValueError(f"{name} must be a number of requests per second (0: unlimited)")
        if min(self.rd_burst, self.rd_endpoint_burst, self.max_registrations, self.max_lifetime,
               self.max_block1_assemblies, self.max_block1_per_remote) < 1:
            raise ValueError("bursts, maximum registrations, maximum lifetime and Block1 caps must be at least 1")


class DeviceCredentials(Protocol):
    """What the LwM2M server needs of the credential store: the PSK of an identity for the DTLS handshake, and
    the endpoint an identity is bound to. Both run synchronously inside request handling. Give it server
    credentials only (``store.for_kind(CredentialKind.SERVER)``); a whole store (anything with ``for_kind``) is
    restricted that way by the server itself."""

    def psk_for(self, identity: bytes | str) -> bytes | None: ...

    def endpoint_for(self, identity: bytes | str) -> str | None: ...


def _plain_coap_is_bound(credentials: object) -> Callable[[str], bool] | None:
    """Whether an endpoint a plain-CoAP device names holds a DTLS credential in the default tenant (where plain CoAP
    registers: it has no credential to name another)."""
    is_bound = getattr(credentials, "is_bound", None)
    return None if is_bound is None else functools.partial(is_bound, tenant_id=DEFAULT_TENANT)


def _tenant_lookup(credentials: object) -> Callable[[str], str] | None:
    """The tenant of a DTLS identity's credential (a store with ``credential_for``), else None (default tenant)."""
    credential_for = getattr(credentials, "credential_for", None)
    if credential_for is None:
        return None

    def tenant_of(identity: str) -> str:
        credential = credential_for(identity)
        return str(getattr(credential, "tenant_id", DEFAULT_TENANT)) if credential is not None else DEFAULT_TENANT

    return tenant_of


class RevokedCredential(Protocol):
    """What the server reads of a revoked credential (``bootstrap.credentials.Credential`` fits)."""

    @property
    def identity(self) -> str: ...

    @property
    def endpoint(self) -> str: ...

    @property
    def tenant_id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def revoked_at(self) -> float | None: ...


@runtime_checkable
class RevocationFeed(Protocol):
    """Credentials that can say which of them were revoked since a time, applying that to their own index (the
    credential store's ``revoked_since``): how a revocation made by another process reaches this one."""

    def revoked_since(self, since: float) -> list[RevokedCredential]: ...


class Lwm2mServer:
    def __init__(self, settings: ServerSettings, *, model: ObjectModel | None = None,
                 credentials: DeviceCredentials | None = None,
                 open_credentials: Callable[[Database], DeviceCredentials] | None = None,
                 vault: object | None = None) -> None:
        """``credentials`` serve the DTLS listener; or ``open_credentials`` makes them in :meth:`start` from the
        server's own database (the CLI passes the vault-backed SQL store, restricted to server credentials).
        ``vault`` (a :class:`bootstrap.vault.Vault`) opens the signing keys: with it the server runs campaigns
        (releases made by ``scratch release`` in the same data directory and database)."""
        if credentials is not None and open_credentials is not None:
            raise ValueError("give credentials or open_credentials, not both")
        self.settings = settings
        self.credentials = credentials
        self._open_credentials = open_credentials
        self.coaps_port: int = 0
        self.dtls: DtlsServerTransport | None = None
        if model is None:  # the settings' DDF folder, as the CLI does; an explicit model wins
            from lwm2m_server.object_files import model_with_dir

            model = model_with_dir(settings.models_dir)
        self.model = model
        self.events = EventBus()
        self.audit: AuditLog | None = None
        self._unsubscribe_audit: Callable[[], None] | None = None
        self.database: Database | None = None
        self.tenancy: TenancyService | None = None
        self.outbox: OutboxWriter | None = None  # this node's events into the database's outbox (metering, webhooks)
        self.usage: UsageMeter | None = None
        self.api_app: Any = None  # the FastAPI app, once the API is served
        self.tags: DeviceTags | None = None  # device tags of the server's database (campaign filters, API)
        self.registrations: RegistrationService | None = None
        self.context: aiocoap.Context | None = None
        self.management: DeviceManagement | None = None
        self.site: ServerSite | None = None
        self.files = FileServer()
        self.firmware: FirmwareService | None = None
        self.end_devices: EndDevices | None = None
        self.vault = vault
        self.campaigns: CampaignService | None = None
        self.webhooks: WebhookNotifier | None = None  # campaign events to the operators' URLs (HMAC-signed)
        self.nodes: NodeStore | None = None  # with settings.cluster: the nodes sharing the database
        self._started_at = 0.0
        self._beating: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._revocation_watch: asyncio.Task[None] | None = None
        self.credential_polls = 0  # looks for revoked credentials done (that reached the store)
        self._api_server: object = None
        self.coap_port: int = 0
        self.api_port: int = 0
        self.api_token: str = ""

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        audit = self.audit = AuditLog.in_data_dir(s.data_dir)
        self._unsubscribe_audit = self.events.subscribe(
            lambda e: audit.record(e.kind, e.at, {"tenant": e.tenant_id, "endpoint": e.endpoint, **e.data},
                                   source=f"lwm2m-server/{s.node_id}"), AUDITED_KINDS)
        self.database = Database(s.database_url) if s.database_url else Database.for_data_dir(s.data_dir)
        self.tags = DeviceTags.over(self.database)
        self.tenancy = open_tenancy(self.database)
        self.tenancy.on_record = lambda e: audit.record(
            f"audit.{e.action}", e.at, {"tenant": e.tenant_id, "subject": e.subject, "roles": list(e.roles),
                                        "target": e.target, "outcome": e.outcome, "seq": e.seq},
            source=f"lwm2m-server/{s.node_id}")
        outbox = self.outbox = OutboxWriter(SqlOutboxStore(self.database), self.events, node_id=s.node_id)
        self._tasks.append(asyncio.create_task(outbox.run(), name="outbox"))
        self.usage = UsageMeter(SqlUsageStore(self.database), outbox)
        self._tasks.append(asyncio.create_task(self.usage.run(), name="usage"))
        self.registrations = RegistrationService(
            SqlRegistrationStore(self.database), SqlDeviceStore(self.database), self.events,
            clock=time.time, grace=s.lifetime_grace, node_id=s.node_id, max_registrations=s.max_registrations,
            max_lifetime=s.max_lifetime, own_only=s.cluster)
        self._tasks.append(asyncio.create_task(self.registrations.run(), name="registrations"))
        events = self.events

        def security_event(kind: str, data: dict[str, object]) -> None:
            events.emit(kind, time.time(), data=data)

        if self.credentials is None and self._open_credentials is not None:
            self.credentials = await asyncio.to_thread(self._open_credentials, self.database)
        credentials = self.credentials
        for_kind = getattr(credentials, "for_kind", None)
        if callable(for_kind):  # a whole credential store: the LwM2M server takes its server credentials only
            credentials = self.credentials = for_kind("server")
        if s.coaps_port is not None and credentials is None:
            raise ValueError("a DTLS listener needs the device credentials")
        limiter = RateLimiter(s.rd_rate, s.rd_burst) if s.rd_rate else None
        endpoint_limiter = RateLimiter(s.rd_endpoint_rate, s.rd_endpoint_burst) if s.rd_endpoint_rate else None
        self.site = ServerSite(self.registrations, max_body=s.max_body, on_security_event=security_event,
                               endpoint_for_identity=credentials.endpoint_for if credentials else None,
                               endpoint_is_bound=_plain_coap_is_bound(credentials),
                               tenant_for_identity=_tenant_lookup(credentials),
                               rate_limiter=limiter, endpoint_limiter=endpoint_limiter,
                               max_block1_assemblies=s.max_block1_assemblies,
                               max_block1_per_remote=s.max_block1_per_remote)
        self.site.mount(FILES_MOUNT, self.files.handle, assemble_blocks=False)
        self.site.downloads = self.files  # plain-UDP GETs of a package answered from the datagram too
        feed = credentials if isinstance(credentials, RevocationFeed) and s.coaps_port is not None else None
        started = time.time()
        handled: dict[str, float] = {}
        if feed is not None:  # what was revoked before the start is no news (and has no session here)
            handled = {c.identity: c.revoked_at or 0.0
                       for c in await self._read_revoked(feed, started - s.credential_poll_margin) or ()}
        if s.coap_port is not None:
            self.context, self.coap_port = await exclusive_context(self.site, s.coap_host, s.coap_port,
                                                                   shared=s.shared_ports)
        if s.coaps_port is not None:
            assert credentials is not None
            lockout = (Lockout(s.dtls_lockout_failures, s.dtls_lockout_window, s.dtls_lockout_seconds)
                       if s.dtls_lockout_failures > 0 else None)
            if self.context is None:
                self.context, self.coaps_port = await dtls_server_context(
                    self.site, s.coaps_host, s.coaps_port, psk_for=credentials.psk_for, lockout=lockout,
                    on_security_event=security_event, shared=s.shared_ports)
                self.dtls = dtls_transport(self.context)
            else:
                self.dtls, self.coaps_port = await add_dtls_server(
                    self.context, s.coaps_host, s.coaps_port, psk_for=credentials.psk_for, lockout=lockout,
                    on_security_event=security_event, shared=s.shared_ports)
        assert self.context is not None
        if feed is not None:
            self._revocation_watch = asyncio.create_task(self._watch_revocations(feed, started, handled),
                                                         name="credential-revocations")
        sender = DownlinkSender(self.context, self.model, timeout=s.request_timeout, parent_of=self.registrations.get)
        is_bound = getattr(credentials, "is_bound", None)
        self.end_devices = end_devices_over(
            self.registrations, self.events, sender, clock=time.time,
            endpoint_is_bound=None if is_bound is None else lambda ep, tenant: bool(is_bound(ep, tenant_id=tenant)))
        self.end_devices.start()
        self.management = DeviceManagement(self.registrations, sender, clock=time.time, end_devices=self.end_devices)
        plain = (f"coap://{s.public_coap}" if s.public_coap else self.coap_uri) if s.coap_port is not None else None
        secure = ((f"coaps://{s.public_coaps}" if s.public_coaps else self.coaps_uri) if s.coaps_port is not None
                  else None)
        self.firmware = FirmwareService(self.management, self.files, self.events, file_base_uri=plain or secure or "",
                                        secure_file_base_uri=secure)
        if s.cluster:
            from lwm2m_server.storage.node_store import SqlNodeStore

            self.nodes = SqlNodeStore(self.database)
            self._started_at = time.time()
            await self._beat()  # alive before this node adopts anything
        if self.vault is not None:
            from lwm2m_server.fota.campaigns import open_campaigns
            from lwm2m_server.fota.webhooks import WebhookNotifier, Webhooks

            self.webhooks = WebhookNotifier(Webhooks.over(self.database, self.vault), outbox,
                                            product_name=self._product_name)
            self.webhooks.start()
            self.campaigns = open_campaigns(self, self.vault)
            await self.campaigns.start()
        if s.api_port is not None:
            await self._start_api()
        if self.nodes is not None:
            await self._beat()  # with the addresses it serves on
            self._tasks.append(asyncio.create_task(self._heartbeat(), name="node-heartbeat"))
        if secure is not None:
            log.info("LwM2M server on %s (DTLS-PSK)", secure)
        if plain is not None:
            log.warning("LwM2M server on %s: plain CoAP, no authentication and no confidentiality", plain)

    # -- several nodes

    async def _beat(self) -> None:
        """Say this node is alive (and where it serves) in the node table; a failure is logged, not raised."""
        from lwm2m_server.storage.node_store import NodeRecord

        assert self.nodes is not None
        s = self.settings
        record = NodeRecord(s.node_id, self._started_at, time.time(),
                            coap_uri=self.coap_uri if self.coap_port else None,
                            coaps_uri=self.coaps_uri if self.coaps_port else None,
                            api_url=self.api_url if self.api_port else None)
        self._beating = beating = asyncio.ensure_future(asyncio.to_thread(self.nodes.beat, record))
        try:
            await asyncio.shield(beating)  # cancelled or not, stop() waits for the write before the node's removal
        except Exception as e:  # a database hiccup: other nodes see this one as dead only after node_timeout
            log.warning("node %s: cannot write its heartbeat: %s", s.node_id, e)

    def _locate(self, endpoint: str, tenant_id: str) -> str | None:
        """The API of the live node whose registration of ``endpoint`` the database holds, when it is not this
        one (None: answer here). Blocking I/O (the API calls it in a worker thread)."""
        if self.registrations is None or self.nodes is None:
            return None
        holder = self.registrations.stored_holders([endpoint], tenant_id=tenant_id).get(endpoint)
        for _ in range(LOCATE_RETRIES):  # registered a moment ago elsewhere: its row is written behind (50 ms)
            if holder is not None or self.registrations.by_endpoint(endpoint, tenant_id=tenant_id) is not None:
                break
            time.sleep(LOCATE_RETRY_DELAY)
            holder = self.registrations.stored_holders([endpoint], tenant_id=tenant_id).get(endpoint)
        if holder is None or holder == self.settings.node_id:
            return None
        node = self.nodes.get(holder)
        if node is None or node.api_url is None or node.seen_at < time.time() - self.settings.node_timeout:
            return None
        return node.api_url

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.node_heartbeat)
            await self._beat()

    # -- credentials revoked by other processes

    async def _read_revoked(self, feed: RevocationFeed, since: float) -> list[RevokedCredential] | None:
        """The credentials revoked since ``since`` (applied to the store's index on the way); None when the store
        failed (a database hiccup: the next poll tries again)."""
        try:
            return await asyncio.to_thread(feed.revoked_since, since)
        except Exception as e:
            log.warning("cannot read revoked credentials (%s: %s)", type(e).__name__, e)
            return None

    async def _watch_revocations(self, feed: RevocationFeed, started: float, handled: dict[str, float]) -> None:
        """Every ``credential_poll_interval`` s, act on the credentials revoked since the last look. Each look
        reaches ``credential_poll_margin`` s further back, so a revocation committed late (a writer waiting on a
        database lock) or stamped by a skewed clock is still seen; ``handled`` (identity -> revoked_at, pruned
        past the margin) makes each one acted on once."""
        s = self.settings
        cursor = started - s.credential_poll_margin
        while True:
            await asyncio.sleep(s.credential_poll_interval)
            now = time.time()
            revoked = await self._read_revoked(feed, cursor)
            if revoked is None:
                continue
            for credential in revoked:
                if credential.identity not in handled:
                    handled[credential.identity] = credential.revoked_at or now
                    self._revoked(credential)
            cursor = now - s.credential_poll_margin
            for identity in [i for i, at in handled.items() if at < cursor]:
                del handled[identity]  # no later look reaches that far back
            self.credential_polls += 1

    def _revoked(self, credential: RevokedCredential) -> None:
        closed = self.dtls.evict_identity(credential.identity.encode("utf-8")) if self.dtls is not None else 0
        removed = False
        if self.registrations is not None:  # a registration authenticated by a revoked key is trusted no more
            reg = self.registrations.by_endpoint(credential.endpoint, tenant_id=credential.tenant_id)
            if reg is not None and reg.identity == credential.identity:
                with contextlib.suppress(UnknownRegistrationError):  # expired meanwhile
                    self.registrations.deregister(reg.id, reason="credential_revoked")
                    removed = True
        kind = str(getattr(credential.kind, "value", credential.kind))
        log.warning("credential %r (%s) of endpoint %r was revoked: %d DTLS session(s) closed%s", credential.identity,
                    kind, credential.endpoint, closed, ", registration removed" if removed else "")
        self.events.emit(SECURITY_CREDENTIAL_REVOKED, time.time(), tenant_id=credential.tenant_id,
                         endpoint=credential.endpoint,
                         data={"identity": credential.identity, "kind": kind, "revoked_at": credential.revoked_at,
                               "sessions_closed": closed, "registration_removed": removed,
                               "node": self.settings.node_id})

    def _product_name(self, tenant_id: str) -> str:
        """The name a tenant's users and devices see (its brand, else SCRATCh)."""
        return product_name(self.tenancy.brand(tenant_id) if self.tenancy is not None else None)

    async def _start_api(self) -> None:
        import uvicorn

        from lwm2m_server.api.app import create_app

        s = self.settings
        assert self.management is not None
        self.api_token = ensure_token(s.data_dir)
        if s.bench_api and not _is_loopback(s.api_host):
            raise ValueError("the unauthenticated bench API is only served on a loopback address")
        if s.bench_api:
            log.warning("serving the unauthenticated bench route PUT /api/clients/... on %s", s.api_host)
        tenancy = self.tenancy
        local_token = self.api_token

        def authenticate(text: str) -> Principal | None:
            """The data directory's token file is the embedded default's admin; any other token is looked up."""
            if hmac.compare_digest(text.encode(), local_token.encode()):
                return local_admin()
            return tenancy.authenticate(text) if tenancy is not None else None

        cluster: dict[str, Any] = {}
        if self.nodes is not None:  # any node's API answers for every device
            registrations = self.registrations
            assert registrations is not None
            cluster = {"locate": self._locate, "node_id": s.node_id,
                       "stored_devices": lambda tenant: registrations.stored(tenant_id=tenant)}
        app = self.api_app = create_app(
            self.management, self.model, authenticate, firmware=self.firmware, bench_api=s.bench_api,
            events=self.events, campaigns=self.campaigns, tags=self.tags, tenancy=tenancy,
            usage=self.usage.view if self.usage is not None else None, web=s.web, **cluster)
        config = uvicorn.Config(app, host=s.api_host, port=s.api_port or 0, log_level="warning",
                                lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve(), name="api")
        self._tasks.append(task)
        while not server.started:
            if task.done():
                task.result()  # raises the bind error
                raise RuntimeError("the API server stopped during start-up")
            await asyncio.sleep(0.01)
        self._api_server = server
        self.api_port = server.servers[0].sockets[0].getsockname()[1]
        if s.api_url_file:
            (s.data_dir / API_URL_FILE).write_text(f"{self.api_url}\n")

    @property
    def api_url(self) -> str:
        return f"http://{_host_for_url(self.settings.api_host)}:{self.api_port}"

    @property
    def coaps_uri(self) -> str:
        return f"coaps://{_host_for_url(self.settings.coaps_host)}:{self.coaps_port}"

    @property
    def coap_uri(self) -> str:
        return f"coap://{_host_for_url(self.settings.coap_host)}:{self.coap_port}"

    async def stop(self) -> None:
        if self._api_server is not None:
            self._api_server.should_exit = True  # type: ignore[attr-defined]
        if self.campaigns is not None:
            await self.campaigns.close()
        if self.webhooks is not None:  # after the campaigns: their last events are delivered (bounded wait)
            await self.webhooks.stop()
        if self.firmware is not None:
            await self.firmware.close()
        if self.end_devices is not None:
            await self.end_devices.close()
        if self._revocation_watch is not None:  # before the transport it evicts from goes
            self._revocation_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._revocation_watch
            self._revocation_watch = None
        if self.context is not None:
            await self.context.shutdown()
            if self.coap_port:
                release(self.settings.coap_host, self.coap_port)
            self.context = None
            self.dtls = None
        if self.registrations is not None:
            try:
                await self.registrations.close()
            except Exception:
                log.exception("could not write the last registration changes")
        for t in self._tasks:
            if not t.done():
                t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.outbox is not None:  # after firmware, campaigns and registrations: their last events are written
            try:
                self.outbox.close()
            except Exception:
                log.exception("could not write the last events to the outbox")
            self.outbox = None
        if self.usage is not None:  # then counted
            try:
                self.usage.close()  # writes what is pending
            except Exception:
                log.exception("could not write the last usage counts")
            self.usage = None
        if self.nodes is not None:  # a node that stops says so: its jobs may be adopted at once
            if self._beating is not None:  # a heartbeat still being written would bring the row back
                with contextlib.suppress(Exception):
                    await self._beating
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.nodes.remove, self.settings.node_id)
            self.nodes = None
        if self.database is not None:
            self.database.close()
            self.database = None
        url_file = self.settings.data_dir / API_URL_FILE
        with contextlib.suppress(OSError):  # only our own (another node of the folder may have written it since)
            if self.api_port and url_file.read_text().strip() == self.api_url:
                url_file.unlink()
        if self._unsubscribe_audit is not None:
            self._unsubscribe_audit()
            self._unsubscribe_audit = None
        if self.audit is not None:
            self.audit.close()
            self.audit = None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host



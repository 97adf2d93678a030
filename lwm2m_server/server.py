"""The LwM2M server process: CoAP transport, registration service, storage, device management and the API.

``Lwm2mServer`` wires the pieces for one process; it owns every task and socket it starts and releases them all
in :meth:`Lwm2mServer.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiocoap

from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.rate_limit import RateLimiter
from lwm2m_server.data_dir import API_URL_FILE, default_data_dir, ensure_token
from lwm2m_server.events import EventBus
from lwm2m_server.fota.file_server import MOUNT as FILES_MOUNT
from lwm2m_server.fota.file_server import FileServer
from lwm2m_server.fota.service import FirmwareService
from lwm2m_server.management import DeviceManagement
from lwm2m_server.registry.service import RegistrationService
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.sql import SqlDeviceStore, SqlRegistrationStore
from lwm2m_server.transport.downlink import DownlinkSender
from lwm2m_server.transport.dtls import add_dtls_server
from lwm2m_server.transport.site import ServerSite
from lwm2m_server.transport.udp import exclusive_context, release

log = logging.getLogger(__name__)

@dataclass
class ServerSettings:
    data_dir: Path = field(default_factory=default_data_dir)
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683
    api_host: str = "127.0.0.1"
    api_port: int | None = 8080  # None: no API
    models_dir: Path | None = None
    database_url: str | None = None  # default: SQLite in the data directory
    request_timeout: float = 30.0
    lifetime_grace: float = 15.0  # seconds a registration outlives its lifetime before it expires
    max_body: int = 16384
    node_id: str = "node-1"
    bench_api: bool = False  # the Leshan-shaped write route for bench/, unauthenticated, loopback only
    coaps_host: str = "127.0.0.1"
    coaps_port: int | None = None  # None: no DTLS listener; 0: any free port
    rd_rate: float | None = None  # /rd requests per second per source host and per identity (None: unlimited)
    rd_burst: int = 20


class DeviceCredentials(Protocol):
    """What the LwM2M server needs of the credential store: the PSK of an identity for the DTLS handshake, and
    the endpoint an identity is bound to. Both run synchronously inside request handling."""

    def psk_for(self, identity: bytes | str) -> bytes | None: ...

    def endpoint_for(self, identity: bytes | str) -> str | None: ...


class Lwm2mServer:
    def __init__(self, settings: ServerSettings, *, model: ObjectModel | None = None,
                 credentials: DeviceCredentials | None = None) -> None:
        self.settings = settings
        self.credentials = credentials
        self.coaps_port: int = 0
        if model is None:  # the settings' DDF folder, as the CLI does; an explicit model wins
            from lwm2m_server.object_files import model_with_dir

            model = model_with_dir(settings.models_dir)
        self.model = model
        self.events = EventBus()
        self.database: Database | None = None
        self.registrations: RegistrationService | None = None
        self.context: aiocoap.Context | None = None
        self.management: DeviceManagement | None = None
        self.site: ServerSite | None = None
        self.files = FileServer()
        self.firmware: FirmwareService | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._api_server: object = None
        self.coap_port: int = 0
        self.api_port: int = 0
        self.api_token: str = ""

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.database = Database(s.database_url) if s.database_url else Database.for_data_dir(s.data_dir)
        self.registrations = RegistrationService(
            SqlRegistrationStore(self.database), SqlDeviceStore(self.database), self.events,
            clock=time.time, grace=s.lifetime_grace, node_id=s.node_id)
        self._tasks.append(asyncio.create_task(self.registrations.run(), name="registrations"))
        events = self.events

        def security_event(kind: str, data: dict[str, object]) -> None:
            events.emit(kind, time.time(), data=data)

        credentials = self.credentials
        limiter = RateLimiter(s.rd_rate, s.rd_burst) if s.rd_rate is not None else None
        self.site = ServerSite(self.registrations, max_body=s.max_body, on_security_event=security_event,
                               endpoint_for_identity=credentials.endpoint_for if credentials else None,
                               rate_limiter=limiter)
        self.site.mount(FILES_MOUNT, self.files.handle, assemble_blocks=False)
        self.context, self.coap_port = await exclusive_context(self.site, s.coap_host, s.coap_port)
        if s.coaps_port is not None:
            if credentials is None:
                raise ValueError("a DTLS listener needs the device credentials")
            _, self.coaps_port = await add_dtls_server(self.context, s.coaps_host, s.coaps_port,
                                                       psk_for=credentials.psk_for)
        sender = DownlinkSender(self.context, self.model, timeout=s.request_timeout)
        self.management = DeviceManagement(self.registrations, sender, clock=time.time)
        self.firmware = FirmwareService(self.management, self.files, self.events, file_base_uri=self.coap_uri)
        if s.api_port is not None:
            await self._start_api()
        log.info("LwM2M server on coap://%s:%d", s.coap_host, self.coap_port)

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
        app = create_app(self.management, self.model, self.api_token, firmware=self.firmware, bench_api=s.bench_api)
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
        if self.firmware is not None:
            await self.firmware.close()
        if self.context is not None:
            await self.context.shutdown()
            release(self.settings.coap_host, self.coap_port)
            self.context = None
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
        if self.database is not None:
            self.database.close()
            self.database = None
        with contextlib.suppress(FileNotFoundError):
            (self.settings.data_dir / API_URL_FILE).unlink()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host



"""Client-initiated bootstrap of a simulated device (LwM2M 1.1 Core 5.2.7 and 6.1; LwM2M 1.2 Bootstrap-Pack).

:class:`BootstrapInterface` is the device in bootstrap mode, without I/O: it answers the bootstrap server's
requests (aiocoap messages in, messages out) on the device's :class:`~client_sim.objects.ObjectTree`:

==============================  ===================================================================================
request                         answer
==============================  ===================================================================================
Bootstrap-Discover GET / or     2.05 link format: ``</>;lwm2m=1.1,</0/0>;uri="...",</0/1>;ssid=1;uri="...",
GET /O, Accept 40               </1/0>;ssid=1,</3/0>,...`` (``ver`` of objects not at 1.0); deeper paths 4.00
Bootstrap-Read GET /1.., /2..   2.05 in the Accept format (default SenML CBOR, TLV for 1.0); /0, /21 and any other
                                object 4.01 (keys never leave the device); Observe 4.05
Bootstrap-Write PUT /O[/I[/R]]  2.04; instances are created when missing, read-only resources may be written, the
                                bootstrap account too; 4.00 for a payload that does not fit, 4.15 for a format
                                the device does not know; a PUT without payload (Write-Attributes) 4.05
Bootstrap-Delete DELETE /       every /0 instance but the bootstrap account and every /1 instance (objects 3, 4,
                                5 and any other are left alone); DELETE /0, /0/x (4.00 for the bootstrap
                                account), /1, /1/x likewise; other objects 4.00; 2.02 also when nothing was there
Bootstrap-Finish POST /bs       2.04 when a usable server account exists (see :mod:`client_sim.accounts`), else
                                4.06 and the device stays in bootstrap
anything else                   4.05 (Execute, Create, Write-Composite, Read-Composite)
==============================  ===================================================================================

:class:`BootstrapAttempt` is one client-initiated bootstrap, with I/O: a context of its own to the bootstrap URI
(DTLS-PSK with the factory credentials, or plain UDP for a ``coap://`` bootstrap server), ``GET /bspack`` first for
LwM2M 1.2, then ``POST /bs?ep=EP&pct=CF`` and the served requests until Bootstrap-Finish, bounded by a timeout.
Its context is shut down when the attempt ends, whatever the outcome.

Invariants: a request is answered with the code its core error carries, nothing else escapes ``handle``; no
answer, ``repr``, log line or exception text carries a key (Bootstrap-Read of /0 is refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiocoap import Context, Message
from aiocoap.numbers.codes import Code
from aiocoap.resource import PathCapable, Resource

from client_sim.accounts import SECURITY, SERVER, Account, accounts, configuration_problem
from client_sim.content import content_response
from client_sim.errors import (
    BadValueError,
    NotAuthorizedError,
    OperationNotAllowedError,
    PathNotFoundError,
)
from client_sim.objects import CORE_OBJECTS_WITHOUT_VERSION, ObjectTree
from lwm2m_server.coap.dtls import dtls_client_context
from lwm2m_server.coap.udp import exclusive_context, release
from lwm2m_server.core.codec import link as link_format
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.codec.link import Link
from lwm2m_server.core.errors import InvalidPathError, Lwm2mError, NotAcceptableError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.paths import ROOT, LwM2mPath

log = logging.getLogger(__name__)

ACCESS_CONTROL = 2
READABLE_IN_BOOTSTRAP = frozenset({SERVER, ACCESS_CONTROL})
"""Bootstrap-Read is allowed on the Server and Access Control objects only (LwM2M 1.1 Core 5.2.7.2)."""

DELETABLE_IN_BOOTSTRAP = frozenset({SECURITY, SERVER})
PACK_FALLBACK = frozenset({Code.NOT_FOUND, Code.METHOD_NOT_ALLOWED, Code.NOT_ACCEPTABLE})
DEFAULT_MAX_AGE = 60.0  # RFC 7252 5.10.5
MAX_DIAGNOSTIC = 120


def preferred_format(lwm2m_version: str) -> ContentFormat | None:
    """The ``pct`` a device of this version sends with POST /bs (none before LwM2M 1.1)."""
    return None if lwm2m_version == "1.0" else ContentFormat.SENML_CBOR


def _format_link(link: Link) -> str:
    """A link with ``uri`` always quoted, as LwM2M 1.1 Core 5.2.7.3 spells it."""
    uri = link.get("uri")
    text = link_format.format_link(Link(link.target, tuple((k, v) for k, v in link.attributes if k != "uri")))
    if uri is None:
        return text
    escaped = uri.replace("\\", "\\\\").replace('"', '\\"')
    return f'{text};uri="{escaped}"'


class BootstrapInterface:
    """The bootstrap-mode request handler of one device (see the module docstring for the answers).

    ``on_finish`` is called (once per accepted Bootstrap-Finish) after the configuration was found usable.
    """

    def __init__(self, tree: ObjectTree, *, lwm2m_version: str = "1.1",
                 on_finish: Callable[[], None] | None = None) -> None:
        self.tree = tree
        self.model: ObjectModel = tree.model
        self.lwm2m_version = lwm2m_version
        self.on_finish = on_finish
        self.finished = False
        self.requests = 0

    # ------------------------------------------------------------------ the one entry point

    def handle(self, request: Message) -> Message:
        self.requests += 1
        try:
            segments = tuple(request.opt.uri_path)
            if segments == ("bs",):
                if request.code != Code.POST:
                    raise OperationNotAllowedError("/bs takes POST (Bootstrap-Finish)")
                return self._finish()
            try:
                path = LwM2mPath.from_segments(list(segments)) if segments else ROOT
            except InvalidPathError as e:
                raise PathNotFoundError(str(e)) from None
            return self._dispatch(request, path)
        except Lwm2mError as e:
            return Message(code=Code(int(e.coap_code)), payload=str(e).encode()[:MAX_DIAGNOSTIC])
        except Exception:
            log.exception("bootstrap request %s failed", request.code)
            return Message(code=Code.INTERNAL_SERVER_ERROR)

    def _dispatch(self, request: Message, path: LwM2mPath) -> Message:
        code = request.code
        if code == Code.GET:
            if request.opt.observe is not None:
                raise OperationNotAllowedError("Observe is not a bootstrap operation")
            accept = request.opt.accept
            if accept is not None and int(accept) == ContentFormat.LINK:
                return self._discover(path)
            return self._read(path, None if accept is None else int(accept))
        if code == Code.PUT:
            if not request.payload:
                raise OperationNotAllowedError("Write-Attributes is not a bootstrap operation")
            if request.opt.content_format is None:
                raise BadValueError("a Bootstrap-Write needs a Content-Format")
            fmt = ContentFormat.of(int(request.opt.content_format))
            if fmt is ContentFormat.LINK:
                raise BadValueError("a Bootstrap-Write carries values, not links")
            self.tree.bootstrap_write(path, registry.decode(request.payload, fmt, path, self.model))
            return Message(code=Code.CHANGED)
        if code == Code.DELETE:
            self.delete(path)
            return Message(code=Code.DELETED)
        raise OperationNotAllowedError(f"{code} is not a bootstrap operation")

    # ------------------------------------------------------------------ operations

    def discover_links(self, path: LwM2mPath = ROOT) -> list[Link]:
        """Bootstrap-Discover of ``/`` (with the LwM2M version) or of one object."""
        if path.depth > 1:
            raise BadValueError("Bootstrap-Discover targets / or an object")
        if path.depth == 1 and path.ids[0] not in self.tree.object_ids:
            raise PathNotFoundError(f"object {path.ids[0]} not found")
        by_security = {a.security_iid: a for a in accounts(self.tree)}
        links: list[Link] = [Link("/", (("lwm2m", self.lwm2m_version),))] if path.is_root else []
        oids = self.tree.object_ids if path.is_root else (path.ids[0],)
        for oid in oids:
            odef = self.model.get(oid)
            iids = self.tree.instance_ids(oid)
            version = odef.version if odef is not None else "1.0"
            if (version != "1.0" and oid not in CORE_OBJECTS_WITHOUT_VERSION) or not iids:
                attrs: tuple[tuple[str, str | None], ...] = ()
                if version != "1.0" and oid not in CORE_OBJECTS_WITHOUT_VERSION:
                    attrs = (("ver", version),)
                links.append(Link(f"/{oid}", attrs))
            for iid in iids:
                attrs = ()
                if oid == SECURITY:
                    account = by_security[iid]
                    if not account.bootstrap and account.short_server_id is not None:
                        attrs = (("ssid", str(account.short_server_id)),)
                    attrs = (*attrs, ("uri", account.uri))
                elif oid == SERVER:
                    ssid = self.tree.raw_instance(SERVER, iid).get(0)
                    if isinstance(ssid, int) and not isinstance(ssid, bool):
                        attrs = (("ssid", str(ssid)),)
                links.append(Link(f"/{oid}/{iid}", attrs))
        return links

    def _discover(self, path: LwM2mPath) -> Message:
        payload = ",".join(_format_link(link) for link in self.discover_links(path)).encode()
        return Message(code=Code.CONTENT, payload=payload, content_format=int(ContentFormat.LINK))

    def _read(self, path: LwM2mPath, accept: int | None) -> Message:
        if path.is_root:
            raise NotAuthorizedError("Bootstrap-Read targets the Server or Access Control object")
        if path.ids[0] not in READABLE_IN_BOOTSTRAP:
            raise NotAuthorizedError(f"object {path.ids[0]} is not readable in bootstrap")
        return content_response(self.tree.read(path), path, accept, self.model, self.lwm2m_version)

    def delete(self, path: LwM2mPath) -> None:
        """Bootstrap-Delete (see the module docstring for what each target removes)."""
        if path.depth > 2:
            raise BadValueError("Bootstrap-Delete targets /, an object or an object instance")
        bootstrap_iids = {a.security_iid for a in accounts(self.tree) if a.bootstrap}
        if path.depth == 2:
            oid, iid = path.ids
            if oid not in DELETABLE_IN_BOOTSTRAP:
                raise BadValueError(f"this device keeps object {oid} in bootstrap")
            if oid == SECURITY and iid in bootstrap_iids:
                raise BadValueError("the bootstrap account cannot be deleted")
            self.tree.remove_instance(oid, iid)
            return
        if path.depth == 1 and path.ids[0] not in DELETABLE_IN_BOOTSTRAP:
            raise BadValueError(f"this device keeps object {path.ids[0]} in bootstrap")
        oids = DELETABLE_IN_BOOTSTRAP if path.is_root else {path.ids[0]}
        for oid in sorted(oids):
            for iid in self.tree.instance_ids(oid):
                if not (oid == SECURITY and iid in bootstrap_iids):
                    self.tree.remove_instance(oid, iid)

    def _finish(self) -> Message:
        problem = configuration_problem(self.tree)
        if problem:
            raise NotAcceptableError(f"configuration not usable: {problem}")
        self.finished = True
        if self.on_finish is not None:
            self.on_finish()
        return Message(code=Code.CHANGED)

    # ------------------------------------------------------------------ LwM2M 1.2 Bootstrap-Pack

    def apply_pack(self, payload: bytes, content_format: int | None) -> None:
        """Apply a Bootstrap-Pack (a composite of /0 and /1 resources): every non-bootstrap /0 instance and every /1
        instance goes, then the pack is written, creating instances. Raises (4.00/4.06) when the payload cannot be
        read, names other objects, or leaves no usable configuration."""
        fmt = ContentFormat.of(int(content_format) if content_format is not None else int(ContentFormat.SENML_CBOR))
        nodes = registry.decode_composite(payload, fmt, self.model)
        if not nodes:
            raise BadValueError("an empty bootstrap pack")
        for path in nodes:
            if path.depth < 2 or path.ids[0] not in (SECURITY, SERVER):
                raise BadValueError(f"a bootstrap pack holds /0 and /1 instances, not {path}")
        self.delete(LwM2mPath.of(SECURITY))
        self.delete(LwM2mPath.of(SERVER))
        for path, node in nodes.items():
            self.tree.bootstrap_write(path, node)
        problem = configuration_problem(self.tree)
        if problem:
            raise NotAcceptableError(f"the bootstrap pack is not usable: {problem}")


class _BootstrapSite(Resource, PathCapable):
    """The aiocoap site of a bootstrap context: every request goes to the interface."""

    def __init__(self, interface: BootstrapInterface) -> None:
        super().__init__()
        self._interface = interface

    async def render(self, request: Message) -> Message:
        return self._interface.handle(request)

    def get_link_description(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    """How one attempt ended: ``retry_after`` is the Max-Age of a 5.03 (the server is busy: wait that long)."""

    success: bool
    reason: str = ""
    retry_after: float | None = None
    pack: bool = False


class BootstrapAttempt:
    """One client-initiated bootstrap over a context of its own; :meth:`run` once, :meth:`close` any time."""

    def __init__(self, interface: BootstrapInterface, account: Account, endpoint: str, *, timeout: float = 30.0,
                 request_timeout: float = 10.0, bind_host: str = "127.0.0.1") -> None:
        self.interface = interface
        self.account = account
        self.endpoint = endpoint
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.bind_host = bind_host
        self._context: Context | None = None
        self._port = 0
        self._remote: Any = None  # the session lives while its remote is referenced
        self._finished: asyncio.Future[None] | None = None

    @property
    def uri(self) -> str:
        return self.account.uri.rstrip("/")

    async def run(self) -> BootstrapResult:
        """Bootstrap; the context is closed when this returns (or is cancelled)."""
        loop = asyncio.get_running_loop()
        self._finished = loop.create_future()
        finished = self._finished

        def on_finish() -> None:
            if not finished.done():
                finished.set_result(None)

        self.interface.on_finish = on_finish
        try:
            async with asyncio.timeout(self.timeout):
                await self._open()
                if self.interface.lwm2m_version == "1.2":
                    result = await self._pack()
                    if result is not None:
                        return result
                result = await self._request()
                if result is not None:
                    return result
                await finished
                return BootstrapResult(True)
        except TimeoutError:
            return BootstrapResult(False, f"no Bootstrap-Finish within {self.timeout:g} s")
        except OSError as e:
            return BootstrapResult(False, f"cannot open a socket: {e.strerror or type(e).__name__}")
        finally:
            self.interface.on_finish = None
            await asyncio.sleep(0)  # let the answer to Bootstrap-Finish go out before the session closes
            await self.close()

    async def close(self) -> None:
        """Shut the bootstrap context down (idempotent)."""
        context, self._context, self._remote = self._context, None, None
        if context is not None:
            with contextlib.suppress(Exception):
                await context.shutdown()
            if self._port:
                release(self.bind_host, self._port)
                self._port = 0

    async def _open(self) -> None:
        site = _BootstrapSite(self.interface)
        if self.account.secure:
            self._context = await dtls_client_context(site, self.uri, self.account.identity, self.account.key,
                                                      loggername="coap-sim-bootstrap")
        else:
            self._context, self._port = await exclusive_context(site, self.bind_host)

    async def _send(self, request: Message) -> Message | None:
        assert self._context is not None
        try:
            response = await asyncio.wait_for(self._context.request(request).response, self.request_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # timeouts, DTLS handshake failures and aiocoap network errors alike
            log.debug("%s: %s to %s failed: %s", self.endpoint, request.code, self.uri, type(e).__name__)
            return None
        self._remote = response.remote
        return response

    @staticmethod
    def _busy(response: Message) -> BootstrapResult:
        max_age = response.opt.max_age
        wait = float(max_age) if max_age is not None else DEFAULT_MAX_AGE
        return BootstrapResult(False, "the bootstrap server is busy (5.03)", retry_after=wait)

    async def _pack(self) -> BootstrapResult | None:
        """LwM2M 1.2: GET /bspack; None means: fall back to POST /bs."""
        request = Message(code=Code.GET, uri=f"{self.uri}/bspack", accept=int(ContentFormat.SENML_CBOR))
        request.opt.uri_query = (f"ep={self.endpoint}",)
        response = await self._send(request)
        if response is None:
            return BootstrapResult(False, "no answer to GET /bspack")
        if response.code == Code.SERVICE_UNAVAILABLE:
            return self._busy(response)
        if response.code in PACK_FALLBACK:
            return None
        if response.code != Code.CONTENT:
            return BootstrapResult(False, f"GET /bspack answered {response.code}")
        cf = response.opt.content_format
        try:
            self.interface.apply_pack(response.payload, None if cf is None else int(cf))
        except Lwm2mError as e:
            return BootstrapResult(False, f"bootstrap pack refused: {e}")
        return BootstrapResult(True, pack=True)

    async def _request(self) -> BootstrapResult | None:
        """POST /bs; None means: accepted, wait for Finish."""
        request = Message(code=Code.POST, uri=f"{self.uri}/bs")
        query = [f"ep={self.endpoint}"]
        pct = preferred_format(self.interface.lwm2m_version)
        if pct is not None:
            query.append(f"pct={int(pct)}")
        request.opt.uri_query = tuple(query)
        response = await self._send(request)
        if response is None:
            return BootstrapResult(False, "no answer to POST /bs")
        if response.code == Code.SERVICE_UNAVAILABLE:
            return self._busy(response)
        if response.code != Code.CHANGED:
            return BootstrapResult(False, f"POST /bs answered {response.code}")
        return None


__all__ = ["BootstrapAttempt", "BootstrapInterface", "BootstrapResult", "preferred_format"]

"""The downlink port: server -> device requests, the one way the server's services reach devices.

:class:`Downlink` is the interface the services use (LwM2M operations, observations, block-wise pushes);
:class:`DownlinkSender` is its aiocoap implementation; ``InMemoryDownlink`` (tests/downlink_simulator.py) is
another, over simulated devices without sockets, for fast tests.

Invariants: a downlink request goes to the :class:`Route` of the device, found by :func:`route_to` alone: the
live remote the device last spoke from (so a DTLS session is reused), or for an end device behind an LwM2M
gateway, the gateway's live remote with the device's prefix in front of every path (LwM2M Gateway 1.1). A route
is never rebuilt from a URI or from the stored address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from aiocoap import Context, Message
from aiocoap import error as coap_error
from aiocoap.numbers.codes import Code

from lwm2m_server.coap.requests import exchange, send_request
from lwm2m_server.coap.udp import GatewayTuning
from lwm2m_server.core.codec import registry as codecs
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import ClientSleepingError, CodecError, RequestFailedError, RequestTimeoutError
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.nodes import Node
from lwm2m_server.core.operations import (
    CreateRequest,
    DownlinkRequest,
    ObserveRequest,
    WriteRequest,
    to_coap,
)
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.core.registration import Registration
from lwm2m_server.core.responses import DownlinkResponse, decode_node, decode_response, default_write_format
from lwm2m_server.transport.push import DEFAULT_BLOCK_SIZE, PACKAGE, ProgressListener, PushProgress, push_package

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Route:
    """Where the requests for one device go: ``remote`` (a live transport handle) and ``root_path`` (put in front
    of every LwM2M path: the device's alternate root, or its gateway's root plus the device's prefix); ``via`` is
    the gateway's endpoint for an end device behind one."""

    endpoint: str
    remote: object
    root_path: str = "/"
    via: str | None = None


ParentLookup = Callable[[str], Registration | None]
"""The live registration of a gateway, by registration id (``RegistrationService.get``)."""


def _no_parents(_reg_id: str) -> Registration | None:
    return None


def route_to(reg: Registration, parent_of: ParentLookup) -> Route:
    """The route to ``reg``'s device; ClientSleepingError when there is none now (a device not heard from since
    the server started, or an end device whose gateway is gone or not connected)."""
    if reg.parent_id is None:
        if reg.remote is None:
            raise ClientSleepingError(
                f"{reg.endpoint} has not been heard from since the server started; it is reachable again after "
                "its next Update")
        return Route(reg.endpoint, reg.remote, reg.root_path)
    gateway = parent_of(reg.parent_id)
    if gateway is None or gateway.remote is None:
        raise ClientSleepingError(f"{reg.endpoint} sits behind a gateway that is not connected now")
    prefix = reg.path_prefix.strip("/")
    return Route(reg.endpoint, gateway.remote, f"{gateway.root_path.rstrip('/')}/{prefix}/", gateway.endpoint)


class ObservationHandle(Protocol):
    """A running observation: ``initial`` is the first answer; ``notifications()`` yields what follows."""

    initial: DownlinkResponse
    established: bool

    def notifications(self) -> AsyncIterator[Node]: ...

    def cancel(self) -> None: ...


class Downlink(Protocol):
    """Requests from the server to devices (see the module invariants)."""

    def route(self, reg: Registration) -> Route: ...

    async def send(self, reg: Registration, request: DownlinkRequest, *, timeout: float | None = None
                   ) -> DownlinkResponse: ...

    async def observe(self, reg: Registration, request: ObserveRequest, *, timeout: float | None = None
                      ) -> ObservationHandle: ...

    async def push(self, reg: Registration, data: bytes, *, path: LwM2mPath = PACKAGE,
                   block_size: int = DEFAULT_BLOCK_SIZE, content_format: int = int(ContentFormat.OPAQUE),
                   total_timeout: float = 600.0, on_progress: ProgressListener | None = None) -> PushProgress: ...

    async def post_to_address(self, uri: str, endpoint: str) -> int: ...


_METHODS = {"GET": Code.GET, "PUT": Code.PUT, "POST": Code.POST, "DELETE": Code.DELETE, "FETCH": Code.FETCH}


def prepare_message(reg: Registration, route: Route, request: DownlinkRequest, model: ObjectModel) -> Message:
    """The CoAP request for ``request`` to ``reg``'s device along ``route`` (a Write or Create without a format
    gets the device's preferred one)."""
    if isinstance(request, WriteRequest | CreateRequest) and request.format is None:
        node = request.node if isinstance(request, WriteRequest) else request.instance
        request = replace(request, format=default_write_format(node, reg.supported_formats))
    coap = to_coap(request, root_path=route.root_path,
                   encode=lambda n, p, f: codecs.encode(n, p, f, model),
                   encode_paths=codecs.encode_paths)
    msg = Message(code=_METHODS[coap.method], uri_path=coap.uri_path, payload=coap.payload)
    if coap.uri_query:
        msg.opt.uri_query = coap.uri_query
    if coap.content_format is not None:
        msg.opt.content_format = coap.content_format
    if coap.accept is not None:
        msg.opt.accept = coap.accept
    if coap.observe is not None:
        msg.opt.observe = coap.observe
    msg.remote = route.remote
    if route.via is not None:  # several end devices' requests may be outstanding at their gateway at once
        msg.transport_tuning = GatewayTuning()
    return msg


class DownlinkSender:
    """Sends LwM2M requests to registered devices over aiocoap and decodes their answers (the :class:`Downlink`
    of the server). ``parent_of`` finds a gateway's registration for the devices behind it."""

    def __init__(self, context: Context, model: ObjectModel, *, timeout: float = 30.0,
                 parent_of: ParentLookup = _no_parents) -> None:
        self.context = context
        self.model = model
        self.timeout = timeout
        self.parent_of = parent_of

    def route(self, reg: Registration) -> Route:
        return route_to(reg, self.parent_of)

    def _prepare(self, reg: Registration, request: DownlinkRequest) -> Message:
        return prepare_message(reg, self.route(reg), request, self.model)

    async def exchange(self, request: Message, endpoint: str, timeout: float) -> Message:
        """One raw request (its ``remote`` set) and its answer, without block-wise reassembly; RequestTimeoutError
        or RequestFailedError (naming ``endpoint``) otherwise."""
        return await exchange(self.context, request, endpoint, timeout, handle_blockwise=False)

    async def push(self, reg: Registration, data: bytes, *, path: LwM2mPath = PACKAGE,
                   block_size: int = DEFAULT_BLOCK_SIZE, content_format: int = int(ContentFormat.OPAQUE),
                   total_timeout: float = 600.0, on_progress: ProgressListener | None = None) -> PushProgress:
        """A block-wise Write of ``data`` to ``path`` (normally /5/0/0) of the device: see
        :func:`~lwm2m_server.transport.push.push_package` (each block bounded by this sender's timeout)."""
        return await push_package(self.exchange, self.route(reg), data, path=path, block_size=block_size,
                                  content_format=content_format, request_timeout=self.timeout,
                                  total_timeout=total_timeout, on_progress=on_progress)

    async def post_to_address(self, uri: str, endpoint: str) -> int:
        """POST ``uri`` (a device's stored ``coap://`` address: the one exception to rule 4, for a plain-CoAP device
        the server has not heard from since it restarted, e.g. its Registration Update Trigger); the answer's
        code."""
        return int((await self.exchange(Message(code=Code.POST, uri=uri), endpoint, self.timeout)).code)

    async def send(self, reg: Registration, request: DownlinkRequest, *, timeout: float | None = None
                   ) -> DownlinkResponse:
        """Send ``request`` and wait (at most ``timeout`` seconds) for the answer."""
        msg = self._prepare(reg, request)
        pending: Any = None
        try:
            pending, response = await asyncio.wait_for(send_request(self.context, msg), timeout or self.timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"{reg.endpoint} did not answer within {timeout or self.timeout:g} s") from None
        except coap_error.TimeoutError as e:
            raise RequestTimeoutError(f"{reg.endpoint} did not answer ({type(e).__name__})") from None
        except coap_error.Error as e:
            raise RequestFailedError(f"request to {reg.endpoint} failed: {e}") from None
        finally:
            if isinstance(request, ObserveRequest) and pending is not None:
                with contextlib.suppress(Exception):
                    pending.observation.cancel()
        cf = response.opt.content_format
        return decode_response(request, int(response.code), int(cf) if cf is not None else None, response.payload,
                               self.model, tuple(response.opt.location_path))

    async def observe(self, reg: Registration, request: ObserveRequest, *, timeout: float | None = None
                      ) -> Observation:
        """Start an observation; its first answer is ``Observation.initial``."""
        msg = self._prepare(reg, request)
        started: list[Any] = []
        try:
            pending, response = await asyncio.wait_for(send_request(self.context, msg, started),
                                                       timeout or self.timeout)
        except (TimeoutError, coap_error.TimeoutError):
            if started:
                started[-1].observation.cancel()
            raise RequestTimeoutError(f"{reg.endpoint} did not answer the Observe") from None
        except coap_error.Error as e:
            raise RequestFailedError(f"Observe of {reg.endpoint} failed: {e}") from None
        cf = response.opt.content_format
        first = decode_response(request, int(response.code), int(cf) if cf is not None else None,
                                response.payload, self.model)
        if response.opt.observe is None:
            pending.observation.cancel()
            return Observation(request, first, None, self.model, established=False)
        return Observation(request, first, pending, self.model, established=True)


class Observation:
    """A running observation: ``initial`` is the first answer; iterate for the notifications that follow."""

    def __init__(self, request: ObserveRequest, initial: DownlinkResponse, pending: object, model: ObjectModel,
                 *, established: bool) -> None:
        self.request = request
        self.initial = initial
        self.established = established
        self._pending = pending
        self._model = model

    async def notifications(self) -> AsyncIterator[Node]:
        if self._pending is None:
            return
        iterator = self._pending.observation.__aiter__()  # type: ignore[attr-defined]
        while True:
            try:
                msg = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except coap_error.Error as e:
                raise RequestFailedError(f"observation of {self.request.path} ended: {type(e).__name__}") from None
            cf = msg.opt.content_format
            if int(msg.code) >> 5 != 2:
                raise RequestFailedError(f"observation of {self.request.path} ended with {msg.code}")
            try:
                yield decode_node(msg.payload, int(cf) if cf is not None else None, self.request.path, self._model)
            except CodecError as e:
                log.warning("undecodable notification for %s: %s", self.request.path, e)

    def cancel(self) -> None:
        """End the observation; idempotent, also after the device or the transport ended it."""
        if self._pending is not None:
            observation = self._pending.observation  # type: ignore[attr-defined]
            self._pending = None
            if not observation.cancelled:
                observation.cancel()

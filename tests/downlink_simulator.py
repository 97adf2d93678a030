"""An in-memory :class:`~lwm2m_server.transport.downlink.Downlink` over simulated devices that never open a socket.

What python-tuf's ``tests/repository_simulator.py`` is to its client, this is to the server's services: the
firmware service (and anything else built on :class:`~lwm2m_server.management.DeviceManagement`) runs against
real :class:`~client_sim.device.SimulatedDevice` objects (their object tree, their Object 5 state machine, their
SUIT checks), in one event loop, with no socket, no DTLS and no sleep but the services' own.

- :class:`InMemoryDownlink` encodes each LwM2M request as the real sender does (``to_coap`` and the codec
  registry) into an aiocoap :class:`~aiocoap.Message` (plain data here), hands it to the device's own request
  handler (``SimulatedDevice._handle``) and decodes the answer with ``decode_response``, as
  :class:`~lwm2m_server.transport.downlink.DownlinkSender` does. ``push`` runs the real block-wise driver
  (:func:`~lwm2m_server.transport.push.push_package`) against the device's own block handler, so Size1 refusals,
  4.13 with a smaller block size and 4.08 restarts behave as on the wire. Observations are fed by the device's
  :class:`~client_sim.objects.ObjectTree` change notifications (one notification per burst of changes, as the
  device's own pmin-0 observations do); a reboot ends them as the device's 5.03 would.
- :class:`SimulatedFleet` makes the devices, registers them in a :class:`RegistrationService` (so the registry
  publishes the events the services wait for), turns every reboot of a device into a fresh Register, and serves
  pulls (Package URI) from an in-memory :class:`~lwm2m_server.fota.file_server.FileServer`, block by block.

Invariants: a request reaches a device only through the route of its live registration (:func:`route_to`), the
registration's ``remote`` being the device itself; a device that is held (:meth:`InMemoryDownlink.hold`) or
offline answers nothing, so its requests end in RequestTimeoutError after their timeout (none is waited for
otherwise); nothing here opens a socket or starts a device's lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from client_sim.device import SimulatedDevice
from client_sim.firmware import PackageNotFoundError, TransferLostError
from client_sim.objects import Change, ChangeKind
from firmware_object.errors import PackageTooLargeError
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import (
    ClientSleepingError,
    Lwm2mError,
    NotFoundError,
    RequestFailedError,
    RequestTimeoutError,
)
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.nodes import Node
from lwm2m_server.core.operations import DownlinkRequest, ObserveRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.core.registration import Registration, UpdateParams, parse_register
from lwm2m_server.core.responses import DownlinkResponse, decode_node, decode_response
from lwm2m_server.events import EventBus
from lwm2m_server.fota.file_server import MOUNT, FileServer
from lwm2m_server.registry.service import RegistrationService
from lwm2m_server.storage.memory import MemoryDeviceStore, MemoryRegistrationStore
from lwm2m_server.transport.downlink import ParentLookup, Route, prepare_message, route_to
from lwm2m_server.transport.push import DEFAULT_BLOCK_SIZE, PACKAGE, ProgressListener, PushProgress, push_package

__all__ = ["InMemoryDevice", "InMemoryDownlink", "InMemoryObservation", "SimulatedFleet"]

_METHODS = {"GET": Code.GET, "PUT": Code.PUT, "POST": Code.POST, "DELETE": Code.DELETE, "FETCH": Code.FETCH}
DEFAULT_TIMEOUT = 5.0
_END = object()


def _no_parents(_reg_id: str) -> Registration | None:
    return None


class InMemoryDevice(SimulatedDevice):
    """A simulated device that is never started. Its reboot (Execute /3/0/4, installing a firmware, the end of an
    outage) ends its observations and registers it again at once through ``on_reboot``; what would make it send
    an Update (the Registration Update Trigger /1/x/8, a new instance) calls ``on_update`` at the next loop turn
    (both set by :class:`SimulatedFleet`)."""

    def __init__(self, endpoint: str, **options: Any) -> None:
        options.setdefault("reboot_delay", 0.0)
        self.on_reboot: Callable[[InMemoryDevice], object] | None = None
        self.on_update: Callable[[InMemoryDevice], object] | None = None
        self.reboot_listeners: list[Callable[[], None]] = []  # the in-memory observations of this device
        super().__init__(endpoint, "coap://server.invalid", **options)

    def reboot(self) -> None:
        super().reboot()
        self._rebooted()

    def _rebooted(self) -> None:
        for listener in list(self.reboot_listeners):
            listener()
        if self.on_reboot is not None:
            self.on_reboot(self)

    def request_update(self) -> None:
        super().request_update()
        on_update = self.on_update
        if on_update is not None:
            asyncio.get_running_loop().call_soon(lambda: None if self.offline else on_update(self))

    def go_offline(self, duration: float, *, reboot: bool = False) -> None:
        """The outage of :class:`SimulatedDevice`; when it ends the device registers afresh (as its lifecycle
        would): its observations end, ``on_reboot`` is called."""
        was_offline = self.offline
        super().go_offline(duration, reboot=reboot)
        outage = self._outage
        if was_offline or outage is None:
            return
        for listener in list(self.reboot_listeners):
            listener()  # the server's observations are gone with the session

        def back(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and not self.offline and self.on_reboot is not None:
                self.on_reboot(self)

        outage.add_done_callback(back)


class InMemoryObservation:
    """An observation of one path of an :class:`InMemoryDevice` (an
    :class:`~lwm2m_server.transport.downlink.ObservationHandle`): each burst of changes of the device's object tree
    under the path is rendered again by the device and decoded; a reboot ends it with RequestFailedError."""

    def __init__(self, device: InMemoryDevice, request: ObserveRequest, message: Message, initial: DownlinkResponse,
                 model: ObjectModel) -> None:
        self.request = request
        self.initial = initial
        self.established = True
        self._device = device
        self._message = message
        self._model = model
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._pending: asyncio.Handle | None = None
        self._unsubscribe: Callable[[], None] | None = device.objects.subscribe(self._on_change)
        device.reboot_listeners.append(self._on_reboot)

    def _on_change(self, change: Change) -> None:
        path = self.request.path
        if change.kind is ChangeKind.ATTRIBUTES or not (change.path.covers(path) or path.covers(change.path)):
            return
        if self._pending is None:  # one notification per burst of changes, rendered after it
            self._pending = asyncio.get_running_loop().call_soon(self._notify)

    def _notify(self) -> None:
        self._pending = None
        response = self._device._handle(self._message)
        if int(response.code) >> 5 != 2:
            self._end(RequestFailedError(f"observation of {self.request.path} ended with {response.code}"))
            return
        cf = response.opt.content_format
        self._queue.put_nowait(decode_node(response.payload, int(cf) if cf is not None else None,
                                           self.request.path, self._model))

    def _on_reboot(self) -> None:
        self._end(RequestFailedError(f"observation of {self.request.path} ended: the device restarted"))

    def _end(self, last: object) -> None:
        if self._unsubscribe is None:
            return
        self._unsubscribe()
        self._unsubscribe = None
        if self._on_reboot in self._device.reboot_listeners:
            self._device.reboot_listeners.remove(self._on_reboot)
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._queue.put_nowait(last)

    @property
    def active(self) -> bool:
        return self._unsubscribe is not None

    async def notifications(self) -> AsyncIterator[Node]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield cast(Node, item)

    def cancel(self) -> None:
        """End the observation; idempotent."""
        self._end(_END)


class InMemoryDownlink:
    """The :class:`~lwm2m_server.transport.downlink.Downlink` port over :class:`InMemoryDevice` objects (a
    registration's ``remote`` is its device). ``observable=False`` makes every device refuse Observe (the service
    then polls)."""

    def __init__(self, model: ObjectModel | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                 parent_of: ParentLookup = _no_parents, observable: bool = True) -> None:
        self.model = model if model is not None else ObjectModel.default()
        self.timeout = timeout
        self.parent_of = parent_of
        self.observable = observable
        self.requests: list[tuple[str, Message]] = []  # (endpoint, request) in the order they reached devices
        self.observations: list[InMemoryObservation] = []
        self.devices: dict[str, SimulatedDevice] = {}  # by endpoint: for post_to_address only
        self._held: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------------ the test's handles

    def hold(self, endpoint: str) -> None:
        """From now on ``endpoint`` answers nothing (its requests wait, then time out) until :meth:`release`."""
        self._held.setdefault(endpoint, asyncio.Event())

    def release(self, endpoint: str) -> None:
        """Let the requests held for ``endpoint`` through."""
        held = self._held.pop(endpoint, None)
        if held is not None:
            held.set()

    # ------------------------------------------------------------------ the port

    def route(self, reg: Registration) -> Route:
        return route_to(reg, self.parent_of)

    def _message(self, reg: Registration, request: DownlinkRequest) -> Message:
        """The CoAP request the real sender would send."""
        return prepare_message(reg, self.route(reg), request, self.model)

    async def exchange(self, request: Message, endpoint: str, timeout: float) -> Message:
        """One request to the device its ``remote`` names, answered by the device's own handler; raises
        RequestTimeoutError for a device that is held or offline (after ``timeout``)."""
        device = request.remote
        if not isinstance(device, SimulatedDevice):
            raise RequestFailedError(f"request to {endpoint} failed: its route leads to no simulated device")
        await asyncio.sleep(0)  # one loop turn per request, as over a network: other tasks run in between
        held = self._held.get(device.endpoint)
        if held is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.wait(), timeout)
        elif device.offline:
            await asyncio.sleep(timeout)
        if (held is not None and not held.is_set()) or device.offline:
            raise RequestTimeoutError(f"{endpoint} did not answer within {timeout:g} s")
        self.requests.append((device.endpoint, request))
        response = device._handle(request)
        if device.offline:  # it went offline handling the request (a fault): its answer never leaves
            await asyncio.sleep(timeout)
            raise RequestTimeoutError(f"{endpoint} did not answer within {timeout:g} s")
        response.remote = device
        return response

    async def send(self, reg: Registration, request: DownlinkRequest, *, timeout: float | None = None
                   ) -> DownlinkResponse:
        msg = self._message(reg, request)
        response = await self.exchange(msg, reg.endpoint, timeout or self.timeout)
        cf = response.opt.content_format
        return decode_response(request, int(response.code), int(cf) if cf is not None else None, response.payload,
                               self.model, tuple(response.opt.location_path))

    async def observe(self, reg: Registration, request: ObserveRequest, *, timeout: float | None = None
                      ) -> InMemoryObservation:
        msg = self._message(reg, request)
        response = await self.exchange(msg, reg.endpoint, timeout or self.timeout)
        cf = response.opt.content_format
        first = decode_response(request, int(response.code), int(cf) if cf is not None else None,
                                response.payload, self.model)
        observation = InMemoryObservation(msg.remote, request, msg, first, self.model)
        if not self.observable:
            observation.cancel()
            observation.established = False
        else:
            self.observations.append(observation)
        return observation

    async def push(self, reg: Registration, data: bytes, *, path: LwM2mPath = PACKAGE,
                   block_size: int = DEFAULT_BLOCK_SIZE, content_format: int = int(ContentFormat.OPAQUE),
                   total_timeout: float = 600.0, on_progress: ProgressListener | None = None) -> PushProgress:
        """The real block-wise driver against the device's own block handler."""
        return await push_package(self.exchange, self.route(reg), data, path=path, block_size=block_size,
                                  content_format=content_format, request_timeout=self.timeout,
                                  total_timeout=total_timeout, on_progress=on_progress)

    async def post_to_address(self, uri: str, endpoint: str) -> int:
        """POST to the path of ``uri`` on the device named ``endpoint`` (its address means nothing here)."""
        device = self.devices.get(endpoint)
        if device is None:
            raise ClientSleepingError(f"{endpoint} has no simulated device")
        msg = Message(code=Code.POST, uri_path=tuple(s for s in urlsplit(uri).path.split("/") if s))
        msg.remote = device
        return int((await self.exchange(msg, endpoint, self.timeout)).code)


class SimulatedFleet:
    """``count`` :class:`InMemoryDevice` objects named ``prefix + i``, registered in a RegistrationService over
    memory stores; pulls are served from ``files``. ``options(i, endpoint)`` gives each device's keyword options
    (``firmware=FirmwareOptions(...)``, ...)."""

    def __init__(self, count: int = 1, *, prefix: str = "dev-", tenant_id: str = "default",
                 options: Callable[[int, str], dict[str, Any]] | None = None, events: EventBus | None = None,
                 files: FileServer | None = None, clock: Callable[[], float] = time.time,
                 observable: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.tenant_id = tenant_id
        self.events = events if events is not None else EventBus()
        self.files = files if files is not None else FileServer()
        self.clock = clock
        self.registrations = RegistrationService(MemoryRegistrationStore(), MemoryDeviceStore(), self.events, clock)
        self.downlink = InMemoryDownlink(timeout=timeout, parent_of=self.registrations.get, observable=observable)
        self.devices: dict[str, InMemoryDevice] = {}
        for i in range(count):
            endpoint = f"{prefix}{i}"
            self.add(endpoint, **(options(i, endpoint) if options is not None else {}))

    def add(self, endpoint: str, **options: Any) -> InMemoryDevice:
        """One more device, registered now."""
        device = InMemoryDevice(endpoint, **options)
        device.on_reboot = self.register
        device.on_update = self.update
        self.downlink.devices[endpoint] = device
        if device.firmware is not None:
            device.firmware.fetch = self._fetcher(device)
        self.devices[endpoint] = device
        self.register(device)
        return device

    def __getitem__(self, endpoint: str) -> InMemoryDevice:
        return self.devices[endpoint]

    @property
    def endpoints(self) -> Sequence[str]:
        return list(self.devices)

    def register(self, device: SimulatedDevice) -> Registration:
        """A fresh Register of ``device`` (what it sends after a boot): ``registration.registered``."""
        query = (f"ep={device.endpoint}", f"lt={device.lifetime}", f"lwm2m={device.lwm2m_version}", "b=U")
        params = parse_register(query, device._register_payload())
        return self.registrations.register(params, address=f"memory:{device.endpoint}", remote=device,
                                           tenant_id=self.tenant_id)

    def update(self, device: SimulatedDevice) -> Registration | None:
        """An Update of ``device`` (nothing changed but its liveness): ``registration.updated``; None when it is
        not registered."""
        reg = self.registrations.by_endpoint(device.endpoint, tenant_id=self.tenant_id)
        if reg is None:
            return None
        return self.registrations.update(reg.id, UpdateParams(), address=reg.address, remote=device)

    def _fetcher(self, device: InMemoryDevice) -> Callable[[str], Awaitable[bytes]]:
        """The device's pull: block-wise GETs of a Package URI answered by ``files`` (Size2 asked first; a package
        larger than the flash is refused before its first byte is kept)."""
        firmware = device.firmware
        assert firmware is not None
        files = self.files

        async def fetch(uri: str) -> bytes:
            segments = tuple(s for s in urlsplit(uri).path.split("/") if s)
            if len(segments) != 2 or segments[0] != MOUNT:
                raise PackageNotFoundError(f"nothing at {uri}")
            szx = firmware.options.pull_block_size.bit_length() - 5
            received = bytearray()
            number = 0
            while True:
                request = Message(code=Code.GET, uri_path=segments)
                request.opt.block2 = BlockOption.BlockwiseTuple(number, False, szx)
                if number == 0:
                    request.opt.size2 = 0
                try:
                    response = await files.handle(request, segments[1:])
                except NotFoundError:
                    raise PackageNotFoundError(f"nothing at {uri}") from None
                except Lwm2mError as e:
                    raise TransferLostError(f"{uri} answered {int(e.coap_code)}") from None
                size2 = response.opt.size2
                if size2 is not None and size2 > firmware.options.flash_size:
                    raise PackageTooLargeError(f"the package has {size2} bytes; the flash holds "
                                               f"{firmware.options.flash_size}")
                received += response.payload
                firmware.fetched_bytes += len(response.payload)
                # the transfer faults, as DeviceFirmware._get fires them (a broken pull keeps nothing here)
                if firmware._lose_connection_at is not None and len(received) >= firmware._lose_connection_at:
                    firmware._lose_connection_at = None
                    raise TransferLostError("connection lost during the download (fault injected)")
                if firmware._offline_at is not None and len(received) >= firmware._offline_at:
                    firmware._offline_at = None
                    device.go_offline(firmware.options.offline_for)
                    raise TransferLostError("the device went offline during the download (fault injected)")
                block2 = response.opt.block2
                if block2 is None or not block2.more:
                    return bytes(received)
                number += 1
                await asyncio.sleep(0)  # one block per loop turn, as over a network

        return fetch

    async def close(self) -> None:
        """Stop every device (no socket was opened: this cancels their timers and downloads)."""
        for device in self.devices.values():
            await device.stop(deregister=False)

"""A simulated constrained LwM2M device on aiocoap: one UDP socket, one object tree, one lifecycle task.

Invariants:
- a device owns exactly one aiocoap context with one UDP socket; it serves the server's requests on it and
  sends its own Register/Update/De-register from it (so the server sees one address);
- per device there is one asyncio task (the registration lifecycle) and a few loop timers, no threads;
- ``stop()`` ends observations, de-registers (when registered), cancels every timer and the task and closes
  the socket; after it the device holds no loop resources;
- a request's failure is answered with the CoAP code its core error carries; nothing else escapes ``render``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiocoap import Context, Message
from aiocoap.numbers.codes import Code
from aiocoap.resource import ObservableResource, PathCapable

from client_sim.errors import BadValueError, FormatNotAcceptableError, OperationNotAllowedError, PathNotFoundError
from client_sim.firmware import PACKAGE, DeviceFirmware, FirmwareOptions
from client_sim.objects import NUMERIC_TYPES, Change, ChangeKind, ObjectTree
from lwm2m_server.core.codec import link as link_format
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.codec.link import Link
from lwm2m_server.core.errors import CodecError, InvalidPathError, Lwm2mError, UnsupportedContentFormatError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Node,
    Obj,
    ResourceInstance,
    ResourceType,
    SingleResource,
    Value,
)
from lwm2m_server.core.paths import ROOT, LwM2mPath
from lwm2m_server.core.registration import SUPPORTED_VERSIONS
from lwm2m_server.transport.udp import exclusive_context, release

log = logging.getLogger(__name__)

ANNOUNCED_FORMATS: tuple[ContentFormat, ...] = (
    ContentFormat.TEXT,
    ContentFormat.OPAQUE,
    ContentFormat.TLV,
    ContentFormat.SENML_JSON,
    ContentFormat.SENML_CBOR,
    ContentFormat.LWM2M_CBOR,
)
"""What the device announces in ``</>;rt="oma.lwm2m";ct=...`` and accepts in Accept."""

COMPOSITE_FORMATS = frozenset({ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR, ContentFormat.LWM2M_CBOR})
SERVER = LwM2mPath.of(1, 0)
LIFETIME, BINDING, DEFAULT_PMIN, DEFAULT_PMAX = SERVER.child(1), SERVER.child(7), SERVER.child(2), SERVER.child(3)
CURRENT_TIME = LwM2mPath.of(3, 0, 13)
PACKAGE_SEGMENTS = ("5", "0", "0")
MAX_DIAGNOSTIC = 120
MAX_BACKOFF = 60.0


class DeviceState(Enum):
    IDLE = "idle"  # created, not started
    REGISTERING = "registering"  # first Register (or a re-registration) under way
    REGISTERED = "registered"
    FAILED = "failed"  # the last Register failed; retrying with back-off
    STOPPED = "stopped"


StateListener = Callable[["SimulatedDevice", DeviceState, DeviceState], None]


@dataclass(slots=True, eq=False)
class _Observation:
    """One accepted CoAP observation; ``paths`` is one path (GET) or the Observe-Composite list (FETCH)."""

    paths: tuple[LwM2mPath, ...]
    handle: Any  # aiocoap ServerObservation
    last_sent: float
    last_value: float | None
    pending: asyncio.TimerHandle | None = None
    pmax_timer: asyncio.TimerHandle | None = None
    notifications: int = 0

    def cancel_timers(self) -> None:
        for timer in (self.pending, self.pmax_timer):
            if timer is not None:
                timer.cancel()
        self.pending = self.pmax_timer = None


@dataclass(slots=True)
class DeviceCounters:
    """What a device did, for tests and progress reports."""

    registers: int = 0
    updates: int = 0
    deregisters: int = 0
    reboots: int = 0
    notifications: int = 0
    failed_requests: int = 0


def _overlaps(a: LwM2mPath, b: LwM2mPath) -> bool:
    return a.covers(b) or b.covers(a)


def _instance_values(instance: Instance) -> dict[int, Value | Mapping[int, Value]]:
    return {
        rid: dict(res.instances) if isinstance(res, MultipleResource) else res.value
        for rid, res in instance.resources.items()
    }


class _DeviceResource(ObservableResource, PathCapable):
    """The aiocoap site of a device: every path goes to the device (there is no other resource)."""

    def __init__(self, device: SimulatedDevice) -> None:
        super().__init__()
        self._device = device

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        # a pushed package is written block by block into the firmware slot, never assembled in memory first
        return not (self._device.firmware is not None and request.opt.uri_path == PACKAGE_SEGMENTS
                    and request.code in (Code.PUT, Code.POST))

    async def render(self, request: Message) -> Message:
        return self._device._handle(request)

    async def add_observation(self, request: Message, serverobservation: Any) -> None:
        self._device._add_observation(request, serverobservation)

    def get_link_description(self) -> None:
        return None


class SimulatedDevice:
    """One simulated LwM2M client (objects 0, 1, 3, 4 and any extra objects) talking to one server."""

    def __init__(
        self,
        endpoint: str,
        server_uri: str,
        *,
        lifetime: int = 300,
        lwm2m_version: str = "1.1",
        bind_host: str = "127.0.0.1",
        model: ObjectModel | None = None,
        extra_objects: Iterable[Obj] = (),
        update_ratio: float = 0.8,
        reboot_delay: float = 0.2,
        drift_interval: float = 10.0,
        request_timeout: float = 10.0,
        on_state: StateListener | None = None,
        firmware: FirmwareOptions | None = None,
    ) -> None:
        if lwm2m_version not in SUPPORTED_VERSIONS:
            raise ValueError(f"lwm2m_version must be one of {', '.join(SUPPORTED_VERSIONS)}")
        if lifetime < 1:
            raise ValueError("lifetime must be at least 1 s")
        if not 0 < update_ratio < 1:
            raise ValueError("update_ratio must lie between 0 and 1")
        self.endpoint = endpoint
        self.server_uri = server_uri.rstrip("/")
        self.lwm2m_version = lwm2m_version
        self.bind_host = bind_host
        self.update_ratio = update_ratio
        self.reboot_delay = reboot_delay
        self.drift_interval = drift_interval
        self.request_timeout = request_timeout
        self.model = model if model is not None else ObjectModel.default()
        self.counters = DeviceCounters()
        self._on_state = on_state
        self._state = DeviceState.IDLE
        self._rng = random.Random(endpoint)
        self._clock_offset = 0
        self._context: Context | None = None
        self._port = 0
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._drift_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._first_outcome: asyncio.Future[bool] | None = None
        self._location: tuple[str, ...] | None = None
        self._want_register = False
        self._want_update = False
        self._links_dirty = False
        self._sent_lifetime = lifetime
        self._sent_binding = "U"
        self._update_due = 0.0
        self._expires_at = 0.0
        self._stopping = False
        self._observations: set[_Observation] = set()
        self.firmware = DeviceFirmware(self, firmware, clock=self._now) if firmware is not None else None
        self.objects = self._build_objects(lifetime, extra_objects)
        self.objects.subscribe(self._on_change)

    # ------------------------------------------------------------------ public face

    @property
    def state(self) -> DeviceState:
        return self._state

    @property
    def location(self) -> tuple[str, ...] | None:
        """The Location-Path the server gave on Register (``('rd', '5')``), None when not registered."""
        return self._location

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the device's socket is bound to; port 0 before start()."""
        return self.bind_host, self._port

    @property
    def uri(self) -> str:
        host = f"[{self.bind_host}]" if ":" in self.bind_host else self.bind_host
        return f"coap://{host}:{self._port}"

    @property
    def lifetime(self) -> int:
        value = self.objects.get_value(LIFETIME)
        assert isinstance(value, int)
        return value

    @property
    def observation_count(self) -> int:
        return len(self._observations)

    async def start(self, *, wait: bool = True, timeout: float | None = None) -> bool:
        """Bind the socket and start the registration lifecycle. With ``wait``, return whether the first
        Register succeeded (False on failure or after ``timeout``); the device keeps retrying either way."""
        if self._context is not None or self._stopping:
            raise RuntimeError(f"device {self.endpoint} was already started")
        loop = asyncio.get_running_loop()
        self._first_outcome = loop.create_future()
        try:
            self._context, self._port = await exclusive_context(_DeviceResource(self), self.bind_host)
        except OSError:
            self._first_outcome.set_result(False)
            self._set_state(DeviceState.FAILED)
            raise
        self._task = loop.create_task(self._lifecycle(), name=f"lwm2m-sim-{self.endpoint}")
        if self.drift_interval > 0:
            self._drift_timer = loop.call_later(self.drift_interval, self._drift)
        if not wait:
            return True
        try:
            return await asyncio.wait_for(asyncio.shield(self._first_outcome), timeout)
        except TimeoutError:
            return False

    async def stop(self, *, deregister: bool = True, timeout: float = 5.0) -> None:
        """End observations, de-register (if registered and asked), stop every timer and close the socket."""
        if self._stopping:
            return
        self._stopping = True
        if self._drift_timer is not None:
            self._drift_timer.cancel()
        if self.firmware is not None:
            self.firmware.stop()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._end_observations()
        await asyncio.sleep(0)  # let the observation tasks send their last notification
        if deregister and self._location is not None and self._context is not None:
            with contextlib.suppress(Exception):
                await self._deregister(timeout)
        if self._context is not None:
            await self._context.shutdown()
            release(self.bind_host, self._port)
        if self._first_outcome is not None and not self._first_outcome.done():
            self._first_outcome.set_result(False)
        self._location = None
        self._set_state(DeviceState.STOPPED)

    def request_update(self) -> None:
        """Send an Update as soon as possible (as the Registration Update Trigger does)."""
        self._want_update = True
        self._wake.set()

    def reboot(self) -> None:
        """Simulate a reboot now: observations are lost and the device registers again."""
        self.counters.reboots += 1
        self._end_observations()
        if self.firmware is not None:
            self.firmware.on_boot()
        self._want_register = True
        self._wake.set()

    async def wait_for(self, predicate: Callable[[SimulatedDevice], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds (checked after every state change or registration step)."""

        async def waiting() -> None:
            while not predicate(self):
                await self._changed.wait()

        await asyncio.wait_for(waiting(), timeout)

    # ------------------------------------------------------------------ objects

    def _build_objects(self, lifetime: int, extra_objects: Iterable[Obj]) -> ObjectTree:
        for needed in (1, 3):
            if needed not in self.model:
                raise ValueError(f"the model has no object {needed}; a device needs objects 1 and 3")
        tree = ObjectTree(self.model)
        if 0 in self.model:
            tree.add_instance(0, 0, {0: self.server_uri, 1: False, 2: 3, 3: b"", 4: b"", 5: b"", 10: 1})
        tree.add_instance(1, 0, {0: 1, 1: lifetime, 2: 0, 3: 0, 6: True, 7: "U", 8: None})
        serial = f"SN-{self.endpoint}"
        tree.add_instance(3, 0, {
            0: "SCRATCh", 1: "SCRATCh-SIM-1", 2: serial, 3: "1.0.0", 4: None, 5: None,
            6: {0: 1, 1: 5}, 7: {0: 3800, 1: 5000}, 8: {0: 125, 1: 900}, 9: 100, 10: 128, 11: {0: 0}, 12: None,
            14: "+00:00", 15: "Etc/UTC", 16: "U", 17: "sensor", 18: "1.0", 19: "1.0.0", 20: 0, 21: 256,
        })
        tree.bind(CURRENT_TIME, self._now, self._set_clock)
        if 4 in self.model:
            tree.add_instance(4, 0, {
                0: 7, 1: {0: 7, 1: 6}, 2: -85, 3: 80, 4: {0: self.bind_host}, 5: {0: self.bind_host}, 6: 5,
                8: 1234, 9: 1, 10: 262,
            })
        if self.firmware is not None:
            self.firmware.install_object(tree)
        for obj in extra_objects:
            tree.add_object(obj.id)
            for inst in obj.instances.values():
                tree.add_instance(obj.id, inst.id, _instance_values(inst))
        tree.on_execute(SERVER.child(8), lambda _args: self.request_update())
        tree.on_execute(LwM2mPath.of(3, 0, 4), lambda _args: self._later(self.reboot_delay, self.reboot))
        tree.on_execute(LwM2mPath.of(3, 0, 5), lambda _args: self._later(self.reboot_delay, self._factory_reset))
        tree.on_execute(LwM2mPath.of(3, 0, 12), lambda _args: tree.set_value(LwM2mPath.of(3, 0, 11), {0: 0}))
        tree.mark_initial()
        return tree

    def _now(self) -> int:
        return int(time.time()) + self._clock_offset

    def _set_clock(self, value: Value) -> None:
        assert isinstance(value, int)
        self._clock_offset = value - int(time.time())

    def _factory_reset(self) -> None:
        self.objects.factory_reset()
        self._clock_offset = 0
        self.reboot()

    def _drift(self) -> None:
        """Move battery, free memory and signal strength a little; the clock resource always moves.
        A resource the device does not have (a custom model) is simply left alone."""
        steps = (
            (LwM2mPath.of(3, 0, 9), lambda v: 100 if v <= 10 else v - self._rng.choice((0, 1))),
            (LwM2mPath.of(3, 0, 10), lambda v: min(200, max(64, v + self._rng.randint(-4, 4)))),
            (LwM2mPath.of(4, 0, 2), lambda v: min(-60, max(-110, v + self._rng.randint(-2, 2)))),
        )
        for path, step in steps:
            with contextlib.suppress(Lwm2mError):
                value = self.objects.get_value(path)
                if isinstance(value, int) and not isinstance(value, bool):
                    self.objects.set_value(path, step(value))
        self.objects.touch(CURRENT_TIME)
        self._drift_timer = asyncio.get_running_loop().call_later(self.drift_interval, self._drift)

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` after ``delay`` (after the current response went out); stop() cancels it."""
        loop = asyncio.get_running_loop()

        def run() -> None:
            self._timers.discard(handle)
            if not self._stopping:
                callback()

        handle = loop.call_later(delay, run)
        self._timers.add(handle)

    def _on_change(self, change: Change) -> None:
        if change.kind is ChangeKind.STRUCTURE:
            self._links_dirty = True
            self.request_update()
        elif change.kind is ChangeKind.VALUE and self._location is not None and self._registration_changed():
            self.request_update()
        for obs in list(self._observations):
            if any(_overlaps(change.path, p) for p in obs.paths):
                if change.kind is ChangeKind.ATTRIBUTES:
                    self._schedule_pmax(obs)
                else:
                    self._value_changed(obs)

    def _registration_changed(self) -> bool:
        return self.lifetime != self._sent_lifetime or self._binding() != self._sent_binding

    def _binding(self) -> str:
        value = self.objects.get_value(BINDING)
        return value if isinstance(value, str) else "U"

    # ------------------------------------------------------------------ registration lifecycle

    def _set_state(self, state: DeviceState) -> None:
        old, self._state = self._state, state
        self._signal()
        if old is not state and self._on_state is not None:
            self._on_state(self, old, state)

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _sleep_or_wake(self, delay: float) -> bool:
        """Sleep up to ``delay`` seconds; True when woken early by request_update()/reboot()."""
        if not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, delay))
        woken = self._wake.is_set()
        self._wake.clear()
        return woken

    async def _lifecycle(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while not self._stopping:  # not only cancellation: Python 3.11's wait_for can swallow a cancel
            if self._location is None or self._want_register:
                self._want_register = False
                self._want_update = False
                self._set_state(DeviceState.REGISTERING)
                ok = await self._register()
                if self._first_outcome is not None and not self._first_outcome.done():
                    self._first_outcome.set_result(ok)
                if ok:
                    backoff = 1.0
                    self._set_state(DeviceState.REGISTERED)
                else:
                    self._set_state(DeviceState.FAILED)
                    await self._sleep_or_wake(backoff * (0.5 + self._rng.random()))
                    backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            if not self._want_update:
                await self._sleep_or_wake(self._update_due - loop.time())
                if self._want_register:
                    continue
                if not self._want_update and loop.time() < self._update_due:
                    continue
            self._want_update = False
            code = await self._update()
            if code is not None and code.is_successful():
                backoff = 1.0
            elif code is not None or loop.time() > self._expires_at:
                # the server forgot us (4.04) or refuses the Update, or the lifetime ran out: register again
                self._location = None
            else:
                self._update_due = loop.time() + backoff
                backoff = min(backoff * 2, MAX_BACKOFF)
            self._signal()

    def _register_payload(self) -> bytes:
        ct = " ".join(str(int(f)) for f in ANNOUNCED_FORMATS)
        root = Link("/", (("rt", "oma.lwm2m"), ("ct", ct)))
        return link_format.encode((root, *self.objects.registration_links()))

    async def _send(self, request: Message) -> Message | None:
        """Send one request from the device's socket; None on timeout or transport failure."""
        assert self._context is not None
        try:
            return await asyncio.wait_for(self._context.request(request).response, self.request_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # timeouts and aiocoap network errors alike
            self.counters.failed_requests += 1
            log.debug("%s: %s to %s failed: %r", self.endpoint, request.code, self.server_uri, e)
            return None

    async def _register(self) -> bool:
        lifetime, binding = self.lifetime, self._binding()
        request = Message(code=Code.POST, uri=f"{self.server_uri}/rd", payload=self._register_payload(),
                          content_format=int(ContentFormat.LINK))
        request.opt.uri_query = (f"ep={self.endpoint}", f"lt={lifetime}", f"lwm2m={self.lwm2m_version}",
                                 f"b={binding}")
        started = asyncio.get_running_loop().time()
        response = await self._send(request)
        if response is None or response.code != Code.CREATED or not response.opt.location_path:
            if response is not None:
                self.counters.failed_requests += 1
                log.info("%s: Register answered %s", self.endpoint, response.code)
            return False
        self._location = tuple(response.opt.location_path)
        self._sent_lifetime, self._sent_binding, self._links_dirty = lifetime, binding, False
        self._registered_at(started, lifetime)
        self.counters.registers += 1
        return True

    def _registered_at(self, when: float, lifetime: int) -> None:
        self._expires_at = when + lifetime
        self._update_due = when + lifetime * self.update_ratio

    async def _update(self) -> Code | None:
        assert self._location is not None
        lifetime, binding, links_dirty = self.lifetime, self._binding(), self._links_dirty
        query = []
        if lifetime != self._sent_lifetime:
            query.append(f"lt={lifetime}")
        if binding != self._sent_binding:
            query.append(f"b={binding}")
        request = Message(code=Code.POST, uri=f"{self.server_uri}/{'/'.join(self._location)}")
        request.opt.uri_query = tuple(query)
        if links_dirty:
            request.payload = link_format.encode(self.objects.registration_links())
            request.opt.content_format = int(ContentFormat.LINK)
        started = asyncio.get_running_loop().time()
        self._links_dirty = False
        response = await self._send(request)
        if response is None or not response.code.is_successful():
            self._links_dirty = self._links_dirty or links_dirty
            return None if response is None else response.code
        self._sent_lifetime, self._sent_binding = lifetime, binding
        self._registered_at(started, lifetime)
        self.counters.updates += 1
        return response.code

    async def _deregister(self, timeout: float) -> None:
        assert self._location is not None and self._context is not None
        request = Message(code=Code.DELETE, uri=f"{self.server_uri}/{'/'.join(self._location)}")
        self._location = None
        response = await asyncio.wait_for(self._context.request(request).response, timeout)
        if response.code.is_successful():
            self.counters.deregisters += 1

    # ------------------------------------------------------------------ server requests

    def _handle(self, request: Message) -> Message:
        """Map one CoAP request to one LwM2M operation and its answer."""
        try:
            try:
                path = LwM2mPath.from_segments(list(request.opt.uri_path)) if request.opt.uri_path else ROOT
            except InvalidPathError as e:
                raise PathNotFoundError(str(e)) from None
            return self._dispatch(request, path)
        except Lwm2mError as e:
            code = int(e.coap_code)
            return Message(code=Code(code), payload=str(e).encode()[:MAX_DIAGNOSTIC])
        except Exception:
            log.exception("%s: request %s failed", self.endpoint, request.code)
            return Message(code=Code.INTERNAL_SERVER_ERROR)

    def _dispatch(self, request: Message, path: LwM2mPath) -> Message:
        code = request.code
        accept = request.opt.accept
        tree = self.objects
        if code == Code.GET:
            if accept is not None and int(accept) == ContentFormat.LINK:
                links = tree.discover(path)
                return Message(code=Code.CONTENT, payload=link_format.encode(links),
                               content_format=int(ContentFormat.LINK))
            node = tree.read(path)
            return self._content(node, path, None if accept is None else int(accept))
        if code == Code.FETCH:
            return self._read_composite(request, path)
        if self.firmware is not None and path == PACKAGE and code in (Code.PUT, Code.POST):
            return self.firmware.write_package(self._package_payload(request))
        if code == Code.PUT:
            if not request.payload:
                if not request.opt.uri_query:
                    raise BadValueError("PUT without payload or attributes")
                tree.write_attributes(path, self._attributes(request.opt.uri_query))
                return Message(code=Code.CHANGED)
            tree.write(path, self._decode(request, path), replace=True)
            return Message(code=Code.CHANGED)
        if code == Code.POST:
            if path.is_object:
                created = self._create(request, path)
                return Message(code=Code.CREATED, location_path=created.segments)
            if path.is_resource:
                rdef = self.model.resource(path.ids[0], path.ids[2])
                if rdef is None or rdef.executable or not request.payload:
                    tree.execute(path, request.payload.decode("utf-8", errors="replace"))
                    return Message(code=Code.CHANGED)
            if path.is_object_instance or path.is_resource:
                tree.write(path, self._decode(request, path), replace=False)
                return Message(code=Code.CHANGED)
            raise OperationNotAllowedError(f"POST on {path} is not an LwM2M operation")
        if code == Code.DELETE:
            tree.delete(path)
            return Message(code=Code.DELETED)
        if code == Code.iPATCH:
            if not path.is_root:
                raise OperationNotAllowedError("Write-Composite targets the root path")
            fmt = self._content_format(request)
            tree.write_composite(registry.decode_composite(request.payload, fmt, self.model))
            return Message(code=Code.CHANGED)
        raise OperationNotAllowedError(f"method {code} is not supported")

    def _package_payload(self, request: Message) -> Message:
        """A Package write is opaque bytes; a whole (not block-wise) write in another format is decoded first."""
        cf = request.opt.content_format
        if cf is None or int(cf) == ContentFormat.OPAQUE or not request.payload:
            return request
        if request.opt.block1 is not None:
            raise UnsupportedContentFormatError("a block-wise Package write must be opaque (42)")
        node = self._decode(request, PACKAGE)
        if not isinstance(node, SingleResource) or not isinstance(node.value, bytes):
            raise BadValueError("the Package is an opaque value")
        return request.copy(payload=node.value)

    @staticmethod
    def _attributes(query: Iterable[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for item in query:
            name, sep, value = item.partition("=")
            out[name] = value if sep else None
        return out

    @staticmethod
    def _content_format(request: Message) -> ContentFormat:
        if request.opt.content_format is None:
            raise BadValueError("the request has a payload but no Content-Format")
        return ContentFormat.of(int(request.opt.content_format))

    def _decode(self, request: Message, path: LwM2mPath) -> Node:
        return registry.decode(request.payload, self._content_format(request), path, self.model)

    def _create(self, request: Message, path: LwM2mPath) -> LwM2mPath:
        """Create: the payload names the new instance (SenML, LwM2M CBOR, a TLV object-instance record) or is
        the bare resources (TLV resource records), in which case the device picks the lowest free id."""
        fmt = self._content_format(request)
        payload = request.payload
        if fmt in (ContentFormat.TLV, ContentFormat.TLV_OLD) and payload and payload[0] >> 6 in (2, 3):
            free = next(i for i in range(65535) if i not in self.objects.instance_ids(path.ids[0]))
            node = registry.decode(payload, fmt, path.child(free), self.model)
            if not isinstance(node, Instance):
                raise BadValueError("Create needs one object instance")
            return self.objects.create(path, node, assign_id=True)
        node = registry.decode(payload, fmt, path, self.model)
        if isinstance(node, Obj) and len(node.instances) == 1:
            return self.objects.create(path, next(iter(node.instances.values())))
        if isinstance(node, Instance):
            return self.objects.create(path, node)
        raise BadValueError("Create needs exactly one object instance")

    def _content(self, node: Node, path: LwM2mPath, accept: int | None) -> Message:
        fmt = self._response_format(node, path, accept)
        try:
            payload = registry.encode(node, path, fmt, self.model)
        except CodecError as e:
            raise FormatNotAcceptableError(f"{path} cannot be represented in {fmt.label}: {e}") from None
        return Message(code=Code.CONTENT, payload=payload, content_format=int(fmt))

    def _response_format(self, node: Node, path: LwM2mPath, accept: int | None) -> ContentFormat:
        if accept is None:
            if isinstance(node, SingleResource | ResourceInstance):
                return ContentFormat.OPAQUE if node.type is ResourceType.OPAQUE else ContentFormat.TEXT
            return ContentFormat.TLV if self.lwm2m_version == "1.0" else ContentFormat.SENML_CBOR
        try:
            fmt = ContentFormat(accept)
        except ValueError:
            raise FormatNotAcceptableError(f"content format {accept} is not supported") from None
        if fmt is ContentFormat.LINK or not registry.can_encode(fmt, node, path, self.model):
            raise FormatNotAcceptableError(f"{path} cannot be represented in {fmt.label}")
        return fmt

    def _composite_paths(self, request: Message) -> list[LwM2mPath]:
        fmt = self._content_format(request)
        return list(registry.decode_paths(request.payload, fmt))

    def _read_composite(self, request: Message, path: LwM2mPath) -> Message:
        if not path.is_root:
            raise OperationNotAllowedError("Read-Composite targets the root path")
        paths = self._composite_paths(request)
        nodes = self.objects.read_composite(paths)
        accept = request.opt.accept
        fmt = self._content_format(request)
        if accept is not None:
            try:
                fmt = ContentFormat(int(accept))
            except ValueError:
                raise FormatNotAcceptableError(f"content format {int(accept)} is not supported") from None
        if fmt not in COMPOSITE_FORMATS:
            raise FormatNotAcceptableError(f"Read-Composite cannot answer in {fmt.label}")
        try:
            payload = registry.encode_composite(nodes, fmt, self.model)
        except CodecError as e:
            raise FormatNotAcceptableError(str(e)) from None
        return Message(code=Code.CONTENT, payload=payload, content_format=int(fmt))

    # ------------------------------------------------------------------ observations

    def _add_observation(self, request: Message, handle: Any) -> None:
        """Accept an Observe (GET) or Observe-Composite (FETCH); a request that then fails to render ends the
        observation again (aiocoap calls the cancellation callback)."""
        if self._stopping:
            return
        try:
            if request.code == Code.GET:
                if request.opt.accept is not None and int(request.opt.accept) == ContentFormat.LINK:
                    return
                paths: tuple[LwM2mPath, ...] = (LwM2mPath.from_segments(list(request.opt.uri_path)),)
            elif request.code == Code.FETCH:
                paths = tuple(self._composite_paths(request))
            else:
                return
        except Lwm2mError:
            return
        loop = asyncio.get_running_loop()
        obs = _Observation(paths, handle, loop.time(), self._numeric_value(paths))
        self._observations.add(obs)

        def cancelled() -> None:
            obs.cancel_timers()
            self._observations.discard(obs)
            self._signal()

        handle.accept(cancelled)
        self._schedule_pmax(obs)
        self._signal()

    def _attributes_of(self, obs: _Observation) -> dict[str, str]:
        attrs = self.objects.effective_attributes(obs.paths[0]) if len(obs.paths) == 1 else {}
        for name, path in (("pmin", DEFAULT_PMIN), ("pmax", DEFAULT_PMAX)):
            if name not in attrs:
                with contextlib.suppress(Lwm2mError):
                    default = self.objects.get_value(path)
                    if isinstance(default, int) and default > 0:
                        attrs[name] = str(default)
        return attrs

    def _numeric_value(self, paths: tuple[LwM2mPath, ...]) -> float | None:
        if len(paths) != 1 or paths[0].depth < 3 or paths[0].ids[0] not in self.objects.object_ids:
            return None
        rdef = self.model.resource(paths[0].ids[0], paths[0].ids[2])
        if rdef is None or rdef.type not in NUMERIC_TYPES:
            return None
        try:
            value = self.objects.get_value(paths[0])
        except Lwm2mError:
            return None
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def _value_changed(self, obs: _Observation) -> None:
        """Notify soon (at the next loop turn, or when pmin allows), unless gt/lt/st say this change does not
        matter."""
        attrs = self._attributes_of(obs)
        if {"gt", "lt", "st"} & attrs.keys():
            new = self._numeric_value(obs.paths)
            old = obs.last_value
            if new is not None and old is not None and not self._crosses(attrs, old, new):
                return
        if obs.pending is None:  # one notification per burst of changes (e.g. an instance write)
            loop = asyncio.get_running_loop()
            due = obs.last_sent + float(attrs.get("pmin", 0))
            obs.pending = loop.call_later(max(0.0, due - loop.time()), self._notify, obs)

    @staticmethod
    def _crosses(attrs: Mapping[str, str], old: float, new: float) -> bool:
        if "st" in attrs and abs(new - old) >= float(attrs["st"]):
            return True
        if "gt" in attrs and (old > float(attrs["gt"])) != (new > float(attrs["gt"])):
            return True
        return "lt" in attrs and (old < float(attrs["lt"])) != (new < float(attrs["lt"]))

    def _schedule_pmax(self, obs: _Observation) -> None:
        if obs.pmax_timer is not None:
            obs.pmax_timer.cancel()
            obs.pmax_timer = None
        pmax = float(self._attributes_of(obs).get("pmax", 0))
        if pmax > 0:
            loop = asyncio.get_running_loop()
            obs.pmax_timer = loop.call_later(max(0.0, obs.last_sent + pmax - loop.time()), self._notify, obs)

    def _notify(self, obs: _Observation) -> None:
        if obs not in self._observations or self._stopping:
            return
        obs.cancel_timers()
        obs.handle.trigger()
        obs.last_sent = asyncio.get_running_loop().time()
        obs.last_value = self._numeric_value(obs.paths)
        obs.notifications += 1
        self.counters.notifications += 1
        self._schedule_pmax(obs)

    def _end_observations(self) -> None:
        """End every observation with 5.03 (a rebooting or stopping device forgets them)."""
        for obs in list(self._observations):
            obs.cancel_timers()
            obs.handle.trigger(Message(code=Code.SERVICE_UNAVAILABLE, payload=b"device restarting"), is_last=True)
        self._observations.clear()
        self._signal()

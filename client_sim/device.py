"""A simulated constrained LwM2M device on aiocoap: one object tree, one lifecycle task, one live connection.

The device connects with the server account of its Security object (/0): NoSec (mode 3) to a ``coap://`` URI over
a UDP socket of its own, or PSK (mode 0) to a ``coaps://`` URI over DTLS (identity /0/x/3, key /0/x/5). A device
made from factory credentials holds only a bootstrap account at first: it bootstraps (client-initiated, see
:mod:`client_sim.bootstrap`), then registers with the account the bootstrap server wrote. Execute /1/x/9
(Bootstrap-Request Trigger) and ``bootstrap_on_failure`` Register failures in a row send it back to bootstrap.
With :class:`~client_sim.firmware.Faults` it misbehaves on purpose: a lossy or slow link (every connection it opens
goes through its :class:`~client_sim.network.Link`), outages (:meth:`SimulatedDevice.go_offline`) and the firmware
faults.

Invariants:
- a device holds at most one server connection: one aiocoap context (a UDP socket it also serves on, or a DTLS
  client context whose one session carries Register/Update/De-register, the server's requests and firmware
  pulls); while bootstrapping it holds only the bootstrap context, which is shut down when the bootstrap ends;
- the DTLS session is kept alive by holding the ``remote`` of the last Register/Update answer;
- per device there is one asyncio task (the lifecycle: bootstrap, register, update) and a few loop timers, no
  threads;
- ``stop()`` ends observations, de-registers (when registered), cancels every timer and the task and shuts every
  context down; after it the device holds no loop resources and no socket;
- a request's failure is answered with the CoAP code its core error carries; nothing else escapes ``render``;
- keys live only in the Security object; no log line, ``repr`` or answer carries one (the server gets 4.01 on /0);
- while offline (an outage) the device holds no connection, sends nothing and answers nothing; it comes back with
  a fresh Register.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from aiocoap import Context, Message
from aiocoap.numbers.codes import Code
from aiocoap.resource import ObservableResource, PathCapable

from client_sim.accounts import MODE_NOSEC, MODE_PSK, Account, bootstrap_account, server_account
from client_sim.bootstrap import BootstrapAttempt, BootstrapInterface, BootstrapResult
from client_sim.content import content_response
from client_sim.credentials import FactoryCredentials
from client_sim.errors import BadValueError, FormatNotAcceptableError, OperationNotAllowedError, PathNotFoundError
from client_sim.firmware import PACKAGE, DeviceFirmware, Faults, FirmwareOptions
from client_sim.network import Link as NetworkLink
from client_sim.objects import NUMERIC_TYPES, Change, ChangeKind, ObjectTree
from lwm2m_server.coap.dtls import MAX_IDENTITY_LENGTH, MAX_PSK_LENGTH, dtls_client_context
from lwm2m_server.coap.udp import exclusive_context, release
from lwm2m_server.core.codec import link as link_format
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.codec.link import Link
from lwm2m_server.core.errors import CodecError, InvalidPathError, Lwm2mError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Node,
    Obj,
    Value,
)
from lwm2m_server.core.paths import ROOT, LwM2mPath
from lwm2m_server.core.registration import SUPPORTED_VERSIONS

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
SERVER_OBJECT = 1
LIFETIME, DEFAULT_PMIN, DEFAULT_PMAX, BINDING = 1, 2, 3, 7
REGISTRATION_UPDATE_TRIGGER, BOOTSTRAP_REQUEST_TRIGGER = 8, 9
CURRENT_TIME = LwM2mPath.of(3, 0, 13)
PACKAGE_SEGMENTS = ("5", "0", "0")
MAX_DIAGNOSTIC = 120
MAX_BACKOFF = 60.0


class DeviceState(Enum):
    IDLE = "idle"  # created, not started
    BOOTSTRAPPING = "bootstrapping"  # a client-initiated bootstrap is under way (or waiting out a busy server)
    REGISTERING = "registering"  # first Register (or a re-registration) under way
    REGISTERED = "registered"
    FAILED = "failed"  # the last Register or bootstrap failed; retrying with back-off
    OFFLINE = "offline"  # an outage (a fault): no connection, nothing sent or answered
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
    bootstraps: int = 0  # bootstraps that completed (Finish accepted, or a Bootstrap-Pack applied)
    bootstrap_attempts: int = 0
    bootstrap_failures: int = 0  # attempts that failed (a busy server's 5.03 is not a failure)
    bootstrap_fallbacks: int = 0  # bootstraps started because Register kept failing
    outages: int = 0  # times the device went offline (fault injection)


def _overlaps(a: LwM2mPath, b: LwM2mPath) -> bool:
    return a.covers(b) or b.covers(a)


def _check_server_credentials(uri: str, identity: bytes | None, psk: bytes | None) -> None:
    scheme = uri.partition(":")[0].lower()
    if scheme == "coaps":
        if identity is None or psk is None:
            raise ValueError("a coaps:// server needs psk_identity and psk")
        if not 1 <= len(identity) <= MAX_IDENTITY_LENGTH:
            raise ValueError(f"psk_identity must be 1..{MAX_IDENTITY_LENGTH} bytes")
        if not 1 <= len(psk) <= MAX_PSK_LENGTH:
            raise ValueError(f"psk must be 1..{MAX_PSK_LENGTH} bytes (tinydtls' limit)")
    elif scheme == "coap":
        if identity is not None or psk is not None:
            raise ValueError("a PSK needs a coaps:// server URI")
    else:
        raise ValueError("the server URI must be coap:// or coaps://")


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
        return self._device._needs_blockwise_assembly(request)

    async def render(self, request: Message) -> Message:
        return await self._device._render(request)

    async def add_observation(self, request: Message, serverobservation: Any) -> None:
        self._device._add_observation(request, serverobservation)

    def get_link_description(self) -> None:
        return None


class _LinkedBootstrapAttempt(BootstrapAttempt):
    """A bootstrap attempt whose connection goes through the device's link."""

    def __init__(self, *args: Any, link: NetworkLink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._link = link

    async def _open(self) -> None:
        await super()._open()
        if self._context is not None:
            self._link.attach(self._context)


class SimulatedDevice:
    """One simulated LwM2M client (objects 0, 1, 3, 4 and any extra objects) talking to one server.

    Give ``server_uri`` (``coap://`` for NoSec; ``coaps://`` with ``psk_identity`` and ``psk`` for DTLS-PSK), or
    ``factory`` credentials (the device bootstraps first), or both (the server account is used first; the device
    falls back to bootstrap when Register keeps failing). ``faults`` (when given) replace the fault fields of
    ``firmware``; a device without ``firmware`` only honours the link faults.
    """

    needs_server_account: ClassVar[bool] = True
    """False for a device that registers through someone else (an end device behind a gateway)."""

    def __init__(
        self,
        endpoint: str,
        server_uri: str | None = None,
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
        psk_identity: bytes | str | None = None,
        psk: bytes | None = None,
        short_server_id: int = 1,
        factory: FactoryCredentials | None = None,
        bootstrap_timeout: float = 30.0,
        bootstrap_on_failure: int = 3,
        faults: Faults | None = None,
    ) -> None:
        if lwm2m_version not in SUPPORTED_VERSIONS:
            raise ValueError(f"lwm2m_version must be one of {', '.join(SUPPORTED_VERSIONS)}")
        if lifetime < 1:
            raise ValueError("lifetime must be at least 1 s")
        if not 0 < update_ratio < 1:
            raise ValueError("update_ratio must lie between 0 and 1")
        if server_uri is None and factory is None and self.needs_server_account:
            raise ValueError("a device needs a server URI or factory credentials to bootstrap with")
        if factory is not None and factory.endpoint != endpoint:
            raise ValueError(f"the factory credentials are for {factory.endpoint!r}, not {endpoint!r}")
        if bootstrap_timeout <= 0 or bootstrap_on_failure < 1:
            raise ValueError("bootstrap_timeout must be positive and bootstrap_on_failure at least 1")
        identity = psk_identity.encode() if isinstance(psk_identity, str) else psk_identity
        if server_uri is not None:
            server_uri = server_uri.rstrip("/")
            _check_server_credentials(server_uri, identity, psk)
        self.endpoint = endpoint
        self.lwm2m_version = lwm2m_version
        self.bind_host = bind_host
        self.update_ratio = update_ratio
        self.reboot_delay = reboot_delay
        self.drift_interval = drift_interval
        self.request_timeout = request_timeout
        self.bootstrap_timeout = bootstrap_timeout
        self.bootstrap_on_failure = bootstrap_on_failure
        self.model = model if model is not None else ObjectModel.default()
        if (factory is not None or identity is not None) and 0 not in self.model:
            raise ValueError("the model has no object 0: a device with credentials needs the Security object")
        self.counters = DeviceCounters()
        self._default_lifetime = lifetime
        self._fallback_uri = server_uri if 0 not in self.model else None
        self._on_state = on_state
        self._state = DeviceState.IDLE
        self._rng = random.Random(endpoint)
        self._clock_offset = 0
        self._context: Context | None = None
        self._context_key: tuple[str, int, bytes, bytes] | None = None
        self._port = 0
        self._remote: Any = None  # the DTLS session lives while its remote is referenced
        self._account_in_use: Account | None = None
        self._registered_uri = ""
        self._attempt: BootstrapAttempt | None = None
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._drift_timer: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._first_outcome: asyncio.Future[bool] | None = None
        self._location: tuple[str, ...] | None = None
        self._want_register = False
        self._want_update = False
        self._want_bootstrap = False
        self._register_failures = 0
        self._fresh_session = False  # set by a reboot: the next Register opens a new DTLS session
        self._retry_after: float | None = None  # Max-Age of a 5.03 answer to Register
        self._links_dirty = False
        self._sent_lifetime = lifetime
        self._sent_binding = "U"
        self._update_due = 0.0
        self._expires_at = 0.0
        self._stopping = False
        self._observations: set[_Observation] = set()
        self._offline = False
        self._outage: asyncio.Task[None] | None = None
        self._online = asyncio.Event()
        self._online.set()
        if faults is not None and firmware is not None:
            firmware = firmware.with_faults(faults)
        self.faults = faults if faults is not None else firmware.faults if firmware is not None else Faults()
        self.link = NetworkLink(self.faults.link, self.faults.seed if self.faults.seed is not None else endpoint) \
            if self.faults.needs_link else None
        self.firmware = DeviceFirmware(self, firmware, clock=self._now) if firmware is not None else None
        self.objects = self._build_objects(lifetime, extra_objects, server_uri, identity, psk, short_server_id,
                                           factory)
        self.objects.subscribe(self._on_change)
        self.bootstrap_interface = BootstrapInterface(self.objects, lwm2m_version=lwm2m_version)

    @classmethod
    def from_factory(cls, credentials: FactoryCredentials, **options: Any) -> SimulatedDevice:
        """A device fresh from the factory: it bootstraps with ``credentials`` before it registers anywhere."""
        return cls(credentials.endpoint, options.pop("server_uri", None), factory=credentials, **options)

    # ------------------------------------------------------------------ public face

    @property
    def state(self) -> DeviceState:
        return self._state

    @property
    def location(self) -> tuple[str, ...] | None:
        """The Location-Path the server gave on Register (``('rd', '5')``), None when not registered."""
        return self._location

    @property
    def server_uri(self) -> str:
        """The URI of the server account the device registers with ('' while it has none)."""
        account = self._account()
        return account.uri.rstrip("/") if account is not None else ""

    @property
    def secure(self) -> bool:
        """True while the device's server connection is DTLS."""
        return self._context_key is not None and self._context_key[0].lower().startswith("coaps:")

    @property
    def psk_identity(self) -> bytes | None:
        """The PSK identity of the server account in use (None for NoSec or without an account)."""
        account = self._account()
        return account.identity if account is not None and account.mode == MODE_PSK else None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) of the device's socket: the UDP socket it serves on, or the local end of its DTLS
        session; port 0 while it has none."""
        if self.secure:
            try:
                hostinfo = str(self._remote.hostinfo_local) if self._remote is not None else ""
            except Exception:  # the session's socket is gone
                hostinfo = ""
            if hostinfo:
                host, _, port = str(hostinfo).rpartition(":")
                return host.strip("[]") or self.bind_host, int(port) if port.isdigit() else 0
            return self.bind_host, 0
        return self.bind_host, self._port

    @property
    def uri(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'coaps' if self.secure else 'coap'}://{host}:{port}"

    @property
    def lifetime(self) -> int:
        value = self._server_value(LIFETIME)
        return value if isinstance(value, int) and not isinstance(value, bool) else self._default_lifetime

    @property
    def observation_count(self) -> int:
        return len(self._observations)

    async def start(self, *, wait: bool = True, timeout: float | None = None) -> bool:
        """Open the server connection (when the device has a server account) and start the lifecycle. With
        ``wait``, return whether the first Register succeeded (False on failure, including a failed bootstrap, or
        after ``timeout``); the device keeps retrying either way."""
        if self._task is not None or self._stopping:
            raise RuntimeError(f"device {self.endpoint} was already started")
        loop = asyncio.get_running_loop()
        self._first_outcome = loop.create_future()
        account = self._account()
        if account is not None and not self._want_bootstrap:
            try:
                await self._connect(account)
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
        """End observations, de-register (if registered and asked), stop every timer and shut the contexts down."""
        if self._stopping:
            return
        self._stopping = True
        if self._drift_timer is not None:
            self._drift_timer.cancel()
        if self.firmware is not None:
            self.firmware.stop()
        if self._outage is not None:
            self._outage.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._outage
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._attempt is not None:
            await self._attempt.close()
            self._attempt = None
        self._end_observations()
        await asyncio.sleep(0)  # let the observation tasks send their last notification
        if deregister and self._location is not None and self._context is not None:
            with contextlib.suppress(Exception):
                await self._deregister(timeout)
        await self._disconnect()
        if self.link is not None:
            self.link.close()
        if self._first_outcome is not None and not self._first_outcome.done():
            self._first_outcome.set_result(False)
        self._location = None
        self._set_state(DeviceState.STOPPED)

    def request_update(self) -> None:
        """Send an Update as soon as possible (as the Registration Update Trigger does)."""
        self._want_update = True
        self._wake.set()

    def request_bootstrap(self) -> None:
        """Bootstrap again as soon as possible (as the Bootstrap-Request Trigger does): de-register, bootstrap with
        the factory credentials, register with what the bootstrap server wrote."""
        self._want_bootstrap = True
        self._wake.set()

    def reboot(self) -> None:
        """Simulate a reboot now: observations (and a DTLS session) are lost and the device registers again."""
        self.counters.reboots += 1
        self._fresh_session = True
        self._end_observations()
        if self.firmware is not None:
            self.firmware.on_boot()
        self._want_register = True
        self._wake.set()

    @property
    def offline(self) -> bool:
        """True during an outage (:meth:`go_offline`)."""
        return self._offline

    def go_offline(self, duration: float, *, reboot: bool = False) -> None:
        """Vanish now for ``duration`` seconds (a fault; ignored while offline or stopping): the link goes down at
        once (nothing leaves, nothing arrives, no close_notify), observations are forgotten, the connection is
        dropped without a De-register; afterwards the device registers afresh. ``reboot``: it lost power, so it
        boots on its way back (the firmware decides what runs)."""
        if self._offline or self._stopping:
            return
        self._offline = True
        self._online.clear()
        self.counters.outages += 1
        if self.link is not None:
            self.link.up = False
        log.info("%s: offline for %g s%s", self.endpoint, duration, " (power lost)" if reboot else "")
        self._outage = asyncio.get_running_loop().create_task(self._run_outage(duration, reboot),
                                                               name=f"lwm2m-sim-outage-{self.endpoint}")

    async def _run_outage(self, duration: float, reboot: bool) -> None:
        self._location = None
        self._forget_observations()
        self._set_state(DeviceState.OFFLINE)
        self._wake.set()  # the lifecycle parks until the outage ends
        await self._disconnect()
        await asyncio.sleep(duration)
        if self.link is not None:
            self.link.up = True
        self._offline = False
        self._outage = None
        if reboot:
            self.counters.reboots += 1
            if self.firmware is not None:
                self.firmware.on_boot()
        self._fresh_session = True
        self._want_register = True
        self._online.set()
        self._wake.set()

    async def wait_for(self, predicate: Callable[[SimulatedDevice], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds (checked after every state change or registration step)."""

        async def waiting() -> None:
            while not predicate(self):
                await self._changed.wait()

        await asyncio.wait_for(waiting(), timeout)

    # ------------------------------------------------------------------ objects

    def _build_objects(self, lifetime: int, extra_objects: Iterable[Obj], server_uri: str | None,
                       identity: bytes | None, psk: bytes | None, ssid: int,
                       factory: FactoryCredentials | None) -> ObjectTree:
        for needed in (1, 3):
            if needed not in self.model:
                raise ValueError(f"the model has no object {needed}; a device needs objects 1 and 3")
        tree = ObjectTree(self.model)
        tree.add_object(SERVER_OBJECT)
        tree.on_execute_any(SERVER_OBJECT, REGISTRATION_UPDATE_TRIGGER, lambda _args: self.request_update())
        if factory is not None:
            tree.on_execute_any(SERVER_OBJECT, BOOTSTRAP_REQUEST_TRIGGER,
                                lambda _args: self._later(0, self.request_bootstrap))
        if 0 in self.model:
            tree.add_object(0)
            if factory is not None:
                tree.add_instance(0, 0, {0: factory.bootstrap_uri, 1: True, 2: MODE_PSK, 3: factory.identity,
                                         4: b"", 5: factory.psk_key})
            if server_uri is not None:
                mode = MODE_PSK if identity is not None else MODE_NOSEC
                tree.add_instance(0, 1 if factory is not None else 0, {
                    0: server_uri, 1: False, 2: mode, 3: identity or b"", 4: b"", 5: psk or b"", 10: ssid})
        if server_uri is not None:
            tree.add_instance(1, 0, {0: ssid, 1: lifetime, 2: 0, 3: 0, 6: True, 7: "U", 8: None})
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
        return self._finish_objects(tree, extra_objects)

    def _finish_objects(self, tree: ObjectTree, extra_objects: Iterable[Obj]) -> ObjectTree:
        """What every device's object tree ends with: Object 5 (with firmware), the extra objects, the Device
        object's executes (reboot, factory reset, reset error code), then the initial state is marked."""
        if self.firmware is not None:
            self.firmware.install_object(tree)
        for obj in extra_objects:
            tree.add_object(obj.id)
            for inst in obj.instances.values():
                tree.add_instance(obj.id, inst.id, _instance_values(inst))
        tree.on_execute(LwM2mPath.of(3, 0, 4), lambda _args: self._later(self.reboot_delay, self.reboot))
        tree.on_execute(LwM2mPath.of(3, 0, 5), lambda _args: self._later(self.reboot_delay, self._factory_reset))
        tree.on_execute(LwM2mPath.of(3, 0, 12), lambda _args: tree.set_value(LwM2mPath.of(3, 0, 11), {0: 0}))
        tree.mark_initial()
        return tree

    def _account(self) -> Account | None:
        """The server account to register with: the first usable one of /0 (or, for a model without the Security
        object, the server URI given)."""
        if self._fallback_uri is not None:
            iids = self.objects.instance_ids(SERVER_OBJECT)
            return Account(-1, self._fallback_uri, MODE_NOSEC, b"", b"", None, False, iids[0] if iids else None)
        return server_account(self.objects)

    def _bootstrap_account(self) -> Account | None:
        return None if self._fallback_uri is not None else bootstrap_account(self.objects)

    def _server_value(self, rid: int) -> object:
        """A resource of the /1 instance of the account in use (or about to be used); None without one."""
        account = self._account_in_use if self._account_in_use is not None else self._account()
        iid = account.server_iid if account is not None else None
        if iid is None:
            return None
        try:
            return self.objects.get_value(LwM2mPath.of(SERVER_OBJECT, iid, rid))
        except Lwm2mError:
            return None

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
            self._structure_changed()
        elif change.kind is ChangeKind.VALUE and self._location is not None and self._registration_changed():
            self.request_update()
        for obs in list(self._observations):
            if any(_overlaps(change.path, p) for p in obs.paths):
                if change.kind is ChangeKind.ATTRIBUTES:
                    self._schedule_pmax(obs)
                else:
                    self._value_changed(obs)

    def _structure_changed(self) -> None:
        """An object instance came or went: the server hears of it in an Update with the new links, at once."""
        self._links_dirty = True
        self.request_update()

    def _registration_changed(self) -> bool:
        return self.lifetime != self._sent_lifetime or self._binding() != self._sent_binding

    def _binding(self) -> str:
        value = self._server_value(BINDING)
        return value if isinstance(value, str) and value else "U"

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
        bootstrap_backoff = 1.0
        while not self._stopping:  # not only cancellation: Python 3.11's wait_for can swallow a cancel
            if self._offline:
                await self._online.wait()
                continue
            if self._want_bootstrap or ((self._location is None or self._want_register) and self._account() is None):
                wait = await self._bootstrap_step(bootstrap_backoff)
                if wait is None:
                    bootstrap_backoff = 1.0
                elif wait > 0:
                    if self._state is DeviceState.FAILED:
                        bootstrap_backoff = min(bootstrap_backoff * 2, MAX_BACKOFF)
                    await self._sleep_or_wake(wait)
                continue
            if self._location is None or self._want_register:
                self._want_register = False
                self._want_update = False
                self._set_state(DeviceState.REGISTERING)
                ok = await self._register()
                if self._offline:
                    continue
                if self._first_outcome is not None and not self._first_outcome.done():
                    self._first_outcome.set_result(ok)
                if ok:
                    backoff = 1.0
                    self._register_failures = 0
                    self._set_state(DeviceState.REGISTERED)
                else:
                    self._set_state(DeviceState.FAILED)
                    if (self._register_failures >= self.bootstrap_on_failure
                            and self._bootstrap_account() is not None):
                        log.info("%s: Register failed %d times in a row; bootstrapping", self.endpoint,
                                 self._register_failures)
                        self._register_failures = 0
                        self.counters.bootstrap_fallbacks += 1
                        self._want_bootstrap = True
                    delay = backoff * (0.5 + self._rng.random())
                    if self._retry_after is not None:  # a busy server (5.03) said how long to wait
                        delay, self._retry_after = max(delay, self._retry_after), None
                    await self._sleep_or_wake(delay)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            if not self._want_update:
                await self._sleep_or_wake(self._update_due - loop.time())
                if self._want_register or self._want_bootstrap:
                    continue
                if not self._want_update and loop.time() < self._update_due:
                    continue
            self._want_update = False
            code = await self._update()
            if self._offline:
                continue
            if code is not None and code.is_successful():
                backoff = 1.0
            elif code == Code.SERVICE_UNAVAILABLE and loop.time() < self._expires_at:
                # busy, or too many Updates from us (rate limited): the registration stands; Update again after
                # the Max-Age it gave (re-registering would only add to the load)
                self._update_due = loop.time() + (self._retry_after or backoff)
                self._retry_after = None
            elif code is not None or loop.time() > self._expires_at:
                # the server forgot us (4.04) or refuses the Update, or the lifetime ran out: register again
                self._location = None
            else:
                self._update_due = loop.time() + backoff
                backoff = min(backoff * 2, MAX_BACKOFF)
            self._signal()

    # ------------------------------------------------------------------ bootstrap

    async def _bootstrap_step(self, backoff: float) -> float | None:
        """One bootstrap attempt; None when it succeeded, else how long to wait before the next one."""
        account = self._bootstrap_account()
        if account is None or not account.usable:
            # nothing to bootstrap with (a factory reset may bring the factory account back): wait to be woken
            self._want_bootstrap = False
            self._outcome(False)
            self._set_state(DeviceState.FAILED)
            return MAX_BACKOFF
        self._want_bootstrap = True  # until a bootstrap completes
        await self._leave_server()
        self._set_state(DeviceState.BOOTSTRAPPING)
        self.counters.bootstrap_attempts += 1
        options: dict[str, Any] = {"timeout": self.bootstrap_timeout, "request_timeout": self.request_timeout,
                                   "bind_host": self.bind_host}
        if self.link is not None:
            self._attempt = _LinkedBootstrapAttempt(self.bootstrap_interface, account, self.endpoint, link=self.link,
                                                    **options)
        else:
            self._attempt = BootstrapAttempt(self.bootstrap_interface, account, self.endpoint, **options)
        try:
            result: BootstrapResult = await self._attempt.run()
        finally:
            self._attempt = None
        self._wake.clear()  # the bootstrap's writes asked for Updates; a Register comes next anyway
        if result.success:
            self._want_bootstrap = False
            self._register_failures = 0
            self._want_register = True
            self.counters.bootstraps += 1
            log.info("%s: bootstrapped%s", self.endpoint, " (Bootstrap-Pack)" if result.pack else "")
            return None
        if result.retry_after is not None:
            log.info("%s: bootstrap server busy; retrying in %g s", self.endpoint, result.retry_after)
            return result.retry_after * (1 + 0.1 * self._rng.random())
        self.counters.bootstrap_failures += 1
        log.info("%s: bootstrap failed: %s", self.endpoint, result.reason)
        self._outcome(False)
        self._set_state(DeviceState.FAILED)
        return backoff * (0.5 + self._rng.random())

    def _outcome(self, ok: bool) -> None:
        if self._first_outcome is not None and not self._first_outcome.done():
            self._first_outcome.set_result(ok)

    async def _leave_server(self) -> None:
        """Before a bootstrap: de-register (best effort), forget observations and close the server connection."""
        if self._location is not None and self._context is not None:
            with contextlib.suppress(Exception):
                await self._deregister(min(self.request_timeout, 5.0))
        self._location = None
        self._end_observations()
        await self._disconnect()

    # ------------------------------------------------------------------ the server connection

    async def _connect(self, account: Account) -> None:
        """Make the server connection fit ``account`` (reusing the current one when it does). Raises OSError when
        no UDP port is left."""
        if self._context is not None and self._context_key == account.connection:
            return
        await self._disconnect()
        if self._offline:
            raise OSError(errno.ENETDOWN, "the device is offline")
        if account.secure:
            self._context = await dtls_client_context(_DeviceResource(self), account.uri.rstrip("/"),
                                                      account.identity, account.key, loggername="coap-sim")
        else:
            self._context, self._port = await exclusive_context(_DeviceResource(self), self.bind_host)
        if self.link is not None:
            self.link.attach(self._context)
        self._context_key = account.connection
        if self.firmware is not None:
            self.firmware.use_scheme("coaps" if account.secure else "coap")

    async def _disconnect(self) -> None:
        context, self._context, self._context_key, self._remote = self._context, None, None, None
        self._account_in_use = None
        if context is not None:
            with contextlib.suppress(Exception):
                await context.shutdown()
        if self._port:
            release(self.bind_host, self._port)
            self._port = 0

    async def _renew_session(self) -> None:
        """Drop the DTLS session (its context) and open a fresh context for the same account."""
        account = self._account_in_use
        self._end_observations()
        await self._disconnect()
        if account is not None and not self._offline:
            with contextlib.suppress(OSError):
                await self._connect(account)
            self._account_in_use = account

    def _register_payload(self) -> bytes:
        ct = " ".join(str(int(f)) for f in ANNOUNCED_FORMATS)
        root = Link("/", (("rt", "oma.lwm2m"), ("ct", ct)))
        return link_format.encode((root, *self.objects.registration_links()))

    async def _send(self, request: Message, timeout: float | None = None) -> Message | None:
        """Send one request over the server connection; None on timeout or transport failure (a refused DTLS
        handshake too)."""
        if self._context is None:
            return None
        try:
            response = await asyncio.wait_for(self._context.request(request).response,
                                              timeout if timeout is not None else self.request_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # timeouts and aiocoap network errors alike
            self.counters.failed_requests += 1
            log.debug("%s: %s to %s failed: %s", self.endpoint, request.code, self._registered_uri or "server",
                      type(e).__name__)
            return None
        if self.secure:
            self._remote = response.remote  # keeps the DTLS session alive
        return response

    async def _register(self) -> bool:
        account = self._account()
        if account is None:
            return False
        if self._fresh_session:
            self._fresh_session = False
            if self.secure:
                await self._disconnect()
        try:
            await self._connect(account)
        except OSError as e:
            log.warning("%s: cannot open a socket: %s", self.endpoint, e)
            return False
        self._account_in_use = account
        self._location = None  # a Register replaces whatever registration there was (a reboot forgets it)
        uri = account.uri.rstrip("/")
        lifetime, binding = self.lifetime, self._binding()
        request = Message(code=Code.POST, uri=f"{uri}/rd", payload=self._register_payload(),
                          content_format=int(ContentFormat.LINK))
        request.opt.uri_query = (f"ep={self.endpoint}", f"lt={lifetime}", f"lwm2m={self.lwm2m_version}",
                                 f"b={binding}")
        started = asyncio.get_running_loop().time()
        self._registered_uri = uri
        response = await self._send(request)
        if self._offline:
            return False
        if response is None or response.code != Code.CREATED or not response.opt.location_path:
            if response is None or response.code.class_ == 4:
                self._register_failures += 1
            elif response.code == Code.SERVICE_UNAVAILABLE:
                max_age = response.opt.max_age
                self._retry_after = float(max_age if max_age is not None else 60)
            if response is not None:
                self.counters.failed_requests += 1
                log.info("%s: Register answered %s", self.endpoint, response.code)
            if response is None and account.secure:
                await self._disconnect()  # a refused handshake: start the next attempt with a fresh session
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
        request = Message(code=Code.POST, uri=f"{self._registered_uri}/{'/'.join(self._location)}")
        request.opt.uri_query = tuple(query)
        if links_dirty:
            request.payload = link_format.encode(self.objects.registration_links())
            request.opt.content_format = int(ContentFormat.LINK)
        started = asyncio.get_running_loop().time()
        self._links_dirty = False
        response = await self._send(request)
        if response is not None and response.code == Code.SERVICE_UNAVAILABLE:
            max_age = response.opt.max_age
            self._retry_after = float(max_age if max_age is not None else 60)
        if response is None or not response.code.is_successful():
            self._links_dirty = self._links_dirty or links_dirty
            if response is None and self.secure:
                await self._renew_session()  # the session may be gone (evicted, close_notify): handshake again
            return None if response is None else response.code
        self._sent_lifetime, self._sent_binding = lifetime, binding
        self._registered_at(started, lifetime)
        self.counters.updates += 1
        return response.code

    async def _deregister(self, timeout: float) -> None:
        assert self._location is not None and self._context is not None
        request = Message(code=Code.DELETE, uri=f"{self._registered_uri}/{'/'.join(self._location)}")
        self._location = None
        response = await asyncio.wait_for(self._context.request(request).response, timeout)
        if response.code.is_successful():
            self.counters.deregisters += 1

    # ------------------------------------------------------------------ server requests

    def _needs_blockwise_assembly(self, request: Message) -> bool:
        """Whether aiocoap assembles a block-wise request (and slices the answer) before :meth:`_render`."""
        # a pushed package is written block by block into the firmware slot, never assembled in memory first
        return not (self.firmware is not None and request.opt.uri_path == PACKAGE_SEGMENTS
                    and request.code in (Code.PUT, Code.POST))

    async def _render(self, request: Message) -> Message:
        """Answer one request that arrived on the device's socket (a gateway forwards some to its end devices)."""
        return self._handle(request)

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
            return content_response(node, path, None if accept is None else int(accept), self.model,
                                    self.lwm2m_version)
        if code == Code.FETCH:
            return self._read_composite(request, path)
        if self.firmware is not None and path == PACKAGE and code in (Code.PUT, Code.POST):
            return self.firmware.write_package(request)
        if code == Code.PUT:
            if not request.payload and request.opt.content_format is None:  # Write-Attributes (an empty value
                if not request.opt.uri_query:                                 # written in text/plain has a format)
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
        for name, rid in (("pmin", DEFAULT_PMIN), ("pmax", DEFAULT_PMAX)):
            if name not in attrs:
                default = self._server_value(rid)
                if isinstance(default, int) and not isinstance(default, bool) and default > 0:
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

    def _forget_observations(self) -> None:
        """Drop every observation without a word (a device that lost power or its network)."""
        for obs in self._observations:
            obs.cancel_timers()
        self._observations.clear()
        self._signal()

    def _end_observations(self) -> None:
        """End every observation with 5.03 (a rebooting or stopping device forgets them)."""
        for obs in list(self._observations):
            obs.cancel_timers()
            obs.handle.trigger(Message(code=Code.SERVICE_UNAVAILABLE, payload=b"device restarting"), is_last=True)
        self._observations.clear()
        self._signal()

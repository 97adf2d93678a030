"""A simulated LwM2M Gateway (OMA LwM2M Gateway TS 1.1 style) and the end devices behind it.

The gateway is a :class:`~client_sim.device.SimulatedDevice` (objects 0, 1, 3, 4, optionally 5; one server
connection) that also holds Object 25, one instance per end device ("child") that is up: /25/i/0 the child's
endpoint name, /25/i/1 its prefix (``d0``, ``d1``... one path segment, unique in the gateway, kept for the child's
life), /25/i/3 the child's objects in CoRE link format (its registration links, e.g. ``</3/0>,</5>;ver=1.2,</5/0>``).

Routing: a request to ``/<prefix>/<obj>/...`` on the gateway's socket crosses the child's local link, is
dispatched by the child exactly as a directly connected device dispatches it (Read, Write, Execute, Discover,
Observe, Write-Attributes, Create, Delete, composite operations on the child's root), and its answer crosses the
link back; an unknown prefix (or a child that is down) is 4.04, a local link that gives up is 5.04. Observations
of a child's resources live in the child; aiocoap renders each notification through the gateway again. A request
without a prefix goes to the gateway's own objects. A push (block-wise Write of ``/<prefix>/5/0/0``) is forwarded
block by block, each block over the local link.

Pull through the gateway: the child's :attr:`DeviceFirmware.fetch <client_sim.firmware.DeviceFirmware.fetch>` is
the gateway's relay. The gateway GETs the Package URI block-wise over its OWN server connection (bounded by
``download_timeout``) into a cache keyed by SHA-256: a URI carrying ``?sha256=<64 lowercase hex>`` whose digest the
cache holds costs the uplink nothing; concurrent pulls of one digest share one download; downloaded bytes that do
not match the digest are not cached and fail every pull waiting on them (Update Result 5). A URI without that
query is downloaded every time. Then the bytes cross the child's local link and the child verifies the SUIT
envelope itself: Update Result, state machine, install and rollback are the child's own.

Local link: each child has its own :class:`LocalLink` (its own medium: children do not share airtime), with
:class:`LocalLinkConditions` (latency, loss per frame, bandwidth, frame size). A message of n bytes is cut into
ceil(n / frame_size) frames; each frame is lost with probability ``loss`` (the link's RNG, seeded with the child's
endpoint: reproducible) and sent again after an acknowledgement timeout of 2 x latency, up to ``max_retries``
times (then the transfer fails). The transfer holds the medium for its airtime (bytes sent / bandwidth, lost
frames included, plus the timeouts) and arrives ``latency`` seconds after that.

Fault: ``tamper`` names children to whom the gateway hands a tampered copy (the last byte of the package flipped,
as :attr:`Faults.corrupt_download <client_sim.firmware.Faults>` does): the child's own verification refuses it
(Update Result 5, nothing installed); the cache keeps the true bytes, other children are unaffected.

Invariants: the gateway's /25 instances are exactly its children that are up; a child that reboots (Execute
/3/0/4, an installed image, a power loss) loses its /25 instance at once and gets a NEW instance id when it is back
(after its ``reboot_delay``), so the server sees a new registration of it even when both changes reach it in one
Update; every change of the set of /25 instances makes the gateway send an Update with its new links; a child
holds no socket and no task of its own (its timers are loop timers its ``stop()`` cancels); ``Gateway.stop()``
stops every child, cancels every download, then de-registers the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from aiocoap import Message
from aiocoap import error as coap_error
from aiocoap.credentials import CredentialsMissingError
from aiocoap.numbers.codes import Code

from client_sim.accounts import Account
from client_sim.device import CURRENT_TIME, DeviceState, SimulatedDevice
from client_sim.firmware import (
    Faults,
    FirmwareOptions,
    PackageNotFoundError,
    TransferLostError,
)
from client_sim.network import Link as NetworkLink
from client_sim.objects import Change, ChangeKind, ObjectTree
from firmware_object.errors import FirmwareError, PackageTooLargeError, UpdateResult
from lwm2m_server.core.codec import link as link_format
from lwm2m_server.core.errors import Lwm2mError
from lwm2m_server.core.nodes import Obj
from lwm2m_server.core.paths import LwM2mPath

log = logging.getLogger(__name__)

GATEWAY_OBJECT = 25
DEVICE_ID, PREFIX, IOT_DEVICE_OBJECTS = 0, 1, 3
_DIGEST = re.compile(r"[0-9a-f]{64}")
_PACKAGE_REST = ("5", "0", "0")


class LocalLinkError(Exception):
    """A frame was lost more than ``max_retries`` times in a row: the transfer failed."""


class PackageDigestError(FirmwareError):
    """The bytes behind a Package URI do not have the SHA-256 its ``sha256`` query names."""

    update_result = UpdateResult.INTEGRITY_CHECK_FAILURE


@dataclass(frozen=True, slots=True)
class LocalLinkConditions:
    """A local link (BLE, 802.15.4, a serial bus): ``latency`` seconds per transfer, ``loss`` probability per
    frame, ``bandwidth`` bytes/s, ``frame_size`` bytes per frame (244: a BLE data-length-extended ATT payload),
    ``max_retries`` times a frame is sent again before the transfer fails; ``seed`` (None: the child's endpoint)."""

    latency: float = 0.05
    loss: float = 0.0
    bandwidth: float = 100_000.0
    frame_size: int = 244
    max_retries: int = 7
    seed: int | str | None = None

    def __post_init__(self) -> None:
        if self.latency < 0:
            raise ValueError("latency cannot be negative")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss is a probability between 0 and 1")
        if self.bandwidth <= 0 or self.frame_size < 1 or self.max_retries < 0:
            raise ValueError("bandwidth and frame_size must be positive, max_retries at least 0")


@dataclass(slots=True)
class LocalLinkCounters:
    """``bytes``: message bytes carried (each once); ``frames``: frames sent, retransmissions included;
    ``retransmissions``: frames sent again after a loss; ``transfers``: messages; ``failures``: transfers given up."""

    bytes: int = 0
    frames: int = 0
    retransmissions: int = 0
    transfers: int = 0
    failures: int = 0


class LocalLink:
    """One child's local link; see the module docstring for its time model."""

    def __init__(self, conditions: LocalLinkConditions, seed: int | str) -> None:
        self.conditions = conditions
        self.counters = LocalLinkCounters()
        self._rng = random.Random(conditions.seed if conditions.seed is not None else f"local-link:{seed}")
        self._medium = asyncio.Lock()

    def __repr__(self) -> str:
        c = self.conditions
        return f"<LocalLink latency={c.latency:g}s loss={c.loss:g} bandwidth={c.bandwidth:g}B/s frame={c.frame_size}>"

    async def transfer(self, size: int) -> None:
        """Carry one message of ``size`` bytes; raises :class:`LocalLinkError` when a frame is lost too often."""
        c = self.conditions
        frames = max(1, -(-size // c.frame_size))
        lost = 0
        failed = False
        if c.loss:
            for _ in range(frames):
                tries = 0
                while self._rng.random() < c.loss:
                    lost += 1
                    tries += 1
                    if tries > c.max_retries:
                        failed = True
                        break
                if failed:
                    break
        airtime = (size + lost * c.frame_size) / c.bandwidth + lost * 2 * c.latency
        async with self._medium:
            await asyncio.sleep(airtime)
        await asyncio.sleep(c.latency)
        counters = self.counters
        counters.frames += frames + lost
        counters.retransmissions += lost
        if failed:
            counters.failures += 1
            raise LocalLinkError(f"a frame was lost {c.max_retries + 1} times in a row")
        counters.bytes += size
        counters.transfers += 1


def wire_size(message: Message) -> int:
    """About the size of ``message`` as CoAP on the local link: header, token, options, payload marker, payload."""
    try:
        options = len(message.opt.encode())
    except Exception:  # an option aiocoap cannot encode here: count nothing for it
        options = 0
    payload = len(message.payload)
    return 4 + len(message.token or b"") + options + (1 + payload if payload else 0)


class PackageCache:
    """Packages by SHA-256 (lowercase hex), least recently used first out, at most ``max_bytes`` in all; a package
    larger than that is not kept."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes cannot be negative")
        self.max_bytes = max_bytes
        self._packages: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return len(self._packages)

    @property
    def size(self) -> int:
        return self._size

    def get(self, digest: str) -> bytes | None:
        data = self._packages.get(digest)
        if data is not None:
            self._packages.move_to_end(digest)
        return data

    def put(self, digest: str, data: bytes) -> None:
        if digest in self._packages or len(data) > self.max_bytes:
            return
        self._packages[digest] = data
        self._size += len(data)
        while self._size > self.max_bytes:
            _, evicted = self._packages.popitem(last=False)
            self._size -= len(evicted)


def package_digest(uri: str) -> str | None:
    """The ``sha256`` query of a Package URI (64 lowercase hex digits), or None when it has no such query."""
    for name, value in parse_qsl(urlsplit(uri).query, keep_blank_values=True):
        if name == "sha256" and _DIGEST.fullmatch(value):
            return value
    return None


@dataclass(frozen=True, slots=True)
class GatewayStats:
    """A snapshot of a gateway's counters. Uplink: everything on its server connection (datagrams and their
    bytes). Cache: ``cache_hits`` pulls served without a download of their own (from the cache, or by joining a
    download under way), ``cache_misses`` pulls that started one, ``downloads`` and ``downloaded_bytes`` the
    packages fetched over the uplink, ``digest_mismatches`` downloads refused for their digest,
    ``failed_downloads`` downloads that failed for any reason. Local: summed over every child's link, removed
    children included. ``tampered``: copies the gateway tampered with (the ``tamper`` fault)."""

    children: int
    uplink_bytes_out: int
    uplink_bytes_in: int
    uplink_datagrams_out: int
    uplink_datagrams_in: int
    cache_hits: int
    cache_misses: int
    downloads: int
    downloaded_bytes: int
    digest_mismatches: int
    failed_downloads: int
    cached_packages: int
    cached_bytes: int
    local_bytes: int
    local_frames: int
    local_retransmissions: int
    local_failures: int
    tampered: int

    @classmethod
    def total(cls, stats: Iterable[GatewayStats]) -> GatewayStats:
        """The field-by-field sum of several gateways' counters."""
        rows = list(stats)
        return cls(*(sum(getattr(row, f.name) for row in rows) for f in fields(cls)))

    def __str__(self) -> str:
        tampered = f", {self.tampered} tampered" if self.tampered else ""
        return (f"{self.children} children up; uplink {self.uplink_bytes_out} B out / {self.uplink_bytes_in} B in "
                f"({self.uplink_datagrams_out}/{self.uplink_datagrams_in} datagrams); cache {self.cache_misses} "
                f"misses, {self.cache_hits} hits, {self.downloads} downloads ({self.downloaded_bytes} B); local "
                f"{self.local_bytes} B, {self.local_frames} frames, {self.local_retransmissions} "
                f"retransmissions{tampered}")


class EndDevice(SimulatedDevice):
    """One end device behind a :class:`Gateway`: /3/0, /5/0 (a :class:`~client_sim.firmware.DeviceFirmware`) and
    any extra objects, no server account, no socket. Made by :meth:`Gateway.add_child`. Its requests come from the
    gateway; its firmware pulls through the gateway's relay; a reboot or an outage takes it (and its /25 instance)
    away until it is back. ``uri`` is the gateway's URI plus its prefix."""

    needs_server_account: ClassVar[bool] = False

    def __init__(self, endpoint: str, gateway: Gateway, prefix: str, *, link: LocalLink, firmware: FirmwareOptions,
                 **options: Any) -> None:
        self.gateway = gateway
        self.prefix = prefix
        self.local_link = link
        self.instance_id: int | None = None  # the /25 instance while the child is up
        self._started = False
        super().__init__(endpoint, None, firmware=firmware, **options)
        assert self.firmware is not None
        self.firmware.fetch = partial(gateway._relay, self)

    @property
    def uri(self) -> str:
        return f"{self.gateway.uri}/{self.prefix}"

    @property
    def up(self) -> bool:
        """True while the child is reachable (it has a /25 instance)."""
        return self.instance_id is not None

    def object_links(self) -> str:
        """/25/i/3: the child's objects as its registration payload has them, without the root link."""
        return link_format.encode(self.objects.registration_links()).decode()

    def _build_objects(self, lifetime: int, extra_objects: Iterable[Obj], server_uri: str | None,
                       identity: bytes | None, psk: bytes | None, ssid: int, factory: Any) -> ObjectTree:
        tree = ObjectTree(self.model)
        tree.add_instance(3, 0, {
            0: "SCRATCh", 1: "SCRATCh-SIM-END-1", 2: f"SN-{self.endpoint}", 3: "1.0.0", 4: None, 5: None,
            6: {0: 1}, 7: {0: 3000}, 8: {0: 10}, 9: 100, 10: 32, 11: {0: 0}, 12: None,
            14: "+00:00", 15: "Etc/UTC", 16: "U", 17: "end device", 18: "1.0", 19: "1.0.0", 20: 0, 21: 64,
        })
        tree.bind(CURRENT_TIME, self._now, self._set_clock)
        return self._finish_objects(tree, extra_objects)

    async def start(self, *, wait: bool = True, timeout: float | None = None) -> bool:
        """Power the child on (its gateway does this): its clock and resources start to drift."""
        if self._started or self._stopping:
            raise RuntimeError(f"end device {self.endpoint} was already started")
        self._power_on()
        return True

    def _power_on(self) -> None:
        self._started = True
        if self.drift_interval > 0:
            self._drift_timer = asyncio.get_running_loop().call_later(self.drift_interval, self._drift)
        self._set_state(DeviceState.REGISTERED if self.up else DeviceState.OFFLINE)

    async def stop(self, *, deregister: bool = True, timeout: float = 5.0) -> None:
        await super().stop(deregister=False, timeout=timeout)

    def reboot(self) -> None:
        """Power off now (the /25 instance goes, observations end with 5.03); boot after ``reboot_delay``."""
        self._power_cycle(self.reboot_delay, boot=True)

    def go_offline(self, duration: float, *, reboot: bool = False) -> None:
        """Vanish from the gateway for ``duration`` seconds (a fault); ``reboot``: boot on the way back."""
        if self._offline or self._stopping:
            return
        self.counters.outages += 1
        self._power_cycle(duration, boot=reboot)

    def _power_cycle(self, duration: float, *, boot: bool) -> None:
        self._offline = True
        self._end_observations()
        self.gateway._detach(self)
        self._set_state(DeviceState.OFFLINE)
        self._later(duration, lambda: self._back(boot))

    def _back(self, boot: bool) -> None:
        self._offline = False
        if boot:
            self.counters.reboots += 1
            if self.firmware is not None:
                self.firmware.on_boot()
        self.gateway._attach(self)
        self._set_state(DeviceState.REGISTERED)

    def _on_change(self, change: Change) -> None:
        super()._on_change(change)
        if change.kind is ChangeKind.STRUCTURE:
            self.gateway._refresh_links(self)


class Gateway(SimulatedDevice):
    """A simulated LwM2M Gateway with end devices behind it; see the module docstring.

    ``children``: how many children to make at once (endpoints ``<endpoint>-c0``..), or their endpoint names.
    ``child_firmware``: the children's :class:`FirmwareOptions` (default: ``firmware``, the gateway's own; at
    least one of them is needed). ``child_faults``: Faults per child, a mapping endpoint -> Faults or a function
    of (index, endpoint). ``child_options``: more :class:`EndDevice` options for every child (``reboot_delay``,
    ``drift_interval``, ``extra_objects``, ``model``...). ``local_link``: the conditions of each child's link.
    ``tamper``: endpoints of the children to hand tampered copies to. ``cache_bytes``: the package cache's bound.
    ``download_timeout``: the bound on one uplink download. ``links_batch``: how long /25 changes are gathered
    into one Update. Every other option goes to
    :class:`~client_sim.device.SimulatedDevice` (``firmware`` gives the gateway its own /5; ``faults`` impair its
    uplink).
    """

    def __init__(
        self,
        endpoint: str,
        server_uri: str | None = None,
        *,
        children: int | Iterable[str] = 0,
        child_firmware: FirmwareOptions | None = None,
        child_faults: Mapping[str, Faults] | Callable[[int, str], Faults | None] | None = None,
        child_options: Mapping[str, Any] | None = None,
        local_link: LocalLinkConditions | None = None,
        tamper: Iterable[str] = (),
        cache_bytes: int = 64 << 20,
        download_timeout: float = 300.0,
        links_batch: float = 0.5,
        **options: Any,
    ) -> None:
        self.links_batch = links_batch
        self._links_pending = False
        super().__init__(endpoint, server_uri, **options)
        if GATEWAY_OBJECT not in self.model:
            raise ValueError("the model has no object 25 (LwM2M Gateway)")
        if download_timeout <= 0:
            raise ValueError("download_timeout must be positive")
        if self.link is None:  # an unimpaired link that only counts the uplink's datagrams and bytes
            self.link = NetworkLink(self.faults.link, self.faults.seed if self.faults.seed is not None else endpoint)
        fw = child_firmware if child_firmware is not None else self.firmware.options if self.firmware else None
        self.child_firmware = fw
        self.local_link_conditions = local_link or LocalLinkConditions()
        self.child_options = dict(child_options or {})
        self.child_faults = child_faults
        self.tamper: set[str] = set(tamper)
        self.cache = PackageCache(cache_bytes)
        self.download_timeout = download_timeout
        self._children: dict[str, EndDevice] = {}
        self._by_prefix: dict[str, EndDevice] = {}
        self._links: list[LocalLink] = []
        self._next_prefix = 0
        self._next_iid = 0
        self._scheme: str | None = None
        self._running = False
        self._inflight: dict[str, asyncio.Task[bytes]] = {}
        self._downloads: set[asyncio.Task[bytes]] = set()
        self._hits = self._misses = self._download_count = self._downloaded_bytes = 0
        self._mismatches = self._failed_downloads = self._tampered = 0
        names = [f"{endpoint}-c{i}" for i in range(children)] if isinstance(children, int) else list(children)
        for name in names:
            self.add_child(name)

    # ------------------------------------------------------------------ children

    @property
    def children(self) -> tuple[EndDevice, ...]:
        return tuple(self._children.values())

    def child(self, endpoint: str) -> EndDevice:
        return self._children[endpoint]

    def add_child(self, endpoint: str, *, firmware: FirmwareOptions | None = None, faults: Faults | None = None,
                  local_link: LocalLinkConditions | None = None, **options: Any) -> EndDevice:
        """Put a new end device behind the gateway: it gets a prefix and a /25 instance at once (an Update follows
        when the gateway is registered) and is powered on now if the gateway runs, else when it starts."""
        if endpoint in self._children or endpoint == self.endpoint:
            raise ValueError(f"{endpoint!r} is already behind this gateway")
        firmware = firmware if firmware is not None else self.child_firmware
        if firmware is None:
            raise ValueError("an end device needs firmware options (child_firmware, or the gateway's firmware)")
        index = self._next_prefix
        self._next_prefix += 1
        if faults is None and self.child_faults is not None:
            faults = (self.child_faults.get(endpoint) if isinstance(self.child_faults, Mapping)
                      else self.child_faults(index, endpoint))
        merged: dict[str, Any] = {"reboot_delay": self.reboot_delay, "drift_interval": self.drift_interval,
                                  "lwm2m_version": self.lwm2m_version, **self.child_options, **options}
        if faults is not None:
            merged["faults"] = faults
        link = LocalLink(local_link or self.local_link_conditions, endpoint)
        child = EndDevice(endpoint, self, f"d{index}", link=link, firmware=firmware, **merged)
        if self._scheme is not None and child.firmware is not None:
            child.firmware.use_scheme(self._scheme)
        self._links.append(link)
        self._children[endpoint] = child
        self._by_prefix[child.prefix] = child
        self._attach(child)
        if self._running:
            child._power_on()
        return child

    async def remove_child(self, endpoint: str) -> None:
        """Take an end device away for good: its /25 instance goes (an Update follows) and it is stopped."""
        child = self._children.pop(endpoint)
        self._by_prefix.pop(child.prefix, None)
        self._detach(child)
        await child.stop()

    def _attach(self, child: EndDevice) -> None:
        if child.instance_id is not None or self._children.get(child.endpoint) is not child:
            return
        iid = self._next_iid
        self._next_iid += 1
        self.objects.add_instance(GATEWAY_OBJECT, iid, {
            DEVICE_ID: child.endpoint, PREFIX: child.prefix, IOT_DEVICE_OBJECTS: child.object_links()})
        child.instance_id = iid
        self._on_change(Change(LwM2mPath.of(GATEWAY_OBJECT, iid), ChangeKind.STRUCTURE))

    def _structure_changed(self) -> None:
        """An instance came or went (a /25 one: an end device): the Update that tells the server follows within
        ``links_batch`` seconds, one Update for every change in that time (fifty end devices rebooting together are
        a few Updates, not a hundred: a gateway batches, and the server limits Updates per endpoint)."""
        self._links_dirty = True
        if not self._links_pending:
            self._links_pending = True

            def send() -> None:
                self._links_pending = False
                self.request_update()

            self._later(self.links_batch, send)

    def _detach(self, child: EndDevice) -> None:
        iid, child.instance_id = child.instance_id, None
        if iid is not None:
            self.objects.remove_instance(GATEWAY_OBJECT, iid)  # a STRUCTURE change: the Update follows

    def _refresh_links(self, child: EndDevice) -> None:
        if child.instance_id is not None and self._children.get(child.endpoint) is child:
            with contextlib.suppress(Lwm2mError):
                self.objects.set_value(LwM2mPath.of(GATEWAY_OBJECT, child.instance_id, IOT_DEVICE_OBJECTS),
                                       child.object_links())

    def _route(self, request: Message) -> tuple[EndDevice | None, tuple[str, ...]] | None:
        """None: the gateway's own objects; (child, rest): a prefixed path (child None: no such child up)."""
        path = tuple(request.opt.uri_path)
        if not path or path[0].isdigit():
            return None
        child = self._by_prefix.get(path[0])
        return (child if child is not None and child.up else None), path[1:]

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, wait: bool = True, timeout: float | None = None) -> bool:
        """Power the children on, then start the gateway as a device (it registers with its /25 instances)."""
        self._running = True
        for child in self._children.values():
            await child.start()
        return await super().start(wait=wait, timeout=timeout)

    async def stop(self, *, deregister: bool = True, timeout: float = 5.0) -> None:
        """Stop every child (their observations end), cancel every download, then stop the gateway."""
        if self._stopping:
            return
        self._running = False
        for child in list(self._children.values()):
            await child.stop()
        for task in list(self._downloads):
            task.cancel()
        for task in list(self._downloads):
            with contextlib.suppress(BaseException):
                await task
        await super().stop(deregister=deregister, timeout=timeout)

    async def _connect(self, account: Account) -> None:
        await super()._connect(account)
        self._scheme = "coaps" if account.secure else "coap"
        for child in self._children.values():
            if child.firmware is not None:
                child.firmware.use_scheme(self._scheme)

    def _end_observations(self) -> None:
        super()._end_observations()
        for child in getattr(self, "_children", {}).values():
            child._end_observations()

    def _forget_observations(self) -> None:
        super()._forget_observations()
        for child in self._children.values():
            child._forget_observations()

    def _factory_reset(self) -> None:
        up = [child for child in self._children.values() if child.up]
        for child in up:
            child.instance_id = None  # the reset drops every /25 instance with the rest of the tree
        super()._factory_reset()
        for child in up:
            self._attach(child)

    # ------------------------------------------------------------------ forwarding

    def _needs_blockwise_assembly(self, request: Message) -> bool:
        route = self._route(request)
        if route is None:
            return super()._needs_blockwise_assembly(request)
        child, rest = route
        # a push to a child is forwarded block by block; everything else is assembled first
        return not (child is not None and child.firmware is not None and rest == _PACKAGE_REST
                    and request.code in (Code.PUT, Code.POST))

    async def _render(self, request: Message) -> Message:
        route = self._route(request)
        if route is None:
            return self._handle(request)
        child, rest = route
        if child is None:
            return Message(code=Code.NOT_FOUND, payload=b"no end device under that prefix")
        try:
            await child.local_link.transfer(wire_size(request))
            if not child.up:
                return Message(code=Code.NOT_FOUND, payload=b"the end device went away")
            forwarded = request.copy(uri_path=rest)
            if self._tampers_push(child, forwarded, rest):
                forwarded.payload = _flip_last_byte(forwarded.payload)
                self._tampered += 1
                log.info("%s: handing %s a tampered package (fault injected)", self.endpoint, child.endpoint)
            response = child._handle(forwarded)
            await child.local_link.transfer(wire_size(response))
        except LocalLinkError:
            return Message(code=Code.GATEWAY_TIMEOUT, payload=b"the local link gave up")
        return response

    def _tampers_push(self, child: EndDevice, request: Message, rest: tuple[str, ...]) -> bool:
        block1 = request.opt.block1
        return (child.endpoint in self.tamper and rest == _PACKAGE_REST and request.code in (Code.PUT, Code.POST)
                and bool(request.payload) and (block1 is None or not block1.more))

    def _add_observation(self, request: Message, handle: Any) -> None:
        route = self._route(request)
        if route is None:
            super()._add_observation(request, handle)
            return
        child, rest = route
        if child is not None and rest:
            child._add_observation(request.copy(uri_path=rest), handle)

    # ------------------------------------------------------------------ pulls through the gateway

    async def _relay(self, child: EndDevice, uri: str) -> bytes:
        """The fetch of ``child``'s firmware: the package from the cache or the uplink, then over the local link."""
        try:
            data = await self._package(uri)
            assert child.firmware is not None
            flash = child.firmware.options.flash_size
            if len(data) > flash:
                raise PackageTooLargeError(f"the package has {len(data)} bytes; the flash holds {flash}")
            if child.endpoint in self.tamper and data:
                data = _flip_last_byte(data)
                self._tampered += 1
                log.info("%s: handing %s a tampered package (fault injected)", self.endpoint, child.endpoint)
            await child.local_link.transfer(len(data))
            child.firmware.fetched_bytes += len(data)
            return data
        except FirmwareError:
            raise
        except LocalLinkError as e:
            raise TransferLostError(f"local link: {e}") from None
        except Exception as e:  # never leave the child's pull without an outcome
            log.exception("%s: relaying %s to %s failed", self.endpoint, uri, child.endpoint)
            raise TransferLostError(f"the gateway failed: {type(e).__name__}") from None

    async def _package(self, uri: str) -> bytes:
        digest = package_digest(uri)
        if digest is None:
            self._misses += 1
            return await self._shielded(self._start_download(uri, None))
        cached = self.cache.get(digest)
        if cached is not None:
            self._hits += 1
            return cached
        task = self._inflight.get(digest)
        if task is not None:
            self._hits += 1
        else:
            self._misses += 1
            task = self._start_download(uri, digest)
            self._inflight[digest] = task
            task.add_done_callback(lambda _t: self._inflight.pop(digest, None))
        return await self._shielded(task)

    @staticmethod
    async def _shielded(task: asyncio.Task[bytes]) -> bytes:
        """Wait for a download; a waiter that is cancelled leaves it running for the others."""
        return await asyncio.shield(task)

    def _start_download(self, uri: str, digest: str | None) -> asyncio.Task[bytes]:
        task = asyncio.get_running_loop().create_task(self._download(uri, digest), name=f"gw-download-{self.endpoint}")
        self._downloads.add(task)

        def done(t: asyncio.Task[bytes]) -> None:
            self._downloads.discard(t)
            if not t.cancelled() and t.exception() is not None:  # retrieved: no "never retrieved" warning
                self._failed_downloads += 1

        task.add_done_callback(done)
        return task

    async def _download(self, uri: str, digest: str | None) -> bytes:
        """One block-wise GET of ``uri`` over the gateway's server connection, bounded by ``download_timeout``."""
        context = self._context
        if context is None:
            raise TransferLostError("the gateway has no server connection")
        self._download_count += 1
        try:
            response = await asyncio.wait_for(context.request(Message(code=Code.GET, uri=uri)).response,
                                              self.download_timeout)
        except CredentialsMissingError:
            raise PackageNotFoundError(f"no credentials to reach {uri}") from None
        except (TimeoutError, coap_error.Error, OSError) as e:
            raise TransferLostError(f"the download of {uri} failed: {type(e).__name__}") from None
        if response.code == Code.NOT_FOUND:
            raise PackageNotFoundError(f"nothing at {uri}")
        if response.code != Code.CONTENT:
            raise TransferLostError(f"{uri} answered {response.code}")
        data = bytes(response.payload)
        self._downloaded_bytes += len(data)
        if digest is not None:
            if hashlib.sha256(data).hexdigest() != digest:
                self._mismatches += 1
                raise PackageDigestError(f"the bytes at {uri} do not have the SHA-256 its query names")
            self.cache.put(digest, data)
        log.info("%s: downloaded %d bytes for its end devices", self.endpoint, len(data))
        return data

    # ------------------------------------------------------------------ counters

    def stats(self) -> GatewayStats:
        uplink = self.link.counters if self.link is not None else None
        local = [link.counters for link in self._links]
        return GatewayStats(
            children=len(self.objects.instance_ids(GATEWAY_OBJECT)),
            uplink_bytes_out=uplink.bytes_sent if uplink else 0,
            uplink_bytes_in=uplink.bytes_received if uplink else 0,
            uplink_datagrams_out=uplink.sent if uplink else 0,
            uplink_datagrams_in=uplink.received if uplink else 0,
            cache_hits=self._hits, cache_misses=self._misses, downloads=self._download_count,
            downloaded_bytes=self._downloaded_bytes, digest_mismatches=self._mismatches,
            failed_downloads=self._failed_downloads, cached_packages=len(self.cache), cached_bytes=self.cache.size,
            local_bytes=sum(c.bytes for c in local), local_frames=sum(c.frames for c in local),
            local_retransmissions=sum(c.retransmissions for c in local),
            local_failures=sum(c.failures for c in local), tampered=self._tampered,
        )


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


__all__ = [
    "EndDevice", "Gateway", "GatewayStats", "LocalLink", "LocalLinkConditions", "LocalLinkCounters",
    "LocalLinkError", "PackageCache", "PackageDigestError", "package_digest", "wire_size",
]

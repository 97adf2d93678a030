"""The Registration interface's logic above the transport: register, update, deregister, expiry, write-behind.

Invariants:

* at most one live registration per ``(tenant_id, endpoint)``; a new Register for an endpoint replaces the old
  registration (its id stops working at once);
* a registration expires at ``updated_at + lifetime + grace(lifetime)`` where
  ``grace(lifetime) = max(grace, grace_ratio * lifetime)`` (defaults: 10 s, 5 %). The floor covers network
  latency and CoAP retransmissions of an Update sent at the last moment; the ratio covers the clock drift of
  cheap device RTCs over long lifetimes (1 day -> 72 min). Past that time it is gone: Update and De-register
  answer 4.04 even before :meth:`RegistrationService.expire_due` has run;
* the hot path (register/update/deregister) is synchronous, in memory and O(1) (plus O(log n) for the expiry
  heap); persistence is write-behind: changes are coalesced per registration id and written by :meth:`flush`
  (called every ``flush_interval`` by :meth:`run`). A failed write is retried and never loses a change; a newer
  change of the same registration always wins over a retried older one;
* every change is published on the :class:`~lwm2m_server.events.EventBus` (after the state has changed, so a
  subscriber may call back into the service);
* bounded: at most ``max_registrations`` live registrations (default 100,000). A Register of an endpoint not yet
  registered, when the table is full, first drops what has expired; if it is still full, a DTLS-authenticated
  newcomer (``secure``) takes the place of the unauthenticated (plain CoAP) registration that expires first
  (``registration.deregistered``, reason ``evicted``); anyone else gets :class:`RegistryFullError` (5.03 with
  Max-Age). A live authenticated registration is never evicted, and a device re-registering its own endpoint
  always gets in (it replaces itself). Refusing rather than evicting keeps a flood of new names from pushing real
  devices out;
* lifetimes are clamped to ``max_lifetime`` (default 1 day): a device asking for more (up to 2**32-1 s) is kept
  as if it had asked for ``max_lifetime``. LwM2M has no way to tell it so in the 2.01 or 2.04, so a device that
  does not update by then has to register again (its Update gets 4.04);
* times are wall-clock seconds from the injected ``clock`` (they are persisted: monotonic time would not
  survive a restart);
* the service lives on one event loop thread and is not thread-safe; only the stores run in worker threads.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace

from lwm2m_server.core.codec.link import Link
from lwm2m_server.core.errors import UnknownRegistrationError
from lwm2m_server.core.rate_limit import RateLimitedError
from lwm2m_server.core.registration import RegisterParams, Registration, UpdateParams
from lwm2m_server.events import (
    REGISTRATION_DEREGISTERED,
    REGISTRATION_EXPIRED,
    REGISTRATION_REGISTERED,
    REGISTRATION_UPDATED,
    Event,
    EventBus,
)
from lwm2m_server.storage.stores import (
    DeviceRecord,
    DeviceSighting,
    DeviceStore,
    RegistrationStore,
    StorageConflictError,
    merge_sighting,
)
from lwm2m_server.write_behind import run_write_behind

__all__ = ["DEFAULT_GRACE", "DEFAULT_GRACE_RATIO", "DEFAULT_MAX_LIFETIME", "DEFAULT_MAX_REGISTRATIONS",
           "RegistrationService", "RegistryFullError", "new_registration_id"]

log = logging.getLogger(__name__)

DEFAULT_GRACE = 10.0
DEFAULT_GRACE_RATIO = 0.05
DEFAULT_FLUSH_INTERVAL = 0.05
DEFAULT_MAX_REGISTRATIONS = 100_000  # ~1 KiB each in memory: about 100 MiB, and SQLite keeps up with the Updates
DEFAULT_MAX_LIFETIME = 86_400  # 1 day: a forgotten or spoofed registration is gone after at most a day and a bit
FULL_RETRY_MAX = 600.0  # the Max-Age of a "table full" 5.03 is the next expiry, at most this
MAX_RETRY_DELAY = 5.0
_MAX_INTERNED_LINK_SETS = 4096
_HEAP_SLACK = 1024

_DeviceKey = tuple[str, str]  # (tenant_id, endpoint)


def new_registration_id() -> str:
    """A short random registration id (8 URL-safe characters, 48 bits): the ``{id}`` of ``/rd/{id}``."""
    return secrets.token_urlsafe(6)


class RegistryFullError(RateLimitedError):
    """The registration table is full (``max_registrations``) and the newcomer may not take anyone's place (5.03;
    ``retry_after``: until the next registration is due to expire, at most 10 minutes)."""


def _merge_delta(into: dict[_DeviceKey, DeviceRecord], key: _DeviceKey, s: DeviceSighting) -> None:
    into[key] = merge_sighting(into.get(key), s)


def _sightings(delta: DeviceRecord) -> tuple[DeviceSighting, ...]:
    """Sightings equivalent to a coalesced delta (the first carries the count, the last the latest address)."""
    last = DeviceSighting(delta.endpoint, delta.tenant_id, delta.last_seen, delta.last_address,
                          delta.lwm2m_version, 0)
    if delta.first_seen == delta.last_seen:
        return (replace(last, registrations=delta.registration_count),)
    first = replace(last, seen_at=delta.first_seen, registrations=delta.registration_count)
    return (first, last)


class RegistrationService:
    """Live registrations in memory, persisted write-behind to a :class:`RegistrationStore` and a
    :class:`DeviceStore`, with lifetime expiry by a heap of ``(expires_at, id)`` invalidated lazily: an entry is
    stale when its registration is gone or now expires at another time.

    Per registration it keeps the (slotted, immutable) :class:`Registration` itself, one dict entry per index
    and one ``(expires_at, id)`` heap tuple per lifetime change; no other object."""

    __slots__ = (
        "_by_endpoint", "_clock", "_devices", "_events", "_flush_interval", "_flush_lock", "_full", "_grace",
        "_grace_ratio", "_heap", "_id_factory", "_inflight", "_insecure_seen", "_links", "_max_retry_delay", "_pending",
        "_registered", "_regs", "_stop", "_store", "_unsent_devices", "evicted", "max_lifetime",
        "max_registrations", "node_id", "own_only", "refused_full",
    )

    def __init__(
        self,
        store: RegistrationStore,
        devices: DeviceStore,
        events: EventBus,
        clock: Callable[[], float],
        *,
        grace: float = DEFAULT_GRACE,
        grace_ratio: float = DEFAULT_GRACE_RATIO,
        id_factory: Callable[[], str] = new_registration_id,
        node_id: str = "",
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_retry_delay: float = MAX_RETRY_DELAY,
        max_registrations: int = DEFAULT_MAX_REGISTRATIONS,
        max_lifetime: int = DEFAULT_MAX_LIFETIME,
        load: bool = True,
        own_only: bool = False,
    ) -> None:
        """``load=True`` reads the live registrations from ``store`` now (blocking: do it at start-up); they all
        count, even beyond ``max_registrations`` (newcomers then wait for room). ``own_only``: only those made at
        this node (``node_id``): several nodes share the store, each holds the sessions of its own devices (a
        device that moves re-registers, and the newest Register wins in the store too)."""
        if grace < 0 or grace_ratio < 0:
            raise ValueError("grace and grace_ratio must not be negative")
        if max_registrations < 1 or max_lifetime < 1:
            raise ValueError("max_registrations and max_lifetime must be at least 1")
        if flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        self._store = store
        self._devices = devices
        self._events = events
        self._clock = clock
        self._grace = float(grace)
        self._grace_ratio = float(grace_ratio)
        self._id_factory = id_factory
        self.node_id = node_id
        self.own_only = own_only
        self._flush_interval = flush_interval
        self._max_retry_delay = max(max_retry_delay, flush_interval)
        self.max_registrations = max_registrations
        self.max_lifetime = max_lifetime
        self.refused_full = 0  # Registers refused because the table was full
        self.evicted = 0  # unauthenticated registrations evicted for authenticated newcomers
        self._full = False  # the table was full at the last Register (logged once per episode)
        self._insecure_seen = False  # a plain-CoAP registration was ever held (none: nobody to evict, no scan)
        self._regs: dict[str, Registration] = {}
        self._by_endpoint: dict[str, dict[str, str]] = {}  # tenant -> endpoint -> id
        self._heap: list[tuple[float, str]] = []  # (expires_at, id), stale entries skipped on pop
        self._links: dict[tuple[Link, ...], tuple[Link, ...]] = {}  # interned object-link sets
        self._pending: dict[str, Registration | None] = {}  # id -> latest state, None = delete
        self._registered: list[Registration] = []  # new registrations since the last flush (device counts)
        self._unsent_devices: dict[_DeviceKey, DeviceRecord] = {}  # coalesced device sightings not yet written
        self._flush_lock = asyncio.Lock()
        self._inflight: asyncio.Future[None] | None = None
        self._stop = asyncio.Event()
        if load:
            self.load()

    # ---------------------------------------------------------------- queries

    def get(self, reg_id: str) -> Registration | None:
        """The live registration with this id (until :meth:`expire_due` removes it), else ``None``."""
        return self._regs.get(reg_id)

    def by_endpoint(self, endpoint: str, *, tenant_id: str) -> Registration | None:
        endpoints = self._by_endpoint.get(tenant_id)
        reg_id = None if endpoints is None else endpoints.get(endpoint)
        return None if reg_id is None else self._regs[reg_id]

    def all(self, tenant_id: str | None = None) -> list[Registration]:
        """The live registrations of one tenant (of all when ``None``: the server's own housekeeping)."""
        if tenant_id is None:
            return list(self._regs.values())
        regs = self._regs
        return [regs[i] for i in self._by_endpoint.get(tenant_id, {}).values()]

    def count(self, tenant_id: str | None = None) -> int:
        if tenant_id is None:
            return len(self._regs)
        return len(self._by_endpoint.get(tenant_id, ()))

    def stored_holders(self, endpoints: Sequence[str], *, tenant_id: str) -> dict[str, str]:
        """Which node's registration the store holds for each of ``endpoints`` (those it has one for): with several
        nodes on one database, the node holding the device now (a registration held here in memory may be stale:
        its device registered with another node since). Blocking I/O; raises the store's error."""
        return self._store.holders(endpoints, tenant_id=tenant_id)

    def stored(self, *, tenant_id: str) -> list[Registration]:
        """The tenant's registrations the store holds, of every node, still within their lifetime (several nodes:
        what the API lists). Blocking I/O; raises the store's error."""
        now = self._clock()
        return [r for r in self._store.load_all(tenant_id=tenant_id) if self.expires_at(r) > now]

    def grace_for(self, lifetime: float) -> float:
        return max(self._grace, self._grace_ratio * lifetime)

    def expires_at(self, reg: Registration) -> float:
        """When ``reg`` expires: ``updated_at + lifetime + grace_for(lifetime)``."""
        return reg.updated_at + reg.lifetime + max(self._grace, self._grace_ratio * reg.lifetime)

    @property
    def pending_count(self) -> int:
        """How many registration changes wait to be written."""
        return len(self._pending)

    # ---------------------------------------------------------------- the hot path

    def register(
        self,
        params: RegisterParams,
        *,
        address: str,
        remote: object,
        secure: bool = False,
        identity: str | None = None,
        tenant_id: str,
        parent_id: str | None = None,
        path_prefix: str = "",
    ) -> Registration:
        """A new registration (Register, 2.01 Created at ``/rd/{id}``). It replaces any registration of the same
        endpoint in the tenant: ``registration.deregistered`` (reason ``replaced``) is published for the old one
        before ``registration.registered``. Its lifetime is at most ``max_lifetime``. Raises
        :class:`RegistryFullError` (5.03) when a new endpoint finds the table full (see the module invariants)."""
        now = self._clock()
        if params.lifetime > self.max_lifetime:
            params = replace(params, lifetime=self.max_lifetime)
        endpoints = self._by_endpoint.get(tenant_id)
        if (endpoints is None or params.endpoint not in endpoints) and len(self._regs) >= self.max_registrations:
            self._make_room(now, secure=secure, endpoint=params.endpoint)
            endpoints = self._by_endpoint.get(tenant_id)  # expiry or eviction may have emptied the tenant
        elif self._full and len(self._regs) < self.max_registrations:
            self._full = False  # the next time it fills up is logged again
        if endpoints is None:
            endpoints = self._by_endpoint[tenant_id] = {}
        reg_id = self._new_id()
        reg = Registration(
            id=reg_id, endpoint=params.endpoint, lifetime=params.lifetime, lwm2m_version=params.lwm2m_version,
            binding=params.binding, queue_mode=params.queue_mode, links=self._intern(params.links),
            address=address, registered_at=now, updated_at=now, sms=params.sms, extra=params.extra,
            tenant_id=tenant_id, node_id=self.node_id, parent_id=parent_id, path_prefix=path_prefix,
            secure=secure, identity=identity, remote=remote,
        )
        old_id = endpoints.get(params.endpoint)
        old = None if old_id is None else self._regs.pop(old_id)
        if old_id is not None:
            self._pending[old_id] = None
        self._regs[reg_id] = reg
        self._insecure_seen = self._insecure_seen or not secure
        endpoints[params.endpoint] = reg_id
        self._push(reg)
        self._pending[reg_id] = reg
        self._registered.append(reg)
        events = self._events
        if old is not None and events.wants(REGISTRATION_DEREGISTERED):
            events.publish(Event(REGISTRATION_DEREGISTERED, now, tenant_id, old.endpoint,
                                 {"id": old.id, "reason": "replaced", "replaced_by": reg_id}))
        if events.wants(REGISTRATION_REGISTERED):
            events.publish(Event(REGISTRATION_REGISTERED, now, tenant_id, reg.endpoint, {
                "id": reg_id, "address": address, "lifetime": reg.lifetime, "lwm2m_version": reg.lwm2m_version,
                "binding": reg.binding, "queue_mode": reg.queue_mode, "secure": secure, "identity": identity,
                "node_id": reg.node_id, "replaced": old_id,
            }))
        return reg

    def update(self, reg_id: str, params: UpdateParams, *, address: str, remote: object) -> Registration:
        """Refresh a registration (Update, 2.04 Changed): its lifetime restarts now; ``remote`` (when not
        ``None``) becomes the live handle and this node takes the session over. Raises
        :class:`UnknownRegistrationError` (4.04) for an unknown or expired id."""
        now = self._clock()
        old = self._live(reg_id, now)
        if params.lifetime is not None and params.lifetime > self.max_lifetime:
            params = replace(params, lifetime=self.max_lifetime)
        if params.links is not None:
            links = self._intern(params.links)
            if links is not params.links:
                params = replace(params, links=links)
        reg = old.updated(params, address=address, now=now, remote=remote)
        if reg.node_id != self.node_id:
            reg = replace(reg, node_id=self.node_id)
        self._regs[reg_id] = reg
        if reg.updated_at != old.updated_at or reg.lifetime != old.lifetime:
            self._push(reg)
        self._pending[reg_id] = reg
        events = self._events
        if events.wants(REGISTRATION_UPDATED):
            events.publish(Event(REGISTRATION_UPDATED, now, reg.tenant_id, reg.endpoint, {
                "id": reg_id, "address": address, "lifetime": reg.lifetime, "binding": reg.binding,
                "queue_mode": reg.queue_mode, "links_changed": params.links is not None,
            }))
        return reg

    def resume(self, reg_id: str, *, address: str, remote: object) -> Registration | None:
        """A device talks to this node over a session its registration does not hold yet (the server restarted, or
        the device handshook again, and its first request was not an Update): ``remote`` becomes the live handle
        at once, the lifetime is left alone, and ``registration.updated`` is published with ``session_resumed``
        so that work waiting for the device (a campaign's job, a delivery) goes on now rather than at its next
        Update. None (nothing changed) for an unknown or expired id, or when ``remote`` is already its handle."""
        now = self._clock()
        old = self._regs.get(reg_id)
        if old is None or old.remote is remote or now > self.expires_at(old):
            return None
        reg = replace(old, address=address, remote=remote, node_id=self.node_id)
        self._regs[reg_id] = reg
        self._pending[reg_id] = reg
        events = self._events
        if events.wants(REGISTRATION_UPDATED):
            events.publish(Event(REGISTRATION_UPDATED, now, reg.tenant_id, reg.endpoint, {
                "id": reg_id, "address": address, "lifetime": reg.lifetime, "binding": reg.binding,
                "queue_mode": reg.queue_mode, "links_changed": False, "session_resumed": True,
            }))
        return reg

    def deregister(self, reg_id: str, *, reason: str = "requested") -> Registration:
        """Remove a registration (De-register, 2.02 Deleted; or the server's own decision, ``reason`` says which)
        and return it. Raises :class:`UnknownRegistrationError` (4.04) for an unknown or expired id."""
        now = self._clock()
        reg = self._live(reg_id, now)
        self._remove(reg)
        events = self._events
        if events.wants(REGISTRATION_DEREGISTERED):
            events.publish(Event(REGISTRATION_DEREGISTERED, now, reg.tenant_id, reg.endpoint,
                                 {"id": reg_id, "reason": reason}))
        return reg

    def expire_due(self, now: float) -> list[Registration]:
        """Remove and return the registrations expired at ``now`` (``now > expires_at``), publishing
        ``registration.expired`` for each, in expiry order. O(k log n) for k heap entries due."""
        heap, regs = self._heap, self._regs
        expired: list[Registration] = []
        while heap and heap[0][0] < now:
            at, reg_id = heapq.heappop(heap)
            reg = regs.get(reg_id)
            if reg is not None and self.expires_at(reg) == at:
                self._remove(reg)
                expired.append(reg)
        events = self._events
        if expired and events.wants(REGISTRATION_EXPIRED):
            for reg in expired:
                events.publish(Event(REGISTRATION_EXPIRED, now, reg.tenant_id, reg.endpoint, {
                    "id": reg.id, "expired_at": self.expires_at(reg), "updated_at": reg.updated_at,
                }))
        return expired

    # ---------------------------------------------------------------- bookkeeping

    def _make_room(self, now: float, *, secure: bool, endpoint: str) -> None:
        """Room for one more registration in a full table, or :class:`RegistryFullError`. Expired ones go first
        (O(k log n)); then, for an authenticated newcomer only, the unauthenticated registration that expires
        first (O(n), only while the table is full)."""
        self.expire_due(now)
        if len(self._regs) < self.max_registrations:
            self._full = False
            return
        if not self._full:
            self._full = True
            log.warning("registration table full (%d of at most %d): new endpoints get 5.03 until some expire or "
                        "de-register (raise --max-registrations if the fleet is that large)", len(self._regs),
                        self.max_registrations)
        victim = None
        if secure and self._insecure_seen:  # O(n), only while full; never in a DTLS-only deployment
            victim = min((r for r in self._regs.values() if not r.secure), key=self.expires_at, default=None)
        if victim is None:
            self.refused_full += 1
            wait = min(FULL_RETRY_MAX, max(1.0, self._heap[0][0] - now)) if self._heap else FULL_RETRY_MAX
            raise RegistryFullError(f"the server holds {len(self._regs)} registrations, its maximum", wait)
        self._remove(victim)
        self.evicted += 1
        if self._events.wants(REGISTRATION_DEREGISTERED):
            self._events.publish(Event(REGISTRATION_DEREGISTERED, now, victim.tenant_id, victim.endpoint,
                                       {"id": victim.id, "reason": "evicted", "for": endpoint}))

    def _new_id(self) -> str:
        for _ in range(100):
            reg_id = self._id_factory()
            if reg_id not in self._regs and reg_id not in self._pending:
                return reg_id
        raise RuntimeError("id_factory keeps returning ids in use")

    def _intern(self, links: tuple[Link, ...]) -> tuple[Link, ...]:
        """One shared tuple per distinct object-link set: fleets announce the same objects, so this keeps one
        copy instead of thousands."""
        if not links:
            return links
        shared = self._links.get(links)
        if shared is not None:
            return shared
        if len(self._links) < _MAX_INTERNED_LINK_SETS:
            self._links[links] = links
        return links

    def _push(self, reg: Registration) -> None:
        heap = self._heap
        heapq.heappush(heap, (self.expires_at(reg), reg.id))
        if len(heap) > 2 * len(self._regs) + _HEAP_SLACK:  # too many stale entries: rebuild, O(n) amortized
            self._heap = heap = [(self.expires_at(r), r.id) for r in self._regs.values()]
            heapq.heapify(heap)

    def _live(self, reg_id: str, now: float) -> Registration:
        reg = self._regs.get(reg_id)
        if reg is None:
            raise UnknownRegistrationError(f"no registration {reg_id!r}")
        if now > self.expires_at(reg):
            self.expire_due(now)
            raise UnknownRegistrationError(f"registration {reg_id!r} has expired")
        return reg

    def _remove(self, reg: Registration) -> None:
        del self._regs[reg.id]
        endpoints = self._by_endpoint.get(reg.tenant_id)
        if endpoints is not None and endpoints.get(reg.endpoint) == reg.id:
            del endpoints[reg.endpoint]
            if not endpoints:
                del self._by_endpoint[reg.tenant_id]
        self._pending[reg.id] = None

    def load(self) -> int:
        """(Re)read the live registrations from the store and return how many. A registration loaded for the
        first time has ``remote`` None until its device talks again; one this service already held keeps its
        live ``remote``. Registrations already expired go at the next :meth:`expire_due`. Raises
        :class:`RuntimeError` while changes are pending (flush first): the store would be behind memory."""
        if self._pending or self._registered:
            raise RuntimeError("load() with changes pending: flush first")
        previous = self._regs
        loaded = self._store.load_all(tenant_id=None)
        self._regs, self._by_endpoint, self._links = {}, {}, {}
        for reg in loaded:
            if self.own_only and reg.node_id != self.node_id:
                continue
            known = previous.get(reg.id)
            links = self._intern(reg.links)
            if links is not reg.links or (known is not None and known.remote is not None):
                reg = replace(reg, links=links, remote=None if known is None else known.remote)
            self._regs[reg.id] = reg
            self._insecure_seen = self._insecure_seen or not reg.secure
            self._by_endpoint.setdefault(reg.tenant_id, {})[reg.endpoint] = reg.id
        self._heap = [(self.expires_at(r), r.id) for r in self._regs.values()]
        heapq.heapify(self._heap)
        return len(self._regs)

    # ---------------------------------------------------------------- write-behind

    def _collect_devices(self) -> None:
        """Turn the changes since the last flush into coalesced device sightings."""
        unsent = self._unsent_devices
        for reg in self._registered:
            _merge_delta(unsent, (reg.tenant_id, reg.endpoint), DeviceSighting(
                reg.endpoint, reg.tenant_id, reg.registered_at, reg.address, reg.lwm2m_version, 1))
        self._registered = []
        for changed in self._pending.values():
            if changed is not None:
                _merge_delta(unsent, (changed.tenant_id, changed.endpoint), DeviceSighting(
                    changed.endpoint, changed.tenant_id, changed.updated_at, changed.address,
                    changed.lwm2m_version, 0))

    def _restore(self, batch: dict[str, Registration | None]) -> None:
        pending = self._pending
        for reg_id, reg in batch.items():
            pending.setdefault(reg_id, reg)  # a change made since the batch was taken is newer: it wins

    def _restore_devices(self, devices: dict[_DeviceKey, DeviceRecord]) -> None:
        unsent = self._unsent_devices
        for key, delta in devices.items():
            for s in _sightings(delta):
                _merge_delta(unsent, key, s)

    def _apply(self, upserts: list[Registration], deletes: list[str]) -> None:
        """Write one batch (in a worker thread). A conflict means the database holds, for one of our endpoints,
        a registration this service does not (another node's, or a stale one): the newest Register wins, as it
        does in memory, so those rows are deleted in the same transaction and the batch is written again."""
        try:
            self._store.apply(upserts, deletes)
        except StorageConflictError:
            gone = set(deletes)
            stale = []
            for reg in upserts:
                other = self._store.by_endpoint(reg.endpoint, tenant_id=reg.tenant_id)
                if other is not None and other.id != reg.id and other.id not in gone:
                    stale.append(other.id)
            if not stale:
                raise
            log.warning("replacing %d stored registrations of the same endpoints written elsewhere: %s",
                        len(stale), ", ".join(stale[:10]))
            self._store.apply(upserts, [*deletes, *stale])

    async def _write(self, batch: dict[str, Registration | None], devices: dict[_DeviceKey, DeviceRecord]) -> None:
        if batch:
            upserts = [r for r in batch.values() if r is not None]
            deletes = [i for i, r in batch.items() if r is None]
            try:
                await asyncio.to_thread(self._apply, upserts, deletes)
            except BaseException:
                self._restore(batch)
                self._restore_devices(devices)
                raise
        if devices:
            sightings = [s for delta in devices.values() for s in _sightings(delta)]
            try:
                await asyncio.to_thread(self._devices.upsert_seen, sightings)
            except BaseException:
                self._restore_devices(devices)
                raise

    async def flush(self) -> None:
        """Write every pending change now. On failure the changes stay pending (to be retried) and the store's
        error (:class:`~lwm2m_server.core.errors.StorageError`) is raised. Cancelling a flush does not cancel
        the write under way: the next flush waits for it."""
        async with self._flush_lock:
            inflight = self._inflight
            if inflight is not None:
                if not inflight.done():
                    await asyncio.wait({inflight})
                if not inflight.cancelled() and inflight.exception() is not None:
                    log.warning("an interrupted flush failed (its changes are pending again): %s",
                                inflight.exception())
                self._inflight = None
            self._collect_devices()
            batch, self._pending = self._pending, {}
            devices, self._unsent_devices = self._unsent_devices, {}
            if not batch and not devices:
                return
            self._inflight = task = asyncio.ensure_future(self._write(batch, devices))
            try:
                await asyncio.shield(task)
            finally:
                if task.done():  # else this flush was cancelled mid-write: the next one waits for the task
                    self._inflight = None

    async def run(self) -> None:
        """Until :meth:`close`: every ``flush_interval``, expire what is due and flush. A failed flush is logged
        and retried with exponential backoff (up to ``max_retry_delay``); nothing pending is ever dropped."""
        async def step() -> None:
            self.expire_due(self._clock())
            await self.flush()

        def failed(e: Exception, delay: float) -> None:
            log.warning("registration write-behind failed (%d changes pending, retry in %.2f s): %s",
                        len(self._pending), delay, e)

        await run_write_behind(step, self._stop, interval=self._flush_interval, max_delay=self._max_retry_delay,
                               failed=failed)

    async def close(self) -> None:
        """Stop :meth:`run` and write what is pending (raising the store's error if that fails)."""
        self._stop.set()
        await self.flush()

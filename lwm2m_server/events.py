"""The one place events are emitted: registrations, deliveries, results and security events.

Invariants: :meth:`EventBus.publish` never raises because of a subscriber (a failing subscriber is logged and the
others still get the event); subscribers are called synchronously, in subscription order, on the publishing
thread; an event's ``data`` holds plain JSON-friendly values (str, int, float, bool, None, lists, dicts) and is
read-only by convention. Stdlib only, so that any package may emit events cheaply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType

__all__ = [
    "REGISTRATION_DEREGISTERED",
    "REGISTRATION_EXPIRED",
    "REGISTRATION_REGISTERED",
    "REGISTRATION_UPDATED",
    "Event",
    "EventBus",
    "EventQueue",
    "Subscriber",
    "Unsubscribe",
    "kind_matches",
]

log = logging.getLogger(__name__)

REGISTRATION_REGISTERED = "registration.registered"
REGISTRATION_UPDATED = "registration.updated"
REGISTRATION_DEREGISTERED = "registration.deregistered"
REGISTRATION_EXPIRED = "registration.expired"

_NO_DATA: Mapping[str, object] = MappingProxyType({})
_MAX_CACHED_KINDS = 1024


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened: ``kind`` is a dotted name (``registration.registered``, ``security.*``...),
    ``at`` the wall-clock time in seconds, scoped by ``tenant_id`` and, when it concerns one device, ``endpoint``."""

    kind: str
    at: float
    tenant_id: str = "default"
    endpoint: str | None = None
    data: Mapping[str, object] = field(default_factory=lambda: _NO_DATA, hash=False)


Subscriber = Callable[[Event], object]
Unsubscribe = Callable[[], None]


def _normalize_kinds(kinds: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if kinds is None:
        return None
    out = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not out or not all(isinstance(k, str) and k for k in out):
        raise ValueError("kinds must be None or non-empty strings")
    return out


def kind_matches(kind: str, filters: tuple[str, ...] | None) -> bool:
    """Whether ``kind`` passes a prefix filter: ``None`` passes everything; ``"registration"`` passes
    ``registration`` and ``registration.*``; a filter ending in ``.`` passes any kind it begins."""
    if filters is None:
        return True
    return any(kind == f or (kind.startswith(f) and (f.endswith(".") or kind[len(f)] == ".")) for f in filters)


@dataclass(frozen=True, slots=True, eq=False)
class _Subscription:
    callback: Subscriber
    kinds: tuple[str, ...] | None


class EventBus:
    """Synchronous fan-out of :class:`Event` to subscribers filtered by kind prefix.

    Subscribing or unsubscribing (also from inside a callback) takes effect for the next publish. Publishing is
    cheap when nobody listens; callers that build costly payloads can ask :meth:`wants` first.
    """

    __slots__ = ("_by_kind", "_lock", "_subs")

    def __init__(self) -> None:
        self._subs: tuple[_Subscription, ...] = ()
        self._by_kind: dict[str, tuple[Subscriber, ...]] = {}
        self._lock = threading.Lock()

    def subscribe(self, callback: Subscriber, kinds: str | Iterable[str] | None = None) -> Unsubscribe:
        """Call ``callback(event)`` for every event whose kind passes ``kinds``; returns the unsubscribe function
        (idempotent)."""
        sub = _Subscription(callback, _normalize_kinds(kinds))
        with self._lock:
            self._subs = (*self._subs, sub)
            self._by_kind = {}

        def unsubscribe() -> None:
            with self._lock:
                if sub in self._subs:
                    self._subs = tuple(s for s in self._subs if s is not sub)
                    self._by_kind = {}

        return unsubscribe

    def _callbacks(self, kind: str) -> tuple[Subscriber, ...]:
        cache = self._by_kind
        callbacks = cache.get(kind)
        if callbacks is None:
            callbacks = tuple(s.callback for s in self._subs if kind_matches(kind, s.kinds))
            if len(cache) >= _MAX_CACHED_KINDS:
                cache.clear()
            cache[kind] = callbacks
        return callbacks

    def wants(self, kind: str) -> bool:
        """Whether any subscriber would receive an event of this kind."""
        return bool(self._callbacks(kind))

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every matching subscriber; exceptions from subscribers are logged, never raised."""
        for callback in self._callbacks(event.kind):
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber %r failed on %s", callback, event.kind)

    def emit(self, kind: str, at: float, *, tenant_id: str = "default", endpoint: str | None = None,
             data: Mapping[str, object] | None = None) -> None:
        """Build and publish an event, skipping the construction when nobody listens to ``kind``."""
        if self._callbacks(kind):
            self.publish(Event(kind, at, tenant_id, endpoint, _NO_DATA if data is None else data))

    def queue(self, kinds: str | Iterable[str] | None = None, maxsize: int = 1024) -> EventQueue:
        """An asyncio-queue subscription for async consumers (drop-oldest when full; see :class:`EventQueue`)."""
        return EventQueue(self, kinds, maxsize)


class EventQueue:
    """A subscription that feeds an :class:`asyncio.Queue`: when full, the oldest event is dropped and counted in
    ``dropped``. Events published from another thread are handed over to the loop the queue was created on.
    Close it (or use it as a context manager) to unsubscribe."""

    def __init__(self, bus: EventBus, kinds: str | Iterable[str] | None = None, maxsize: int = 1024) -> None:
        if maxsize <= 0:
            raise ValueError("maxsize must be positive (an unbounded queue is a memory leak waiting to happen)")
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._thread = threading.get_ident()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._unsubscribe: Unsubscribe | None = bus.subscribe(self._deliver, kinds)

    def _deliver(self, event: Event) -> None:
        if threading.get_ident() == self._thread or self._loop is None:
            self._put(event)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody will read the queue anymore
                self._loop.call_soon_threadsafe(self._put, event)

    def _put(self, event: Event) -> None:
        q = self.queue
        if q.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
            self.dropped += 1
        q.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def get_nowait(self) -> Event:
        """The oldest queued event; raises :class:`asyncio.QueueEmpty` when there is none."""
        return self.queue.get_nowait()

    def qsize(self) -> int:
        return self.queue.qsize()

    def close(self) -> None:
        """Unsubscribe; events already queued stay readable."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    @property
    def closed(self) -> bool:
        return self._unsubscribe is None

    def __enter__(self) -> EventQueue:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __aiter__(self) -> EventQueue:
        return self

    async def __anext__(self) -> Event:
        return await self.queue.get()

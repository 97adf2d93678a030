"""The outbox writer: the I/O shell that puts this node's bus events into the event outbox
(:mod:`lwm2m_server.storage.outbox_store`), from which the usage meter (:mod:`lwm2m_server.metering.meter`) and
the webhook notifier (:mod:`lwm2m_server.fota.webhooks`) of every node sharing the database read them.

Invariants:

* The publisher is never blocked: the bus subscriber gives the event an id (uuid4 hex) and appends it to an
  in-memory buffer, O(1), no I/O. :meth:`OutboxWriter.flush` writes everything buffered in one transaction per
  batch, in publication order; :meth:`OutboxWriter.run` calls it every ``flush_interval`` (50 ms) in a worker
  thread. A failed write keeps its events buffered, ahead of what came since, and is retried with backoff (up to
  ``max_retry_delay``); since an append is idempotent per event id, a retry of a batch whose commit was in fact
  made stores nothing twice. Nothing buffered is ever dropped (the buffer grows while the database is down).
* Which events: those metering counts (``metered_kinds``) and those a webhook subscription wants
  (``notify_kinds``, set by the node's :class:`~lwm2m_server.fota.webhooks.WebhookNotifier` from the
  subscriptions of every tenant); an event is written with ``metered_at`` (``notified_at``) already set when
  metering (webhooks) has nothing to do with it, so each consumer only scans its own rows.
* The window that remains: an event buffered but not written yet (at most one ``flush_interval``, more while the
  database fails) is lost if the process is killed (SIGKILL, OOM, power cut); a clean stop (:meth:`close`) writes
  it. Once written, an event is counted by metering exactly once, and delivered to each webhook exactly once per
  delivery id (derived from the event id and the webhook id: a delivery retried by another node after a crash
  carries the same id, and receivers deduplicate on it).
* A device's first registration of the day that only metering wants (no webhook subscribes to registrations) is
  not a row of its own: the endpoints are gathered per (tenant, day) and written, at each flush, as one
  :data:`~lwm2m_server.metering.usage.REGISTRATIONS_SEEN` row per (tenant, day) and :data:`REGISTRATIONS_PER_ROW`
  endpoints, which metering counts like the events it stands for. A fresh fleet registering costs one row per
  flush, not one per device (a row per device was a third of a registration's CPU and most of its memory).
* :meth:`run` also prunes, every ``prune_interval``, the rows both consumers are done with that are older than
  ``retention`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from lwm2m_server.core.errors import StorageError
from lwm2m_server.events import REGISTRATION_REGISTERED, Event, EventBus, kind_matches
from lwm2m_server.metering.usage import METERED_KINDS, REGISTRATIONS_SEEN, day_of
from lwm2m_server.storage.outbox_store import OutboxEvent, OutboxStore
from lwm2m_server.write_behind import run_write_behind

__all__ = ["DEFAULT_FLUSH_INTERVAL", "OutboxWriter"]

log = logging.getLogger(__name__)

DEFAULT_FLUSH_INTERVAL = 0.05
MAX_RETRY_DELAY = 5.0
BATCH = 5000  # events per transaction
RETENTION = 3600.0  # seconds a consumed row is kept (for inspection) before it is pruned
PRUNE_INTERVAL = 60.0
MAX_SEEN_TODAY = 1_000_000  # endpoints remembered as registered today (beyond: forgotten, their rows written)
REGISTRATIONS_PER_ROW = 1000  # endpoints in one REGISTRATIONS_SEEN row


class OutboxWriter:
    """Writes this node's metered and notified events into ``store`` from the moment it is built until
    :meth:`close`. Thread-safe: events may come from any thread; one flush runs at a time."""

    def __init__(self, store: OutboxStore, events: EventBus, *, node_id: str,
                 metered_kinds: Iterable[str] = METERED_KINDS, notify_kinds: Iterable[str] = (),
                 clock: Callable[[], float] = time.time, flush_interval: float = DEFAULT_FLUSH_INTERVAL,
                 max_retry_delay: float = MAX_RETRY_DELAY, retention: float = RETENTION,
                 prune_interval: float = PRUNE_INTERVAL) -> None:
        self.store = store
        self.node_id = node_id
        self.clock = clock
        self.flush_interval = flush_interval
        self.max_retry_delay = max_retry_delay
        self.retention = retention
        self.prune_interval = prune_interval
        self._metered = tuple(metered_kinds)
        self._notify: tuple[str, ...] = tuple(notify_kinds)
        self._wanted: dict[str, tuple[bool, bool]] = {}  # kind -> (metered, notified): a cache of the filters
        self._lock = threading.Lock()  # the buffer
        self._flush_lock = threading.Lock()
        self._buffer: collections.deque[OutboxEvent] = collections.deque()
        self._writing = 0
        self._stop = asyncio.Event()
        self.on_written: list[Callable[[], None]] = []
        """Called (on the writing thread) after each flush that wrote events: wakes this node's consumers."""
        self._seen_day = ""
        self._seen_today: set[tuple[str, str | None]] = set()
        # first registrations of the day that only metering wants, by (tenant, day): (first ``at``, endpoints)
        self._registered: dict[tuple[str, str], tuple[float, list[str]]] = {}
        self._registered_count = 0
        self._unsubscribe: Callable[[], None] | None = events.subscribe(self._on_event)

    @property
    def notify_kinds(self) -> tuple[str, ...]:
        return self._notify

    @notify_kinds.setter
    def notify_kinds(self, kinds: Iterable[str]) -> None:
        """The kind prefixes webhooks want (events published from now on)."""
        kinds = tuple(kinds)
        if kinds != self._notify:
            self._notify, self._wanted = kinds, {}

    def _on_event(self, event: Event) -> None:
        wanted = self._wanted.get(event.kind)
        if wanted is None:
            wanted = (kind_matches(event.kind, self._metered), kind_matches(event.kind, self._notify))
            self._wanted[event.kind] = wanted
        metered, notified = wanted
        if not (metered or notified):
            return
        if event.kind == REGISTRATION_REGISTERED and not notified:
            if self._seen_before(event) or not event.endpoint:
                return  # metering counts a device once per day: a registration again the same day adds nothing
            key = (event.tenant_id, day_of(event.at))
            with self._lock:
                gathered = self._registered.get(key)
                if gathered is None:
                    self._registered[key] = (event.at, [event.endpoint])
                else:
                    gathered[1].append(event.endpoint)
                self._registered_count += 1
            return
        now = None if metered and notified else self.clock()
        row = OutboxEvent.of(event, event_id=uuid.uuid4().hex, node_id=self.node_id,
                             metered_at=None if metered else now, notified_at=None if notified else now)
        with self._lock:
            self._buffer.append(row)

    def _seen_before(self, event: Event) -> bool:
        """Whether this endpoint's registration was already written today (UTC); remembers it if not. The memory is
        one entry per device registered today, dropped at midnight (and past :data:`MAX_SEEN_TODAY`: the store
        counts an endpoint once per day anyway, this only saves writing the row)."""
        day = day_of(event.at)
        if day != self._seen_day or len(self._seen_today) >= MAX_SEEN_TODAY:
            self._seen_day, self._seen_today = day, set()
        key = (event.tenant_id, event.endpoint)
        if key in self._seen_today:
            return True
        self._seen_today.add(key)
        return False

    @property
    def pending(self) -> int:
        """Events buffered, not written yet (waiting for the next flush, or being written); a gathered registration
        counts as one."""
        with self._lock:
            return len(self._buffer) + self._writing + self._registered_count

    def _gathered_rows(self) -> list[OutboxEvent]:
        """The gathered registrations as REGISTRATIONS_SEEN rows (the gathering emptied). Call with the lock."""
        rows, now = [], self.clock()
        for (tenant, _day), (at, endpoints) in self._registered.items():
            for i in range(0, len(endpoints), REGISTRATIONS_PER_ROW):
                part = endpoints[i:i + REGISTRATIONS_PER_ROW]
                event = Event(REGISTRATIONS_SEEN, at, tenant, None, {"endpoints": part})
                rows.append(OutboxEvent.of(event, event_id=uuid.uuid4().hex, node_id=self.node_id, notified_at=now))
        self._registered, self._registered_count = {}, 0
        return rows

    def flush(self) -> None:
        """Write everything buffered so far (one transaction per :data:`BATCH` events). On a storage failure the
        events not written stay buffered, first in line, and the :class:`StorageError` is raised. Blocking: call
        it in a worker thread from an event loop."""
        wrote = False
        with self._flush_lock:
            while True:
                with self._lock:
                    if self._registered:  # written with this flush, after what was buffered before them
                        self._buffer.extend(self._gathered_rows())
                    batch = [self._buffer.popleft() for _ in range(min(BATCH, len(self._buffer)))]
                    self._writing = len(batch)
                if not batch:
                    break
                try:
                    self.store.append(batch)
                    wrote = True
                except BaseException:
                    with self._lock:
                        self._buffer.extendleft(reversed(batch))
                    raise
                finally:
                    with self._lock:
                        self._writing = 0
        if wrote:
            for callback in self.on_written:
                try:
                    callback()
                except Exception:
                    log.exception("outbox: a written-callback failed")

    def prune(self) -> int:
        """Delete the rows both consumers are done with, older than ``retention`` seconds; how many."""
        return self.store.prune(before=self.clock() - self.retention)

    async def run(self) -> None:
        """Until :meth:`close`: flush every ``flush_interval`` (a failed flush is logged and retried with
        exponential backoff, its events kept), and prune every ``prune_interval``."""
        pruned_at = time.monotonic()

        async def step() -> None:
            nonlocal pruned_at
            await asyncio.to_thread(self.flush)
            if time.monotonic() - pruned_at >= self.prune_interval:  # after a flush that succeeded
                pruned_at = time.monotonic()
                try:
                    await asyncio.to_thread(self.prune)
                except StorageError as e:
                    log.warning("cannot prune the outbox: %s", e)

        def failed(e: Exception, delay: float) -> None:
            log.warning("outbox write failed (%d events buffered, retry in %.2f s): %s", self.pending, delay, e)

        await run_write_behind(step, self._stop, interval=self.flush_interval, max_delay=self.max_retry_delay,
                               failed=failed)

    def close(self) -> None:
        """Stop taking events and :meth:`run`, and write what is buffered (idempotent; raises the store's error
        if that fails: those events are lost). Call it on the thread of the loop that runs :meth:`run`."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stop.set()
        self.flush()

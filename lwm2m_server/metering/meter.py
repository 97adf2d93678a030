"""The usage meter: the event bus's metered events (:data:`~lwm2m_server.metering.usage.METERED_KINDS`) counted
into a :class:`~lwm2m_server.metering.store.UsageStore`, per tenant and day.

Counting is write-behind, like the registrations (:mod:`lwm2m_server.registry.service`): the subscriber only adds
the event to the pending tally of its tenant and day, in memory, O(1), no I/O (a registration of an endpoint this
meter counted already today adds nothing); :meth:`UsageMeter.flush` writes everything pending in one transaction
(:meth:`~lwm2m_server.metering.store.UsageStore.add_batch`), and :meth:`UsageMeter.run` calls it every
``flush_interval`` (default 0.5 s) in a worker thread. A failed flush leaves its counts pending, added to what
came since, and the next flush writes them once: a batch is one transaction, all or nothing.

The trade-off, for billing: what is pending lives only in this process. A SIGKILL, an OOM kill or a power cut
loses up to ``flush_interval`` seconds of counts (more while the database is failing: everything since the last
flush that succeeded); a clean stop (:meth:`UsageMeter.close`) loses nothing. What that means per counter:

* registrations: a device whose registration itself was lost too (the registry writes behind every 50 ms) gets
  4.04 on its next Update, registers again after the restart and is counted then (on that day). But the registry
  usually has written it, so after the restart the device only sends Updates, which are not counted: it is
  missing from ``devices_registered`` of that day unless it registers again the same day;
* deliveries started, succeeded or failed, bytes delivered, campaigns started or finished: lost for good, nothing
  replays those events.

The error is always an undercount (nobody is billed for what did not happen), bounded by ``flush_interval`` of
traffic, and only on a crash. We accept that for usage billed per day and per device as an estimate of load;
it is not acceptable for a tariff per delivery that must be exact: that needs the event written in the same
transaction as the state change that causes it (an outbox, issue 16 item 4), which this meter is not. One case
counts twice: a commit whose acknowledgement is lost with the connection is retried as failed (as any relative
update would be).

Days are sealed when the meter sees the clock pass a midnight (plus :data:`SEAL_GRACE`, so an event stamped just
before midnight on a node whose clock lags is still counted on its day), for every tenant it counted for, at the
next flush and after what is pending is written; an export seals too (after a flush: :attr:`UsageMeter.view`).
A count for a day sealed already (a late one) is counted on the current day and logged, never dropped. Failures
are logged, never raised into the bus.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from lwm2m_server.core.errors import StorageError
from lwm2m_server.events import Event, EventBus
from lwm2m_server.metering.store import Moved, UsageStore
from lwm2m_server.metering.usage import (
    METERED_KINDS,
    DayCounts,
    Tally,
    UsageDay,
    day_of,
    day_start,
    measure,
    next_day,
)

__all__ = ["DEFAULT_FLUSH_INTERVAL", "SEAL_GRACE", "UsageMeter"]

log = logging.getLogger(__name__)

SEAL_GRACE = 300.0  # seconds after midnight before the day just ended is sealed
DEFAULT_FLUSH_INTERVAL = 0.5
MAX_RETRY_DELAY = 5.0

_Key = tuple[str, str]  # (tenant_id, day)


class UsageMeter:
    """Counts metered events into ``store`` from the moment it is built until :meth:`close`. Thread-safe: events
    may come from any thread, and one flush runs at a time."""

    def __init__(self, store: UsageStore, events: EventBus, clock: Callable[[], float] = time.time, *,
                 seal_grace: float = SEAL_GRACE, flush_interval: float = DEFAULT_FLUSH_INTERVAL,
                 max_retry_delay: float = MAX_RETRY_DELAY) -> None:
        self.store = store
        self.clock = clock
        self.seal_grace = seal_grace
        self.flush_interval = flush_interval
        self.max_retry_delay = max_retry_delay
        self.view: UsageStore = _Flushed(self)
        self._lock = threading.Lock()  # the state below
        self._flush_lock = threading.Lock()  # one flush (or sealing) at a time
        self._day = day_of(clock() - seal_grace)  # the day whose end is the next sealing, at clock time _seal_at
        self._seal_at = day_start(next_day(self._day)) + seal_grace
        self._seal_due = False
        self._tenants: set[str] = set()  # tenants counted for
        self._registered: set[tuple[str, str, str]] = set()  # (tenant, day, endpoint) counted by this meter
        self._counts: dict[_Key, DayCounts] = {}  # pending
        self._endpoints: dict[_Key, set[str]] = {}  # pending
        self._writing = 0  # tallies taken by the flush under way (not written yet)
        self._stop = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = events.subscribe(self._on_event, METERED_KINDS)

    def _on_event(self, event: Event) -> None:
        inc = measure(event.kind, event.data, tenant_id=event.tenant_id, at=event.at, endpoint=event.endpoint)
        if inc is None:
            return
        now = self.clock()
        key = (inc.tenant_id, inc.day)
        with self._lock:
            if now >= self._seal_at:
                self._roll(now)
            self._tenants.add(inc.tenant_id)
            if inc.endpoint is None:
                counts = self._counts
                counts[key] = counts[key] + inc.counts if key in counts else inc.counts
                return
            seen = (inc.tenant_id, inc.day, inc.endpoint)
            if seen not in self._registered:
                self._registered.add(seen)
                self._endpoints.setdefault(key, set()).add(inc.endpoint)

    def _roll(self, now: float) -> None:
        """(Under the lock.) The clock passed a midnight plus the grace: the day that ended is to be sealed."""
        day = day_of(now - self.seal_grace)
        if day == self._day:
            return
        self._day, self._seal_at, self._seal_due = day, day_start(next_day(day)) + self.seal_grace, True
        self._registered = {r for r in self._registered if r[1] >= day}

    @property
    def pending(self) -> int:
        """How many (tenant, day) tallies are not written yet (waiting for the next flush, or being written)."""
        with self._lock:
            return len(self._counts.keys() | self._endpoints.keys()) + self._writing

    def flush(self) -> None:
        """Write everything counted so far (one transaction), then seal if a midnight (plus the grace) has
        passed. On a storage failure the counts stay pending (the next flush writes them) and the
        :class:`StorageError` is raised. Blocking: call it in a worker thread from an event loop."""
        with self._flush_lock:
            now = self.clock()
            self._write(now)
            with self._lock:
                if now >= self._seal_at:
                    self._roll(now)
                due = self._seal_due
            if due:
                self._seal(now)

    def seal(self, now: float | None = None) -> list[UsageDay]:
        """Flush, then seal, for every tenant this meter counted for, the days that ended ``seal_grace`` before
        ``now`` (default: the clock); the days sealed now. Storage failures are logged (the next sealing catches
        up)."""
        with self._flush_lock:
            now = self.clock() if now is None else now
            try:
                self._write(now)
            except StorageError as e:
                log.error("usage: cannot write the pending counts before sealing: %s", e)
                return []
            return self._seal(now)

    def _write(self, now: float) -> None:
        """(Under the flush lock.) One batch of everything pending; put back if it fails."""
        with self._lock:
            counts, self._counts = self._counts, {}
            endpoints, self._endpoints = self._endpoints, {}
            keys = counts.keys() | endpoints.keys()
            self._writing = len(keys)
        if not keys:
            return
        batch = [_tally(key, counts.get(key, DayCounts()), endpoints.get(key, ())) for key in keys]
        try:
            moved = self.store.add_batch(batch, today=day_of(now))
        except BaseException:
            with self._lock:
                for key, c in counts.items():
                    self._counts[key] = self._counts[key] + c if key in self._counts else c
                for key, eps in endpoints.items():
                    self._endpoints.setdefault(key, set()).update(eps)
            raise
        finally:
            with self._lock:
                self._writing = 0
        _log_moved(moved)

    def _seal(self, now: float) -> list[UsageDay]:
        """(Under the flush lock, after a write.) Seal every counted tenant's days that are over."""
        at = now - self.seal_grace
        with self._lock:
            tenants = sorted(self._tenants)
            self._seal_due = False
        sealed: list[UsageDay] = []
        for tenant in tenants:
            try:
                sealed += self.store.seal(tenant_id=tenant, now=at)
            except StorageError as e:
                log.error("usage: cannot seal the days of tenant %s: %s", tenant, e)
                with self._lock:
                    self._seal_due = True  # the next flush tries again
        return sealed

    async def run(self) -> None:
        """Until :meth:`close`: flush every ``flush_interval``, in a worker thread. A failed flush is logged and
        retried with exponential backoff (up to ``max_retry_delay``), its counts kept."""
        delay = self.flush_interval
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            except TimeoutError:
                pass
            if self._stop.is_set():
                break
            try:
                await asyncio.to_thread(self.flush)
                delay = self.flush_interval
            except Exception as e:
                delay = min(delay * 2, self.max_retry_delay)
                log.warning("usage write-behind failed (%d tallies pending, retry in %.2f s): %s",
                            self.pending, delay, e)

    def close(self) -> None:
        """Stop counting and :meth:`run`, and write what is pending (idempotent; raises the store's error if that
        fails: those counts are lost). Call it on the thread of the loop that runs :meth:`run`."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stop.set()
        self.flush()


def _tally(key: _Key, counts: DayCounts, endpoints: Sequence[str] | set[str]) -> Tally:
    eps = frozenset(endpoints)
    return Tally(key[0], key[1], replace(counts, devices_registered=len(eps)), eps)


def _log_moved(moved: list[Moved]) -> None:
    for tenant, day, counted_on in moved:
        log.warning("usage: counts of %s (tenant %s) arrived after that day was sealed; counted on %s",
                    day, tenant, counted_on)


class _Flushed:
    """The meter's store as readers must see it (exports, the API): every call flushes the meter first, so it
    holds every count made so far. A failed flush is raised (an export must not miss counts silently)."""

    def __init__(self, meter: UsageMeter) -> None:
        self._meter = meter

    def add(self, counts: DayCounts, *, tenant_id: str, day: str, endpoint: str | None = None) -> None:
        self._meter.flush()
        self._meter.store.add(counts, tenant_id=tenant_id, day=day, endpoint=endpoint)

    def add_batch(self, tallies: Sequence[Tally], *, today: str | None = None) -> list[Moved]:
        self._meter.flush()
        return self._meter.store.add_batch(tallies, today=today)

    def counts(self, *, tenant_id: str, day: str) -> DayCounts:
        self._meter.flush()
        return self._meter.store.counts(tenant_id=tenant_id, day=day)

    def seal(self, *, tenant_id: str, now: float) -> list[UsageDay]:
        self._meter.flush()
        return self._meter.store.seal(tenant_id=tenant_id, now=now)

    def days(self, *, tenant_id: str, first: str | None = None, last: str | None = None) -> list[UsageDay]:
        self._meter.flush()
        return self._meter.store.days(tenant_id=tenant_id, first=first, last=last)

"""The usage meter: the metered events (:data:`~lwm2m_server.metering.usage.METERED_KINDS`) of every node sharing
the database, counted into a :class:`~lwm2m_server.metering.store.UsageStore`, per tenant and day, exactly once.

The source of truth is the event outbox (:mod:`lwm2m_server.storage.outbox_store`), not the bus: this node's
:class:`~lwm2m_server.outbox.OutboxWriter` writes its events there (write-behind, every 50 ms), and
:meth:`UsageMeter.flush` first flushes that writer, then counts the outbox rows not metered yet, batch after
batch, each in ONE transaction that adds their tallies and marks them metered
(:meth:`~lwm2m_server.metering.store.UsageStore.count_outbox`): a row is counted once whichever node's meter takes
it, a failed batch counts and marks nothing (the next flush takes it again), and a meter that dies between two
flushes loses nothing written. :meth:`UsageMeter.run` flushes every ``flush_interval`` (default 0.5 s) in a worker
thread, with backoff while the database fails.

What is left of the old trade-off is the writer's: an event buffered by the writer but not yet in the outbox (at
most its 50 ms flush interval, more while the database fails) is lost on a SIGKILL, an OOM kill or a power cut;
a clean stop writes it. That error is an undercount, bounded and only on a crash; everything written is counted
exactly once, including across several nodes and restarts (a registration of an endpoint counted already that
day adds nothing, on any node: ``usage_endpoint`` holds it once).

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

from lwm2m_server.core.errors import StorageError
from lwm2m_server.metering.store import Counted, Moved, UsageStore
from lwm2m_server.metering.usage import DayCounts, Tally, UsageDay, day_of, day_start, next_day
from lwm2m_server.outbox import OutboxWriter
from lwm2m_server.write_behind import run_write_behind

__all__ = ["BATCH", "DEFAULT_FLUSH_INTERVAL", "SEAL_GRACE", "UsageMeter"]

log = logging.getLogger(__name__)

SEAL_GRACE = 300.0  # seconds after midnight before the day just ended is sealed
DEFAULT_FLUSH_INTERVAL = 0.5
MAX_RETRY_DELAY = 5.0
BATCH = 10_000  # outbox rows counted per transaction


class UsageMeter:
    """Counts the outbox's metered events into ``store`` until :meth:`close`; ``outbox`` is this node's writer
    (flushed first by every flush, so a flush counts every event published before it). Thread-safe: one flush
    runs at a time."""

    def __init__(self, store: UsageStore, outbox: OutboxWriter, clock: Callable[[], float] = time.time, *,
                 seal_grace: float = SEAL_GRACE, flush_interval: float = DEFAULT_FLUSH_INTERVAL,
                 max_retry_delay: float = MAX_RETRY_DELAY, batch: int = BATCH) -> None:
        self.store = store
        self.outbox = outbox
        self.clock = clock
        self.seal_grace = seal_grace
        self.flush_interval = flush_interval
        self.max_retry_delay = max_retry_delay
        self.batch = batch
        self.view: UsageStore = _Flushed(self)
        self._lock = threading.Lock()  # the state below
        self._flush_lock = threading.Lock()  # one flush (or sealing) at a time
        self._day = day_of(clock() - seal_grace)  # the day whose end is the next sealing, at clock time _seal_at
        self._seal_at = day_start(next_day(self._day)) + seal_grace
        self._seal_due = False
        self._tenants: set[str] = set()  # tenants counted for
        self._failed = False  # the last count of the outbox failed: rows are waiting there
        self._stop = asyncio.Event()

    def _roll(self, now: float) -> None:
        """(Under the lock.) The clock passed a midnight plus the grace: the day that ended is to be sealed."""
        day = day_of(now - self.seal_grace)
        if day == self._day:
            return
        self._day, self._seal_at, self._seal_due = day, day_start(next_day(day)) + self.seal_grace, True

    @property
    def pending(self) -> int:
        """Events not counted yet as far as this node knows: those its outbox writer has not written, plus one
        while the last count of the outbox failed (how many rows wait there is the outbox's to say:
        :meth:`~lwm2m_server.storage.outbox_store.OutboxStore.unmetered`)."""
        with self._lock:
            return self.outbox.pending + int(self._failed)

    def flush(self) -> None:
        """Flush the outbox writer, count every outbox row not metered yet (a transaction per ``batch`` rows),
        then seal if a midnight (plus the grace) has passed. On a storage failure what is not counted stays in
        the outbox (or the writer's buffer) for the next flush, and the :class:`StorageError` is raised.
        Blocking: call it in a worker thread from an event loop."""
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
                log.error("usage: cannot count the pending events before sealing: %s", e)
                return []
            return self._seal(now)

    def _write(self, now: float) -> None:
        """(Under the flush lock.) The writer flushed, then the outbox counted batch after batch."""
        self.outbox.flush()
        try:
            while True:
                counted = self.store.count_outbox(limit=self.batch, now=self.clock(), today=day_of(now))
                with self._lock:
                    self._tenants |= counted.tenants
                    self._failed = False
                _log_moved(counted.moved)
                if counted.events < self.batch:
                    return
        except BaseException:
            with self._lock:
                self._failed = True
            raise

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
        retried with exponential backoff (up to ``max_retry_delay``); what it did not count stays in the outbox."""
        def failed(e: Exception, delay: float) -> None:
            log.warning("usage counting failed (%d event(s) known pending, retry in %.2f s): %s", self.pending,
                        delay, e)

        await run_write_behind(lambda: asyncio.to_thread(self.flush), self._stop, interval=self.flush_interval,
                               max_delay=self.max_retry_delay, failed=failed)

    def close(self) -> None:
        """Stop :meth:`run` and count what is pending, the writer's buffer included (idempotent; raises the
        store's error if that fails: the events stay in the outbox, or in the writer's buffer, for a later
        count). Call it on the thread of the loop that runs :meth:`run`."""
        self._stop.set()
        self.flush()


def _log_moved(moved: Sequence[Moved]) -> None:
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

    def count_outbox(self, *, limit: int, now: float, today: str) -> Counted:
        self._meter.flush()
        return self._meter.store.count_outbox(limit=limit, now=now, today=today)

    def counts(self, *, tenant_id: str, day: str) -> DayCounts:
        self._meter.flush()
        return self._meter.store.counts(tenant_id=tenant_id, day=day)

    def seal(self, *, tenant_id: str, now: float) -> list[UsageDay]:
        self._meter.flush()
        return self._meter.store.seal(tenant_id=tenant_id, now=now)

    def days(self, *, tenant_id: str, first: str | None = None, last: str | None = None) -> list[UsageDay]:
        self._meter.flush()
        return self._meter.store.days(tenant_id=tenant_id, first=first, last=last)

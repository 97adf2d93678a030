"""The usage meter: the event bus's metered events (:data:`~lwm2m_server.metering.usage.METERED_KINDS`) counted
into a :class:`~lwm2m_server.metering.store.UsageStore`, per tenant and day.

Counting is synchronous, in the subscriber (one short transaction per event, on the publishing thread): nothing
is held in memory that a crash could lose, and SQLite keeps up at our rates. A registration of an endpoint this
meter has counted already today costs no write at all.

Days are sealed when the meter sees the clock pass a midnight (plus :data:`SEAL_GRACE`, so an event stamped just
before midnight on a node whose clock lags is still counted on its day), for every tenant it counted for; an
export seals too. An event that arrives for a day sealed already (a late one) is counted on the current day and
logged, never dropped. Failures are logged, never raised into the bus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from lwm2m_server.core.errors import StorageError
from lwm2m_server.events import Event, EventBus
from lwm2m_server.metering.store import SealedDayError, UsageStore
from lwm2m_server.metering.usage import METERED_KINDS, UsageDay, day_of, measure

__all__ = ["SEAL_GRACE", "UsageMeter"]

log = logging.getLogger(__name__)

SEAL_GRACE = 300.0  # seconds after midnight before the day just ended is sealed


class UsageMeter:
    """Counts metered events into ``store`` from the moment it is built until :meth:`close`."""

    def __init__(self, store: UsageStore, events: EventBus, clock: Callable[[], float] = time.time, *,
                 seal_grace: float = SEAL_GRACE) -> None:
        self.store = store
        self.clock = clock
        self.seal_grace = seal_grace
        self._lock = threading.Lock()
        self._day = day_of(clock() - seal_grace)  # the day whose end is the next sealing
        self._tenants: set[str] = set()  # tenants counted for since the last sealing
        self._registered: set[tuple[str, str, str]] = set()  # (tenant, day, endpoint) counted by this meter
        self._unsubscribe: Callable[[], None] | None = events.subscribe(self._on_event, METERED_KINDS)

    def _on_event(self, event: Event) -> None:
        inc = measure(event.kind, event.data, tenant_id=event.tenant_id, at=event.at, endpoint=event.endpoint)
        if inc is None:
            return
        now = self.clock()
        self._roll(now)
        seen = None if inc.endpoint is None else (inc.tenant_id, inc.day, inc.endpoint)
        with self._lock:
            if seen is not None and seen in self._registered:
                return
            self._tenants.add(inc.tenant_id)
        day = inc.day
        try:
            try:
                self.store.add(inc.counts, tenant_id=inc.tenant_id, day=day, endpoint=inc.endpoint)
            except SealedDayError:
                day = day_of(now)
                if day == inc.day:
                    raise
                log.warning("usage: a %s event of %s arrived after its day was sealed; counted on %s",
                            event.kind, inc.day, day)
                self.store.add(inc.counts, tenant_id=inc.tenant_id, day=day, endpoint=inc.endpoint)
                seen = None if inc.endpoint is None else (inc.tenant_id, day, inc.endpoint)
        except StorageError as e:
            log.error("usage: a %s event of tenant %s was not counted: %s", event.kind, inc.tenant_id, e)
            return
        if seen is not None:
            with self._lock:
                self._registered.add(seen)

    def _roll(self, now: float) -> None:
        """At the first event past a midnight (plus the grace), seal the day that ended."""
        if day_of(now - self.seal_grace) == self._day:
            return
        with self._lock:
            self._day = day_of(now - self.seal_grace)
            self._registered = {r for r in self._registered if r[1] >= self._day}
        self.seal(now)

    def seal(self, now: float | None = None) -> list[UsageDay]:
        """Seal, for every tenant this meter counted for, the days that ended ``seal_grace`` before ``now``
        (default: the clock); the days sealed now. Storage failures are logged (the next sealing catches up)."""
        at = (self.clock() if now is None else now) - self.seal_grace
        with self._lock:
            tenants = sorted(self._tenants)
        sealed: list[UsageDay] = []
        for tenant in tenants:
            try:
                sealed += self.store.seal(tenant_id=tenant, now=at)
            except StorageError as e:
                log.error("usage: cannot seal the days of tenant %s: %s", tenant, e)
        return sealed

    def close(self) -> None:
        """Stop counting (idempotent); what was counted stays."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

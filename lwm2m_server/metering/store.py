"""Where usage is kept: the :class:`UsageStore` interface, a memory and a SQL implementation (one contract suite,
tests/unit/test_usage_store_contract.py).

Invariants shared by both:

* counts are added, never set: an add is relative (``UPDATE ... SET n = n + :k`` in SQL), so several server nodes
  adding to one day never lose a count; an endpoint counts once per tenant and day in ``devices_registered``;
* a day is open until :meth:`UsageStore.seal` is called with a ``now`` past its end (UTC midnight); sealing
  computes its hash (chained to the tenant's previous sealed day; quiet days in between are sealed as zero days)
  and from then on the day never changes: adding to it, or to any day before the tenant's last sealed day, raises
  :class:`SealedDayError`;
* every call is atomic and safe from several threads; a database failure raises ``StorageError``.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from lwm2m_server.core.errors import CoapCode, StorageError
from lwm2m_server.metering.usage import COUNTERS, DayCounts, Increment, Tally, UsageDay, day_of, seal
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.usage_tables import UsageDayRow, UsageEndpointRow

__all__ = ["MemoryUsageStore", "SealedDayError", "SqlUsageStore", "UsageStore", "exported_days"]

_DAY = UsageDayRow.__table__  # type: ignore[attr-defined]
_EP = UsageEndpointRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS = 3  # a write that lost a race with another node (same new row) is tried again this often


class SealedDayError(StorageError):
    """A change to a sealed day (or to a day before the tenant's last sealed one)."""

    coap_code = CoapCode.CONFLICT


@runtime_checkable
class UsageStore(Protocol):
    """Usage counters per (tenant, day), and the sealed hash chain of each tenant's finished days."""

    def add(self, counts: DayCounts, *, tenant_id: str, day: str, endpoint: str | None = None) -> None:
        """Add ``counts`` to the tenant's open ``day`` (created when new); ``endpoint``: a registration, counted in
        ``devices_registered`` once per day (``counts.devices_registered`` itself is ignored). The day exists
        afterwards even when everything added is zero. :class:`SealedDayError` when the day is sealed."""
        ...

    def counts(self, *, tenant_id: str, day: str) -> DayCounts:
        """The counters of a day so far, open or sealed (zero for a day nobody counted)."""
        ...

    def seal(self, *, tenant_id: str, now: float) -> list[UsageDay]:
        """Seal every open day of the tenant that is over at ``now``; the days sealed now, in date order (gap days
        included), or [] when there was nothing to seal."""
        ...

    def days(self, *, tenant_id: str, first: str | None = None, last: str | None = None) -> list[UsageDay]:
        """The tenant's sealed days from ``first`` to ``last`` (inclusive, None: unbounded), in date order."""
        ...


class MemoryUsageStore:
    """Open days as :class:`Tally` per (tenant, day); each tenant's sealed chain as a list. A lock makes each call
    atomic."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], Tally] = {}
        self._sealed: dict[str, list[UsageDay]] = {}
        self._lock = threading.Lock()

    def add(self, counts: DayCounts, *, tenant_id: str, day: str, endpoint: str | None = None) -> None:
        counts = DayCounts(*(0 if n == "devices_registered" else getattr(counts, n) for n in COUNTERS))
        with self._lock:
            chain = self._sealed.get(tenant_id)
            if chain and day <= chain[-1].day:
                raise SealedDayError(f"usage of {day} is sealed (tenant {tenant_id})")
            tally = self._open.get((tenant_id, day)) or Tally(tenant_id, day)
            self._open[(tenant_id, day)] = tally.add(Increment(tenant_id, day, counts, endpoint))

    def counts(self, *, tenant_id: str, day: str) -> DayCounts:
        with self._lock:
            tally = self._open.get((tenant_id, day))
            if tally is not None:
                return tally.counts
            found = next((d for d in self._sealed.get(tenant_id, ()) if d.day == day), None)
            return DayCounts() if found is None else found.counts

    def seal(self, *, tenant_id: str, now: float) -> list[UsageDay]:
        today = day_of(now)
        with self._lock:
            over = sorted(d for (t, d) in self._open if t == tenant_id and d < today)
            if not over:
                return []
            chain = self._sealed.setdefault(tenant_id, [])
            new = seal([UsageDay.of(tenant_id, d, self._open[(tenant_id, d)].counts) for d in over],
                       after=chain[-1] if chain else None)
            chain.extend(new)
            for d in over:
                del self._open[(tenant_id, d)]
            return new

    def days(self, *, tenant_id: str, first: str | None = None, last: str | None = None) -> list[UsageDay]:
        with self._lock:
            return [d for d in self._sealed.get(tenant_id, ())
                    if (first is None or d.day >= first) and (last is None or d.day <= last)]


class _Raced(Exception):
    """Another node changed what this transaction read: roll back and try again."""


class SqlUsageStore:
    """Usage in the ``usage_day`` and ``usage_endpoint`` tables (portable SQL, relative updates).

    An open day's ``devices_registered`` is the number of its ``usage_endpoint`` rows; sealing writes that number,
    the hashes, and (checked in the same UPDATE) only if no count changed since it was read."""

    def __init__(self, database: Database) -> None:
        self._engine = database.engine  # its tables are created with the database (storage/database.py)

    def add(self, counts: DayCounts, *, tenant_id: str, day: str, endpoint: str | None = None) -> None:
        key = (_DAY.c.tenant_id == tenant_id) & (_DAY.c.day == day)
        deltas = {n: _DAY.c[n] + getattr(counts, n) for n in COUNTERS if n != "devices_registered"}
        for attempt in range(_ATTEMPTS):
            try:
                with self._engine.begin() as c:
                    if c.execute(update(_DAY).where(key, _DAY.c.hash.is_(None)).values(deltas)).rowcount == 0:
                        last = c.execute(select(func.max(_DAY.c.day)).where(
                            _DAY.c.tenant_id == tenant_id, _DAY.c.hash.is_not(None))).scalar()
                        if last is not None and day <= last:
                            raise SealedDayError(f"usage of {day} is sealed (tenant {tenant_id})")
                        c.execute(insert(_DAY).values(
                            tenant_id=tenant_id, day=day, devices_registered=0,
                            **{n: getattr(counts, n) for n in COUNTERS if n != "devices_registered"}))
                    if endpoint is not None:
                        seen = select(_EP.c.endpoint).where(_EP.c.tenant_id == tenant_id, _EP.c.day == day,
                                                            _EP.c.endpoint == endpoint)
                        if c.execute(seen).first() is None:
                            c.execute(insert(_EP).values(tenant_id=tenant_id, day=day, endpoint=endpoint))
                return
            except IntegrityError as e:  # another node inserted the same day or endpoint first: all rolled back
                if attempt == _ATTEMPTS - 1:
                    raise StorageError(f"cannot count usage of {day} (tenant {tenant_id}): {e}") from e
            except SQLAlchemyError as e:
                raise StorageError(f"cannot count usage of {day} (tenant {tenant_id}): {e}") from e

    def counts(self, *, tenant_id: str, day: str) -> DayCounts:
        try:
            with self._engine.connect() as c:
                row = c.execute(select(_DAY).where(_DAY.c.tenant_id == tenant_id, _DAY.c.day == day)).first()
                if row is None:
                    return DayCounts()
                values = {n: row._mapping[n] for n in COUNTERS}
                if row.hash is None:
                    values["devices_registered"] = self._endpoints(c, tenant_id, day)
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read usage of {day} (tenant {tenant_id}): {e}") from e
        return DayCounts(**values)

    @staticmethod
    def _endpoints(c: Any, tenant_id: str, day: str) -> int:
        return int(c.execute(select(func.count()).select_from(_EP).where(
            _EP.c.tenant_id == tenant_id, _EP.c.day == day)).scalar_one())

    def seal(self, *, tenant_id: str, now: float) -> list[UsageDay]:
        for _ in range(_ATTEMPTS):
            try:
                with self._engine.begin() as c:
                    return self._seal(c, tenant_id, day_of(now))
            except (_Raced, IntegrityError):
                continue
            except SQLAlchemyError as e:
                raise StorageError(f"cannot seal usage (tenant {tenant_id}): {e}") from e
        raise StorageError(f"cannot seal usage (tenant {tenant_id}): other writers kept changing it")

    def _seal(self, c: Any, tenant_id: str, today: str) -> list[UsageDay]:
        mine = _DAY.c.tenant_id == tenant_id
        over = c.execute(select(_DAY).where(mine, _DAY.c.hash.is_(None), _DAY.c.day < today)
                         .order_by(_DAY.c.day)).all()
        if not over:
            return []
        last = c.execute(select(_DAY).where(mine, _DAY.c.hash.is_not(None))
                         .order_by(_DAY.c.day.desc()).limit(1)).first()
        read = {row.day: row for row in over}
        endpoints = {row.day: self._endpoints(c, tenant_id, row.day) for row in over}
        opened = [UsageDay.of(tenant_id, row.day, DayCounts(**{
            **{n: row._mapping[n] for n in COUNTERS}, "devices_registered": endpoints[row.day]})) for row in over]
        new = seal(opened, after=None if last is None else _day(last))
        for d in new:
            values = {"devices_registered": d.devices_registered, "prev_hash": d.prev_hash, "hash": d.hash}
            row = read.get(d.day)
            if row is None:  # a quiet day inside the chain
                c.execute(insert(_DAY).values(tenant_id=tenant_id, day=d.day,
                                              **{**{n: getattr(d, n) for n in COUNTERS}, **values}))
                continue
            unchanged = [_DAY.c[n] == row._mapping[n] for n in COUNTERS if n != "devices_registered"]
            counted = (select(func.count()).select_from(_EP)
                       .where(_EP.c.tenant_id == tenant_id, _EP.c.day == d.day).scalar_subquery())
            done = c.execute(update(_DAY).where(mine, _DAY.c.day == d.day, _DAY.c.hash.is_(None), *unchanged,
                                                counted == d.devices_registered).values(values))
            if done.rowcount != 1:
                raise _Raced
        return new

    def days(self, *, tenant_id: str, first: str | None = None, last: str | None = None) -> list[UsageDay]:
        query = select(_DAY).where(_DAY.c.tenant_id == tenant_id, _DAY.c.hash.is_not(None))
        if first is not None:
            query = query.where(_DAY.c.day >= first)
        if last is not None:
            query = query.where(_DAY.c.day <= last)
        try:
            with self._engine.connect() as c:
                return [_day(row) for row in c.execute(query.order_by(_DAY.c.day))]
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read usage (tenant {tenant_id}): {e}") from e


def _day(row: Row[Any]) -> UsageDay:
    m = row._mapping
    counts = DayCounts(**{n: int(m[n]) for n in COUNTERS})
    return replace(UsageDay.of(m["tenant_id"], m["day"], counts), prev_hash=m["prev_hash"] or "", hash=m["hash"] or "")


def exported_days(store: UsageStore, *, tenant_id: str, now: float, first: str | None = None,
                  last: str | None = None, include_today: bool = False) -> list[UsageDay]:
    """What an export of ``tenant_id`` holds: the days that are over are sealed first, then the sealed days from
    ``first`` to ``last``; with ``include_today``, the day under way too, chained after the last sealed day (a
    snapshot: the store seals that day only once it is over, so a later export may show more)."""
    store.seal(tenant_id=tenant_id, now=now)
    days = store.days(tenant_id=tenant_id, first=first, last=last)
    today = day_of(now)
    if include_today and (last is None or last >= today):
        sealed = store.days(tenant_id=tenant_id)
        running = UsageDay.of(tenant_id, today, store.counts(tenant_id=tenant_id, day=today))
        days += [d for d in seal([running], after=sealed[-1] if sealed else None) if first is None or d.day >= first]
    return days

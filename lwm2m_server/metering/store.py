"""Where usage is kept: the :class:`UsageStore` interface, a memory and a SQL implementation (one contract suite,
tests/unit/test_usage_store_contract.py).

Invariants shared by both:

* counts are added, never set: an add is relative (``UPDATE ... SET n = n + :k`` in SQL), so several server nodes
  adding to one day never lose a count; an endpoint counts once per tenant and day in ``devices_registered``;
* a day is open until :meth:`UsageStore.seal` is called with a ``now`` past its end (UTC midnight); sealing
  computes its hash (chained to the tenant's previous sealed day; quiet days in between are sealed as zero days)
  and from then on the day never changes: adding to it, or to any day before the tenant's last sealed day, raises
  :class:`SealedDayError`;
* :meth:`UsageStore.add_batch` applies many tallies in one transaction, all or nothing; with ``today``, what is
  counted for a sealed day goes to the first open day from ``today`` on (never dropped, never raised);
* :meth:`UsageStore.count_outbox` counts events of the outbox (:mod:`lwm2m_server.storage.outbox_store`) exactly
  once: in ONE transaction it takes rows not metered yet under their lock (PostgreSQL ``FOR UPDATE SKIP LOCKED``,
  SQLite ``BEGIN IMMEDIATE``, the memory outbox's lock), adds their tallies (as :meth:`UsageStore.add_batch` with
  ``today``) and sets their ``metered_at``; it commits only if that UPDATE marked every row it counted, so meters
  of several nodes racing on the same rows never count one twice, and a failure counts and marks nothing;
* every call is atomic and safe from several threads; a database failure raises ``StorageError``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from lwm2m_server.core.errors import CoapCode, StorageError
from lwm2m_server.metering.usage import (
    COUNTERS,
    REGISTRATIONS_SEEN,
    DayCounts,
    Tally,
    UsageDay,
    day_of,
    measure,
    next_day,
    seal,
)
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.outbox_store import MemoryOutboxStore, OutboxEvent, lock_for_update, row_event
from lwm2m_server.storage.outbox_tables import OutboxRow
from lwm2m_server.storage.sql import chunks
from lwm2m_server.storage.usage_tables import UsageDayRow, UsageEndpointRow

__all__ = ["Counted", "MemoryUsageStore", "SealedDayError", "SqlUsageStore", "UsageStore", "exported_days",
           "tallies_of"]

_DAY = UsageDayRow.__table__  # type: ignore[attr-defined]
_EP = UsageEndpointRow.__table__  # type: ignore[attr-defined]
_OUT = OutboxRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS = 3  # a write that lost a race with another node (same new row) is tried again this often
_CHUNK = 2000  # endpoints looked up per SELECT (bound parameters stay far below SQLite's and PostgreSQL's limits)
_ADDED = tuple(n for n in COUNTERS if n != "devices_registered")  # the counters an add sums (not the endpoints)

Moved = tuple[str, str, str]  # (tenant_id, the sealed day counted for, the open day it was counted on)


@dataclass(frozen=True, slots=True)
class Counted:
    """What one :meth:`UsageStore.count_outbox` did: ``events`` rows counted and marked metered, the tenants they
    were of, and the counts of sealed days moved to an open one."""

    events: int = 0
    tenants: frozenset[str] = frozenset()
    moved: tuple[Moved, ...] = ()


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

    def add_batch(self, tallies: Sequence[Tally], *, today: str | None = None) -> list[Moved]:
        """Add every tally (each names its tenant and day; several may name the same one) in one transaction:
        its counts but ``devices_registered``, and its ``endpoints``, each counted once per tenant and day.
        ``today=None``: a tally of a sealed day raises :class:`SealedDayError` and nothing is added; else it is
        counted on the tenant's first open day from ``today`` on, and listed in the result."""
        ...

    def count_outbox(self, *, limit: int, now: float, today: str) -> Counted:
        """Count at most ``limit`` outbox rows not metered yet (in ``seq`` order) and mark them metered at ``now``,
        in one transaction (see the module's invariants); what a sealed day would get goes to the first open day
        from ``today`` on. ``Counted()`` when no row was waiting."""
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
    atomic. It counts from ``outbox`` (a new one when not given: :attr:`outbox`), under the outbox's lock."""

    def __init__(self, outbox: MemoryOutboxStore | None = None) -> None:
        self.outbox = MemoryOutboxStore() if outbox is None else outbox
        self._open: dict[tuple[str, str], Tally] = {}
        self._sealed: dict[str, list[UsageDay]] = {}
        self._lock = threading.Lock()

    def add(self, counts: DayCounts, *, tenant_id: str, day: str, endpoint: str | None = None) -> None:
        self.add_batch([_tally(counts, tenant_id, day, endpoint)])

    def add_batch(self, tallies: Sequence[Tally], *, today: str | None = None) -> list[Moved]:
        with self._lock:
            last = {t: chain[-1].day for t, chain in self._sealed.items() if chain}
            merged, moved = _merge(tallies, last, today)
            for (tenant, day), tally in merged.items():
                old = self._open.get((tenant, day)) or Tally(tenant, day)
                endpoints = old.endpoints | tally.endpoints
                counts = replace(old.counts + tally.counts, devices_registered=len(endpoints))
                self._open[(tenant, day)] = Tally(tenant, day, counts, endpoints)
            return moved

    def count_outbox(self, *, limit: int, now: float, today: str) -> Counted:
        rows, moved = self.outbox.consume_unmetered(limit=limit, now=now,
                                                    count=lambda rows: self.add_batch(tallies_of(rows), today=today))
        return Counted(len(rows), frozenset(r.tenant_id for r in rows), tuple(moved))

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
        self.add_batch([_tally(counts, tenant_id, day, endpoint)])

    def add_batch(self, tallies: Sequence[Tally], *, today: str | None = None) -> list[Moved]:
        """Per (tenant, day): one relative UPDATE (the INSERT of the missing day rows: one statement), then the
        endpoints not counted yet found by chunked SELECTs and inserted in one executemany."""
        if not tallies:
            return []
        tenants = sorted({t.tenant_id for t in tallies})
        what = f"usage of {len(tallies)} tallies (tenants {', '.join(tenants)[:200]})"
        for attempt in range(_ATTEMPTS):
            try:
                with self._engine.begin() as c:
                    return self._add(c, tallies, today)
            except SQLAlchemyError as e:
                # another node inserted the same day or endpoint first, or PostgreSQL chose this transaction as a
                # deadlock's victim: all rolled back, tried again
                if not _retryable(e) or attempt == _ATTEMPTS - 1:
                    raise StorageError(f"cannot count {what}: {e}") from e
        raise AssertionError("unreachable")

    def _add(self, c: Connection, tallies: Sequence[Tally], today: str | None) -> list[Moved]:
        """(In ``c``'s transaction.) What :meth:`add_batch` writes."""
        tenants = sorted({t.tenant_id for t in tallies})
        last = {t: d for t, d in c.execute(select(_DAY.c.tenant_id, func.max(_DAY.c.day)).where(
            _DAY.c.tenant_id.in_(tenants), _DAY.c.hash.is_not(None)).group_by(_DAY.c.tenant_id))}
        merged, moved = _merge(tallies, last, today)
        missing = []
        for (tenant, day), tally in merged.items():
            deltas = {n: _DAY.c[n] + getattr(tally.counts, n) for n in _ADDED}
            if c.execute(update(_DAY).where(_DAY.c.tenant_id == tenant, _DAY.c.day == day,
                                            _DAY.c.hash.is_(None)).values(deltas)).rowcount == 0:
                missing.append({"tenant_id": tenant, "day": day, "devices_registered": 0,
                                **{n: getattr(tally.counts, n) for n in _ADDED}})
        if missing:
            c.execute(insert(_DAY), missing)
        new = [{"tenant_id": t, "day": d, "endpoint": e}
               for (t, d), tally in merged.items() for e in self._uncounted(c, t, d, tally.endpoints)]
        if new:
            c.execute(insert(_EP), new)
        return moved

    def count_outbox(self, *, limit: int, now: float, today: str) -> Counted:
        """One transaction: the rows locked (``FOR UPDATE SKIP LOCKED``: those another meter holds are left to
        it), their tallies added, the rows marked; rolled back (and tried again) unless the UPDATE marked every
        row counted."""
        o = _OUT.c
        for attempt in range(_ATTEMPTS):
            try:
                with self._engine.begin() as c:
                    lock_for_update(c)
                    rows = [row_event(r) for r in c.execute(select(_OUT).where(o.metered_at.is_(None))
                                                            .order_by(o.seq).limit(limit)
                                                            .with_for_update(skip_locked=True))]
                    if not rows:
                        return Counted()
                    tallies = tallies_of(rows)
                    moved = self._add(c, tallies, today) if tallies else []
                    marked = 0
                    for chunk in chunks([r.seq for r in rows]):
                        marked += c.execute(update(_OUT).where(o.seq.in_(chunk), o.metered_at.is_(None))
                                            .values(metered_at=now)).rowcount
                    if marked != len(rows):
                        raise _Raced
                    return Counted(len(rows), frozenset(r.tenant_id for r in rows), tuple(moved))
            except (_Raced, SQLAlchemyError) as e:
                if isinstance(e, SQLAlchemyError) and not _retryable(e):
                    raise StorageError(f"cannot count the outbox: {e}") from e
                if attempt == _ATTEMPTS - 1:
                    raise StorageError(f"cannot count the outbox: other meters kept racing ({e!r})") from None
        raise AssertionError("unreachable")

    @staticmethod
    def _uncounted(c: Any, tenant_id: str, day: str, endpoints: Iterable[str]) -> list[str]:
        """``endpoints`` without those counted on the tenant's day already."""
        wanted = sorted(endpoints)
        present: set[str] = set()
        for i in range(0, len(wanted), _CHUNK):
            present.update(c.execute(select(_EP.c.endpoint).where(
                _EP.c.tenant_id == tenant_id, _EP.c.day == day, _EP.c.endpoint.in_(wanted[i:i + _CHUNK]))).scalars())
        return [e for e in wanted if e not in present]

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


_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure (PostgreSQL)


def _retryable(e: SQLAlchemyError) -> bool:
    """Whether a failed transaction may simply be tried again: a uniqueness race, or a deadlock or serialization
    failure that PostgreSQL resolved by rolling this transaction back."""
    return isinstance(e, IntegrityError) or getattr(getattr(e, "orig", None), "sqlstate", None) in _RETRYABLE_SQLSTATES


def tallies_of(events: Iterable[OutboxEvent]) -> list[Tally]:
    """What ``events`` add, summed per (tenant, day) (:func:`~lwm2m_server.metering.usage.measure`; events
    metering does not count add nothing)."""
    counts: dict[tuple[str, str], DayCounts] = {}
    endpoints: dict[tuple[str, str], set[str]] = {}
    for e in events:
        if e.kind == REGISTRATIONS_SEEN:  # first registrations of the day, gathered in one row
            key = (e.tenant_id, day_of(e.at))
            seen = e.data.get("endpoints")
            if isinstance(seen, list) and seen:
                counts.setdefault(key, DayCounts())
                endpoints.setdefault(key, set()).update(str(x) for x in seen if isinstance(x, str) and x)
            continue
        inc = measure(e.kind, e.data, tenant_id=e.tenant_id, at=e.at, endpoint=e.endpoint)
        if inc is None:
            continue
        key = (inc.tenant_id, inc.day)
        counts[key] = counts[key] + inc.counts if key in counts else inc.counts
        eps = endpoints.setdefault(key, set())
        if inc.endpoint is not None:
            eps.add(inc.endpoint)
    return [Tally(k[0], k[1], replace(c, devices_registered=len(endpoints[k])), frozenset(endpoints[k]))
            for k, c in counts.items()]


def _tally(counts: DayCounts, tenant_id: str, day: str, endpoint: str | None) -> Tally:
    """What one :meth:`UsageStore.add` adds, as a tally."""
    endpoints = frozenset(() if endpoint is None else (endpoint,))
    return Tally(tenant_id, day, replace(counts, devices_registered=len(endpoints)), endpoints)


def _merge(tallies: Iterable[Tally], last: dict[str, str], today: str | None
           ) -> tuple[dict[tuple[str, str], Tally], list[Moved]]:
    """The tallies summed per (tenant, day), the days sealed already (``last``: each tenant's last sealed day)
    moved to the first open day from ``today`` on (``today=None``: :class:`SealedDayError`); and what moved."""
    counts: dict[tuple[str, str], DayCounts] = {}
    endpoints: dict[tuple[str, str], set[str]] = {}
    moved: list[Moved] = []
    for t in tallies:
        day, sealed = t.day, last.get(t.tenant_id)
        if sealed is not None and day <= sealed:
            if today is None:
                raise SealedDayError(f"usage of {day} is sealed (tenant {t.tenant_id})")
            day = today if today > sealed else next_day(sealed)
            moved.append((t.tenant_id, t.day, day))
        key = (t.tenant_id, day)
        counts[key] = counts[key] + t.counts if key in counts else t.counts
        endpoints.setdefault(key, set()).update(t.endpoints)
    return {k: Tally(k[0], k[1], replace(c, devices_registered=len(endpoints[k])), frozenset(endpoints[k]))
            for k, c in counts.items()}, moved


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

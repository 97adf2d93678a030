"""The event outbox store: the events metering and webhooks consume, shared by every node of one database, as a
Protocol with a memory and a SQL implementation (table ``event_outbox``, :mod:`.outbox_tables`); both pass
tests/unit/test_outbox_store_contract.py.

Invariants of every implementation:

* :meth:`OutboxStore.append` writes its events in one transaction, all or none, and is idempotent per
  ``event_id`` (an event already stored is left as it is): a writer that retries a batch whose commit it could not
  confirm never stores an event twice. ``seq`` grows in append order.
* Metering: a row is counted once. Its ``metered_at`` goes from NULL to a time only in the transaction that adds
  it to the usage counters (:meth:`lwm2m_server.metering.store.UsageStore.count_outbox`; here, for the memory
  store, :meth:`MemoryOutboxStore.consume_unmetered`), under the rows' lock (PostgreSQL ``FOR UPDATE SKIP
  LOCKED``, SQLite's write lock ``BEGIN IMMEDIATE``, the memory store's lock): two meters never count one row.
* Webhooks: a row not notified is *leased* by one notifier at a time (:meth:`OutboxStore.lease_for_webhooks`,
  same locking): free (never leased) or expired leases only, in ``seq`` order; the holder renews its lease while
  it delivers and marks the row :meth:`~OutboxStore.notified` when every delivery of it has ended. Only the holder
  renews, releases or marks a row. A lease that expires (its node died or stalled) is taken by another notifier,
  which delivers the event again under the same delivery ids (so receivers can deduplicate).
* The outbox is infrastructure shared by every tenant (like the node table): each event carries its tenant, no
  method takes one; consumers scope what they do by the event's tenant.
* :meth:`OutboxStore.prune` removes only rows that are both metered and notified. A database failure raises
  :class:`~lwm2m_server.core.errors.StorageError`.
"""

from __future__ import annotations

import builtins
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar, runtime_checkable

from sqlalchemy import Connection, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from lwm2m_server.core.errors import StorageError
from lwm2m_server.events import Event
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.outbox_tables import OutboxRow
from lwm2m_server.storage.sql import chunks

__all__ = ["MemoryOutboxStore", "OutboxEvent", "OutboxStore", "SqlOutboxStore", "decode_data", "encode_data",
           "lock_for_update", "row_event"]

_OUT = OutboxRow.__table__  # type: ignore[attr-defined]
_R = TypeVar("_R")


def encode_data(data: Mapping[str, object]) -> str:
    """An event's data as stored: compact JSON (values JSON cannot hold become their ``str``, as webhooks send)."""
    return json.dumps(dict(data), default=str, separators=(",", ":"), ensure_ascii=False)


def decode_data(text: str) -> Mapping[str, object]:
    """Stored data read back (an object that does not decode reads as empty: never an error for a consumer)."""
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One stored event (``seq`` 0 until stored). ``metered_at``/``notified_at`` set at append mean "nothing to
    do" for that consumer; ``notify_owner``/``notify_until`` are the webhook lease."""

    event_id: str
    kind: str
    at: float
    tenant_id: str
    endpoint: str | None
    data: Mapping[str, object] = field(hash=False)
    node_id: str
    seq: int = 0
    metered_at: float | None = None
    notify_owner: str | None = None
    notify_until: float | None = None
    notified_at: float | None = None

    @classmethod
    def of(cls, event: Event, *, event_id: str, node_id: str, metered_at: float | None = None,
           notified_at: float | None = None) -> OutboxEvent:
        """A bus event to append (its data as the store will give it back: through JSON)."""
        return cls(event_id, event.kind, event.at, event.tenant_id, event.endpoint,
                   decode_data(encode_data(event.data)), node_id, metered_at=metered_at, notified_at=notified_at)

    @property
    def event(self) -> Event:
        return Event(self.kind, self.at, self.tenant_id, self.endpoint, self.data)


@runtime_checkable
class OutboxStore(Protocol):
    """The event outbox; see the module docstring."""

    def append(self, events: Sequence[OutboxEvent]) -> None:
        """Store the events (their ``seq`` and lease are ignored) in one transaction; ids already stored are
        skipped."""
        ...

    def lease_for_webhooks(self, *, owner: str, now: float, lease: float, limit: int) -> builtins.list[OutboxEvent]:
        """Lease to ``owner`` until ``now + lease`` at most ``limit`` rows not notified whose lease is free or
        expired at ``now``, in ``seq`` order; the rows as leased."""
        ...

    def renew(self, event_ids: Iterable[str], *, owner: str, until: float) -> builtins.list[str]:
        """Extend ``owner``'s leases of these rows (not notified) to ``until``; the ids it still held."""
        ...

    def release(self, *, owner: str) -> int:
        """Free every lease ``owner`` holds on rows not notified (a notifier that stops); how many."""
        ...

    def notified(self, event_ids: Iterable[str], *, owner: str, now: float) -> int:
        """Mark notified at ``now`` the rows among ``event_ids`` that ``owner`` leases and that are not notified
        yet; how many were marked."""
        ...

    def unmetered(self, *, limit: int) -> builtins.list[OutboxEvent]:
        """At most ``limit`` rows not metered yet, in ``seq`` order (a read: counting them is the metering
        store's transaction)."""
        ...

    def prune(self, *, before: float) -> int:
        """Delete the rows metered and notified whose event happened before ``before``; how many."""
        ...


# ------------------------------------------------------------------------------------------------ memory


class MemoryOutboxStore:
    """The rows in a dict by ``seq``; one lock makes every call atomic (the memory metering store counts under it:
    :meth:`consume_unmetered`)."""

    def __init__(self) -> None:
        self._rows: dict[int, OutboxEvent] = {}
        self._ids: dict[str, int] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def append(self, events: Sequence[OutboxEvent]) -> None:
        with self._lock:
            for e in events:
                if e.event_id in self._ids:
                    continue
                self._seq += 1
                self._rows[self._seq] = replace(e, seq=self._seq, data=decode_data(encode_data(e.data)),
                                                notify_owner=None, notify_until=None)
                self._ids[e.event_id] = self._seq

    def lease_for_webhooks(self, *, owner: str, now: float, lease: float, limit: int) -> builtins.list[OutboxEvent]:
        with self._lock:
            out: builtins.list[OutboxEvent] = []
            for seq, row in self._rows.items():  # insertion order is seq order
                if len(out) >= limit:
                    break
                if row.notified_at is None and (row.notify_until is None or row.notify_until <= now):
                    self._rows[seq] = row = replace(row, notify_owner=owner, notify_until=now + lease)
                    out.append(row)
            return out

    def _held(self, event_ids: Iterable[str], owner: str) -> builtins.list[int]:
        seqs = (self._ids.get(i) for i in dict.fromkeys(event_ids))
        return [s for s in seqs if s is not None and s in self._rows and self._rows[s].notify_owner == owner
                and self._rows[s].notified_at is None]

    def renew(self, event_ids: Iterable[str], *, owner: str, until: float) -> builtins.list[str]:
        with self._lock:
            held = self._held(event_ids, owner)
            for s in held:
                self._rows[s] = replace(self._rows[s], notify_until=until)
            return [self._rows[s].event_id for s in held]

    def release(self, *, owner: str) -> int:
        with self._lock:
            mine = [s for s, r in self._rows.items() if r.notify_owner == owner and r.notified_at is None]
            for s in mine:
                self._rows[s] = replace(self._rows[s], notify_owner=None, notify_until=None)
            return len(mine)

    def notified(self, event_ids: Iterable[str], *, owner: str, now: float) -> int:
        with self._lock:
            held = self._held(event_ids, owner)
            for s in held:
                self._rows[s] = replace(self._rows[s], notified_at=now)
            return len(held)

    def unmetered(self, *, limit: int) -> builtins.list[OutboxEvent]:
        with self._lock:
            return [r for r in self._rows.values() if r.metered_at is None][:limit]

    def consume_unmetered(self, *, limit: int, now: float,
                          count: Callable[[builtins.list[OutboxEvent]], _R]) -> tuple[builtins.list[OutboxEvent], _R]:
        """Under the store's lock: ``count`` the first ``limit`` rows not metered, then mark them metered at
        ``now`` (if ``count`` raises, nothing is marked); the rows and what ``count`` returned."""
        with self._lock:
            rows = [r for r in self._rows.values() if r.metered_at is None][:limit]
            result = count(rows)
            for r in rows:
                self._rows[r.seq] = replace(r, metered_at=now)
            return rows, result

    def prune(self, *, before: float) -> int:
        with self._lock:
            done = [s for s, r in self._rows.items()
                    if r.metered_at is not None and r.notified_at is not None and r.at < before]
            for s in done:
                del self._ids[self._rows.pop(s).event_id]
            return len(done)


# ------------------------------------------------------------------------------------------------ SQL


def lock_for_update(conn: Connection) -> None:
    """Begin ``conn``'s transaction holding SQLite's write lock at once (pysqlite begins lazily, at the first write:
    two transactions that both read first could then both act on the same rows); PostgreSQL locks the rows
    instead (``FOR UPDATE SKIP LOCKED``, which SQLAlchemy leaves out on SQLite)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def row_event(row: Any) -> OutboxEvent:
    m = row._mapping
    return OutboxEvent(m["event_id"], m["kind"], m["at"], m["tenant_id"], m["endpoint"], decode_data(m["data"]),
                       m["node_id"], m["seq"], m["metered_at"], m["notify_owner"], m["notify_until"],
                       m["notified_at"])


class SqlOutboxStore:
    """The outbox in the ``event_outbox`` table (made by the migrations with the database)."""

    def __init__(self, database: Database) -> None:
        self._engine = database.engine

    def __repr__(self) -> str:
        return "SqlOutboxStore()"

    def append(self, events: Sequence[OutboxEvent]) -> None:
        if not events:
            return
        rows = [{"event_id": e.event_id, "kind": e.kind, "at": e.at, "tenant_id": e.tenant_id,
                 "endpoint": e.endpoint, "data": encode_data(e.data), "node_id": e.node_id,
                 "metered_at": e.metered_at, "notified_at": e.notified_at} for e in events]
        try:
            with self._engine.begin() as c:
                dialect = c.dialect.name
                if dialect == "postgresql":
                    statement: Any = postgresql.insert(_OUT).on_conflict_do_nothing(index_elements=["event_id"])
                elif dialect == "sqlite":
                    statement = sqlite.insert(_OUT).on_conflict_do_nothing(index_elements=["event_id"])
                else:  # pragma: no cover - the two backends supported
                    statement = insert(_OUT)
                c.execute(statement, rows)
        except SQLAlchemyError as e:
            raise StorageError(f"cannot write {len(events)} event(s) to the outbox: {e}") from e

    def lease_for_webhooks(self, *, owner: str, now: float, lease: float, limit: int) -> builtins.list[OutboxEvent]:
        o = _OUT.c
        free = (o.notified_at.is_(None), or_(o.notify_until.is_(None), o.notify_until <= now))
        try:
            with self._engine.begin() as c:
                lock_for_update(c)
                found = c.execute(select(_OUT).where(*free).order_by(o.seq).limit(limit)
                                  .with_for_update(skip_locked=True)).all()
                seqs = [r.seq for r in found]
                for chunk in chunks(seqs):
                    c.execute(update(_OUT).where(o.seq.in_(chunk))
                              .values(notify_owner=owner, notify_until=now + lease))
        except SQLAlchemyError as e:
            raise StorageError(f"cannot lease outbox events for webhooks: {e}") from e
        return [replace(row_event(r), notify_owner=owner, notify_until=now + lease) for r in found]

    def renew(self, event_ids: Iterable[str], *, owner: str, until: float) -> builtins.list[str]:
        o = _OUT.c
        ids = builtins.list(dict.fromkeys(event_ids))
        held: builtins.list[str] = []
        try:
            with self._engine.begin() as c:
                lock_for_update(c)
                for chunk in chunks(ids):
                    mine = (o.event_id.in_(chunk), o.notify_owner == owner, o.notified_at.is_(None))
                    held += c.execute(select(o.event_id).where(*mine).with_for_update()).scalars()
                    c.execute(update(_OUT).where(*mine).values(notify_until=until))
        except SQLAlchemyError as e:
            raise StorageError(f"cannot renew outbox leases: {e}") from e
        return held

    def release(self, *, owner: str) -> int:
        o = _OUT.c
        try:
            with self._engine.begin() as c:
                return int(c.execute(update(_OUT).where(o.notify_owner == owner, o.notified_at.is_(None))
                                     .values(notify_owner=None, notify_until=None)).rowcount)
        except SQLAlchemyError as e:
            raise StorageError(f"cannot release outbox leases: {e}") from e

    def notified(self, event_ids: Iterable[str], *, owner: str, now: float) -> int:
        o = _OUT.c
        ids = builtins.list(dict.fromkeys(event_ids))
        marked = 0
        try:
            with self._engine.begin() as c:
                for chunk in chunks(ids):
                    marked += c.execute(update(_OUT).where(o.event_id.in_(chunk), o.notify_owner == owner,
                                                           o.notified_at.is_(None))
                                        .values(notified_at=now)).rowcount
        except SQLAlchemyError as e:
            raise StorageError(f"cannot mark outbox events notified: {e}") from e
        return marked

    def unmetered(self, *, limit: int) -> builtins.list[OutboxEvent]:
        o = _OUT.c
        try:
            with self._engine.connect() as c:
                return [row_event(r) for r in c.execute(select(_OUT).where(o.metered_at.is_(None))
                                                        .order_by(o.seq).limit(limit))]
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read the outbox: {e}") from e

    def prune(self, *, before: float) -> int:
        o = _OUT.c
        try:
            with self._engine.begin() as c:
                return int(c.execute(delete(_OUT).where(o.metered_at.is_not(None), o.notified_at.is_not(None),
                                                        o.at < before)).rowcount)
        except SQLAlchemyError as e:
            raise StorageError(f"cannot prune the outbox: {e}") from e

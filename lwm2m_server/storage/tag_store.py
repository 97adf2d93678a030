"""The device tag store: the interface (:class:`TagStore`), its record, and two implementations passing one contract
suite (tests/unit/test_tag_store_contract.py): :class:`MemoryTagStore` and :class:`SqlTagStore` (table
``device_tag``, :mod:`.tag_tables`).

Invariants of every implementation: a tag is on an endpoint of a tenant at most once; every read and write is
scoped by ``tenant_id`` (a tenant never sees another's tags); :meth:`TagStore.change` is atomic (applied entirely
or not at all) and idempotent (adding a tag already there or removing one that is not changes nothing); failures
raise :class:`~lwm2m_server.core.errors.StorageError`. The store does not validate tags or endpoints: the service
(:class:`lwm2m_server.registry.tags.DeviceTags`) does, before calling it. Safe to call from worker threads.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from lwm2m_server.core.errors import StorageError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.tag_tables import DeviceTagRow

__all__ = ["DeviceTag", "MemoryTagStore", "SqlTagStore", "TagStore"]


@dataclass(frozen=True, slots=True, order=True)
class DeviceTag:
    """One tag on one endpoint of one tenant (ordered by tenant, endpoint, tag)."""

    tenant_id: str
    endpoint: str
    tag: str


@runtime_checkable
class TagStore(Protocol):
    """The tags of the devices, per tenant."""

    def change(self, endpoint: str, *, add: Collection[str], remove: Collection[str], tenant_id: str) -> list[str]:
        """In one transaction: put ``add`` on ``endpoint`` and take ``remove`` off (the caller keeps the two
        disjoint); the endpoint's tags afterwards, sorted."""
        ...

    def of(self, endpoint: str, *, tenant_id: str) -> list[str]:
        """The tags of ``endpoint``, sorted (empty for an endpoint never tagged)."""
        ...

    def endpoints_with(self, tag: str, *, tenant_id: str) -> set[str]:
        """The endpoints of the tenant that carry ``tag``."""
        ...

    def all(self, *, tenant_id: str) -> list[DeviceTag]:
        """Every tag of the tenant, sorted by endpoint then tag."""
        ...


class MemoryTagStore:
    """Tags in a dict ``(tenant, endpoint) -> set of tags``; a lock makes each call atomic."""

    def __init__(self) -> None:
        self._tags: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "MemoryTagStore()"

    def change(self, endpoint: str, *, add: Collection[str], remove: Collection[str], tenant_id: str) -> list[str]:
        with self._lock:
            key = (tenant_id, endpoint)
            tags = (self._tags.get(key, set()) | set(add)) - set(remove)
            if tags:
                self._tags[key] = tags
            else:
                self._tags.pop(key, None)
            return sorted(tags)

    def of(self, endpoint: str, *, tenant_id: str) -> list[str]:
        with self._lock:
            return sorted(self._tags.get((tenant_id, endpoint), ()))

    def endpoints_with(self, tag: str, *, tenant_id: str) -> set[str]:
        with self._lock:
            return {ep for (tenant, ep), tags in self._tags.items() if tenant == tenant_id and tag in tags}

    def all(self, *, tenant_id: str) -> list[DeviceTag]:
        with self._lock:
            return sorted(DeviceTag(tenant, ep, tag) for (tenant, ep), tags in self._tags.items()
                          if tenant == tenant_id for tag in tags)


_TAG = DeviceTagRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS = 3  # concurrent adds of the same tag may collide on the primary key: try again


class SqlTagStore:
    """Tags in the ``device_tag`` table (one row per tag; the three columns are the primary key)."""

    def __init__(self, database: Database) -> None:
        self._engine = database.engine

    def __repr__(self) -> str:
        return f"SqlTagStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def change(self, endpoint: str, *, add: Collection[str], remove: Collection[str], tenant_id: str) -> list[str]:
        adding, removing = set(add), set(remove)
        mine = (_TAG.c.tenant_id == tenant_id, _TAG.c.endpoint == endpoint)
        for attempt in range(_ATTEMPTS):
            try:
                with self._engine.begin() as conn:
                    present = set(conn.execute(select(_TAG.c.tag).where(*mine)).scalars())
                    new = sorted(adding - present)
                    if new:
                        conn.execute(insert(_TAG), [{"tenant_id": tenant_id, "endpoint": endpoint, "tag": t}
                                                    for t in new])
                    if removing & present:
                        conn.execute(delete(_TAG).where(*mine, _TAG.c.tag.in_(sorted(removing & present))))
                return sorted((present | adding) - removing)
            except IntegrityError:
                if attempt == _ATTEMPTS - 1:
                    raise StorageError("cannot store the tags: concurrent changes kept colliding") from None
            except SQLAlchemyError as e:
                raise StorageError(f"cannot store the tags: {type(e).__name__}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def of(self, endpoint: str, *, tenant_id: str) -> list[str]:
        rows = self._read(select(_TAG.c.tag).where(_TAG.c.tenant_id == tenant_id, _TAG.c.endpoint == endpoint))
        return sorted(r.tag for r in rows)

    def endpoints_with(self, tag: str, *, tenant_id: str) -> set[str]:
        rows = self._read(select(_TAG.c.endpoint).where(_TAG.c.tenant_id == tenant_id, _TAG.c.tag == tag))
        return {r.endpoint for r in rows}

    def all(self, *, tenant_id: str) -> list[DeviceTag]:
        rows = self._read(select(_TAG).where(_TAG.c.tenant_id == tenant_id))
        return sorted(DeviceTag(r.tenant_id, r.endpoint, r.tag) for r in rows)

    def _read(self, query: Any) -> list[Any]:
        try:
            with self._engine.connect() as conn:
                return list(conn.execute(query).all())
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read the tags: {type(e).__name__}") from None

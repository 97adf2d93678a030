"""SQL stores (SQLAlchemy Core over the sqlmodel tables): SQLite by default, PostgreSQL by URL.

Portable SQL only (no ``INSERT OR REPLACE``, ``ON CONFLICT`` or ``LEAST``): a registration upsert is a delete
then an insert inside one transaction, a device upsert a relative ``UPDATE ... SET n = n + :k`` (so that several
server nodes never lose a count) plus an insert for new devices. Every database failure raises
:class:`~lwm2m_server.core.errors.StorageError`; a uniqueness violation raises its subclass
:class:`~lwm2m_server.storage.stores.StorageConflictError`.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import case, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.sql.expression import bindparam

from lwm2m_server.core.codec.link import format_links, parse_links
from lwm2m_server.core.errors import CodecError, StorageError
from lwm2m_server.core.registration import Registration
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.stores import (
    DeviceRecord,
    DeviceSighting,
    StorageConflictError,
    merge_sighting,
)
from lwm2m_server.storage.tables import DeviceRow, RegistrationRow

__all__ = ["CHUNK", "SqlDeviceStore", "SqlRegistrationStore", "chunks", "registration_from_row", "registration_to_row"]

_REG = RegistrationRow.__table__  # type: ignore[attr-defined]
_DEV = DeviceRow.__table__  # type: ignore[attr-defined]
CHUNK = 500  # bound parameters per IN (...) list: far below every backend's limit
_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int = CHUNK) -> Iterator[Sequence[_T]]:
    """``items`` in slices of at most ``size``: the IN (...) lists of one statement each."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def registration_to_row(reg: Registration) -> dict[str, Any]:
    """The column values of a registration (everything but ``remote`` and the cached summary)."""
    return {
        "id": reg.id,
        "tenant_id": reg.tenant_id,
        "endpoint": reg.endpoint,
        "lifetime": reg.lifetime,
        "lwm2m_version": reg.lwm2m_version,
        "binding": reg.binding,
        "queue_mode": reg.queue_mode,
        "links": format_links(reg.links),
        "address": reg.address,
        "registered_at": reg.registered_at,
        "updated_at": reg.updated_at,
        "sms": reg.sms,
        "extra": json.dumps(reg.extra, ensure_ascii=False, separators=(",", ":")),
        "node_id": reg.node_id,
        "parent_id": reg.parent_id,
        "path_prefix": reg.path_prefix,
        "secure": reg.secure,
        "identity": reg.identity,
    }


def registration_from_row(row: Mapping[Any, Any]) -> Registration:
    """The registration a row holds, ``remote`` None. Raises :class:`StorageError` on a corrupt row."""
    try:
        links = parse_links(row["links"] or "")
        extra = tuple((str(k), None if v is None else str(v)) for k, v in json.loads(row["extra"] or "[]"))
    except (CodecError, ValueError, TypeError) as e:
        raise StorageError(f"registration {row['id']!r}: corrupt stored value: {e}") from e
    return Registration(
        id=row["id"],
        endpoint=row["endpoint"],
        lifetime=int(row["lifetime"]),
        lwm2m_version=row["lwm2m_version"],
        binding=row["binding"],
        queue_mode=bool(row["queue_mode"]),
        links=links,
        address=row["address"],
        registered_at=float(row["registered_at"]),
        updated_at=float(row["updated_at"]),
        sms=row["sms"],
        extra=extra,
        tenant_id=row["tenant_id"],
        node_id=row["node_id"],
        parent_id=row["parent_id"],
        path_prefix=row["path_prefix"],
        secure=bool(row["secure"]),
        identity=row["identity"],
    )


class SqlRegistrationStore:
    """Registrations in the ``registration`` table."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def _select(self, *where: Any) -> builtins.list[Registration]:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(select(_REG).where(*where)).mappings().all()
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read registrations: {e}") from e
        return [registration_from_row(r) for r in rows]

    def load_all(self, tenant_id: str | None = None) -> builtins.list[Registration]:
        return self._select() if tenant_id is None else self._select(_REG.c.tenant_id == tenant_id)

    def get(self, reg_id: str) -> Registration | None:
        found = self._select(_REG.c.id == reg_id)
        return found[0] if found else None

    def by_endpoint(self, endpoint: str, *, tenant_id: str) -> Registration | None:
        found = self._select(_REG.c.tenant_id == tenant_id, _REG.c.endpoint == endpoint)
        return found[0] if found else None

    def holders(self, endpoints: Sequence[str], *, tenant_id: str) -> dict[str, str]:
        c = _REG.c
        found: dict[str, str] = {}
        try:
            with self._engine.connect() as conn:
                for chunk in chunks(builtins.list(dict.fromkeys(endpoints))):
                    rows = conn.execute(select(c.endpoint, c.node_id).where(c.tenant_id == tenant_id,
                                                                            c.endpoint.in_(chunk)))
                    found.update({ep: node for ep, node in rows})
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read registrations: {e}") from e
        return found

    def apply(self, upserts: Sequence[Registration], deletes: Sequence[str]) -> None:
        final = {reg.id: reg for reg in upserts}  # the last upsert of an id wins
        rows = [registration_to_row(reg) for reg in final.values()]  # converted before the transaction opens
        ids = builtins.list(dict.fromkeys((*deletes, *final)))
        if not ids:
            return
        try:
            with self._engine.begin() as conn:
                for chunk in chunks(ids):
                    conn.execute(delete(_REG).where(_REG.c.id.in_(chunk)))
                if rows:
                    conn.execute(insert(_REG), rows)
        except IntegrityError as e:
            raise StorageConflictError(f"registration batch violates a uniqueness rule: {e.orig}") from e
        except SQLAlchemyError as e:
            raise StorageError(f"cannot write registrations: {e}") from e


def _device_from_row(row: Mapping[Any, Any]) -> DeviceRecord:
    return DeviceRecord(row["endpoint"], row["tenant_id"], float(row["first_seen"]), float(row["last_seen"]),
                        row["last_address"], row["lwm2m_version"], int(row["registration_count"]))


class SqlDeviceStore:
    """Devices in the ``device`` table."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def upsert_seen(self, batch: Sequence[DeviceSighting]) -> None:
        # Coalesce per device first: one record per key standing for all of its sightings in the batch.
        deltas: dict[tuple[str, str], DeviceRecord] = {}
        for s in batch:
            key = (s.tenant_id, s.endpoint)
            deltas[key] = merge_sighting(deltas.get(key), s)
        if not deltas:
            return
        by_tenant: dict[str, builtins.list[str]] = {}
        for tenant, endpoint in deltas:
            by_tenant.setdefault(tenant, []).append(endpoint)
        c = _DEV.c
        newer = c.last_seen <= bindparam("b_last")
        relative_update = (
            update(_DEV)
            .where(c.tenant_id == bindparam("b_tenant"), c.endpoint == bindparam("b_endpoint"))
            .values(
                first_seen=case((c.first_seen <= bindparam("b_first"), c.first_seen), else_=bindparam("b_first")),
                last_seen=case((newer, bindparam("b_last")), else_=c.last_seen),
                last_address=case((newer, bindparam("b_address")), else_=c.last_address),
                lwm2m_version=case((newer, bindparam("b_version")), else_=c.lwm2m_version),
                registration_count=c.registration_count + bindparam("b_count"),
            )
        )
        try:
            with self._engine.begin() as conn:
                existing: set[tuple[str, str]] = set()
                for tenant, endpoints in by_tenant.items():
                    for chunk in chunks(endpoints):
                        found = conn.execute(select(c.endpoint).where(c.tenant_id == tenant, c.endpoint.in_(chunk)))
                        existing.update((tenant, ep) for (ep,) in found)
                updates = [
                    {"b_tenant": d.tenant_id, "b_endpoint": d.endpoint, "b_first": d.first_seen,
                     "b_last": d.last_seen, "b_address": d.last_address, "b_version": d.lwm2m_version,
                     "b_count": d.registration_count}
                    for key, d in deltas.items() if key in existing
                ]
                inserts = [
                    {"tenant_id": d.tenant_id, "endpoint": d.endpoint, "first_seen": d.first_seen,
                     "last_seen": d.last_seen, "last_address": d.last_address, "lwm2m_version": d.lwm2m_version,
                     "registration_count": d.registration_count}
                    for key, d in deltas.items() if key not in existing
                ]
                if updates:
                    conn.execute(relative_update, updates)
                if inserts:
                    conn.execute(insert(_DEV), inserts)
        except IntegrityError as e:  # another node inserted the same new device meanwhile: retrying succeeds
            raise StorageConflictError(f"device batch conflicts with a concurrent write: {e.orig}") from e
        except SQLAlchemyError as e:
            raise StorageError(f"cannot write devices: {e}") from e

    def get(self, endpoint: str, *, tenant_id: str) -> DeviceRecord | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(
                    select(_DEV).where(_DEV.c.tenant_id == tenant_id, _DEV.c.endpoint == endpoint)
                ).mappings().first()
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read devices: {e}") from e
        return None if row is None else _device_from_row(row)

    def list(self, *, tenant_id: str | None) -> builtins.list[DeviceRecord]:
        query = select(_DEV).order_by(_DEV.c.tenant_id, _DEV.c.endpoint)
        if tenant_id is not None:
            query = query.where(_DEV.c.tenant_id == tenant_id)
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read devices: {e}") from e
        return [_device_from_row(r) for r in rows]

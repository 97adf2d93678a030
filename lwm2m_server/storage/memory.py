"""In-memory stores: the reference implementations of :mod:`.stores` (tests, ``--no-db`` runs).

They keep what a database would keep and nothing more: ``remote`` (and the cached link summary) are dropped on
the way in. A lock makes each call atomic with respect to other threads.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Sequence
from dataclasses import replace

from lwm2m_server.core.registration import Registration
from lwm2m_server.storage.stores import (
    DeviceRecord,
    DeviceSighting,
    StorageConflictError,
    merge_sighting,
)

__all__ = ["MemoryDeviceStore", "MemoryRegistrationStore"]


def _stored(reg: Registration) -> Registration:
    """The registration as a store keeps it: no live transport handle, no cache."""
    if reg.remote is None and reg._summary is None:
        return reg
    return replace(reg, remote=None, _summary=None)


class MemoryRegistrationStore:
    """Registrations in two dicts: id -> registration and (tenant, endpoint) -> id."""

    def __init__(self) -> None:
        self._rows: dict[str, Registration] = {}
        self._index: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def load_all(self, tenant_id: str | None = None) -> list[Registration]:
        with self._lock:
            if tenant_id is None:
                return list(self._rows.values())
            return [r for r in self._rows.values() if r.tenant_id == tenant_id]

    def get(self, reg_id: str) -> Registration | None:
        with self._lock:
            return self._rows.get(reg_id)

    def by_endpoint(self, endpoint: str, *, tenant_id: str) -> Registration | None:
        with self._lock:
            reg_id = self._index.get((tenant_id, endpoint))
            return None if reg_id is None else self._rows[reg_id]

    def holders(self, endpoints: Sequence[str], *, tenant_id: str) -> dict[str, str]:
        with self._lock:
            found = ((ep, self._index.get((tenant_id, ep))) for ep in endpoints)
            return {ep: self._rows[reg_id].node_id for ep, reg_id in found if reg_id is not None}

    def apply(self, upserts: Sequence[Registration], deletes: Sequence[str]) -> None:
        with self._lock:
            rows, index = self._rows, self._index
            final = {reg.id: reg for reg in upserts}  # the last upsert of an id wins
            # Check the final state first, so that a conflict leaves nothing applied.
            replaced = [reg_id for reg_id in (*deletes, *final) if reg_id in rows]
            claims: dict[tuple[str, str], str | None] = {}
            for reg_id in replaced:
                old = rows[reg_id]
                claims[(old.tenant_id, old.endpoint)] = None
            for reg_id, reg in final.items():
                key = (reg.tenant_id, reg.endpoint)
                owner = claims[key] if key in claims else index.get(key)
                if owner is not None and owner != reg_id:
                    raise StorageConflictError(
                        f"endpoint {reg.endpoint!r} of tenant {reg.tenant_id!r} is already registered as {owner!r}")
                claims[key] = reg_id
            for reg_id in replaced:
                rows.pop(reg_id, None)
            for key, owner in claims.items():
                if owner is None:
                    index.pop(key, None)
                else:
                    index[key] = owner
            for reg_id, reg in final.items():
                rows[reg_id] = _stored(reg)


class MemoryDeviceStore:
    """Devices in a dict keyed by (tenant, endpoint)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], DeviceRecord] = {}
        self._lock = threading.Lock()

    def upsert_seen(self, batch: Sequence[DeviceSighting]) -> None:
        with self._lock:
            rows = self._rows
            for s in batch:
                key = (s.tenant_id, s.endpoint)
                rows[key] = merge_sighting(rows.get(key), s)

    def get(self, endpoint: str, *, tenant_id: str) -> DeviceRecord | None:
        with self._lock:
            return self._rows.get((tenant_id, endpoint))

    def list(self, *, tenant_id: str | None) -> builtins.list[DeviceRecord]:
        with self._lock:
            keys = sorted(k for k in self._rows if tenant_id is None or k[0] == tenant_id)
            return [self._rows[k] for k in keys]

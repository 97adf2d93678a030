"""The store interfaces (one Protocol per aggregate, named by role) and the records they hold.

Every implementation (``Memory*`` in :mod:`.memory`, ``Sql*`` in :mod:`.sql`) passes the same contract suite
(tests/unit/test_storage_contract.py). Invariants shared by all of them:

* every record is scoped by a tenant id; the same endpoint in two tenants is two records. Every lookup takes
  ``tenant_id`` as a required keyword (the caller's tenant, never a default); ``tenant_id=None`` (every tenant)
  is for the server's own housekeeping, where a method says so;
* a stored :class:`~lwm2m_server.core.registration.Registration` comes back equal to what was stored, with
  ``remote`` set to ``None`` (the live transport handle is never persisted);
* a write is atomic: it is applied entirely or not at all, and a failure raises
  :class:`~lwm2m_server.core.errors.StorageError`;
* stores are safe to call from a worker thread (``asyncio.to_thread``) while other threads read.

This module is light (no database driver), so the registry can depend on the interfaces alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lwm2m_server.core.errors import StorageError
from lwm2m_server.core.registration import Registration

__all__ = [
    "DEFAULT_TENANT",
    "DeviceRecord",
    "DeviceSighting",
    "DeviceStore",
    "RegistrationStore",
    "StorageConflictError",
    "merge_sighting",
]

DEFAULT_TENANT = "default"


class StorageConflictError(StorageError):
    """A write that breaks a uniqueness rule (e.g. two registrations for one endpoint in one tenant)."""


@runtime_checkable
class RegistrationStore(Protocol):
    """Live registrations, keyed by registration id; ``(tenant_id, endpoint)`` is unique."""

    def load_all(self, tenant_id: str | None = None) -> list[Registration]:
        """Every stored registration (of one tenant, or of all when ``None``), in no particular order."""
        ...

    def get(self, reg_id: str) -> Registration | None: ...

    def by_endpoint(self, endpoint: str, *, tenant_id: str) -> Registration | None: ...

    def holders(self, endpoints: Sequence[str], *, tenant_id: str) -> dict[str, str]:
        """The node (``node_id``) whose registration of each endpoint is stored, for those of ``endpoints`` that
        have one: with several nodes on one database, the one holding the device's session (the newest Register
        wins the row)."""
        ...

    def apply(self, upserts: Sequence[Registration], deletes: Sequence[str]) -> None:
        """In one transaction: delete the ids in ``deletes`` (unknown ids are ignored), then insert or replace
        each of ``upserts`` by id (when an id is given twice, the last one wins). Uniqueness is checked on the
        resulting state: when it would give an endpoint two registrations in one tenant this raises
        :class:`StorageConflictError` and leaves nothing applied; any other failure raises :class:`StorageError`
        (and leaves nothing applied either)."""
        ...


@dataclass(frozen=True, slots=True)
class DeviceSighting:
    """One report that a device was heard from: what :meth:`DeviceStore.upsert_seen` takes.

    ``registrations`` is how many new registrations this sighting stands for (0 for an Update)."""

    endpoint: str
    tenant_id: str
    seen_at: float
    address: str
    lwm2m_version: str
    registrations: int = 0


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device, known once it has registered: when it was first and last heard from, and from where."""

    endpoint: str
    tenant_id: str
    first_seen: float
    last_seen: float
    last_address: str
    lwm2m_version: str
    registration_count: int


@runtime_checkable
class DeviceStore(Protocol):
    """Devices keyed by ``(tenant_id, endpoint)``."""

    def upsert_seen(self, batch: Sequence[DeviceSighting]) -> None:
        """Record a batch of sightings in one transaction. A new device starts at ``first_seen = seen_at``;
        for a known one ``registration_count`` grows by ``registrations``, ``first_seen`` keeps the earliest time
        and ``last_seen``/``last_address``/``lwm2m_version`` follow the latest sighting (an older one never
        overwrites a newer one)."""
        ...

    def get(self, endpoint: str, *, tenant_id: str) -> DeviceRecord | None: ...

    def list(self, *, tenant_id: str | None) -> list[DeviceRecord]:
        """The devices of one tenant (of all tenants when ``None``), ordered by tenant then endpoint."""
        ...


def merge_sighting(record: DeviceRecord | None, s: DeviceSighting) -> DeviceRecord:
    """The device record after one sighting (the rule :meth:`DeviceStore.upsert_seen` documents)."""
    if record is None:
        return DeviceRecord(s.endpoint, s.tenant_id, s.seen_at, s.seen_at, s.address, s.lwm2m_version,
                            s.registrations)
    newer = s.seen_at >= record.last_seen
    return DeviceRecord(
        record.endpoint,
        record.tenant_id,
        min(record.first_seen, s.seen_at),
        s.seen_at if newer else record.last_seen,
        s.address if newer else record.last_address,
        s.lwm2m_version if newer else record.lwm2m_version,
        record.registration_count + s.registrations,
    )

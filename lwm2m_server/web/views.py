"""What the pages show, computed from the services (no HTML here): the fleet's counts and versions, recent events
per tenant, device rows, usage days. Pure functions of what they are given, plus one small event ring buffer."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lwm2m_server.events import Event

__all__ = ["DeviceRow", "RecentEvents", "device_rows", "fleet_counts", "known_devices", "version_counts"]

SHOWN_KINDS = ("registration.", "firmware.", "campaign.", "security.", "bootstrap.")


class RecentEvents:
    """The last ``size`` events of each tenant (registrations, updates, campaigns, security), newest first."""

    def __init__(self, size: int = 50) -> None:
        self._size = size
        self._by_tenant: dict[str, deque[Event]] = {}
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if not event.kind.startswith(SHOWN_KINDS) or event.kind.startswith("campaign.device.progress"):
            return
        with self._lock:
            self._by_tenant.setdefault(event.tenant_id, deque(maxlen=self._size)).appendleft(event)

    def of(self, tenant_id: str) -> list[Event]:
        with self._lock:
            return list(self._by_tenant.get(tenant_id, ()))


def known_devices(campaigns: Iterable[tuple[str, str]], jobs_of: Any) -> tuple[dict[str, str], dict[str, str]]:
    """What the campaigns tell of each endpoint they targeted, in one read of their jobs: ``(versions, classes)``.

    ``campaigns`` are ``(campaign id, its release's class)``, newest first; a job record has ``endpoint``,
    ``version_after`` and ``version_before``. The newest campaign that knows a device's version says it; a device is
    of the class of the newest release sent to it (the server does not read /3/0/1 for a listing)."""
    versions: dict[str, str] = {}
    classes: dict[str, str] = {}
    for cid, class_name in campaigns:
        for job in jobs_of(cid):
            classes.setdefault(job.endpoint, class_name)
            version = job.version_after or job.version_before
            if version and job.endpoint not in versions:
                versions[job.endpoint] = version
    return versions, classes


def version_counts(endpoints: Iterable[str], versions: Mapping[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ep in endpoints:
        v = versions.get(ep, "unknown")
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] == "unknown", kv[0])))


def fleet_counts(registrations: Iterable[Any], updating: set[str], failed: set[str]) -> dict[str, int]:
    regs = list(registrations)
    return {"registered": len(regs), "sleeping": sum(1 for r in regs if r.queue_mode and r.remote is None),
            "updating": sum(1 for r in regs if r.endpoint in updating),
            "failed": sum(1 for r in regs if r.endpoint in failed)}


@dataclass(frozen=True, slots=True)
class DeviceRow:
    endpoint: str
    device_class: str
    version: str
    tags: tuple[str, ...]
    last_seen: float
    secure: bool
    lwm2m_version: str
    address: str


def device_rows(registrations: Iterable[Any], versions: Mapping[str, str], tags: Mapping[str, list[str]],
                query: str = "", *, classes: Mapping[str, str] | None = None, security: str = "",
                version: str = "") -> list[DeviceRow]:
    """Rows sorted by endpoint; ``query`` keeps those whose endpoint, class, version or a tag contains it;
    ``security`` (``dtls`` or ``none``) and ``version`` (exact) filter further."""
    q = query.strip().lower()
    rows = []
    for r in registrations:
        row = DeviceRow(r.endpoint, (classes or {}).get(r.endpoint, "-"), versions.get(r.endpoint, "unknown"),
                        tuple(tags.get(r.endpoint, ())), r.updated_at or r.registered_at, r.secure,
                        r.lwm2m_version, r.address)
        if q and not (q in row.endpoint.lower() or q in row.version.lower() or q in row.device_class.lower()
                      or any(q in t.lower() for t in row.tags)):
            continue
        if (security == "dtls" and not row.secure) or (security == "none" and row.secure):
            continue
        if version and row.version != version:
            continue
        rows.append(row)
    return sorted(rows, key=lambda d: d.endpoint)

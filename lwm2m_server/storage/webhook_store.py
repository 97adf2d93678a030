"""The webhook store: the interface (:class:`WebhookStore`), its records, and two implementations passing one contract
suite (tests/unit/test_webhook_store_contract.py): :class:`MemoryWebhookStore` and :class:`SqlWebhookStore` (tables
``webhook`` and ``webhook_delivery``, :mod:`.webhook_tables`).

It keeps the subscriptions with their *sealed* secrets and the delivery log. Invariants of every implementation:

* every read and write is scoped by ``tenant_id``, except :meth:`WebhookStore.active_kinds`, which says only which
  event-kind prefixes some tenant listens to;
* a removed subscription stays listed (inactive) but its sealed secret is erased, and it never becomes active
  again; removing is atomic;
* delivery rows get increasing ids; the log is read newest first (highest id first);
* the store seals and opens nothing, validates nothing and never puts a sealed secret in a message, a ``repr`` or a
  record: the service (:class:`lwm2m_server.fota.webhooks.Webhooks`) does all of that;
* failures raise :class:`~lwm2m_server.core.errors.StorageError`. Safe to call from worker threads.
"""

from __future__ import annotations

import builtins
import dataclasses
import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from lwm2m_server.core.errors import StorageError
from lwm2m_server.events import kind_matches
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.webhook_tables import WebhookDeliveryRow, WebhookRow

__all__ = ["Delivery", "MemoryWebhookStore", "SqlWebhookStore", "Webhook", "WebhookStore"]


@dataclass(frozen=True, slots=True)
class Webhook:
    """A subscription (never with its secret): ``url`` receives the events whose kind passes one of ``kinds``."""

    id: str
    tenant_id: str
    url: str
    kinds: tuple[str, ...]
    created_at: float
    active: bool = True

    def wants(self, kind: str) -> bool:
        return self.active and kind_matches(kind, self.kinds)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One logged delivery attempt (``attempt`` 0: the event was never attempted, see ``error``). ``event_id`` is
    the delivery id the receiver sees; ``id`` is assigned by the store (0 before)."""

    id: int
    webhook_id: str
    tenant_id: str
    event_kind: str
    event_id: str
    attempt: int
    at: float
    status_code: int | None
    error: str | None
    delivered: bool
    duration: float

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "webhook": self.webhook_id, "tenant": self.tenant_id, "event": self.event_kind,
                "delivery": self.event_id, "attempt": self.attempt, "at": self.at, "status": self.status_code,
                "error": self.error, "delivered": self.delivered, "duration": round(self.duration, 6)}


@runtime_checkable
class WebhookStore(Protocol):
    """Webhook subscriptions (with their sealed secrets) and their delivery log."""

    def add(self, webhook: Webhook, *, sealed_secret: bytes) -> None:
        """Store a new subscription (its id not used before) with its sealed secret."""
        ...

    def list(self, *, tenant_id: str, include_removed: bool = False) -> builtins.list[Webhook]:
        """The tenant's subscriptions, oldest first (by ``created_at``, then id); removed ones too with
        ``include_removed``."""
        ...

    def get(self, webhook_id: str, *, tenant_id: str) -> Webhook | None:
        """The subscription with this id in the tenant, active or removed; None when there is none."""
        ...

    def sealed_secret(self, webhook_id: str, *, tenant_id: str) -> bytes | None:
        """The sealed secret of an active subscription; None when there is no active one with this id."""
        ...

    def remove(self, webhook_id: str, *, tenant_id: str) -> Webhook | None:
        """Deactivate an active subscription and erase its sealed secret: the removed subscription, or None when
        there is no active one with this id in the tenant (nothing changes)."""
        ...

    def active_kinds(self) -> tuple[str, ...]:
        """Every prefix some active subscription of any tenant listens to (each once, in no promised order)."""
        ...

    def record(self, delivery: Delivery) -> Delivery:
        """Append ``delivery`` to the log (its ``id`` is ignored): the stored one, with its new id."""
        ...

    def deliveries(self, *, tenant_id: str, webhook_id: str | None = None,
                   limit: int = 100) -> builtins.list[Delivery]:
        """The tenant's logged attempts (of one subscription with ``webhook_id``), newest first, at most
        ``limit``."""
        ...


class MemoryWebhookStore:
    """Subscriptions and sealed secrets in dicts keyed by id, the log in a list; a lock makes each call atomic."""

    def __init__(self) -> None:
        self._hooks: dict[str, Webhook] = {}
        self._sealed: dict[str, bytes] = {}
        self._log: builtins.list[Delivery] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryWebhookStore({len(self._hooks)} webhook(s), {len(self._log)} delivery row(s))"

    def _mine(self, webhook_id: str, tenant_id: str) -> Webhook | None:
        hook = self._hooks.get(webhook_id)
        return hook if hook is not None and hook.tenant_id == tenant_id else None

    def add(self, webhook: Webhook, *, sealed_secret: bytes) -> None:
        with self._lock:
            if webhook.id in self._hooks:
                raise StorageError(f"cannot store webhook {webhook.id}: its id is taken")
            self._hooks[webhook.id] = webhook
            self._sealed[webhook.id] = bytes(sealed_secret)

    def list(self, *, tenant_id: str, include_removed: bool = False) -> builtins.list[Webhook]:
        with self._lock:
            hooks = [h for h in self._hooks.values() if h.tenant_id == tenant_id and (include_removed or h.active)]
        return sorted(hooks, key=lambda h: (h.created_at, h.id))

    def get(self, webhook_id: str, *, tenant_id: str) -> Webhook | None:
        with self._lock:
            return self._mine(webhook_id, tenant_id)

    def sealed_secret(self, webhook_id: str, *, tenant_id: str) -> bytes | None:
        with self._lock:
            hook = self._mine(webhook_id, tenant_id)
            return self._sealed.get(webhook_id) if hook is not None and hook.active else None

    def remove(self, webhook_id: str, *, tenant_id: str) -> Webhook | None:
        with self._lock:
            hook = self._mine(webhook_id, tenant_id)
            if hook is None or not hook.active:
                return None
            removed = self._hooks[webhook_id] = dataclasses.replace(hook, active=False)
            self._sealed.pop(webhook_id, None)
            return removed

    def active_kinds(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(dict.fromkeys(k for h in self._hooks.values() if h.active for k in h.kinds))

    def record(self, delivery: Delivery) -> Delivery:
        with self._lock:
            stored = dataclasses.replace(delivery, id=len(self._log) + 1)
            self._log.append(stored)
            return stored

    def deliveries(self, *, tenant_id: str, webhook_id: str | None = None,
                   limit: int = 100) -> builtins.list[Delivery]:
        with self._lock:
            mine = [d for d in reversed(self._log)
                    if d.tenant_id == tenant_id and (webhook_id is None or d.webhook_id == webhook_id)]
        return mine[:limit]


_HOOK = WebhookRow.__table__  # type: ignore[attr-defined]
_DELIVERY = WebhookDeliveryRow.__table__  # type: ignore[attr-defined]


def _webhook(row: Any) -> Webhook:
    return Webhook(row.id, row.tenant_id, row.url, tuple(k for k in row.kinds.split(",") if k), row.created_at,
                   bool(row.active))


def _delivery(row: Any) -> Delivery:
    return Delivery(row.id, row.webhook_id, row.tenant_id, row.event_kind, row.event_id, row.attempt, row.at,
                    row.status_code, row.error, bool(row.delivered), row.duration)


def _why(e: SQLAlchemyError) -> str:
    """The driver's own words, never the statement or its parameters (a sealed secret could be one)."""
    return str(getattr(e, "orig", None) or type(e).__name__)


class SqlWebhookStore:
    """Subscriptions in the ``webhook`` table (kinds as a comma list), the log in ``webhook_delivery``."""

    def __init__(self, database: Database) -> None:
        self._engine = database.engine

    def __repr__(self) -> str:
        return f"SqlWebhookStore({self._engine.url.render_as_string(hide_password=True)!r})"

    def _read(self, query: Any, what: str) -> builtins.list[Any]:
        try:
            with self._engine.connect() as conn:
                return builtins.list(conn.execute(query).all())
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read {what}: {_why(e)}") from None

    def _select(self, *where: Any) -> builtins.list[Any]:
        query = select(_HOOK).where(*where).order_by(_HOOK.c.created_at, _HOOK.c.id)
        return self._read(query, "webhooks")

    def add(self, webhook: Webhook, *, sealed_secret: bytes) -> None:
        row = {"id": webhook.id, "tenant_id": webhook.tenant_id, "url": webhook.url, "sealed_secret": sealed_secret,
               "kinds": ",".join(webhook.kinds), "created_at": webhook.created_at, "active": webhook.active}
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(_HOOK), row)
        except SQLAlchemyError as e:
            raise StorageError(f"cannot store webhook {webhook.id}: {_why(e)}") from None

    def list(self, *, tenant_id: str, include_removed: bool = False) -> builtins.list[Webhook]:
        where = () if include_removed else (_HOOK.c.active.is_(True),)
        return [_webhook(r) for r in self._select(_HOOK.c.tenant_id == tenant_id, *where)]

    def get(self, webhook_id: str, *, tenant_id: str) -> Webhook | None:
        rows = self._select(_HOOK.c.id == webhook_id, _HOOK.c.tenant_id == tenant_id)
        return _webhook(rows[0]) if rows else None

    def sealed_secret(self, webhook_id: str, *, tenant_id: str) -> bytes | None:
        query = select(_HOOK.c.sealed_secret).where(_HOOK.c.id == webhook_id, _HOOK.c.tenant_id == tenant_id,
                                                    _HOOK.c.active.is_(True))
        rows = self._read(query, "webhooks")
        return None if not rows or rows[0].sealed_secret is None else bytes(rows[0].sealed_secret)

    def remove(self, webhook_id: str, *, tenant_id: str) -> Webhook | None:
        mine = (_HOOK.c.id == webhook_id, _HOOK.c.tenant_id == tenant_id)
        try:
            with self._engine.begin() as conn:
                done = conn.execute(update(_HOOK).where(*mine, _HOOK.c.active.is_(True))
                                    .values(active=False, sealed_secret=None))
                row = conn.execute(select(_HOOK).where(*mine)).first() if done.rowcount else None
        except SQLAlchemyError as e:
            raise StorageError(f"cannot remove webhook {webhook_id!r}: {_why(e)}") from None
        return None if row is None else _webhook(row)

    def active_kinds(self) -> tuple[str, ...]:
        rows = self._read(select(_HOOK.c.kinds).where(_HOOK.c.active.is_(True)), "webhooks")
        return tuple(dict.fromkeys(k for r in rows for k in r.kinds.split(",") if k))

    def record(self, delivery: Delivery) -> Delivery:
        row = {f.name: getattr(delivery, f.name) for f in dataclasses.fields(delivery) if f.name != "id"}
        try:
            with self._engine.begin() as conn:
                new_id = conn.execute(insert(_DELIVERY), row).inserted_primary_key[0]  # type: ignore[index]
        except SQLAlchemyError as e:
            raise StorageError(f"cannot log a delivery of webhook {delivery.webhook_id!r}: {_why(e)}") from None
        return dataclasses.replace(delivery, id=int(new_id))

    def deliveries(self, *, tenant_id: str, webhook_id: str | None = None,
                   limit: int = 100) -> builtins.list[Delivery]:
        query = select(_DELIVERY).where(_DELIVERY.c.tenant_id == tenant_id)
        if webhook_id is not None:
            query = query.where(_DELIVERY.c.webhook_id == webhook_id)
        rows = self._read(query.order_by(_DELIVERY.c.id.desc()).limit(limit), "webhook deliveries")
        return [_delivery(r) for r in rows]

"""Webhook notifications: operators subscribe URLs to event kinds (``campaign.`` by default); every matching event
of the subscription's tenant is POSTed to it as signed JSON, retried with backoff, and every attempt is logged.

Invariants:

* A subscription's secret (32 random bytes) is handed back once, by :meth:`Webhooks.add`; otherwise it exists
  only sealed by the vault (bound to the subscription's id and tenant) and is erased when the subscription is
  removed. It never reaches a log line, a delivery row, an exception or a ``repr``.
* Events come from the event outbox (:mod:`lwm2m_server.storage.outbox_store`), never straight from the bus: the
  node's :class:`~lwm2m_server.outbox.OutboxWriter` writes the events some subscription wants (the notifier keeps
  its ``notify_kinds`` up to date), and the notifier of any node sharing the database *leases* them (``lease``
  seconds, renewed while it delivers). Nothing is dropped: what waits is rows of the outbox; the publisher is
  never blocked (the writer buffers in memory and writes every 50 ms).
* One *delivery* is one event to one subscription. Its id (the payload's ``id`` and ``X-Scratch-Delivery``) is
  derived from the event's outbox id and the subscription's id (:func:`delivery_id`): it stays the same across
  its attempts, on every node, and after a crash. A delivery ends delivered (2xx), refused (4xx other than
  408/429: not retried), given up after ``max_attempts``, or not delivered when the secret does not open; when
  every delivery of an event has ended the event is marked notified and never sent again. Each attempt is one
  delivery row.
* Exactly once per delivery id, not per HTTP request: a node that dies (or stops) while delivering leaves the
  event leased; once the lease expires (at once after a clean stop, which releases it) another notifier delivers
  it again, its deliveries under the same ids, attempts counted from 1 again. A receiver that must act once
  deduplicates on ``X-Scratch-Delivery``.
* Signature (Stripe's scheme): ``X-Scratch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
  b"<t>." + body)>``; :func:`verify_signature` checks it in constant time, within a tolerance on ``t``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx

from lwm2m_server.core.errors import CoapCode, Lwm2mError
from lwm2m_server.events import Event
from lwm2m_server.storage.outbox_store import OutboxEvent
from lwm2m_server.storage.webhook_store import Delivery, SqlWebhookStore, Webhook

if TYPE_CHECKING:
    from lwm2m_server.outbox import OutboxWriter
    from lwm2m_server.storage.database import Database
    from lwm2m_server.storage.webhook_store import WebhookStore

__all__ = [
    "DEFAULT_KINDS",
    "SECRET_BYTES",
    "Delivery",
    "InvalidWebhookError",
    "SecretSealer",
    "UnknownWebhookError",
    "Webhook",
    "WebhookError",
    "WebhookNotifier",
    "Webhooks",
    "delivery_id",
    "sign",
    "validate_kinds",
    "validate_url",
    "verify_signature",
]

log = logging.getLogger(__name__)

DEFAULT_KINDS = ("campaign.",)
SECRET_BYTES = 32
MAX_URL_LENGTH = 2048
MAX_KINDS = 32
MAX_ERROR_TEXT = 300
SIGNATURE_HEADER = "X-Scratch-Signature"
_KIND = re.compile(r"[A-Za-z0-9_.*-]{1,255}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------- errors


class WebhookError(Lwm2mError):
    """Root of the webhook errors. Messages never hold a secret."""


class InvalidWebhookError(WebhookError, ValueError):
    """A subscription that cannot be made as asked: URL not http(s) with a host, or malformed event kinds."""

    coap_code = CoapCode.BAD_REQUEST


class UnknownWebhookError(WebhookError):
    """No active subscription with this id in this tenant."""

    coap_code = CoapCode.NOT_FOUND


# ---------------------------------------------------------------- signatures


def sign(secret: bytes, body: bytes, t: int) -> str:
    """The ``X-Scratch-Signature`` value of ``body`` sent at unix time ``t``."""
    mac = hmac.new(bytes(secret), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(secret: bytes, header: str, body: bytes, *, now: float, tolerance: float = 300) -> bool:
    """Whether ``header`` (``t=...,v1=...``; several ``v1`` allowed, other schemes ignored) signs ``body`` under
    ``secret`` and its ``t`` is within ``tolerance`` seconds of ``now``. Never raises on a malformed header;
    the MAC is compared in constant time."""
    if not isinstance(header, str) or len(header) > 4096:
        return False
    t: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if t is not None or not _TIMESTAMP.fullmatch(value):
                return False
            t = int(value)
        elif key == "v1" and _HEX_SHA256.fullmatch(value):
            candidates.append(value)
    if t is None or not candidates or abs(now - t) > tolerance:
        return False
    expected = sign(secret, body, t).rpartition("v1=")[2].encode()
    ok = False
    for candidate in candidates:  # every candidate is compared: the time taken says nothing about which matched
        ok |= hmac.compare_digest(expected, candidate.encode())
    return ok


# ---------------------------------------------------------------- validation


def validate_url(url: str) -> str:
    """``url`` when it is an absolute http or https URL with a host (and a valid port, no credentials, no
    fragment); else :class:`InvalidWebhookError` saying why."""
    if not isinstance(url, str) or not url:
        raise InvalidWebhookError("webhook URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookError(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise InvalidWebhookError(f"webhook URL {url!r} holds whitespace or control characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as e:
        raise InvalidWebhookError(f"webhook URL {url!r} is not a valid URL ({e})") from None
    if parsed.scheme not in ("http", "https"):
        raise InvalidWebhookError(f"webhook URL {url!r}: the scheme must be http or https, not {parsed.scheme!r}")
    if not parsed.host:
        raise InvalidWebhookError(f"webhook URL {url!r} has no host (write it as http(s)://HOST[:PORT]/PATH)")
    if parsed.userinfo:  # the URL is shown by `webhook list`: a password in it would be printed
        raise InvalidWebhookError(f"webhook URL for host {parsed.host!r} carries credentials (user:password@); put "
                                  "none in the URL: receivers authenticate deliveries by X-Scratch-Signature")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise InvalidWebhookError(f"webhook URL {url!r}: port {parsed.port} is not in 1..65535")
    if parsed.fragment:
        raise InvalidWebhookError(f"webhook URL {url!r} has a fragment (#...), which is never sent to the server")
    return url


def validate_kinds(kinds: str | Iterable[str]) -> tuple[str, ...]:
    """Event-kind prefixes as a tuple (duplicates removed, order kept): each non-empty, letters, digits and
    ``._-*`` only (no comma: they are stored as a comma list); at least one, at most 32."""
    items = [kinds] if isinstance(kinds, str) else list(kinds)
    out: list[str] = []
    for kind in items:
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise InvalidWebhookError(f"event kind {kind!r} is not a kind prefix such as 'campaign.' or "
                                      "'campaign.device.failed' (letters, digits and ._-)")
        if kind not in out:
            out.append(kind)
    if not out:
        raise InvalidWebhookError("a webhook needs at least one event kind (e.g. 'campaign.')")
    if len(out) > MAX_KINDS:
        raise InvalidWebhookError(f"a webhook takes at most {MAX_KINDS} event kinds")
    return tuple(out)


# ---------------------------------------------------------------- the service


class SecretSealer(Protocol):
    """What the service needs of the vault (:class:`bootstrap.vault.Vault` is one)."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def open_sealed(self, blob: bytes, aad: bytes) -> bytes: ...


def _aad(webhook_id: str, tenant_id: str) -> bytes:
    return b"scratch/webhook/v1\x00" + tenant_id.encode() + b"\x00" + webhook_id.encode()


class Webhooks:
    """Webhook subscriptions and their delivery log, kept by a :class:`WebhookStore` (memory or SQL); secrets are
    sealed by ``vault`` (bound to the subscription's id and tenant) before the store sees them. Every call is scoped
    by tenant but :meth:`active_kinds`. Store failures raise :class:`StorageError`."""

    def __init__(self, store: WebhookStore, vault: SecretSealer) -> None:
        self._store = store
        self._vault = vault

    @classmethod
    def over(cls, database: Database, vault: SecretSealer) -> Webhooks:
        """The webhooks in ``database`` (tables ``webhook`` and ``webhook_delivery``)."""
        return cls(SqlWebhookStore(database), vault)

    def __repr__(self) -> str:
        return f"Webhooks({self._store!r})"

    def add(self, url: str, *, kinds: str | Iterable[str] = DEFAULT_KINDS, tenant_id: str,
            now: float) -> tuple[Webhook, bytes]:
        """Subscribe ``url`` to ``kinds`` (prefixes) in ``tenant_id``: the new subscription and its secret (32
        random bytes, a :class:`~bootstrap.vault.SecretBytes` with the real vault), returned this once only."""
        url = validate_url(url)
        prefixes = validate_kinds(kinds)
        if not tenant_id:
            raise InvalidWebhookError("empty tenant id")
        webhook = Webhook(uuid.uuid4().hex, tenant_id, url, prefixes, now, True)
        aad = _aad(webhook.id, tenant_id)
        sealed = self._vault.seal(secrets.token_bytes(SECRET_BYTES), aad)
        secret = self._vault.open_sealed(sealed, aad)  # what is handed back is what the notifier will open
        self._store.add(webhook, sealed_secret=sealed)
        return webhook, secret

    def list(self, *, tenant_id: str, include_removed: bool = False) -> builtins.list[Webhook]:
        """The tenant's subscriptions, oldest first (removed ones too with ``include_removed``)."""
        return self._store.list(tenant_id=tenant_id, include_removed=include_removed)

    def get(self, webhook_id: str, *, tenant_id: str) -> Webhook:
        """An active subscription; :class:`UnknownWebhookError` when there is none with this id in the tenant."""
        webhook = self._store.get(webhook_id, tenant_id=tenant_id)
        if webhook is None or not webhook.active:
            raise UnknownWebhookError(f"no webhook {webhook_id!r} in tenant {tenant_id!r}")
        return webhook

    def matching(self, kind: str, *, tenant_id: str) -> builtins.list[Webhook]:
        """The tenant's active subscriptions that want events of ``kind``."""
        return [w for w in self.list(tenant_id=tenant_id) if w.wants(kind)]

    def active_kinds(self) -> tuple[str, ...]:
        """Every prefix some active subscription (of any tenant) listens to: a cheap first filter of events."""
        return self._store.active_kinds()

    def remove(self, webhook_id: str, *, tenant_id: str) -> Webhook:
        """Deactivate a subscription and erase its sealed secret (its delivery log stays); the removed
        subscription. :class:`UnknownWebhookError` when there is no active one with this id in the tenant."""
        removed = self._store.remove(webhook_id, tenant_id=tenant_id)
        if removed is None:
            raise UnknownWebhookError(f"no webhook {webhook_id!r} in tenant {tenant_id!r}")
        return removed

    def secret_for(self, webhook_id: str, *, tenant_id: str) -> bytes:
        """The secret of an active subscription (opened from the vault). :class:`UnknownWebhookError` when there is
        no active one; the vault's error when the sealed blob does not open."""
        sealed = self._store.sealed_secret(webhook_id, tenant_id=tenant_id)
        if sealed is None:
            raise UnknownWebhookError(f"no webhook {webhook_id!r} in tenant {tenant_id!r}")
        return self._vault.open_sealed(sealed, _aad(webhook_id, tenant_id))

    def record(self, *, webhook_id: str, tenant_id: str, event_kind: str, event_id: str, attempt: int, at: float,
               status_code: int | None = None, error: str | None = None, delivered: bool = False,
               duration: float = 0.0) -> Delivery:
        """Log one delivery attempt (or one event never attempted: ``attempt`` 0). ``error`` is cut to 300
        characters; callers put no secret, signature or body in it."""
        return self._store.record(Delivery(0, webhook_id, tenant_id, event_kind[:255], event_id, attempt, at,
                                           status_code, None if error is None else error[:MAX_ERROR_TEXT],
                                           delivered, duration))

    def deliveries(self, *, tenant_id: str, webhook_id: str | None = None,
                   limit: int = 100) -> builtins.list[Delivery]:
        """The tenant's logged attempts, newest first (of one subscription with ``webhook_id``), at most ``limit``."""
        if not 1 <= limit <= 100_000:
            raise InvalidWebhookError(f"limit {limit} is not in 1..100000")
        return self._store.deliveries(tenant_id=tenant_id, webhook_id=webhook_id, limit=limit)


# ---------------------------------------------------------------- the notifier


def delivery_id(event_id: str, webhook_id: str) -> str:
    """The id of the delivery of one outbox event to one subscription: 32 hex digits, the same on every node and
    after every restart (receivers deduplicate on it)."""
    return hashlib.sha256(f"scratch/delivery/v1\x00{event_id}\x00{webhook_id}".encode()).hexdigest()[:32]


@dataclass(slots=True, eq=False)
class _Job:
    """One delivery in flight (no secret here: it is opened by the task that sends)."""

    webhook: Webhook
    event: Event
    delivery_id: str
    body: bytes
    attempts: int = 0  # attempts made and logged


@dataclass(slots=True, eq=False)
class _Leased:
    """An outbox event this notifier holds: how many of its deliveries have not ended yet."""

    row: OutboxEvent
    remaining: int


def _body(delivery_id: str, event: Event) -> bytes:
    payload = {"id": delivery_id, "kind": event.kind, "at": event.at, "tenant": event.tenant_id,
               "endpoint": event.endpoint, "data": dict(event.data)}
    return json.dumps(payload, default=str, separators=(",", ":"), ensure_ascii=False).encode()


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None  # the HTTP-date form is ignored: exponential backoff applies
    return float(value.strip())


class WebhookNotifier:
    """Delivers the outbox's events to the webhooks subscribed to them (see the module invariants).

    ``outbox`` is this node's :class:`~lwm2m_server.outbox.OutboxWriter`: the notifier sets its ``notify_kinds``
    (the prefixes of all active subscriptions, reloaded every ``refresh_interval`` seconds, so a subscription added
    by another process takes effect within that) and leases from its store. ``start()`` (in a running loop) starts
    leasing: whenever the writer has written, and every ``poll_interval`` seconds (events written by other nodes);
    ``await stop()`` drains for up to ``drain_timeout`` seconds, then cancels what is left, logs it as not
    delivered yet and releases its leases (the events stay in the outbox). At most ``queue_size`` events are leased
    at once; at most ``concurrency`` requests run at once, each bounded by ``timeout`` seconds.
    """

    def __init__(self, webhooks: Webhooks, outbox: OutboxWriter, *, max_attempts: int = 6, backoff_base: float = 1.0,
                 backoff_max: float = 60.0, timeout: float = 10.0, concurrency: int = 8, queue_size: int = 1000,
                 drain_timeout: float = 5.0, refresh_interval: float = 5.0, lease: float = 60.0,
                 poll_interval: float = 0.5, clock: Callable[[], float] = time.time,
                 transport: httpx.AsyncBaseTransport | None = None,
                 product_name: Callable[[str], str] | None = None) -> None:
        """``product_name`` gives a tenant's brand name (white label): its deliveries carry ``User-Agent:
        <name>-webhooks/1`` (default ``scratch-webhooks/1``)."""
        if max_attempts < 1 or concurrency < 1 or queue_size < 1:
            raise ValueError("max_attempts, concurrency and queue_size must be at least 1")
        if min(backoff_base, backoff_max, drain_timeout) < 0 or timeout <= 0 or refresh_interval <= 0:
            raise ValueError("backoff and drain times must be >= 0, timeout and refresh_interval > 0")
        if lease <= 0 or poll_interval <= 0:
            raise ValueError("lease and poll_interval must be > 0")
        self._webhooks = webhooks
        self._product_name = product_name
        self._outbox = outbox
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.drain_timeout = drain_timeout
        self.refresh_interval = refresh_interval
        self.lease = lease
        self.poll_interval = poll_interval
        self._clock = clock
        self._transport = transport
        self.owner = f"{outbox.node_id[:55]}/{uuid.uuid4().hex[:8]}"
        """This notifier's name on its leases (its node, and a nonce: a restarted node is another owner)."""
        self._state = "new"
        self._leased: dict[str, _Leased] = {}  # by event id: deliveries under way
        self._finished: set[str] = set()  # every delivery ended, not marked notified yet
        self._jobs: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._asked = 0  # flush() requests; a poll that found nothing to do answers those made before it began
        self._answered = 0

    def __repr__(self) -> str:
        return f"WebhookNotifier({self._state}, leased={len(self._leased)}, in_flight={len(self._jobs)})"

    # -------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Start leasing and delivering; must be called in the running loop, once."""
        if self._state != "new":
            raise WebhookError(f"the webhook notifier is {self._state}; it starts once")
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self._outbox.notify_kinds = self._webhooks.active_kinds()
        self._outbox.on_written.append(self._written)
        self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False, transport=self._transport,
                                         limits=httpx.Limits(max_connections=self.concurrency),
                                         headers={"User-Agent": "scratch-webhooks/1"})
        self._loops = [asyncio.create_task(self._poll_loop(), name="webhook-poll"),
                       asyncio.create_task(self._refresh_loop(), name="webhook-refresh"),
                       asyncio.create_task(self._renew_loop(), name="webhook-lease")]
        self._state = "running"

    def _written(self) -> None:
        """(The writer's thread.) Events were written: look at once."""
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(self._wake.set)

    async def refresh(self) -> None:
        """Reload the kinds the writer keeps for webhooks (the prefixes of all active subscriptions) now."""
        self._outbox.notify_kinds = await asyncio.to_thread(self._webhooks.active_kinds)

    async def flush(self, timeout: float) -> bool:
        """Write the writer's buffer, then wait until this notifier finds nothing to lease and has no delivery in
        flight (retries included); False on timeout or when the outbox cannot be read or written."""
        if self._state != "running":
            return True
        try:
            async with asyncio.timeout(timeout):
                await asyncio.to_thread(self._outbox.flush)
                self._asked += 1
                asked = self._asked
                self._wake.set()
                while self._answered < asked:
                    self._quiet.clear()
                    await self._quiet.wait()
        except TimeoutError:
            return False
        except Lwm2mError as e:
            log.warning("webhook flush: %s", e)
            return False
        return True

    async def stop(self) -> None:
        """Drain for up to ``drain_timeout`` seconds, then cancel what is left (each delivery cut short logged as
        not delivered yet) and release this notifier's leases: those events stay in the outbox for the next
        notifier. Idempotent."""
        if self._state != "running":
            return
        drained = await self.flush(self.drain_timeout)
        self._state = "stopping"
        with contextlib.suppress(ValueError):
            self._outbox.on_written.remove(self._written)
        left_jobs = builtins.list(self._jobs.values())  # taken before cancelling: a cancelled task forgets
        tasks = [*self._loops, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._jobs.clear()
        self._leased.clear()
        try:
            for job in left_jobs:
                await self._record(job.webhook, job.event, job.delivery_id, attempt=job.attempts,
                                   error=f"not delivered yet: the notifier stopped after {job.attempts} attempt(s); "
                                         "the event stays in the outbox")
            await self._mark_finished()
            try:
                await asyncio.to_thread(self._outbox.store.release, owner=self.owner)
            except Lwm2mError as e:
                log.warning("webhook notifier: cannot release its leases (they expire in %g s): %s", self.lease, e)
        finally:
            await self._client.aclose()
            self._state = "stopped"
        if not drained:
            log.warning("webhook notifier stopped before draining: %d delivery(ies) cut short; their events stay "
                        "in the outbox", len(left_jobs))

    # -------------------------------------------------------------- leasing

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Lwm2mError as e:
                log.warning("cannot reload the webhook subscriptions: %s", e)

    async def _renew_loop(self) -> None:
        """Keep the leases of the events under way (or ended, not marked yet) from expiring."""
        while True:
            await asyncio.sleep(self.lease / 3)
            held = [*self._leased, *self._finished]
            if not held:
                continue
            try:
                kept = await asyncio.to_thread(self._outbox.store.renew, held, owner=self.owner,
                                               until=self._clock() + self.lease)
            except Lwm2mError as e:
                log.warning("webhook notifier: cannot renew its leases: %s", e)
                continue
            if len(kept) < len(held):
                log.warning("webhook notifier %s: %d lease(s) were taken over (this node stalled); another node "
                            "delivers those events again under the same delivery ids", self.owner,
                            len(held) - len(kept))

    async def _poll_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            asked = self._asked
            try:
                quiet = await self._poll()
            except Lwm2mError as e:
                log.warning("webhook notifier: cannot read the outbox: %s", e)
                continue
            if quiet:
                self._answered = max(self._answered, asked)
                self._quiet.set()

    async def _mark_finished(self) -> None:
        if not self._finished:
            return
        done = builtins.list(self._finished)
        try:
            await asyncio.to_thread(self._outbox.store.notified, done, owner=self.owner, now=self._clock())
        except Lwm2mError as e:
            log.warning("webhook notifier: cannot mark %d event(s) notified (tried again): %s", len(done), e)
            return
        self._finished.difference_update(done)

    async def _poll(self) -> bool:
        """Mark what ended, lease what fits, start its deliveries; whether there was nothing to do."""
        await self._mark_finished()
        room = self.queue_size - len(self._leased)
        rows = []
        if room > 0:
            rows = await asyncio.to_thread(self._outbox.store.lease_for_webhooks, owner=self.owner,
                                           now=self._clock(), lease=self.lease, limit=room)
        hooks_of: dict[tuple[str, str], builtins.list[Webhook]] = {}
        for row in rows:
            key = (row.tenant_id, row.kind)
            if key not in hooks_of:
                try:
                    hooks_of[key] = await asyncio.to_thread(self._webhooks.matching, row.kind,
                                                            tenant_id=row.tenant_id)
                except Lwm2mError as e:  # left leased: delivered once the lease expires
                    log.warning("cannot dispatch a %s event to webhooks: %s", row.kind, e)
                    continue
            self._dispatch(row, hooks_of[key])
        await self._mark_finished()  # the events no subscription wants (any more)
        return not rows and not self._leased and not self._finished

    def _dispatch(self, row: OutboxEvent, hooks: builtins.list[Webhook]) -> None:
        if not hooks:
            self._finished.add(row.event_id)
            return
        entry = self._leased[row.event_id] = _Leased(row, len(hooks))
        event = row.event
        for hook in hooks:
            job = _Job(hook, event, delivery_id(row.event_id, hook.id), b"")
            job.body = _body(job.delivery_id, event)
            task = asyncio.create_task(self._deliver(job, entry), name=f"webhook-{hook.id}-{job.delivery_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _record(self, hook: Webhook, event: Event, delivery_id: str, *, attempt: int,
                      status_code: int | None = None, error: str | None = None, delivered: bool = False,
                      duration: float = 0.0) -> None:
        try:
            await asyncio.to_thread(self._webhooks.record, webhook_id=hook.id, tenant_id=hook.tenant_id,
                                    event_kind=event.kind, event_id=delivery_id, attempt=attempt, at=self._clock(),
                                    status_code=status_code, error=error, delivered=delivered, duration=duration)
        except Lwm2mError as e:
            log.warning("cannot log delivery %s of webhook %s: %s", delivery_id, hook.id, e)

    # -------------------------------------------------------------- delivery

    async def _deliver(self, job: _Job, entry: _Leased) -> None:
        """One delivery to its end; then, when it was the event's last, the event is to be marked notified.
        (Cancelled by :meth:`stop`: the event is not marked.)"""
        self._jobs[job.delivery_id] = job
        try:
            await self._attempts(job)
        except Exception:  # a bug, not a failed delivery: logged, and the delivery counts as ended
            log.exception("webhook %s: delivery %s failed unexpectedly", job.webhook.id, job.delivery_id)
        finally:
            self._jobs.pop(job.delivery_id, None)
        entry.remaining -= 1
        if entry.remaining == 0:
            self._leased.pop(entry.row.event_id, None)
            self._finished.add(entry.row.event_id)
            self._wake.set()

    async def _attempts(self, job: _Job) -> None:
        hook = job.webhook
        try:
            secret = await asyncio.to_thread(self._webhooks.secret_for, hook.id, tenant_id=hook.tenant_id)
        except Lwm2mError as e:
            await self._record(hook, job.event, job.delivery_id, attempt=0, error=f"not delivered: {e}")
            return
        while True:
            attempt = job.attempts + 1
            status, error, retry_after, duration = await self._attempt(job, secret)
            delivered = status is not None and 200 <= status < 300
            retryable = not delivered and (status is None or not 400 <= status < 500 or status in (408, 429))
            final = delivered or not retryable or attempt >= self.max_attempts
            if not delivered and not retryable:
                error = f"{error}; not retried"
            elif final and not delivered:
                error = f"{error}; gave up after {attempt} attempt(s)"
            job.attempts = attempt
            await self._record(hook, job.event, job.delivery_id, attempt=attempt, status_code=status,
                               error=None if delivered else error, delivered=delivered, duration=duration)
            log.info("webhook %s: delivery %s of %s, attempt %d: %s", hook.id, job.delivery_id, job.event.kind,
                     attempt, "delivered" if delivered else error)
            if final:
                return
            await asyncio.sleep(self._backoff(attempt, retry_after))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (half to all of ``base * 2**(attempt-1)``, capped); a server's
        ``Retry-After`` (seconds) is honoured up to ``backoff_max``."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** min(attempt - 1, 32))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def _user_agent(self, tenant_id: str) -> str:
        name = self._product_name(tenant_id) if self._product_name is not None else "scratch"
        token = "".join(c if c.isalnum() or c in "-." else "-" for c in name.strip().lower()).strip("-") or "scratch"
        return f"{token[:48]}-webhooks/1"

    async def _attempt(self, job: _Job, secret: bytes) -> tuple[int | None, str, float | None, float]:
        """One POST: (status or None, error text, Retry-After seconds, duration). The error text holds the status
        or the exception's class and message, never a header or the body."""
        headers = {"Content-Type": "application/json", "X-Scratch-Event": job.event.kind,
                   "X-Scratch-Delivery": job.delivery_id, "User-Agent": self._user_agent(job.event.tenant_id),
                   SIGNATURE_HEADER: sign(secret, job.body, int(self._clock()))}
        async with self._slots:
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.timeout), \
                        self._client.stream("POST", job.webhook.url, content=job.body, headers=headers) as response:
                    status = response.status_code
                    retry_after = _retry_after(response.headers.get("retry-after"))
                return status, f"HTTP {status}", retry_after, time.monotonic() - started
            except (TimeoutError, httpx.TimeoutException) as e:
                return None, f"timed out after {self.timeout:g} s ({type(e).__name__})", None, \
                    time.monotonic() - started
            except httpx.HTTPError as e:
                return None, f"connection error: {_short(e)}", None, time.monotonic() - started

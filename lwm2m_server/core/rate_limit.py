"""Per-key token buckets and failure lockouts, with bounded memory. Pure: the caller passes the time in.

Invariants (for a key that stays tracked, with ``now`` non-decreasing per key):

* :class:`RateLimiter`: over any interval of length ``T``, at most ``burst + rate * T`` requests are allowed.
* :class:`Lockout`: after ``threshold`` failures within ``window`` seconds, the key is locked for ``period``.
* :class:`Backoff`: the first ``free`` failures of a key cost nothing; the n-th one after them blocks the key for
  ``base * 2**(n-1)`` seconds, at most ``cap``; a success forgets the key.
* :class:`HandshakeGuard` (DTLS-PSK handshakes, decided at the PSK lookup): failures of a *known* identity count
  per (address, identity) (:class:`Backoff`, which refuses) and per identity across addresses
  (:class:`Lockout`, reported only: a refusal there would let whoever reads an identity off the wire lock its
  device out); failures of *unknown* identities count per address only and refuse only unknown identities. So
  failures under one identity never refuse another, valid identity, nor that identity from elsewhere, and unknown
  identities (which anyone can invent) cannot flush the tables of known ones.
* Neither tracks more than ``max_keys`` keys. Evicting a key forgets it: a full (idle) bucket is dropped first,
  otherwise the least recently used key; an evicted key starts afresh, so the per-key bound holds only while a
  key is tracked (size ``max_keys`` above the number of keys a client can use at once).
* A clock that goes backwards never grants tokens or shortens a lock: elapsed time is clamped at 0.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from lwm2m_server.core.errors import CoapCode, Lwm2mError

DEFAULT_MAX_KEYS = 10_000
_PRUNE_PER_CALL = 2  # idle full buckets dropped from the LRU end per call: O(1) amortised


class RateLimitedError(Lwm2mError):
    """Too many requests from one source (5.03); ``retry_after`` seconds until one is allowed (Max-Age)."""

    coap_code = CoapCode.SERVICE_UNAVAILABLE

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def max_age(self) -> int:
        """Whole seconds, at least 1: the Max-Age of the 5.03."""
        return max(1, math.ceil(self.retry_after))


@dataclass(slots=True)
class TokenBucket:
    """``tokens`` in ``[0, burst]`` as of time ``stamp``; refills at ``rate`` tokens per second."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> float | None:
        """Take one token: None when taken, else seconds until one is available (nothing taken)."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket is (or by ``now`` would be) full: forgetting it then changes nothing."""
        return self.tokens + max(0.0, now - self.stamp) * self.rate >= self.burst


class RateLimiter:
    """One :class:`TokenBucket` per key (``"addr:1.2.3.4"``, ``"id:<identity>"``...), at most ``max_keys`` of them.

    A new key starts with a full bucket (``burst`` tokens)."""

    __slots__ = ("_buckets", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate must be a positive number of tokens per second")
        if not (burst >= 1 and math.isfinite(burst)):
            raise ValueError("burst must be at least 1")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate, self.burst, self.max_keys = float(rate), float(burst), max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: str, now: float) -> float | None:
        """Count one request for ``key``: None when allowed, else seconds until it would be (for Max-Age)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(now)
        self._prune(now, keep=key)
        return wait

    def _prune(self, now: float, keep: str) -> None:
        for _ in range(_PRUNE_PER_CALL):
            if not self._buckets:
                return
            oldest, bucket = next(iter(self._buckets.items()))
            if oldest == keep or not bucket.full(now):
                return
            del self._buckets[oldest]

    def _make_room(self, now: float) -> None:
        while len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)  # least recently used (the full ones went first, in _prune)


@dataclass(slots=True)
class _Failures:
    times: deque[float] = field(default_factory=deque)  # within the window, at most ``threshold``, oldest first
    locked_until: float = -math.inf


class Lockout:
    """``threshold`` failures of one key within ``window`` seconds lock it for ``period`` seconds.

    At most ``max_keys`` keys are tracked (least recently failed evicted first; expired entries are dropped when
    looked at). Failures while locked extend nothing: the lock runs from the failure that tripped it."""

    __slots__ = ("_keys", "max_keys", "period", "threshold", "window")

    def __init__(self, threshold: int, window: float, period: float, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if threshold < 1 or not window > 0 or not period > 0 or max_keys < 1:
            raise ValueError("threshold and max_keys must be at least 1, window and period positive")
        self.threshold, self.window, self.period, self.max_keys = threshold, float(window), float(period), max_keys
        self._keys: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def record_failure(self, key: str, now: float) -> float | None:
        """Count one failure; returns the lock period when this failure locks the key, else None."""
        entry = self._keys.get(key)
        if entry is None:
            while len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
            entry = self._keys[key] = _Failures()
        else:
            self._keys.move_to_end(key)
        if now < entry.locked_until:
            return None
        times = entry.times
        times.append(max(now, times[-1]) if times else now)
        while times and times[0] <= times[-1] - self.window:
            times.popleft()
        if len(times) >= self.threshold:
            times.clear()
            entry.locked_until = now + self.period
            return self.period
        return None

    def locked(self, key: str, now: float) -> float | None:
        """Seconds of lock left for ``key``, or None when it is not locked."""
        entry = self._keys.get(key)
        if entry is None:
            return None
        remaining = entry.locked_until - now
        if remaining > 0:
            return remaining
        if not entry.times or entry.times[-1] <= now - self.window:
            del self._keys[key]  # nothing left to remember
        return None

    def reset(self, key: str) -> None:
        """Forget ``key`` (e.g. after a success)."""
        self._keys.pop(key, None)


@dataclass(slots=True)
class _Streak:
    failures: int = 0
    blocked_until: float = -math.inf
    last: float = -math.inf


class Backoff:
    """Exponential back-off per key: failure ``free + n`` (n >= 1) blocks the key for ``min(cap, base * 2**(n-1))``
    seconds from that failure. Failures while blocked are not counted (the caller refuses those attempts). A key
    is forgotten ``forget`` seconds after its last failure (default ``2 * cap``), on :meth:`reset`, or when
    ``max_keys`` are tracked (least recently failed first)."""

    __slots__ = ("_keys", "base", "cap", "forget", "free", "max_keys")

    def __init__(self, free: int, base: float, cap: float, *, forget: float | None = None,
                 max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if free < 0 or not base > 0 or not cap >= base or max_keys < 1:
            raise ValueError("free must be 0 or more, base positive, cap at least base, max_keys at least 1")
        self.free, self.base, self.cap, self.max_keys = free, float(base), float(cap), max_keys
        self.forget = 2 * self.cap if forget is None else float(forget)
        self._keys: OrderedDict[str, _Streak] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _entry(self, key: str, now: float) -> _Streak | None:
        entry = self._keys.get(key)
        if entry is not None and now - entry.last >= self.forget and now >= entry.blocked_until:
            del self._keys[key]
            return None
        return entry

    def record_failure(self, key: str, now: float) -> float | None:
        """Count one failure; the seconds the key is now blocked for, or None (still free, or already blocked)."""
        entry = self._entry(key, now)
        if entry is None:
            while len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
            entry = self._keys[key] = _Streak()
        else:
            self._keys.move_to_end(key)
        if now < entry.blocked_until:
            return None
        entry.failures += 1
        entry.last = max(entry.last, now)
        beyond = entry.failures - self.free
        if beyond <= 0:
            return None
        seconds = min(self.cap, self.base * 2.0 ** min(beyond - 1, 64))
        entry.blocked_until = now + seconds
        return seconds

    def failures(self, key: str) -> int:
        entry = self._keys.get(key)
        return 0 if entry is None else entry.failures

    def blocked(self, key: str, now: float) -> float | None:
        """Seconds ``key`` stays blocked, or None."""
        entry = self._entry(key, now)
        if entry is None or now >= entry.blocked_until:
            return None
        return entry.blocked_until - now

    def reset(self, key: str) -> None:
        self._keys.pop(key, None)


@dataclass(frozen=True, slots=True)
class Tripped:
    """A counter of :class:`HandshakeGuard` that engaged: ``scope`` is "address+identity", "identity" or
    "address"; ``failures`` counted to get there; blocked for ``seconds`` (0: reported only)."""

    scope: str
    failures: int
    seconds: float


class HandshakeGuard:
    """Failed-handshake policy for DTLS-PSK (see the module docstring), built on ``lockout``'s threshold, window
    and period. Keys: ``address`` as text, ``identity`` as bytes. Bounded: every table holds at most ``max_keys``.

    ==================  ==========================  =========================================================
    counter             counts                      refuses (until it expires)
    ==================  ==========================  =========================================================
    (address, identity) failures of a known         that identity from that address; back-off after
                        identity (wrong key)        ``backoff_after`` failures: base, 2 base, ... <= period
    identity            failures of a known         nothing: ``threshold`` failures within ``window`` are
                        identity, any address       reported (someone is trying that device's key), because
                                                    a refusal would let anyone who reads an identity off the
                                                    wire lock its device out, and a PSK of 16 random bytes
                                                    cannot be guessed online anyway
    address             failures of unknown         unknown identities from that address (refused anyway):
                        identities                  ``threshold`` within ``window`` -> ``period``, reported
    ==================  ==========================  =========================================================

    A refused attempt is answered exactly as a failed one (the caller's job) and counts nowhere."""

    __slots__ = ("_addresses", "_identities", "_pairs", "lockout")

    def __init__(self, lockout: Lockout, *, backoff_after: int = 3, backoff_base: float = 1.0) -> None:
        self.lockout = lockout
        self._identities = Lockout(lockout.threshold, lockout.window, lockout.period, max_keys=lockout.max_keys)
        self._addresses = Lockout(lockout.threshold, lockout.window, lockout.period, max_keys=lockout.max_keys)
        self._pairs = Backoff(backoff_after, min(backoff_base, lockout.period), lockout.period,
                              max_keys=lockout.max_keys)

    @staticmethod
    def _pair(address: str, identity: bytes) -> str:
        return f"{address} {identity.hex()}"

    def refused(self, address: str, identity: bytes, known: bool, now: float) -> str | None:
        """Why a handshake of ``identity`` from ``address`` must fail now, or None."""
        if known:
            if self._pairs.blocked(self._pair(address, identity), now) is not None:
                return "backing off (address and identity)"
        elif self._addresses.locked(address, now) is not None:
            return "address locked out (unknown identities)"
        return None

    def failed(self, address: str, identity: bytes, known: bool, now: float) -> list[Tripped]:
        """Count one failed handshake; the counters this failure made engage."""
        tripped = []
        if known:
            pair = self._pair(address, identity)
            seconds = self._pairs.record_failure(pair, now)
            if seconds is not None:
                tripped.append(Tripped("address+identity", self._pairs.failures(pair), seconds))
            if self._identities.record_failure(identity.hex(), now) is not None:
                tripped.append(Tripped("identity", self.lockout.threshold, 0.0))  # reported, refuses nothing
        else:
            period = self._addresses.record_failure(address, now)
            if period is not None:
                tripped.append(Tripped("address", self.lockout.threshold, period))
        return tripped

    def succeeded(self, address: str, identity: bytes) -> None:
        """A completed handshake: forget the pair's failures."""
        self._pairs.reset(self._pair(address, identity))

    def address_locked(self, address: str, now: float) -> float | None:
        return self._addresses.locked(address, now)

    def backing_off(self, address: str, identity: bytes, now: float) -> float | None:
        return self._pairs.blocked(self._pair(address, identity), now)


class ReportThrottle:
    """Which refusals of a key to report (log, security event, audit record): the first, then at most one every
    ``every`` seconds, saying how many were held back since. Bounded: at most ``max_keys`` keys (least recently
    reported dropped first). So a flood of refused requests writes a few records, not one each."""

    __slots__ = ("_keys", "every", "max_keys")

    def __init__(self, every: float = 10.0, *, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if not every > 0 or max_keys < 1:
            raise ValueError("every must be positive and max_keys at least 1")
        self.every, self.max_keys = float(every), max_keys
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (last reported, held back)

    def due(self, key: str, now: float) -> int | None:
        """None: hold this refusal back (counted); else report it, with how many were held back before it."""
        last = self._keys.get(key)
        if last is not None and 0.0 <= now - last[0] < self.every:
            self._keys[key] = (last[0], last[1] + 1)
            return None
        self._keys[key] = (now, 0)
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return last[1] if last is not None else 0

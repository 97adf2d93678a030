"""RateLimiter (token buckets per key) and Lockout: pure, time passed in; properties by Hypothesis."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwm2m_server.core.errors import CoapCode, Lwm2mError
from lwm2m_server.core.rate_limit import (
    Backoff,
    HandshakeGuard,
    Lockout,
    RateLimitedError,
    RateLimiter,
    ReportThrottle,
    TokenBucket,
    Tripped,
)


def test_burst_then_refill() -> None:
    rl = RateLimiter(rate=0.5, burst=3)
    assert [rl.allow("addr:a", 0.0) for _ in range(3)] == [None, None, None]
    wait = rl.allow("addr:a", 0.0)
    assert wait == pytest.approx(2.0)  # one token at 0.5/s
    assert rl.allow("addr:a", 1.0) == pytest.approx(1.0)  # a refused request takes nothing
    assert rl.allow("addr:a", 2.0) is None
    assert rl.allow("addr:a", 2.0) is not None


def test_keys_are_independent() -> None:
    rl = RateLimiter(rate=1, burst=1)
    assert rl.allow("addr:a", 0) is None
    assert rl.allow("addr:a", 0) is not None
    assert rl.allow("addr:b", 0) is None
    assert rl.allow("id:dev", 0) is None


def test_clock_going_backwards_grants_nothing() -> None:
    rl = RateLimiter(rate=1, burst=1)
    assert rl.allow("k", 100.0) is None
    assert rl.allow("k", 50.0) is not None
    assert rl.allow("k", 100.5) is not None
    assert rl.allow("k", 101.0) is None


def test_bucket_full() -> None:
    b = TokenBucket(rate=2, burst=4, tokens=2, stamp=10)
    assert not b.full(10.5)
    assert b.full(11.0)


@pytest.mark.parametrize("kw", [dict(rate=0, burst=1), dict(rate=1, burst=0.5), dict(rate=-1, burst=2),
                                dict(rate=math.inf, burst=2), dict(rate=1, burst=1, max_keys=0)])
def test_bad_configuration(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kw)  # type: ignore[arg-type]


def test_idle_full_buckets_are_dropped() -> None:
    rl = RateLimiter(rate=1, burst=2)
    for i in range(5):
        rl.allow(f"k{i}", 0.0)
    assert len(rl) == 5
    for i in range(5):
        rl.allow("busy", 10.0 + i)  # everyone else has long refilled
    assert len(rl) == 1


def test_lru_eviction_at_the_cap() -> None:
    rl = RateLimiter(rate=0.001, burst=1, max_keys=2)
    rl.allow("a", 0)
    rl.allow("b", 0)
    rl.allow("a", 0)  # a is now most recently used
    rl.allow("c", 0)  # evicts b
    assert len(rl) == 2
    assert rl.allow("a", 0) is not None  # still tracked: still empty
    assert rl.allow("b", 0) is None  # forgotten: starts afresh


def test_rate_limited_error() -> None:
    e = RateLimitedError("slow down", 0.2)
    assert isinstance(e, Lwm2mError) and e.coap_code == CoapCode.SERVICE_UNAVAILABLE
    assert e.max_age == 1 and RateLimitedError("x", 2.01).max_age == 3 and RateLimitedError("x", 0).max_age == 1


times = st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), min_size=1, max_size=200).map(sorted)


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(min_value=0.01, max_value=50), burst=st.integers(min_value=1, max_value=20), ts=times)
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int, ts: list[float]) -> None:
    rl = RateLimiter(rate=rate, burst=burst)
    allowed = [t for t in ts if rl.allow("addr:x", t) is None]
    for i, start in enumerate(allowed):
        for j in range(i, len(allowed)):
            assert j - i + 1 <= burst + rate * (allowed[j] - start) + 1e-6


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(min_value=0.01, max_value=50), burst=st.integers(min_value=1, max_value=20), ts=times)
def test_a_refusal_says_when_to_come_back(rate: float, burst: int, ts: list[float]) -> None:
    rl = RateLimiter(rate=rate, burst=burst)
    for t in ts:
        wait = rl.allow("k", t)
        if wait is not None:
            assert 0 < wait <= 1 / rate + 1e-9
            probe = copy.deepcopy(rl)
            assert probe.allow("k", t + wait * (1 + 1e-9) + 1e-9) is None


@settings(max_examples=100, deadline=None)
@given(cap=st.integers(min_value=1, max_value=30),
       keys=st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=500),
       step=st.floats(min_value=0, max_value=5))
def test_memory_bound_under_many_keys(cap: int, keys: list[int], step: float) -> None:
    rl = RateLimiter(rate=1, burst=3, max_keys=cap)
    lo = Lockout(threshold=3, window=10, period=60, max_keys=cap)
    for n, k in enumerate(keys):
        rl.allow(f"addr:{k}", n * step)
        lo.record_failure(f"addr:{k}", n * step)
        lo.locked(f"addr:{k}", n * step)
        assert len(rl) <= cap and len(lo) <= cap


def test_lockout_threshold_within_window() -> None:
    lo = Lockout(threshold=3, window=10, period=60)
    assert lo.record_failure("id:x", 0) is None
    assert lo.record_failure("id:x", 5) is None
    assert lo.locked("id:x", 5) is None
    assert lo.record_failure("id:x", 9) == 60
    assert lo.locked("id:x", 9) == pytest.approx(60)
    assert lo.locked("id:x", 68) == pytest.approx(1)
    assert lo.record_failure("id:x", 30) is None  # failures while locked extend nothing
    assert lo.locked("id:x", 69) is None
    assert lo.locked("id:y", 0) is None


def test_lockout_failures_outside_the_window_do_not_count() -> None:
    lo = Lockout(threshold=3, window=10, period=60)
    for t in (0, 8, 18, 26, 36):  # never three within 10 s
        assert lo.record_failure("k", t) is None
    assert lo.locked("k", 36) is None


def test_lockout_reset_and_expiry_forget_the_key() -> None:
    lo = Lockout(threshold=2, window=10, period=5)
    lo.record_failure("a", 0)
    lo.reset("a")
    assert lo.record_failure("a", 1) is None and len(lo) == 1
    assert lo.locked("a", 100) is None and len(lo) == 0


@pytest.mark.parametrize("kw", [dict(threshold=0, window=1, period=1), dict(threshold=1, window=0, period=1),
                                dict(threshold=1, window=1, period=0), dict(threshold=1, window=1, period=1,
                                                                            max_keys=0)])
def test_lockout_bad_configuration(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Lockout(**kw)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(threshold=st.integers(min_value=1, max_value=5), window=st.floats(min_value=0.1, max_value=50),
       period=st.floats(min_value=0.1, max_value=100), ts=times)
def test_lockout_locks_exactly_when_threshold_reached(threshold: int, window: float, period: float,
                                                      ts: list[float]) -> None:
    lo = Lockout(threshold=threshold, window=window, period=period)
    counted: list[float] = []  # model: failures since the last lock
    until = -math.inf
    for t in ts:
        locked_now = t < until
        result = lo.record_failure("k", t)
        if locked_now:
            assert result is None
            continue
        counted = [c for c in counted if c > t - window] + [t]
        if len(counted) >= threshold:
            assert result == period
            until, counted = t + period, []
        else:
            assert result is None
        assert (lo.locked("k", t) is not None) == (t < until)


# -- Backoff and HandshakeGuard (the DTLS failed-handshake policy)

def test_backoff_doubles_after_the_free_failures_up_to_the_cap() -> None:
    bo = Backoff(free=3, base=1, cap=5)
    assert [bo.record_failure("k", t) for t in (0, 0, 0)] == [None, None, None]
    assert bo.record_failure("k", 0) == 1 and bo.blocked("k", 0.5) == pytest.approx(0.5)
    assert bo.record_failure("k", 0.5) is None  # while blocked: not counted
    assert bo.record_failure("k", 1) == 2 and bo.record_failure("k", 3) == 4 and bo.record_failure("k", 7) == 5
    assert bo.blocked("k", 12) is None
    bo.reset("k")
    assert bo.record_failure("k", 12) is None and bo.failures("k") == 1


def test_backoff_forgets_and_stays_bounded() -> None:
    bo = Backoff(free=0, base=1, cap=4, max_keys=3)
    assert bo.record_failure("a", 0) == 1
    assert bo.blocked("a", 100) is None and len(bo) == 0  # 2 * cap after its last failure
    for k in "abcdef":
        bo.record_failure(k, 0)
    assert len(bo) == 3


def test_guard_failures_of_one_identity_never_refuse_another() -> None:
    guard = HandshakeGuard(Lockout(threshold=3, window=60, period=300), backoff_after=2)
    for t in range(20):  # a brute force on "victim" from one address, as fast as it is let through
        if guard.refused("10.0.0.1", b"victim", True, t) is None:
            guard.failed("10.0.0.1", b"victim", True, t)
        assert guard.refused("10.0.0.1", b"other", True, t) is None
        assert guard.refused("10.0.0.1", b"unknown", False, t) is None
    assert guard.refused("10.0.0.1", b"victim", True, 20) is not None
    assert guard.refused("10.0.0.2", b"victim", True, 20) is None  # the victim itself, from anywhere else


def test_guard_reports_an_identity_tried_from_many_addresses_and_refuses_nobody() -> None:
    """Anyone can read an identity off the wire: failures under it from elsewhere must not lock its device out."""
    guard = HandshakeGuard(Lockout(threshold=2, window=60, period=300))
    tripped = [guard.failed(f"10.0.1.{i}", b"dev", True, 0) for i in range(2)]  # two attackers
    assert tripped[-1] == [Tripped("identity", 2, 0.0)]  # reported, refuses nothing
    assert guard.refused("10.0.1.5", b"dev", True, 1) is None
    assert guard.refused("10.0.0.9", b"dev", True, 1) is None  # the device, wherever it comes from


def test_guard_counts_unknown_identities_per_address_only() -> None:
    guard = HandshakeGuard(Lockout(threshold=2, window=60, period=300))
    assert guard.failed("10.0.0.1", b"x1", False, 0) == []
    (tripped,) = guard.failed("10.0.0.1", b"x2", False, 0)
    assert tripped.scope == "address" and guard.address_locked("10.0.0.1", 1) is not None
    assert guard.refused("10.0.0.1", b"x3", False, 1) is not None
    assert guard.refused("10.0.0.1", b"dev", True, 1) is None  # known identities are not concerned


def test_report_throttle_reports_once_per_interval_with_the_count_held_back() -> None:
    throttle = ReportThrottle(every=10, max_keys=2)
    assert throttle.due("a", 0) == 0
    assert [throttle.due("a", t) for t in (1, 2, 9.9)] == [None, None, None]
    assert throttle.due("b", 5) == 0  # keys are apart
    assert throttle.due("a", 10) == 3 and throttle.due("a", 11) is None
    throttle.due("c", 12)  # a third key: the least recently reported ("b") is forgotten
    assert throttle.due("b", 13) == 0 and len(throttle._keys) == 2

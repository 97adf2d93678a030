"""The pure core of a firmware campaign: wave planning, the policy, and what to do next given a snapshot.

A *campaign* rolls a release out to a list of targets in waves: wave 0 is the canary, then up to ``Policy.waves``
growing waves. The I/O shell (:mod:`lwm2m_server.fota.campaigns`) keeps the campaign and its jobs in a database and
calls :func:`decide` with a :class:`CampaignView` (a snapshot of those rows) and the time ``now``; it carries out the
:class:`Decision` and calls again. Nothing here keeps state between calls or reads the clock, so a shell that
crashed and reloaded its rows gets the same decision again (replay is safe).

Rules of :func:`decide` (``counted`` = jobs minus skipped ones; ``bad`` = failed + rolled back):

* Final campaigns (halted, cancelled, completed) come back unchanged; created and paused ones start, open and expire
  nothing. A running campaign with no wave opened opens wave 0 at ``now``.
* Halt when ``bad / counted`` over the opened waves exceeds ``error_threshold``, or when every job of the newest
  opened wave is terminal and it stays below its success threshold. A halting decision opens, starts and expires
  nothing (``open_waves`` is the snapshot's).
* Wave k+1 opens at ``now`` once wave k has ``succeeded >= ceil(success_threshold * counted_k)``; several waves may
  open in one call. All waves opened and every job terminal: completed.
* Start pending, reachable jobs of opened waves whose ``not_before`` has come, in wave then job order, at most
  ``max_parallel`` minus the active jobs (campaign-wide).
* A pending job of an opened wave expires (the shell fails it as offline) once ``device_timeout`` has passed since
  its wave opened -- or since its ``not_before``, when that is later: waiting out a retry back-off is not being
  offline. A job started in a decision is never expired by it.
* An active job (delivering, downloaded, updating) whose ``deadline`` has come is *overdue*, in every campaign
  state: the shell ends the try as a timeout (:func:`classify_failure` ``timed_out``: transient, retried while
  tries remain). Its ``max_parallel`` slot is free in the same decision. The shell sets the deadline when a job
  enters a phase: ``now + phase_timeout(policy, state, package_size)``.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from enum import StrEnum

from firmware_object.errors import UpdateResult

__all__ = [
    "ACTIVE",
    "DEFAULT_CANARY_PERCENT",
    "FINAL_CAMPAIGN_STATES",
    "MAX_TRANSMIT_WAIT",
    "TERMINAL",
    "CampaignState",
    "CampaignView",
    "Decision",
    "FailureKind",
    "InvalidAttemptsError",
    "InvalidPolicyError",
    "InvalidSnapshotError",
    "JobState",
    "JobView",
    "Policy",
    "WaveStats",
    "choose_delivery",
    "classify_failure",
    "decide",
    "phase_timeout",
    "plan_waves",
    "retry_at",
    "unverified_components",
    "wave_stats",
]

DEFAULT_CANARY_PERCENT = 5.0
MAX_TRANSMIT_WAIT = 93.0  # RFC 7252 4.8.2: the longest a confirmable exchange can take before it is given up
BLOCK_ALLOWANCE = 6.0  # seconds per 1 KiB block delivered: two retransmissions' worth (2 s + 4 s, RFC 7252 4.2)
INSTALL_ALLOWANCE = 300.0  # seconds for a device to verify, install and reboot into a new image
_EPSILON = 1e-9  # absorbs float noise in threshold * count (0.7 * 10 == 7.000000000000001)


class JobState(StrEnum):
    """The state of one device's update within a campaign."""

    PENDING = "pending"
    DELIVERING = "delivering"
    DOWNLOADED = "downloaded"
    UPDATING = "updating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled-back"
    SKIPPED = "skipped"


TERMINAL: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.ROLLED_BACK, JobState.SKIPPED}
)
ACTIVE: frozenset[JobState] = frozenset({JobState.DELIVERING, JobState.DOWNLOADED, JobState.UPDATING})


_PHASE_TIMEOUTS = {JobState.DELIVERING: "delivering_timeout", JobState.DOWNLOADED: "downloaded_timeout",
                   JobState.UPDATING: "updating_timeout"}


class CampaignState(StrEnum):
    """The state of a campaign; halted, cancelled and completed are final."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


FINAL_CAMPAIGN_STATES: frozenset[CampaignState] = frozenset(
    {CampaignState.HALTED, CampaignState.CANCELLED, CampaignState.COMPLETED}
)


class InvalidPolicyError(ValueError):
    """A policy (or a target list planned with it) that cannot be used; the message names the bad field."""


class InvalidSnapshotError(ValueError):
    """A :class:`CampaignView` that contradicts itself (a job in a wave that was never planned, ...)."""


class InvalidAttemptsError(ValueError):
    """:func:`retry_at` asked about fewer than one try."""


# ---------------------------------------------------------------------------------------------------------- policy


def _int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPolicyError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise InvalidPolicyError(f"{name} must be at least {minimum}, not {value}")
    return value


def _float(name: str, value: object, low: float, high: float = math.inf, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPolicyError(f"{name} must be a number, not {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidPolicyError(f"{name} must be finite, not {value!r}")
    if number < low or (low_open and number == low) or number > high:
        left = "(" if low_open else "["
        right = "]" if math.isfinite(high) else ")"
        raise InvalidPolicyError(f"{name} must lie in {left}{low:g}, {high:g}{right}, not {value!r}")
    return number


@dataclass(frozen=True)
class Policy:
    """How a campaign rolls out. Validated at construction (:class:`InvalidPolicyError`); floats are stored as float.

    Invariants: at most one of ``canary`` (>= 1) and ``canary_percent`` (0 < p <= 100) is set, neither means
    :data:`DEFAULT_CANARY_PERCENT`; ``waves``, ``max_parallel``, ``max_attempts`` >= 1; both thresholds in [0, 1];
    0 <= ``backoff_base`` <= ``backoff_max``; ``device_timeout`` and the three phase timeouts
    (``delivering_timeout``, ``downloaded_timeout``, ``updating_timeout``) are None or > 0 (None: the default of
    :func:`phase_timeout`).
    """

    canary: int | None = None
    canary_percent: float | None = None
    waves: int = 3
    success_threshold: float = 0.9
    error_threshold: float = 0.2
    max_parallel: int = 50
    max_attempts: int = 3
    backoff_base: float = 5.0
    backoff_max: float = 300.0
    device_timeout: float | None = None
    delivering_timeout: float | None = None
    downloaded_timeout: float | None = None
    updating_timeout: float | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        if self.canary is not None and self.canary_percent is not None:
            raise InvalidPolicyError("canary and canary_percent: give one of them, not both")
        if self.canary is not None:
            _int("canary", self.canary, 1)
        if self.canary_percent is not None:
            put("canary_percent", _float("canary_percent", self.canary_percent, 0.0, 100.0, low_open=True))
        _int("waves", self.waves, 1)
        put("success_threshold", _float("success_threshold", self.success_threshold, 0.0, 1.0))
        put("error_threshold", _float("error_threshold", self.error_threshold, 0.0, 1.0))
        _int("max_parallel", self.max_parallel, 1)
        _int("max_attempts", self.max_attempts, 1)
        put("backoff_base", _float("backoff_base", self.backoff_base, 0.0))
        put("backoff_max", _float("backoff_max", self.backoff_max, 0.0))
        if self.backoff_max < self.backoff_base:
            raise InvalidPolicyError(
                f"backoff_max ({self.backoff_max:g}) must not be below backoff_base ({self.backoff_base:g})"
            )
        for name in ("device_timeout", *_PHASE_TIMEOUTS.values()):
            value = getattr(self, name)
            if value is not None:
                put(name, _float(name, value, 0.0, low_open=True))

    def as_dict(self) -> dict[str, object]:
        """Every field by name, JSON-native (None for unset options); :meth:`from_dict` reads it back equal."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Policy:
        """The policy ``data`` describes; missing fields take their default, unknown ones are refused."""
        if not isinstance(data, Mapping):
            raise InvalidPolicyError(f"a policy is a mapping of field names to values, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise InvalidPolicyError(f"unknown policy field(s): {', '.join(unknown)}")
        default = cls()

        def get(name: str) -> object:
            return data.get(name, getattr(default, name))

        def opt_int(name: str) -> int | None:
            value = get(name)
            return None if value is None else _int(name, value, 1)

        def opt_float(name: str) -> float | None:
            value = get(name)
            return None if value is None else _float(name, value, -math.inf)

        def num(name: str) -> float:
            return _float(name, get(name), -math.inf)

        return cls(
            canary=opt_int("canary"),
            canary_percent=opt_float("canary_percent"),
            waves=_int("waves", get("waves"), 1),
            success_threshold=num("success_threshold"),
            error_threshold=num("error_threshold"),
            max_parallel=_int("max_parallel", get("max_parallel"), 1),
            max_attempts=_int("max_attempts", get("max_attempts"), 1),
            backoff_base=num("backoff_base"),
            backoff_max=num("backoff_max"),
            device_timeout=opt_float("device_timeout"),
            delivering_timeout=opt_float("delivering_timeout"),
            downloaded_timeout=opt_float("downloaded_timeout"),
            updating_timeout=opt_float("updating_timeout"),
        )

    def canary_size(self, targets: int) -> int:
        """Canary devices among ``targets``: ``canary``, or the percentage rounded up; within [1, targets]."""
        if self.canary is not None:
            size = self.canary
        else:
            percent = DEFAULT_CANARY_PERCENT if self.canary_percent is None else self.canary_percent
            size = math.ceil(percent * targets / 100 - _EPSILON)
        return max(1, min(targets, size))


def phase_timeout(policy: Policy, state: JobState, package_size: int) -> float:
    """How long a job may stay in the active ``state`` before it is overdue: the policy's ``<state>_timeout``, or

    * delivering: ``MAX_TRANSMIT_WAIT + BLOCK_ALLOWANCE * ceil(package_size / 1024)`` (one exchange lost outright,
      and two retransmissions for every block);
    * downloaded: ``2 * MAX_TRANSMIT_WAIT`` (the Execute of /5/0/2 and its answer);
    * updating: ``2 * MAX_TRANSMIT_WAIT + INSTALL_ALLOWANCE`` (install, reboot, and the Register that follows).

    A 4 KiB package gets 117 s to be delivered, 32 KiB 285 s, 1 MiB 1 h 44 min. Raises ValueError for a state
    that is not active.
    """
    if state not in _PHASE_TIMEOUTS:
        raise ValueError(f"{state.value} is not an active job state")
    configured = getattr(policy, _PHASE_TIMEOUTS[state])
    if configured is not None:
        return float(configured)
    if state is JobState.DELIVERING:
        return MAX_TRANSMIT_WAIT + BLOCK_ALLOWANCE * math.ceil(max(0, package_size) / 1024)
    if state is JobState.DOWNLOADED:
        return 2 * MAX_TRANSMIT_WAIT
    return 2 * MAX_TRANSMIT_WAIT + INSTALL_ALLOWANCE


def plan_waves(targets: Sequence[str], policy: Policy) -> list[list[str]]:
    """Split ``targets`` into waves: the canary, then up to ``policy.waves`` waves that double in size.

    Invariants: the waves concatenated are ``targets`` in order; no wave is empty; waves after the canary never
    shrink (a wave whose remainder would be smaller than itself takes the remainder; the last takes the rest).
    Duplicate or no targets raise :class:`InvalidPolicyError`.
    """
    if not targets:
        raise InvalidPolicyError("targets: a campaign needs at least one target")
    duplicates = sorted(t for t, n in Counter(targets).items() if n > 1)
    if duplicates:
        shown = ", ".join(duplicates[:5]) + (", ..." if len(duplicates) > 5 else "")
        raise InvalidPolicyError(f"targets: {len(duplicates)} listed more than once ({shown})")
    canary = policy.canary_size(len(targets))
    plan = [list(targets[:canary])]
    position, previous = canary, canary
    while position < len(targets):
        rest = len(targets) - position
        size = min(rest, 2 * previous)
        if len(plan) == policy.waves or rest - size < size:
            size = rest  # the last allowed wave, or a remainder too small to make a wave of its own
        plan.append(list(targets[position:position + size]))
        position, previous = position + size, size
    return plan


# ------------------------------------------------------------------------------------------------------ snapshots


@dataclass(frozen=True)
class JobView:
    """One device's job as stored: its wave, state, tries so far, the earliest time it may start again, and (an
    active job) the time its phase must have ended by."""

    endpoint: str
    wave: int
    state: JobState
    attempts: int = 0
    not_before: float | None = None
    deadline: float | None = None


@dataclass(frozen=True)
class CampaignView:
    """A snapshot of a campaign. Invariants (:class:`InvalidSnapshotError`): ``waves`` >= 1, at most ``waves``
    opening times, every job in a planned wave, each endpoint once."""

    state: CampaignState
    policy: Policy
    waves: int
    opened_at: tuple[float, ...]
    jobs: tuple[JobView, ...]

    def __post_init__(self) -> None:
        if self.waves < 1:
            raise InvalidSnapshotError(f"a campaign has at least one wave, not {self.waves}")
        if len(self.opened_at) > self.waves:
            raise InvalidSnapshotError(f"{len(self.opened_at)} waves opened of {self.waves} planned")
        endpoints: set[str] = set()
        for job in self.jobs:
            if not 0 <= job.wave < self.waves:
                raise InvalidSnapshotError(f"job {job.endpoint!r} is in wave {job.wave} of {self.waves} planned")
            if job.endpoint in endpoints:
                raise InvalidSnapshotError(f"job {job.endpoint!r} appears more than once")
            endpoints.add(job.endpoint)


@dataclass(frozen=True)
class WaveStats:
    """Job counts of one wave; ``size`` is the sum of the six state counts."""

    wave: int
    size: int
    pending: int
    active: int
    succeeded: int
    failed: int
    rolled_back: int
    skipped: int

    @property
    def counted(self) -> int:
        """Jobs that count towards the thresholds: all but the skipped ones."""
        return self.size - self.skipped

    @property
    def bad(self) -> int:
        """Failed and rolled-back jobs."""
        return self.failed + self.rolled_back

    @property
    def finished(self) -> bool:
        """Whether every job of the wave is terminal."""
        return self.pending == 0 and self.active == 0


def wave_stats(view: CampaignView) -> list[WaveStats]:
    """Counts for each planned wave (opened or not), in wave order."""
    counts = [dict.fromkeys(JobState, 0) for _ in range(view.waves)]
    for job in view.jobs:
        counts[job.wave][job.state] += 1
    return [
        WaveStats(
            wave=w,
            size=sum(c.values()),
            pending=c[JobState.PENDING],
            active=sum(c[s] for s in ACTIVE),
            succeeded=c[JobState.SUCCEEDED],
            failed=c[JobState.FAILED],
            rolled_back=c[JobState.ROLLED_BACK],
            skipped=c[JobState.SKIPPED],
        )
        for w, c in enumerate(counts)
    ]


# ------------------------------------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Decision:
    """What the shell does next. ``open_waves`` replaces the stored ``opened_at``; ``start`` and ``expire`` are
    disjoint pending jobs of opened waves; ``overdue`` are the active jobs whose deadline has come; ``reason`` is
    set exactly when ``state`` differs from the snapshot's; ``next_wakeup`` is the earliest future time at which
    a decision may differ (a back-off or a timeout ending, a deadline)."""

    state: CampaignState
    open_waves: tuple[float, ...]
    start: tuple[str, ...]
    expire: tuple[str, ...]
    reason: str | None
    next_wakeup: float | None
    overdue: tuple[str, ...] = ()


def _pct(ratio: float) -> str:
    return f"{round(ratio * 100, 1):g} %"


def _wave_name(wave: int) -> str:
    return "wave 0 (canary)" if wave == 0 else f"wave {wave}"


def _needed(threshold: float, counted: int) -> int:
    """Successes a wave of ``counted`` jobs needs to let the next wave open."""
    return max(0, math.ceil(threshold * counted - _EPSILON))


def _halt(view: CampaignView, stats: list[WaveStats], opened: int) -> str | None:
    """Why the campaign halts with ``opened`` waves open, or None."""
    policy = view.policy
    frontier = stats[opened - 1]
    bad = sum(s.bad for s in stats[:opened])
    counted = sum(s.counted for s in stats[:opened])
    if counted and bad / counted > policy.error_threshold:
        where = _wave_name(frontier.wave) if opened == 1 else f"{_wave_name(frontier.wave)} (waves 0-{opened - 1})"
        return (f"{where}: {bad} of {counted} jobs failed or rolled back ({_pct(bad / counted)}), "
                f"above the error threshold {_pct(policy.error_threshold)}")
    if frontier.finished and frontier.succeeded < _needed(policy.success_threshold, frontier.counted):
        return (f"{_wave_name(frontier.wave)}: {frontier.succeeded} of {frontier.counted} succeeded "
                f"({_pct(frontier.succeeded / frontier.counted)}), below the success threshold "
                f"{_pct(policy.success_threshold)}")
    return None


def decide(view: CampaignView, reachable: Callable[[str], bool], now: float) -> Decision:
    """The next step of the campaign ``view`` at time ``now`` (see the module docstring for the rules).

    A function of its arguments only: the same snapshot, predicate and ``now`` give the same decision. ``reachable``
    is asked only about pending jobs that could start now, while room remains under ``max_parallel``.
    """
    overdue = tuple(job.endpoint for job in view.jobs
                    if job.state in ACTIVE and job.deadline is not None and job.deadline <= now)
    deadlines = [job.deadline for job in view.jobs
                 if job.state in ACTIVE and job.deadline is not None and job.deadline > now]
    unchanged = Decision(view.state, view.opened_at, (), (), None, min(deadlines, default=None), overdue)
    if view.state is not CampaignState.RUNNING:
        return unchanged
    policy = view.policy
    stats = wave_stats(view)
    opened = list(view.opened_at) or [now]
    while True:
        why = _halt(view, stats, len(opened))
        if why is not None:
            return Decision(CampaignState.HALTED, view.opened_at, (), (), why, unchanged.next_wakeup, overdue)
        frontier = stats[len(opened) - 1]
        if frontier.succeeded < _needed(policy.success_threshold, frontier.counted) or len(opened) == view.waves:
            break
        opened.append(now)
    if len(opened) == view.waves and all(job.state in TERMINAL for job in view.jobs):
        return Decision(CampaignState.COMPLETED, tuple(opened), (), (), "completed", None)

    pending = sorted(
        (job for job in view.jobs if job.state is JobState.PENDING and job.wave < len(opened)),
        key=lambda job: job.wave,
    )  # stable: job order within a wave is kept
    room = policy.max_parallel - sum(1 for job in view.jobs if job.state in ACTIVE) + len(overdue)
    start: list[str] = []
    expire: list[str] = []
    wakeups: list[float] = deadlines
    for job in pending:
        due = job.not_before is None or job.not_before <= now
        if due and len(start) < room and reachable(job.endpoint):
            start.append(job.endpoint)
            continue
        if not due:
            assert job.not_before is not None
            wakeups.append(job.not_before)
        if policy.device_timeout is not None:
            since = opened[job.wave] if job.not_before is None else max(opened[job.wave], job.not_before)
            deadline = since + policy.device_timeout
            if deadline <= now:
                expire.append(job.endpoint)
            else:
                wakeups.append(deadline)
    return Decision(CampaignState.RUNNING, tuple(opened), tuple(start), tuple(expire), None,
                    min(wakeups, default=None), overdue)


# -------------------------------------------------------------------------------------------------------- failures


class FailureKind(StrEnum):
    """Whether trying a failed update again may help."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


_TRANSIENT_RESULTS = frozenset({UpdateResult.OUT_OF_RAM, UpdateResult.CONNECTION_LOST})
_PERMANENT_RESULTS = frozenset({
    UpdateResult.NOT_ENOUGH_FLASH, UpdateResult.INTEGRITY_CHECK_FAILURE, UpdateResult.UNSUPPORTED_PACKAGE_TYPE,
    UpdateResult.INVALID_URI, UpdateResult.UPDATE_FAILED, UpdateResult.UNSUPPORTED_PROTOCOL, UpdateResult.CANCELLED,
})
_TRANSIENT_COAP_CODES = frozenset({"4.08", "5.03"})  # Request Entity Incomplete, Service Unavailable


def classify_failure(update_result: int | None, *, timed_out: bool = False, connection_lost: bool = False,
                     coap_code: str | None = None) -> FailureKind:
    """Whether a failed try is worth repeating.

    A permanent Update Result the device reported (2, 5-10) wins over everything else: the package or the device
    is at fault, not the link. Otherwise Update Result 3 or 4, a timeout, a lost connection, or CoAP 4.08 / 5.03
    (``"4.08"`` form) are transient; anything else, unknown results included, is permanent.
    """
    result = UpdateResult.known(update_result)
    if result in _PERMANENT_RESULTS:
        return FailureKind.PERMANENT
    if (result in _TRANSIENT_RESULTS or timed_out or connection_lost
            or (coap_code is not None and coap_code.strip() in _TRANSIENT_COAP_CODES)):
        return FailureKind.TRANSIENT
    return FailureKind.PERMANENT


def _jitter(endpoint: str, attempts: int) -> float:
    """A number in [0, 0.25) fixed by (endpoint, attempts), the same in every process."""
    digest = hashlib.sha256(f"{endpoint}\x00{attempts}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53 * 0.25


def retry_at(attempts: int, policy: Policy, now: float, endpoint: str) -> float | None:
    """When to try ``endpoint`` again after ``attempts`` (>= 1) tries, or None when no try is left.

    ``now + min(backoff_max, backoff_base * 2**(attempts-1)) * (1 + j)`` with ``j`` in [0, 0.25) from
    :func:`_jitter`, so the delay never exceeds ``1.25 * backoff_max`` and restarts agree.
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise InvalidAttemptsError(f"retry_at needs the number of tries made (>= 1), not {attempts!r}")
    if attempts >= policy.max_attempts:
        return None
    exponent = attempts - 1
    delay = policy.backoff_max if exponent > 1000 else min(policy.backoff_max, policy.backoff_base * 2.0**exponent)
    return now + delay * (1 + _jitter(endpoint, attempts))


def choose_delivery(version: str | None, delta_bases: Mapping[str, Mapping[str, str]],
                    installed: Mapping[str, str] | None, *, delta_failed: bool) -> str | None:
    """The base version of the delta to send a device, or None for the full package.

    ``delta_bases`` maps each base version a delta exists from to the digests (SHA-256 hex, by component name)
    the delta expects installed; ``version`` is what the device runs (/3/0/3); ``installed`` the digests it
    reports per component (object 32700; None when it reports none). A delta is chosen only when one exists from
    ``version``, no delta try of this job failed (``delta_failed``: after a failed delta, always the full package),
    and every digest the device reports for a component the delta patches is the delta's base (a device that does
    not report digests gets the delta: its own check of the base refuses a mismatch, and the fallback follows).
    """
    if version is None or delta_failed or version not in delta_bases:
        return None
    if installed is not None:
        for name, base in delta_bases[version].items():
            if name in installed and installed[name].lower() != base.lower():
                return None
    return version


def unverified_components(expected: Mapping[str, str], reported: Sequence[Mapping[str, object]] | None) -> str:
    """What is wrong with the components a device reports (object 32700: dicts with ``name`` and ``digest``, hex)
    against a system release's ``expected`` digests (name -> SHA-256 hex): "" when each expected component is
    there with its digest, or when nothing is expected (not a system release); otherwise one short phrase per
    wrong component. Images and data files alike: this is how a campaign verifies a data file it delivered."""
    if not expected:
        return ""
    if reported is None:
        return "no components (object 32700 could not be read)"
    held = {str(c.get("name")): c.get("digest") for c in reported}
    wrong = [f"{name} {'missing' if name not in held else 'with another digest'}"
             for name, digest in expected.items() if not isinstance(held.get(name), str)
             or str(held[name]).lower() != digest.lower()]
    return "; ".join(wrong)

"""The LwM2M Object 5 (Firmware Update) state machine: events in, effects out.

Pure and table-driven, after h11's ``_state.py``: no clock, no I/O. The shell (a simulated device, or a server that
mirrors one) tells :class:`FirmwareUpdate` what happened as an *event* together with the time ``now`` (Unix seconds),
and carries out the *effects* it gets back. An event the current state does not take raises
:class:`~firmware_object.errors.InvalidTransitionError` (CoAP 4.05) and changes nothing.

Transitions (``_TRANSITIONS``; ``[guard]``, ``/ effects``; DL = Downloading, DLD = Downloaded, UPD = Updating)::

    Idle  PackageWriteStarted                  -> DL    result 0
    Idle  UriWritten(uri) [uri usable]         -> DL    result 0                 / StartDownload(uri)
    Idle  UriWritten(uri) [bad syntax|scheme]  -> Idle  result 7 | 9
    *     PackageCleared | UriCleared          -> Idle  result 0                 / cleanup   (* = all but UPD)
    DL    PackageWritten [push]                -> DLD   result 0   (auto: -> UPD / StartUpdate)
    DL    DownloadCompleted [pull]             -> DLD   result 0   (auto: -> UPD / StartUpdate)
    DL    DownloadFailed(r)                    -> Idle  result r                 / DiscardPackage
    DL    CancelExecuted                       -> Idle  result 10                / AbortDownload, DiscardPackage
    DLD   UpdateExecuted(defer) [may defer]    -> DLD   result 11                / ScheduleDeferredUpdate(at)
    DLD   UpdateExecuted(defer) [otherwise]    -> UPD   result 0                 / StartUpdate
    DLD   DeferralExpired [deferred]           -> UPD   result 0                 / StartUpdate
    DLD   DeferredUpdateAccepted [deferred]    -> UPD   result 0                 / StartUpdate
    DLD   CancelExecuted                       -> Idle  result 10                / DiscardPackage
    UPD   UpdateSucceeded                      -> Idle  result 1
    UPD   UpdateFailed(r, keep_package=False)  -> Idle  result r                 / DiscardPackage
    UPD   UpdateFailed(r, keep_package=True)   -> DLD   result r

"cleanup" is AbortDownload + DiscardPackage from DL, DiscardPackage from DLD, nothing from Idle. Whenever a pending
deferral ends (update starts, reset, cancel) the effects begin with CancelDeferredUpdate.

Invariants (checked by :class:`FirmwareUpdateSnapshot` on every transition):

* Downloading and Updating always have result INITIAL: starting a download or an update resets it (OMA /5/0/5).
* SUCCESS and CANCELLED occur only in Idle; DEFERRED only in Downloaded, and exactly when ``deferred_until`` is set.
* Downloaded has result INITIAL, DEFERRED, or the failure of an update that kept its package.
* ``last_state_change_time`` is set to ``now`` whenever, and only when, the State changes.

Decisions where the OMA text is silent:

* A Package URI that is not a usable absolute URI (RFC 3986 scheme, a host, ASCII, at most 255 characters) sets result
  INVALID_URI (7); one whose scheme the device does not support sets UNSUPPORTED_PROTOCOL (9). The Write itself
  succeeds and the state stays Idle ("errors are reported only by the Update Result"); the URI is not kept.
* A push always passes through Downloading: the shell sends PackageWriteStarted then PackageWritten, even when the
  package came in one request. Downloading remembers push or pull (``package_uri`` is empty for a push), and a
  PackageWritten during a pull, or a DownloadCompleted during a push, is refused.
* Writing a new Package or Package URI while Downloading or Downloaded is refused: reset (empty write) first.
* Cancel in Idle is refused (4.05): there is nothing to cancel, and accepting would overwrite the result the server
  has yet to read (SUCCESS, or why the last attempt failed). OMA: "has already completed installation" -> 4.05.
* Deferral happens only when the user asks (``UpdateExecuted(defer=True)``), ``max_defer_period > 0`` and severity is
  not CRITICAL; otherwise the update starts at once. The window opens at the first deferral and never grows: a
  further deferral inside it changes nothing, one after it starts the update. Writes of Severity or Maximum Defer
  Period do not touch a deferral already running. DeferralExpired is trusted whatever ``now`` says (the shell's
  timer is the authority).
* UpdateSucceeded leaves the package to the shell (it was consumed by the installation): no DiscardPackage.
* UpdateFailed defaults to Idle. ``keep_package=True`` (back to Downloaded, ready for another Update) is refused with
  INTEGRITY_CHECK_FAILURE or UNSUPPORTED_PACKAGE_TYPE: OMA sends integrity failures to Idle, and a package of the
  wrong type cannot succeed on retry either.
* Automatic Upgrade at Download goes through Downloaded to Updating at once; it does not offer deferral.
* Cancel keeps ``package_uri`` (the server may read what it cancelled); a reset clears it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from types import MappingProxyType
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit

from firmware_object.errors import FirmwareError, InvalidTransitionError, State, UpdateResult

__all__ = [
    "ALLOWED_EVENTS",
    "DEFAULT_SUPPORTED_SCHEMES",
    "DOWNLOAD_FAILURE_RESULTS",
    "MAX_DEFER_PERIOD",
    "MAX_URI_LENGTH",
    "UPDATE_FAILURE_RESULTS",
    "AbortDownload",
    "CancelDeferredUpdate",
    "CancelExecuted",
    "DeferralExpired",
    "DeferredUpdateAccepted",
    "DiscardPackage",
    "DownloadCompleted",
    "DownloadFailed",
    "Effect",
    "Event",
    "FirmwareUpdate",
    "FirmwareUpdateSnapshot",
    "PackageCleared",
    "PackageWriteStarted",
    "PackageWritten",
    "ScheduleDeferredUpdate",
    "Severity",
    "StartDownload",
    "StartUpdate",
    "UpdateExecuted",
    "UpdateFailed",
    "UpdateSucceeded",
    "UriCleared",
    "UriWritten",
    "package_uri_problem",
]


class Severity(IntEnum):
    """Object 5 Severity (/5/0/11); OMA calls them Critical, Mandatory and Optional. The default is MAJOR (1)."""

    CRITICAL = 0
    MAJOR = 1
    MINOR = 2


DEFAULT_SUPPORTED_SCHEMES: Final = ("coap", "coaps")
"""URI schemes a device fetches from unless told otherwise (Firmware Update Protocol Support 0 and 1)."""

MAX_URI_LENGTH: Final = 255
"""Package URI range (/5/0/1 is a String of 0..255)."""

MAX_DEFER_PERIOD: Final = 2**32 - 1
"""Largest Maximum Defer Period accepted, in seconds (a 32-bit unsigned integer: 136 years)."""

DOWNLOAD_FAILURE_RESULTS: Final = frozenset(UpdateResult(v) for v in range(2, 10))
"""Results a download (push or pull) may fail with: 2..9. 8 covers e.g. an anti-rollback refusal at download."""

UPDATE_FAILURE_RESULTS: Final = frozenset(
    {
        UpdateResult.NOT_ENOUGH_FLASH,
        UpdateResult.OUT_OF_RAM,
        UpdateResult.INTEGRITY_CHECK_FAILURE,
        UpdateResult.UNSUPPORTED_PACKAGE_TYPE,
        UpdateResult.UPDATE_FAILED,
    }
)
"""Results an installation may fail with (the download-only ones, 4, 7 and 9, are excluded)."""

_PACKAGE_UNUSABLE: Final = frozenset({UpdateResult.INTEGRITY_CHECK_FAILURE, UpdateResult.UNSUPPORTED_PACKAGE_TYPE})
_KEPT_PACKAGE_RESULTS: Final = UPDATE_FAILURE_RESULTS - _PACKAGE_UNUSABLE

_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")


# --------------------------------------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class PackageWriteStarted:
    """The first block of a push (Write of /5/0/0) arrived."""


@dataclass(frozen=True, slots=True)
class PackageWritten:
    """The push finished: the device holds the whole package (and has checked it, if it checks at download)."""


@dataclass(frozen=True, slots=True)
class PackageCleared:
    """An empty Package was written to /5/0/0: reset the state machine."""


@dataclass(frozen=True, slots=True)
class UriWritten:
    """A non-empty Package URI was written to /5/0/1. An empty one is :class:`UriCleared`."""

    uri: str

    def __post_init__(self) -> None:
        if not self.uri:
            raise ValueError("an empty Package URI is a reset: send UriCleared()")


@dataclass(frozen=True, slots=True)
class UriCleared:
    """An empty string was written to /5/0/1: reset the state machine."""


@dataclass(frozen=True, slots=True)
class DownloadCompleted:
    """The pull download finished: the device holds the whole package."""


@dataclass(frozen=True, slots=True)
class DownloadFailed:
    """The download (push or pull) failed; ``result`` says why (one of :data:`DOWNLOAD_FAILURE_RESULTS`)."""

    result: UpdateResult

    def __post_init__(self) -> None:
        object.__setattr__(self, "result", _failure(self.result, DOWNLOAD_FAILURE_RESULTS, "a download"))

    @classmethod
    def from_error(cls, error: FirmwareError) -> DownloadFailed:
        """The event for a :class:`FirmwareError` raised while receiving or checking the package."""
        return cls(error.update_result)


@dataclass(frozen=True, slots=True)
class UpdateExecuted:
    """Execute of /5/0/2 (Update). ``defer``: the device's user chose to put the update off."""

    defer: bool = False


@dataclass(frozen=True, slots=True)
class DeferralExpired:
    """The shell's timer for a deferred update (:class:`ScheduleDeferredUpdate`) fired."""


@dataclass(frozen=True, slots=True)
class DeferredUpdateAccepted:
    """The device's user approved an update they had deferred (OMA: "once a user accepted the firmware update")."""


@dataclass(frozen=True, slots=True)
class UpdateSucceeded:
    """The new firmware is installed and running (typically reported after the reboot)."""


@dataclass(frozen=True, slots=True)
class UpdateFailed:
    """The installation failed with ``result`` (one of :data:`UPDATE_FAILURE_RESULTS`).

    ``keep_package``: the package is still good, so go back to Downloaded (another Update may be tried) rather than
    Idle. Not allowed with INTEGRITY_CHECK_FAILURE or UNSUPPORTED_PACKAGE_TYPE.
    """

    result: UpdateResult = UpdateResult.UPDATE_FAILED
    keep_package: bool = False

    def __post_init__(self) -> None:
        result = _failure(self.result, UPDATE_FAILURE_RESULTS, "an update")
        if self.keep_package and result in _PACKAGE_UNUSABLE:
            raise ValueError(f"a package that failed with {result.name} cannot be kept")
        object.__setattr__(self, "result", result)

    @classmethod
    def from_error(cls, error: FirmwareError, *, keep_package: bool = False) -> UpdateFailed:
        """The event for a :class:`FirmwareError` raised while installing."""
        return cls(error.update_result, keep_package)


@dataclass(frozen=True, slots=True)
class CancelExecuted:
    """Execute of /5/0/10 (Cancel)."""


Event: TypeAlias = (
    PackageWriteStarted
    | PackageWritten
    | PackageCleared
    | UriWritten
    | UriCleared
    | DownloadCompleted
    | DownloadFailed
    | UpdateExecuted
    | DeferralExpired
    | DeferredUpdateAccepted
    | UpdateSucceeded
    | UpdateFailed
    | CancelExecuted
)


def _failure(result: int, allowed: frozenset[UpdateResult], what: str) -> UpdateResult:
    value = UpdateResult(result)
    if value not in allowed:
        raise ValueError(f"{value.name} ({int(value)}) is not a result {what} can fail with")
    return value


# -------------------------------------------------------------------------------------------------------- effects
@dataclass(frozen=True, slots=True)
class StartDownload:
    """Fetch the package from ``uri``; answer with DownloadCompleted or DownloadFailed."""

    uri: str


@dataclass(frozen=True, slots=True)
class AbortDownload:
    """Stop the transfer in progress: the pull download, or the reassembly of a block-wise push."""


@dataclass(frozen=True, slots=True)
class DiscardPackage:
    """Delete the stored (or partly stored) package."""


@dataclass(frozen=True, slots=True)
class StartUpdate:
    """Install the stored package; answer (after a reboot, if need be) with UpdateSucceeded or UpdateFailed."""


@dataclass(frozen=True, slots=True)
class ScheduleDeferredUpdate:
    """Send DeferralExpired at Unix time ``at`` unless told CancelDeferredUpdate first."""

    at: int


@dataclass(frozen=True, slots=True)
class CancelDeferredUpdate:
    """Drop the timer set by ScheduleDeferredUpdate."""


Effect: TypeAlias = (
    StartDownload | AbortDownload | DiscardPackage | StartUpdate | ScheduleDeferredUpdate | CancelDeferredUpdate
)


# ------------------------------------------------------------------------------------------------------- snapshot
def package_uri_problem(uri: str, supported_schemes: Iterable[str] = DEFAULT_SUPPORTED_SCHEMES) -> UpdateResult | None:
    """Why a device would refuse ``uri`` as a Package URI: INVALID_URI, UNSUPPORTED_PROTOCOL, or None if usable.

    Usable: ASCII, at most :data:`MAX_URI_LENGTH` characters, no white space, an RFC 3986 scheme, a host and a valid
    port; and the scheme (case-insensitive) among ``supported_schemes``.
    """
    if not uri or len(uri) > MAX_URI_LENGTH or not uri.isascii() or not uri.isprintable() or " " in uri:
        return UpdateResult.INVALID_URI
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises ValueError for a port that is not a number in 0..65535
    except ValueError:
        return UpdateResult.INVALID_URI
    if not _SCHEME.match(parts.scheme) or not parts.hostname:
        return UpdateResult.INVALID_URI
    if parts.scheme.lower() not in {s.lower() for s in supported_schemes}:
        return UpdateResult.UNSUPPORTED_PROTOCOL
    return None


@dataclass(frozen=True, slots=True)
class FirmwareUpdateSnapshot:
    """Everything :class:`FirmwareUpdate` holds, frozen: what a device persists across a reboot.

    Built from plain values too (``FirmwareUpdateSnapshot(**json.loads(text))`` after ``dataclasses.asdict``): ints
    become enums and a list of schemes a sorted tuple. Raises ValueError for values out of range or a combination
    the state machine never produces (see the module invariants).
    """

    state: State = State.IDLE
    result: UpdateResult = UpdateResult.INITIAL
    package_uri: str = ""
    severity: Severity = Severity.MAJOR
    max_defer_period: int = 0
    last_state_change_time: int | None = None
    deferred_until: int | None = None
    automatic_upgrade: bool = False
    supported_schemes: tuple[str, ...] = DEFAULT_SUPPORTED_SCHEMES

    def __post_init__(self) -> None:
        state, result = State(self.state), UpdateResult(self.result)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "result", result)
        object.__setattr__(self, "severity", Severity(self.severity))
        object.__setattr__(self, "supported_schemes", _schemes(self.supported_schemes))
        _check_int("max_defer_period", self.max_defer_period, 0, MAX_DEFER_PERIOD)
        for name in ("last_state_change_time", "deferred_until"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 0, None)
        if not isinstance(self.automatic_upgrade, bool):
            raise ValueError(f"automatic_upgrade must be a bool, not {self.automatic_upgrade!r}")
        if not isinstance(self.package_uri, str) or len(self.package_uri) > MAX_URI_LENGTH:
            raise ValueError(f"package_uri must be a string of at most {MAX_URI_LENGTH} characters")
        if state in (State.DOWNLOADING, State.UPDATING) and result is not UpdateResult.INITIAL:
            raise ValueError(f"result must be INITIAL while {state.name}, not {result.name}")
        if result in (UpdateResult.SUCCESS, UpdateResult.CANCELLED) and state is not State.IDLE:
            raise ValueError(f"result {result.name} occurs only in IDLE, not {state.name}")
        if (result is UpdateResult.DEFERRED) != (self.deferred_until is not None):
            raise ValueError("deferred_until is set exactly when the result is DEFERRED")
        allowed_downloaded = {UpdateResult.INITIAL, UpdateResult.DEFERRED, *_KEPT_PACKAGE_RESULTS}
        if state is State.DOWNLOADED and result not in allowed_downloaded:
            raise ValueError(f"result {result.name} does not occur in DOWNLOADED")
        if result is UpdateResult.DEFERRED and state is not State.DOWNLOADED:
            raise ValueError(f"result DEFERRED occurs only in DOWNLOADED, not {state.name}")


def _check_int(name: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound}, not {value!r}")


def _schemes(schemes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(schemes, str):
        raise ValueError("supported_schemes is a collection of schemes, not one string")
    result = tuple(sorted({s.lower() for s in schemes}))
    for scheme in result:
        if not _SCHEME.match(scheme):
            raise ValueError(f"{scheme!r} is not a URI scheme")
    return result


# ------------------------------------------------------------------------------------------------------- handlers
_Outcome: TypeAlias = tuple[FirmwareUpdateSnapshot, tuple[Effect, ...]]
_Handler: TypeAlias = Callable[[FirmwareUpdateSnapshot, Any, int], _Outcome]


def _refusal(state: State, event: object, why: str = "") -> InvalidTransitionError:
    reason = f": {why}" if why else ""
    return InvalidTransitionError(f"{type(event).__name__} is not allowed in state {state.name}{reason} (4.05)")


def _to(s: FirmwareUpdateSnapshot, state: State, now: int, **changes: Any) -> FirmwareUpdateSnapshot:
    """``s`` in ``state`` with ``changes``; the Last State Change Time moves to ``now`` only if the State changes."""
    stamp = now if state is not s.state else s.last_state_change_time
    return replace(s, state=state, last_state_change_time=stamp, **changes)


def _stop_deferral(s: FirmwareUpdateSnapshot) -> tuple[Effect, ...]:
    return (CancelDeferredUpdate(),) if s.deferred_until is not None else ()


def _cleanup(s: FirmwareUpdateSnapshot) -> tuple[Effect, ...]:
    """What leaving ``s.state`` for Idle without installing requires of the shell."""
    if s.state is State.DOWNLOADING:
        return (AbortDownload(), DiscardPackage())
    if s.state is State.DOWNLOADED:
        return (*_stop_deferral(s), DiscardPackage())
    return ()


def _start_update(s: FirmwareUpdateSnapshot, now: int) -> _Outcome:
    started = _to(s, State.UPDATING, now, result=UpdateResult.INITIAL, deferred_until=None)
    return started, (*_stop_deferral(s), StartUpdate())


def _downloaded(s: FirmwareUpdateSnapshot, now: int) -> _Outcome:
    done = _to(s, State.DOWNLOADED, now, result=UpdateResult.INITIAL)
    return _start_update(done, now) if s.automatic_upgrade else (done, ())


def _start_push(s: FirmwareUpdateSnapshot, event: PackageWriteStarted, now: int) -> _Outcome:
    return _to(s, State.DOWNLOADING, now, result=UpdateResult.INITIAL, package_uri=""), ()


def _write_uri(s: FirmwareUpdateSnapshot, event: UriWritten, now: int) -> _Outcome:
    problem = package_uri_problem(event.uri, s.supported_schemes)
    if problem is not None:
        return replace(s, result=problem, package_uri=""), ()
    started = _to(s, State.DOWNLOADING, now, result=UpdateResult.INITIAL, package_uri=event.uri)
    return started, (StartDownload(event.uri),)


def _reset(s: FirmwareUpdateSnapshot, event: PackageCleared | UriCleared, now: int) -> _Outcome:
    idle = _to(s, State.IDLE, now, result=UpdateResult.INITIAL, package_uri="", deferred_until=None)
    return idle, _cleanup(s)


def _cancel(s: FirmwareUpdateSnapshot, event: CancelExecuted, now: int) -> _Outcome:
    return _to(s, State.IDLE, now, result=UpdateResult.CANCELLED, deferred_until=None), _cleanup(s)


def _finish_push(s: FirmwareUpdateSnapshot, event: PackageWritten, now: int) -> _Outcome:
    if s.package_uri:
        raise _refusal(s.state, event, f"a pull from {s.package_uri} is in progress, not a push")
    return _downloaded(s, now)


def _finish_pull(s: FirmwareUpdateSnapshot, event: DownloadCompleted, now: int) -> _Outcome:
    if not s.package_uri:
        raise _refusal(s.state, event, "a push is in progress, not a pull")
    return _downloaded(s, now)


def _fail_download(s: FirmwareUpdateSnapshot, event: DownloadFailed, now: int) -> _Outcome:
    return _to(s, State.IDLE, now, result=event.result), (DiscardPackage(),)


def _execute_update(s: FirmwareUpdateSnapshot, event: UpdateExecuted, now: int) -> _Outcome:
    may_defer = s.max_defer_period > 0 and s.severity is not Severity.CRITICAL
    if event.defer and may_defer:
        if s.deferred_until is None:
            at = now + s.max_defer_period
            return replace(s, result=UpdateResult.DEFERRED, deferred_until=at), (ScheduleDeferredUpdate(at),)
        if now < s.deferred_until:
            return s, ()  # deferred again inside the window: the window does not grow
    return _start_update(s, now)


def _end_deferral(s: FirmwareUpdateSnapshot, event: DeferralExpired | DeferredUpdateAccepted, now: int) -> _Outcome:
    if s.deferred_until is None:
        raise _refusal(s.state, event, "no update is deferred")
    return _start_update(s, now)


def _succeed_update(s: FirmwareUpdateSnapshot, event: UpdateSucceeded, now: int) -> _Outcome:
    return _to(s, State.IDLE, now, result=UpdateResult.SUCCESS), ()


def _fail_update(s: FirmwareUpdateSnapshot, event: UpdateFailed, now: int) -> _Outcome:
    if event.keep_package:
        return _to(s, State.DOWNLOADED, now, result=event.result), ()
    return _to(s, State.IDLE, now, result=event.result), (DiscardPackage(),)


_TRANSITIONS: Final[Mapping[tuple[State, type[Event]], _Handler]] = MappingProxyType(
    {
        (State.IDLE, PackageWriteStarted): _start_push,
        (State.IDLE, UriWritten): _write_uri,
        (State.IDLE, PackageCleared): _reset,
        (State.IDLE, UriCleared): _reset,
        (State.DOWNLOADING, PackageWritten): _finish_push,
        (State.DOWNLOADING, DownloadCompleted): _finish_pull,
        (State.DOWNLOADING, DownloadFailed): _fail_download,
        (State.DOWNLOADING, PackageCleared): _reset,
        (State.DOWNLOADING, UriCleared): _reset,
        (State.DOWNLOADING, CancelExecuted): _cancel,
        (State.DOWNLOADED, UpdateExecuted): _execute_update,
        (State.DOWNLOADED, DeferralExpired): _end_deferral,
        (State.DOWNLOADED, DeferredUpdateAccepted): _end_deferral,
        (State.DOWNLOADED, PackageCleared): _reset,
        (State.DOWNLOADED, UriCleared): _reset,
        (State.DOWNLOADED, CancelExecuted): _cancel,
        (State.UPDATING, UpdateSucceeded): _succeed_update,
        (State.UPDATING, UpdateFailed): _fail_update,
    }
)

ALLOWED_EVENTS: Final[Mapping[State, frozenset[type[Event]]]] = MappingProxyType(
    {state: frozenset(kind for (at, kind) in _TRANSITIONS if at is state) for state in State}
)
"""The event types each State takes (some under a guard, e.g. DeferralExpired only while a deferral runs)."""


# -------------------------------------------------------------------------------------------------------- machine
class FirmwareUpdate:
    """One Object 5 instance: its resources' values and the transitions between them.

    ``handle`` is the only way the State and Update Result change. A refused event raises and changes nothing; an
    accepted one replaces the whole (immutable) snapshot at once, so no half-applied transition is ever visible.
    """

    __slots__ = ("_snapshot",)

    def __init__(
        self,
        *,
        severity: Severity = Severity.MAJOR,
        max_defer_period: int = 0,
        automatic_upgrade: bool = False,
        supported_schemes: Iterable[str] = DEFAULT_SUPPORTED_SCHEMES,
        state: State = State.IDLE,
        result: UpdateResult = UpdateResult.INITIAL,
        package_uri: str = "",
        last_state_change_time: int | None = None,
        deferred_until: int | None = None,
    ) -> None:
        """A fresh instance (Idle, result INITIAL) by default; any consistent set of values otherwise (ValueError)."""
        self._snapshot = FirmwareUpdateSnapshot(
            state=state,
            result=result,
            package_uri=package_uri,
            severity=severity,
            max_defer_period=max_defer_period,
            last_state_change_time=last_state_change_time,
            deferred_until=deferred_until,
            automatic_upgrade=automatic_upgrade,
            supported_schemes=_schemes(supported_schemes),
        )

    @classmethod
    def restore(cls, snapshot: FirmwareUpdateSnapshot) -> FirmwareUpdate:
        """The machine as it was when ``snapshot`` was taken (e.g. after a reboot while Updating).

        If ``deferred_until`` is set, the shell must schedule DeferralExpired again: timers do not survive a reboot.
        """
        machine = cls.__new__(cls)
        machine._snapshot = snapshot
        return machine

    def snapshot(self) -> FirmwareUpdateSnapshot:
        """All values, frozen; ``FirmwareUpdate.restore(m.snapshot())`` behaves exactly like ``m``."""
        return self._snapshot

    def handle(self, event: Event, now: int) -> tuple[Effect, ...]:
        """Apply ``event``, which happened at Unix time ``now``; return what the shell must do, in order.

        Raises InvalidTransitionError (CoAP 4.05) if the current State does not take ``event``, and ValueError if
        ``now`` is not a non-negative integer; either way nothing changes.
        """
        _check_int("now", now, 0, None)
        state = self._snapshot.state
        handler = _TRANSITIONS.get((state, type(event)))
        if handler is None:
            raise _refusal(state, event)
        self._snapshot, effects = handler(self._snapshot, event, now)
        return effects

    def accepts(self, event_type: type[Event]) -> bool:
        """Whether the current State has a row for ``event_type`` (a guard may still refuse the event)."""
        return event_type in ALLOWED_EVENTS[self._snapshot.state]

    # Writable resources. Each raises ValueError (the shell answers 4.00 Bad Request) for a value out of range.
    def set_severity(self, value: int) -> None:
        """Write /5/0/11: 0 (critical), 1 or 2. Applies to the next Update, not to a deferral already running."""
        _check_int("severity", value, Severity.CRITICAL, Severity.MINOR)
        self._snapshot = replace(self._snapshot, severity=Severity(value))

    def set_max_defer_period(self, seconds: int) -> None:
        """Write /5/0/13: seconds a user may defer, 0 = no deferral. Applies to the next deferral."""
        _check_int("max_defer_period", seconds, 0, MAX_DEFER_PERIOD)
        self._snapshot = replace(self._snapshot, max_defer_period=seconds)

    def set_automatic_upgrade(self, enabled: bool) -> None:
        """Write /5/0/14: install as soon as a download completes. Applies to the next completed download."""
        if not isinstance(enabled, bool):
            raise ValueError(f"automatic_upgrade must be a bool, not {enabled!r}")
        self._snapshot = replace(self._snapshot, automatic_upgrade=enabled)

    # Readable values.
    @property
    def state(self) -> State:
        """/5/0/3."""
        return self._snapshot.state

    @property
    def result(self) -> UpdateResult:
        """/5/0/5."""
        return self._snapshot.result

    @property
    def package_uri(self) -> str:
        """/5/0/1; empty during (and after) a push and after a reset."""
        return self._snapshot.package_uri

    @property
    def severity(self) -> Severity:
        """/5/0/11."""
        return self._snapshot.severity

    @property
    def max_defer_period(self) -> int:
        """/5/0/13, in seconds; 0 = deferral not allowed."""
        return self._snapshot.max_defer_period

    @property
    def last_state_change_time(self) -> int | None:
        """/5/0/12, Unix seconds; None until the State first changes."""
        return self._snapshot.last_state_change_time

    @property
    def deferred_until(self) -> int | None:
        """When a deferred update starts by itself (Unix seconds); set exactly while the result is DEFERRED."""
        return self._snapshot.deferred_until

    @property
    def automatic_upgrade(self) -> bool:
        """/5/0/14."""
        return self._snapshot.automatic_upgrade

    @property
    def supported_schemes(self) -> tuple[str, ...]:
        """URI schemes this device downloads from (lower case, sorted); others give UNSUPPORTED_PROTOCOL."""
        return self._snapshot.supported_schemes

    def __repr__(self) -> str:
        s = self._snapshot
        return f"<FirmwareUpdate {s.state.name} result={s.result.name} uri={s.package_uri!r}>"

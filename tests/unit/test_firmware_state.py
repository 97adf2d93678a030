"""The Object 5 state machine: every table row, every refusal, the OMA scenarios, and a stateful property test."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from collections.abc import Callable
from pathlib import Path

import defusedxml.ElementTree as DefusedET
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from firmware_object.errors import (
    InvalidTransitionError,
    RollbackError,
    SignatureError,
    State,
    SuitDecodeError,
    UpdateResult,
)
from firmware_object.update_state import (
    ALLOWED_EVENTS,
    DOWNLOAD_FAILURE_RESULTS,
    MAX_DEFER_PERIOD,
    UPDATE_FAILURE_RESULTS,
    AbortDownload,
    CancelDeferredUpdate,
    CancelExecuted,
    DeferralExpired,
    DeferredUpdateAccepted,
    DiscardPackage,
    DownloadCompleted,
    DownloadFailed,
    Effect,
    Event,
    FirmwareUpdate,
    FirmwareUpdateSnapshot,
    PackageCleared,
    PackageWriteStarted,
    PackageWritten,
    ScheduleDeferredUpdate,
    Severity,
    StartDownload,
    StartUpdate,
    UpdateExecuted,
    UpdateFailed,
    UpdateSucceeded,
    UriCleared,
    UriWritten,
    package_uri_problem,
)
from lwm2m_server.core.errors import CoapCode

R = UpdateResult
URI = "coaps://fw.example.org/releases/1.2.0.suit"
T0 = 1_700_000_000  # when the setups below start
T1 = T0 + 1_000  # when the event under test happens
HOUR = 3600

# -------------------------------------------------------------------------------------------------------- setups


def idle(**config: typing.Any) -> FirmwareUpdate:
    return FirmwareUpdate(**config)


def idle_after_failure(**config: typing.Any) -> FirmwareUpdate:
    fw = downloading_pull(**config)
    fw.handle(DownloadFailed(R.CONNECTION_LOST), T0 + 5)
    return fw


def idle_after_success(**config: typing.Any) -> FirmwareUpdate:
    fw = updating(**config)
    fw.handle(UpdateSucceeded(), T0 + 30)
    return fw


def downloading_push(**config: typing.Any) -> FirmwareUpdate:
    fw = FirmwareUpdate(**config)
    fw.handle(PackageWriteStarted(), T0)
    return fw


def downloading_pull(**config: typing.Any) -> FirmwareUpdate:
    fw = FirmwareUpdate(**config)
    fw.handle(UriWritten(URI), T0)
    return fw


def downloaded(**config: typing.Any) -> FirmwareUpdate:
    fw = downloading_pull(**config)
    fw.handle(DownloadCompleted(), T0 + 10)
    return fw


def deferred(**config: typing.Any) -> FirmwareUpdate:
    fw = downloaded(max_defer_period=HOUR, **config)
    fw.handle(UpdateExecuted(defer=True), T0 + 20)
    return fw


def downloaded_after_failure(**config: typing.Any) -> FirmwareUpdate:
    fw = updating(**config)
    fw.handle(UpdateFailed(R.UPDATE_FAILED, keep_package=True), T0 + 30)
    return fw


def updating(**config: typing.Any) -> FirmwareUpdate:
    fw = downloaded(**config)
    fw.handle(UpdateExecuted(), T0 + 20)
    return fw


SETUPS: dict[str, Callable[..., FirmwareUpdate]] = {
    f.__name__: f
    for f in (
        idle,
        idle_after_failure,
        idle_after_success,
        downloading_push,
        downloading_pull,
        downloaded,
        deferred,
        downloaded_after_failure,
        updating,
    )
}

SAMPLE_EVENTS: list[Event] = [
    PackageWriteStarted(),
    PackageWritten(),
    PackageCleared(),
    UriWritten(URI),
    UriCleared(),
    DownloadCompleted(),
    DownloadFailed(R.CONNECTION_LOST),
    UpdateExecuted(),
    UpdateExecuted(defer=True),
    DeferralExpired(),
    DeferredUpdateAccepted(),
    UpdateSucceeded(),
    UpdateFailed(),
    UpdateFailed(keep_package=True),
    CancelExecuted(),
]


def test_setups_reach_what_they_say() -> None:
    expected = {
        "idle": (State.IDLE, R.INITIAL),
        "idle_after_failure": (State.IDLE, R.CONNECTION_LOST),
        "idle_after_success": (State.IDLE, R.SUCCESS),
        "downloading_push": (State.DOWNLOADING, R.INITIAL),
        "downloading_pull": (State.DOWNLOADING, R.INITIAL),
        "downloaded": (State.DOWNLOADED, R.INITIAL),
        "deferred": (State.DOWNLOADED, R.DEFERRED),
        "downloaded_after_failure": (State.DOWNLOADED, R.UPDATE_FAILED),
        "updating": (State.UPDATING, R.INITIAL),
    }
    assert {name: (f().state, f().result) for name, f in SETUPS.items()} == expected


def test_sample_events_cover_every_event_type() -> None:
    assert {type(e) for e in SAMPLE_EVENTS} == set(typing.get_args(Event))


# ------------------------------------------------------------------------------------------------ the table rows

ROWS: list[tuple[str, Event, State, UpdateResult, tuple[Effect, ...]]] = [
    ("idle", PackageWriteStarted(), State.DOWNLOADING, R.INITIAL, ()),
    ("idle_after_success", PackageWriteStarted(), State.DOWNLOADING, R.INITIAL, ()),
    ("idle", UriWritten(URI), State.DOWNLOADING, R.INITIAL, (StartDownload(URI),)),
    ("idle_after_failure", UriWritten(URI), State.DOWNLOADING, R.INITIAL, (StartDownload(URI),)),
    ("idle", UriWritten("fw.example.org/fw.bin"), State.IDLE, R.INVALID_URI, ()),
    ("idle", UriWritten("https://fw.example.org/fw.bin"), State.IDLE, R.UNSUPPORTED_PROTOCOL, ()),
    ("idle", PackageCleared(), State.IDLE, R.INITIAL, ()),
    ("idle", UriCleared(), State.IDLE, R.INITIAL, ()),
    ("idle_after_failure", PackageCleared(), State.IDLE, R.INITIAL, ()),
    ("idle_after_success", UriCleared(), State.IDLE, R.INITIAL, ()),
    ("downloading_push", PackageWritten(), State.DOWNLOADED, R.INITIAL, ()),
    ("downloading_pull", DownloadCompleted(), State.DOWNLOADED, R.INITIAL, ()),
    ("downloading_push", DownloadFailed(R.NOT_ENOUGH_FLASH), State.IDLE, R.NOT_ENOUGH_FLASH, (DiscardPackage(),)),
    ("downloading_pull", DownloadFailed(R.CONNECTION_LOST), State.IDLE, R.CONNECTION_LOST, (DiscardPackage(),)),
    ("downloading_push", PackageCleared(), State.IDLE, R.INITIAL, (AbortDownload(), DiscardPackage())),
    ("downloading_pull", UriCleared(), State.IDLE, R.INITIAL, (AbortDownload(), DiscardPackage())),
    ("downloading_pull", PackageCleared(), State.IDLE, R.INITIAL, (AbortDownload(), DiscardPackage())),
    ("downloading_push", CancelExecuted(), State.IDLE, R.CANCELLED, (AbortDownload(), DiscardPackage())),
    ("downloading_pull", CancelExecuted(), State.IDLE, R.CANCELLED, (AbortDownload(), DiscardPackage())),
    ("downloaded", UpdateExecuted(), State.UPDATING, R.INITIAL, (StartUpdate(),)),
    ("downloaded", UpdateExecuted(defer=True), State.UPDATING, R.INITIAL, (StartUpdate(),)),  # max period 0
    ("downloaded_after_failure", UpdateExecuted(), State.UPDATING, R.INITIAL, (StartUpdate(),)),
    ("deferred", UpdateExecuted(), State.UPDATING, R.INITIAL, (CancelDeferredUpdate(), StartUpdate())),
    ("deferred", UpdateExecuted(defer=True), State.DOWNLOADED, R.DEFERRED, ()),  # still inside the window
    ("deferred", DeferralExpired(), State.UPDATING, R.INITIAL, (CancelDeferredUpdate(), StartUpdate())),
    ("deferred", DeferredUpdateAccepted(), State.UPDATING, R.INITIAL, (CancelDeferredUpdate(), StartUpdate())),
    ("downloaded", PackageCleared(), State.IDLE, R.INITIAL, (DiscardPackage(),)),
    ("downloaded", UriCleared(), State.IDLE, R.INITIAL, (DiscardPackage(),)),
    ("deferred", PackageCleared(), State.IDLE, R.INITIAL, (CancelDeferredUpdate(), DiscardPackage())),
    ("deferred", UriCleared(), State.IDLE, R.INITIAL, (CancelDeferredUpdate(), DiscardPackage())),
    ("downloaded_after_failure", UriCleared(), State.IDLE, R.INITIAL, (DiscardPackage(),)),
    ("downloaded", CancelExecuted(), State.IDLE, R.CANCELLED, (DiscardPackage(),)),
    ("deferred", CancelExecuted(), State.IDLE, R.CANCELLED, (CancelDeferredUpdate(), DiscardPackage())),
    ("downloaded_after_failure", CancelExecuted(), State.IDLE, R.CANCELLED, (DiscardPackage(),)),
    ("updating", UpdateSucceeded(), State.IDLE, R.SUCCESS, ()),
    ("updating", UpdateFailed(), State.IDLE, R.UPDATE_FAILED, (DiscardPackage(),)),
    ("updating", UpdateFailed(R.INTEGRITY_CHECK_FAILURE), State.IDLE, R.INTEGRITY_CHECK_FAILURE, (DiscardPackage(),)),
    ("updating", UpdateFailed(R.UPDATE_FAILED, keep_package=True), State.DOWNLOADED, R.UPDATE_FAILED, ()),
]


@pytest.mark.parametrize(
    ("setup", "event", "state", "result", "effects"),
    ROWS,
    ids=[f"{row[0]}-{type(row[1]).__name__}-{i}" for i, row in enumerate(ROWS)],
)
def test_table_row(setup: str, event: Event, state: State, result: UpdateResult, effects: tuple[Effect, ...]) -> None:
    fw = SETUPS[setup]()
    before = fw.snapshot()
    assert fw.handle(event, T1) == effects
    assert (fw.state, fw.result) == (state, result)
    expected_stamp = T1 if state is not before.state else before.last_state_change_time
    assert fw.last_state_change_time == expected_stamp
    assert (fw.deferred_until is not None) == (result is R.DEFERRED)


def test_rows_cover_the_whole_table() -> None:
    covered = {(SETUPS[setup]().state, type(event)) for setup, event, *_ in ROWS}
    table = {(state, kind) for state, kinds in ALLOWED_EVENTS.items() for kind in kinds}
    assert covered == table


def test_allowed_events_per_state() -> None:
    resets = {PackageCleared, UriCleared}
    assert ALLOWED_EVENTS[State.IDLE] == {PackageWriteStarted, UriWritten, *resets}
    assert ALLOWED_EVENTS[State.DOWNLOADING] == {
        PackageWritten,
        DownloadCompleted,
        DownloadFailed,
        CancelExecuted,
        *resets,
    }
    assert ALLOWED_EVENTS[State.DOWNLOADED] == {
        UpdateExecuted,
        DeferralExpired,
        DeferredUpdateAccepted,
        CancelExecuted,
        *resets,
    }
    assert ALLOWED_EVENTS[State.UPDATING] == {UpdateSucceeded, UpdateFailed}
    assert downloaded().accepts(UpdateExecuted) and not idle().accepts(UpdateExecuted)


# ----------------------------------------------------------------------------------------------------- refusals

REFUSED = [
    (setup, event)
    for setup, make in SETUPS.items()
    for event in SAMPLE_EVENTS
    if type(event) not in ALLOWED_EVENTS[make().state]
]
GUARDED = [
    ("downloading_pull", PackageWritten(), "pull"),
    ("downloading_push", DownloadCompleted(), "push"),
    ("downloaded", DeferralExpired(), "no update is deferred"),
    ("downloaded", DeferredUpdateAccepted(), "no update is deferred"),
    ("downloaded_after_failure", DeferralExpired(), "no update is deferred"),
]


def assert_refused(fw: FirmwareUpdate, event: Event, *words: str) -> None:
    before = fw.snapshot()
    with pytest.raises(InvalidTransitionError) as caught:
        fw.handle(event, T1)
    assert caught.value.coap_code is CoapCode.METHOD_NOT_ALLOWED
    assert caught.value.coap_code.dotted == "4.05"
    message = str(caught.value)
    assert type(event).__name__ in message and before.state.name in message
    for word in words:
        assert word in message
    assert fw.snapshot() == before


@pytest.mark.parametrize(
    ("setup", "event"), REFUSED, ids=[f"{s}-{type(e).__name__}-{i}" for i, (s, e) in enumerate(REFUSED)]
)
def test_refused_transition_changes_nothing(setup: str, event: Event) -> None:
    assert_refused(SETUPS[setup](), event)


@pytest.mark.parametrize(("setup", "event", "why"), GUARDED, ids=[f"{s}-{type(e).__name__}" for s, e, _ in GUARDED])
def test_refused_by_guard_changes_nothing(setup: str, event: Event, why: str) -> None:
    assert_refused(SETUPS[setup](), event, why)


@pytest.mark.parametrize(
    ("setup", "event"),
    [
        ("updating", PackageCleared()),  # a reset is refused while Updating
        ("updating", UriCleared()),
        ("updating", CancelExecuted()),  # OMA: Cancel while installing -> Method Not Allowed
        ("idle", UpdateExecuted()),  # Update is executable only in Downloaded
        ("downloading_pull", UpdateExecuted()),
        ("updating", UpdateExecuted()),
        ("idle", CancelExecuted()),  # decision: nothing to cancel
        ("idle_after_success", CancelExecuted()),  # OMA: "has already completed installation"
        ("downloading_pull", UriWritten(URI)),  # a second download while one runs
        ("downloaded", PackageWriteStarted()),  # a new package over the one held: reset first
    ],
)
def test_refusals_the_oma_text_requires(setup: str, event: Event) -> None:
    assert_refused(SETUPS[setup](), event)


def test_an_object_that_is_no_event_is_refused() -> None:
    assert_refused(idle(), typing.cast(Event, object()))


# ---------------------------------------------------------------------------------------------------- scenarios


def test_push_happy_path() -> None:
    fw = FirmwareUpdate()
    assert (fw.state, fw.result, fw.last_state_change_time) == (State.IDLE, R.INITIAL, None)
    assert fw.handle(PackageWriteStarted(), 100) == ()
    assert (fw.state, fw.package_uri, fw.last_state_change_time) == (State.DOWNLOADING, "", 100)
    assert fw.handle(PackageWritten(), 160) == ()
    assert (fw.state, fw.last_state_change_time) == (State.DOWNLOADED, 160)
    assert fw.handle(UpdateExecuted(), 200) == (StartUpdate(),)
    assert (fw.state, fw.result, fw.last_state_change_time) == (State.UPDATING, R.INITIAL, 200)
    assert fw.handle(UpdateSucceeded(), 260) == ()
    assert (fw.state, fw.result, fw.last_state_change_time) == (State.IDLE, R.SUCCESS, 260)


def test_pull_happy_path() -> None:
    fw = FirmwareUpdate()
    assert fw.handle(UriWritten(URI), 100) == (StartDownload(URI),)
    assert (fw.state, fw.package_uri) == (State.DOWNLOADING, URI)
    assert fw.handle(DownloadCompleted(), 150) == ()
    assert fw.handle(UpdateExecuted(), 200) == (StartUpdate(),)
    assert fw.handle(UpdateSucceeded(), 300) == ()
    assert (fw.state, fw.result, fw.package_uri, fw.last_state_change_time) == (State.IDLE, R.SUCCESS, URI, 300)


def test_a_new_download_resets_the_result_of_the_last_one() -> None:
    fw = idle_after_success()
    fw.handle(UriWritten(URI), T1)
    assert (fw.state, fw.result) == (State.DOWNLOADING, R.INITIAL)
    fw = idle_after_failure()
    fw.handle(PackageWriteStarted(), T1)
    assert (fw.state, fw.result, fw.package_uri) == (State.DOWNLOADING, R.INITIAL, "")


@pytest.mark.parametrize("reset", [PackageCleared(), UriCleared()], ids=["empty-package", "empty-uri"])
@pytest.mark.parametrize("setup", [name for name, make in SETUPS.items() if make().state is not State.UPDATING])
def test_reset_by_empty_package_or_uri(setup: str, reset: Event) -> None:
    fw = SETUPS[setup]()
    effects = fw.handle(reset, T1)
    assert (fw.state, fw.result, fw.package_uri, fw.deferred_until) == (State.IDLE, R.INITIAL, "", None)
    if SETUPS[setup]().state is not State.IDLE:
        assert DiscardPackage() in effects


def test_reset_keeps_the_configuration() -> None:
    fw = deferred(severity=Severity.MINOR, automatic_upgrade=False, supported_schemes=["COAPS"])
    fw.handle(UriCleared(), T1)
    assert (fw.severity, fw.max_defer_period, fw.supported_schemes) == (Severity.MINOR, HOUR, ("coaps",))


def test_cancel_while_downloading_and_downloaded() -> None:
    fw = downloading_pull()
    assert fw.handle(CancelExecuted(), T1) == (AbortDownload(), DiscardPackage())
    assert (fw.state, fw.result, fw.package_uri) == (State.IDLE, R.CANCELLED, URI)
    fw = downloaded()
    assert fw.handle(CancelExecuted(), T1) == (DiscardPackage(),)
    assert (fw.state, fw.result) == (State.IDLE, R.CANCELLED)
    # after a cancel, a new download may start at once
    assert fw.handle(UriWritten(URI), T1 + 1) == (StartDownload(URI),)
    assert fw.result is R.INITIAL


def test_cancel_refused_while_updating() -> None:
    assert_refused(updating(), CancelExecuted())


def test_deferral_within_max_period() -> None:
    fw = downloaded(max_defer_period=HOUR)
    assert fw.handle(UpdateExecuted(defer=True), 1_000) == (ScheduleDeferredUpdate(1_000 + HOUR),)
    assert (fw.state, fw.result, fw.deferred_until) == (State.DOWNLOADED, R.DEFERRED, 1_000 + HOUR)
    assert fw.last_state_change_time == T0 + 10  # the State did not change
    # a second deferral inside the window changes nothing: the window never grows
    assert fw.handle(UpdateExecuted(defer=True), 2_000) == ()
    assert fw.deferred_until == 1_000 + HOUR
    # the timer fires: the update starts without asking
    assert fw.handle(DeferralExpired(), 1_000 + HOUR) == (CancelDeferredUpdate(), StartUpdate())
    assert (fw.state, fw.result, fw.snapshot().deferred_until) == (State.UPDATING, R.INITIAL, None)
    assert fw.last_state_change_time == 1_000 + HOUR


def test_deferral_asked_after_the_window_starts_the_update() -> None:
    fw = downloaded(max_defer_period=HOUR)
    fw.handle(UpdateExecuted(defer=True), 1_000)
    assert fw.handle(UpdateExecuted(defer=True), 1_000 + HOUR) == (CancelDeferredUpdate(), StartUpdate())
    assert fw.state is State.UPDATING


def test_deferral_ended_by_a_later_update_or_the_user() -> None:
    fw = deferred()
    assert fw.handle(UpdateExecuted(defer=False), T1) == (CancelDeferredUpdate(), StartUpdate())
    fw = deferred()
    assert fw.handle(DeferredUpdateAccepted(), T1) == (CancelDeferredUpdate(), StartUpdate())
    assert (fw.state, fw.result) == (State.UPDATING, R.INITIAL)


def test_deferral_not_allowed_without_max_period() -> None:
    fw = downloaded(max_defer_period=0)
    assert fw.handle(UpdateExecuted(defer=True), T1) == (StartUpdate(),)
    assert (fw.state, fw.result, fw.deferred_until) == (State.UPDATING, R.INITIAL, None)


def test_critical_update_is_never_deferred() -> None:
    fw = downloaded(max_defer_period=HOUR, severity=Severity.CRITICAL)
    assert fw.handle(UpdateExecuted(defer=True), T1) == (StartUpdate(),)
    assert fw.state is State.UPDATING


@pytest.mark.parametrize("severity", [Severity.MAJOR, Severity.MINOR])
def test_non_critical_update_may_be_deferred(severity: Severity) -> None:
    fw = downloaded(max_defer_period=60, severity=severity)
    assert fw.handle(UpdateExecuted(defer=True), T1) == (ScheduleDeferredUpdate(T1 + 60),)


def test_configuration_writes_do_not_touch_a_running_deferral() -> None:
    fw = deferred()
    until = fw.deferred_until
    fw.set_severity(Severity.CRITICAL)
    fw.set_max_defer_period(10 * HOUR)
    assert (fw.result, fw.deferred_until) == (R.DEFERRED, until)


@pytest.mark.parametrize("start", [downloading_push, downloading_pull], ids=["push", "pull"])
def test_automatic_upgrade_at_download(start: Callable[..., FirmwareUpdate]) -> None:
    fw = start(automatic_upgrade=True, max_defer_period=HOUR)
    done: Event = PackageWritten() if fw.package_uri == "" else DownloadCompleted()
    assert fw.handle(done, T1) == (StartUpdate(),)
    assert (fw.state, fw.result, fw.last_state_change_time) == (State.UPDATING, R.INITIAL, T1)
    assert fw.handle(UpdateSucceeded(), T1 + 60) == ()
    assert (fw.state, fw.result) == (State.IDLE, R.SUCCESS)


def test_automatic_upgrade_switched_on_while_downloading_applies_to_that_download() -> None:
    fw = downloading_pull()
    fw.set_automatic_upgrade(True)
    assert fw.handle(DownloadCompleted(), T1) == (StartUpdate(),)


@pytest.mark.parametrize("result", sorted(DOWNLOAD_FAILURE_RESULTS))
@pytest.mark.parametrize("start", [downloading_push, downloading_pull], ids=["push", "pull"])
def test_download_failure_goes_to_idle_with_its_result(
    start: Callable[..., FirmwareUpdate], result: UpdateResult
) -> None:
    fw = start()
    assert fw.handle(DownloadFailed(result), T1) == (DiscardPackage(),)
    assert (fw.state, fw.result, fw.last_state_change_time) == (State.IDLE, result, T1)


def test_download_failure_results_are_2_to_9() -> None:
    assert sorted(DOWNLOAD_FAILURE_RESULTS) == list(range(2, 10))
    installation_failures = {R.NOT_ENOUGH_FLASH, R.OUT_OF_RAM, R.INTEGRITY_CHECK_FAILURE, R.UNSUPPORTED_PACKAGE_TYPE}
    assert set(UPDATE_FAILURE_RESULTS) == installation_failures | {R.UPDATE_FAILED}


@pytest.mark.parametrize("result", sorted(UPDATE_FAILURE_RESULTS))
def test_update_failure_goes_to_idle_with_its_result(result: UpdateResult) -> None:
    fw = updating()
    assert fw.handle(UpdateFailed(result), T1) == (DiscardPackage(),)
    assert (fw.state, fw.result, fw.last_state_change_time) == (State.IDLE, result, T1)


@pytest.mark.parametrize("result", [R.UPDATE_FAILED, R.NOT_ENOUGH_FLASH, R.OUT_OF_RAM])
def test_update_failure_keeping_the_package_allows_a_retry(result: UpdateResult) -> None:
    fw = updating()
    assert fw.handle(UpdateFailed(result, keep_package=True), T1) == ()
    assert (fw.state, fw.result) == (State.DOWNLOADED, result)
    assert fw.handle(UpdateExecuted(), T1 + 10) == (StartUpdate(),)
    assert (fw.state, fw.result) == (State.UPDATING, R.INITIAL)  # the update start resets the result


@pytest.mark.parametrize("result", [R.INTEGRITY_CHECK_FAILURE, R.UNSUPPORTED_PACKAGE_TYPE])
def test_an_unusable_package_cannot_be_kept(result: UpdateResult) -> None:
    with pytest.raises(ValueError, match="cannot be kept"):
        UpdateFailed(result, keep_package=True)


def test_reboot_while_updating_then_report() -> None:
    fw = updating(max_defer_period=HOUR, severity=Severity.MINOR)
    stored = json.dumps(dataclasses.asdict(fw.snapshot()))
    outcomes: list[tuple[Event, State, UpdateResult]] = [
        (UpdateSucceeded(), State.IDLE, R.SUCCESS),
        (UpdateFailed(R.UPDATE_FAILED), State.IDLE, R.UPDATE_FAILED),
    ]
    for outcome, state, result in outcomes:
        rebooted = FirmwareUpdate.restore(FirmwareUpdateSnapshot(**json.loads(stored)))
        assert rebooted.snapshot() == fw.snapshot()
        assert (rebooted.state, rebooted.severity, rebooted.max_defer_period) == (State.UPDATING, Severity.MINOR, HOUR)
        rebooted.handle(outcome, T1)
        assert (rebooted.state, rebooted.result, rebooted.last_state_change_time) == (state, result, T1)


def test_reboot_while_deferred_keeps_the_deadline() -> None:
    fw = deferred()
    rebooted = FirmwareUpdate.restore(
        FirmwareUpdateSnapshot(**json.loads(json.dumps(dataclasses.asdict(fw.snapshot()))))
    )
    assert (rebooted.result, rebooted.deferred_until) == (R.DEFERRED, T0 + 20 + HOUR)
    assert rebooted.handle(DeferralExpired(), T1) == (CancelDeferredUpdate(), StartUpdate())


def test_constructor_rebuilds_from_fields() -> None:
    fw = deferred(severity=Severity.MINOR)
    fields = dataclasses.asdict(fw.snapshot())
    assert FirmwareUpdate(**fields).snapshot() == fw.snapshot()


# -------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "fields",
    [
        {"state": State.DOWNLOADING, "result": R.CONNECTION_LOST},  # a download runs with result 0
        {"state": State.UPDATING, "result": R.SUCCESS},
        {"state": State.DOWNLOADED, "result": R.SUCCESS},
        {"state": State.DOWNLOADED, "result": R.CANCELLED},
        {"state": State.DOWNLOADED, "result": R.INTEGRITY_CHECK_FAILURE},  # an integrity failure goes to Idle
        {"state": State.IDLE, "result": R.DEFERRED, "deferred_until": 5},
        {"state": State.DOWNLOADED, "result": R.DEFERRED},  # no deadline
        {"state": State.DOWNLOADED, "deferred_until": 5},  # a deadline without DEFERRED
        {"state": 7},
        {"result": 12},
        {"severity": 3},
        {"max_defer_period": -1},
        {"max_defer_period": MAX_DEFER_PERIOD + 1},
        {"last_state_change_time": -5},
        {"automatic_upgrade": 1},
        {"package_uri": "coap://h/" + "x" * 300},
        {"supported_schemes": "coap"},
        {"supported_schemes": ["co ap"]},
    ],
)
def test_inconsistent_snapshot_is_refused(fields: dict[str, typing.Any]) -> None:
    with pytest.raises(ValueError):
        FirmwareUpdateSnapshot(**fields)
    with pytest.raises(ValueError):
        FirmwareUpdate(**fields)


def test_snapshot_coerces_plain_values() -> None:
    stored: dict[str, typing.Any] = {"state": 2, "result": 11, "severity": 2, "deferred_until": 9}
    snap = FirmwareUpdateSnapshot(**stored, supported_schemes=typing.cast(tuple[str, ...], ["COAPS", "coap"]))
    assert (snap.state, snap.result, snap.severity) == (State.DOWNLOADED, R.DEFERRED, Severity.MINOR)
    assert snap.supported_schemes == ("coap", "coaps")


def test_severity_write() -> None:
    assert FirmwareUpdate().severity is Severity.MAJOR  # OMA default 1
    fw = FirmwareUpdate()
    fw.set_severity(0)
    assert fw.severity is Severity.CRITICAL
    for bad in (-1, 3, True):
        with pytest.raises(ValueError):
            fw.set_severity(bad)
    assert fw.snapshot().severity is Severity.CRITICAL  # a refused write changes nothing


def test_max_defer_period_write() -> None:
    fw = FirmwareUpdate()
    assert fw.max_defer_period == 0
    fw.set_max_defer_period(MAX_DEFER_PERIOD)
    assert fw.max_defer_period == MAX_DEFER_PERIOD
    for bad in (-1, MAX_DEFER_PERIOD + 1, False):
        with pytest.raises(ValueError):
            fw.set_max_defer_period(bad)
    assert fw.max_defer_period == MAX_DEFER_PERIOD


def test_automatic_upgrade_write() -> None:
    fw = FirmwareUpdate()
    fw.set_automatic_upgrade(True)
    assert fw.automatic_upgrade is True
    with pytest.raises(ValueError):
        fw.set_automatic_upgrade(typing.cast(bool, 1))


@pytest.mark.parametrize("now", [-1, True, 1.5])
def test_now_must_be_unix_seconds(now: typing.Any) -> None:
    fw = FirmwareUpdate()
    with pytest.raises(ValueError):
        fw.handle(PackageWriteStarted(), now)
    assert fw.snapshot() == FirmwareUpdateSnapshot()


def test_event_validation() -> None:
    with pytest.raises(ValueError, match="UriCleared"):
        UriWritten("")
    for result in (R.INITIAL, R.SUCCESS, R.CANCELLED, R.DEFERRED):
        with pytest.raises(ValueError):
            DownloadFailed(result)
        with pytest.raises(ValueError):
            UpdateFailed(result)
    for result in (R.CONNECTION_LOST, R.INVALID_URI, R.UNSUPPORTED_PROTOCOL):  # download-only results
        with pytest.raises(ValueError):
            UpdateFailed(result)
    assert DownloadFailed(typing.cast(UpdateResult, 4)).result is R.CONNECTION_LOST
    assert UpdateFailed().result is R.UPDATE_FAILED and UpdateFailed().keep_package is False


def test_events_from_firmware_errors() -> None:
    assert DownloadFailed.from_error(SignatureError("bad")) == DownloadFailed(R.INTEGRITY_CHECK_FAILURE)
    assert DownloadFailed.from_error(SuitDecodeError("x")) == DownloadFailed(R.UNSUPPORTED_PACKAGE_TYPE)
    assert UpdateFailed.from_error(RollbackError("old"), keep_package=True) == UpdateFailed(R.UPDATE_FAILED, True)


def test_events_and_effects_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        UriWritten(URI).uri = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ScheduleDeferredUpdate(5).at = 6  # type: ignore[misc]


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        (URI, None),
        ("coap://[2001:db8::1]:5683/fw", None),
        ("COAPS://fw.example.org/fw", None),
        ("coap://192.0.2.1/fw?v=2", None),
        ("https://fw.example.org/fw", R.UNSUPPORTED_PROTOCOL),
        ("ftp://fw.example.org/fw", R.UNSUPPORTED_PROTOCOL),
        ("fw.example.org/fw", R.INVALID_URI),
        ("coap:///fw", R.INVALID_URI),
        ("coap://fw.example.org:99999/fw", R.INVALID_URI),
        ("coap://fw.example.org/a b", R.INVALID_URI),
        ("coap://fw.example.org/\u00e9", R.INVALID_URI),
        ("coap://h/" + "x" * 246, None),  # 255 characters
        ("coap://h/" + "x" * 247, R.INVALID_URI),
        ("coap://[::1/fw", R.INVALID_URI),
        ("1coap://h/fw", R.INVALID_URI),
    ],
)
def test_package_uri_problem(uri: str, problem: UpdateResult | None) -> None:
    assert package_uri_problem(uri) is problem


def test_supported_schemes_decide_the_protocol() -> None:
    fw = FirmwareUpdate(supported_schemes=["coap", "https"])
    assert fw.handle(UriWritten("https://fw.example.org/fw"), T1) == (StartDownload("https://fw.example.org/fw"),)
    fw = FirmwareUpdate(supported_schemes=[])  # a push-only device
    fw.handle(UriWritten(URI), T1)
    assert (fw.state, fw.result, fw.package_uri, fw.last_state_change_time) == (
        State.IDLE,
        R.UNSUPPORTED_PROTOCOL,
        "",
        None,
    )


def test_enumerations_match_the_oma_object(reference: Path) -> None:
    root = DefusedET.parse(reference / "lwm2m-objects" / "5.xml").getroot()
    assert root is not None
    items = {int(item.get("ID", "")): item for item in root.iter("Item")}

    def labels(rid: int) -> dict[int, str]:
        text = items[rid].findtext("Description") or ""
        return {int(n): label.strip() for n, label in re.findall(r"^(\d+): ([^\n.(]+)", text, re.MULTILINE)}

    assert labels(11) == {0: "Critical", 1: "Mandatory", 2: "Optional"}
    assert sorted(labels(11)) == [int(s) for s in Severity]
    assert sorted(labels(3)) == [int(s) for s in State]
    assert sorted(labels(5)) == [int(r) for r in UpdateResult]


# ------------------------------------------------------------------------------------------- stateful property

URIS = [URI, "coap://[::1]:5683/fw", "https://fw.example.org/fw", "not a uri", "coap://h:70000/x"]
KEPT = [R.UPDATE_FAILED, R.NOT_ENOUGH_FLASH, R.OUT_OF_RAM]
EVENTS_OF_TYPE: dict[type, st.SearchStrategy[Event]] = {
    PackageWriteStarted: st.just(PackageWriteStarted()),
    PackageWritten: st.just(PackageWritten()),
    PackageCleared: st.just(PackageCleared()),
    UriWritten: st.builds(UriWritten, st.sampled_from(URIS)),
    UriCleared: st.just(UriCleared()),
    DownloadCompleted: st.just(DownloadCompleted()),
    DownloadFailed: st.builds(DownloadFailed, st.sampled_from(sorted(DOWNLOAD_FAILURE_RESULTS))),
    UpdateExecuted: st.builds(UpdateExecuted, st.booleans()),
    DeferralExpired: st.just(DeferralExpired()),
    DeferredUpdateAccepted: st.just(DeferredUpdateAccepted()),
    UpdateSucceeded: st.just(UpdateSucceeded()),
    UpdateFailed: st.one_of(
        st.builds(UpdateFailed, st.sampled_from(sorted(UPDATE_FAILURE_RESULTS)), st.just(False)),
        st.builds(UpdateFailed, st.sampled_from(KEPT), st.just(True)),
    ),
    CancelExecuted: st.just(CancelExecuted()),
}


def events_of(kinds: typing.Iterable[type]) -> st.SearchStrategy[Event]:
    """An event of one of ``kinds``, each kind equally likely."""
    return st.sampled_from(sorted(kinds, key=lambda kind: kind.__name__)).flatmap(EVENTS_OF_TYPE.__getitem__)


def likely_event(kinds: frozenset[type[Event]]) -> st.SearchStrategy[Event]:
    """Three draws in four from ``kinds`` (what the current State takes), or most runs would stay in Idle."""
    return st.integers(0, 3).flatmap(lambda pick: events_of(EVENTS_OF_TYPE if pick == 0 else kinds))


LIKELY_EVENT = {state: likely_event(kinds) for state, kinds in ALLOWED_EVENTS.items()}


def test_event_strategies_cover_every_event_type() -> None:
    assert set(EVENTS_OF_TYPE) == set(typing.get_args(Event))


ALLOWED_PAIRS = {
    State.IDLE: set(UpdateResult) - {R.DEFERRED},
    State.DOWNLOADING: {R.INITIAL},
    State.DOWNLOADED: {R.INITIAL, R.DEFERRED, R.UPDATE_FAILED, R.NOT_ENOUGH_FLASH, R.OUT_OF_RAM},
    State.UPDATING: {R.INITIAL},
}


class FirmwareUpdateMachine(RuleBasedStateMachine):
    """Random events, configuration writes and reboots; after each, the machine must be in an allowed place."""

    def __init__(self) -> None:
        super().__init__()
        self.fw = FirmwareUpdate()
        self.now = T0
        self.update_started = False  # StartUpdate was emitted and the update has not ended since
        self.deferral_timer: int | None = None  # what the shell's timer holds
        self.last_stamp: int | None = None

    @initialize(severity=st.sampled_from(Severity), seconds=st.sampled_from([0, 60, HOUR]), automatic=st.booleans())
    def configure(self, severity: Severity, seconds: int, automatic: bool) -> None:
        self.fw = FirmwareUpdate(severity=severity, max_defer_period=seconds, automatic_upgrade=automatic)

    @rule(data=st.data(), elapsed=st.integers(0, 2 * HOUR))
    def happen(self, data: st.DataObject, elapsed: int) -> None:
        event = data.draw(LIKELY_EVENT[self.fw.state], label="event")
        self.now += elapsed
        before = self.fw.snapshot()
        try:
            effects = self.fw.handle(event, self.now)
        except InvalidTransitionError as refused:
            assert refused.coap_code is CoapCode.METHOD_NOT_ALLOWED
            assert self.fw.snapshot() == before
            return
        after = self.fw.snapshot()
        assert type(event) in ALLOWED_EVENTS[before.state]
        # the Last State Change Time follows the State, and only the State
        if after.state is not before.state:
            assert after.last_state_change_time == self.now
        else:
            assert after.last_state_change_time == before.last_state_change_time
        # effects are consistent with the transition
        for effect in effects:
            if isinstance(effect, StartUpdate):
                assert after.state is State.UPDATING
                self.update_started = True
            elif isinstance(effect, StartDownload):
                assert (before.state, after.state, after.package_uri) == (State.IDLE, State.DOWNLOADING, effect.uri)
            elif isinstance(effect, AbortDownload):
                assert (before.state, after.state) == (State.DOWNLOADING, State.IDLE)
            elif isinstance(effect, DiscardPackage):
                assert after.state is State.IDLE and before.state is not State.IDLE
            elif isinstance(effect, ScheduleDeferredUpdate):
                assert (
                    self.deferral_timer is None
                    and effect.at == after.deferred_until == self.now + after.max_defer_period
                )
                self.deferral_timer = effect.at
            elif isinstance(effect, CancelDeferredUpdate):
                assert self.deferral_timer is not None
                self.deferral_timer = None
        if after.state is not State.UPDATING:
            self.update_started = False
        if after.state is not before.state and after.state in (State.DOWNLOADING, State.UPDATING):
            assert after.result is R.INITIAL  # starting a download or an update resets the result

    @rule(
        severity=st.sampled_from(Severity),
        seconds=st.sampled_from([0, 1, 60, HOUR]),
        automatic=st.booleans(),
        which=st.sampled_from(["severity", "max_defer_period", "automatic_upgrade"]),
    )
    def write_configuration(self, severity: Severity, seconds: int, automatic: bool, which: str) -> None:
        if which == "severity":
            self.fw.set_severity(severity)
        elif which == "max_defer_period":
            self.fw.set_max_defer_period(seconds)
        else:
            self.fw.set_automatic_upgrade(automatic)

    @rule()
    def reboot(self) -> None:
        stored = json.dumps(dataclasses.asdict(self.fw.snapshot()))
        self.fw = FirmwareUpdate.restore(FirmwareUpdateSnapshot(**json.loads(stored)))
        self.deferral_timer = self.fw.deferred_until  # the shell re-arms its timer after boot

    @invariant()
    def state_and_result_are_allowed(self) -> None:
        assert self.fw.result in ALLOWED_PAIRS[self.fw.state]
        assert (self.fw.deferred_until is not None) == (self.fw.result is R.DEFERRED)
        assert self.deferral_timer == self.fw.deferred_until  # the effects kept the shell's timer right

    @invariant()
    def updating_only_after_start_update(self) -> None:
        assert self.update_started == (self.fw.state is State.UPDATING)

    @invariant()
    def last_state_change_time_is_monotone(self) -> None:
        stamp = self.fw.last_state_change_time
        if self.last_stamp is not None:
            assert stamp is not None and stamp >= self.last_stamp
        self.last_stamp = stamp


FirmwareUpdateMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestFirmwareUpdateStateful = FirmwareUpdateMachine.TestCase

"""The pure campaign core: policy, wave planning, decide's rules, failure classes and back-off, with properties."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_object.campaign import (
    ACTIVE,
    FINAL_CAMPAIGN_STATES,
    MAX_TRANSMIT_WAIT,
    TERMINAL,
    CampaignState,
    CampaignView,
    Decision,
    FailureKind,
    InvalidAttemptsError,
    InvalidPolicyError,
    InvalidSnapshotError,
    JobState,
    JobView,
    Policy,
    WaveStats,
    classify_failure,
    decide,
    phase_timeout,
    plan_waves,
    retry_at,
    wave_stats,
)
from firmware_object.errors import UpdateResult

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

P, D, OK, KO, RB, SK = (JobState.PENDING, JobState.DELIVERING, JobState.SUCCEEDED, JobState.FAILED,
                        JobState.ROLLED_BACK, JobState.SKIPPED)
RUNNING = CampaignState.RUNNING


def everyone(endpoint: str) -> bool:
    return True


def wave_jobs(wave: int, states: Iterable[JobState], prefix: str | None = None) -> list[JobView]:
    """Jobs ``{prefix}{i}`` of one wave with the given states (prefix defaults to ``w{wave}-``)."""
    prefix = f"w{wave}-" if prefix is None else prefix
    return [JobView(f"{prefix}{i}", wave, s) for i, s in enumerate(states)]


def view(*jobs: list[JobView], policy: Policy | None = None, waves: int | None = None,
         opened: tuple[float, ...] = (), state: CampaignState = RUNNING) -> CampaignView:
    flat = tuple(j for group in jobs for j in group)
    return CampaignView(state=state, policy=policy or Policy(), waves=waves or len(jobs), opened_at=opened,
                        jobs=flat)


# ---------------------------------------------------------------------------------------------------------- policy


def test_policy_defaults_round_trip_through_json() -> None:
    for policy in (Policy(), Policy(canary=3, waves=2, device_timeout=60, backoff_base=1, backoff_max=10),
                   Policy(canary_percent=12.5, success_threshold=1, error_threshold=0)):
        back = Policy.from_dict(json.loads(json.dumps(policy.as_dict())))
        assert back == policy
        assert back.as_dict() == policy.as_dict()
    assert Policy(backoff_base=5).as_dict()["backoff_base"] == 5.0
    assert isinstance(Policy(backoff_base=5).backoff_base, float)
    assert Policy.from_dict({}) == Policy()


@pytest.mark.parametrize(("fields", "named"), [
    ({"canary": 2, "canary_percent": 10.0}, "canary_percent"),
    ({"canary": 0}, "canary"),
    ({"canary": True}, "canary"),
    ({"canary_percent": 0.0}, "canary_percent"),
    ({"canary_percent": 100.5}, "canary_percent"),
    ({"canary_percent": math.nan}, "canary_percent"),
    ({"waves": 0}, "waves"),
    ({"waves": 2.0}, "waves"),
    ({"success_threshold": 1.1}, "success_threshold"),
    ({"error_threshold": -0.1}, "error_threshold"),
    ({"max_parallel": 0}, "max_parallel"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"backoff_base": -1.0}, "backoff_base"),
    ({"backoff_base": 10.0, "backoff_max": 5.0}, "backoff_max"),
    ({"backoff_max": math.inf}, "backoff_max"),
    ({"device_timeout": 0.0}, "device_timeout"),
    ({"device_timeout": "60"}, "device_timeout"),
    ({"delivering_timeout": 0.0}, "delivering_timeout"),
    ({"downloaded_timeout": -1.0}, "downloaded_timeout"),
    ({"updating_timeout": math.inf}, "updating_timeout"),
])
def test_invalid_policies_name_the_field(fields: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidPolicyError, match=named):
        Policy.from_dict(fields)
    with pytest.raises(InvalidPolicyError, match=named):
        Policy(**fields)  # type: ignore[arg-type]


def test_from_dict_refuses_unknown_fields_and_non_mappings() -> None:
    with pytest.raises(InvalidPolicyError, match="max_paralel"):
        Policy.from_dict({"max_paralel": 3})
    with pytest.raises(InvalidPolicyError, match="mapping"):
        Policy.from_dict([("waves", 2)])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------- plan_waves


def names(n: int) -> list[str]:
    return [f"dev-{i:04d}" for i in range(n)]


def sizes(plan: list[list[str]]) -> list[int]:
    return [len(w) for w in plan]


def test_plan_default_is_5_percent_canary_then_doubling_waves_last_takes_the_rest() -> None:
    targets = names(100)
    plan = plan_waves(targets, Policy())
    assert sizes(plan) == [5, 10, 20, 65]
    assert [t for w in plan for t in w] == targets


@pytest.mark.parametrize(("n", "policy", "expected"), [
    (1, Policy(), [1]),
    (2, Policy(), [1, 1]),
    (3, Policy(), [1, 2]),
    (4, Policy(), [1, 3]),  # a remainder of 1 would make a wave smaller than the one before: merged
    (20, Policy(), [1, 2, 4, 13]),
    (10, Policy(canary=10), [10]),
    (10, Policy(canary=50), [10]),
    (10, Policy(canary=4, waves=1), [4, 6]),
    (1000, Policy(canary_percent=1, waves=2), [10, 20, 970]),
    (30, Policy(canary_percent=10), [3, 6, 21]),
    (7, Policy(canary=5), [5, 2]),
])
def test_plan_sizes(n: int, policy: Policy, expected: list[int]) -> None:
    assert sizes(plan_waves(names(n), policy)) == expected


def test_plan_refuses_empty_and_duplicate_targets() -> None:
    with pytest.raises(InvalidPolicyError, match="at least one target"):
        plan_waves([], Policy())
    with pytest.raises(InvalidPolicyError, match=r"more than once.*dev-b"):
        plan_waves(["dev-a", "dev-b", "dev-c", "dev-b"], Policy())


policies = st.builds(
    Policy,
    canary=st.one_of(st.none(), st.integers(1, 60)),
    waves=st.integers(1, 6),
    max_parallel=st.integers(1, 6),
    success_threshold=st.sampled_from([0.0, 0.5, 0.8, 0.9, 1.0]),
    error_threshold=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    device_timeout=st.one_of(st.none(), st.floats(1, 100)),
) | st.builds(Policy, canary_percent=st.floats(0.01, 100), waves=st.integers(1, 6))


@PROPS
@given(targets=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=400, unique=True), policy=policies)
def test_plan_partitions_targets_in_order_into_growing_waves(targets: list[str], policy: Policy) -> None:
    plan = plan_waves(targets, policy)
    assert [t for w in plan for t in w] == targets
    assert all(plan) and 1 <= len(plan) <= policy.waves + 1
    assert len(plan[0]) == policy.canary_size(len(targets))
    growing = sizes(plan)[1:]
    assert growing == sorted(growing)
    if len(targets) >= 2 * len(plan[0]) and len(plan) > 1:
        assert len(plan[1]) >= len(plan[0])  # waves grow from the canary when there are enough targets


# ------------------------------------------------------------------------------------------------ decide: examples


def test_running_campaign_opens_the_canary_and_starts_it() -> None:
    v = view(wave_jobs(0, [P] * 3), wave_jobs(1, [P] * 6))
    d = decide(v, everyone, now=100.0)
    assert d == Decision(RUNNING, (100.0,), ("w0-0", "w0-1", "w0-2"), (), None, None)


def test_canary_of_ten_halts_on_its_third_failure_before_any_other_wave_opens() -> None:
    policy = Policy(canary=10)
    rest = wave_jobs(1, [P] * 20)
    two = view(wave_jobs(0, [KO, KO] + [D] * 8), rest, policy=policy, opened=(0.0,))
    assert decide(two, everyone, 5.0).state is RUNNING
    three = view(wave_jobs(0, [KO, KO, RB] + [D] * 7), rest, policy=policy, opened=(0.0,))
    d = decide(three, everyone, 5.0)
    assert d.state is CampaignState.HALTED
    assert d.open_waves == (0.0,) and d.start == () and d.expire == ()
    assert d.reason is not None and "wave 0" in d.reason and "30 %" in d.reason and "20 %" in d.reason


def test_error_ratio_counts_all_opened_waves_and_leaves_skipped_out() -> None:
    w0 = wave_jobs(0, [OK] * 10)
    w1 = wave_jobs(1, [KO] * 4 + [SK] * 10 + [D] * 6)
    d = decide(view(w0, w1, wave_jobs(2, [P]), opened=(0.0, 1.0)), everyone, 2.0)
    assert d.state is RUNNING  # 4 / 20 = 20 %: not above the threshold
    w1 = wave_jobs(1, [KO] * 5 + [SK] * 10 + [D] * 5)
    d = decide(view(w0, w1, wave_jobs(2, [P]), opened=(0.0, 1.0)), everyone, 2.0)
    assert d.state is CampaignState.HALTED
    assert d.reason == ("wave 1 (waves 0-1): 5 of 20 jobs failed or rolled back (25 %), "
                        "above the error threshold 20 %")


def test_next_wave_opens_at_the_success_threshold() -> None:
    w1 = wave_jobs(1, [P] * 4)
    below = view(wave_jobs(0, [OK] * 8 + [D, D]), w1, opened=(0.0,))
    d = decide(below, everyone, 9.0)
    assert (d.state, d.open_waves, d.start) == (RUNNING, (0.0,), ())
    at = view(wave_jobs(0, [OK] * 9 + [D]), w1, opened=(0.0,))
    d = decide(at, everyone, 9.0)
    assert (d.state, d.open_waves, d.start) == (RUNNING, (0.0, 9.0), ("w1-0", "w1-1", "w1-2", "w1-3"))


def test_success_threshold_leaves_skipped_jobs_out() -> None:
    w1 = wave_jobs(1, [P])
    d = decide(view(wave_jobs(0, [OK] * 7 + [SK, SK, D]), w1, opened=(0.0,)), everyone, 3.0)
    assert d.open_waves == (0.0,)  # 7 of 8 counted: ceil(0.9 * 8) = 8 needed
    d = decide(view(wave_jobs(0, [OK] * 8 + [SK, SK]), w1, opened=(0.0,)), everyone, 3.0)
    assert d.open_waves == (0.0, 3.0)


def test_finished_wave_below_the_success_threshold_halts() -> None:
    v = view(wave_jobs(0, [OK] * 10), wave_jobs(1, [OK] * 7 + [KO] * 3), wave_jobs(2, [P] * 5),
             opened=(0.0, 1.0))
    d = decide(v, everyone, 2.0)
    assert d.state is CampaignState.HALTED and d.open_waves == (0.0, 1.0) and d.start == ()
    assert d.reason == "wave 1: 7 of 10 succeeded (70 %), below the success threshold 90 %"


def test_all_skipped_waves_pass_and_several_waves_open_in_one_call() -> None:
    v = view(wave_jobs(0, [OK]), wave_jobs(1, [SK, SK]), wave_jobs(2, []), wave_jobs(3, [P, P]),
             opened=(0.0,))
    d = decide(v, everyone, 7.0)
    assert d.open_waves == (0.0, 7.0, 7.0, 7.0) and d.start == ("w3-0", "w3-1")


def test_max_parallel_counts_active_jobs_campaign_wide() -> None:
    policy = Policy(max_parallel=7)
    v = view(wave_jobs(0, [OK] * 10), wave_jobs(1, [D, JobState.DOWNLOADED, JobState.UPDATING, D, D] + [P] * 10),
             policy=policy, opened=(0.0, 1.0), waves=3)
    d = decide(v, everyone, 2.0)
    assert d.start == ("w1-5", "w1-6")
    full = dataclasses.replace(v, policy=Policy(max_parallel=5))
    assert decide(full, everyone, 2.0).start == ()


def test_only_reachable_due_pending_jobs_of_opened_waves_start_in_wave_then_job_order() -> None:
    jobs = [JobView("late", 1, P), JobView("a", 0, P), JobView("down", 0, P),
            JobView("retry", 0, P, attempts=1, not_before=50.0), JobView("b", 0, P, attempts=1, not_before=10.0),
            JobView("busy", 0, D), JobView("closed", 2, P)]
    v = CampaignView(RUNNING, Policy(success_threshold=0), 3, (0.0, 5.0), tuple(jobs))
    asked: list[str] = []

    def reachable(ep: str) -> bool:
        asked.append(ep)
        return ep != "down"

    d = decide(dataclasses.replace(v, policy=Policy(success_threshold=0.5)), reachable, 20.0)
    assert d.start == ("a", "b", "late")
    assert d.next_wakeup == 50.0  # the back-off of "retry"
    assert "retry" not in asked and "closed" not in asked and "busy" not in asked


def test_not_before_is_respected_exactly() -> None:
    job = JobView("x", 0, P, attempts=1, not_before=30.0)
    v = CampaignView(RUNNING, Policy(), 1, (0.0,), (job,))
    early = decide(v, everyone, 29.5)
    assert early.start == () and early.next_wakeup == 30.0
    assert decide(v, everyone, 30.0).start == ("x",)


def test_device_timeout_expires_pending_jobs_that_did_not_start() -> None:
    policy = Policy(device_timeout=60.0, max_parallel=1)
    jobs = (JobView("up", 0, P), JobView("off", 0, P), JobView("waiting", 0, P))
    v = CampaignView(RUNNING, policy, 1, (0.0,), jobs)
    reachable = {"up", "waiting"}.__contains__
    before = decide(v, reachable, 59.0)
    assert before.start == ("up",) and before.expire == () and before.next_wakeup == 60.0
    after = decide(v, reachable, 61.0)
    assert after.start == ("up",)  # started: not also expired
    assert after.expire == ("off", "waiting")  # unreachable, or no room under max_parallel: both expire
    assert after.next_wakeup is None


def test_device_timeout_runs_from_a_retry_not_before_when_that_is_later() -> None:
    policy = Policy(device_timeout=60.0)
    v = CampaignView(RUNNING, policy, 1, (0.0,), (JobView("r", 0, P, attempts=1, not_before=50.0),))
    d = decide(v, lambda ep: False, 70.0)
    assert d.expire == () and d.next_wakeup == 110.0
    assert decide(v, lambda ep: False, 110.0).expire == ("r",)


def test_completion_when_every_wave_is_open_and_every_job_terminal() -> None:
    v = view(wave_jobs(0, [OK]), wave_jobs(1, [OK, OK, SK, OK]), opened=(0.0, 1.0))
    assert decide(v, everyone, 2.0) == Decision(CampaignState.COMPLETED, (0.0, 1.0), (), (), "completed", None)
    last_open = view(wave_jobs(0, [OK]), wave_jobs(1, [SK, SK]), opened=(0.0,))
    assert decide(last_open, everyone, 3.0).open_waves == (0.0, 3.0)
    assert decide(last_open, everyone, 3.0).state is CampaignState.COMPLETED
    not_yet = view(wave_jobs(0, [OK]), wave_jobs(1, [OK] * 9 + [D]), opened=(0.0, 1.0))
    assert decide(not_yet, everyone, 2.0).state is RUNNING


@pytest.mark.parametrize("state", [CampaignState.CREATED, CampaignState.PAUSED, *FINAL_CAMPAIGN_STATES])
def test_only_a_running_campaign_acts(state: CampaignState) -> None:
    v = view(wave_jobs(0, [OK] * 3), wave_jobs(1, [P] * 3), opened=(0.0,), state=state,
             policy=Policy(device_timeout=1.0))
    assert decide(v, everyone, 100.0) == Decision(state, (0.0,), (), (), None, None)
    fresh = view(wave_jobs(0, [P] * 3), state=state)
    assert decide(fresh, everyone, 100.0) == Decision(state, (), (), (), None, None)


def test_a_silent_job_is_overdue_at_its_deadline_and_its_slot_goes_to_the_next_device() -> None:
    silent = JobView("silent", 0, D, attempts=1, deadline=10.0)
    v = view([silent, JobView("next", 0, P)], opened=(0.0,), policy=Policy(max_parallel=1))
    before = decide(v, everyone, 9.999)
    assert before.overdue == () and before.start == () and before.next_wakeup == 10.0
    at = decide(v, everyone, 10.0)
    assert at.overdue == ("silent",) and at.start == ("next",) and at.state is RUNNING
    # every active phase has a deadline, and it holds in every campaign state (updates under way may be left)
    for phase in ACTIVE:
        for state in (CampaignState.PAUSED, CampaignState.HALTED, CampaignState.CANCELLED):
            j = JobView("j", 0, phase, deadline=5.0)
            d = decide(view([j, JobView("p", 0, P)], opened=(0.0,), state=state), everyone, 6.0)
            assert d.overdue == ("j",) and d.start == () and d.state is state
    # no deadline recorded (a job row of an older server): never overdue
    assert decide(view([JobView("old", 0, D)], opened=(0.0,)), everyone, 1e9).overdue == ()
    # terminal and pending jobs are never overdue, whatever their (stale) deadline
    done = view([JobView("a", 0, OK, deadline=1.0), JobView("b", 0, P, deadline=1.0)], opened=(0.0,))
    assert decide(done, everyone, 5.0).overdue == ()


def test_phase_timeouts_default_from_the_package_size_and_the_coap_worst_case() -> None:
    p = Policy()
    assert phase_timeout(p, D, 0) == MAX_TRANSMIT_WAIT == 93.0
    assert phase_timeout(p, D, 4096) == 93.0 + 4 * 6.0
    assert phase_timeout(p, D, 4097) == 93.0 + 5 * 6.0
    assert phase_timeout(p, JobState.DOWNLOADED, 1 << 20) == 2 * MAX_TRANSMIT_WAIT
    assert phase_timeout(p, JobState.UPDATING, 1 << 20) == 2 * MAX_TRANSMIT_WAIT + 300.0
    custom = Policy(delivering_timeout=5, downloaded_timeout=6, updating_timeout=7)
    assert [phase_timeout(custom, s, 1 << 20) for s in (D, JobState.DOWNLOADED, JobState.UPDATING)] == [5, 6, 7]
    assert Policy.from_dict(json.loads(json.dumps(custom.as_dict()))) == custom
    assert Policy.from_dict({"max_parallel": 3}).delivering_timeout is None  # a policy stored before them
    with pytest.raises(ValueError, match="pending"):
        phase_timeout(p, P, 1)


@PROPS
@given(size=st.integers(0, 1 << 24), more=st.integers(1, 1 << 20))
def test_the_delivering_deadline_grows_with_the_package(size: int, more: int) -> None:
    p = Policy()
    assert MAX_TRANSMIT_WAIT <= phase_timeout(p, D, size) <= phase_timeout(p, D, size + more)


def test_wave_stats_counts_every_planned_wave() -> None:
    v = view(wave_jobs(0, [OK, KO, RB, SK, P, D, JobState.UPDATING]), wave_jobs(1, []), waves=3, opened=(0.0,))
    assert wave_stats(v) == [WaveStats(0, 7, 1, 2, 1, 1, 1, 1), WaveStats(1, 0, 0, 0, 0, 0, 0, 0),
                             WaveStats(2, 0, 0, 0, 0, 0, 0, 0)]
    assert wave_stats(v)[0].counted == 6 and wave_stats(v)[0].bad == 2 and not wave_stats(v)[0].finished


def test_self_contradicting_snapshots_are_refused() -> None:
    with pytest.raises(InvalidSnapshotError, match="wave 2"):
        CampaignView(RUNNING, Policy(), 2, (), (JobView("a", 2, P),))
    with pytest.raises(InvalidSnapshotError, match="more than once"):
        CampaignView(RUNNING, Policy(), 2, (), (JobView("a", 0, P), JobView("a", 1, P)))
    with pytest.raises(InvalidSnapshotError, match="opened"):
        CampaignView(RUNNING, Policy(), 1, (0.0, 1.0), ())


# ------------------------------------------------------------------------------------------------ decide: properties


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[CampaignView, frozenset[str], float]:
    waves = draw(st.integers(1, 4))
    jobs = tuple(
        JobView(f"d{i}", draw(st.integers(0, waves - 1)), draw(st.sampled_from(JobState)),
                draw(st.integers(0, 3)), draw(st.one_of(st.none(), st.floats(0, 200))),
                draw(st.one_of(st.none(), st.floats(0, 200))))
        for i in range(draw(st.integers(0, 25)))
    )
    opened = tuple(sorted(draw(st.lists(st.floats(0, 100), max_size=waves))))
    state = draw(st.sampled_from(CampaignState))
    view = CampaignView(state, draw(policies), waves, opened, jobs)
    reachable = frozenset(j.endpoint for j in jobs if draw(st.booleans()))
    return view, reachable, draw(st.floats(0, 200))


@PROPS
@given(snapshots())
def test_decide_properties(snapshot: tuple[CampaignView, frozenset[str], float]) -> None:
    v, reachable, now = snapshot
    d = decide(v, reachable.__contains__, now)
    by_name = {j.endpoint: j for j in v.jobs}
    active = sum(1 for j in v.jobs if j.state in ACTIVE)
    # overdue: exactly the active jobs whose deadline has come, in every campaign state; their slots are free
    assert set(d.overdue) == {j.endpoint for j in v.jobs
                              if j.state in ACTIVE and j.deadline is not None and j.deadline <= now}
    future = [j.deadline for j in v.jobs if j.state in ACTIVE and j.deadline is not None and j.deadline > now]
    if future and d.state is not CampaignState.COMPLETED:
        assert d.next_wakeup is not None and d.next_wakeup <= min(future)
    # never more than the room under max_parallel; only due, reachable pending jobs of opened waves
    assert len(d.start) <= max(0, v.policy.max_parallel - active + len(d.overdue))
    for ep in d.start:
        job = by_name[ep]
        assert job.state is P and job.wave < len(d.open_waves) and ep in reachable
        assert job.not_before is None or job.not_before <= now
    assert [by_name[ep].wave for ep in d.start] == sorted(by_name[ep].wave for ep in d.start)
    for ep in d.expire:
        assert by_name[ep].state is P and by_name[ep].wave < len(d.open_waves)
    assert not set(d.start) & set(d.expire)
    if d.expire:
        assert v.policy.device_timeout is not None
    # opened waves only grow, new ones at now; nothing opens or starts after (or at) a halt
    assert d.open_waves[:len(v.opened_at)] == v.opened_at
    assert all(t == now for t in d.open_waves[len(v.opened_at):])
    if v.state is not RUNNING:
        assert d == Decision(v.state, v.opened_at, (), (), None, min(future, default=None), d.overdue)
    if d.state is CampaignState.HALTED:
        assert d.open_waves == v.opened_at and d.start == () and d.expire == ()
    if d.state is CampaignState.COMPLETED and v.state is RUNNING:
        assert len(d.open_waves) == v.waves and all(j.state in TERMINAL for j in v.jobs)
    assert (d.reason is None) == (d.state is v.state)
    assert d.next_wakeup is None or d.next_wakeup > now
    # a snapshot replayed (as the shell reloads it from its rows) gives the same decision
    reloaded = CampaignView(CampaignState(str(v.state)), Policy.from_dict(json.loads(json.dumps(v.policy.as_dict()))),
                            v.waves, tuple(json.loads(json.dumps(list(v.opened_at)))),
                            tuple(JobView(j.endpoint, j.wave, JobState(str(j.state)), j.attempts, j.not_before,
                                          j.deadline) for j in v.jobs))
    assert decide(reloaded, reachable.__contains__, now) == d


@PROPS
@given(n=st.integers(1, 60), policy=policies, outcomes=st.data())
def test_a_campaign_driven_to_its_end_completes_or_halts(n: int, policy: Policy, outcomes: st.DataObject) -> None:
    """Start what decide says, let each started job succeed or fail: the campaign ends, and it completes with
    every wave open when nothing fails."""
    plan = plan_waves(names(n), policy)
    jobs = {ep: JobView(ep, w, P) for w, wave in enumerate(plan) for ep in wave}
    all_succeed = outcomes.draw(st.booleans())
    v = CampaignView(RUNNING, policy, len(plan), (), tuple(jobs.values()))
    now = 0.0
    for _ in range(4 * n + 10):
        d = decide(v, everyone, now)
        if d.state is not RUNNING:
            break
        assert d.start or d.expire, "a running campaign whose devices are all reachable always makes progress"
        for ep in d.start:
            ok = all_succeed or outcomes.draw(st.booleans())
            jobs[ep] = dataclasses.replace(jobs[ep], state=OK if ok else KO)
        v = CampaignView(d.state, policy, len(plan), d.open_waves, tuple(jobs.values()))
        now += 1.0
    else:
        pytest.fail("the campaign did not end")
    if all_succeed:
        assert d.state is CampaignState.COMPLETED and len(d.open_waves) == len(plan)
    else:
        assert d.state in {CampaignState.COMPLETED, CampaignState.HALTED} and d.reason


# -------------------------------------------------------------------------------------------- failures and back-off


@pytest.mark.parametrize("result", [UpdateResult.OUT_OF_RAM, UpdateResult.CONNECTION_LOST])
def test_transient_update_results(result: UpdateResult) -> None:
    assert classify_failure(int(result)) is FailureKind.TRANSIENT


@pytest.mark.parametrize("result", [2, 5, 6, 7, 8, 9, 10, 11, 0, 1, 42, -1, None])
def test_permanent_or_unknown_update_results(result: int | None) -> None:
    assert classify_failure(result) is FailureKind.PERMANENT


def test_transport_failures_are_transient_unless_the_device_reported_a_permanent_result() -> None:
    assert classify_failure(None, timed_out=True) is FailureKind.TRANSIENT
    assert classify_failure(None, connection_lost=True) is FailureKind.TRANSIENT
    assert classify_failure(0, coap_code="4.08") is FailureKind.TRANSIENT
    assert classify_failure(None, coap_code="5.03") is FailureKind.TRANSIENT
    assert classify_failure(None, coap_code="4.04") is FailureKind.PERMANENT
    assert classify_failure(None, coap_code="4.13") is FailureKind.PERMANENT
    assert classify_failure(int(UpdateResult.INTEGRITY_CHECK_FAILURE), timed_out=True) is FailureKind.PERMANENT


def test_retry_at_grows_caps_and_stops() -> None:
    policy = Policy(max_attempts=10, backoff_base=5.0, backoff_max=60.0)
    delays = [retry_at(n, policy, 1000.0, "dev") for n in range(1, 10)]
    assert all(d is not None for d in delays)
    for n, when in enumerate(delays, start=1):
        assert when is not None
        nominal = min(60.0, 5.0 * 2 ** (n - 1))
        assert nominal <= when - 1000.0 < nominal * 1.25
    assert retry_at(10, policy, 1000.0, "dev") is None
    assert retry_at(11, policy, 1000.0, "dev") is None
    assert retry_at(3, Policy(), 0.0, "dev") is None  # default: 3 tries
    huge = Policy(max_attempts=5000, backoff_max=300.0)
    when = retry_at(4000, huge, 0.0, "dev")
    assert when is not None and 300.0 <= when < 375.0


def test_retry_at_refuses_fewer_than_one_try() -> None:
    with pytest.raises(InvalidAttemptsError):
        retry_at(0, Policy(), 0.0, "dev")


@PROPS
@given(endpoint=st.text(max_size=20), attempts=st.integers(1, 40), now=st.floats(0, 1e9))
def test_retry_jitter_is_deterministic_and_bounded(endpoint: str, attempts: int, now: float) -> None:
    policy = Policy(max_attempts=50, backoff_base=2.0, backoff_max=100.0)
    when = retry_at(attempts, policy, now, endpoint)
    assert when is not None and when == retry_at(attempts, policy, now, endpoint)
    nominal = min(100.0, 2.0 * 2 ** (attempts - 1))
    assert now + nominal <= when <= now + nominal * 1.25


def test_jitter_spreads_devices() -> None:
    whens = {retry_at(1, Policy(), 0.0, f"dev-{i}") for i in range(50)}
    assert len(whens) > 40

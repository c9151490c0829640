"""Schedules, the pure part: slots of a timing, and ``plan``'s choice of which due slots fire."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core.schedule import (
    MAX_FIRES_PER_PLAN,
    MISFIRE_GRACE,
    Catchup,
    Overlap,
    Schedule,
    ScheduleProgress,
    check_cron,
    execution_id_for,
    plan,
)

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def every(seconds: int, **extra: object) -> Schedule:
    return Schedule.model_validate(
        {
            "id": "s",
            "workflow_id": "w",
            "every_seconds": seconds,
            "created_at": T0,
            "effective_from": T0,
            **extra,
        }
    )


def cron(expression: str, **extra: object) -> Schedule:
    return Schedule.model_validate(
        {"id": "s", "workflow_id": "w", "cron": expression, "created_at": T0, "effective_from": T0, **extra}
    )


def test_every_seconds_slots_count_from_creation() -> None:
    s = every(30)
    slots = s.slots_after(T0 + timedelta(seconds=45))
    assert [next(slots) for _ in range(3)] == [T0 + timedelta(seconds=n) for n in (60, 90, 120)]
    assert s.next_slot(T0 - timedelta(days=1)) == T0


def test_cron_slots_are_read_in_the_schedules_time_zone() -> None:
    s = cron("0 9 * * *", timezone="Europe/Berlin")  # 09:00 in Berlin is 08:00 UTC in winter
    assert s.next_slot(T0) == datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    summer = cron("0 9 * * *", timezone="Europe/Berlin").next_slot(datetime(2026, 7, 1, tzinfo=UTC))
    assert summer == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "why"),
    [("* * * *", "5 fields"), ("* * * * * *", "5 fields"), ("61 * * * *", "minute"), ("", "5 fields")],
)
def test_bad_cron_expressions_are_refused(expression: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_cron(expression)


def test_exactly_one_timing_and_a_real_time_zone() -> None:
    with pytest.raises(ValueError, match="exactly one of cron"):
        Schedule.model_validate({"id": "s", "workflow_id": "w", "created_at": T0, "effective_from": T0})
    with pytest.raises(ValueError, match="exactly one of cron"):
        every(5, cron="* * * * *")
    with pytest.raises(ValueError, match="IANA"):
        cron("* * * * *", timezone="Mars/Olympus")


def test_a_slots_run_id_depends_on_the_schedule_and_the_slot_only() -> None:
    assert execution_id_for("nightly", T0) == "sched-nightly-20261201T100000Z"
    assert execution_id_for("nightly", T0.astimezone(UTC)) == execution_id_for("nightly", T0)


def test_on_time_slots_fire_and_late_ones_follow_catchup() -> None:
    s = every(60)
    on_time = plan(s, None, T0 + timedelta(seconds=61), previous_running=False)
    assert on_time.fire == (T0 + timedelta(seconds=60),)
    late = T0 + timedelta(minutes=10, seconds=30)  # slots 1..10 due, the newest 30 s old
    assert plan(s, None, late, False).fire == (T0 + timedelta(minutes=10),)  # none: only the on-time one
    assert plan(every(60, catchup="latest"), None, late, False).fire == (T0 + timedelta(minutes=10),)
    assert len(plan(every(60, catchup="all", overlap="allow"), None, late, False).fire) == 10
    very_late = T0 + timedelta(minutes=10) + MISFIRE_GRACE + timedelta(seconds=1)
    ten_minutes = every(600)
    assert plan(ten_minutes, None, very_late, False).fire == ()  # none: nothing on time, nothing owed
    assert plan(ten_minutes, None, very_late, False).progress.skipped == 1
    assert plan(ten_minutes, None, very_late, False).progress.last_slot == T0 + timedelta(minutes=10)


def test_overlap_while_the_last_run_still_runs() -> None:
    at = T0 + timedelta(seconds=61)
    assert plan(every(60), None, at, previous_running=True).fire == ()
    assert plan(every(60, overlap="allow"), None, at, previous_running=True).fire == (
        T0 + timedelta(seconds=60),
    )
    buffered = plan(every(60, overlap="buffer_one"), None, at, previous_running=True)
    assert buffered.fire == ()
    assert buffered.progress.buffered_slot == T0 + timedelta(seconds=60)
    # the previous run ended: the buffered slot fires at the next look, before any new slot
    later = plan(every(60, overlap="buffer_one"), buffered.progress, at + timedelta(seconds=5), False)
    assert later.fire == (T0 + timedelta(seconds=60),)
    assert later.progress.buffered_slot is None
    assert later.progress.last_execution_id == execution_id_for("s", T0 + timedelta(seconds=60))


def test_a_paused_schedule_fires_nothing_and_owes_nothing() -> None:
    paused = plan(every(1, paused=True, catchup="all"), None, T0 + timedelta(minutes=5), False)
    assert paused.fire == ()
    assert paused.progress.last_slot == T0


def test_catchup_all_after_a_long_outage_fires_in_bounded_looks() -> None:
    s = every(1, catchup="all", overlap="allow")
    at = T0 + timedelta(seconds=MAX_FIRES_PER_PLAN * 2 + 10)
    first = plan(s, None, at, False)
    assert len(first.fire) == MAX_FIRES_PER_PLAN
    second = plan(s, first.progress, at, False)
    third = plan(s, second.progress, at, False)
    fired = first.fire + second.fire + third.fire
    assert fired == tuple(T0 + timedelta(seconds=n) for n in range(1, MAX_FIRES_PER_PLAN * 2 + 11))


looks = st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    period=st.integers(min_value=1, max_value=90),
    gaps=looks,
    overlap=st.sampled_from(list(Overlap)),
    catchup=st.sampled_from(list(Catchup)),
    running=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_no_slot_ever_fires_twice_and_progress_only_moves_forward(
    period: int, gaps: list[int], overlap: Overlap, catchup: Catchup, running: list[bool]
) -> None:
    s = every(period, overlap=overlap.value, catchup=catchup.value)
    progress: ScheduleProgress | None = None
    at = T0
    fired: list[datetime] = []
    for gap, busy in zip(gaps, running, strict=False):
        at += timedelta(seconds=gap)
        decided = plan(s, progress, at, busy)
        assert all(T0 < slot <= at for slot in decided.fire)
        if progress is not None:
            assert decided.progress.last_slot >= progress.last_slot
            assert decided.progress.fired >= progress.fired
        if overlap is not Overlap.ALLOW:
            assert len(decided.fire) <= 1  # one run at a time, whatever was missed
        if busy and overlap is not Overlap.ALLOW:
            assert decided.fire == ()
        fired.extend(decided.fire)
        progress = decided.progress
    assert len(fired) == len(set(fired))
    assert fired == sorted(fired)
    assert progress is not None
    assert progress.fired == len(fired)


@settings(max_examples=200, deadline=None)
@given(period=st.integers(min_value=1, max_value=90), gaps=looks)
def test_allow_and_all_fire_every_slot_exactly_once(period: int, gaps: list[int]) -> None:
    s = every(period, overlap="allow", catchup="all")
    progress: ScheduleProgress | None = None
    at = T0
    fired: list[datetime] = []
    for gap in gaps:
        at += timedelta(seconds=gap)
        while True:  # a look fires at most MAX_FIRES_PER_PLAN; the owner looks again
            decided = plan(s, progress, at, True)
            fired.extend(decided.fire)
            progress = decided.progress
            if not decided.fire:
                break
    assert fired == list(itertools.takewhile(lambda slot: slot <= at, s.slots_after(T0)))

"""Pausing and resuming a run (issue 10 item 2, ADR 0034): the decider's rules, by example."""

from __future__ import annotations

from datetime import timedelta

from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.messages import CommandKind, ExecutionCommand
from linkflow_stream.core.state import ExecutionStatus, NodeStatus, TimerKind
from linkflow_stream.kafka import codec
from tests.unit.conftest import HTTP_TIMEOUT, LEASE_GRACE, Factories, Run, at

DEADLINE = "execution_timeout"


def pause(suspend: bool = False) -> ExecutionCommand:
    return ExecutionCommand(
        execution_id="e1", kind=CommandKind.PAUSE, reason="paused by request", suspend_deadline=suspend
    )


def resume() -> ExecutionCommand:
    return ExecutionCommand(execution_id="e1", kind=CommandKind.RESUME, reason="resumed by request")


def types(events: list[ExecutionEvent]) -> list[EventType]:
    return [e.type for e in events]


def chain(lf: Factories, timeout: float | None = None) -> Run:
    """h (http) -> w (wait 1.5 s) -> t (transform), started at T0."""
    wf = lf.workflow(
        lf.node("h", "http"),
        lf.node("w", "wait", ["h"]),
        lf.node("t", "transform", ["w"]),
        timeout_seconds=timeout,
    )
    return lf.run(wf)


def test_pause_records_the_transition_and_starts_nothing_more(lf: Factories) -> None:
    run = chain(lf)
    assert types(run.feed(pause(), at(1))) == [EventType.EXECUTION_PAUSED]
    assert run.s.status is ExecutionStatus.PAUSED
    assert run.s.paused_at == at(1)
    assert [(t.from_status, t.to_status) for t in run.s.history][-1] == (
        ExecutionStatus.RUNNING,
        ExecutionStatus.PAUSED,
    )
    # the in-flight http node finishes and is recorded; the wait after it does not start
    assert types(run.feed(lf.ok("h", output={"v": 1}), at(2))) == [EventType.NODE_SUCCEEDED]
    assert run.s.nodes["h"].status is NodeStatus.SUCCESS
    assert run.s.nodes["w"].status is NodeStatus.PENDING
    assert run.s.status is ExecutionStatus.PAUSED


def test_a_repeated_pause_or_a_resume_of_a_running_run_changes_nothing(lf: Factories) -> None:
    run = chain(lf)
    assert run.feed(resume(), at(1)) == []
    run.feed(pause(), at(1))
    assert run.feed(pause(), at(2)) == []
    run.feed(resume(), at(3))
    assert run.feed(resume(), at(4)) == []


def test_resume_starts_what_became_ready_while_paused(lf: Factories) -> None:
    run = chain(lf)
    run.feed(pause(), at(1))
    run.feed(lf.ok("h"), at(2))
    events = run.feed(resume(), at(10))
    assert types(events) == [EventType.EXECUTION_RESUMED, EventType.NODE_STARTED]
    assert events[1].node_id == "w"
    assert events[1].due_at == at(11.5)  # the wait counts from its start, at resume
    assert [t.to_status for t in run.s.history][-2:] == [ExecutionStatus.PAUSED, ExecutionStatus.RUNNING]
    assert run.s.paused_at is None


def test_a_wait_timer_that_fires_while_paused_is_kept_and_handled_on_resume(lf: Factories) -> None:
    run = chain(lf)
    run.feed(lf.ok("h"), at(1))  # w waits until 2.5
    wait_id = lf.timer_id(TimerKind.WAIT, "w", 1)
    run.feed(pause(), at(2))
    assert run.feed(lf.fire(wait_id, due_at=at(2.5)), at(2.5)) == []
    assert wait_id in run.s.timers  # not lost
    events = run.feed(resume(), at(30))
    assert types(events) == [
        EventType.EXECUTION_RESUMED,
        EventType.NODE_SUCCEEDED,
        EventType.NODE_STARTED,
    ]
    assert (events[1].node_id, events[2].node_id) == ("w", "t")
    # the timer service's later copy of the firing is stale now
    assert run.feed(lf.fire(wait_id, due_at=at(2.5)), at(31)) == []


def test_a_timer_not_yet_due_at_resume_fires_later_as_usual(lf: Factories) -> None:
    run = chain(lf)
    run.feed(lf.ok("h"), at(1))  # w due at 2.5
    run.feed(pause(), at(1.5))
    assert types(run.feed(resume(), at(2))) == [EventType.EXECUTION_RESUMED]
    wait_id = lf.timer_id(TimerKind.WAIT, "w", 1)
    assert run.s.timers[wait_id].due_at == at(2.5)  # its due time kept
    assert types(run.feed(lf.fire(wait_id, due_at=at(2.5)), at(2.5)))[0] is EventType.NODE_SUCCEEDED


def test_due_timers_are_handled_in_due_order_on_resume(lf: Factories) -> None:
    wf = lf.workflow(
        lf.node("w1", "wait", config={"seconds": 3}),
        lf.node("w2", "wait", config={"seconds": 1}),
        lf.node("h", "http", retry=lf.retry(max_attempts=3, initial=2)),
    )
    run = lf.run(wf)
    run.feed(lf.fail("h", retryable=True), at(0.5))  # retry due at 2.5
    run.feed(pause(), at(0.7))
    events = run.feed(resume(), at(100))
    handled = [(e.type, e.node_id) for e in events[1:]]
    assert handled == [
        (EventType.NODE_SUCCEEDED, "w2"),  # due 1
        (EventType.NODE_STARTED, "h"),  # retry due 2.5: attempt 2
        (EventType.NODE_SUCCEEDED, "w1"),  # due 3
    ]
    assert events[2].attempt == 2


def test_no_retry_and_no_lease_redispatch_while_paused(lf: Factories) -> None:
    wf = lf.workflow(lf.node("h", "http", retry=lf.retry(max_attempts=3, initial=2)))
    run = lf.run(wf)
    run.feed(pause(), at(0.1))
    lease = lf.timer_id(TimerKind.LEASE, "h", 1)
    lease_due = at(HTTP_TIMEOUT + LEASE_GRACE)
    assert run.feed(lf.fire(lease, due_at=lease_due), lease_due) == []
    assert run.s.nodes["h"].attempts == 1
    # a retryable failure while paused schedules its retry, which waits for resume
    assert types(run.feed(lf.fail("h", retryable=True), at(40))) == [EventType.NODE_RETRY_SCHEDULED]
    retry = lf.timer_id(TimerKind.RETRY, "h", 1)
    assert run.feed(lf.fire(retry, due_at=at(42)), at(42)) == []
    recover = ExecutionCommand(execution_id="e1", kind=CommandKind.RECOVER)
    assert run.feed(recover, at(43)) == []  # recover would re-dispatch: not while paused
    events = run.feed(resume(), at(50))
    assert types(events) == [EventType.EXECUTION_RESUMED, EventType.NODE_STARTED]
    assert events[1].attempt == 2


def test_a_lease_that_expired_while_paused_dispatches_again_on_resume(lf: Factories) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http")))
    run.feed(pause(), at(1))
    events = run.feed(resume(), at(HTTP_TIMEOUT + LEASE_GRACE + 10))
    assert types(events) == [EventType.EXECUTION_RESUMED, EventType.NODE_STARTED]
    assert (events[1].attempt, events[1].reason) == (2, "lease expired; dispatched again")


def test_a_result_that_beats_the_resume_wins_over_its_expired_lease(lf: Factories) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http")))
    run.feed(pause(), at(1))
    run.feed(lf.ok("h", output=1), at(HTTP_TIMEOUT + LEASE_GRACE + 5))  # late, but current
    events = run.feed(resume(), at(HTTP_TIMEOUT + LEASE_GRACE + 10))
    assert types(events) == [EventType.EXECUTION_RESUMED, EventType.EXECUTION_SUCCEEDED]


def test_a_non_retryable_failure_while_paused_fails_the_run(lf: Factories) -> None:
    run = chain(lf)
    run.feed(pause(), at(1))
    events = run.feed(lf.fail("h"), at(2))
    assert types(events)[-1] is EventType.EXECUTION_FAILED
    assert run.s.status is ExecutionStatus.FAILED
    assert run.s.paused_at is None
    assert [t.to_status for t in run.s.history][-2:] == [ExecutionStatus.PAUSED, ExecutionStatus.FAILED]


def test_cancel_works_while_paused(lf: Factories) -> None:
    run = chain(lf)
    run.feed(pause(), at(1))
    events = run.feed(lf.cancel("stop"), at(2))
    assert types(events) == [
        EventType.NODE_CANCELLED,
        EventType.NODE_CANCELLED,
        EventType.NODE_CANCELLED,
        EventType.EXECUTION_CANCELLED,
    ]
    assert run.s.status is ExecutionStatus.CANCELLED
    assert run.feed(resume(), at(3)) == []


def test_a_run_whose_last_node_finishes_while_paused_ends_on_resume(lf: Factories) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http")))
    run.feed(pause(), at(1))
    assert types(run.feed(lf.ok("h"), at(2))) == [EventType.NODE_SUCCEEDED]
    assert run.s.status is ExecutionStatus.PAUSED  # every node done, but it waits for resume
    assert types(run.feed(resume(), at(3))) == [EventType.EXECUTION_RESUMED, EventType.EXECUTION_SUCCEEDED]


def test_the_deadline_still_applies_while_paused_by_default(lf: Factories) -> None:
    run = chain(lf, timeout=60)
    run.feed(pause(), at(1))
    assert run.s.timers[DEADLINE].due_at == at(60)
    events = run.feed(lf.fire(DEADLINE, due_at=at(60)), at(60))
    assert types(events)[-1] is EventType.EXECUTION_FAILED
    assert events[-1].reason == "execution timed out"


def test_a_deadline_due_at_resume_ends_the_run_in_due_order(lf: Factories) -> None:
    run = chain(lf, timeout=60)
    run.feed(lf.ok("h"), at(1))  # w due at 2.5, before the deadline
    run.feed(pause(), at(2))
    events = run.feed(resume(), at(70))  # the deadline's firing was missed (say, a crash)
    assert types(events)[:2] == [EventType.EXECUTION_RESUMED, EventType.NODE_SUCCEEDED]
    assert types(events)[-1] is EventType.EXECUTION_FAILED
    assert run.s.status is ExecutionStatus.FAILED


def test_a_suspended_deadline_moves_on_by_the_paused_time(lf: Factories) -> None:
    run = chain(lf, timeout=60)
    events = run.feed(pause(suspend=True), at(10))
    assert events[0].due_at == at(60)
    assert DEADLINE not in run.s.timers
    assert run.s.suspended_deadline == at(60)
    assert run.feed(lf.fire(DEADLINE, due_at=at(60)), at(60)) == []  # a firing in flight: stale
    events = run.feed(resume(), at(110))
    assert events[0].due_at == at(160)  # paused 100 s
    assert run.s.timers[DEADLINE].due_at == at(160)
    assert run.s.suspended_deadline is None
    assert run.s.status is ExecutionStatus.RUNNING


def test_a_timeout_set_while_the_deadline_is_suspended_stays_suspended(lf: Factories) -> None:
    run = chain(lf, timeout=60)
    run.feed(pause(suspend=True), at(10))
    command = ExecutionCommand(execution_id="e1", kind=CommandKind.SET_TIMEOUT, timeout_seconds=5)
    assert types(run.feed(command, at(20))) == [EventType.EXECUTION_DEADLINE_SET]
    assert DEADLINE not in run.s.timers
    assert run.s.suspended_deadline == at(5)
    events = run.feed(resume(), at(30))  # 5 + 20 s paused = 25: already past
    assert events[0].due_at == at(25)
    assert types(events)[-1] is EventType.EXECUTION_FAILED


def test_suspend_without_a_deadline_suspends_nothing(lf: Factories) -> None:
    run = chain(lf)
    events = run.feed(pause(suspend=True), at(1))
    assert events[0].due_at is None
    assert run.s.suspended_deadline is None
    assert run.feed(resume(), at(2))[0].due_at is None


def test_a_paused_state_survives_the_wire(lf: Factories) -> None:
    run = chain(lf, timeout=60)
    run.feed(pause(suspend=True), at(10))
    wire = codec.default_codec()
    assert wire.decode(wire.encode(run.s), type(run.s)) == run.s
    command = pause(suspend=True)
    assert wire.decode(wire.encode(command), ExecutionCommand) == command


def test_pause_and_resume_are_deterministic(lf: Factories) -> None:
    first = chain(lf, timeout=600)
    steps = [
        (lf.ok("h"), at(1)),
        (pause(suspend=True), at(1.2)),
        (lf.fire(lf.timer_id(TimerKind.WAIT, "w", 1), due_at=at(2.5)), at(2.5)),
        (resume(), at(9)),
    ]
    for inp, now in steps:
        first.feed(inp, now)
    second = chain(lf, timeout=600)
    for inp, now in steps:
        second.feed(inp, now)
    assert first.log == second.log
    assert first.s.timers[DEADLINE].due_at == at(600) + timedelta(seconds=9 - 1.2)

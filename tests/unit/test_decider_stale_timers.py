"""Timer firings that no longer match their timer change nothing.

A firing is applied only at or after its timer's due time, and, when it names a due time, only if
that is the timer's: the execution deadline keeps its id when ``set_timeout`` moves it, so a
firing for the old deadline (from a former owner of the partition, or a late redelivery) must
not end the run. A firing without a due time (older producers) is judged by id and time only.
"""

from __future__ import annotations

from datetime import timedelta

from linkflow_stream.core.clock import from_millis, to_millis
from linkflow_stream.core.events import EventType
from linkflow_stream.core.messages import CommandKind, ExecutionCommand
from linkflow_stream.core.state import ExecutionStatus, NodeStatus, TimerKind

E = EventType
DEADLINE = "execution_timeout"


def set_timeout(seconds: float) -> ExecutionCommand:
    return ExecutionCommand(execution_id="e1", kind=CommandKind.SET_TIMEOUT, timeout_seconds=seconds)


def types(events: list) -> list[tuple[EventType, str | None]]:
    return [(e.type, e.node_id) for e in events]


# ------------------------------------------------------------------------------ the deadline


def test_a_firing_for_the_deadline_before_it_was_extended_is_ignored(lf) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http"), timeout_seconds=60))
    run.feed(set_timeout(600), lf.at(10))
    assert run.s.timers[DEADLINE].due_at == lf.at(600)
    before = run.state

    # the old deadline's firing, at the old due time and long after the new one
    assert run.feed(lf.fire(DEADLINE, due_at=lf.at(60)), lf.at(60)) == []
    assert run.feed(lf.fire(DEADLINE, due_at=lf.at(60)), lf.at(700)) == []
    # a firing that names no due time arrives before the new deadline: early, so ignored
    assert run.feed(lf.fire(DEADLINE), lf.at(60)) == []
    assert run.state == before
    assert run.s.status is ExecutionStatus.RUNNING

    events = run.feed(lf.fire(DEADLINE, due_at=lf.at(600)), lf.at(600))
    assert types(events) == [(E.NODE_CANCELLED, "h"), (E.EXECUTION_FAILED, None)]
    assert events[-1].reason == "execution timed out"
    assert run.s.status is ExecutionStatus.FAILED


def test_a_firing_for_the_deadline_before_it_was_shortened_is_ignored(lf) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http"), timeout_seconds=600))
    run.feed(set_timeout(60), lf.at(10))
    assert run.feed(lf.fire(DEADLINE, due_at=lf.at(600)), lf.at(600)) == []
    assert run.s.status is ExecutionStatus.RUNNING
    events = run.feed(lf.fire(DEADLINE, due_at=lf.at(60)), lf.at(61))
    assert events[-1].type is E.EXECUTION_FAILED


def test_a_firing_without_a_due_time_fails_the_run_once_due(lf) -> None:
    """Older producers send no due time: the timer id and the time decide, as before."""
    run = lf.run(lf.workflow(lf.node("h", "http"), timeout_seconds=60))
    assert run.feed(lf.fire(DEADLINE), lf.at(59.999)) == []
    events = run.feed(lf.fire(DEADLINE), lf.at(60))
    assert events[-1].type is E.EXECUTION_FAILED


# ---------------------------------------------------------------------------------- wait timer


def test_a_wait_timer_fires_only_at_its_own_due_time(lf) -> None:
    wf = lf.workflow(lf.node("w", "wait", config={"seconds": 60}), lf.node("after", depends_on=["w"]))
    run = lf.run(wf)
    wait_id = lf.timer_id(TimerKind.WAIT, "w", 1)
    before = run.state
    assert run.feed(lf.fire(wait_id), lf.at(30)) == [], "a firing is never early"
    assert run.feed(lf.fire(wait_id, due_at=lf.at(59)), lf.at(60)) == []
    assert run.feed(lf.fire(wait_id, due_at=lf.at(61)), lf.at(61)) == []
    assert run.state == before

    events = run.feed(lf.fire(wait_id, due_at=lf.at(60)), lf.at(60))
    assert types(events) == [(E.NODE_SUCCEEDED, "w"), (E.NODE_STARTED, "after")]


def test_due_times_compare_at_the_millisecond_precision_of_the_wire(lf) -> None:
    """A due time computed in memory may carry microseconds that the timer service's copy lost."""
    run = lf.run(lf.workflow(lf.node("w", "wait", config={"seconds": 1.2345})))
    wait_id = lf.timer_id(TimerKind.WAIT, "w", 1)
    due = run.s.timers[wait_id].due_at
    assert due == lf.at() + timedelta(seconds=1.2345)
    on_the_wire = from_millis(to_millis(due))
    assert on_the_wire != due
    assert run.feed(lf.fire(wait_id, due_at=on_the_wire), on_the_wire - timedelta(milliseconds=1)) == []
    events = run.feed(lf.fire(wait_id, due_at=on_the_wire), on_the_wire)
    assert events[0].type is E.NODE_SUCCEEDED


# --------------------------------------------------------------------------------- retry timer


def test_a_retry_timer_fires_only_at_its_own_due_time(lf) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http", retry=lf.retry(max_attempts=3, initial=2))))
    run.feed(lf.fail("h", 1, retryable=True), lf.at(1))
    retry_id = lf.timer_id(TimerKind.RETRY, "h", 1)
    assert run.s.timers[retry_id].due_at == lf.at(3)
    before = run.state
    assert run.feed(lf.fire(retry_id), lf.at(2)) == [], "a firing is never early"
    assert run.feed(lf.fire(retry_id, due_at=lf.at(2)), lf.at(3)) == []
    assert run.state == before

    events = run.feed(lf.fire(retry_id, due_at=lf.at(3)), lf.at(3))
    assert [(e.type, e.attempt) for e in events] == [(E.NODE_STARTED, 2)]


# --------------------------------------------------------------------------------- lease timer


def test_a_lease_timer_fires_only_for_its_attempt_and_due_time(lf) -> None:
    run = lf.run(lf.workflow(lf.node("h", "http", timeout_seconds=10)))
    lease_1 = lf.timer_id(TimerKind.LEASE, "h", 1)
    due_1 = lf.at(10 + lf.LEASE_GRACE)
    assert run.s.timers[lease_1].due_at == due_1
    before = run.state
    assert run.feed(lf.fire(lease_1), lf.at(5)) == [], "a lease never expires early"
    assert run.feed(lf.fire(lease_1, due_at=lf.at(14)), lf.at(20)) == []
    assert run.state == before

    events = run.feed(lf.fire(lease_1, due_at=due_1), due_1)
    assert [(e.type, e.attempt) for e in events] == [(E.NODE_STARTED, 2)]
    # attempt 1's lease again, with its own due time: the attempt is stale now
    assert run.feed(lf.fire(lease_1, due_at=due_1), lf.at(60)) == []
    assert run.s.nodes["h"].attempts == 2
    assert run.s.nodes["h"].status is NodeStatus.RUNNING


# ------------------------------------------------------------------------------------ kinds


def test_only_a_timer_fired_command_fires_a_timer(lf) -> None:
    """A set_timeout that happens to carry the deadline's timer id is not a firing: it moves the
    deadline, and the run, past its old one, goes on."""
    run = lf.run(lf.workflow(lf.node("h", "http"), timeout_seconds=60))
    odd = ExecutionCommand(
        execution_id="e1", kind=CommandKind.SET_TIMEOUT, timeout_seconds=600, timer_id=DEADLINE
    )
    assert [e.type for e in run.feed(odd, lf.at(120))] == [EventType.EXECUTION_DEADLINE_SET]
    assert run.s.status is ExecutionStatus.RUNNING

"""The timer service's bookkeeping: fire when due, fire again while still pending, stop once gone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, Timer, TimerKind
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.runtime.timers import REFIRE_AFTER_MS, TimerService

T0 = 1_800_000_000_000


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


def state(execution_id: str, *timers: tuple[str, int]) -> ExecutionState:
    wf = WorkflowDefinition(
        id="wf",
        nodes=(NodeDefinition(id="w", type="wait", config={"seconds": 1}),),
        created_at=from_millis(T0),
    )
    return ExecutionState(
        id=execution_id,
        workflow=wf,
        status=ExecutionStatus.RUNNING,
        input={},
        created_at=from_millis(T0),
        seq=3,
        nodes={},
        timers={
            tid: Timer(
                id=tid,
                kind=TimerKind.WAIT,
                due_at=from_millis(T0) + timedelta(milliseconds=at),
                node_id="w",
                attempt=1,
            )
            for tid, at in timers
        },
    )


def service() -> tuple[TimerService, Clock]:
    clock = Clock()
    publisher: Any = None  # due() never publishes
    return TimerService(publisher, clock=clock), clock


def test_fires_when_due_and_not_before() -> None:
    timers, clock = service()
    timers.track(state("e1", ("wait:w:1", 1000)))
    assert timers.due() == []
    clock.ms += 1000
    assert timers.due() == [("e1", "wait:w:1")]
    assert timers.due() == [], "fired once, not on every poll"


def test_a_timer_still_pending_after_firing_fires_again_with_backoff() -> None:
    timers, clock = service()
    timers.track(state("e1", ("wait:w:1", 0)))
    assert timers.due() == [("e1", "wait:w:1")]
    clock.ms += REFIRE_AFTER_MS - 1
    assert timers.due() == []
    clock.ms += 1
    assert timers.due() == [("e1", "wait:w:1")], "its command was lost: fire again"
    clock.ms += REFIRE_AFTER_MS
    assert timers.due() == [], "the second retry waits twice as long"
    clock.ms += REFIRE_AFTER_MS
    assert timers.due() == [("e1", "wait:w:1")]
    assert timers.refired_total == 2


def test_a_timer_the_state_no_longer_holds_is_dropped() -> None:
    timers, clock = service()
    timers.track(state("e1", ("wait:w:1", 0), ("lease:h:1", 50_000)))
    assert timers.due() == [("e1", "wait:w:1")]
    timers.track(state("e1", ("lease:h:1", 50_000)))  # the wait completed
    clock.ms += REFIRE_AFTER_MS * 4
    assert timers.due() == []
    timers.track(state("e1"))  # the execution ended
    clock.ms += 60_000
    assert timers.due() == []


def test_rebuilding_after_recovery_does_not_double_fire() -> None:
    timers, clock = service()
    s = state("e1", ("wait:w:1", 10))
    timers.track(s)
    timers.rebuild([s, state("e2", ("wait:w:1", 10))])
    clock.ms += 10
    assert sorted(timers.due()) == [("e1", "wait:w:1"), ("e2", "wait:w:1")]


def test_a_timer_that_moves_fires_at_its_new_time_only() -> None:
    timers, clock = service()
    timers.track(state("e1", ("execution_timeout", 300_000)))
    timers.track(state("e1", ("execution_timeout", 2_000)))  # the deadline was shortened
    clock.ms += 2_000
    assert timers.due() == [("e1", "execution_timeout")]
    timers.track(state("e1", ("execution_timeout", 600_000)))  # and then moved far out
    clock.ms += 300_000
    assert timers.due() == [], "the old entries no longer match the timer's due time"

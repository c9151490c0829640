"""The timer queue of one partition: due in order, offered again until the state drops them,
and a moved timer is due at its new time only."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import timedelta

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, Timer, TimerKind
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.runtime.timers import RETRY_MS, TimerQueue

T0 = 1_800_000_000_000


def state(execution_id: str, **due_ms: int) -> ExecutionState:
    wf = WorkflowDefinition(id="wf", nodes=(), created_at=from_millis(T0))
    timers = {
        name: Timer(id=name, kind=TimerKind.EXECUTION_TIMEOUT, due_at=from_millis(ms))
        for name, ms in due_ms.items()
    }
    return ExecutionState(
        id=execution_id,
        workflow=wf,
        status="running",
        input=None,
        created_at=from_millis(T0),
        seq=2,
        nodes={},
        timers=timers,
    )


def test_timers_come_due_in_order_with_their_due_time() -> None:
    q = TimerQueue()
    q.track(state("e1", a=T0 + 200))
    q.track(state("e2", b=T0 + 100))
    assert q.next_due_ms() == T0 + 100
    assert q.due(T0 + 99) == []
    due = q.due(T0 + 250)
    assert [(d.execution_id, d.timer_id, d.due_at) for d in due] == [
        ("e2", "b", from_millis(T0 + 100)),
        ("e1", "a", from_millis(T0 + 200)),
    ]


def test_a_fired_timer_is_offered_again_until_a_committed_state_drops_it() -> None:
    q = TimerQueue()
    q.track(state("e1", a=T0))
    assert len(q.due(T0)) == 1
    assert q.due(T0 + RETRY_MS - 1) == []
    assert len(q.due(T0 + RETRY_MS)) == 1  # the firing's transaction aborted: still pending
    q.track(state("e1"))  # committed: the timer is gone
    assert q.due(T0 + 10 * RETRY_MS) == [] and len(q) == 0


def test_a_moved_timer_is_due_at_its_new_time_only() -> None:
    q = TimerQueue()
    q.track(state("e1", a=T0 + 100))
    q.track(state("e1", a=T0 + 5000))
    assert q.due(T0 + 1000) == []
    assert [d.due_at for d in q.due(T0 + 5000)] == [from_millis(T0) + timedelta(milliseconds=5000)]


def test_a_forgotten_execution_has_no_timers() -> None:
    q = TimerQueue()
    q.track(state("e1", a=T0))
    q.forget("e1")
    assert q.due(T0 + 1) == []


def test_a_paused_runs_timers_wait_for_its_resume_but_its_deadline_does_not() -> None:
    """ADR 0034: resuming handles the timers due by then; only the deadline fires while paused."""
    running = state("e1", execution_timeout=T0 + 100).model_copy(
        update={
            "timers": {
                "execution_timeout": Timer(
                    id="execution_timeout", kind=TimerKind.EXECUTION_TIMEOUT, due_at=from_millis(T0 + 100)
                ),
                "wait:w:1": Timer(
                    id="wait:w:1", kind=TimerKind.WAIT, due_at=from_millis(T0 + 50), node_id="w", attempt=1
                ),
            }
        }
    )
    q = TimerQueue()
    q.track(running.model_copy(update={"status": ExecutionStatus.PAUSED}))
    assert [d.timer_id for d in q.due(T0 + 200)] == ["execution_timeout"]
    q.track(running)  # resumed with the wait still held (say, a state before the resume's decision)
    assert "wait:w:1" in [d.timer_id for d in q.due(T0 + 200 + RETRY_MS)]


def _ended(execution_id: str) -> ExecutionState:
    return state(execution_id).model_copy(update={"status": ExecutionStatus.SUCCESS})


def test_runs_that_ended_long_before_their_timers_leave_nothing_behind() -> None:
    """A run with a 30-day deadline that ends in a second: its heap entry must not stay a month
    (at a million runs a day that was gigabytes)."""
    q = TimerQueue()
    month = 30 * 86_400_000
    q.track(state("warm", a=T0 + month))
    q.track(_ended("warm"))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            q.track(state(f"run-{i:05d}", deadline=T0 + month + i))
            if i % 2:
                q.forget(f"run-{i:05d}")  # ended and expired
            else:
                q.track(_ended(f"run-{i:05d}"))  # ended: no timer offered
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(q) == 0 and q.due(T0 + 2 * month) == []
    assert kept < 1_000_000, f"{kept / 1e6:.1f} MB kept by 20,000 runs that ended"


def test_dropping_outdated_entries_keeps_a_fired_timers_retry_time() -> None:
    q = TimerQueue()
    q.track(state("live", a=T0))
    assert [d.timer_id for d in q.due(T0)] == ["a"]  # fired; its transaction has not committed
    for i in range(5_000):  # enough runs ending to rebuild the heap
        q.track(state(f"gone-{i}", b=T0 + 86_400_000))
        q.forget(f"gone-{i}")
    assert q.due(T0 + RETRY_MS - 1) == [], "offered again before its retry time"
    assert [d.timer_id for d in q.due(T0 + RETRY_MS)] == ["a"]
    assert q.next_due_ms() == T0 + 2 * RETRY_MS and len(q) == 1

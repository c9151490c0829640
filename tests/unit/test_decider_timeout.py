"""Setting an execution's timeout while it runs (EXEC-009)."""

from __future__ import annotations

from datetime import timedelta

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import DeciderConfig, NodeKind, decide
from linkflow_stream.core.events import Dispatch, EventType
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, StartExecution
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, Timer, TimerKind, evolve
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition

T0 = from_millis(1_800_000_000_000)
CFG = DeciderConfig(kinds={"wait": NodeKind(Dispatch.TIMER)})
DEADLINE = Timer.make_id(TimerKind.EXECUTION_TIMEOUT)


def started(timeout: float | None = None) -> ExecutionState:
    wf = WorkflowDefinition(
        id="wf",
        created_at=T0,
        timeout_seconds=timeout,
        nodes=(NodeDefinition(id="w", type="wait", config={"seconds": 600}),),
    )
    state = None
    for e in decide(None, StartExecution(execution_id="e", workflow=wf, input={}, requested_at=T0), T0, CFG):
        state = evolve(state, e)
    assert state is not None
    return state


def set_timeout(state: ExecutionState, seconds: float, at: float) -> tuple[ExecutionState, list[EventType]]:
    command = ExecutionCommand(execution_id="e", kind=CommandKind.SET_TIMEOUT, timeout_seconds=seconds)
    events = decide(state, command, T0 + timedelta(seconds=at), CFG)
    for e in events:
        state = evolve(state, e)
    return state, [e.type for e in events]


def test_a_timeout_sets_the_deadline_from_the_start() -> None:
    state, types = set_timeout(started(), 300, at=10)
    assert types == [EventType.EXECUTION_DEADLINE_SET]
    assert state.timers[DEADLINE].due_at == T0 + timedelta(seconds=300)
    state, _ = set_timeout(state, 30, at=11)  # shortening replaces the deadline
    assert state.timers[DEADLINE].due_at == T0 + timedelta(seconds=30)
    assert state.status is ExecutionStatus.RUNNING


def test_a_deadline_already_past_ends_the_run_at_once() -> None:
    state, types = set_timeout(started(timeout=3600), 5, at=10)
    assert types[0] is EventType.EXECUTION_DEADLINE_SET
    assert types[-1] is EventType.EXECUTION_FAILED
    assert state.status is ExecutionStatus.FAILED
    assert "timed out" in (state.history[-1].reason or "")


def test_a_finished_run_ignores_a_new_timeout() -> None:
    state, _ = set_timeout(started(), 1, at=10)
    assert set_timeout(state, 500, at=11)[1] == []

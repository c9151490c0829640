"""Recovering a run by request: tasks in flight are dispatched again at once (EXEC-005)."""

from __future__ import annotations

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import DeciderConfig, NodeKind, decide
from linkflow_stream.core.events import Dispatch, EventType
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, NodeResult, StartExecution
from linkflow_stream.core.state import ExecutionState, evolve
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition

T0 = from_millis(1_800_000_000_000)
CFG = DeciderConfig(kinds={"http": NodeKind(Dispatch.TASK), "wait": NodeKind(Dispatch.TIMER)})
RECOVER = ExecutionCommand(execution_id="e", kind=CommandKind.RECOVER)


def step(
    state: ExecutionState | None, inp: StartExecution | NodeResult | ExecutionCommand
) -> tuple[ExecutionState, list[tuple[EventType, str | None, int | None]]]:
    events = decide(state, inp, T0, CFG)
    for e in events:
        state = evolve(state, e)
    assert state is not None
    return state, [(e.type, e.node_id, e.attempt) for e in events]


def start() -> ExecutionState:
    wf = WorkflowDefinition(
        id="wf",
        created_at=T0,
        nodes=(
            NodeDefinition(id="h", type="http", config={}),
            NodeDefinition(id="w", type="wait", config={"seconds": 60}),
        ),
    )
    state, _ = step(None, StartExecution(execution_id="e", workflow=wf, input={}, requested_at=T0))
    return state


def test_recover_dispatches_tasks_in_flight_again_and_leaves_timers_alone() -> None:
    state, events = step(start(), RECOVER)
    assert events == [(EventType.NODE_STARTED, "h", 2)], "the wait is a timer, not a task in flight"
    late = NodeResult(
        execution_id="e", node_id="h", attempt=1, ok=True, output=1, started_at=T0, finished_at=T0
    )
    assert step(state, late)[1] == [], "the abandoned attempt's result no longer counts"
    fresh = late.model_copy(update={"attempt": 2})
    assert step(state, fresh)[1][0] == (EventType.NODE_SUCCEEDED, "h", 2)


def test_recover_of_an_ended_run_does_nothing() -> None:
    state, _ = step(start(), ExecutionCommand(execution_id="e", kind=CommandKind.CANCEL))
    assert step(state, RECOVER)[1] == []

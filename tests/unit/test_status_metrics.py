"""The per-execution metrics view, as a pure function of the execution's state."""

from __future__ import annotations

from datetime import timedelta

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import DeciderConfig, NodeKind, decide
from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, NodeError, NodeResult, StartExecution
from linkflow_stream.core.state import ExecutionState, evolve
from linkflow_stream.core.workflow import NodeDefinition, RetryPolicy, WorkflowDefinition
from projections.status import render_metrics

T0 = from_millis(1_800_000_000_000)
CFG = DeciderConfig(kinds={"http": NodeKind(Dispatch.TASK)})


def fold(
    state: ExecutionState | None, inp: StartExecution | NodeResult | ExecutionCommand, at: float
) -> ExecutionState:
    for event in decide(state, inp, T0 + timedelta(seconds=at), CFG):
        state = evolve(state, event)
    assert state is not None
    return state


def result(attempt: int, ok: bool, usage: dict[str, int]) -> NodeResult:
    error = None if ok else NodeError(error_class="http_5xx", message="boom", retryable=True)
    return NodeResult(
        execution_id="e",
        node_id="h",
        attempt=attempt,
        ok=ok,
        output={"x": 1} if ok else None,
        error=error,
        started_at=T0,
        finished_at=T0,
        usage=usage,
    )


def test_metrics_sum_attempts_retries_and_usage() -> None:
    wf = WorkflowDefinition(
        id="wf",
        created_at=T0,
        nodes=(
            NodeDefinition(
                id="h", type="http", config={}, retry=RetryPolicy(max_attempts=3, initial_delay_seconds=0)
            ),
        ),
    )
    state = fold(None, StartExecution(execution_id="e", workflow=wf, input={}, requested_at=T0), 0)
    running = render_metrics(state, T0 + timedelta(seconds=2))
    assert (running["status"], running["duration_seconds"], running["attempts"]) == ("running", 2.0, 1)
    state = fold(state, result(1, ok=False, usage={"response_bytes": 10}), 1)
    [retry_timer] = [t for t in state.timers if t.startswith("retry:")]
    state = fold(
        state, ExecutionCommand(execution_id="e", kind=CommandKind.TIMER_FIRED, timer_id=retry_timer), 1
    )
    state = fold(state, result(2, ok=True, usage={"response_bytes": 32, "request_bytes": 5}), 3.5)
    done = render_metrics(state, T0 + timedelta(seconds=99))
    assert done["status"] == "success"
    assert done["duration_seconds"] == 3.5, "a finished run's duration ignores the reading time"
    assert (done["attempts"], done["retries"]) == (2, 1)
    assert done["usage"] == {"response_bytes": 42, "request_bytes": 5}
    assert done["nodes"]["h"]["attempts"] == 2
    assert done["nodes_by_status"] == {"success": 1}
    assert done["events"] == state.seq


def test_queue_counts_split_queued_and_running_by_priority() -> None:
    from linkflow_stream.core.messages import Priority
    from projections.status import StatusView

    wf = WorkflowDefinition(id="wf", created_at=T0, nodes=(NodeDefinition(id="h", type="http"),))
    view = StatusView()
    for execution_id, priority in (("q1", Priority.HIGH), ("q2", Priority.LOW), ("r1", Priority.HIGH)):
        view.accept(
            StartExecution(
                execution_id=execution_id, workflow=wf, input={}, priority=priority, requested_at=T0
            )
        )
    start = StartExecution(execution_id="r1", workflow=wf, input={}, priority=Priority.HIGH, requested_at=T0)
    for event in decide(None, start, T0, CFG):
        view.apply(event)
    assert view.queue_counts() == {
        "high": {"queued": 1, "running": 1},
        "normal": {"queued": 0, "running": 0},
        "low": {"queued": 1, "running": 0},
    }


def test_watchers_hear_of_each_announced_change_of_their_run_only() -> None:
    """``StatusView.watch``: a flag per watcher, set by ``notify``; many changes, one wake-up."""
    from projections.status import StatusView

    wf = WorkflowDefinition(id="wf", created_at=T0, nodes=(NodeDefinition(id="h", type="http", config={}),))
    view = StatusView()
    mine, other = view.watch("e"), view.watch("f")
    state = fold(None, StartExecution(execution_id="e", workflow=wf, input={}, requested_at=T0), 0)
    assert not mine.is_set(), "nothing announced yet"
    view.notify([state])
    view.notify([state])
    assert mine.is_set() and not other.is_set()
    mine.clear()
    view.unwatch("e", mine)
    view.notify([state])
    assert not mine.is_set(), "an unwatched flag is never set again"
    view.unwatch("f", other)
    assert not view._watchers, "the last watcher of a run takes its entry with it"

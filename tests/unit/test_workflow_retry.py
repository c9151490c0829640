"""A workflow-wide retry policy governs nodes that set none (EXEC-008)."""

from __future__ import annotations

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import DeciderConfig, NodeKind, decide
from linkflow_stream.core.events import Dispatch, EventType
from linkflow_stream.core.messages import NodeError, NodeResult, StartExecution
from linkflow_stream.core.state import ExecutionState, evolve
from linkflow_stream.core.workflow import NodeDefinition, RetryPolicy, WorkflowDefinition

T0 = from_millis(1_800_000_000_000)
CFG = DeciderConfig(kinds={"http": NodeKind(Dispatch.TASK)})


def fail_first_attempt(wf: WorkflowDefinition) -> list[EventType]:
    state: ExecutionState | None = None
    for e in decide(None, StartExecution(execution_id="e", workflow=wf, input={}, requested_at=T0), T0, CFG):
        state = evolve(state, e)
    error = NodeError(error_class="http_5xx", message="503", retryable=True)
    failed = NodeResult(
        execution_id="e", node_id="h", attempt=1, ok=False, error=error, started_at=T0, finished_at=T0
    )
    return [e.type for e in decide(state, failed, T0, CFG)]


def test_the_workflow_policy_applies_to_nodes_without_their_own() -> None:
    node = NodeDefinition(id="h", type="http")
    plain = WorkflowDefinition(id="wf", created_at=T0, nodes=(node,))
    assert fail_first_attempt(plain)[0] is EventType.NODE_FAILED
    with_default = plain.model_copy(update={"retry": RetryPolicy(max_attempts=3)})
    assert fail_first_attempt(with_default) == [EventType.NODE_RETRY_SCHEDULED]
    own = node.model_copy(update={"retry": RetryPolicy(max_attempts=1)})
    overridden = with_default.model_copy(update={"nodes": (own,)})
    assert fail_first_attempt(overridden)[0] is EventType.NODE_FAILED, "a node's own policy wins"


def test_schedule_lists_the_waits_before_each_retry() -> None:
    assert RetryPolicy(max_attempts=4, initial_delay_seconds=1, multiplier=2).schedule() == [1.0, 2.0, 4.0]
    assert RetryPolicy(max_attempts=3, initial_delay_seconds=5, multiplier=1).schedule() == [5.0, 5.0]
    assert RetryPolicy(max_attempts=1).schedule() == []

"""What a partition keeps of a finished run (``finished_marker``)."""

from __future__ import annotations

import weakref
from datetime import UTC, datetime

from linkflow_stream.core.messages import Priority, Signal
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, NodeState, NodeStatus
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.runtime.partition import finished_marker

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WORKFLOW = WorkflowDefinition(
    id="wf", version=3, created_at=T0, nodes=(NodeDefinition(id="n", type="transform"),)
)


def ended(run: str, workflow: WorkflowDefinition = WORKFLOW) -> ExecutionState:
    return ExecutionState(
        id=run,
        workflow=workflow,
        status=ExecutionStatus.SUCCESS,
        priority=Priority.NORMAL,
        input={"x": 1},
        created_at=T0,
        finished_at=T0,
        seq=4,
        nodes={"n": NodeState(status=NodeStatus.SUCCESS, attempts=1, output=1)},
        signals=(Signal(name="approved", id="s2", payload={"big": "x" * 1000}),),
        signal_ids=("s1", "s2"),
    )


def test_a_marker_keeps_the_run_without_its_nodes_input_or_definition_nodes() -> None:
    marker = finished_marker(ended("r1"))
    assert (marker.id, marker.status, marker.finished_at, marker.seq) == (
        "r1",
        ExecutionStatus.SUCCESS,
        T0,
        4,
    )
    assert marker.nodes == {} and marker.input is None and marker.history == ()
    assert (marker.signals, marker.signal_ids) == ((), ()), "the decider ignores a finished run's signals"
    assert finished_marker(marker) is marker, "a marker is its own marker"
    assert (marker.workflow.id, marker.workflow.version, marker.workflow.nodes) == ("wf", 3, ())
    assert WORKFLOW.nodes, "the run's definition itself is untouched"


def test_the_markers_of_one_definition_share_one_copy_of_it() -> None:
    """Runs of a version share one definition object; their markers share one copy without its
    nodes, not one each (ADR 0070): three objects fewer per finished run for the collector."""
    first, second = finished_marker(ended("r1")), finished_marker(ended("r2"))
    assert first.workflow is second.workflow
    other = WORKFLOW.model_copy(update={"version": 4})
    assert finished_marker(ended("r3", other)).workflow.version == 4


def test_the_shared_copy_does_not_keep_a_definition_alive() -> None:
    definition = WORKFLOW.model_copy(update={"version": 5})
    finished_marker(ended("r4", definition))
    gone = weakref.ref(definition)
    del definition
    assert gone() is None

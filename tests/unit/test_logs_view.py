"""Execution log lines, folded from events: readable, levelled, searchable, capped."""

from __future__ import annotations

from datetime import timedelta

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import DeciderConfig, NodeKind, decide
from linkflow_stream.core.events import Dispatch
from linkflow_stream.core.messages import NodeError, NodeResult, StartExecution
from linkflow_stream.core.state import ExecutionState, evolve
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from projections.logs import LogView

T0 = from_millis(1_800_000_000_000)
CFG = DeciderConfig(kinds={"code": NodeKind(Dispatch.TASK)})


def feed(
    view: LogView, state: ExecutionState | None, inp: StartExecution | NodeResult, at: float
) -> ExecutionState:
    for event in decide(state, inp, T0 + timedelta(seconds=at), CFG):
        state = evolve(state, event)
        view.record(event, state)
    assert state is not None
    return state


def test_a_failed_code_run_reads_as_a_story() -> None:
    wf = WorkflowDefinition(id="wf", created_at=T0, nodes=(NodeDefinition(id="c", type="code"),))
    view = LogView()
    state = feed(view, None, StartExecution(execution_id="e", workflow=wf, input={}, requested_at=T0), 0)
    failure = NodeResult(
        execution_id="e",
        node_id="c",
        attempt=1,
        ok=False,
        started_at=T0,
        finished_at=T0,
        error=NodeError(error_class="code_error", message="ZeroDivisionError: division by zero"),
        logs={"stdout": "step 1\nstep 2\n", "stderr": "careful\n"},
    )
    feed(view, state, failure, 1.5)
    messages = [(line["level"], line["message"]) for line in view.query("e")]
    assert messages == [
        ("info", "execution created: workflow wf v1, priority normal"),
        ("info", "execution started"),
        ("info", "code node c started, attempt 1, on an executor"),
        ("info", "step 1"),
        ("info", "step 2"),
        ("warning", "careful"),
        ("error", "code node c failed: code_error: ZeroDivisionError: division by zero"),
        ("error", "execution failed: node c failed: ZeroDivisionError: division by zero"),
    ]
    assert [line["message"] for line in view.query("e", level="warning")][:1] == ["careful"]
    assert len(view.query("e", level="error")) == 2
    assert [line["message"] for line in view.query("e", text="STEP")] == ["step 1", "step 2"]
    assert view.query("e", node_id="c", limit=1)[0]["data"] == {"error_class": "code_error"}
    assert view.query("unknown") == []


def test_followers_get_new_lines_and_an_end_marker() -> None:
    wf = WorkflowDefinition(id="wf", created_at=T0, nodes=(NodeDefinition(id="c", type="code"),))
    view = LogView()
    state = feed(view, None, StartExecution(execution_id="e", workflow=wf, input={}, requested_at=T0), 0)
    queue = view.follow("e")
    ok = NodeResult(
        execution_id="e", node_id="c", attempt=1, ok=True, output=1, started_at=T0, finished_at=T0
    )
    feed(view, state, ok, 2)
    got = []
    while not queue.empty():
        got.append(queue.get_nowait())
    assert [g["message"] if g else None for g in got] == [
        "code node c succeeded in 2.000s",
        "execution succeeded",
        None,
    ]

"""Sub-workflows (ADR 0036): a ``workflow`` node starts a child run with a fixed id and waits on
a timer; the child's end reports to the parent's node; leaving the node early cancels the child."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.events import Dispatch, EventType
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, NodeError, NodeResult, StartExecution
from linkflow_stream.core.run_links import MAX_DEPTH, child_output, child_run_id, parent_result
from linkflow_stream.core.start_request import EXECUTION_ID, StartRequest
from linkflow_stream.core.state import ExecutionState, NodeStatus, TimerKind
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.runtime.step import Step, Stepper
from linkflow_stream.settings import Settings
from projections.status import render

NOW = from_millis(1_800_000_000_000)
CALL = {
    "id": "call",
    "type": "workflow",
    "timeout_seconds": 60,
    "config": {"workflow_id": "child", "input": "{'n': input.n * 2}"},
}


def stepper() -> Stepper:
    registry = build_registry(Settings())
    return Stepper(registry, decider_config(registry, Settings()))


def started(
    orch: Stepper,
    nodes: list[dict[str, Any]],
    execution_id: str = "p1",
    workflow_id: str = "parent",
    links: dict[str, str] | None = None,
    input_data: Any = None,
) -> Step:
    wf = parse_workflow({"id": workflow_id, "nodes": nodes}, orch.registry, version=1, created_at=NOW)
    request = StartExecution(
        execution_id=execution_id,
        workflow=wf,
        input=input_data if input_data is not None else {"n": 21},
        requested_at=NOW,
        links=links or {},
    )
    return asyncio.run(orch.step(None, request, NOW))


def records(step: Step, kind: type) -> list[Any]:
    return [o.record for o in step.outputs if isinstance(o.record, kind)]


def child_result(
    ok: bool, attempt: int = 1, output: Any = None, error: NodeError | None = None
) -> NodeResult:
    return NodeResult(
        execution_id="p1",
        node_id="call",
        attempt=attempt,
        ok=ok,
        output=output,
        error=error,
        started_at=NOW,
        finished_at=NOW,
    )


def test_a_workflow_node_starts_its_child_and_waits_holding_no_slot() -> None:
    step = started(stepper(), [CALL])
    assert step.state is not None
    [request] = records(step, StartRequest)
    assert request == StartRequest(
        workflow_id="child",
        input={"n": 42},
        execution_id="p1.call.1",
        links={"parent": "p1", "parent_node": "call", "parent_attempt": "1", "depth": "1"},
    )
    [out] = [o for o in step.outputs if isinstance(o.record, StartRequest)]
    assert (out.topic, out.key) == (topic_names.START, "p1.call.1")
    started_event = next(e for e in step.events if e.type is EventType.NODE_STARTED)
    assert started_event.dispatch is Dispatch.CHILD
    [timer] = [t for t in step.state.timers.values() if t.node_id == "call"]
    assert timer.kind is TimerKind.CHILD
    assert timer.due_at == NOW + timedelta(seconds=60)
    assert not [o for o in step.outputs if o.topic.startswith("linkflow.tasks.")]


def test_the_childs_output_becomes_the_nodes_output() -> None:
    orch = stepper()
    step = started(
        orch,
        [
            CALL,
            {
                "id": "after",
                "type": "transform",
                "depends_on": ["call"],
                "config": {"expression": "nodes.call.v + 1"},
            },
        ],
    )
    done = asyncio.run(orch.step(step.state, child_result(True, output={"v": 1}), NOW))
    assert done.state is not None
    assert done.state.status.value == "success"
    assert done.state.nodes["after"].output == 2
    assert records(done, ExecutionCommand) == []  # the child ended by itself: nothing to cancel


def test_a_failed_child_fails_the_node_with_its_error() -> None:
    orch = stepper()
    step = started(orch, [CALL])
    error = NodeError(error_class="http_5xx", message="child run p1.call.1 failed: boom")
    done = asyncio.run(orch.step(step.state, child_result(False, error=error), NOW))
    assert done.state is not None
    assert done.state.status.value == "failed"
    assert done.state.nodes["call"].error == error
    assert records(done, ExecutionCommand) == []


def test_cancelling_the_parent_cancels_the_child() -> None:
    orch = stepper()
    step = started(orch, [CALL])
    cancel = ExecutionCommand(execution_id="p1", kind=CommandKind.CANCEL, reason="stop")
    done = asyncio.run(orch.step(step.state, cancel, NOW))
    [command] = records(done, ExecutionCommand)
    assert command.execution_id == "p1.call.1"
    assert command.kind is CommandKind.CANCEL
    [out] = [o for o in done.outputs if isinstance(o.record, ExecutionCommand)]
    assert (out.topic, out.key) == (topic_names.COMMANDS, "p1.call.1")


def test_a_node_timeout_fails_the_node_and_cancels_the_child_and_a_retry_starts_a_new_one() -> None:
    orch = stepper()
    node = {**CALL, "retry": {"max_attempts": 2, "initial_delay_seconds": 1}}
    step = started(orch, [node])
    due = NOW + timedelta(seconds=60)
    fired = ExecutionCommand(
        execution_id="p1", kind=CommandKind.TIMER_FIRED, timer_id="child:call:1", due_at=due
    )
    timed_out = asyncio.run(orch.step(step.state, fired, due))
    assert [c.execution_id for c in records(timed_out, ExecutionCommand)] == ["p1.call.1"]
    assert timed_out.state is not None
    assert timed_out.state.nodes["call"].error is not None
    assert timed_out.state.nodes["call"].error.error_class == "timeout"
    retry_due = due + timedelta(seconds=1)
    retry = ExecutionCommand(
        execution_id="p1", kind=CommandKind.TIMER_FIRED, timer_id="retry:call:1", due_at=retry_due
    )
    again = asyncio.run(orch.step(timed_out.state, retry, retry_due))
    assert [r.execution_id for r in records(again, StartRequest)] == ["p1.call.2"]
    # the first child's late result changes nothing
    late = asyncio.run(orch.step(again.state, child_result(True, output=1), retry_due))
    assert late.events == []


def test_a_finished_child_reports_to_its_parents_partition() -> None:
    orch = stepper()
    links = {"parent": "p1", "parent_node": "call", "parent_attempt": "3"}
    nodes = [
        {"id": "a", "type": "transform", "config": {"expression": "input.n + 1"}},
        {"id": "b", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a * 2"}},
    ]
    step = started(orch, nodes, execution_id="p1.call.3", workflow_id="child", links=links)
    [result] = records(step, NodeResult)
    assert (result.execution_id, result.node_id, result.attempt, result.ok, result.output) == (
        "p1",
        "call",
        3,
        True,
        44,
    )
    [out] = [o for o in step.outputs if isinstance(o.record, NodeResult)]
    assert (out.topic, out.key) == (topic_names.RESULTS, "p1")
    assert render(step.state)["parent"] == "p1"  # type: ignore[arg-type]


def test_a_failed_child_reports_its_failed_nodes_error() -> None:
    orch = stepper()
    links = {"parent": "p1", "parent_node": "call", "parent_attempt": "1"}
    nodes = [{"id": "x", "type": "transform", "config": {"expression": "$error('no')"}}]
    step = started(orch, nodes, execution_id="p1.call.1", workflow_id="child", links=links)
    [result] = records(step, NodeResult)
    assert not result.ok
    assert result.error is not None
    assert step.state is not None
    assert result.error.error_class == step.state.nodes["x"].error.error_class  # type: ignore[union-attr]
    assert "no" in result.error.message


def test_a_run_without_a_parent_reports_to_none() -> None:
    step = started(stepper(), [{"id": "a", "type": "transform", "config": {"expression": "1"}}])
    assert records(step, NodeResult) == []
    assert step.state is not None
    assert parent_result(step.state, NOW) is None


def test_a_child_input_that_cannot_be_computed_fails_the_node_and_cancels_nothing() -> None:
    node = {**CALL, "config": {"workflow_id": "child", "input": "$error('bad input')"}}
    step = started(stepper(), [node])
    assert step.state is not None
    assert step.state.nodes["call"].status is NodeStatus.FAILED
    assert records(step, StartRequest) == []
    assert records(step, ExecutionCommand) == []


def test_children_nest_one_level_deeper_up_to_a_bound() -> None:
    links = {"parent": "p0", "parent_node": "call", "parent_attempt": "1", "depth": "3"}
    [request] = records(started(stepper(), [CALL], links=links), StartRequest)
    assert request.links["depth"] == "4"
    step = started(stepper(), [CALL], links={**links, "depth": str(MAX_DEPTH)})
    assert records(step, StartRequest) == []
    assert step.state is not None
    error = step.state.nodes["call"].error
    assert error is not None
    assert "nest deeper" in error.message


def test_several_sinks_report_an_object_of_their_outputs() -> None:
    nodes = [
        {"id": "a", "type": "transform", "config": {"expression": "1"}},
        {"id": "b", "type": "transform", "config": {"expression": "2"}},
    ]
    step = started(stepper(), nodes, workflow_id="child")
    assert step.state is not None
    assert child_output(step.state) == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"workflow_id": "parent"}, "cannot call itself"),
        ({}, "workflow_id"),
        ({"workflow_id": "child", "version": 0}, "version"),
        ({"workflow_id": "child", "input": "{"}, "input"),
        ({"workflow_id": "child", "extra": 1}, "extra"),
    ],
)
def test_bad_workflow_nodes_are_refused_at_registration(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_workflow(
            {"id": "parent", "nodes": [{"id": "call", "type": "workflow", "config": config}]},
            stepper().registry,
            version=1,
            created_at=NOW,
        )


ID_TEXT = st.text(alphabet="abcXYZ09_.-", min_size=1, max_size=128)
NODE_TEXT = st.text(alphabet="abcXYZ09_-", min_size=1, max_size=64)


@settings(max_examples=100, deadline=None)
@given(ID_TEXT, NODE_TEXT, st.integers(1, 100), ID_TEXT, NODE_TEXT, st.integers(1, 100))
def test_child_ids_are_valid_and_distinct_per_parent_node_and_attempt(
    p1: str, n1: str, a1: int, p2: str, n2: str, a2: int
) -> None:
    first, second = child_run_id(p1, n1, a1), child_run_id(p2, n2, a2)
    assert EXECUTION_ID.fullmatch(first)
    assert first == child_run_id(p1, n1, a1)
    if (p1, n1, a1) != (p2, n2, a2):
        assert first != second


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(lambda ok, attempt: ("result", ok, attempt), st.booleans(), st.integers(1, 3)),
            st.just(("cancel", None, None)),
            st.builds(lambda s: ("timer", s, None), st.integers(0, 200)),
        ),
        max_size=6,
    )
)
def test_every_child_started_is_cancelled_or_ended_once_the_parent_ends(inputs: list[Any]) -> None:
    """Whatever mix of child results, cancels and timer firings, the step never starts two
    children for one attempt, and once the parent has ended each child it started either
    reported (its attempt's result ended the node) or was sent a cancel."""
    orch = stepper()
    node = {**CALL, "retry": {"max_attempts": 3, "initial_delay_seconds": 1}}
    step = started(orch, [node])
    state: ExecutionState | None = step.state
    started_ids = [r.execution_id for r in records(step, StartRequest)]
    ended: set[str] = set()
    clock = NOW
    for kind, a, b in inputs:
        assert state is not None
        if kind == "result":
            inp: Any = child_result(
                a,
                attempt=b,
                output=1,
                error=None if a else NodeError(error_class="timeout", message="x", retryable=True),
            )
        elif kind == "cancel":
            inp = ExecutionCommand(execution_id="p1", kind=CommandKind.CANCEL)
        else:
            clock = clock + timedelta(seconds=a)
            due = min((t for t in state.timers.values()), key=lambda t: t.due_at, default=None)
            if due is None:
                continue
            clock = max(clock, due.due_at)
            inp = ExecutionCommand(
                execution_id="p1", kind=CommandKind.TIMER_FIRED, timer_id=due.id, due_at=due.due_at
            )
        before = state
        out = asyncio.run(orch.step(state, inp, clock))
        started_ids += [r.execution_id for r in records(out, StartRequest)]
        ended |= {c.execution_id for c in records(out, ExecutionCommand)}
        if isinstance(inp, NodeResult) and out.events and before.nodes["call"].attempts == inp.attempt:
            ended.add(child_run_id("p1", "call", inp.attempt))
        state = out.state
    assert len(started_ids) == len(set(started_ids))
    assert state is not None
    if state.status.terminal:
        assert set(started_ids) <= ended


def test_a_child_cancelled_twice_gets_two_distinct_cloudevents_ids() -> None:
    """Its node times out into a retry (one cancel), then the parent is cancelled while the retry
    waits (another). CloudEvents ids must be unique per source; they are derived, not random, so
    deciding again writes the same ones (ADR 0056 took the event's seq out of them)."""
    orch = stepper()
    step = started(orch, [{**CALL, "retry": {"max_attempts": 2, "initial_delay_seconds": 30}}])
    due = NOW + timedelta(seconds=60)
    fired = ExecutionCommand(
        execution_id="p1", kind=CommandKind.TIMER_FIRED, timer_id="child:call:1", due_at=due
    )
    timed_out = asyncio.run(orch.step(step.state, fired, due))
    cancel = ExecutionCommand(execution_id="p1", kind=CommandKind.CANCEL, reason="stop")
    stopped = asyncio.run(orch.step(timed_out.state, cancel, due))
    ids = [o.ce_id for s in (timed_out, stopped) for o in s.outputs if isinstance(o.record, ExecutionCommand)]
    assert [
        o.key for s in (timed_out, stopped) for o in s.outputs if isinstance(o.record, ExecutionCommand)
    ] == [
        "p1.call.1",
        "p1.call.1",
    ]
    assert len(set(ids)) == 2, ids

"""Queued runs (ADR 0030): the decider's ``queued`` status and ``admit`` command, the step's
requests to the gate, and the validation of ``concurrency``."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import decide
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.gate import GateRequest, GateRequestKind
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, StartExecution
from linkflow_stream.core.state import ExecutionStatus, TimerKind, evolve
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.core.workflow import Concurrency, WorkflowDefinition
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.runtime.step import Stepper
from linkflow_stream.settings import Settings
from projections.logs import lines_for
from projections.status import StatusView, render

E = EventType


def limited(lf: Any, timeout_seconds: float | None = None, key: str | None = None) -> WorkflowDefinition:
    wf: WorkflowDefinition = lf.workflow(
        lf.node("a", "http"), lf.node("b", depends_on=["a"]), timeout_seconds=timeout_seconds
    )
    return wf.model_copy(update={"concurrency": Concurrency(max=2, key=key)})


def admit(execution_id: str = "e1") -> ExecutionCommand:
    return ExecutionCommand(execution_id=execution_id, kind=CommandKind.ADMIT)


def types(events: list[ExecutionEvent]) -> list[tuple[EventType, str | None]]:
    return [(e.type, e.node_id) for e in events]


def test_a_limited_workflow_starts_queued_and_dispatches_nothing(lf: Any) -> None:
    run = lf.run()
    events = run.feed(lf.start(limited(lf)), lf.at())
    assert types(events) == [(E.EXECUTION_CREATED, None), (E.EXECUTION_QUEUED, None)]
    assert run.s.status is ExecutionStatus.QUEUED
    assert run.s.gated
    assert [t.to_status for t in run.s.history] == [ExecutionStatus.PENDING, ExecutionStatus.QUEUED]
    assert run.s.timers == {}


def test_admit_starts_the_run_and_its_deadline_counts_from_admission(lf: Any) -> None:
    run = lf.run(limited(lf, timeout_seconds=60))
    events = run.feed(admit(), lf.at(100))
    assert types(events) == [(E.EXECUTION_STARTED, None), (E.NODE_STARTED, "a")]
    assert run.s.status is ExecutionStatus.RUNNING
    assert run.s.started_at == lf.at(100)
    assert run.s.timers["execution_timeout"].due_at == lf.at(160)
    assert [t.to_status for t in run.s.history][-1] is ExecutionStatus.RUNNING


def test_a_second_admit_changes_nothing(lf: Any) -> None:
    run = lf.run(limited(lf))
    run.feed(admit(), lf.at(1))
    assert run.feed(admit(), lf.at(2)) == []
    run.feed(lf.ok("a"), lf.at(3))
    run.feed(lf.ok("b"), lf.at(3))
    assert run.s.status is ExecutionStatus.SUCCESS
    assert run.feed(admit(), lf.at(4)) == []


def test_a_queued_run_ignores_results_recover_and_stale_timers(lf: Any) -> None:
    run = lf.run(limited(lf))
    assert run.feed(lf.ok("a"), lf.at(1)) == []
    assert run.feed(ExecutionCommand(execution_id="e1", kind=CommandKind.RECOVER), lf.at(1)) == []
    assert run.feed(lf.fire("execution_timeout"), lf.at(1)) == []
    assert run.s.status is ExecutionStatus.QUEUED


def test_cancelling_a_queued_run_ends_it_without_starting_anything(lf: Any) -> None:
    run = lf.run(limited(lf))
    events = run.feed(lf.cancel("no longer needed"), lf.at(5))
    assert types(events) == [(E.NODE_CANCELLED, "a"), (E.NODE_CANCELLED, "b"), (E.EXECUTION_CANCELLED, None)]
    assert run.s.status is ExecutionStatus.CANCELLED
    assert run.feed(admit(), lf.at(6)) == []


def test_a_deadline_set_while_queued_counts_from_creation_and_can_end_it(lf: Any) -> None:
    run = lf.run(limited(lf))
    set_timeout = ExecutionCommand(execution_id="e1", kind=CommandKind.SET_TIMEOUT, timeout_seconds=10)
    run.feed(set_timeout, lf.at(1))
    assert run.s.timers["execution_timeout"].due_at == lf.at(10)
    events = run.feed(lf.fire("execution_timeout", due_at=lf.at(10)), lf.at(10))
    assert events[-1].type is E.EXECUTION_FAILED
    assert run.s.status is ExecutionStatus.FAILED


def test_a_deadline_set_while_queued_stays_at_admission(lf: Any) -> None:
    run = lf.run(limited(lf, timeout_seconds=600))
    set_timeout = ExecutionCommand(execution_id="e1", kind=CommandKind.SET_TIMEOUT, timeout_seconds=100)
    run.feed(set_timeout, lf.at(1))
    run.feed(admit(), lf.at(50))
    assert run.s.status is ExecutionStatus.RUNNING
    assert run.s.timers["execution_timeout"].due_at == lf.at(100)


def test_a_team_cap_gates_every_run(lf: Any) -> None:
    config = dataclasses.replace(lf.config, gate_all=True)
    run = lf.run(lf.workflow(lf.node("a")), config=config)
    assert run.s.status is ExecutionStatus.QUEUED
    assert types(run.feed(admit(), lf.at(1))) == [(E.EXECUTION_STARTED, None), (E.NODE_STARTED, "a")]


def test_without_a_limit_nothing_changes(lf: Any) -> None:
    run = lf.run(lf.workflow(lf.node("a", "http")))
    assert run.s.status is ExecutionStatus.RUNNING
    assert not run.s.gated


# ------------------------------------------------------------------------------------ properties

INPUTS = st.sampled_from(["admit", "cancel", "recover", "ok_a", "ok_b", "fire", "timeout", "lease"])


@settings(max_examples=200, deadline=None)
@given(st.lists(INPUTS, max_size=12), st.booleans())
def test_no_node_starts_before_admission_and_a_run_starts_once(
    lf: Any, inputs: list[str], deadline: bool
) -> None:
    run = lf.run(limited(lf, timeout_seconds=30 if deadline else None))
    for i, name in enumerate(inputs, start=1):
        now = lf.at(i * 10)
        inp: Any
        if name == "admit":
            inp = admit()
        elif name == "cancel":
            inp = lf.cancel()
        elif name == "recover":
            inp = ExecutionCommand(execution_id="e1", kind=CommandKind.RECOVER)
        elif name == "timeout":
            inp = ExecutionCommand(execution_id="e1", kind=CommandKind.SET_TIMEOUT, timeout_seconds=15)
        elif name == "fire":
            inp = lf.fire("execution_timeout")
        elif name == "lease":
            inp = lf.fire(lf.timer_id(TimerKind.LEASE, "a", 1))
        else:
            inp = lf.ok(name[-1])
        before = run.state
        events = run.feed(inp, now)
        assert decide(before, inp, now, run.config) == events  # deterministic
        state = None
        for e in run.log:  # the whole log folds, and evolve accepts every event
            state = evolve(state, e)
        assert state == run.state
    kinds = [e.type for e in run.log]
    assert kinds[:2] == [E.EXECUTION_CREATED, E.EXECUTION_QUEUED]
    assert kinds.count(E.EXECUTION_STARTED) <= 1
    started = kinds.index(E.EXECUTION_STARTED) if E.EXECUTION_STARTED in kinds else len(kinds)
    assert E.NODE_STARTED not in kinds[:started], "a node started before the run was admitted"
    if E.EXECUTION_STARTED not in kinds:
        assert run.s.status in (ExecutionStatus.QUEUED, ExecutionStatus.CANCELLED, ExecutionStatus.FAILED)


# ------------------------------------------------------------------------------------ the step


def stepper(**settings_: Any) -> Stepper:
    s = Settings(**settings_)
    registry = build_registry(s)
    return Stepper(registry, decider_config(registry, s))


def gate_requests(outputs: list[Any]) -> list[GateRequest]:
    return [o.record for o in outputs if isinstance(o.record, GateRequest)]


def workflow(body: dict[str, Any]) -> WorkflowDefinition:
    base = {
        "id": "wf",
        "team": "ops",
        "nodes": [{"id": "a", "type": "transform", "config": {"expression": "1"}}],
    }
    return parse_workflow({**base, **body}, build_registry(Settings()), version=1, created_at=NOW)


NOW = from_millis(1_800_000_000_000)


def start(wf: WorkflowDefinition, input_: Any, execution_id: str = "e1") -> StartExecution:
    return StartExecution(execution_id=execution_id, workflow=wf, input=input_, requested_at=NOW)


def test_a_queued_run_asks_the_gate_for_its_slot_by_key() -> None:
    wf = workflow({"concurrency": {"max": 3, "key": "customer"}})
    step = asyncio.run(stepper().step(None, start(wf, {"customer": "acme"}), NOW))
    [request] = gate_requests(step.outputs)
    assert request.kind is GateRequestKind.ENQUEUE
    assert (request.execution_id, request.team, request.slot, request.max) == ("e1", "ops", 'wf/"acme"', 3)
    assert [o.topic for o in step.outputs if isinstance(o.record, GateRequest)] == ["linkflow.gate"]


def test_a_key_that_cannot_be_evaluated_counts_as_undefined() -> None:
    wf = workflow({"concurrency": {"max": 1, "key": "$error('no')"}})
    step = asyncio.run(stepper().step(None, start(wf, {}), NOW))
    assert [r.slot for r in gate_requests(step.outputs)] == ["wf/null"]


def test_a_gated_run_releases_its_slot_when_it_ends_and_an_ungated_one_does_not() -> None:
    s = stepper()
    wf = workflow({"concurrency": {"max": 1}})
    queued = asyncio.run(s.step(None, start(wf, {}), NOW))
    assert [r.slot for r in gate_requests(queued.outputs)] == ["wf"]
    admitted = asyncio.run(s.step(queued.state, admit(), NOW + timedelta(seconds=1)))
    assert admitted.state is not None
    assert admitted.state.status is ExecutionStatus.SUCCESS
    assert [(r.kind, r.execution_id) for r in gate_requests(admitted.outputs)] == [
        (GateRequestKind.RELEASE, "e1")
    ]
    plain = asyncio.run(s.step(None, start(workflow({}), {}, "e2"), NOW))
    assert plain.state is not None
    assert plain.state.status is ExecutionStatus.SUCCESS
    assert gate_requests(plain.outputs) == []


def test_cancelling_a_queued_run_releases_it() -> None:
    s = stepper()
    queued = asyncio.run(s.step(None, start(workflow({"concurrency": {"max": 1}}), {}), NOW))
    cancel = ExecutionCommand(execution_id="e1", kind=CommandKind.CANCEL)
    cancelled = asyncio.run(s.step(queued.state, cancel, NOW))
    assert [r.kind for r in gate_requests(cancelled.outputs)] == [GateRequestKind.RELEASE]


def test_with_a_team_cap_every_run_is_gated_without_a_slot() -> None:
    step = asyncio.run(stepper(team_max_running=2).step(None, start(workflow({}), {}), NOW))
    [request] = gate_requests(step.outputs)
    assert (request.slot, request.max, request.team) == ("", None, "ops")


@pytest.mark.parametrize(
    ("concurrency", "message"),
    [
        ({"max": 0}, "concurrency.max"),
        ({"max": "two"}, "concurrency.max"),
        ({}, "concurrency.max"),
        ({"max": 2, "key": "customer +"}, "concurrency.key: JSONata syntax error"),
        ({"max": 2, "key": ""}, "concurrency.key"),
        ({"max": 2, "limit": 3}, "concurrency.limit"),
        (5, "concurrency"),
    ],
)
def test_bad_concurrency_shapes_are_refused(concurrency: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("+", r"\+")):
        workflow({"concurrency": concurrency})


def test_the_queue_status_counts_a_run_behind_a_limit_as_queued(lf: Any) -> None:
    view = StatusView()
    for event in decide(None, lf.start(limited(lf), execution_id="q"), lf.at(), lf.config):
        view.apply(event)
    run = lf.run(lf.workflow(lf.node("a", "http")))
    for event in run.log:
        view.apply(event)
    assert view.queue_counts()["normal"] == {"queued": 1, "running": 1}
    assert render(view.executions["q"])["status"] == "queued"


def test_the_run_log_says_it_waited(lf: Any) -> None:
    run = lf.run(limited(lf))
    run.feed(admit(), lf.at(3))
    state = None
    texts = []
    for event in run.log:
        state = evolve(state, event)
        texts += [line["message"] for line in lines_for(event, state)]
    assert texts[1:3] == ["execution queued: waiting for a concurrency slot", "execution started"]

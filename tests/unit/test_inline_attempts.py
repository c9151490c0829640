"""An inline node's attempt as one event (ADR 0056): what the step writes, and that every reader
of the log (the fold, the log lines, a replay) sees the same run as from a start and an end."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import Input
from linkflow_stream.core.events import Dispatch, EventType, ExecutionEvent
from linkflow_stream.core.inline_attempts import is_merged, merge
from linkflow_stream.core.messages import CommandKind, ExecutionCommand, NodeResult, StartExecution
from linkflow_stream.core.state import ExecutionState, NodeStatus, evolve
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.kafka import codec
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.runtime.step import Step, Stepper
from linkflow_stream.settings import Settings
from linkflow_stream.tracing.execution_spans import ExecutionSpans
from linkflow_stream.tracing.provider import Tracing
from projections.logs import lines_for

NOW = from_millis(1_800_000_000_000)

DIAMOND = [
    {"id": "a", "type": "transform", "config": {"expression": "input.x"}},
    {"id": "b", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a + 1"}},
    {"id": "c", "type": "transform", "depends_on": ["a"], "config": {"expression": "nodes.a * 2"}},
    {"id": "d", "type": "transform", "depends_on": ["b", "c"], "config": {"expression": "nodes.b + nodes.c"}},
    {"id": "e", "type": "transform", "depends_on": ["d"], "config": {"expression": "{'sum': nodes.d}"}},
]
BRANCHES = [
    {"id": "a", "type": "transform", "config": {"expression": "{'n': input.x}"}},
    {"id": "c", "type": "condition", "depends_on": ["a"], "config": {"expression": "nodes.a.n > 10"}},
    {"id": "big", "type": "transform", "depends_on": ["c:true"], "config": {"expression": "'big'"}},
    {"id": "small", "type": "transform", "depends_on": ["c:false"], "config": {"expression": "'small'"}},
]
FAILING = [
    {"id": "a", "type": "transform", "config": {"expression": "1"}},
    {"id": "b", "type": "transform", "config": {"expression": "$error('boom')"}},
    {"id": "z", "type": "transform", "depends_on": ["a", "b"], "config": {"expression": "2"}},
]
AROUND_A_TASK = [
    {"id": "a", "type": "transform", "config": {"expression": "{'id': 7}"}},
    {"id": "h", "type": "http", "depends_on": ["a"], "config": {"url": "https://example.org/x"}},
    {"id": "z", "type": "transform", "depends_on": ["h"], "config": {"expression": "nodes.h.status"}},
]


class Run:
    """One run through the real step, every step's events kept, as the orchestrator commits them."""

    def __init__(self, nodes: list[dict[str, Any]], input_data: Any, merge_inline: bool = True) -> None:
        settings = Settings()
        registry = build_registry(settings)
        self.stepper = Stepper(registry, decider_config(registry, settings), merge_inline=merge_inline)
        self.exporter = InMemorySpanExporter()
        self.spans_of = ExecutionSpans(Tracing([SimpleSpanProcessor(self.exporter)]))
        wf = parse_workflow({"id": "wf", "nodes": nodes}, registry, version=1, created_at=NOW)
        self.request = StartExecution(execution_id="e1", workflow=wf, input=input_data, requested_at=NOW)
        self.state: ExecutionState | None = None
        self.events: list[ExecutionEvent] = []
        self.steps: list[Step] = []

    def feed(self, inp: Input, at: Any = NOW) -> Step:
        step = asyncio.run(self.stepper.step(self.state, inp, at))
        self.spans_of.record(self.state, inp, step.events)
        self.state = step.state
        self.events += step.events
        self.steps.append(step)
        return step

    def lines(self) -> dict[str | None, list[str]]:
        """Each node's log lines (and the run's), as the views fold them from the log."""
        out: dict[str | None, list[str]] = {}
        state: ExecutionState | None = None
        for event in self.events:
            state = evolve(state, event)
            for line in lines_for(event, state):
                out.setdefault(line["node_id"], []).append(f"{line['at']} {line['level']} {line['message']}")
        return out

    def spans(self) -> list[tuple[Any, ...]]:
        return sorted(
            (s.name, s.start_time, s.end_time, s.status.status_code, str(s.attributes), len(s.events))
            for s in self.exporter.get_finished_spans()
        )

    def other_records(self) -> list[tuple[Any, ...]]:
        return [
            (o.topic, o.key, o.record, o.ce_type, o.ce_id, o.headers)
            for step in self.steps
            for o in step.outputs
            if o.topic != "linkflow.events"
        ]


def folded(events: list[ExecutionEvent]) -> ExecutionState:
    state: ExecutionState | None = None
    for event in events:
        state = evolve(state, event)
    assert state is not None
    return state


def test_a_diamond_of_transforms_writes_one_event_per_node() -> None:
    run = Run(DIAMOND, {"x": 3})
    step = run.feed(run.request)

    assert [e.type.value for e in step.events] == [
        "execution_created",
        "execution_started",
        *["node_succeeded"] * 5,
        "execution_succeeded",
    ]
    assert [e.seq for e in step.events] == list(range(1, 9))
    assert all(e.dispatch is Dispatch.INLINE and e.attempt == 1 for e in step.events[2:7])
    assert step.state is not None and step.state.seq == 8
    assert step.state.nodes["e"].output == {"sum": 10}
    records = [o for o in step.outputs if o.topic == "linkflow.events"]
    assert [(o.record, o.ce_id) for o in records] == [(e, f"e1/{e.seq}") for e in step.events]


@pytest.mark.parametrize(
    ("nodes", "input_data", "status"),
    [
        (DIAMOND, {"x": 3}, "success"),
        (BRANCHES, {"x": 3}, "success"),
        (BRANCHES, {"x": 30}, "success"),
        (FAILING, {}, "failed"),
        (AROUND_A_TASK, {}, "success"),
        (AROUND_A_TASK, {}, "cancelled"),
    ],
)
def test_a_run_reads_the_same_as_when_each_attempt_was_two_events(
    nodes: list[dict[str, Any]], input_data: Any, status: str
) -> None:
    """The same inputs through the step with and without merging (``merge_inline_attempts``
    off: the log as releases before ADR 0056 wrote it). Folding the log gives the state the
    orchestrator keeps; that state, every node's log lines, the spans and every other record
    are the same as before; only the events and their seqs differ."""
    runs = [Run(nodes, input_data, merge_inline=True), Run(nodes, input_data, merge_inline=False)]
    for run in runs:
        run.feed(run.request)
        if any(n["type"] == "http" for n in nodes):
            at = NOW + timedelta(seconds=1)
            if status == "cancelled":
                run.feed(ExecutionCommand(execution_id="e1", kind=CommandKind.CANCEL, reason="stop"), at)
            else:
                run.feed(
                    NodeResult(
                        execution_id="e1",
                        node_id="h",
                        attempt=1,
                        ok=True,
                        output={"status": 200},
                        started_at=NOW,
                        finished_at=at,
                    ),
                    at,
                )
    merged, two = runs
    assert merged.state is not None and two.state is not None
    assert merged.state.status.value == status
    for run in runs:
        assert [e.seq for e in run.events] == list(range(1, len(run.events) + 1))
        assert folded(run.events) == run.state
    assert len(merged.events) < len(two.events)
    assert sum(is_merged(e) for e in merged.events) == len(two.events) - len(merged.events)
    assert merged.state == two.state.model_copy(update={"seq": merged.state.seq})
    assert merged.lines() == two.lines()
    assert merged.spans() == two.spans() and len(merged.spans()) > len(nodes) // 2
    assert merged.other_records() == two.other_records()


def test_a_failed_inline_attempt_is_one_node_failed_event() -> None:
    run = Run(FAILING, {})
    step = run.feed(run.request)
    failed = [e for e in step.events if e.node_id == "b"]
    assert [(e.type, e.dispatch) for e in failed] == [(EventType.NODE_FAILED, Dispatch.INLINE)]
    assert failed[0].error is not None and failed[0].error.error_class == "expression_error"
    assert run.state is not None and run.state.nodes["b"].status is NodeStatus.FAILED


def event(seq: int, type_: EventType, node_id: str | None = None, **fields: Any) -> ExecutionEvent:
    return ExecutionEvent(execution_id="e1", seq=seq, type=type_, at=NOW, node_id=node_id, **fields)


def test_only_an_inline_start_whose_attempt_ends_next_at_the_same_instant_is_merged() -> None:
    started = EventType.NODE_STARTED
    events = [
        event(5, started, "t", attempt=1, dispatch=Dispatch.TASK, due_at=NOW),  # a task
        event(6, started, "r", attempt=2, dispatch=Dispatch.INLINE, reason="dispatched again"),
        event(7, started, "i", attempt=1, dispatch=Dispatch.INLINE),  # its run ends first
        event(8, started, "k", attempt=1, dispatch=Dispatch.INLINE),
        event(9, EventType.NODE_RETRY_SCHEDULED, "k", attempt=1, due_at=NOW + timedelta(seconds=2)),
        event(10, EventType.NODE_SUCCEEDED, "r", attempt=2, output=1),
        event(11, EventType.EXECUTION_CANCELLED, reason="stop"),
    ]
    out = merge(events)
    assert [(e.seq, e.type, e.node_id, e.dispatch) for e in out] == [
        (5, started, "t", Dispatch.TASK),
        (6, started, "r", Dispatch.INLINE),
        (7, started, "i", Dispatch.INLINE),
        (8, EventType.NODE_RETRY_SCHEDULED, "k", Dispatch.INLINE),
        (9, EventType.NODE_SUCCEEDED, "r", None),
        (10, EventType.EXECUTION_CANCELLED, None, None),
    ]
    later = event(2, EventType.NODE_SUCCEEDED, "x", attempt=1).model_copy(update={"at": NOW + timedelta(1)})
    assert merge([event(1, started, "x", attempt=1, dispatch=Dispatch.INLINE), later])[0].type is started
    assert merge([]) == []


def test_a_merged_retry_keeps_the_node_running_with_its_retry_timer() -> None:
    run = Run([{"id": "k", "type": "transform", "config": {"expression": "1"}}], {})
    created = run.feed(run.request).events[:2]  # created, started: the run's head
    state = folded(created)
    due = NOW + timedelta(seconds=2)
    halves = [
        event(3, EventType.NODE_STARTED, "k", attempt=1, dispatch=Dispatch.INLINE),
        event(4, EventType.NODE_RETRY_SCHEDULED, "k", attempt=1, due_at=due),
    ]
    (one,) = merge(halves)
    merged = evolve(state, one)
    assert merged == evolve(evolve(state, halves[0]), halves[1]).model_copy(update={"seq": 3})
    assert merged.nodes["k"].status is NodeStatus.RUNNING and merged.timers["retry:k:1"].due_at == due


def test_log_lines_of_a_merged_attempt_are_its_start_then_its_end() -> None:
    run = Run(DIAMOND, {"x": 3})
    step = run.feed(run.request)
    assert step.state is not None
    merged = next(e for e in step.events if e.node_id == "b")
    lines = [line["message"] for line in lines_for(merged, step.state)]
    assert lines[0] == "transform node b started, attempt 1, in the orchestrator"
    assert lines[1].startswith("transform node b succeeded"), lines
    assert len(lines) == 2


def test_a_merged_event_round_trips_through_the_codec() -> None:
    run = Run(DIAMOND, {"x": 3})
    step = run.feed(run.request)
    c = codec.default_codec()
    for e in step.events:
        back = c.decode(c.encode(e), ExecutionEvent)
        assert back == e and is_merged(back) == is_merged(e)

"""Traces without Kafka: W3C parsing, derived ids, the ``OTEL_*`` switch, and the spans that
committed orchestrator steps make, exported to the SDK's in-memory exporter. The same code runs
on the real engine in tests/e2e/test_traces.py."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.decider import Input
from linkflow_stream.core.messages import (
    CommandKind,
    ExecutionCommand,
    NodeError,
    NodeResult,
    NodeTask,
    StartExecution,
)
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.core.trace_context import TRACEPARENT, RunTrace, TraceParent
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.runtime.step import Step, Stepper
from linkflow_stream.settings import Settings
from linkflow_stream.tracing import (
    RETRY_SCHEDULED,
    TIMER_FIRED,
    ExecutionSpans,
    Tracing,
    TracingConfigError,
    exporter_names,
    exporters,
)

NOW = from_millis(1_800_000_000_000)
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


# ------------------------------------------------------------------------------ W3C and ids


def test_a_valid_traceparent_parses_and_prints_back() -> None:
    parsed = TraceParent.parse(CALLER)
    assert parsed == TraceParent(CALLER_TRACE, CALLER_SPAN, sampled=True)
    assert parsed.header == CALLER
    assert TraceParent.parse(CALLER.encode()) == parsed
    assert TraceParent.parse(CALLER[:-2] + "00") == TraceParent(CALLER_TRACE, CALLER_SPAN, sampled=False)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        CALLER.upper(),  # upper-case hex is invalid
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
        CALLER + "-extra",  # version 00 has exactly four fields
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",  # short trace id
        b"\xff\xfe",
    ],
)
def test_an_invalid_traceparent_is_ignored(value: Any) -> None:
    assert TraceParent.parse(value) is None


def test_a_later_version_is_read_as_version_00() -> None:
    parsed = TraceParent.parse("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more")
    assert parsed == TraceParent(CALLER_TRACE, CALLER_SPAN)


def test_run_ids_are_derived_from_the_execution_id_alone() -> None:
    first, again, other = RunTrace.of("e1", None), RunTrace.of("e1", None), RunTrace.of("e2", None)
    assert first == again
    assert len(first.trace_id) == 32 and len(first.span_id) == 16
    assert first.trace_id != other.trace_id and first.span_id != other.span_id
    assert first.parent_span_id is None and first.parent_sampled is None
    assert first.attempt_span_id("h", 1) == again.attempt_span_id("h", 1)
    ids = {first.attempt_span_id("h", 1), first.attempt_span_id("h", 2), first.attempt_span_id("g", 1)}
    assert len(ids) == 3


def test_a_run_with_a_caller_continues_its_trace() -> None:
    run = RunTrace.of("e1", CALLER)
    assert run.trace_id == CALLER_TRACE and run.parent_span_id == CALLER_SPAN and run.parent_sampled
    assert run.span_id == RunTrace.of("e1", None).span_id, "the run span's id does not depend on the caller"


# -------------------------------------------------------------------------------- the switch


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ],
)
def test_tracing_is_on_only_when_the_otel_variables_say_so(env: dict[str, str], names: list[str]) -> None:
    assert exporter_names(env) == names


def test_tracing_is_off_without_otel_variables() -> None:
    assert Tracing.from_env({}) is None


def test_otlp_over_http_and_grpc_are_the_official_exporters() -> None:
    for protocol, module in (
        (None, "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
        ("http/protobuf", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
        ("grpc", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
    ):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
        if protocol:
            env["OTEL_EXPORTER_OTLP_PROTOCOL"] = protocol
        (exporter,) = exporters(env)
        assert type(exporter).__name__ == "OTLPSpanExporter"
        assert type(exporter).__module__ == module, protocol
        exporter.shutdown()


def test_the_service_is_named_unless_otel_service_name_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    for env_name, expected in ((None, "linkflow-stream"), ("billing-engine", "billing-engine")):
        if env_name:
            monkeypatch.setenv("OTEL_SERVICE_NAME", env_name)
        tracing = Tracing.from_env({"OTEL_TRACES_EXPORTER": "console"})
        assert tracing is not None
        try:
            assert tracing.provider.resource.attributes["service.name"] == expected
            assert "service.instance.id" in tracing.provider.resource.attributes
        finally:
            tracing.shutdown()


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
    ],
)
def test_an_exporter_the_engine_cannot_make_refuses_the_start(env: dict[str, str]) -> None:
    with pytest.raises(TracingConfigError) as caught:
        Tracing.from_env(env)
    assert caught.value.error_type == "configuration"


# ------------------------------------------------------------------ spans of committed steps


class Run:
    """One execution driven through the real step (decider, inline nodes, tasks) with spans
    recorded after each step, as the orchestrator does after each commit."""

    def __init__(self, nodes: list[dict[str, Any]], traceparent: str | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracing = Tracing([SimpleSpanProcessor(self.exporter)])
        settings = Settings()
        registry = build_registry(settings)
        self.stepper = Stepper(
            registry, decider_config(registry, settings), task_traceparent=self.tracing.task_traceparent
        )
        self.spans = ExecutionSpans(self.tracing)
        self.state: ExecutionState | None = None
        wf = parse_workflow({"id": "wf", "nodes": nodes}, registry, version=3, created_at=NOW)
        self.request = StartExecution(
            execution_id="e1", workflow=wf, input={}, requested_at=NOW, traceparent=traceparent
        )

    def feed(self, inp: Input, at: datetime) -> Step:
        step = asyncio.run(self.stepper.step(self.state, inp, at))
        self.spans.record(self.state, inp, step.events)
        self.state = step.state
        return step

    def start(self) -> Step:
        return self.feed(self.request, NOW)

    def timer(self, timer_id: str) -> Step:
        assert self.state is not None
        due = self.state.timers[timer_id].due_at
        kind = CommandKind.TIMER_FIRED
        fired = ExecutionCommand(execution_id="e1", kind=kind, timer_id=timer_id, due_at=due)
        return self.feed(fired, due)

    def result(self, node: str, attempt: int, at: datetime, error: NodeError | None = None) -> Step:
        result = NodeResult(
            execution_id="e1",
            node_id=node,
            attempt=attempt,
            ok=error is None,
            output={"status": 200} if error is None else None,
            error=error,
            started_at=at - timedelta(seconds=1),
            finished_at=at,
        )
        return self.feed(result, at)

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


def span_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def trace_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def parent_id(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


def task_header(step: Step) -> TraceParent:
    (task,) = [o for o in step.outputs if isinstance(o.record, NodeTask)]
    parsed = TraceParent.parse(dict(task.headers)[TRACEPARENT])
    assert parsed is not None
    return parsed


def by_name(spans: list[ReadableSpan]) -> dict[tuple[str, Any], ReadableSpan]:
    return {(s.name, (s.attributes or {}).get("linkflow.node.attempt")): s for s in spans}


FLAKY = [
    {"id": "a", "type": "transform", "config": {"expression": "1"}},
    {
        "id": "h",
        "type": "http",
        "depends_on": ["a"],
        "config": {"url": "https://example.com/x"},
        "retry": {"max_attempts": 2, "initial_delay_seconds": 2},
    },
]


def test_a_run_is_one_trace_with_the_run_span_parent_of_every_attempt_and_retries_as_events() -> None:
    run = Run(FLAKY, traceparent=CALLER)
    first_task = task_header(run.start())
    assert run.finished()[0].name == "node a", "an inline node's span is exported in the step that ran it"
    unavailable = NodeError(error_class="http_5xx", message="HTTP 503", retryable=True)
    run.result("h", 1, NOW + timedelta(seconds=3), unavailable)
    second_task = task_header(run.timer("retry:h:1"))
    run.result("h", 2, NOW + timedelta(seconds=9))

    spans = run.finished()
    named = by_name(spans)
    assert sorted(named, key=str) == sorted(
        [("node a", 1), ("node h", 1), ("node h", 2), ("execution wf", None)], key=str
    )
    expected = RunTrace.of("e1", CALLER)
    root = named[("execution wf", None)]
    assert {trace_id(s) for s in spans} == {CALLER_TRACE}
    assert span_id(root) == expected.span_id and parent_id(root) == CALLER_SPAN
    assert root.attributes == {
        "linkflow.execution.id": "e1",
        "linkflow.workflow.id": "wf",
        "linkflow.workflow.version": 3,
        "linkflow.execution.status": "success",
        "linkflow.execution.priority": "normal",
    }
    assert root.status.status_code is StatusCode.UNSET
    assert root.start_time == 1_800_000_000_000 * 1_000_000
    assert root.end_time == (1_800_000_000_000 + 9_000) * 1_000_000
    for key in (("node a", 1), ("node h", 1), ("node h", 2)):
        assert parent_id(named[key]) == expected.span_id, key
        assert named[key].kind is SpanKind.INTERNAL

    failed = named[("node h", 1)]
    assert failed.attributes == {
        "linkflow.execution.id": "e1",
        "linkflow.workflow.id": "wf",
        "linkflow.workflow.version": 3,
        "linkflow.node.id": "h",
        "linkflow.node.type": "http",
        "linkflow.node.attempt": 1,
        "error.type": "http_5xx",
    }
    assert failed.status.status_code is StatusCode.ERROR and failed.status.description == "HTTP 503"
    ((event_name, event_attrs),) = [(e.name, dict(e.attributes or {})) for e in failed.events]
    assert event_name == RETRY_SCHEDULED
    assert event_attrs["linkflow.node.attempt"] == 2
    assert event_attrs["linkflow.retry.delay_seconds"] == 2.0
    assert event_attrs["error.type"] == "http_5xx"
    # The attempt's span covers dispatch to result, and the task carried that span's context.
    assert failed.start_time == 1_800_000_000_000 * 1_000_000
    assert failed.end_time == (1_800_000_000_000 + 3_000) * 1_000_000
    assert first_task == TraceParent(CALLER_TRACE, span_id(failed))
    retried = named[("node h", 2)]
    assert second_task == TraceParent(CALLER_TRACE, span_id(retried))
    assert retried.start_time == (1_800_000_000_000 + 5_000) * 1_000_000, "from the retry timer's firing"
    assert retried.status.status_code is StatusCode.UNSET and "error.type" not in (retried.attributes or {})


def test_a_run_without_a_caller_starts_its_own_trace_with_the_derived_id() -> None:
    run = Run([{"id": "a", "type": "transform", "config": {"expression": "1"}}])
    run.start()
    spans = run.finished()
    assert [s.name for s in spans] == ["node a", "execution wf"]
    expected = RunTrace.of("e1", None)
    assert {trace_id(s) for s in spans} == {expected.trace_id}
    assert parent_id(spans[1]) is None and span_id(spans[1]) == expected.span_id
    assert parent_id(spans[0]) == expected.span_id


def test_a_wait_node_span_ends_with_its_timer() -> None:
    run = Run([{"id": "w", "type": "wait", "config": {"seconds": 1.5}}])
    run.start()
    assert run.finished() == [], "nothing ended yet"
    run.timer("wait:w:1")
    wait = by_name(run.finished())[("node w", 1)]
    ((name, attrs),) = [(e.name, dict(e.attributes or {})) for e in wait.events]
    assert name == TIMER_FIRED and attrs["linkflow.timer.kind"] == "wait"
    assert wait.end_time is not None and wait.start_time is not None
    assert wait.end_time - wait.start_time == 1_500_000_000


def test_an_unanswered_attempt_ends_when_its_lease_runs_out_and_the_next_one_is_dispatched() -> None:
    run = Run([{"id": "h", "type": "http", "timeout_seconds": 1, "config": {"url": "https://example.com/x"}}])
    first = task_header(run.start())
    second = task_header(run.timer("lease:h:1"))
    assert first.span_id != second.span_id
    (lost,) = run.finished()
    assert span_id(lost) == first.span_id
    assert lost.status.status_code is StatusCode.ERROR
    assert (lost.attributes or {})["error.type"] == "lease_expired"
    marks = [(e.name, (e.attributes or {})["linkflow.timer.kind"]) for e in lost.events]
    assert marks == [(TIMER_FIRED, "lease")]


def test_a_cancelled_run_ends_its_running_attempt_and_its_span_as_cancelled() -> None:
    run = Run([{"id": "h", "type": "http", "config": {"url": "https://example.com/x"}}])
    run.start()
    run.feed(ExecutionCommand(execution_id="e1", kind=CommandKind.CANCEL), NOW + timedelta(seconds=1))
    named = by_name(run.finished())
    for key in (("node h", 1), ("execution wf", None)):
        assert named[key].status.status_code is StatusCode.ERROR, key
        assert (named[key].attributes or {})["error.type"] == "cancelled", key


def test_a_failed_run_names_its_failed_node_class() -> None:
    run = Run([{"id": "h", "type": "http", "config": {"url": "https://example.com/x"}}])
    run.start()
    run.result("h", 1, NOW + timedelta(seconds=1), NodeError(error_class="http_4xx", message="HTTP 404"))
    root = by_name(run.finished())[("execution wf", None)]
    assert (root.attributes or {})["error.type"] == "http_4xx"
    assert (root.attributes or {})["linkflow.execution.status"] == "failed"


def test_a_caller_that_does_not_sample_gets_no_spans_and_tasks_say_so() -> None:
    run = Run(FLAKY, traceparent=CALLER[:-2] + "00")
    header = task_header(run.start())
    run.result("h", 1, NOW + timedelta(seconds=1))
    assert run.finished() == []
    assert header.sampled is False


def test_deciding_a_step_again_writes_the_same_task_header() -> None:
    first, again = Run(FLAKY, traceparent=CALLER), Run(FLAKY, traceparent=CALLER)
    assert task_header(first.start()) == task_header(again.start())


def test_the_callers_traceparent_is_part_of_the_run_state_on_the_wire() -> None:
    codec = default_codec()
    run = Run(FLAKY, traceparent=CALLER)
    run.start()
    assert run.state is not None and run.state.traceparent == CALLER
    assert codec.decode(codec.encode(run.state), ExecutionState).traceparent == CALLER
    assert codec.decode(codec.encode(run.request), StartExecution).traceparent == CALLER
    decoded = codec.decode(codec.encode(run.state), ExecutionState)
    assert decoded.nodes["h"].attempt_started_at == NOW

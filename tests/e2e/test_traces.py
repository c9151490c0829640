"""Traces on the real engine: engines in their own processes export over OTLP/HTTP with the
official exporter to a collector in this process (``linkflow_stream.dev.trace_collector``), and
the checks are on what a real collector gets: one trace per execution, continued from the
caller's ``traceparent``; the run span parent of every node attempt; the Kafka send and process
spans; retry and timer span events; the ``traceparent`` an HTTP node sends; parentage intact
across a crash and restart of the engine; and nothing at all while tracing is off."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.core.events import EventType
from linkflow_stream.core.messages import Priority, StartExecution
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.trace_context import TRACEPARENT, RunTrace, TraceParent
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.dev.testing import EngineProcess, TargetServer, call, read_events, read_topic
from linkflow_stream.dev.trace_collector import CollectedSpan, TraceCollector, collect
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.nodes import build_registry
from linkflow_stream.settings import Settings

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def collector() -> Iterator[TraceCollector]:
    yield from collect()


def traced_env(collector: TraceCollector) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds: export soon, the test waits less
        "OTEL_SERVICE_NAME": "linkflow-e2e",
    }


def caller() -> TraceParent:
    return TraceParent(secrets.token_hex(16), secrets.token_hex(8))


def of_run(spans: list[CollectedSpan], execution_id: str) -> list[CollectedSpan]:
    return [s for s in spans if s.attributes.get("linkflow.execution.id") == execution_id]


def run_span(spans: list[CollectedSpan], execution_id: str) -> CollectedSpan | None:
    found = [s for s in of_run(spans, execution_id) if s.name.startswith("execution ")]
    assert len(found) <= 1, found
    return found[0] if found else None


def header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


def test_a_run_is_one_trace_from_the_caller_through_kafka_to_the_service_a_node_calls(
    engine_factory: Callable[..., EngineProcess], collector: TraceCollector, target: TargetServer
) -> None:
    engine = engine_factory(**traced_env(collector))
    wf_id = f"traced-{uuid.uuid4().hex[:6]}"
    path = f"/flaky/{wf_id}"
    engine.register(
        {
            "id": wf_id,
            "nodes": [
                {"id": "a", "type": "transform", "config": {"expression": "1"}},
                {
                    "id": "h",
                    "type": "http",
                    "depends_on": ["a"],
                    "config": {"method": "GET", "url": f"{target.url}{path}?fail=1"},
                    "retry": {"max_attempts": 2, "initial_delay_seconds": 0.2},
                },
                {"id": "w", "type": "wait", "depends_on": ["h"], "config": {"seconds": 0.3}},
            ],
        }
    )
    parent = caller()
    status, body = call(
        "POST",
        f"{engine.url}/api/executions?wait=30",
        {"workflow_id": wf_id, "input_data": {}},
        {TRACEPARENT: parent.header},
        timeout=60,
    )
    assert status == 200 and body["status"] == "success", body
    execution_id = body["id"]
    assert body["nodes"]["h"]["attempts"] == 2

    def complete(spans: list[CollectedSpan]) -> bool:
        mine = of_run(spans, execution_id)
        return run_span(spans, execution_id) is not None and len(mine) >= 7  # run, a, h x2, w, process x2

    spans = collector.wait_for(complete)
    mine = of_run(spans, execution_id)
    assert {s.trace_id for s in mine} == {parent.trace_id}, "one trace, the caller's"

    # The API's send span: a Kafka PRODUCER span, child of the caller, parent of the run.
    requests_topic = f"{engine.prefix}{topic_names.requests(Priority.NORMAL)}"
    (send,) = [
        s
        for s in spans
        if s.attributes.get("messaging.kafka.message.key") == execution_id and s.kind == "producer"
    ]
    assert send.name == f"send {requests_topic}"
    assert send.trace_id == parent.trace_id and send.parent_span_id == parent.span_id
    assert send.attributes["messaging.system"] == "kafka"
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.destination.name"] == requests_topic

    run = run_span(spans, execution_id)
    assert run is not None
    assert run.name == f"execution {wf_id}" and run.parent_span_id == send.span_id
    assert run.span_id == RunTrace.of(execution_id, None).span_id
    assert run.attributes["linkflow.workflow.id"] == wf_id
    assert run.attributes["linkflow.workflow.version"] == 1
    assert run.attributes["linkflow.execution.status"] == "success"
    assert run.resource["service.name"] == "linkflow-e2e"
    assert {s.transport for s in mine} == {"http"}, "OTLP over HTTP, the default protocol"

    nodes = {
        (s.attributes["linkflow.node.id"], s.attributes["linkflow.node.attempt"]): s
        for s in mine
        if s.name.startswith("node ")
    }
    assert sorted(nodes) == [("a", 1), ("h", 1), ("h", 2), ("w", 1)]
    for key, span in nodes.items():
        assert span.parent_span_id == run.span_id, key
        assert span.attributes["linkflow.workflow.id"] == wf_id
        assert span.attributes["linkflow.node.type"] == {"a": "transform", "h": "http", "w": "wait"}[key[0]]
    failed = nodes[("h", 1)]
    assert failed.status == "error" and failed.attributes["error.type"] == "http_5xx"
    assert [name for name, _ in failed.events] == ["retry scheduled"]
    assert failed.events[0][1]["linkflow.node.attempt"] == 2
    assert nodes[("h", 2)].status == "unset" and "error.type" not in nodes[("h", 2)].attributes
    assert [(n, a["linkflow.timer.kind"]) for n, a in nodes[("w", 1)].events] == [("timer fired", "wait")]

    # The executor's process spans: Kafka CONSUMER spans, children of their attempt's span.
    tasks_topic = f"{engine.prefix}{topic_names.tasks('default')}"
    processes = {s.attributes["linkflow.node.attempt"]: s for s in mine if s.kind == "consumer"}
    assert sorted(processes) == [1, 2]
    for attempt, span in processes.items():
        assert span.name == f"process {tasks_topic}"
        assert span.parent_span_id == nodes[("h", attempt)].span_id
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.operation.type"] == "process"
        assert span.attributes["messaging.destination.name"] == tasks_topic
        assert span.attributes["messaging.consumer.group.name"].endswith(".executor.default")
        assert span.attributes["messaging.message.id"] == f"{execution_id}/h/{attempt}"
        assert isinstance(span.attributes["messaging.kafka.offset"], int)
    assert processes[1].status == "error" and processes[1].attributes["error.type"] == "http_5xx"

    # The service the HTTP node called got the process span as its parent, in the same trace.
    calls = [r for r in target.hits(path) if r["headers"]["Idempotency-Key"].startswith(execution_id)]
    assert len(calls) == 2
    for request in calls:
        attempt = int(request["headers"]["Idempotency-Key"].rsplit("/", 1)[1])
        sent = TraceParent.parse(header(request["headers"], TRACEPARENT))
        assert sent == TraceParent(parent.trace_id, processes[attempt].span_id), request["headers"]


def test_a_producers_record_header_starts_the_run_in_its_trace(
    engine_factory: Callable[..., EngineProcess], collector: TraceCollector
) -> None:
    engine = engine_factory(**traced_env(collector))
    definition = {
        "id": f"produced-{uuid.uuid4().hex[:6]}",
        "nodes": [{"id": "a", "type": "transform", "config": {"expression": "2"}}],
    }
    engine.register(definition)
    workflow = parse_workflow(definition, build_registry(Settings()), version=1, created_at=now())
    parent = caller()
    execution_id = f"exec_{uuid.uuid4().hex}"
    request = StartExecution(execution_id=execution_id, workflow=workflow, input={}, requested_at=now())

    async def produce() -> None:
        publisher = Publisher(engine.settings(), default_codec())
        await publisher.start()
        try:
            await publisher.send(
                [
                    Outgoing(
                        topic_names.requests(Priority.NORMAL),
                        execution_id,
                        request,
                        "io.linkflow.execution.requested",
                        headers=((TRACEPARENT, parent.header.encode()),),
                    )
                ]
            )
        finally:
            await publisher.stop()

    asyncio.run(produce())
    assert engine.wait_status(execution_id)["status"] == "success"
    spans = collector.wait_for(lambda found: run_span(found, execution_id) is not None)
    run = run_span(spans, execution_id)
    assert run is not None
    assert run.trace_id == parent.trace_id and run.parent_span_id == parent.span_id
    (node,) = [s for s in of_run(spans, execution_id) if s.name == "node a"]
    assert node.trace_id == parent.trace_id and node.parent_span_id == run.span_id


def test_spans_go_over_grpc_when_the_protocol_says_so(
    engine_factory: Callable[..., EngineProcess], collector: TraceCollector
) -> None:
    engine = engine_factory(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.grpc_url,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    wf_id = f"grpc-{uuid.uuid4().hex[:6]}"
    engine.register({"id": wf_id, "nodes": [{"id": "a", "type": "transform", "config": {"expression": "3"}}]})
    status, body = engine.start_execution(wf_id, wait=30)
    assert status == 200 and body["status"] == "success", body
    execution_id = body["id"]
    spans = collector.wait_for(lambda found: run_span(found, execution_id) is not None)
    run = run_span(spans, execution_id)
    assert run is not None and run.transport == "grpc"
    (node,) = [s for s in of_run(spans, execution_id) if s.name == "node a"]
    assert node.transport == "grpc" and node.parent_span_id == run.span_id


def test_parentage_holds_across_a_crash_and_restart_of_the_engine(
    engine_factory: Callable[..., EngineProcess], collector: TraceCollector
) -> None:
    engine = engine_factory(**traced_env(collector))
    wf_id = f"restarted-{uuid.uuid4().hex[:6]}"
    engine.register(
        {
            "id": wf_id,
            "nodes": [
                {"id": "a", "type": "transform", "config": {"expression": "1"}},
                {"id": "w", "type": "wait", "depends_on": ["a"], "config": {"seconds": 4}},
                {"id": "b", "type": "transform", "depends_on": ["w"], "config": {"expression": "2"}},
            ],
        }
    )
    status, body = engine.start_execution(wf_id)
    assert status == 202, body
    execution_id = body["id"]
    before = collector.wait_for(lambda spans: any(s.name == "node a" for s in of_run(spans, execution_id)))
    (first,) = [s for s in of_run(before, execution_id) if s.name == "node a"]
    assert run_span(before, execution_id) is None, "the run is still waiting"

    engine.kill()  # no flush, no goodbye: the wait node's timer is durable state; the next process fires it
    engine.start()
    assert engine.wait_status(execution_id, timeout=90)["status"] == "success"
    spans = collector.wait_for(lambda found: run_span(found, execution_id) is not None)
    run = run_span(spans, execution_id)
    assert run is not None
    later = {s.name: s for s in of_run(spans, execution_id) if s.name in ("node w", "node b")}
    assert sorted(later) == ["node b", "node w"]
    assert first.parent_span_id == run.span_id
    for span in later.values():
        assert span.parent_span_id == run.span_id and span.trace_id == first.trace_id == run.trace_id
    assert first.resource["service.instance.id"] != run.resource["service.instance.id"], (
        "exported by two processes"
    )


def test_with_tracing_off_nothing_is_traced_and_a_callers_traceparent_is_still_kept(
    engine_factory: Callable[..., EngineProcess], collector: TraceCollector, target: TargetServer
) -> None:
    engine = engine_factory(OTEL_SDK_DISABLED="true")
    wf_id = f"untraced-{uuid.uuid4().hex[:6]}"
    path = f"/untraced/{wf_id}"
    engine.register(
        {
            "id": wf_id,
            "nodes": [{"id": "h", "type": "http", "config": {"method": "GET", "url": f"{target.url}{path}"}}],
        }
    )
    parent = caller()
    status, body = call(
        "POST",
        f"{engine.url}/api/executions?wait=30",
        {"workflow_id": wf_id, "input_data": {}},
        {TRACEPARENT: parent.header},
        timeout=60,
    )
    assert status == 200 and body["status"] == "success", body
    execution_id = body["id"]
    (request,) = target.hits(path)
    assert header(request["headers"], TRACEPARENT) is None
    tasks = asyncio.run(read_topic(engine.bootstrap, f"{engine.prefix}{topic_names.tasks('default')}"))
    mine: list[Any] = [t for t in tasks if t.key == execution_id.encode()]
    assert mine and all(TRACEPARENT not in dict(t.headers) for t in mine)
    events = asyncio.run(read_events(engine.bootstrap, f"{engine.prefix}{topic_names.EVENTS}"))
    (created,) = [
        e for e in events if e.execution_id == execution_id and e.type is EventType.EXECUTION_CREATED
    ]
    assert created.traceparent == parent.header, (
        "a later traced process can still continue the caller's trace"
    )
    assert of_run(collector.snapshot(), execution_id) == []

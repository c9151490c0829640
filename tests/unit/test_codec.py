"""The Avro codec: single-object encoding of every record, JSON logical fields, decode errors,
CloudEvents headers, and a random-data round trip of every ``schemas/*.avsc``."""

from __future__ import annotations

import io
import json
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import to_parsing_canonical_form
from fastavro.utils import generate_many
from pydantic import BaseModel

from linkflow_stream.core.auth import ApiKey, Role
from linkflow_stream.core.circuit import CircuitObservation
from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.events import Dispatch, EventType, ExecutionEvent
from linkflow_stream.core.gate import GateEntry, GateMeta, GateRecord, GateRequest, GateRequestKind
from linkflow_stream.core.messages import (
    CommandKind,
    ControlMessage,
    ExecutionCommand,
    NodeError,
    NodeResult,
    NodeTask,
    Priority,
    Signal,
    StartExecution,
)
from linkflow_stream.core.rate_limit import RateLimit, RateLimitBucket
from linkflow_stream.core.schedule import Catchup, Overlap, Schedule, ScheduleProgress
from linkflow_stream.core.start_request import StartRequest
from linkflow_stream.core.state import (
    ExecutionState,
    ExecutionStatus,
    NodeState,
    NodeStatus,
    Timer,
    TimerKind,
    Transition,
)
from linkflow_stream.core.workflow import (
    Concurrency,
    NodeDefinition,
    OnFailure,
    RetryPolicy,
    WorkflowDefinition,
)
from linkflow_stream.kafka import codec
from projections.workers import WorkerRecord, WorkerState

SCHEMA_FILES = sorted(codec.SCHEMA_DIR.glob("*.avsc"))
T = from_millis(1_700_000_000_123)

JSON_VALUES: list[Any] = [
    None,
    0,
    -7,
    2**53,
    1.5,
    -0.25,
    "",
    "text",
    "null",
    '{"not": "parsed"}',
    "ünïcödé ✓ 日本",
    True,
    False,
    [],
    {},
    [1, "a", None, {"b": [True, 2.5]}],
    {"nested": {"deep": {"list": [1, 2.5, None, "x"], "empty": {}, "none": None}}, "n": -1},
]


def wf() -> WorkflowDefinition:
    return WorkflowDefinition(
        id="wf1",
        version=3,
        name="example",
        timeout_seconds=90.5,
        on_failure=OnFailure(workflow_id="alert"),
        created_at=T,
        nodes=(
            NodeDefinition(id="a", type="transform", config={"expression": "input.x + 1"}),
            NodeDefinition(
                id="c", type="condition", depends_on=("a",), config={"expression": "nodes.a > 10"}
            ),
            NodeDefinition(
                id="big", type="transform", depends_on=("c:true",), config={"expression": "'big'"}
            ),
            NodeDefinition(id="w", type="wait", config={"seconds": 1.5}),
            NodeDefinition(
                id="h",
                type="http",
                depends_on=("w", "a"),
                timeout_seconds=12.0,
                pool="gpu",
                retry=RetryPolicy(
                    max_attempts=4, initial_delay_seconds=0.5, multiplier=3, max_delay_seconds=20
                ),
                config={
                    "url": "https://example.com/x",
                    "method": "POST",
                    "headers": {"X-A": "b"},
                    "json": {"k": [1, None]},
                },
            ),
        ),
    )


def records() -> list[BaseModel]:
    """One record of every type the engine puts on a topic, with most optional fields filled."""
    error = NodeError(error_class="http_5xx", message="boom", retryable=True)
    return [
        wf(),
        StartExecution(
            execution_id="e1", workflow=wf(), input={"x": 1}, priority=Priority.HIGH, requested_at=T
        ),
        StartExecution(
            execution_id="e2",
            workflow=wf(),
            input=None,
            requested_at=T,
            links={"rerun_of": "e1"},
            reused={"h": {"status": 200}, "t": None},
        ),
        StartRequest(workflow_id="wf", input={"x": 1}),
        StartRequest(
            workflow_id="wf",
            workflow_version=3,
            input=[None, "a"],
            priority=Priority.LOW,
            idempotency_key="order-7",
            execution_id="run-7",
        ),
        StartRequest(workflow_id="wf", execution_id="sched-s-20261201T100000Z", links={"schedule_id": "s"}),
        Schedule(id="s", workflow_id="wf", cron="*/5 * * * *", created_at=T, effective_from=T),
        Schedule(
            id="t",
            workflow_id="wf",
            every_seconds=30,
            timezone="Europe/Berlin",
            input_data=[1, {"a": None}],
            overlap=Overlap.BUFFER_ONE,
            catchup=Catchup.ALL,
            paused=True,
            team="alpha",
            created_at=T,
            effective_from=T + timedelta(seconds=3),
        ),
        ScheduleProgress(schedule_id="s", last_slot=T),
        ScheduleProgress(
            schedule_id="t",
            last_slot=T,
            last_execution_id="sched-t-20261201T100000Z",
            last_fired_slot=T,
            buffered_slot=T + timedelta(seconds=30),
            fired=3,
            skipped=2,
        ),
        ExecutionCommand(execution_id="e1", kind=CommandKind.CANCEL, reason="user"),
        ExecutionCommand(execution_id="e1", kind=CommandKind.TIMER_FIRED, timer_id="wait:w:1"),
        ExecutionCommand(
            execution_id="e1",
            kind=CommandKind.TIMER_FIRED,
            timer_id="execution_timeout",
            due_at=T + timedelta(seconds=90),
        ),
        ExecutionCommand(execution_id="e1", kind=CommandKind.SET_TIMEOUT, timeout_seconds=120.5),
        ExecutionCommand(execution_id="e1", kind=CommandKind.PAUSE, suspend_deadline=True),
        ExecutionCommand(execution_id="e1", kind=CommandKind.RESUME, reason="resumed by request"),
        ExecutionCommand(
            execution_id="e1",
            kind=CommandKind.SIGNAL,
            signal=Signal(name="approved", id="sig-1", payload={"by": ["ann", None]}, execution_id="e1"),
        ),
        Signal(name="approved"),
        Signal(name="paid", id="p-7", payload=[1, 2.5], correlation_key="order-7"),
        ExecutionEvent(
            execution_id="e1",
            seq=3,
            type=EventType.SIGNAL_RECEIVED,
            at=T,
            signal=Signal(name="paid", id="p-7", payload={"amount": 3}, execution_id="e1"),
        ),
        ExecutionEvent(
            execution_id="e1",
            seq=4,
            type=EventType.NODE_STARTED,
            at=T,
            node_id="w",
            attempt=1,
            dispatch=Dispatch.SIGNAL,
            due_at=T + timedelta(seconds=60),
            correlation_key="order-7",
        ),
        ExecutionEvent(
            execution_id="e1",
            seq=5,
            type=EventType.NODE_SUCCEEDED,
            at=T,
            node_id="w",
            attempt=1,
            output={"amount": 3},
            signal=Signal(name="paid", id="p-7"),
        ),
        NodeTask(
            execution_id="e1",
            workflow_id="wf1",
            node_id="h",
            attempt=2,
            node_type="http",
            config={"url": "https://example.com"},
            input={"input": {"x": 1}, "nodes": {"a": 2}},
            timeout_seconds=12.5,
            lease_until=T + timedelta(seconds=17),
        ),
        NodeTask(
            execution_id="e1",
            workflow_id="wf1",
            node_id="h",
            attempt=1,
            node_type="http",
            config={},
            input={},
            timeout_seconds=1.0,
            lease_until=T,
            rate_limit=RateLimitBucket(key="wf1/h/", per_second=0.25, burst=2),
        ),
        NodeResult(
            execution_id="e1",
            node_id="h",
            attempt=2,
            ok=True,
            output={"status": 200},
            started_at=T,
            finished_at=T + timedelta(milliseconds=5),
            worker_id="w-1",
        ),
        NodeResult(
            execution_id="e1", node_id="h", attempt=3, ok=False, error=error, started_at=T, finished_at=T
        ),
        ControlMessage(execution_id="e1"),
        ControlMessage(execution_id="e1", node_id="h", reason="execution cancelled"),
        CircuitObservation(
            kind="http",
            key="https://api.example.com:443",
            at=T,
            ok=False,
            probe=True,
            error_class="http_5xx",
            message="HTTP 503",
            failures=5,
            window_seconds=30.0,
            open_seconds=12.5,
            source="abc",
        ),
        ApiKey(
            id="0123456789ab",
            team="alpha",
            role=Role.OPERATOR,
            name="ci",
            hash="sha256:" + "0" * 64,
            created_at=T,
            revoked_at=T,
        ),
        WorkerRecord(
            id="w1",
            capacity=10,
            tags=("gpu",),
            running=3,
            state=WorkerState.DEREGISTERED,
            registered_at=T,
            heartbeat_at=T,
            engine=True,
        ),
        ExecutionEvent(
            execution_id="e1",
            seq=1,
            type=EventType.EXECUTION_CREATED,
            at=T,
            workflow=wf(),
            input={"x": 1},
            priority=Priority.LOW,
        ),
        ExecutionEvent(
            execution_id="e1",
            seq=5,
            type=EventType.NODE_STARTED,
            at=T,
            node_id="h",
            attempt=2,
            dispatch=Dispatch.TASK,
            due_at=T + timedelta(seconds=17),
            reason="lease expired",
        ),
        ExecutionEvent(
            execution_id="e1",
            seq=6,
            type=EventType.NODE_RETRY_SCHEDULED,
            at=T,
            node_id="h",
            attempt=2,
            error=error,
            due_at=T + timedelta(seconds=1),
        ),
        ExecutionEvent(
            execution_id="e1",
            seq=7,
            type=EventType.NODE_SUCCEEDED,
            at=T,
            node_id="c",
            attempt=1,
            output=False,
        ),
        ExecutionEvent(execution_id="e1", seq=8, type=EventType.EXECUTION_SUCCEEDED, at=T),
        ExecutionState(
            id="e1",
            workflow=wf(),
            status=ExecutionStatus.RUNNING,
            priority=Priority.HIGH,
            input={"x": [1, 2]},
            created_at=T,
            started_at=T,
            seq=9,
            nodes={
                "a": NodeState(status=NodeStatus.SUCCESS, attempts=1, output=2, started_at=T, finished_at=T),
                "h": NodeState(status=NodeStatus.RUNNING, attempts=2, error=error, started_at=T),
                "c": NodeState(),
            },
            timers={
                "lease:h:2": Timer(id="lease:h:2", kind=TimerKind.LEASE, due_at=T, node_id="h", attempt=2),
                "execution_timeout": Timer(
                    id="execution_timeout", kind=TimerKind.EXECUTION_TIMEOUT, due_at=T + timedelta(seconds=90)
                ),
            },
            history=(
                Transition(from_status=None, to_status=ExecutionStatus.PENDING, at=T),
                Transition(
                    from_status=ExecutionStatus.PENDING, to_status=ExecutionStatus.RUNNING, at=T, reason="go"
                ),
            ),
        ),
        ExecutionState(
            id="e2",
            workflow=wf(),
            status=ExecutionStatus.PENDING,
            input=None,
            created_at=T,
            seq=1,
            nodes={n.id: NodeState() for n in wf().nodes},
        ),
        ExecutionState(
            id="e3",
            workflow=wf(),
            status=ExecutionStatus.PAUSED,
            input=None,
            created_at=T,
            seq=3,
            nodes={n.id: NodeState() for n in wf().nodes},
            paused_at=T + timedelta(seconds=2),
            suspended_deadline=T + timedelta(seconds=60),
        ),
        ExecutionEvent(
            execution_id="e3", seq=3, type=EventType.EXECUTION_PAUSED, at=T, due_at=T + timedelta(seconds=60)
        ),
        ExecutionState(
            id="e4",
            workflow=wf(),
            status=ExecutionStatus.RUNNING,
            input=None,
            created_at=T,
            seq=4,
            nodes={
                "a": NodeState(status=NodeStatus.RUNNING, attempts=1, correlation_key="order-7"),
                "h": NodeState(),
                "c": NodeState(),
            },
            timers={
                "signal_timeout:a:1": Timer(
                    id="signal_timeout:a:1", kind=TimerKind.SIGNAL_TIMEOUT, due_at=T, node_id="a", attempt=1
                )
            },
            signals=(Signal(name="other", id="o-1", payload=None, execution_id="e4"),),
            signal_ids=("o-1", "p-0"),
        ),
        # the concurrency gate's records (ADR 0030)
        GateRequest(
            kind=GateRequestKind.ENQUEUE, execution_id="e1", team="t", slot="wf/1", max=2, requested_at=T
        ),
        GateRecord(entry=GateEntry(execution_id="e1", team="t", slot="wf/1", max=2, seq=7, running=True)),
        GateRecord(meta=GateMeta(next_seq=8, last_team="t")),
        GateEntry(execution_id="e2", seq=1),
        GateMeta(),
        Concurrency(max=2, key="customer"),
        # the nested records have schemas of their own too
        NodeDefinition(id="x", type="transform", config={}),
        NodeDefinition(
            id="h", type="http", config={}, rate_limit=RateLimit(per_second=2.5, burst=3, key="$.input.k")
        ),
        RateLimit(per_second=0.5),
        RateLimitBucket(key="wf/h/acme", per_second=2.0, burst=1),
        NodeResult(
            execution_id="e1",
            node_id="h",
            attempt=1,
            ok=False,
            started_at=T,
            finished_at=T,
            throttled_until=T + timedelta(milliseconds=1500),
        ),
        ExecutionEvent(
            execution_id="e1",
            seq=9,
            type=EventType.NODE_THROTTLED,
            at=T,
            node_id="h",
            attempt=1,
            due_at=T + timedelta(milliseconds=1500),
            reason="no token",
        ),
        Timer(id="throttle:h:1", kind=TimerKind.THROTTLE, due_at=T, node_id="h", attempt=1),
        NodeError(error_class="timeout", message="slow"),
        RetryPolicy(),
        OnFailure(workflow_id="alert"),
        NodeState(),
        Timer(id="retry:h:1", kind=TimerKind.RETRY, due_at=T, node_id="h", attempt=1),
        Transition(
            from_status=ExecutionStatus.RUNNING,
            to_status=ExecutionStatus.FAILED,
            at=T,
            reason="node h failed",
        ),
    ]


@pytest.fixture(scope="module")
def c() -> codec.Codec:
    return codec.default_codec()


def roundtrip(c: codec.Codec, record: BaseModel) -> BaseModel:
    data = c.encode(record)
    return c.decode(data, type(record))


@pytest.mark.parametrize("record", records(), ids=lambda r: type(r).__name__)
def test_every_record_round_trips(c: codec.Codec, record: BaseModel) -> None:
    back = roundtrip(c, record)
    assert type(back) is type(record)
    assert back == record
    assert back.model_dump() == record.model_dump()


def test_every_record_type_on_a_topic_is_covered() -> None:
    covered = {type(r).__name__ for r in records()}
    assert {
        "StartExecution",
        "StartRequest",
        "ExecutionCommand",
        "NodeTask",
        "NodeResult",
        "ControlMessage",
        "ExecutionEvent",
        "ExecutionState",
        "WorkflowDefinition",
        "WorkerRecord",
        "ApiKey",
        "Schedule",
        "ScheduleProgress",
        "CircuitObservation",
    } <= covered
    # every record schema has a model exercised above
    record_schemas = {
        p.name.removesuffix(".avsc").removeprefix("io.linkflow.")
        for p in SCHEMA_FILES
        if json.loads(p.read_text())["type"] == "record"
    }
    assert record_schemas == covered


@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_json_logical_fields_carry_any_json(c: codec.Codec, value: Any) -> None:
    result = NodeResult(
        execution_id="e", node_id="n", attempt=1, ok=True, output=value, started_at=T, finished_at=T
    )
    start = StartExecution(execution_id="e", workflow=wf(), input=value, requested_at=T)
    event = ExecutionEvent(
        execution_id="e",
        seq=2,
        type=EventType.NODE_SUCCEEDED,
        at=T,
        node_id="n",
        attempt=1,
        input=value,
        output=value,
    )
    state = NodeState(status=NodeStatus.SUCCESS, attempts=1, output=value)
    for record in (result, start, event, state):
        back = roundtrip(c, record)
        assert back == record
        decoded = back.model_dump()
        original = record.model_dump()
        for key in ("output", "input"):
            if key in original:
                # same value and same JSON type (True must not come back as 1, "1" not as 1)
                assert json.dumps(decoded[key]) == json.dumps(original[key])


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"expression": "$.a"},
        {"seconds": 1.5},
        {"url": "https://x.y", "headers": {"a": "b"}, "json": [1, {"c": None}]},
    ],
)
def test_node_configs_round_trip_inside_workflows(c: codec.Codec, config: dict[str, Any]) -> None:
    definition = WorkflowDefinition(
        id="w", nodes=(NodeDefinition(id="n", type="t", config=config),), created_at=T
    )
    assert roundtrip(c, definition).nodes[0].config == config


def test_json_text_is_compact_json_on_the_wire(c: codec.Codec) -> None:
    data = c.encode(ControlMessage(execution_id="e"))
    assert data[:2] == codec.MAGIC
    result = NodeResult(
        execution_id="e", node_id="n", attempt=1, ok=True, output={"a": [1, 2]}, started_at=T, finished_at=T
    )
    body = c.encode(result)[10:]
    assert b'{"a":[1,2]}' in body


def test_header_is_magic_and_little_endian_crc64_avro_fingerprint(c: codec.Codec) -> None:
    data = c.encode(ControlMessage(execution_id="e1"))
    schema = c.current.schema("ControlMessage")
    canonical = to_parsing_canonical_form(schema)
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == rabin_fingerprint(canonical.encode()).to_bytes(8, "little")
    assert fastavro.schemaless_reader(io.BytesIO(data[10:]), schema, schema) == {
        "execution_id": "e1",
        "node_id": None,
        "reason": "cancelled",
    }


def rabin_fingerprint(data: bytes) -> int:
    """CRC-64-AVRO as the Avro specification writes it (Schema Fingerprints section)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_every_schema_has_a_distinct_fingerprint(c: codec.Codec) -> None:
    fingerprints = {codec.fingerprint(to_parsing_canonical_form(p)) for p in c.current.by_name.values()}
    assert len(fingerprints) == len(SCHEMA_FILES) == len(c.current.by_name)


# ------------------------------------------------------------------------------------ decoding


def valid_result_bytes(c: codec.Codec) -> bytes:
    return c.encode(
        NodeResult(
            execution_id="e", node_id="n", attempt=1, ok=True, output={"a": 1}, started_at=T, finished_at=T
        )
    )


@pytest.mark.parametrize(
    ("name", "mangle", "message"),
    [
        ("none", lambda b: None, "not an Avro single-object"),
        ("empty", lambda b: b"", "not an Avro single-object"),
        ("magic only", lambda b: b[:2], "not an Avro single-object"),
        ("short header", lambda b: b[:9], "not an Avro single-object"),
        ("garbage", lambda b: b"hello, this is not avro at all", "not an Avro single-object"),
        ("wrong magic byte 0", lambda b: b"\xc4" + b[1:], "not an Avro single-object"),
        ("wrong magic byte 1", lambda b: b[:1] + b"\x02" + b[2:], "not an Avro single-object"),
        (
            "confluent wire format without a registry",
            lambda b: b"\x00\x00\x00\x00\x07" + b[10:],
            r"Confluent wire format \(schema id 7\) but no schema registry is configured",
        ),
        ("truncated confluent header", lambda b: b"\x00\x00\x07", "not an Avro single-object"),
        (
            "unknown fingerprint",
            lambda b: b[:2] + b"\xde\xad\xbe\xef\x00\x11\x22\x33" + b[10:],
            r"unknown writer schema fingerprint deadbeef00112233",
        ),
        (
            "reversed fingerprint",
            lambda b: b[:2] + b[2:10][::-1] + b[10:],
            "unknown writer schema fingerprint",
        ),
        ("truncated body", lambda b: b[:-4], r"cannot decode io\.linkflow\.NodeResult"),
        ("header without body", lambda b: b[:10], r"cannot decode io\.linkflow\.NodeResult"),
        ("junk body", lambda b: b[:10] + b"\xff" * 12, r"cannot decode io\.linkflow\.NodeResult"),
    ],
)
def test_unreadable_bytes_raise_decode_error(c: codec.Codec, name: str, mangle: Any, message: str) -> None:
    with pytest.raises(codec.DecodeError, match=message) as info:
        c.decode(mangle(valid_result_bytes(c)), NodeResult)
    assert info.value.error_type == "decode"
    assert info.value.retryable is False


def test_a_record_of_another_type_raises_decode_error(c: codec.Codec) -> None:
    data = c.encode(ControlMessage(execution_id="e"))
    with pytest.raises(codec.DecodeError, match=r"cannot decode io\.linkflow\.NodeResult"):
        c.decode(data, NodeResult)


def test_json_field_that_is_not_json_raises_decode_error(c: codec.Codec) -> None:
    # a foreign producer that writes the field as a plain string has the same fingerprint
    # (canonical form drops logicalType) but its text is not JSON
    buf = io.BytesIO()
    plain = _strip_logical_json(c.current.schema("NodeTask"))
    fastavro.schemaless_writer(
        buf,
        fastavro.parse_schema(plain),
        {
            "execution_id": "e",
            "workflow_id": "w",
            "node_id": "n",
            "attempt": 1,
            "node_type": "http",
            "config": "{not json",
            "input": "{}",
            "timeout_seconds": 1.0,
            "lease_until": 0,
        },
    )
    header = codec.fingerprint(to_parsing_canonical_form(c.current.schema("NodeTask")))
    assert header == codec.fingerprint(to_parsing_canonical_form(fastavro.parse_schema(plain)))
    with pytest.raises(codec.DecodeError, match=r"cannot decode io\.linkflow\.NodeTask"):
        c.decode(codec.MAGIC + header + buf.getvalue(), NodeTask)


def _strip_logical_json(schema: Any) -> Any:
    if isinstance(schema, dict):
        if schema.get("logicalType") == "json":
            return "string"
        return {k: _strip_logical_json(v) for k, v in schema.items() if k != "__fastavro_parsed"}
    if isinstance(schema, list):
        return [_strip_logical_json(s) for s in schema]
    return schema


@pytest.mark.parametrize(
    ("name", "fields", "model"),
    [
        (
            "NodeTask",
            {
                "execution_id": "e",
                "workflow_id": "w",
                "node_id": "n",
                "attempt": 1,
                "node_type": "http",
                "config": [1, 2],
                "input": {},
                "timeout_seconds": 1.0,
                "lease_until": T,
            },
            NodeTask,
        ),
        (
            "ExecutionEvent",
            {"execution_id": "e", "seq": 1, "type": "node_started", "at": T, "dispatch": "carrier-pigeon"},
            ExecutionEvent,
        ),
    ],
)
def test_avro_valid_but_model_invalid_bytes_raise_decode_error(
    c: codec.Codec, name: str, fields: dict[str, Any], model: type[BaseModel]
) -> None:
    data = c.encode_dict(f"io.linkflow.{name}", fields)
    with pytest.raises(codec.DecodeError):
        c.decode(data, model)


def test_older_writer_schema_is_resolved_against_the_current_one(tmp_path: Path) -> None:
    """A record written with an older schema set (here: ControlMessage before ``reason`` existed)
    decodes with the current schema's default."""
    for path in SCHEMA_FILES:
        (tmp_path / path.name).write_text(path.read_text())
    old_path = tmp_path / "io.linkflow.ControlMessage.avsc"
    old = json.loads(old_path.read_text())
    old["fields"] = [f for f in old["fields"] if f["name"] != "reason"]
    old_path.write_text(json.dumps(old))
    old_set = codec.SchemaSet(tmp_path)
    current = codec.SchemaSet(codec.SCHEMA_DIR)

    old_codec = codec.Codec(old_set)
    data = old_codec.encode_dict("io.linkflow.ControlMessage", {"execution_id": "e", "node_id": "n"})
    with pytest.raises(codec.DecodeError, match="unknown writer schema"):
        codec.Codec(current).decode(data, ControlMessage)  # without the old set the writer is unknown
    back = codec.Codec(current, [old_set]).decode(data, ControlMessage)
    assert back == ControlMessage(execution_id="e", node_id="n", reason="cancelled")


def test_a_released_timer_firing_decodes_without_a_due_time(c: codec.Codec) -> None:
    """Release 0.1.0 wrote timer firings without ``due_at``: they read as ``None`` (judged by id)."""
    released = codec.SchemaSet(codec.SCHEMA_DIR / "released" / "0.1.0")
    old = codec.Codec(released)
    data = old.encode_dict(
        "io.linkflow.ExecutionCommand",
        {"execution_id": "e1", "kind": "timer_fired", "timer_id": "wait:w:1"},
    )
    assert c.decode(data, ExecutionCommand) == ExecutionCommand(
        execution_id="e1", kind=CommandKind.TIMER_FIRED, timer_id="wait:w:1", due_at=None
    )


def test_default_codec_knows_every_released_schema(c: codec.Codec) -> None:
    released = codec.SCHEMA_DIR / "released"
    assert released.is_dir(), "schemas/released/ is missing: snapshot the schemas of the last release"
    for version in (d for d in released.iterdir() if d.is_dir()):
        for fp in codec.SchemaSet(version).by_fingerprint:
            assert fp in c.writers, f"{version.name}: a released writer schema is unknown to the codec"


# ------------------------------------------------------------------------------- CloudEvents


def test_cloudevent_headers_follow_the_kafka_binary_binding() -> None:
    at = from_millis(1_700_000_000_123)
    headers = codec.cloudevent_headers(
        "io.linkflow.execution.node_started",
        "/linkflow/orchestrator",
        "e1",
        ce_id="id-1",
        time=at,
        extra=[("traceparent", b"00-abc-def-01")],
    )
    as_dict = dict(headers)
    assert len(as_dict) == len(headers), "a header appears twice"
    for required in ("ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time"):
        assert required in as_dict
    assert all(isinstance(v, bytes) for v in as_dict.values())
    assert as_dict["ce_specversion"] == b"1.0"
    assert as_dict["ce_id"] == b"id-1"
    assert as_dict["ce_type"] == b"io.linkflow.execution.node_started"
    assert as_dict["ce_source"] == b"/linkflow/orchestrator"
    assert as_dict["ce_subject"] == b"e1"
    assert datetime.fromisoformat(as_dict["ce_time"].decode()) == at
    assert as_dict["content-type"] == b"application/avro"
    assert headers[-1] == ("traceparent", b"00-abc-def-01")


def test_cloudevent_headers_default_to_a_fresh_id_and_the_current_time() -> None:
    first = dict(codec.cloudevent_headers("t", "s", "x"))
    second = dict(codec.cloudevent_headers("t", "s", "x"))
    assert first["ce_id"] != second["ce_id"]
    uuid.UUID(first["ce_id"].decode())
    ce_time = datetime.fromisoformat(first["ce_time"].decode())
    assert ce_time.utcoffset() == timedelta(0)


# ---------------------------------------------------------------- random data for every schema


@pytest.fixture
def seeded_random() -> Iterator[None]:
    """fastavro's generators use the global ``random``: seed it, and give the state back after."""
    saved = random.getstate()
    random.seed(20240601)
    yield
    random.setstate(saved)


def normalise(value: Any) -> Any:
    """Values as written: timestamp-millis reads back as datetime, written as int millis."""
    if isinstance(value, datetime):
        delta = value - from_millis(0)
        return delta // timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    return value


@pytest.mark.usefixtures("seeded_random")
@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_every_schema_round_trips_random_data(path: Path) -> None:
    schema = codec.SchemaSet(codec.SCHEMA_DIR).by_name[path.name.removesuffix(".avsc")]
    for datum in generate_many(schema, 40):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, datum)
        written = buf.getvalue()
        back = fastavro.schemaless_reader(io.BytesIO(written), schema, schema)
        assert normalise(back) == normalise(datum)
        again = io.BytesIO()
        fastavro.schemaless_writer(again, schema, back)
        assert again.getvalue() == written  # the read value writes back to the same bytes


def test_schema_files_are_named_for_their_type() -> None:
    for path in SCHEMA_FILES:
        raw = json.loads(path.read_text())
        assert path.name == f"{raw['namespace']}.{raw['name']}.avsc"


def test_every_event_and_state_of_a_run_round_trips(c: codec.Codec, lf: Any) -> None:
    """What the orchestrator writes (events, and its state changelog) at each step of a real run."""
    definition = lf.workflow(
        lf.node("a"),
        lf.node("c", "condition", depends_on=["a"]),
        lf.node("big", depends_on=["c:true"]),
        lf.node("small", depends_on=["c:false"]),
        lf.node("w", "wait"),
        lf.node("h", "http", depends_on=["w", "a"], retry=lf.retry()),
        timeout_seconds=600,
    )
    run = lf.run()
    steps = [
        (lf.start(definition, input_={"x": 11, "tags": ["a", None]}), lf.at(0)),
        (lf.ok("a", output=12), lf.at(1)),
        (lf.ok("c", output=True), lf.at(2)),
        (lf.fire("wait:w:1", due_at=lf.at(1.5)), lf.at(3.5)),
        (lf.fail("h", 1, retryable=True), lf.at(4)),
        (lf.fire("retry:h:1", due_at=lf.at(6)), lf.at(6)),
        (lf.ok("big", output={"size": "big"}), lf.at(7)),
        (lf.ok("h", 2, output={"status": 200, "body": None}), lf.at(8)),
    ]
    states = []
    for inp, now in steps:
        assert roundtrip(c, inp) == inp
        run.feed(inp, now)
        states.append(run.s)
    assert run.s.status is ExecutionStatus.SUCCESS
    for event in run.log:
        assert roundtrip(c, event) == event
    for state in states:
        assert roundtrip(c, state) == state

"""The compiled Avro writers and readers write and read what fastavro does for the same records,
whatever the fields hold (generated): other readers (Kafka UI, a registry's consumers) see no difference."""

from __future__ import annotations

import io
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from linkflow_stream.core.events import Dispatch, EventType, ExecutionEvent
from linkflow_stream.core.messages import NodeError, NodeResult, Priority, Signal, StartExecution
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, NodeState, NodeStatus, evolve
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.kafka import codec as codec_module
from linkflow_stream.kafka.avro_reader import compile_reader, read_long
from linkflow_stream.kafka.avro_writer import write_long, write_string
from linkflow_stream.kafka.codec import COMPILED, NAMESPACE, Codec, default_codec
from projections.status import accepted_state

CODEC = default_codec()
WORKFLOW = WorkflowDefinition.model_validate(
    {
        "id": "wf",
        "version": 3,
        "created_at": datetime(2026, 1, 2, tzinfo=UTC),
        "nodes": [
            {"id": "a", "type": "transform", "config": {"expression": "input.n"}},
            {"id": "b", "type": "http", "depends_on": ["a"], "config": {"url": "http://x/"}},
        ],
    }
)

text = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
times = st.datetimes(
    min_value=datetime(1900, 1, 1),  # noqa: DTZ001 - hypothesis takes naive bounds
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
).map(lambda at: at.replace(microsecond=at.microsecond // 1000 * 1000))
"""Whole milliseconds, as Avro keeps them (so a decoded record equals the one written)."""
longs = st.integers(-(2**63), 2**63 - 1)
errors = st.builds(NodeError, error_class=text, message=text, retryable=st.booleans())
signals = st.builds(
    Signal,
    name=text,
    id=st.none() | text,
    payload=json_values,
    execution_id=st.none() | text,
    correlation_key=st.none() | text,
)
events = st.builds(
    ExecutionEvent,
    execution_id=text,
    seq=longs,
    type=st.sampled_from(list(EventType)),
    at=times,
    node_id=st.none() | text,
    attempt=st.none() | st.integers(-(2**31), 2**31 - 1),
    workflow=st.none() | st.just(WORKFLOW),
    input=json_values,
    priority=st.none() | st.sampled_from(list(Priority)),
    output=json_values,
    error=st.none() | errors,
    reason=st.none() | text,
    due_at=st.none() | times,
    dispatch=st.none() | st.sampled_from(list(Dispatch)),
    usage=st.none() | st.dictionaries(text, longs, max_size=3),
    logs=st.none() | st.dictionaries(text, text, max_size=3),
    traceparent=st.none() | text,
    links=st.none() | st.dictionaries(text, text, max_size=2),
    signal=st.none() | signals,
    correlation_key=st.none() | text,
)
results = st.builds(
    NodeResult,
    execution_id=text,
    node_id=text,
    attempt=st.integers(-(2**31), 2**31 - 1),
    ok=st.booleans(),
    output=json_values,
    error=st.none() | errors,
    started_at=times,
    finished_at=times,
    worker_id=st.none() | text,
    usage=st.none() | st.dictionaries(text, longs, max_size=3),
    logs=st.none() | st.dictionaries(text, text, max_size=3),
    throttled_until=st.none() | times,
)


def by_fastavro(record: BaseModel) -> bytes:
    return CODEC.encode_dict(f"{NAMESPACE}.{type(record).__name__}", record.model_dump())


def test_the_records_written_most_are_compiled() -> None:
    assert all(CODEC.compiled(name) for name in COMPILED)
    assert not CODEC.compiled(f"{NAMESPACE}.WorkflowDefinition"), "the rest stays with fastavro"


@settings(max_examples=300, deadline=None)
@given(events)
def test_an_event_is_written_as_fastavro_writes_it(event: ExecutionEvent) -> None:
    assert CODEC.encode(event) == by_fastavro(event)
    assert CODEC.decode(CODEC.encode(event), ExecutionEvent) == event


@settings(max_examples=200, deadline=None)
@given(results)
def test_a_result_is_written_as_fastavro_writes_it(result: NodeResult) -> None:
    assert CODEC.encode(result) == by_fastavro(result)


@given(longs)
def test_longs_are_zig_zag_varints(n: int) -> None:
    out = bytearray()
    write_long(out, n)
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, {"type": "long"}, n)
    assert bytes(out) == expected.getvalue()


@given(st.text())
def test_strings_are_length_prefixed_utf8(s: str) -> None:
    out = bytearray()
    write_string(out, s)
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, {"type": "string"}, s)
    assert bytes(out) == expected.getvalue()


def test_times_before_the_epoch_round_down_like_fastavro() -> None:
    for at in (
        datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC) - timedelta(microseconds=1),
    ):
        event = ExecutionEvent(execution_id="e", seq=1, type=EventType.NODE_STARTED, at=at)
        assert CODEC.encode(event) == by_fastavro(event)


def test_a_missing_field_takes_its_schema_default_like_fastavro() -> None:
    from linkflow_stream.kafka.avro_writer import compile_record

    schema: dict[str, Any] = {
        "type": "record",
        "name": "T",
        "fields": [
            {"name": "a", "type": "long", "default": 7},
            {"name": "b", "type": ["null", "string"], "default": None},
        ],
    }
    write = compile_record(schema)
    assert write is not None
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, fastavro.parse_schema(schema), {})
    assert write({}, None) == expected.getvalue()


# -- the compiled readers -----------------------------------------------------------------------


def by_fastavro_read(data: bytes, model: type[BaseModel]) -> BaseModel:
    value = CODEC.decode_dict(data, f"{NAMESPACE}.{model.__name__}")
    return model.model_validate(value)


@settings(max_examples=300, deadline=None)
@given(events)
def test_an_event_is_read_as_fastavro_reads_it(event: ExecutionEvent) -> None:
    data = CODEC.encode(event)
    assert CODEC.decode(data, ExecutionEvent) == by_fastavro_read(data, ExecutionEvent) == event


@settings(max_examples=200, deadline=None)
@given(results)
def test_a_result_is_read_as_fastavro_reads_it(result: NodeResult) -> None:
    data = CODEC.encode(result)
    assert CODEC.decode(data, NodeResult) == by_fastavro_read(data, NodeResult) == result


def test_a_workflow_seen_before_is_recognised_by_its_bytes_and_shared() -> None:
    codec = Codec(CODEC.current)
    created = ExecutionEvent(
        execution_id="e",
        seq=1,
        type=EventType.EXECUTION_CREATED,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        workflow=WORKFLOW,
    )
    first = codec.decode(codec.encode(created), ExecutionEvent)  # not seen yet: fastavro, then shared
    assert first.workflow == WORKFLOW
    assert codec._read_compiled(codec.encode(created), f"{NAMESPACE}.ExecutionEvent") is not None
    again = codec.decode(codec.encode(created), ExecutionEvent)
    assert again.workflow is first.workflow
    changed = WORKFLOW.model_copy(update={"name": "changed"})  # same id and version, other bytes
    other = codec.decode(codec.encode(created.model_copy(update={"workflow": changed})), ExecutionEvent)
    assert other.workflow is not None and other.workflow.name == "changed"


def test_bytes_the_compiled_reader_cannot_read_are_a_decode_error() -> None:
    from linkflow_stream.kafka.codec import DecodeError

    event = ExecutionEvent(
        execution_id="e", seq=1, type=EventType.NODE_STARTED, at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    data = CODEC.encode(event)
    for cut in (len(data) - 1, 12):
        try:
            CODEC.decode(data[:cut], ExecutionEvent)
        except DecodeError:
            continue
        raise AssertionError(f"a record cut at {cut} bytes decoded")


# -- node states, kept per object ---------------------------------------------------------------

node_states = st.builds(
    NodeState,
    status=st.sampled_from(list(NodeStatus)),
    attempts=st.integers(0, 5),
    output=json_values,
    error=st.none() | errors,
    started_at=st.none() | times,
    finished_at=st.none() | times,
    usage=st.none() | st.dictionaries(text, longs, max_size=2),
    logs=st.none() | st.dictionaries(text, text, max_size=2),
    reused=st.booleans(),
    attempt_started_at=st.none() | times,
    correlation_key=st.none() | text,
)


def a_state(nodes: dict[str, NodeState]) -> ExecutionState:
    return ExecutionState(
        id="e",
        workflow=WORKFLOW,
        status=ExecutionStatus.RUNNING,
        input={"n": 1},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        seq=len(nodes),
        nodes=nodes,
    )


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=4), node_states, max_size=6), node_states)
def test_a_state_is_written_as_fastavro_writes_it_when_its_nodes_were_written_before(
    nodes: dict[str, NodeState], moved: NodeState
) -> None:
    state = a_state(nodes)
    assert CODEC.encode(state) == by_fastavro(state)
    later = a_state({**nodes, "moved": moved})  # the same node objects, one more
    assert CODEC.encode(later) == by_fastavro(later)
    assert CODEC.decode(CODEC.encode(later), ExecutionState) == later


def test_node_states_past_the_cache_bound_are_written_again_correctly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec_module, "NODE_CACHE", 8)
    codec = Codec(CODEC.current)
    states = [
        a_state({f"n{i}": NodeState(status=NodeStatus.SUCCESS, attempts=1, output=i) for i in range(k)})
        for k in range(1, 12)
    ]
    for state in states * 2:
        assert codec.encode(state) == by_fastavro(state)
    assert len(codec._node_bytes) <= 8 + 1


def test_a_state_written_does_not_keep_its_node_states_alive() -> None:
    """The bytes of a node state are kept while the node lives, not the node for as long as the
    bytes are kept (ADR 0070): a finished run's nodes are freed when its state is."""
    codec = Codec(CODEC.current)
    node = NodeState(status=NodeStatus.SUCCESS, attempts=1, output={"big": list(range(50))})
    state = a_state({"n": node})
    first = codec.encode(state)
    assert codec.encode(a_state({"n": node})) == first == by_fastavro(state)
    assert len(codec._node_bytes) == 1
    gone = weakref.ref(node)
    del node, state
    assert gone() is None, "the codec kept a node state alive"
    assert len(codec._node_bytes) == 0


# -- found in review --------------------------------------------------------------------------------


def test_definitions_that_differ_only_in_a_value_type_are_not_shared() -> None:
    """``True == 1`` and ``0 == -0.0`` in Python: a dict comparison took one for the other."""
    writer, reader = Codec(CODEC.current), Codec(CODEC.current)
    for flag in (1, True, 1.0, -0.0, 0, False):
        workflow = WORKFLOW.model_copy(
            update={"nodes": (WORKFLOW.nodes[0].model_copy(update={"config": {"flag": flag}}),)}
        )
        created = ExecutionEvent(
            execution_id="e",
            seq=1,
            type=EventType.EXECUTION_CREATED,
            at=datetime(2026, 1, 1, tzinfo=UTC),
            workflow=workflow,
        )
        got = reader.decode(writer.encode(created), ExecutionEvent).workflow
        assert got is not None
        seen = got.nodes[0].config["flag"]
        assert (type(seen), seen) == (type(flag), flag)


def test_a_number_beyond_64_bits_is_refused_not_written_as_another() -> None:
    for n in (2**63, -(2**63) - 1):
        with pytest.raises(ValueError, match="Avro long"):
            write_long(bytearray(), n)
    result = NodeResult(
        execution_id="e",
        node_id="n",
        attempt=1,
        ok=True,
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        finished_at=datetime(2026, 1, 1, tzinfo=UTC),
        usage={"cpu_us": 2**63},
    )
    with pytest.raises(ValueError, match="Avro long"):
        CODEC.encode(result)


def test_an_overlong_varint_is_read_as_fastavro_reads_it() -> None:
    event = ExecutionEvent(
        execution_id="e", seq=5, type=EventType.NODE_STARTED, at=datetime(2026, 1, 1, tzinfo=UTC)
    )
    data = CODEC.encode(event)
    at = data.index(b"\x0a", 10 + 2)  # seq 5, zig-zag 10, after the header and the id "e"
    bad = data[:at] + b"\xff" * 9 + b"\x7f" + data[at + 1 :]
    with pytest.raises(ValueError, match="64 bits"):
        read_long(bad, at)
    assert CODEC.decode(bad, ExecutionEvent).seq == by_fastavro_read(bad, ExecutionEvent).seq  # type: ignore[attr-defined]


def test_large_node_states_are_not_kept_and_the_kept_bytes_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec_module, "NODE_CACHE_BYTES", 4096)
    codec = Codec(CODEC.current)
    big = a_state(
        {"big": NodeState(status=NodeStatus.SUCCESS, output="x" * (codec_module.NODE_CACHE_LARGEST + 1))}
    )
    assert codec.encode(big) == by_fastavro(big)
    assert not len(codec._node_bytes), "a large output is encoded each time, not held twice"
    for k in range(40):
        state = a_state(
            {f"n{i}": NodeState(status=NodeStatus.SUCCESS, output="y" * 200 + str(i)) for i in range(k)}
        )
        assert codec.encode(state) == by_fastavro(state)
        assert codec._node_bytes.weight <= 4096 + 300


def test_the_pending_nodes_of_new_runs_are_written_once() -> None:
    """A new run's nodes (in the orchestrator's first snapshot, and in the views' pending row) are
    one shared object, so the codec writes its bytes once: a 200-node run's first snapshot took
    2.4-3.3 ms to encode when every pending node was an object of its own, 0.2-0.4 ms now."""
    codec = Codec(CODEC.current)
    writer = codec._node_writer
    assert writer is not None
    written: list[dict[str, Any]] = []

    def counting(data: dict[str, Any], workflow: Any) -> bytes:
        written.append(data)
        return writer(data, workflow)

    codec.__dict__["_node_writer"] = counting  # the cached property's slot
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(20):
        created = ExecutionEvent(
            execution_id=f"e{i}", seq=1, type=EventType.EXECUTION_CREATED, at=at, workflow=WORKFLOW, input={}
        )
        started = evolve(None, created)
        pending = accepted_state(
            StartExecution(execution_id=f"p{i}", workflow=WORKFLOW, input={}, requested_at=at)
        )
        for state in (started, pending):
            assert codec.encode(state) == by_fastavro(state)
            assert codec.decode(codec.encode(state), ExecutionState) == state
    assert len(written) == 1, f"pending nodes written {len(written)} times"


def test_an_optional_branch_in_any_varint_form_is_read_as_fastavro_reads_it() -> None:
    """The branch is read from its one byte as writers write it (0 or 2), and from the general
    varint otherwise: a longer form of the same number reads the same, another branch is refused."""
    schema = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "a", "type": ["null", "long"]}, {"name": "b", "type": ["null", "string"]}],
    }
    read = compile_reader(schema)
    assert read is not None
    parsed = fastavro.parse_schema(schema)
    for data in (b"\x00\x02\x02x", b"\x02\x06\x00", b"\x80\x00\x82\x00\x02x", b"\x82\x80\x00\x06\x80\x00"):
        assert read(data) == fastavro.schemaless_reader(io.BytesIO(data), parsed, None)
    assert read(b"\x02\x06\x00") == {"a": 3, "b": None}
    for bad in (b"\x04\x00", b"\x01\x00", b"\x84\x00\x00"):
        with pytest.raises(ValueError, match="union branch"):
            read(bad)

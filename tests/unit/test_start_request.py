"""Starting runs from Kafka, without a broker: decoding ``StartRequest`` records (Avro and JSON),
the execution id each request names, the workflow version it runs, and what the intake turns a
batch of records into (a ``StartExecution``, nothing for a run that exists, or a dead letter
with its reason), against fake views and a fake sync."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.errors import ValidationError
from linkflow_stream.core.idempotency import execution_ids
from linkflow_stream.core.messages import Priority, StartExecution
from linkflow_stream.core.start_request import (
    Origin,
    StartRequest,
    UnknownWorkflowError,
    candidate_ids,
    check_execution_id,
    choose_workflow,
    position_id,
)
from linkflow_stream.core.state import ExecutionState, ExecutionStatus
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.kafka.codec import DecodeError, default_codec
from linkflow_stream.kafka.consumers import LogUnavailable
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.start_intake import (
    ORIGIN_HEADER,
    RECENT_SECONDS,
    Batch,
    StartIntake,
    ViewsBehind,
    decode_request,
)
from linkflow_stream.settings import Settings
from projections.status import render
from projections.workflows import WorkflowView
from tests.unit.conftest import T0_MILLIS, at

PREFIX = "t."
START_TOPIC = f"{PREFIX}{topic_names.START}"
ORIGIN = Origin(START_TOPIC, 2, 41, T0_MILLIS)


def workflow(version: int = 1, team: str | None = "ops") -> WorkflowDefinition:
    return WorkflowDefinition(
        id="wf",
        version=version,
        team=team,
        nodes=(NodeDefinition(id="a", type="transform", config={"expression": "input.n"}),),
        created_at=at(-60),
    )


# ------------------------------------------------------------------------------ decoding


def test_avro_and_json_values_decode_to_the_same_request() -> None:
    codec = default_codec()
    request = StartRequest(workflow_id="wf", input={"n": 1}, priority=Priority.HIGH, idempotency_key="k1")
    from_avro = decode_request(codec, codec.encode(request))
    from_json = decode_request(
        codec, b' {"workflow_id": "wf", "input": {"n": 1}, "priority": "high", "idempotency_key": "k1"}'
    )
    assert from_avro == from_json == request
    assert decode_request(codec, b'{"workflow_id": "wf"}').input == {}, "input defaults to {}"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "tombstone"),
        (b"hello", "not an Avro single-object encoded"),
        (b'{"workflow_id": "wf", "inputs": {}}', "inputs: Extra inputs are not permitted"),
        (b'{"workflow_id": ""}', "workflow_id"),
        (b'{"workflow_id": "wf", "priority": "urgent"}', "priority"),
        (b'{"workflow_id": "wf", "workflow_version": 0}', "workflow_version"),
        (b'{"workflow_id": "wf"', "malformed JSON"),
        (b'{"workflow_id": "wf", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed JSON"),
        # not JSON (ADR 0049): stored, they would break every JSON reader of the run
        (b'{"workflow_id": "wf", "input": {"x": NaN}}', "NaN is not a JSON number"),
        # JSON that is no object says so (it was called "not an Avro single-object encoded")
        (b'[{"workflow_id": "wf"}]', "not a start request: JSON, but a list"),
        (b"null", "not a start request: JSON, but null"),
        (b'  "wf"', "not a start request: JSON, but a string"),
        (b'\xef\xbb\xbf{"workflow_id": ""}', "workflow_id"),  # a BOM first: read as JSON all the same
        (b'{"workflow_id": "wf", "input": [1e999]}', "beyond the range of a double"),
        (default_codec().encode(StartRequest(workflow_id="wf", input={"x": [float("inf")]})), "Infinity"),
    ],
)
def test_what_is_not_a_start_request_says_why(value: bytes | None, says: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_request(default_codec(), value)
    assert says in caught.value.message


# ------------------------------------------------------------------------------ ids


def test_the_idempotency_key_names_the_http_apis_ids_for_the_workflows_team() -> None:
    request = StartRequest(workflow_id="wf", idempotency_key="order-7")
    assert candidate_ids(request, "ops", ORIGIN, at()) == execution_ids("ops", "order-7", at())
    assert candidate_ids(request, "web", ORIGIN, at()) != candidate_ids(request, "ops", ORIGIN, at())


def test_a_given_execution_id_is_used_if_well_formed() -> None:
    assert candidate_ids(StartRequest(workflow_id="wf", execution_id="order-7.a_b"), "", ORIGIN, at()) == (
        "order-7.a_b",
    )
    for bad in ("", "a/b", "x" * 129, "caf\u00e9", "a b", ".", ".."):  # dot segments: resolved away in URLs
        with pytest.raises(ValidationError, match="execution_id"):
            check_execution_id(bad)
    assert check_execution_id("...") == "..." and check_execution_id(".a") == ".a"  # not dot segments
    with pytest.raises(ValidationError, match="not both"):
        candidate_ids(StartRequest(workflow_id="wf", execution_id="e", idempotency_key="k"), "", ORIGIN, at())


def test_without_either_the_id_is_fixed_by_the_records_position() -> None:
    request = StartRequest(workflow_id="wf")
    (first,) = candidate_ids(request, "", ORIGIN, at())
    assert first == position_id(ORIGIN) == candidate_ids(request, "", ORIGIN, at(5))[0], "read again later"
    assert first.startswith("exec_") and len(first) == len("exec_") + 32
    others = {
        position_id(Origin(START_TOPIC, 2, 42, T0_MILLIS)),
        position_id(Origin(START_TOPIC, 3, 41, T0_MILLIS)),
        position_id(Origin("other.linkflow.start", 2, 41, T0_MILLIS)),
        position_id(Origin(START_TOPIC, 2, 41, T0_MILLIS + 1)),  # the topic made anew, offsets restarted
    }
    assert first not in others and len(others) == 4


# ------------------------------------------------------------------------------ versions


def test_the_latest_version_or_the_one_asked_for() -> None:
    v1, v2 = workflow(1), workflow(2)
    assert choose_workflow(StartRequest(workflow_id="wf"), v2, None) is v2
    assert choose_workflow(StartRequest(workflow_id="wf", workflow_version=1), v2, v1) is v1
    with pytest.raises(UnknownWorkflowError, match="no version 3"):
        choose_workflow(StartRequest(workflow_id="wf", workflow_version=3), v2, None)
    with pytest.raises(UnknownWorkflowError, match="not registered"):
        choose_workflow(StartRequest(workflow_id="wf"), None, None)


# ------------------------------------------------------------------------------ the intake


class FakeViews:
    """The engine's views as the intake sees them: runs by id, a workflow view, and a sync that
    can bring in a workflow registered elsewhere (or fail to catch up)."""

    def __init__(self) -> None:
        self.workflows = WorkflowView()
        self.runs: dict[str, dict[str, Any]] = {}
        self.syncs = 0
        self.on_sync: list[WorkflowDefinition] = []
        self.catches_up = True

    async def find_run(self, execution_id: str) -> dict[str, Any] | None:
        return self.runs.get(execution_id)

    async def sync(self, within: float) -> bool:
        self.syncs += 1
        for wf in self.on_sync:
            self.workflows.apply(wf)
        return self.catches_up


def intake(views: FakeViews) -> StartIntake:
    settings = Settings(topic_prefix=PREFIX)
    metrics = Metrics(active=lambda: 0)
    return StartIntake(
        settings, default_codec(), views.workflows, views.find_run, views.sync, metrics, clock=lambda: at(30)
    )


def record(value: bytes | None, offset: int = 41, timestamp: int = T0_MILLIS) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=START_TOPIC,
        partition=2,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=0,
        key=b"any",
        value=value,
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=len(value or b""),
        headers=[],
    )


def as_json(**fields: Any) -> bytes:
    return json.dumps({"workflow_id": "wf", **fields}).encode()


def headers(r: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in r.headers}


async def test_a_request_becomes_a_start_execution_on_its_priority_topic() -> None:
    views = FakeViews()
    views.workflows.apply(workflow())
    batch = Batch()
    await intake(views).translate(record(as_json(input={"n": 3}, priority="high")), batch)
    (out,) = batch.records
    assert out.topic == f"{PREFIX}linkflow.requests.high"
    start = default_codec().decode(out.value, StartExecution)
    assert out.key == start.execution_id.encode() == position_id(ORIGIN).encode()
    assert (start.input, start.priority, start.workflow.version) == ({"n": 3}, Priority.HIGH, 1)
    assert start.requested_at == at(30), "accepted when read (the id, not the time, comes from the record)"
    assert headers(out)[ORIGIN_HEADER] == f"{START_TOPIC}/2/41"
    assert views.syncs == 0, "a known workflow and a position id need no look-up"


async def test_an_unknown_workflow_is_dead_lettered_only_after_a_sync() -> None:
    views = FakeViews()
    batch = Batch()
    await intake(views).translate(record(as_json()), batch)
    (letter,) = batch.records
    assert letter.topic == f"{PREFIX}{topic_names.DLQ}" and letter.value == as_json()
    found = headers(letter)
    assert found["dlq_reason"].startswith("unknown_workflow: workflow 'wf' is not registered")
    assert (found["dlq_topic"], found["dlq_partition"], found["dlq_offset"]) == (START_TOPIC, "2", "41")
    assert views.syncs == 1


async def test_a_workflow_registered_a_moment_ago_is_found_by_the_sync() -> None:
    views = FakeViews()
    views.on_sync = [workflow()]
    batch = Batch()
    await intake(views).translate(record(as_json()), batch)
    assert [r.topic for r in batch.records] == [f"{PREFIX}linkflow.requests.normal"]


async def test_views_that_cannot_catch_up_fail_the_batch_instead_of_guessing() -> None:
    views = FakeViews()
    views.catches_up = False
    with pytest.raises(ViewsBehind):
        await intake(views).translate(record(as_json()), Batch())
    views.workflows.apply(workflow())
    with pytest.raises(ViewsBehind):
        await intake(views).translate(record(as_json(idempotency_key="k")), Batch())


async def test_a_key_or_id_whose_run_exists_starts_nothing() -> None:
    views = FakeViews()
    views.workflows.apply(workflow())
    current, _previous = execution_ids("ops", "k", at())
    run = {"created_at": "2020-01-01T00:00:00Z", "workflow_id": "wf", "input_data": {}}
    views.runs["given"] = run
    views.runs[current] = run
    batch = Batch()
    the_intake = intake(views)
    await the_intake.translate(record(as_json(execution_id="given")), batch)
    await the_intake.translate(record(as_json(idempotency_key="k")), batch)
    assert batch.records == [] and [o.value for o in batch.outcomes] == ["duplicate", "duplicate"]


async def test_a_key_or_id_whose_run_is_another_start_is_dead_lettered() -> None:
    """Counted as a duplicate, the other input would be dropped unseen (ADR 0049)."""
    views = FakeViews()
    views.workflows.apply(workflow())
    current, _previous = execution_ids("ops", "k", at())
    views.runs["given"] = {"created_at": "2020-01-01T00:00:00Z", "workflow_id": "wf", "input_data": {"n": 1}}
    views.runs[current] = {"created_at": "2020-01-01T00:00:00Z", "workflow_id": "other", "input_data": {}}
    batch = Batch()
    the_intake = intake(views)
    await the_intake.translate(record(as_json(execution_id="given", input={"n": 2})), batch)
    await the_intake.translate(record(as_json(idempotency_key="k")), batch)
    assert [o.value for o in batch.outcomes] == ["dead_lettered", "dead_lettered"]
    for letter in batch.records:
        assert headers(letter)["dlq_reason"].startswith("conflict: its idempotency key or execution id"), (
            letter
        )
    # in one batch too: the second start with the key and another input is not the first's duplicate
    batch = Batch()
    await the_intake.translate(record(as_json(idempotency_key="fresh", input={"n": 1}), offset=50), batch)
    await the_intake.translate(record(as_json(idempotency_key="fresh", input={"n": 2}), offset=51), batch)
    assert [o.value for o in batch.outcomes] == ["started", "dead_lettered"]


async def test_the_previous_windows_run_counts_for_24_hours_after_it_began() -> None:
    views = FakeViews()
    views.workflows.apply(workflow())
    _current, previous = execution_ids("ops", "k", at())
    began = at() - timedelta(hours=1)
    views.runs[previous] = render_created(began)
    batch = Batch()
    await intake(views).translate(record(as_json(idempotency_key="k")), batch)
    assert batch.records == []
    views.runs[previous] = render_created(at() - timedelta(hours=25))
    await intake(views).translate(record(as_json(idempotency_key="k")), batch)
    assert len(batch.records) == 1


def render_created(when: Any) -> dict[str, Any]:

    state = ExecutionState(
        id="x",
        workflow=workflow(),
        status=ExecutionStatus.SUCCESS,
        input={},
        created_at=when,
        seq=3,
        nodes={},
    )
    return render(state)


async def test_the_same_key_twice_in_one_batch_starts_one_run() -> None:
    views = FakeViews()
    views.workflows.apply(workflow())
    batch = Batch()
    the_intake = intake(views)
    await the_intake.translate(record(as_json(idempotency_key="k"), offset=41), batch)
    await the_intake.translate(record(as_json(idempotency_key="k"), offset=42), batch)
    assert [o.value for o in batch.outcomes] == ["started", "duplicate"]
    assert batch.records[0].key == execution_ids("ops", "k", at())[0].encode()


class Committing:
    """A transactional producer that commits every batch: what each wrote."""

    def __init__(self) -> None:
        self.commits: list[list[Any]] = []

    async def commit(self, records: Any, offsets: Any, group_id: str) -> None:
        self.commits.append(list(records))


async def test_a_repeat_read_before_the_views_have_its_run_is_still_a_duplicate() -> None:
    """Between the intake's commit and ``execution_created`` reaching the views, no view has the
    run. CI saw 3 duplicates counted of 4: the repeat was started again (the orchestrator then
    dropped it), and a repeat with another input was dropped unseen instead of dead-lettered.
    The intake remembers what it committed for ``RECENT_SECONDS``, then asks the views only."""
    views = FakeViews()  # never has the run: the orchestrator has not created it
    views.workflows.apply(workflow())
    clock = [1000.0]
    the_intake = StartIntake(
        Settings(topic_prefix=PREFIX),
        default_codec(),
        views.workflows,
        views.find_run,
        views.sync,
        Metrics(active=lambda: 0),
        clock=lambda: at(30),
        monotonic=lambda: clock[0],
    )
    producer = Committing()
    the_intake.producers[2] = cast(Any, producer)
    the_intake.positions[2] = 41
    the_intake._consumer = cast(Any, object())  # only a failed batch seeks
    tp = TopicPartition(START_TOPIC, 2)

    async def read(offset: int, n: int) -> list[str]:
        await the_intake._process(tp, [record(as_json(idempotency_key="k", input={"n": n}), offset=offset)])
        return [r.topic.removeprefix(PREFIX) for r in producer.commits[-1]]

    assert await read(41, 1) == ["linkflow.requests.normal"]
    assert await read(42, 1) == [], "a duplicate: nothing more is started"
    assert await read(43, 2) == [topic_names.DLQ], "another input under the same key: a conflict"
    letter = producer.commits[-1][0]
    assert headers(letter)["dlq_reason"].startswith("conflict: ")
    counted = the_intake.metrics.registry.get_sample_value
    assert counted("linkflow_start_requests_total", {"outcome": "duplicate"}) == 1
    assert counted("linkflow_start_requests_total", {"outcome": "started"}) == 1

    clock[0] += RECENT_SECONDS + 1  # long enough for the views to know it: memory lets it go
    assert await read(44, 1) == ["linkflow.requests.normal"]
    assert the_intake.positions[2] == 45


async def test_bad_records_are_dead_lettered_with_their_reason() -> None:
    views = FakeViews()
    views.workflows.apply(workflow())
    batch = Batch()
    the_intake = intake(views)
    await the_intake.translate(record(b"\x00garbage"), batch)
    await the_intake.translate(record(as_json(execution_id="a/b")), batch)
    await the_intake.translate(record(as_json(workflow_version=7)), batch)
    reasons = [headers(r)["dlq_reason"] for r in batch.records]
    assert reasons[0].startswith("decode: ")  # a 0x00 byte reads as Confluent framing: still no record
    assert reasons[1].startswith("validation: execution_id 'a/b'")
    assert reasons[2].startswith("unknown_workflow: workflow 'wf' has no version 7")
    assert [o.value for o in batch.outcomes] == ["dead_lettered"] * 3


async def test_a_request_for_an_older_version_starts_it_from_the_log() -> None:
    """Memory holds the latest definition only; version 1 is read back from its record."""
    codec = default_codec()
    v1, v2 = workflow(1), workflow(2)
    log = {(0, 5): codec.encode(v1), (0, 9): codec.encode(v2)}
    reads: list[tuple[int, int]] = []

    async def load(partition: int, offset: int) -> bytes | None:
        reads.append((partition, offset))
        return log.get((partition, offset))

    views = FakeViews()
    views.workflows = WorkflowView(load, lambda value: codec.decode(value, WorkflowDefinition))
    views.workflows.apply(v1, (0, 5))
    views.workflows.apply(v2, (0, 9))
    batch = Batch()
    await intake(views).translate(record(as_json(workflow_version=1)), batch)
    (out,) = batch.records
    assert codec.decode(out.value, StartExecution).workflow.version == 1
    assert reads == [(0, 5)]


async def test_a_log_that_cannot_be_read_holds_the_batch_instead_of_dead_lettering() -> None:
    async def load(partition: int, offset: int) -> bytes | None:
        raise LogUnavailable("the broker is away")

    views = FakeViews()
    views.workflows = WorkflowView(load, lambda value: default_codec().decode(value, WorkflowDefinition))
    views.workflows.apply(workflow(1), (0, 5))
    views.workflows.apply(workflow(2), (0, 9))
    with pytest.raises(ViewsBehind, match="broker is away"):
        await intake(views).translate(record(as_json(workflow_version=1)), Batch())


async def test_json_records_with_a_lone_surrogate_neither_stall_nor_break_the_encoding() -> None:
    views = FakeViews()
    views.workflows.apply(workflow())
    batch = Batch()
    the_intake = intake(views)
    await the_intake.translate(record(b'{"workflow_id": "wf\\ud800"}'), batch)
    await the_intake.translate(record(b'{"workflow_id": "wf", "input": {"s": "\\ud800"}}', offset=42), batch)
    letter, start = batch.records
    assert headers(letter)["dlq_reason"].startswith("decode: not a start request: workflow_id:")
    assert default_codec().decode(start.value, StartExecution).input == {"s": "\ud800"}

"""The orchestrator's batch loop without Kafka: a fake transactional producer stands in for the
broker, and records are built by hand. The same loop runs on the real broker in the e2e tests
(tests/e2e/test_takeover.py, test_crash_recovery.py) and its producer in
tests/integration/test_transactions.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.events import EventType, ExecutionEvent
from linkflow_stream.core.messages import (
    CommandKind,
    ExecutionCommand,
    NodeResult,
    NodeTask,
    Priority,
    StartExecution,
)
from linkflow_stream.core.state import ExecutionState, ExecutionStatus, evolve
from linkflow_stream.core.trace_context import TRACEPARENT, RunTrace
from linkflow_stream.core.validation import parse_workflow
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.records import ProducerRecord
from linkflow_stream.kafka.transactions import CommitFailed, Fenced, ProducerBroken
from linkflow_stream.nodes import build_registry, decider_config
from linkflow_stream.runtime import partition as partition_module
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.orchestrator import (
    BATCH_RETRIES,
    MAX_STRIKES,
    RECORD_RETRIES,
    UNHEALTHY_AFTER_SECONDS,
    Abandon,
    Orchestrator,
)
from linkflow_stream.runtime.partition import EARLY_CANCEL_SECONDS, InputGap, Partition
from linkflow_stream.runtime.positions import POSITIONS_KEY, read_positions
from linkflow_stream.runtime.restore import Restored
from linkflow_stream.runtime.step import Stepper
from linkflow_stream.settings import Settings
from linkflow_stream.tracing import ExecutionSpans, Tracing

T0 = 1_800_000_000_000
CODEC = default_codec()
REQUESTS = TopicPartition(topic_names.requests(Priority.NORMAL), 0)
RESULTS = TopicPartition(topic_names.RESULTS, 0)
COMMANDS = TopicPartition(topic_names.COMMANDS, 0)


@dataclass
class FakeProducer:
    """Commits what it is given, unless told to fail the next ``fail`` commits."""

    fail: int = 0
    """Fail this many commits, with ``failure()``: by default the broker's fault."""
    failure: Any = lambda: CommitFailed("broker away")
    fenced: bool = False
    committed: list[tuple[list[ProducerRecord], dict[TopicPartition, int]]] = field(default_factory=list)
    """Each transaction's records but its positions record, and the input positions that
    record moved (ADR 0061): those that differ from the last positions record (every input
    starts at 0 in these tests)."""
    positions: list[dict[TopicPartition, int]] = field(default_factory=list)
    """Each transaction's positions record, whole (none for a transaction without one)."""
    group_offsets: list[dict[TopicPartition, int]] = field(default_factory=list)
    """The group offsets each transaction was asked to move (none since ADR 0061, by default)."""
    attempts: int = 0
    calls: list[str] = field(default_factory=list)
    """``prepare`` (with what it adds) and ``commit``, in the order they were called."""
    open: bool = False
    """A transaction is open: prepared, and not committed (or aborted, on a failed commit) since."""

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def prepare(self, partitions: Sequence[TopicPartition]) -> None:
        self.calls.append("prepare " + " ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))
        self.open = True

    async def commit(
        self, records: Sequence[ProducerRecord], offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        self.attempts += 1
        self.calls.append("commit")
        self.open = False  # committed, or aborted by the failure below
        if self.fenced:
            raise Fenced("another owner")
        if self.fail:
            self.fail -= 1
            raise self.failure()
        ours = [r for r in records if r.key == POSITIONS_KEY and r.topic == topic_names.STATE]
        kept = [r for r in records if r not in ours]
        written = [read_positions(r.value or b"", r.partition or 0) for r in ours]
        assert len(written) <= 1
        before = self.positions[-1] if self.positions else {}
        moved = {tp: o for p in written for tp, o in p.items() if o != before.get(tp, 0)}
        self.positions.extend(written)
        self.group_offsets.append(dict(offsets))
        self.committed.append((kept, moved))

    def records(self, topic: str) -> list[ProducerRecord]:
        return [r for records, _ in self.committed for r in records if r.topic == topic]

    def committed_state(self, execution_id: str) -> ExecutionState:
        """The execution's state as committed: its events folded (a partition holds a finished run
        slim, and the changelog keeps only that marker of it: ADR 0071)."""
        state: ExecutionState | None = None
        for event in self.events():
            if event.execution_id == execution_id:
                state = evolve(state, event)
        assert state is not None, f"no events of {execution_id}"
        return state

    def events(self) -> list[ExecutionEvent]:
        return [CODEC.decode(r.value, ExecutionEvent) for r in self.records(topic_names.EVENTS)]


def refused() -> Exception:
    """A failure that is the batch's fault (a bug in deciding, a record the broker refuses)."""
    return ValueError("a record of this batch is refused")


def stepper(**kwargs: Any) -> Stepper:
    settings = Settings()
    registry = build_registry(settings)
    return Stepper(registry, decider_config(registry, settings), **kwargs)


def partition(producer: FakeProducer, *, ttl: float = 300.0, probe: Any = None, **kwargs: Any) -> Partition:
    p = Partition(
        0,
        producer,
        kwargs.pop("stepper", None) or stepper(),
        CODEC,
        topic=lambda name: name,
        group_id="g",
        finished_ttl_seconds=ttl,
        probe=probe,
        **kwargs,
    )
    p.load([], {REQUESTS: 0, RESULTS: 0, COMMANDS: 0})
    return p


def record(
    tp: TopicPartition,
    offset: int,
    value: bytes | None,
    key: str = "e1",
    ms: int = T0,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> Any:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=ms,
        timestamp_type=0,
        key=key.encode(),
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value or b""),
        headers=headers,
    )


def workflow(nodes: list[dict[str, Any]]) -> Any:
    return parse_workflow(
        {"id": "wf", "nodes": nodes}, build_registry(Settings()), version=1, created_at=from_millis(T0)
    )


def start_record(
    offset: int,
    nodes: list[dict[str, Any]],
    execution_id: str = "e1",
    *,
    traceparent: str | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> Any:
    request = StartExecution(
        execution_id=execution_id,
        workflow=workflow(nodes),
        input={"x": 1},
        requested_at=from_millis(T0),
        traceparent=traceparent,
    )
    return record(REQUESTS, offset, CODEC.encode(request), key=execution_id, headers=headers)


TRANSFORM = [{"id": "a", "type": "transform", "config": {"expression": "input.x + 1"}}]
HTTP = [{"id": "h", "type": "http", "config": {"url": "https://example.com/x", "method": "GET"}}]
WAIT = [{"id": "w", "type": "wait", "config": {"seconds": 2}}]


async def test_a_batch_commits_events_state_and_offsets_together() -> None:
    producer = FakeProducer()
    p = partition(producer)
    report = await p.run_batch([start_record(0, TRANSFORM)], T0)
    assert len(producer.committed) == 1
    records, offsets = producer.committed[0]
    assert offsets == {REQUESTS: 1}
    assert [e.type for e in producer.events()][-1] is EventType.EXECUTION_SUCCEEDED
    changelog = [r for r in records if r.topic == topic_names.STATE]
    assert len(changelog) == 1 and changelog[0].partition == 0
    assert CODEC.decode(changelog[0].value, ExecutionState).status is ExecutionStatus.SUCCESS
    assert p.states["e1"].status is ExecutionStatus.SUCCESS
    assert p.positions[REQUESTS] == 1
    assert report.inputs == 1


async def test_a_batch_commits_its_input_positions_on_the_changelog_not_as_group_offsets() -> None:
    """ADR 0061: the transaction holds a record of every input's next offset on the changelog
    partition it writes anyway; the group's offsets are not moved in it (two round trips fewer)."""
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([start_record(0, TRANSFORM, "e1"), start_record(1, TRANSFORM, "e2")], T0)
    assert producer.positions == [{REQUESTS: 2, RESULTS: 0, COMMANDS: 0}], "every input, moved or not"
    assert producer.group_offsets == [{}]
    await p.run_batch([], T0 + 1)  # nothing due: no transaction
    await p.run_batch([start_record(1, TRANSFORM, "e2")], T0 + 2)  # read again after a rewind: stale
    assert len(producer.positions) == 1, "a batch that decided no input moves no position"


async def test_a_partition_told_to_moves_the_group_offsets_in_the_transaction_instead() -> None:
    """For a rolling upgrade from a release that reads only the group's offsets when it claims,
    and cannot read a positions record at all."""
    producer = FakeProducer()
    p = partition(producer, offsets_in_transaction=True)
    await p.run_batch([start_record(0, TRANSFORM)], T0)
    assert producer.group_offsets == [{REQUESTS: 1}]
    assert producer.positions == []


async def test_a_start_under_the_positions_key_is_dead_lettered_not_run() -> None:
    """A producer writing to the request topic itself can use any id; this one would share the
    changelog key of the partition's positions."""
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([start_record(0, TRANSFORM, POSITIONS_KEY.decode())], T0)
    (letter,) = producer.records(topic_names.DLQ)
    assert b"reserved" in dict(letter.headers)["dlq_reason"], letter.headers
    assert p.states == {} and producer.events() == []
    assert producer.positions == [{REQUESTS: 1, RESULTS: 0, COMMANDS: 0}]


async def test_a_batch_prepares_its_transaction_with_the_runs_events_and_state_before_deciding() -> None:
    """ADR 0060: the partitions every deciding batch writes are added while it decides."""
    producer = FakeProducer(fail=1)
    p = partition(producer)
    added = f"prepare {topic_names.EVENTS}[0] {topic_names.STATE}[0]"
    with pytest.raises(CommitFailed):
        await p.run_batch([start_record(0, TRANSFORM)], T0)
    await p.run_batch([start_record(0, TRANSFORM)], T0)
    assert producer.calls == [added, "commit", added, "commit"]
    written = {(r.topic, r.partition) for r in producer.committed[0][0]}
    assert written == {(topic_names.EVENTS, 0), (topic_names.STATE, 0)}, "what it prepared is what it wrote"


async def test_a_batch_with_nothing_to_decide_leaves_no_transaction_open() -> None:
    """A prepared transaction left open would be timed out by the broker, fencing this very
    producer: a batch of no inputs (a stale timer entry) prepares nothing, and one of inputs that
    were all decided already closes the transaction it prepared."""
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([], T0)
    assert producer.calls == [] and not producer.open
    await p.run_batch([start_record(0, TRANSFORM)], T0)
    producer.calls.clear()
    report = await p.run_batch([start_record(0, TRANSFORM)], T0)  # read again after a rewind
    assert report.stale == 1
    assert producer.calls[-1] == "commit" and not producer.open


async def test_an_aborted_batch_changes_nothing_and_deciding_it_again_gives_the_same_records() -> None:
    producer = FakeProducer(fail=1)
    p = partition(producer)
    batch = [start_record(0, HTTP)]
    with pytest.raises(CommitFailed):
        await p.run_batch(batch, T0)
    assert p.states == {} and p.positions[REQUESTS] == 0 and len(p.timers) == 0
    await p.run_batch(batch, T0)
    again = FakeProducer()
    await partition(again).run_batch(batch, T0)
    assert [(r.topic, r.key, r.value) for r in producer.committed[0][0]] == [
        (r.topic, r.key, r.value) for r in again.committed[0][0]
    ]
    assert "e1" in p.states and len(p.timers) == 1  # the task's lease


async def test_a_fenced_batch_changes_nothing() -> None:
    producer = FakeProducer(fenced=True)
    p = partition(producer)
    with pytest.raises(Fenced):
        await p.run_batch([start_record(0, TRANSFORM)], T0)
    assert p.states == {} and p.positions[REQUESTS] == 0


async def test_a_poison_input_goes_to_the_dlq_in_the_same_transaction_and_the_batch_goes_on() -> None:
    producer = FakeProducer()
    p = partition(producer)
    report = await p.run_batch([record(REQUESTS, 0, b"not avro", key="bad"), start_record(1, TRANSFORM)], T0)
    records, offsets = producer.committed[0]
    dlq = [r for r in records if r.topic == topic_names.DLQ]
    assert len(dlq) == 1 and dlq[0].value == b"not avro"
    assert dict(dlq[0].headers)["dlq_offset"] == b"0"
    assert offsets == {REQUESTS: 2}
    assert p.states["e1"].status is ExecutionStatus.SUCCESS
    assert report.dead_lettered == [topic_names.requests(p.states["e1"].priority)]


async def test_a_start_with_a_workflow_the_api_would_refuse_is_dead_lettered_saying_what_is_wrong() -> None:
    """Written straight to a request topic, a start skips the API's checks; deciding it fails
    (a dangling dependency is a KeyError deep in the decider): the dead letter says what is
    wrong with the workflow's shape, after the exception, and the batch goes on. Only the shape
    is checked in the loop (no expression is compiled: a hostile one could take seconds), and
    at most five problems are listed."""
    producer = FakeProducer()
    p = partition(producer)
    nodes = [
        NodeDefinition(id="a", type="transform", depends_on=["missing"], config={"expression": "1 +"}),
        *(NodeDefinition(id=f"n{i}", type="teleport", config={}) for i in range(6)),
    ]
    broken = WorkflowDefinition(id="wf", created_at=from_millis(T0), nodes=tuple(nodes))
    request = StartExecution(execution_id="e9", workflow=broken, input={}, requested_at=from_millis(T0))
    await p.run_batch([record(REQUESTS, 0, CODEC.encode(request), key="e9"), start_record(1, TRANSFORM)], T0)
    (dlq,) = [r for records, _ in producer.committed for r in records if r.topic == topic_names.DLQ]
    assert dict(dlq.headers)["dlq_reason"].decode() == (
        "KeyError: 'missing'; invalid workflow: node 'a': depends_on: 'missing' is not a node of this"
        " workflow; node 'n0': type: unknown type 'teleport'; node 'n1': type: unknown type 'teleport';"
        " node 'n2': type: unknown type 'teleport'; node 'n3': type: unknown type 'teleport'; and 2 more"
    )
    assert "e9" not in p.states and p.states["e1"].status is ExecutionStatus.SUCCESS


async def test_a_result_for_an_execution_not_held_is_counted_and_dropped_never_a_new_run() -> None:
    producer = FakeProducer()
    p = partition(producer)
    late = NodeResult(
        execution_id="gone",
        node_id="h",
        attempt=1,
        ok=True,
        started_at=from_millis(T0),
        finished_at=from_millis(T0),
    )
    report = await p.run_batch([record(RESULTS, 0, CODEC.encode(late), key="gone")], T0)
    assert report.orphans == ["NodeResult"]
    records, offsets = producer.committed[0]
    assert records == [] and offsets == {RESULTS: 1}
    assert "gone" not in p.states


async def test_a_command_for_a_run_not_held_is_dead_lettered_with_why() -> None:
    """A producer's command that finds no run (sent before its start was decided, or for an id
    that never started) used to be only counted; it now lands on the DLQ saying so."""
    producer = FakeProducer()
    p = partition(producer)
    cancel = ExecutionCommand(execution_id="nobody", kind=CommandKind.CANCEL, reason="stop")
    report = await p.run_batch([record(COMMANDS, 0, CODEC.encode(cancel), key="nobody")], T0)
    assert report.orphans == ["ExecutionCommand"]
    assert report.dead_lettered == [topic_names.COMMANDS]
    (letter,) = producer.records(topic_names.DLQ)
    assert letter.key == b"nobody"
    reason = dict(letter.headers)["dlq_reason"].decode()
    assert reason.startswith("unknown_execution: no run 'nobody' to cancel")
    assert "nobody" not in p.states


def early_cancel(offset: int, execution_id: str, ms: int = T0) -> Any:
    cancel = ExecutionCommand(execution_id=execution_id, kind=CommandKind.CANCEL, reason="parent p ended")
    return record(COMMANDS, offset, CODEC.encode(cancel), key=execution_id, ms=ms)


def start_at_ms(offset: int, execution_id: str, ms: int) -> Any:
    request = StartExecution(
        execution_id=execution_id, workflow=workflow(WAIT), input={}, requested_at=from_millis(ms)
    )
    return record(REQUESTS, offset, CODEC.encode(request), key=execution_id, ms=ms)


async def test_a_cancel_read_before_its_runs_start_cancels_the_run_as_it_starts() -> None:
    """A parent's cancel of its child goes straight to the command topic; the child's start goes
    through the start intake first. The cancel came first, was dead-lettered, and the child ran
    on (ADR 0055)."""
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([early_cancel(0, "kid")], T0)
    (letter,) = producer.records(topic_names.DLQ)
    assert (
        "a run that starts there meanwhile is cancelled as it starts"
        in dict(letter.headers)["dlq_reason"].decode()
    )
    assert "kid" not in p.states
    await p.run_batch([start_at_ms(0, "kid", T0 + 2_000)], T0 + 2_000)
    assert p.states["kid"].status is ExecutionStatus.CANCELLED
    assert producer.committed_state("kid").history[-1].reason == "parent p ended"
    types = [CODEC.decode(r.value, ExecutionEvent).type for r in producer.records(topic_names.EVENTS)]
    assert types[0] is EventType.EXECUTION_CREATED and types[-1] is EventType.EXECUTION_CANCELLED
    assert not p.timers.due(T0 + 10**9), "no timer of the wait node left to fire"


async def test_an_early_cancel_is_kept_for_a_while_and_a_start_after_that_runs() -> None:
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([early_cancel(0, "late")], T0)
    later = T0 + int(EARLY_CANCEL_SECONDS * 1000) + 1
    await p.run_batch([start_at_ms(0, "late", later)], later)
    assert p.states["late"].status is ExecutionStatus.RUNNING


async def test_early_cancels_are_bounded_in_number_the_oldest_going_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(partition_module, "EARLY_CANCELS_MAX", 2)
    p = partition(FakeProducer())
    await p.run_batch([early_cancel(i, f"r{i}", T0 + i) for i in range(3)], T0 + 3)
    assert list(p.early_cancels) == ["r1", "r2"]
    later = T0 + int(EARLY_CANCEL_SECONDS * 1000) + 4
    await p.run_batch([early_cancel(3, "r9", later)], later)
    assert list(p.early_cancels) == ["r9"], "and none older than they are kept for"


async def test_an_early_cancels_time_is_when_this_partition_read_it_not_its_records() -> None:
    """A parent's cancel of its child carries the time of the parent's input, minutes old when
    the orchestrator catches up; it counts from when it was read."""
    p = partition(FakeProducer())
    read_at = T0 + 600_000
    await p.run_batch([early_cancel(0, "kid", ms=T0)], read_at)
    await p.run_batch([start_at_ms(0, "kid", read_at + 1_000)], read_at + 1_000)
    assert p.states["kid"].status is ExecutionStatus.CANCELLED


@pytest.mark.parametrize(
    ("nodes", "sends"),
    [
        (HTTP, topic_names.tasks("default")),
        (
            [{"id": "call", "type": "workflow", "config": {"workflow_id": "child"}}],
            topic_names.START,
        ),
    ],
)
async def test_a_run_cancelled_as_it_starts_sets_no_work_going(nodes: Any, sends: str) -> None:
    """Its first tasks (an http request, a child run) must never be sent: a worker that read the
    task before the control message to cancel it would have made the call."""
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([early_cancel(0, "kid")], T0)
    request = StartExecution(
        execution_id="kid", workflow=workflow(nodes), input={}, requested_at=from_millis(T0)
    )
    await p.run_batch([record(REQUESTS, 0, CODEC.encode(request), key="kid")], T0 + 1_000)
    assert p.states["kid"].status is ExecutionStatus.CANCELLED
    assert producer.records(sends) == [], "nothing dispatched"
    assert producer.records(topic_names.CONTROL) == []
    assert [r.key for r in producer.records(topic_names.COMMANDS)] == [], (
        "no cancel for a child never started"
    )
    # the same start without a kept cancel does dispatch (the check above can fail)
    request = StartExecution(
        execution_id="k2", workflow=workflow(nodes), input={}, requested_at=from_millis(T0)
    )
    await p.run_batch([record(REQUESTS, 1, CODEC.encode(request), key="k2")], T0 + 2_000)
    assert len(producer.records(sends)) == 1


async def test_kept_cancels_survive_a_broken_producers_fresh_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.asyncio.sleep", _no_sleep)
    producer = BrokenOnceProducer(fail=0)
    orch = orchestrator_with(producer)
    await orch.run_partition(0, [early_cancel(0, "kid")], T0)
    producer.fail = 1
    start = start_at_ms(0, "kid", T0 + 1_000)
    with pytest.raises(Abandon):
        await orch.run_partition(0, [start], T0 + 1_000)
    assert 0 not in orch.partitions
    orch._adopt(0, partition(producer))  # what the claim does, without Kafka
    orch.unclaimed.clear()
    await orch.run_partition(0, [start], T0 + 1_000)
    assert orch.partitions[0].states["kid"].status is ExecutionStatus.CANCELLED


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"kind": "set_timeout"}, "a set_timeout command needs timeout_seconds above 0"),
        ({"kind": "set_timeout", "timeout_seconds": -5.0}, "got -5.0"),
        ({"kind": "set_timeout", "timeout_seconds": 1e9}, "at most 2.592e+06"),
        ({"kind": "timer_fired"}, "a timer_fired command needs a timer_id"),
        ({"kind": "signal", "signal": {"name": "go"}}, "a signal command needs a signal with an id"),
    ],
)
async def test_a_command_missing_what_its_kind_needs_is_dead_lettered(
    fields: dict[str, Any], why: str
) -> None:
    """Such a command was decoded and then ignored by the decider; a producer never learnt why.
    Written as raw Avro (the model refuses to build one)."""
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([start_record(0, WAIT)], T0)
    value = CODEC.encode_dict(
        "io.linkflow.ExecutionCommand",
        {"execution_id": "e1", "reason": None, "timer_id": None, "timeout_seconds": None}
        | {"due_at": None, "suspend_deadline": False, "signal": None}
        | fields,
    )
    await p.run_batch([record(COMMANDS, 0, value, key="e1")], T0 + 10)
    (letter,) = producer.records(topic_names.DLQ)
    assert why in dict(letter.headers)["dlq_reason"].decode()
    assert p.states["e1"].status is ExecutionStatus.RUNNING


async def test_a_due_timer_is_decided_inside_a_transaction_with_its_due_time() -> None:
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([start_record(0, WAIT)], T0)
    assert p.next_wakeup_ms() == T0 + 2000
    assert (await p.run_batch([], T0 + 1999)).records == 0  # not due yet: nothing to commit
    await p.run_batch([], T0 + 2000)
    assert p.states["e1"].status is ExecutionStatus.SUCCESS
    assert producer.committed[-1][1] == {}  # a timer firing commits no input offset


async def test_a_firing_for_a_moved_deadline_is_ignored() -> None:
    producer = FakeProducer()
    p = partition(producer)
    nodes = [{"id": "w", "type": "wait", "config": {"seconds": 60}}]
    request = StartExecution(
        execution_id="e1",
        workflow=workflow(nodes).model_copy(update={"timeout_seconds": 5.0}),
        input={},
        requested_at=from_millis(T0),
    )
    await p.run_batch([record(REQUESTS, 0, CODEC.encode(request))], T0)
    extend = ExecutionCommand(execution_id="e1", kind="set_timeout", timeout_seconds=30)
    await p.run_batch([record(COMMANDS, 0, CODEC.encode(extend), ms=T0 + 1000)], T0 + 1000)
    stale = ExecutionCommand(
        execution_id="e1", kind="timer_fired", timer_id="execution_timeout", due_at=from_millis(T0 + 5000)
    )
    await p.run_batch([record(COMMANDS, 1, CODEC.encode(stale), ms=T0 + 5000)], T0 + 5000)
    assert p.states["e1"].status is ExecutionStatus.RUNNING
    await p.run_batch([], T0 + 30_000)
    assert p.states["e1"].status is ExecutionStatus.FAILED


async def test_a_finished_run_is_tombstoned_after_its_time_to_live_and_forgotten() -> None:
    producer = FakeProducer()
    p = partition(producer, ttl=10)
    await p.run_batch([start_record(0, TRANSFORM)], T0)
    assert p.next_wakeup_ms() == T0 + 10_000
    await p.run_batch([], T0 + 10_000)
    tombstones = [r for r in producer.committed[-1][0] if r.topic == topic_names.STATE]
    assert [(t.key, t.value) for t in tombstones] == [(b"e1", None)]
    assert p.states == {} and p.next_wakeup_ms() is None


async def test_a_finished_run_is_held_slim_and_a_repeated_start_or_late_result_changes_nothing() -> None:
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([start_record(0, TRANSFORM)], T0)
    held = p.states["e1"]
    assert held.status is ExecutionStatus.SUCCESS and held.finished_at is not None
    assert (held.nodes, held.history, held.input, held.workflow.nodes) == ({}, (), None, ())
    snapshot = next(r for r in producer.committed[0][0] if r.topic == topic_names.STATE)
    assert CODEC.decode(snapshot.value, ExecutionState) == held, "the changelog keeps the marker (ADR 0071)"
    assert producer.committed_state("e1").nodes["a"].output == 2, "the events keep it all"
    late = NodeResult(
        execution_id="e1",
        node_id="a",
        attempt=1,
        ok=True,
        started_at=from_millis(T0),
        finished_at=from_millis(T0),
    )
    await p.run_batch([start_record(1, TRANSFORM), record(RESULTS, 0, CODEC.encode(late))], T0 + 1)
    records, offsets = producer.committed[-1]
    assert records == [] and offsets == {REQUESTS: 2, RESULTS: 1}, "no second run, no event"


async def test_records_below_the_position_are_stale_and_a_jump_is_a_gap_unless_explained() -> None:
    producer = FakeProducer()
    explained: list[tuple[int, int]] = []

    async def probe(tp: TopicPartition, expected: int, got: int) -> bool:
        explained.append((expected, got))
        return got == 3  # a commit marker sat at offset 2

    p = partition(producer, probe=probe)
    p.positions[REQUESTS] = 1
    report = await p.run_batch(
        [
            start_record(0, TRANSFORM, "e0"),
            start_record(1, TRANSFORM, "e1"),
            start_record(3, TRANSFORM, "e3"),
        ],
        T0,
    )
    assert report.stale == 1 and "e0" not in p.states
    assert explained == [(2, 3)]
    assert p.positions[REQUESTS] == 4 and {"e1", "e3"} <= set(p.states)
    with pytest.raises(InputGap):  # offsets 4 and 5 hold committed records: never decided past
        await p.run_batch([start_record(6, TRANSFORM, "e6")], T0)
    assert explained[-1] == (4, 6)
    assert p.positions[REQUESTS] == 4 and "e6" not in p.states and len(producer.committed) == 1


async def test_a_task_for_a_pool_without_a_topic_fails_its_node_with_resource_limit() -> None:
    producer = FakeProducer()

    async def default_only(pool: str) -> bool:
        return pool == "default"

    p = partition(producer, stepper=stepper(pool_exists=default_only))
    nodes = [{**HTTP[0], "pool": "nope"}]
    await p.run_batch([start_record(0, nodes)], T0)
    state = producer.committed_state("e1")
    assert state.status is ExecutionStatus.FAILED
    error = state.nodes["h"].error
    assert error is not None and error.error_class == "resource_limit" and "nope" in error.message
    assert producer.records(topic_names.tasks("nope")) == []


async def test_a_result_too_large_to_record_fails_its_node_instead_of_wedging_the_loop() -> None:
    producer = FakeProducer()
    limit = 64 * 1024
    p = partition(producer, limit=lambda _topic: limit)
    await p.run_batch([start_record(0, HTTP)], T0)
    task = CODEC.decode(producer.records(topic_names.tasks("default"))[0].value, NodeTask)
    huge = NodeResult(
        execution_id="e1",
        node_id="h",
        attempt=task.attempt,
        ok=True,
        output="x" * limit,
        started_at=from_millis(T0),
        finished_at=from_millis(T0 + 5),
    )
    await p.run_batch([record(RESULTS, 0, CODEC.encode(huge), ms=T0 + 5)], T0 + 5)
    state = producer.committed_state("e1")
    assert state.status is ExecutionStatus.FAILED
    error = state.nodes["h"].error
    assert error is not None and error.error_class == "resource_limit"
    assert p.positions[RESULTS] == 1


@pytest.mark.parametrize("order", [["h3", "h1", "h2"], ["h1", "h2", "h3"]])
async def test_a_run_whose_whole_state_is_too_large_fails_whatever_result_ends_it(order: list[str]) -> None:
    """A finished run's snapshot is its marker (ADR 0071), yet whether the run may end is still
    decided on its whole state: two 40 kB outputs under a 64 kB limit fail the run whether the
    second of them is its last result or not (the marker alone would have let the first order
    succeed)."""
    producer = FakeProducer()
    limit = 64 * 1024
    p = partition(producer, limit=lambda _topic: limit)
    nodes = [{**HTTP[0], "id": f"h{i}"} for i in (1, 2, 3)]
    await p.run_batch([start_record(0, nodes)], T0)
    tasks = [CODEC.decode(r.value, NodeTask) for r in producer.records(topic_names.tasks("default"))]
    attempts = {t.node_id: t.attempt for t in tasks}
    outputs = {"h1": "a" * 40_000, "h2": "b" * 40_000, "h3": "c"}
    for i, node in enumerate(order):
        result = NodeResult(
            execution_id="e1",
            node_id=node,
            attempt=attempts[node],
            ok=True,
            output=outputs[node],
            started_at=from_millis(T0),
            finished_at=from_millis(T0 + 5 + i),
        )
        await p.run_batch([record(RESULTS, i, CODEC.encode(result), ms=T0 + 5 + i)], T0 + 5 + i)
    state = producer.committed_state("e1")
    assert state.status is ExecutionStatus.FAILED
    errors = [n.error.error_class for n in state.nodes.values() if n.error is not None]
    assert errors == ["resource_limit"], errors


async def test_a_finished_run_under_the_limit_writes_its_marker_without_encoding_its_whole_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small run's end is not encoded whole just to be checked: only its marker is."""
    producer = FakeProducer()
    p = partition(producer)
    encoded: list[ExecutionState] = []
    encode = CODEC.encode

    def counting(record: Any, topic: str | None = None) -> bytes:
        if isinstance(record, ExecutionState):
            encoded.append(record)
        return encode(record, topic)

    monkeypatch.setattr(CODEC, "encode", counting)
    await p.run_batch([start_record(0, TRANSFORM)], T0)
    assert [(s.id, s.status, s.nodes) for s in encoded] == [("e1", ExecutionStatus.SUCCESS, {})]


def orchestrator_with(producer: FakeProducer) -> Orchestrator:
    settings = Settings()
    metrics = Metrics(active=lambda: 0)
    orch = Orchestrator(settings, CODEC, stepper(), metrics, producer_factory=lambda _n: producer)
    orch.partitions[0] = partition(producer)
    return orch


async def test_the_loop_retries_an_aborted_batch_and_counts_the_failures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.asyncio.sleep", _no_sleep)
    producer = FakeProducer(fail=2)
    orch = orchestrator_with(producer)
    await orch.run_partition(0, [start_record(0, TRANSFORM)], T0)
    assert producer.attempts == 3
    assert orch.partitions[0].states["e1"].status is ExecutionStatus.SUCCESS
    assert orch.metrics.registry.get_sample_value("linkflow_orchestrator_commit_failures_total") == 2
    assert orch.ready() or not orch.started.is_set()
    assert orch._failing == {} and orch._strikes == {}


async def test_a_batch_that_keeps_failing_is_split_and_an_input_that_fails_alone_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.asyncio.sleep", _no_sleep)
    producer = FakeProducer(fail=BATCH_RETRIES + RECORD_RETRIES, failure=refused)
    orch = orchestrator_with(producer)
    await orch.run_partition(0, [start_record(0, TRANSFORM, "e1"), start_record(1, TRANSFORM, "e2")], T0)
    # the whole batch failed BATCH_RETRIES times, then e1 alone RECORD_RETRIES times: e1 is
    # dead-lettered with its offset, and e2 commits on its own
    dlq = producer.records(topic_names.DLQ)
    assert [r.key for r in dlq] == [b"e1"]
    assert "e2" in orch.partitions[0].states and "e1" not in orch.partitions[0].states
    assert orch.partitions[0].positions[REQUESTS] == 2
    assert [offsets for _, offsets in producer.committed] == [{REQUESTS: 1}, {REQUESTS: 2}]


async def _no_sleep(_seconds: float) -> None:
    return None


async def test_readiness_turns_503_while_the_orchestrator_cannot_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.asyncio.sleep", _no_sleep)
    clock = [1000.0]
    producer = FakeProducer(fail=BATCH_RETRIES)
    orch = orchestrator_with(producer)
    orch.clock = lambda: clock[0]
    orch.started.set()
    assert orch.ready()
    with pytest.raises(Abandon):  # the broker's fault: read again later, never dead-lettered
        await orch._commit_with_retries(0, [start_record(0, TRANSFORM)], T0, BATCH_RETRIES)
    assert orch._failing == {0: 1000.0} and orch._strikes == {}
    assert orch.ready(), "a short failure is no reason to take the instance out"
    clock[0] += UNHEALTHY_AFTER_SECONDS
    assert not orch.ready()
    assert await orch._commit_with_retries(0, [start_record(0, TRANSFORM)], T0, 1)
    assert orch.ready()


class FakeConsumer:
    """The consumer calls a claim makes: pause, seek, resume; everything assigned."""

    def __init__(self, tps: list[TopicPartition]) -> None:
        self.tps = set(tps)
        self.paused: set[TopicPartition] = set()
        self.seeks: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return set(self.tps)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= set(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset


class FlakyStartProducer(FakeProducer):
    async def start(self) -> None:
        if self.fail:
            self.fail -= 1
            raise CommitFailed("broker away")


async def test_a_partition_that_cannot_be_claimed_waits_paused_and_is_claimed_on_a_later_try(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_states(*_args: Any, **_kwargs: Any) -> Restored:
        return Restored()

    async def positions(_consumer: Any, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 7)

    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.read_states", no_states)
    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.committed_positions", positions)
    clock = [1000.0]
    producer = FlakyStartProducer(fail=1)
    orch = Orchestrator(
        Settings(),
        CODEC,
        stepper(),
        Metrics(active=lambda: 0),
        producer_factory=lambda _n: producer,
        clock=lambda: clock[0],
    )
    consumer = FakeConsumer(orch._input_partitions(0))
    orch._consumer = consumer  # type: ignore[assignment]
    await orch.on_partitions_assigned(consumer.tps)
    assert 0 not in orch.partitions and orch.unclaimed == {0}
    assert consumer.paused == consumer.tps, "its inputs wait while it is not claimed"
    assert not orch.ready()
    await orch._retry_claims()
    assert 0 not in orch.partitions, "not before the retry delay"
    clock[0] += 2.0
    await orch._retry_claims()
    assert 0 in orch.partitions and not orch.unclaimed and orch.ready()
    assert consumer.paused == set() and set(consumer.seeks.values()) == {7}


async def test_a_single_input_that_keeps_failing_is_dead_lettered_not_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.asyncio.sleep", _no_sleep)
    producer = FakeProducer(fail=BATCH_RETRIES + RECORD_RETRIES, failure=refused)
    orch = orchestrator_with(producer)
    await orch.run_partition(0, [start_record(0, TRANSFORM, "e1")], T0)
    assert [r.key for r in producer.records(topic_names.DLQ)] == [b"e1"]
    assert orch.partitions[0].positions[REQUESTS] == 1
    await orch.run_partition(0, [start_record(1, TRANSFORM, "e2")], T0)
    assert "e2" in orch.partitions[0].states
    assert [offsets for _, offsets in producer.committed] == [{REQUESTS: 1}, {REQUESTS: 2}]


async def test_a_batch_abandoned_while_revoking_is_not_followed_by_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.asyncio.sleep", _no_sleep)
    producer = FakeProducer(fail=1)
    orch = orchestrator_with(producer)
    orch._revoking = True
    with pytest.raises(Abandon):
        await orch.run_partition(0, [start_record(0, TRANSFORM, "e1")], T0)
    assert producer.committed == [] and orch.partitions[0].positions[REQUESTS] == 0


class BrokenOnceProducer(FakeProducer):
    """A producer whose first commit leaves it unusable (a refused record's sequence gap)."""

    async def commit(
        self, records: Sequence[ProducerRecord], offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        if self.fail:
            self.fail -= 1
            self.attempts += 1
            raise ProducerBroken("sequence gap", input_fault=True)
        await super().commit(records, offsets, group_id)


async def test_a_broken_producer_is_replaced_by_claiming_the_partition_again_and_strikes_survive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.asyncio.sleep", _no_sleep)
    producer = BrokenOnceProducer(fail=MAX_STRIKES)
    orch = orchestrator_with(producer)
    batch = [start_record(0, TRANSFORM, "e1")]
    for _ in range(MAX_STRIKES):
        with pytest.raises(Abandon):
            await orch.run_partition(0, batch, T0)
        assert 0 not in orch.partitions and orch.unclaimed == {0}, "released, to be claimed afresh"
        orch.partitions[0] = partition(producer)  # what the claim does, without Kafka
        orch.unclaimed.clear()
    # every try broke the producer: the input has its strikes and goes to the DLQ alone
    await orch.run_partition(0, batch, T0)
    assert [r.key for r in producer.records(topic_names.DLQ)] == [b"e1"]
    assert orch._strikes == {}


async def test_expiries_of_a_batch_that_did_not_commit_are_due_again() -> None:
    producer = FakeProducer()
    p = partition(producer, ttl=10)
    await p.run_batch([start_record(0, TRANSFORM)], T0)
    producer.fail = 1
    with pytest.raises(CommitFailed):
        await p.run_batch([], T0 + 10_000)
    assert p.next_wakeup_ms() == T0 + 10_000 and "e1" in p.states
    await p.run_batch([], T0 + 10_000)
    assert p.states == {}


async def test_the_brokers_failures_never_dead_letter_an_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.asyncio.sleep", _no_sleep)
    producer = FakeProducer(fail=10 * MAX_STRIKES)  # a long outage: CommitFailed all along
    orch = orchestrator_with(producer)
    batch = [start_record(0, TRANSFORM, "e1")]
    while producer.fail:
        with pytest.raises(Abandon):
            await orch.run_partition(0, batch, T0)
    await orch.run_partition(0, batch, T0)
    assert producer.records(topic_names.DLQ) == [] and "e1" in orch.partitions[0].states


# -------------------------------------------------------------------------------------- traces
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OTHER = "00-11111111111111111111111111111111-2222222222222222-01"


async def test_a_start_request_without_a_traceparent_of_its_own_takes_its_records_header() -> None:
    producer = FakeProducer()
    p = partition(producer)
    header = ((TRACEPARENT, CALLER.encode()),)
    await p.run_batch(
        [
            start_record(0, HTTP, "from-header", headers=header),
            start_record(1, HTTP, "own-field", traceparent=OTHER, headers=header),
            start_record(2, HTTP, "bad-header", headers=((TRACEPARENT, b"00-nonsense"),)),
        ],
        T0,
    )
    assert producer.committed_state("from-header").traceparent == CALLER
    assert producer.committed_state("own-field").traceparent == OTHER
    assert producer.committed_state("bad-header").traceparent is None
    created = [e for e in producer.events() if e.type is EventType.EXECUTION_CREATED]
    assert {e.execution_id: e.traceparent for e in created} == {
        "from-header": CALLER,
        "own-field": OTHER,
        "bad-header": None,
    }


async def test_tasks_carry_their_attempts_traceparent_only_while_tracing_is_on() -> None:
    off = FakeProducer()
    await partition(off).run_batch([start_record(0, HTTP, traceparent=CALLER)], T0)
    (task,) = off.records(topic_names.tasks("default"))
    assert TRACEPARENT not in dict(task.headers)

    tracing = Tracing([SimpleSpanProcessor(InMemorySpanExporter())])
    on = FakeProducer()
    traced = stepper(task_traceparent=tracing.task_traceparent)
    await partition(on, stepper=traced).run_batch([start_record(0, HTTP, traceparent=CALLER)], T0)
    (task,) = on.records(topic_names.tasks("default"))
    expected = RunTrace.of("e1", CALLER)
    assert dict(task.headers)[TRACEPARENT].decode() == (
        f"00-{expected.trace_id}-{expected.attempt_span_id('h', 1)}-01"
    )


async def test_spans_are_exported_once_after_the_commit_not_for_aborted_tries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("linkflow_stream.runtime.orchestrator.asyncio.sleep", _no_sleep)
    exporter = InMemorySpanExporter()
    tracing = Tracing([SimpleSpanProcessor(exporter)])
    producer = FakeProducer(fail=2)
    orch = Orchestrator(
        Settings(),
        CODEC,
        stepper(),
        Metrics(active=lambda: 0),
        producer_factory=lambda _n: producer,
        spans=ExecutionSpans(tracing),
    )
    orch.partitions[0] = partition(producer)
    await orch.run_partition(0, [start_record(0, TRANSFORM, traceparent=CALLER)], T0)
    assert producer.attempts == 3
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["execution wf", "node a"]
    assert {s.context.trace_id for s in spans if s.context} == {int(CALLER.split("-")[1], 16)}

"""One owned partition of the orchestrator: its executions' states, timers and finished-run
expiry, and the batch step that turns inputs into one Kafka transaction.

Invariant: ``states`` equals the fold of the committed changelog partition, and the input
offsets committed for this partition are exactly those whose effects that changelog holds. A
batch is decided against ``states`` without touching it; only a committed transaction applies
the batch's new states. A transaction that aborted leaves ``states`` as it was, so deciding the
same batch again yields the same events, and one that was fenced means another instance owns
this partition now: the caller drops this object.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis, to_millis
from linkflow_stream.core.decider import Input
from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.messages import (
    CommandKind,
    ExecutionCommand,
    NodeError,
    NodeResult,
    StartExecution,
)
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.core.trace_context import TRACEPARENT, TraceParent
from linkflow_stream.kafka.codec import Codec, DecodeError
from linkflow_stream.kafka.dlq import dead_letter_record
from linkflow_stream.kafka.records import ProducerRecord, encode, limit_of
from linkflow_stream.kafka.transactions import ProducerBroken, TransactionalProducer
from linkflow_stream.runtime.step import Step, Stepper
from linkflow_stream.runtime.timers import TimerQueue

log = logging.getLogger(__name__)


class InputGap(Exception):
    """Offsets jumped over a committed record: deciding past it would lose it. The batch is
    dropped and the partition read again from its committed position."""

    def __init__(self, topic: str, partition: int, expected: int, got: int) -> None:
        super().__init__(f"input gap on {topic}[{partition}]: expected offset {expected}, got {got}")
        self.topic = topic
        self.partition = partition


Cut = Callable[[ConsumerRecord[bytes, bytes]], bool]
"""``cut(record)``: True to end a batch before ``record`` (a higher-priority input is waiting,
ADR 0029); it and the records after it stay undecided, their offsets uncommitted."""

GapProbe = Callable[[TopicPartition, int, int], Awaitable[bool]]
"""``probe(tp, expected, got)``: True when no committed record lies between the two offsets
(only control records or aborted ones), so the jump is no gap."""


@dataclass(frozen=True, slots=True)
class DecidedStep:
    """One input's step as committed: the state before it, the input, the state after it and the
    events between, for metrics and traces."""

    before: ExecutionState | None
    input: Input
    after: ExecutionState
    events: list[ExecutionEvent]


@dataclass
class BatchReport:
    """What a committed batch did, for metrics and logs."""

    inputs: int = 0
    observed: list[DecidedStep] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    """Kinds of inputs for executions this partition does not hold (finished long ago, unknown)."""
    stale: int = 0
    """Records below the committed position (a fetch from before a seek); not inputs."""
    records: int = 0
    tombstones: int = 0
    input_lags: list[float] = field(default_factory=list)
    commit_seconds: float = 0.0
    """The transaction alone: begin, produce, offsets, commit."""
    left: int = 0
    """Records at the end of the batch left undecided by a ``Cut``."""


@dataclass
class _Staged:
    """A batch being decided: the new states and everything to write, not yet committed."""

    states: dict[str, ExecutionState | None] = field(default_factory=dict)
    changelog: dict[str, ProducerRecord] = field(default_factory=dict)
    """The encoded new state of each changed execution (encoded once, when checked)."""
    records: list[ProducerRecord] = field(default_factory=list)
    expiring: list[tuple[int, str]] = field(default_factory=list)
    """Expiry entries taken for this batch; put back if it does not commit."""
    report: BatchReport = field(default_factory=BatchReport)


def finished_marker(state: ExecutionState) -> ExecutionState:
    """What a partition keeps of a finished run until its time to live ends: its id, status and
    times, without the workflow's nodes, the node states, the input or the history. That is all a
    late input needs (the decider ignores anything for a finished run, and a repeated start
    request finds the run already there); the full state stays on the changelog until the
    tombstone. A finished diamond's state is about 15 KB in memory; at 250 runs/s and a 300 s time
    to live, full states would hold over a gigabyte."""
    return state.model_copy(
        update={
            "workflow": state.workflow.model_copy(update={"nodes": (), "retry": None}),
            "nodes": {},
            "history": (),
            "input": None,
            "timers": {},
        }
    )


class Partition:
    """Partition number ``number`` of every co-partitioned topic, owned by this instance."""

    def __init__(
        self,
        number: int,
        producer: TransactionalProducer,
        stepper: Stepper,
        codec: Codec,
        *,
        topic: Callable[[str], str],
        group_id: str,
        finished_ttl_seconds: float,
        probe: GapProbe | None = None,
        limit: Callable[[str], int] = limit_of,
    ) -> None:
        self.number = number
        self.producer = producer
        self.stepper = stepper
        self.codec = codec
        self.topic = topic
        self.group_id = group_id
        self.finished_ttl = timedelta(seconds=finished_ttl_seconds)
        self.probe = probe
        self.limit = limit
        """The largest record a logical topic takes."""
        self.states: dict[str, ExecutionState] = {}
        self.timers = TimerQueue()
        self._expiry: list[tuple[int, str]] = []
        self.positions: dict[TopicPartition, int] = {}
        """The next input offset to decide, per input topic-partition (the committed position)."""
        self._inputs = {
            topic(t): t for t in (*topic_names.REQUESTS, topic_names.COMMANDS, topic_names.RESULTS)
        }

    # -- state ------------------------------------------------------------------------------------
    def load(self, states: Sequence[ExecutionState], positions: dict[TopicPartition, int]) -> None:
        """Take the restored states and committed positions as this partition's truth."""
        for state in states:
            self._hold(state)
        self.positions = dict(positions)

    def _hold(self, state: ExecutionState) -> None:
        if state.status.terminal:
            ended = state.finished_at or state.created_at
            heapq.heappush(self._expiry, (to_millis(ended + self.finished_ttl), state.id))
            state = finished_marker(state)
        self.states[state.id] = state
        self.timers.track(state)

    def _drop(self, execution_id: str) -> None:
        self.states.pop(execution_id, None)
        self.timers.forget(execution_id)

    def next_wakeup_ms(self) -> int | None:
        """The earliest time this partition has work without input: a timer or an expiry."""
        times = [t for t in (self.timers.next_due_ms(), self._expiry[0][0] if self._expiry else None) if t]
        return min(times) if times else None

    # -- a batch ----------------------------------------------------------------------------------
    async def run_batch(
        self, records: Sequence[ConsumerRecord[bytes, bytes]], now_ms: int, cut: Cut | None = None
    ) -> BatchReport:
        """Decide ``records`` (in offset order per topic-partition) plus the timers and expiries
        due at ``now_ms``, and commit it all in one transaction. Raises ``InputGap`` or what the
        producer raises (``Fenced``, ``ProducerBroken``, ``CommitFailed``); then nothing was
        applied. With ``cut``, the loop yields between records and ends the batch early where
        ``cut`` says so; what was decided commits as usual (``report.left``: the rest)."""
        staged = _Staged()
        offsets: dict[TopicPartition, int] = {}
        for index, record in enumerate(records):
            if cut is not None and index:
                await asyncio.sleep(0)  # let the fetch loop hand over what arrived meanwhile
                if cut(record):
                    staged.report.left = len(records) - index
                    break
            tp = TopicPartition(record.topic, record.partition)
            expected = offsets.get(tp, self.positions.get(tp, record.offset))
            if record.offset < expected:
                staged.report.stale += 1
                continue
            if record.offset > expected and not await self._explained(tp, expected, record.offset):
                raise InputGap(self._inputs.get(tp.topic, tp.topic), tp.partition, expected, record.offset)
            offsets[tp] = record.offset + 1
            await self._decide_record(staged, record)
        for timer in self.timers.due(now_ms):
            command = ExecutionCommand(
                execution_id=timer.execution_id,
                kind=CommandKind.TIMER_FIRED,
                timer_id=timer.timer_id,
                due_at=timer.due_at,
            )
            await self._decide(staged, command, from_millis(now_ms), origin=None)
        expired = self._expired(now_ms, staged)
        staged.records.extend(staged.changelog.values())
        for execution_id in expired:
            staged.records.append(self._changelog(execution_id, None))
        staged.report.tombstones = len(expired)
        staged.report.records = len(staged.records)
        if not staged.records and not offsets:
            return staged.report
        started = time.perf_counter()
        try:
            await self.producer.commit(staged.records, offsets, self.group_id)
        except BaseException:
            for entry in staged.expiring:  # not tombstoned after all: due again next time
                heapq.heappush(self._expiry, entry)
            raise
        staged.report.commit_seconds = time.perf_counter() - started
        try:
            self.positions.update(offsets)
            for execution_id, new in staged.states.items():
                if new is None:
                    self._drop(execution_id)
                else:
                    self._hold(new)
            for execution_id in expired:
                self._drop(execution_id)
        except Exception as exc:
            # Memory no longer matches what committed: only a fresh claim can set it right.
            raise ProducerBroken(
                f"partition {self.number}: applying a committed batch failed: {exc!r}"
            ) from exc
        return staged.report

    async def _explained(self, tp: TopicPartition, expected: int, got: int) -> bool:
        """A jump in offsets is no gap when only control records or aborted records lie between."""
        return self.probe is not None and await self.probe(tp, expected, got)

    def _expired(self, now_ms: int, staged: _Staged) -> list[str]:
        """Finished runs past their time to live, to tombstone in this batch."""
        out = []
        while self._expiry and self._expiry[0][0] <= now_ms:
            entry = heapq.heappop(self._expiry)
            staged.expiring.append(entry)
            state = self.states.get(entry[1])
            if state is not None and state.status.terminal and entry[1] not in staged.states:
                out.append(entry[1])
        return out

    async def _decide_record(self, staged: _Staged, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            inp = self._decode(record)
        except DecodeError as exc:
            self._dead_letter(staged, record, str(exc))
            return
        staged.report.input_lags.append(max(0.0, time.time() - record.timestamp / 1000))
        await self._decide(staged, inp, from_millis(record.timestamp), origin=record)

    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> Input:
        """The input in a record, which must be keyed by its execution id (its partition's owner).
        A start request without a ``traceparent`` of its own takes its record's header (a
        producer writing to the request topic directly), so the run continues that trace."""
        logical = self._inputs.get(record.topic)
        model: type[Input]
        if logical in topic_names.REQUESTS:
            model = StartExecution
        elif logical == topic_names.COMMANDS:
            model = ExecutionCommand
        else:
            model = NodeResult
        inp = self.codec.decode(record.value, model)
        if record.key != inp.execution_id.encode():
            raise DecodeError(f"record key {record.key!r} is not its execution id {inp.execution_id!r}")
        if isinstance(inp, StartExecution) and inp.traceparent is None:
            header = next((v for k, v in record.headers if k == TRACEPARENT), None)
            parent = TraceParent.parse(header)
            if parent is not None:
                inp = inp.model_copy(update={"traceparent": parent.header})
        return inp

    async def _decide(
        self, staged: _Staged, inp: Input, now: datetime, origin: ConsumerRecord[bytes, bytes] | None
    ) -> None:
        execution_id = inp.execution_id
        state = (
            staged.states[execution_id] if execution_id in staged.states else self.states.get(execution_id)
        )
        if state is None and not isinstance(inp, StartExecution):
            staged.report.orphans.append(type(inp).__name__)
            return
        try:
            step = await self.stepper.step(state, inp, now)
            encoded = self._encode_all(step)
            if isinstance(encoded, str) and isinstance(inp, NodeResult) and inp.ok:
                # A result whose events or state the broker cannot carry fails its node instead.
                failed = inp.model_copy(
                    update={
                        "ok": False,
                        "output": None,
                        "error": NodeError(error_class="resource_limit", message=encoded),
                    }
                )
                step = await self.stepper.step(state, failed, now)
                encoded = self._encode_all(step)
        except (KafkaError, OSError):
            raise  # the broker or the network, not the input: the batch is tried again
        except Exception as exc:
            log.exception("input for %s could not be decided", execution_id)
            reason = f"{type(exc).__name__}: {exc}"
            encoded = reason
        if isinstance(encoded, str):
            if origin is not None:
                self._dead_letter(staged, origin, encoded)
            else:
                log.error("timer firing for %s dropped: %s", execution_id, encoded)
            return
        staged.report.inputs += 1
        if not step.changed or step.state is None:
            return
        staged.states[execution_id] = step.state
        staged.changelog[execution_id] = encoded.pop()
        staged.records.extend(encoded)
        staged.report.observed.append(DecidedStep(state, inp, step.state, step.events))

    def _encode_all(self, step: Step) -> list[ProducerRecord] | str:
        """The step's records with the new state's changelog record last, or why the broker
        would refuse one of them."""
        out = []
        for outgoing in step.outputs:
            record = self._encode(outgoing)
            if record.size > self.limit(outgoing.topic):
                return (
                    f"a {outgoing.topic} record of {record.size} bytes is over the topic's "
                    f"{self.limit(outgoing.topic)}-byte limit"
                )
            out.append(record)
        if step.state is not None:
            state = self._changelog(step.state.id, step.state)
            if state.size > self.limit(topic_names.STATE):
                return (
                    f"the execution's state would be {state.size} bytes, over the "
                    f"{self.limit(topic_names.STATE)}-byte record limit; "
                    "reduce node outputs with output mappings"
                )
            out.append(state)
        return out

    def _encode(self, outgoing: Outgoing) -> ProducerRecord:
        return encode(self.codec, outgoing, self.topic(outgoing.topic))

    def _changelog(self, execution_id: str, state: ExecutionState | None) -> ProducerRecord:
        """The state's changelog record; ``None`` is a tombstone that compaction removes."""
        topic = self.topic(topic_names.STATE)
        return ProducerRecord(
            topic=topic,
            key=execution_id.encode(),
            value=self.codec.encode(state, topic) if state is not None else None,
            headers=[],
            partition=self.number,
        )

    def _dead_letter(self, staged: _Staged, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        staged.records.append(dead_letter_record(record, reason, self.topic(topic_names.DLQ)))
        staged.report.dead_lettered.append(self._inputs.get(record.topic, record.topic))

"""One owned partition of the orchestrator: its executions' states, timers and finished-run
expiry, and the batch step that turns inputs into one Kafka transaction.

Invariant: ``states`` equals the fold of the committed changelog partition with each run's
committed events after its snapshot (ADR 0039), and the input positions committed on that
changelog (ADR 0061) are exactly those whose effects that changelog and those events hold. A
batch is decided against ``states`` without touching it; only a committed transaction applies
the batch's new states. A transaction that aborted leaves ``states`` as it was, so deciding the
same batch again yields the same events, and one that was fenced means another instance owns
this partition now: the caller drops this object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis, to_millis
from linkflow_stream.core.decider import Input
from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.identity_memo import IdentityMemo
from linkflow_stream.core.messages import (
    CommandKind,
    ControlMessage,
    ExecutionCommand,
    NodeError,
    NodeResult,
    NodeTask,
    StartExecution,
)
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.start_request import StartRequest
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.core.trace_context import TRACEPARENT, TraceParent
from linkflow_stream.core.validation import structure_problems
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.kafka.codec import Codec, DecodeError
from linkflow_stream.kafka.dlq import dead_letter_record
from linkflow_stream.kafka.records import ProducerRecord, encode, limit_of
from linkflow_stream.kafka.transactions import ProducerBroken, TransactionalProducer
from linkflow_stream.runtime.positions import POSITIONS_KEY, positions_record
from linkflow_stream.runtime.restore import SNAPSHOT_OFFSET
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


SNAPSHOT_EVENTS_MIN = 64
SNAPSHOT_EVENTS_PER_NODE = 4
"""A live run's snapshot is written again once ``max(SNAPSHOT_EVENTS_MIN, SNAPSHOT_EVENTS_PER_NODE
x nodes)`` events followed it: a snapshot costs O(nodes) to encode and write, so paying it once
per O(nodes) events keeps a node's cost the same in a 200-node run as in a 5-node one, and a
restore folds at most that many events per run (ADR 0039)."""
RESNAPSHOT_LAG = 20_000
"""A live run whose snapshot points this many events behind the events partition's end is
snapshotted again (in the next batch, without an input of its own): restoring a partition never
reads much more of its events partition than this, however long a run has been waiting."""
EARLY_CANCEL_SECONDS = 300.0
"""How long a cancel that found no run is kept, in case the run's start request comes after it
(``Partition.early_cancels``)."""
EARLY_CANCELS_MAX = 10_000
"""At most this many such cancels are kept per partition; the oldest go first."""
EARLY_REASON_CHARS = 500
"""What is kept of such a cancel's reason (a producer's reason may be long)."""
DISPATCHES = (NodeTask, StartRequest, ExecutionCommand, ControlMessage)
"""Records that set work going elsewhere (a task, a child run, a child's cancel, a task's cancel):
not sent for a run cancelled as it starts, whose work must never begin."""
REASON_PROBLEMS = 5
"""Workflow problems a dead letter's reason lists at most."""
STATE_CHECK_FRACTION = 0.5
"""A run whose snapshot plus the events since (each event adds to the state no more than its own
size) may be over this share of the state topic's record limit is encoded at every step, so a
step that would make its state too big for the changelog is refused as before."""


@dataclass(frozen=True, slots=True)
class Tail:
    """What a live run's state is on the changelog: its latest snapshot and the events since."""

    events_from: int
    """The snapshot's ``SNAPSHOT_OFFSET``: no event of the run after it lies below this offset."""
    snapshot_bytes: int
    events_since: int = 0
    bytes_since: int = 0

    @property
    def estimate(self) -> int:
        """An upper estimate of the encoded state's size."""
        return self.snapshot_bytes + self.bytes_since

    def after(self, events: int, size: int) -> Tail:
        return dataclasses.replace(
            self, events_since=self.events_since + events, bytes_since=self.bytes_since + size
        )


def snapshot_every(state: ExecutionState) -> int:
    """Events after which a live run's snapshot is written again."""
    return max(SNAPSHOT_EVENTS_MIN, SNAPSHOT_EVENTS_PER_NODE * len(state.nodes))


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
    """The latest snapshot of each execution that has one in this batch (the new state of a run
    that starts or ends, or whose snapshot is due)."""
    tails: dict[str, Tail] = field(default_factory=dict)
    """Each changed live run's changelog tail after this batch."""
    records: list[ProducerRecord] = field(default_factory=list)
    expiring: list[tuple[int, str]] = field(default_factory=list)
    """Expiry entries taken for this batch; put back if it does not commit."""
    lagging: list[tuple[int, str]] = field(default_factory=list)
    """Snapshot entries taken for this batch; put back if it does not commit."""
    report: BatchReport = field(default_factory=BatchReport)


def unknown_execution(command: ExecutionCommand) -> str:
    """The dead letter's reason for a command no run of this partition takes: never started
    here (its start request not decided yet, or never sent), or finished past its time to live."""
    why = (
        f"unknown_execution: no run {command.execution_id!r} to {command.kind.value}: it has not "
        "started (send commands once GET /api/executions/{id} shows it past pending) or it ended "
        "long ago"
    )
    if command.kind is CommandKind.CANCEL:
        why += (
            f"; kept {EARLY_CANCEL_SECONDS:g} s by the engine that read it: a run that starts "
            "there meanwhile is cancelled as it starts"
        )
    return why


def _what(inp: Input) -> str:
    """An input decided without a record of its own, for a log line."""
    if isinstance(inp, ExecutionCommand) and inp.kind is CommandKind.TIMER_FIRED:
        return "timer firing"
    if isinstance(inp, ExecutionCommand) and inp.kind is CommandKind.CANCEL:
        return "cancel kept from before the run's start"
    return type(inp).__name__


_without_nodes: IdentityMemo[WorkflowDefinition, WorkflowDefinition] = IdentityMemo(
    lambda workflow: workflow.model_copy(update={"nodes": (), "retry": None}), limit=1024
)
"""A definition without its nodes, one object per definition object: the runs of a version share
one definition object (``Codec.decode``), so their markers share one copy too, not one each, which
kept three more objects per finished run for the cyclic collector to scan (ADR 0070)."""


def _over_limit(snapshot: ProducerRecord, limit: int) -> str | None:
    """Why the state topic would refuse ``snapshot``, or None if it fits."""
    if snapshot.size <= limit:
        return None
    return (
        f"the execution's state would be {snapshot.size} bytes, over the "
        f"{limit}-byte record limit; reduce node outputs with output mappings"
    )


def finished_marker(state: ExecutionState) -> ExecutionState:
    """What a partition keeps of a finished run until its time to live ends, in memory and on the
    changelog (ADR 0071): its id, status, seq and times, without the workflow's nodes, the node
    states, the input, the history, the timers or the signals it held and saw. That is all a late
    input or a restore needs (the decider ignores anything for a finished run, and a repeated
    start request finds the run already there); the whole final state is the fold of the run's
    events, and the views keep it. A finished diamond's state is about 15 KB in memory; at 250
    runs/s and a 300 s time to live, full states would hold over a gigabyte. A marker is its own
    marker (no copy made)."""
    if not state.workflow.nodes and not state.nodes and state.input is None:
        return state  # already a marker: every workflow has a node, and a run of one has states
    return state.model_copy(
        update={
            "workflow": _without_nodes(state.workflow),
            "nodes": {},
            "history": (),
            "input": None,
            "timers": {},
            "signals": (),
            "signal_ids": (),
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
        offsets_in_transaction: bool = False,
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
        self.offsets_in_transaction = offsets_in_transaction
        """Move the group's offsets in the transaction and write no positions record, as releases
        before ADR 0061 did, which cannot read one (``Settings.offsets_in_transaction``)."""
        self.states: dict[str, ExecutionState] = {}
        self.tails: dict[str, Tail] = {}
        """Each live run's snapshot and events since; a run without one is snapshotted at its
        next step (restored from a snapshot written before ADR 0039)."""
        self.events_floor = 0
        """At or below the offset the next event written to this events partition gets: its end
        when claimed, plus the events committed since."""
        self._snapshots: list[tuple[int, str]] = []
        """(events_from, run) of every snapshot written, oldest first; an entry is current while
        its run's tail has that ``events_from``."""
        self.timers = TimerQueue()
        self._expiry: list[tuple[int, str]] = []
        self.positions: dict[TopicPartition, int] = {}
        """The next input offset to decide, per input topic-partition (the committed position)."""
        self._inputs = {
            topic(t): t for t in (*topic_names.REQUESTS, topic_names.COMMANDS, topic_names.RESULTS)
        }
        self.early_cancels: dict[str, tuple[str | None, int]] = {}
        """Cancels that came before their run's start request: their reason, and when this
        partition read them (ms, its own clock: a record's time is its producer's), oldest first.
        A parent's cancel of its child goes straight to the command topic while the child's start
        goes through the start intake first, so the cancel often came first and the child ran
        on. A start decided within ``EARLY_CANCEL_SECONDS`` of its cancel is cancelled at once
        (ADR 0055). Memory only: the orchestrator hands them to a new ``Partition`` when it
        claims this one again itself; another process's claim starts without them."""
        self._batch_ms = 0
        """The ``now_ms`` of the batch being decided."""
        self._written_by_every_batch = [
            TopicPartition(topic(t), number) for t in (topic_names.EVENTS, topic_names.STATE)
        ]
        """What a batch that decides anything writes: the runs' events and their state records.
        Added to the transaction while the batch is decided (``prepare``, ADR 0060)."""

    # -- state ------------------------------------------------------------------------------------
    def load(
        self,
        states: Sequence[ExecutionState],
        positions: dict[TopicPartition, int],
        *,
        events_end: int = 0,
        tails: Mapping[str, Tail] | None = None,
    ) -> None:
        """Take the restored states, their changelog tails and the committed positions as this
        partition's truth; ``events_end``: the events partition's end when it was read."""
        for state in states:
            self._hold(state)
        for execution_id, tail in (tails or {}).items():
            if execution_id in self.states and not self.states[execution_id].status.terminal:
                self.tails[execution_id] = tail
                heapq.heappush(self._snapshots, (tail.events_from, execution_id))
        self.events_floor = events_end
        self.positions = dict(positions)

    def _hold(self, state: ExecutionState) -> None:
        if state.status.terminal:
            ended = state.finished_at or state.created_at
            heapq.heappush(self._expiry, (to_millis(ended + self.finished_ttl), state.id))
            state = finished_marker(state)
            self.tails.pop(state.id, None)
        self.states[state.id] = state
        self.timers.track(state)

    def _drop(self, execution_id: str) -> None:
        self.states.pop(execution_id, None)
        self.tails.pop(execution_id, None)
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
        self._batch_ms = now_ms
        if records:  # inputs to decide: what they write is added while they are decided
            await self.producer.prepare(self._written_by_every_batch)
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
        self._resnapshot_lagging(staged)
        expired = self._expired(now_ms, staged)
        staged.records.extend(staged.changelog.values())
        for execution_id in expired:
            staged.records.append(self._changelog(execution_id, None))
        staged.report.tombstones = len(expired)
        if offsets:
            staged.records.extend(self.changelog_records_of(offsets))
        staged.report.records = len(staged.records)
        if not staged.records and not offsets and not records:
            return staged.report  # nothing prepared, nothing to write (a stale timer entry)
        started = time.perf_counter()
        try:
            await self.producer.commit(staged.records, self.group_offsets(offsets), self.group_id)
        except BaseException:
            for entry in staged.expiring:  # not tombstoned after all: due again next time
                heapq.heappush(self._expiry, entry)
            for entry in staged.lagging:
                heapq.heappush(self._snapshots, entry)
            raise
        staged.report.commit_seconds = time.perf_counter() - started
        try:
            self.positions.update(offsets)
            events_topic = self.topic(topic_names.EVENTS)
            self.events_floor += sum(1 for r in staged.records if r.topic == events_topic)
            for execution_id, tail in staged.tails.items():
                self.tails[execution_id] = tail
                if execution_id in staged.changelog:
                    heapq.heappush(self._snapshots, (tail.events_from, execution_id))
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

    def group_offsets(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """The group offsets the transaction moves: none, unless a release before ADR 0061 may
        still claim this partition and read only them."""
        return offsets if self.offsets_in_transaction else {}

    def changelog_records_of(self, offsets: dict[TopicPartition, int]) -> list[ProducerRecord]:
        """What a transaction that moves ``offsets`` (the next offset of each input it decided)
        writes besides them: the record of this partition's input positions once they commit, or
        nothing while the group's offsets move in the transaction."""
        if self.offsets_in_transaction:
            return []
        moved = {**self.positions, **offsets}
        return [positions_record(self.topic(topic_names.STATE), self.number, moved)]

    async def _explained(self, tp: TopicPartition, expected: int, got: int) -> bool:
        """A jump in offsets is no gap when only control records or aborted records lie between."""
        return self.probe is not None and await self.probe(tp, expected, got)

    def _resnapshot_lagging(self, staged: _Staged) -> None:
        """Snapshot again the live runs whose snapshot points more than ``RESNAPSHOT_LAG`` events
        back (runs waiting long, on a timer or a signal), so a restore need not read that far."""
        while self._snapshots and self._snapshots[0][0] < self.events_floor - RESNAPSHOT_LAG:
            entry = heapq.heappop(self._snapshots)
            staged.lagging.append(entry)
            events_from, execution_id = entry
            tail = staged.tails.get(execution_id) or self.tails.get(execution_id)
            state = staged.states.get(execution_id) or self.states.get(execution_id)
            if tail is None or tail.events_from != events_from or state is None or state.status.terminal:
                continue  # an older snapshot's entry, or a run that ended
            snapshot = self._changelog(execution_id, state, self.events_floor)
            staged.changelog[execution_id] = snapshot
            staged.tails[execution_id] = Tail(self.events_floor, len(snapshot.value or b""))

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
        if record.key == POSITIONS_KEY:  # a producer writing to the input topics itself
            raise DecodeError(f"execution id {inp.execution_id!r} is reserved (the changelog's positions)")
        if isinstance(inp, StartExecution) and inp.traceparent is None:
            header = next((v for k, v in record.headers if k == TRACEPARENT), None)
            parent = TraceParent.parse(header)
            if parent is not None:
                inp = inp.model_copy(update={"traceparent": parent.header})
        return inp

    async def _decide(
        self,
        staged: _Staged,
        inp: Input,
        now: datetime,
        origin: ConsumerRecord[bytes, bytes] | None,
        *,
        dispatch: bool = True,
    ) -> None:
        """Decide one input into ``staged``; ``dispatch=False``: without the records that set
        work going elsewhere (``DISPATCHES``)."""
        execution_id = inp.execution_id
        state = (
            staged.states[execution_id] if execution_id in staged.states else self.states.get(execution_id)
        )
        if state is None and not isinstance(inp, StartExecution):
            staged.report.orphans.append(type(inp).__name__)
            if isinstance(inp, ExecutionCommand) and origin is not None:
                # A producer's command that went nowhere says so where producers look; a result
                # for a run gone past its time to live is only counted (its run has ended).
                self._dead_letter(staged, origin, unknown_execution(inp))
                if inp.kind is CommandKind.CANCEL:
                    self._keep_early_cancel(inp)
            return
        prior = staged.tails.get(execution_id) or self.tails.get(execution_id)
        kept = self._early_cancel(execution_id) if state is None and isinstance(inp, StartExecution) else None
        try:
            step = await self.stepper.step(state, inp, now)
            if kept is not None or not dispatch:
                step.outputs = [o for o in step.outputs if not isinstance(o.record, DISPATCHES)]
            encoded = self._encode_all(step, prior)
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
                encoded = self._encode_all(step, prior)
        except (KafkaError, OSError):
            raise  # the broker or the network, not the input: the batch is tried again
        except Exception as exc:
            log.exception("input for %s could not be decided", execution_id)
            encoded = self._why_not_decided(inp, exc)
        if isinstance(encoded, str):
            if origin is not None:
                self._dead_letter(staged, origin, encoded)
            else:
                log.error("%s for %s dropped: %s", _what(inp), execution_id, encoded)
            return
        staged.report.inputs += 1
        if not step.changed or step.state is None:
            return
        records, snapshot, tail, held = encoded
        staged.states[execution_id] = held
        if snapshot is not None:
            staged.changelog[execution_id] = snapshot
        staged.tails[execution_id] = tail
        staged.records.extend(records)
        staged.report.observed.append(DecidedStep(state, inp, step.state, step.events))
        if kept is not None:
            await self._decide(staged, kept, now, origin=None, dispatch=False)

    def _keep_early_cancel(self, command: ExecutionCommand) -> None:
        """Keep a cancel that found no run (``early_cancels``): kept even if its batch does not
        commit (the batch's retry keeps it again), and never removed when used (a start comes
        once; a repeated start finds its run), only by age and number."""
        reason = None if command.reason is None else command.reason[:EARLY_REASON_CHARS]
        self.early_cancels.pop(command.execution_id, None)
        self.early_cancels[command.execution_id] = (reason, self._batch_ms)
        oldest = self._batch_ms - EARLY_CANCEL_SECONDS * 1000
        while self.early_cancels:  # oldest first: stops at the first one to keep, no copy
            first = next(iter(self.early_cancels))
            if self.early_cancels[first][1] >= oldest and len(self.early_cancels) <= EARLY_CANCELS_MAX:
                break
            del self.early_cancels[first]

    def _early_cancel(self, execution_id: str) -> ExecutionCommand | None:
        """The cancel kept for a run starting now, if it was read less than
        ``EARLY_CANCEL_SECONDS`` ago."""
        kept = self.early_cancels.get(execution_id)
        if kept is None or self._batch_ms - kept[1] > EARLY_CANCEL_SECONDS * 1000:
            return None
        return ExecutionCommand(execution_id=execution_id, kind=CommandKind.CANCEL, reason=kept[0])

    def _why_not_decided(self, inp: Input, exc: Exception) -> str:
        """The dead letter's reason: the exception, and for a start request what is wrong with its
        workflow's shape (written straight to a request topic, a start skips the API's checks, and
        a dangling dependency fails as a ``KeyError`` deep in the decider). Only the shape is
        checked, here, in the loop: compiling a hostile workflow's expressions could take longer
        than the group's session. At most ``REASON_PROBLEMS`` problems, after the exception (the
        reason header keeps 4000 bytes)."""
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(inp, StartExecution):
            problems = structure_problems(inp.workflow, self.stepper.registry)
            if problems:
                more = len(problems) - REASON_PROBLEMS
                listed = "; ".join(problems[:REASON_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
                return f"{reason}; invalid workflow: {listed}"
        return reason

    def _encode_all(
        self, step: Step, prior: Tail | None
    ) -> tuple[list[ProducerRecord], ProducerRecord | None, Tail, ExecutionState | None] | str:
        """The step's records, the new state's snapshot if one is due, the run's changelog tail
        after the step and the state the partition holds of it (a finished run's marker, the one
        its snapshot is made of); or why the broker would refuse one of them. Nothing of this
        batch is written below ``events_floor`` (it moves only when a batch commits).

        A snapshot is due when the run starts (it has no tail), ends (its ``finished_marker``), or has had
        ``snapshot_every`` events since its last; otherwise the step's events are the change,
        and the state is not encoded at all, unless it may be near the record limit."""
        out = []
        events = size = 0
        for outgoing in step.outputs:
            record = self._encode(outgoing)
            if record.size > self.limit(outgoing.topic):
                return (
                    f"a {outgoing.topic} record of {record.size} bytes is over the topic's "
                    f"{self.limit(outgoing.topic)}-byte limit"
                )
            if outgoing.topic == topic_names.EVENTS:
                events += 1
                size += len(record.value or b"")
            out.append(record)
        state = step.state
        if state is None:
            return out, None, prior or Tail(self.events_floor, 0), None
        tail = prior.after(events, size) if prior is not None else None
        limit = self.limit(topic_names.STATE)
        if (
            tail is not None
            and not state.status.terminal
            and tail.events_since < snapshot_every(state)
            and tail.estimate <= limit * STATE_CHECK_FRACTION
        ):
            return out, None, tail, state
        if state.status.terminal:
            # A finished run's snapshot is its marker (ADR 0071), but whether the run may end so
            # is decided on its whole state, as before: encoded only when it might be too large
            # (an event adds to the state at most what it carries), so the order in which a
            # run's results arrive does not decide whether it fails for its size.
            whole = tail or Tail(self.events_floor, 0, events, size)
            if whole.estimate > limit * STATE_CHECK_FRACTION:
                too_large = _over_limit(self._changelog(state.id, state, self.events_floor), limit)
                if too_large is not None:
                    return too_large
            state = finished_marker(state)
        snapshot = self._changelog(state.id, state, self.events_floor)
        too_large = _over_limit(snapshot, limit)
        if too_large is not None:
            return too_large
        return out, snapshot, Tail(self.events_floor, len(snapshot.value or b"")), state

    def _encode(self, outgoing: Outgoing) -> ProducerRecord:
        # A run's events go to the partition number that owns the run, where a restore of this
        # partition reads them (ADR 0039); the key's hash puts them there anyway.
        partition = self.number if outgoing.topic == topic_names.EVENTS else None
        return encode(self.codec, outgoing, self.topic(outgoing.topic), partition)

    def _changelog(
        self, execution_id: str, state: ExecutionState | None, events_from: int | None = None
    ) -> ProducerRecord:
        """The state's changelog record (a snapshot: with the run's events from ``events_from``
        on, it is the run's state); ``None`` is a tombstone that compaction removes."""
        topic = self.topic(topic_names.STATE)
        headers = [] if events_from is None else [(SNAPSHOT_OFFSET, str(events_from).encode())]
        return ProducerRecord(
            topic=topic,
            key=execution_id.encode(),
            value=self.codec.encode(state, topic) if state is not None else None,
            headers=headers,
            partition=self.number,
        )

    def _dead_letter(self, staged: _Staged, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        staged.records.append(dead_letter_record(record, reason, self.topic(topic_names.DLQ)))
        staged.report.dead_lettered.append(self._inputs.get(record.topic, record.topic))

"""The start intake: ``linkflow.start`` (public ``StartRequest`` records from any producer) into
``linkflow.requests.<priority>`` (the orchestrator's ``StartExecution``), exactly once.

Invariant: for each record read, its outcome (a ``StartExecution``, a dead letter, or nothing
for a run that already exists) and the record's offset commit in one Kafka transaction, so a
record is never lost and never turned into two requests, whatever crashes or rebalances happen.
As in the orchestrator, each partition of ``linkflow.start`` has its own transactional id
(``<app>.intake.<p>``), claimed (which fences a former owner) before the partition's committed
position is read.

A request whose execution id the producer fixed (an idempotency key or an explicit id) may
arrive twice as two records (a producer retry). Before such a request is turned into a start,
the views are synced with the log and the run looked up: a run that exists is not started
again, even after the orchestrator has forgotten it (it keeps finished runs only
``LINKFLOW_FINISHED_STATE_TTL_SECONDS``), and a run this intake started in the last
``RECENT_SECONDS`` counts as existing before any view has it. The same sync settles the race
where a workflow was registered a moment before the request and this instance has not read it
yet: a request is dead-lettered as naming an unknown workflow only after the workflow view has
read the log to its end. If the views cannot catch up, nothing is committed and the batch is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.admission import Admission, TooManyRequestsError
from linkflow_stream.core.clock import from_millis, now
from linkflow_stream.core.errors import ConflictError, LinkflowError
from linkflow_stream.core.idempotency import StartedAs, still_named
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.start_request import (
    Origin,
    StartRequest,
    UnknownWorkflowError,
    candidate_ids,
    choose_workflow,
    start_execution,
)
from linkflow_stream.core.strict_json import non_finite
from linkflow_stream.core.workflow import WorkflowDefinition
from linkflow_stream.kafka.codec import Codec, DecodeError, decode_json, looks_like_json
from linkflow_stream.kafka.consumers import LogUnavailable, group_reader
from linkflow_stream.kafka.dlq import dead_letter_record
from linkflow_stream.kafka.gap_probe import explained_jump
from linkflow_stream.kafka.records import ProducerRecord, encode, limit_of
from linkflow_stream.kafka.topics import max_message_bytes
from linkflow_stream.kafka.transactions import (
    CommitFailed,
    Fenced,
    KafkaTransactionalProducer,
    ProducerBroken,
    TransactionalProducer,
)
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.restore import committed_positions
from linkflow_stream.settings import Settings
from projections.workflows import WorkflowView

log = logging.getLogger(__name__)

MAX_WAIT_MS = 200
"""Longest poll of the loop."""
MAX_RECORDS = 500
"""Records per fetch; one partition's share of them commits as one transaction."""
SYNC_SECONDS = 5.0
"""Longest wait for the views to read the log to its end before a look-up is trusted."""
CLAIM_RETRY_SECONDS = 2.0
RECENT_SECONDS = 60.0
"""How long the intake remembers the runs it started itself. Between its commit and the
orchestrator's ``execution_created`` reaching the views a run is in no view; a repeat of its
request read then would be started again (the orchestrator drops a second start of an id, so no
second run, but the repeat was counted as started, and one with another input was dropped
unseen instead of dead-lettered as a conflict). Beyond this the views know the run."""
RECENT_MAX = 100_000
"""At most this many remembered runs (a few tens of MB), the oldest forgotten first."""
MAX_BACKOFF_SECONDS = 5.0
ORIGIN_HEADER = "linkflow_origin"
"""On the ``StartExecution`` a request became: ``<topic>/<partition>/<offset>`` of the request."""

FindRun = Callable[[str], Awaitable[dict[str, Any] | None]]
"""The ``GET /api/executions/{id}`` body of a run (accepted or started), or ``None``."""
Sync = Callable[[float], Awaitable[bool]]
"""Catch the views up with the log as it is now; False if that took longer than allowed."""


class ViewsBehind(LinkflowError):
    """The views did not catch up in time: a look-up cannot be trusted yet, so the batch waits."""

    error_type = "unavailable"
    retryable = True


class Outcome(StrEnum):
    STARTED = "started"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"


def decode_request(codec: Codec, value: bytes | None) -> StartRequest:
    """A ``StartRequest`` from Avro single-object encoding, or from a JSON object with the same
    fields (for producers without an Avro library: ``kafka-console-producer`` works)."""
    if value is None:
        raise DecodeError("a start request needs a value; this record has none (a tombstone)")
    if not looks_like_json(value):
        request = codec.decode(value, StartRequest)
    else:
        request = decode_json(value, StartRequest, "start request")
    if non_finite(request.input) is not None:  # an Avro record's JSON text may hold one
        raise DecodeError("not a start request: input holds NaN or Infinity, which JSON has not")
    return request


@dataclass
class Batch:
    """One partition's records being turned into one transaction."""

    synced: bool = False
    started: dict[str, StartedAs] = field(default_factory=dict)
    """Runs started in this batch whose id the producer fixed (a key or an id; no other is ever
    looked up): the views cannot know them before the commit."""
    records: list[ProducerRecord] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    queued: Counter[str | None] = field(default_factory=Counter)
    """Runs started in this batch per team: queued, and not in the views before the commit."""
    refused: list[str] = field(default_factory=list)
    """The team label of each record refused by admission control."""


class StartIntake(ConsumerRebalanceListener):  # type: ignore[misc]
    """The consumer of ``linkflow.start``, its partitions' producers, and the loop."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        workflows: WorkflowView,
        find_run: FindRun,
        sync: Sync,
        metrics: Metrics,
        *,
        producer_factory: Callable[[int], TransactionalProducer] | None = None,
        clock: Callable[[], datetime] = now,
        monotonic: Callable[[], float] = time.monotonic,
        admission: Admission | None = None,
    ) -> None:
        """``admission``: the per-team limit of queued runs; a record beyond it is dead-lettered
        with the reason ``too_many_requests`` (``None``: no limit)."""
        self.settings = settings
        self.admission = admission
        self.clock = clock
        self.codec = codec
        self.workflows = workflows
        self.find_run = find_run
        self.sync = sync
        self.metrics = metrics
        self.group_id = settings.group("intake")
        self.topic = settings.topic(topic_names.START)
        self.producer_factory = producer_factory or self._kafka_producer
        self.producers: dict[int, TransactionalProducer] = {}
        self.positions: dict[int, int] = {}
        """The next offset to read per claimed partition: the committed position."""
        self.unclaimed: set[int] = set()
        self._claim_retry_at = 0.0
        self._must_rejoin = False
        self._lock = asyncio.Lock()
        self.monotonic = monotonic
        self._recent: dict[str, tuple[float, StartedAs]] = {}
        """The ``Batch.started`` runs of this intake's commits, oldest first, with when
        (``monotonic``); kept ``RECENT_SECONDS``, at most ``RECENT_MAX``."""
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def _kafka_producer(self, number: int) -> TransactionalProducer:
        return KafkaTransactionalProducer(
            self.settings.bootstrap_servers, f"{self.group_id}.{number}", max_message_bytes()
        )

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        consumer = group_reader(s, self.group_id, "intake")
        await consumer.start()
        consumer.subscribe([self.topic], listener=self)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="start-intake")

    async def stop(self) -> None:
        if self._task is not None:
            async with self._lock:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        async with self._lock:
            for number in list(self.producers):
                await self._release(number)
        if self._consumer is not None:
            await self._consumer.stop()

    # -- rebalance ----------------------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:
            for tp in revoked:
                await self._release(tp.partition)
                self.unclaimed.discard(tp.partition)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        numbers = {tp.partition for tp in assigned}
        async with self._lock:
            for number in set(self.producers) - numbers:
                await self._release(number)
            for number in sorted(numbers - set(self.producers)):
                await self._claim(number)

    async def _claim(self, number: int) -> None:
        """Fence any former owner of partition ``number``, then read where it stopped."""
        consumer = self._consumer
        assert consumer is not None
        tp = TopicPartition(self.topic, number)
        self.unclaimed.add(number)
        consumer.pause(tp)
        producer = self.producer_factory(number)
        try:
            await producer.start()
            position = (await committed_positions(consumer, [tp]))[tp]
        except Exception:
            log.exception("start intake: could not claim partition %d; trying again", number)
            with contextlib.suppress(Exception):
                await producer.stop()
            self._claim_retry_at = asyncio.get_running_loop().time() + CLAIM_RETRY_SECONDS
            return
        consumer.seek(tp, position)
        self.producers[number] = producer
        self.positions[number] = position
        self.unclaimed.discard(number)
        consumer.resume(tp)

    async def _release(self, number: int) -> None:
        consumer = self._consumer
        tp = TopicPartition(self.topic, number)
        if consumer is not None and tp in consumer.assignment():
            consumer.pause(tp)  # nothing is read for it until it is claimed again
        producer = self.producers.pop(number, None)
        self.positions.pop(number, None)
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def _retry_claims(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        if not self.unclaimed or asyncio.get_running_loop().time() < self._claim_retry_at:
            return
        assigned = {tp.partition for tp in consumer.assignment() if tp.topic == self.topic}
        for number in sorted(self.unclaimed):
            if number in assigned:
                await self._claim(number)
            else:
                self.unclaimed.discard(number)

    async def _rejoin(self) -> None:
        """Fenced: another instance holds a partition's id, so this one's assignment is stale."""
        consumer = self._consumer
        assert consumer is not None
        self._must_rejoin = False
        for number in list(self.producers):
            await self._release(number)
        consumer.unsubscribe()
        consumer.subscribe([self.topic], listener=self)

    # -- the loop -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("start intake loop failed; going on in %.1fs", delay)
                async with self._lock:
                    self._rewind_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _rewind_all(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        for number, position in self.positions.items():
            consumer.seek(TopicPartition(self.topic, number), position)

    async def _loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=MAX_WAIT_MS, max_records=MAX_RECORDS)
            async with self._lock:
                await self._retry_claims()
                for tp, records in sorted(batches.items()):
                    if tp.partition in self.producers:
                        await self._process(tp, records)
                if self._must_rejoin:
                    await self._rejoin()

    async def _process(self, tp: TopicPartition, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """One partition's records and their offsets, as one transaction."""
        consumer = self._consumer
        assert consumer is not None
        number = tp.partition
        expected = self.positions[number]
        records = [r for r in records if r.offset >= expected]
        if not records:
            return
        if records[0].offset > expected and not await explained_jump(
            self.settings.bootstrap_servers, tp, expected, records[0].offset
        ):
            log.warning("start intake: %s[%d] jumped from %d; reading again", tp.topic, number, expected)
            consumer.seek(tp, expected)
            return
        if self.codec.ids is not None:  # a schema registry: ids to know before decoding
            try:
                await self.codec.learn(record.value for record in records)
            except Exception:  # the registry cannot say now: read again, never a dead letter
                log.exception(
                    "start intake: schema ids of %s[%d] not resolved; reading again", tp.topic, number
                )
                consumer.seek(tp, expected)
                await asyncio.sleep(1.0)
                return
        batch = Batch()
        try:
            for record in records:
                await self.translate(record, batch)
        except ViewsBehind as exc:
            log.warning("start intake: %s; reading %s[%d] again", exc.message, tp.topic, number)
            consumer.seek(tp, expected)
            await asyncio.sleep(1.0)
            return
        producer = self.producers[number]
        try:
            await producer.commit(batch.records, {tp: records[-1].offset + 1}, self.group_id)
        except Fenced:
            log.warning("start intake: partition %d was taken over; rejoining the group", number)
            await self._release(number)
            self._must_rejoin = True
            return
        except ProducerBroken as exc:
            log.warning("start intake: partition %d: %s; claiming it afresh", number, exc)
            await self._release(number)
            self.unclaimed.add(number)
            self._claim_retry_at = 0.0
            return
        except CommitFailed as exc:
            log.warning("start intake: partition %d: %s; reading it again", number, exc)
            consumer.seek(tp, expected)
            await asyncio.sleep(0.5)
            return
        self.positions[number] = records[-1].offset + 1
        self.remember(batch)
        for team in batch.refused:
            self.metrics.admission_rejected.labels("kafka", team).inc()
        for outcome in batch.outcomes:
            self.metrics.start_requests.labels(outcome.value).inc()
            if outcome is Outcome.DEAD_LETTERED:
                self.metrics.dlq.labels(topic_names.START).inc()

    def remember(self, batch: Batch) -> None:
        """Keep the runs of a committed batch for ``RECENT_SECONDS`` (see there)."""
        at = self.monotonic()
        for execution_id, started in batch.started.items():
            self._recent.pop(execution_id, None)  # to the end: its time is the newest
            self._recent[execution_id] = (at, started)
        self._forget_before(at - RECENT_SECONDS)

    def _forget_before(self, cutoff: float) -> None:
        while self._recent:
            oldest = next(iter(self._recent))
            if self._recent[oldest][0] >= cutoff and len(self._recent) <= RECENT_MAX:
                return
            del self._recent[oldest]

    def _started_recently(self, execution_id: str) -> StartedAs | None:
        self._forget_before(self.monotonic() - RECENT_SECONDS)
        found = self._recent.get(execution_id)
        return None if found is None else found[1]

    # -- one record ---------------------------------------------------------------------------------
    async def translate(self, record: ConsumerRecord[bytes, bytes], batch: Batch) -> None:
        """Add what ``record`` becomes to ``batch``. Raises ``ViewsBehind`` only: every other
        failure is the record's, and sends it to the DLQ with the reason."""
        try:
            encoded = await self._start_of(record, batch)
        except ViewsBehind:
            raise
        except TooManyRequestsError as exc:
            reason = f"{exc.error_type}: {exc.message}"
            batch.refused.append(exc.team_label)
        except LinkflowError as exc:
            reason = f"{exc.error_type}: {exc.message}"
        except Exception as exc:  # a record no rule foresaw still ends in the DLQ, with why
            log.exception("start request %s[%d]@%d", record.topic, record.partition, record.offset)
            reason = f"internal: {type(exc).__name__}: {exc}"
        else:
            if encoded is None:
                batch.outcomes.append(Outcome.DUPLICATE)
            else:
                batch.records.append(encoded)
                batch.outcomes.append(Outcome.STARTED)
            return
        batch.records.append(dead_letter_record(record, reason, self.settings.topic(topic_names.DLQ)))
        batch.outcomes.append(Outcome.DEAD_LETTERED)

    async def _start_of(self, record: ConsumerRecord[bytes, bytes], batch: Batch) -> ProducerRecord | None:
        """The ``StartExecution`` record a start request asks for, or ``None`` when its run exists."""
        request = decode_request(self.codec, record.value)
        workflow = await self._workflow(request, batch)
        at = from_millis(record.timestamp)
        origin = Origin(record.topic, record.partition, record.offset, record.timestamp)
        ids = candidate_ids(request, workflow.team or "", origin, at)
        fixed_by_producer = request.idempotency_key is not None or request.execution_id is not None
        found = await self._existing(ids, at, batch) if fixed_by_producer else None
        if found is not None:
            if found != StartedAs.of(request.workflow_id, request.input):
                raise ConflictError(
                    "its idempotency key or execution id names a run of another start (another "
                    "workflow or another input): a key names one start; not started"
                )
            log.info("start request %s[%d]@%d: its run exists", record.topic, record.partition, record.offset)
            return None
        if self.admission is not None and self.admission.limited:
            await self._synced(batch)  # count every run the log held when the batch began
            self.admission.check(workflow.team, also_queued=batch.queued[workflow.team])
        # Accepted now, as an HTTP start is accepted when the API answers: the run's timeout and
        # queue time count from here, not from a record that may have waited out an outage.
        # (An aborted batch's start is never seen, so this needs no determinism; the id does.)
        start = start_execution(request, workflow, ids[0], self.clock())
        topic = topic_names.requests(start.priority)
        outgoing = Outgoing(
            topic,
            start.execution_id,
            start,
            "io.linkflow.execution.requested",
            time=start.requested_at,
            headers=((ORIGIN_HEADER, f"{record.topic}/{record.partition}/{record.offset}".encode()),),
        )
        encoded = encode(self.codec, outgoing, self.settings.topic(topic))
        if encoded.size > limit_of(topic):
            raise LinkflowError(
                f"the run's start request (its input plus the workflow) would be {encoded.size} bytes, "
                f"over {topic}'s {limit_of(topic)}-byte limit",
                error_type="too_large",
            )
        batch.queued[workflow.team] += 1
        if fixed_by_producer:
            batch.started[start.execution_id] = StartedAs.of(workflow.id, start.input)
        return encoded

    async def _synced(self, batch: Batch) -> None:
        """Once per batch: the views hold everything the log held when the batch began."""
        if batch.synced:
            return
        try:
            caught_up = await self.sync(SYNC_SECONDS)
        except Exception as exc:
            raise ViewsBehind(f"the views could not catch up with the log: {exc!r}") from exc
        if not caught_up:
            raise ViewsBehind(f"the views did not catch up with the log within {SYNC_SECONDS:g} s")
        batch.synced = True

    async def _workflow(self, request: StartRequest, batch: Batch) -> WorkflowDefinition:
        async def choose() -> WorkflowDefinition:
            pinned = None
            if request.workflow_version is not None:
                try:
                    pinned = await self.workflows.version(request.workflow_id, request.workflow_version)
                except LogUnavailable as exc:  # the log cannot say now: read again, never a dead letter
                    raise ViewsBehind(f"workflow {request.workflow_id!r}: {exc.message}") from exc
            return choose_workflow(request, self.workflows.get(request.workflow_id), pinned)

        try:
            return await choose()
        except UnknownWorkflowError:
            if batch.synced:
                raise
        await self._synced(batch)  # registered a moment ago, perhaps on another instance
        return await choose()

    async def _existing(self, ids: Sequence[str], at: datetime, batch: Batch) -> StartedAs | None:
        """The run these ids name if it was started already: in this batch, by this intake in the
        last ``RECENT_SECONDS``, or in the log. The current id first, then (with an idempotency
        key) the previous window's, which counts only for a run that began less than 24 hours
        before ``at`` (one this intake started a moment ago did)."""
        for i in ids:
            if i in batch.started:
                return batch.started[i]
        current, *previous = ids
        if (recent := self._started_recently(current)) is not None:
            return recent
        await self._synced(batch)
        try:
            first = await self.find_run(current)
            if first is not None:
                return StartedAs.from_body(first)
            for i in previous:
                if (recent := self._started_recently(i)) is not None:
                    return recent
            earlier = [await self.find_run(i) for i in previous]
        except Exception as exc:
            raise ViewsBehind(f"the read model could not be read: {exc!r}") from exc
        body = next((body for body in earlier if body is not None and still_named(body, at)), None)
        return None if body is None else StartedAs.from_body(body)

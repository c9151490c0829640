"""The orchestrator: a transactional consume-decide-produce loop over the input topics.

For each owned partition number ``p`` a batch of inputs (start requests, commands, results), the
timers due and the finished runs to forget are decided against ``p``'s states, and everything
they produce (events, tasks, control messages, dead letters, state changelog records) commits
with the input positions (a changelog record, ADR 0061) in one Kafka transaction under ``p``'s
transactional id. Readers use ``read_committed``, so an input's effects become visible exactly
once, together. The group's offsets follow the positions outside the transaction, for observers
(``group_offsets.py``).

Ownership follows the consumer group (range assignment, so an instance owns partition ``p`` of
every co-partitioned input topic at once). On assignment the instance claims ``p``'s
transactional id (fencing a former owner), then reads the committed changelog and positions, and
only then decides inputs. On revoke it lets the batch in flight commit or abort, then forgets
``p``'s states and timers. This module is the only place that knows about the group; the batch
itself (``partition.py``) sees a producer interface and records.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import Priority
from linkflow_stream.kafka.codec import Codec
from linkflow_stream.kafka.consumers import log_ends
from linkflow_stream.kafka.dlq import dead_letter_record
from linkflow_stream.kafka.fetch_wait import wait_adaptively
from linkflow_stream.kafka.gap_probe import explained_jump
from linkflow_stream.kafka.topics import max_message_bytes
from linkflow_stream.kafka.transactions import (
    CommitFailed,
    Fenced,
    KafkaTransactionalProducer,
    ProducerBroken,
    TransactionalProducer,
)
from linkflow_stream.runtime.batch_turn import BatchTurn
from linkflow_stream.runtime.group_offsets import GroupOffsets
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.partition import BatchReport, Cut, InputGap, Partition, Tail
from linkflow_stream.runtime.positions import beyond_the_logs, positions_tombstone, resume_from
from linkflow_stream.runtime.priority import PRECEDENCE, turns
from linkflow_stream.runtime.restore import committed_positions, read_states
from linkflow_stream.runtime.step import Stepper
from linkflow_stream.settings import Settings
from linkflow_stream.tracing.execution_spans import ExecutionSpans

log = logging.getLogger(__name__)

INPUT_ORDER = (*topic_names.REQUESTS, topic_names.COMMANDS, topic_names.RESULTS)
"""Within a batch, start requests (by priority) come before the commands and results that may
name the runs they start."""
MAX_WAIT_MS = 100
"""Longest poll of the fetch loop (and longest sleep of an idle worker)."""
BACKLOG_BATCHES = 4
"""An input topic-partition whose worker queue holds more than this many batches is paused in the
consumer (until the queue is down to one batch)."""
ACTIVE_SECONDS = 1.0
"""A priority stays active in the weighted turns (ADR 0029) this long after an input of one of its
runs was last taken: runs waiting for a task's result keep their share of the next batches."""
BATCH_RETRIES = 5
"""A batch whose transaction aborted this often is decided again one input at a time."""
RECORD_RETRIES = 3
"""An input whose own transaction aborted this often goes to the DLQ instead."""
MAX_BACKOFF_SECONDS = 5.0
CLAIM_RETRY_SECONDS = 2.0
"""A partition that could not be claimed (broker away, changelog unreadable) is tried again
this often while the group keeps it assigned here."""
UNHEALTHY_AFTER_SECONDS = 2.0
"""Failing to commit, or a commit pending, for this long turns the readiness probe to 503."""
MAX_STRIKES = BATCH_RETRIES + RECORD_RETRIES
"""Failed tries, across batches and re-claims, after which an input goes to the DLQ."""
CLAIM_TIMEOUT_SECONDS = 60.0
"""Longest a claim (fence, read the changelog, read the positions) may take before it is tried
again; the client calls behind it retry for as long as the broker is away."""


LOOP = -1
"""The fetch loop's own key in the failure bookkeeping (partitions are 0..n-1)."""


class Abandon(Exception):
    """The batch was not committed and must not be followed by the next one: the partition is
    read again from its committed position (or is no longer this instance's)."""


def _key(record: ConsumerRecord[bytes, bytes]) -> tuple[str, int, int]:
    return (record.topic, record.partition, record.offset)


class Orchestrator(ConsumerRebalanceListener):  # type: ignore[misc]
    """The loop, its consumer and the partitions it owns."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        stepper: Stepper,
        metrics: Metrics,
        *,
        producer_factory: Callable[[int], TransactionalProducer] | None = None,
        clock: Callable[[], float] = time.time,
        spans: ExecutionSpans | None = None,
    ) -> None:
        self.settings = settings
        self.spans = spans
        """Makes the spans of committed steps; ``None``: tracing is off."""
        self.codec = codec
        self.stepper = stepper
        self.metrics = metrics
        self.clock = clock
        self.group_id = settings.group("orchestrator")
        self.producer_factory = producer_factory or self._kafka_producer
        self.partitions: dict[int, Partition] = {}
        self.unclaimed: set[int] = set()
        """Assigned partition numbers not (yet) claimed: their inputs wait, paused."""
        self.started = asyncio.Event()
        """Set once the first assignment has been claimed."""
        self._topics = [settings.topic(t) for t in INPUT_ORDER]
        self._rank = {t: i for i, t in enumerate(self._topics)}
        self._lock = asyncio.Lock()
        self._revoking = False
        self._must_rejoin = False
        self._claim_retry_at = 0.0
        self._workers: dict[int, _Worker] = {}
        self._early_cancels: dict[int, dict[str, tuple[str | None, int]]] = {}
        """A broken partition's kept cancels (``Partition.early_cancels``), for its new claim."""
        self._lanes = {settings.topic(topic_names.requests(p)): p for p in Priority}
        self.seen: dict[Priority, float] = {}
        """When an input of a run of each priority was last taken into a batch (monotonic)."""
        self._backlogged: set[TopicPartition] = set()
        """Input topic-partitions paused in the consumer because their worker queue is long."""
        self._committing: dict[int, float] = {}
        """When each partition's batch in flight began."""
        self._failing: dict[int, float] = {}
        """Since when each partition's batches have been failing."""
        self._strikes: dict[tuple[str, int, int], int] = {}
        """Failed tries per input (topic, partition, offset), until it commits or is dead-lettered."""
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._group_offsets: GroupOffsets | None = None
        """Commits the positions as the group's offsets for observers (ADR 0061); ``None`` while
        the transactions move them (``Settings.offsets_in_transaction``)."""
        self._group_offsets_task: asyncio.Task[None] | None = None
        self.turn = BatchTurn(settings.orchestrator_batches_at_once)
        """Whose batch goes next among this process's partitions (ADR 0052)."""

    def _kafka_producer(self, number: int) -> TransactionalProducer:
        return KafkaTransactionalProducer(
            self.settings.bootstrap_servers,
            f"{self.group_id}.{number}",
            max_message_bytes(),
        )

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"{s.app_id}-orchestrator",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(s.session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(min(3.0, s.session_timeout_seconds / 3) * 1000),
            max_partition_fetch_bytes=max_message_bytes(),
            fetch_max_wait_ms=int(s.orchestrator_batch_wait_seconds * 1000) or 1,
        )
        await consumer.start()
        wait_adaptively(consumer)
        consumer.subscribe(self._topics, listener=self)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="orchestrator")
        if not s.offsets_in_transaction:
            self._group_offsets = GroupOffsets(consumer, self.positions)
            self._group_offsets_task = asyncio.create_task(self._group_offsets.run(), name="group-offsets")

    async def stop(self) -> None:
        """Finish the batches in flight, then leave the group (a sibling that took the
        partitions over first would fence those batches)."""
        if self._task is not None:
            async with self._lock:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._group_offsets_task is not None:
            self._group_offsets_task.cancel()
            await asyncio.gather(self._group_offsets_task, return_exceptions=True)
        async with self._lock:
            if self._group_offsets is not None:  # the lag reads 0 after a clean stop
                workers = [self._workers.pop(n) for n in list(self._workers)]
                await asyncio.gather(*(w.stop() for w in workers))  # their batches in flight end first
                await self._group_offsets.commit()
            await asyncio.gather(*(self._release(n) for n in list(self.partitions)))
        if self._consumer is not None:
            await self._consumer.stop()

    def positions(self) -> dict[TopicPartition, int]:
        """Every owned input's next offset to decide, as committed."""
        return {tp: offset for p in self.partitions.values() for tp, offset in p.positions.items()}

    def ready(self) -> bool:
        """Every assigned partition claimed, and no partition failing to commit or stuck in a
        commit for ``UNHEALTHY_AFTER_SECONDS``."""
        now = self.clock()
        since = [*self._failing.values(), *self._committing.values()]
        stuck = any(now - t >= UNHEALTHY_AFTER_SECONDS for t in since)
        return self.started.is_set() and not self.unclaimed and not stuck

    # -- rebalance ----------------------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._revoking = True
        try:
            async with self._lock:
                for number in sorted({tp.partition for tp in revoked}):
                    await self._release(number)
                    self.unclaimed.discard(number)
        finally:
            self._revoking = False

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        numbers = {tp.partition for tp in assigned}
        async with self._lock:
            for number in set(self.partitions) - numbers:  # not ours by this assignment
                await self._release(number)
            await asyncio.gather(*(self._claim(n) for n in sorted(numbers - set(self.partitions))))
        self.started.set()

    def _input_partitions(self, number: int) -> list[TopicPartition]:
        return [TopicPartition(t, number) for t in self._topics]

    async def _claim(self, number: int) -> None:
        """Fence any former owner of ``number``, then read what it committed, then resume."""
        consumer = self._consumer
        assert consumer is not None
        tps = self._input_partitions(number)
        self.unclaimed.add(number)
        producer = self.producer_factory(number)
        began = time.perf_counter()
        try:
            consumer.pause(*tps)
            async with asyncio.timeout(CLAIM_TIMEOUT_SECONDS):
                await producer.start()
                restored = await read_states(
                    self.settings.bootstrap_servers,
                    self.settings.topic(topic_names.STATE),
                    self.settings.topic(topic_names.EVENTS),
                    number,
                    self.codec,
                )
                recorded = await self._within_logs(number, restored.positions)
                positions = resume_from(recorded, await committed_positions(consumer, tps))
                if self.settings.offsets_in_transaction and restored.positions:
                    # the group's offsets take over from the record, which an older release cannot read
                    tombstone = positions_tombstone(self.settings.topic(topic_names.STATE), number)
                    await producer.commit([tombstone], positions, self.group_id)
        except Exception:
            log.exception("could not claim partition %d; its inputs wait, paused, for the next try", number)
            self._claim_retry_at = self.clock() + CLAIM_RETRY_SECONDS
            with contextlib.suppress(Exception):
                await producer.stop()
            return
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        partition = Partition(
            number,
            producer,
            self.stepper,
            self.codec,
            topic=self.settings.topic,
            group_id=self.group_id,
            finished_ttl_seconds=self.settings.finished_state_ttl_seconds,
            probe=functools.partial(explained_jump, self.settings.bootstrap_servers),
            offsets_in_transaction=self.settings.offsets_in_transaction,
        )
        tails = {
            run.state.id: Tail(run.events_from, run.snapshot_bytes, run.events_since, run.bytes_since)
            for run in restored.runs
            if run.events_from is not None
        }
        partition.load(restored.states, positions, events_end=restored.events_end, tails=tails)
        self._adopt(number, partition)
        self._workers[number] = _Worker(self, number)
        self.unclaimed.discard(number)
        consumer.resume(*tps)
        log.info(
            "claimed partition %d in %.2f s: %d executions, %d timers",
            number,
            time.perf_counter() - began,
            len(restored.runs),
            len(partition.timers),
        )

    async def _within_logs(
        self, number: int, recorded: dict[TopicPartition, int]
    ) -> dict[TopicPartition, int]:
        """The changelog's positions less those past their input log's end (a topic deleted and
        made again): those inputs resume from the group's offset or the log's start instead."""
        if not recorded:
            return recorded
        ends = await log_ends(self.settings.bootstrap_servers, sorted({tp.topic for tp in recorded}))
        beyond = beyond_the_logs(recorded, {TopicPartition(t, p): o for (t, p), o in ends.items()})
        for tp in beyond:
            log.warning(
                "partition %d: %s[%d] ends before its recorded position %d (deleted and made again?);"
                " it is read from the group's offset or its start",
                number,
                tp.topic,
                tp.partition,
                recorded[tp],
            )
        return {tp: offset for tp, offset in recorded.items() if tp not in beyond}

    def _adopt(self, number: int, partition: Partition) -> None:
        """Decide ``number`` with the claimed ``partition`` from now on; the cancels its former
        ``Partition`` in this process kept (``_broken``) go on with it."""
        partition.early_cancels = self._early_cancels.pop(number, {})
        self.partitions[number] = partition

    async def _retry_claims(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        if not self.unclaimed or self.clock() < self._claim_retry_at:
            return
        assigned = consumer.assignment()
        for number in sorted(self.unclaimed):
            if all(tp in assigned for tp in self._input_partitions(number)):
                await self._claim(number)
            else:
                self.unclaimed.discard(number)
                self._early_cancels.pop(number, None)

    async def _release(self, number: int) -> None:
        """Stop deciding ``number`` (its batch in flight commits or aborts first) and forget it."""
        worker = self._workers.pop(number, None)
        if worker is not None and worker.task is not asyncio.current_task():
            await worker.stop()
        self._backlogged.difference_update(self._input_partitions(number))
        partition = self.partitions.pop(number, None)
        if partition is None:
            return
        with contextlib.suppress(Exception):
            await partition.producer.stop()
        log.info("released partition %d (%d executions forgotten)", number, len(partition.states))

    async def _lost(self, number: int, exc: Exception) -> None:
        """Fenced: another instance owns ``number``, so this one's view of the group is stale.
        Forget ``number`` now; once the batches in flight are done, ``_rejoin``."""
        log.warning("partition %d was taken over (%s); forgetting it and rejoining the group", number, exc)
        self.metrics.fenced.inc()
        await self._release(number)
        self._must_rejoin = True

    async def _broken(self, number: int, exc: Exception) -> None:
        """This partition's producer (or memory) can no longer be trusted: forget the partition
        and claim it again, still ours, with a new producer and its state read back."""
        log.warning("partition %d: %s; claiming it afresh", number, exc)
        partition = self.partitions.get(number)
        if partition is not None:  # memory only, and still ours: the new claim keeps them
            self._early_cancels[number] = partition.early_cancels
        await self._release(number)
        self.unclaimed.add(number)
        self._claim_retry_at = 0.0

    async def _rejoin(self) -> None:
        """Forget every partition and join the group again: it hands out partitions afresh, and
        each one given back is claimed (fenced, restored) like any other."""
        consumer = self._consumer
        assert consumer is not None
        self._must_rejoin = False
        self._early_cancels.clear()  # partitions given back are claimed afresh, as by another process
        for number in list(self.partitions):
            await self._release(number)
        consumer.unsubscribe()
        consumer.subscribe(self._topics, listener=self)

    # -- the loop -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        """The loop, kept alive: an unexpected error is logged and counted, the readiness probe
        turns 503 while it repeats, and the loop goes on (nothing was committed for the batch it
        broke, so its inputs are fetched again from the committed positions)."""
        delay = 0.1
        while True:
            try:
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("orchestrator loop failed; going on in %.1fs", delay)
                self.record_failure(LOOP)
                await self._rewind()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    async def _rewind(self) -> None:
        """Seek every owned partition back to its committed position and drop what was fetched."""
        async with self._lock:
            for number in self.partitions:
                self.rewind_partition(number)

    def rewind_partition(self, number: int) -> None:
        consumer = self._consumer
        partition = self.partitions.get(number)
        worker = self._workers.get(number)
        if consumer is None or partition is None:
            return
        if worker is not None:
            worker.clear()
        for tp, offset in partition.positions.items():
            with contextlib.suppress(Exception):
                consumer.seek(tp, offset)
        paused = [tp for tp in self._input_partitions(number) if tp in self._backlogged]
        if paused:
            assigned = consumer.assignment()
            consumer.resume(*(tp for tp in paused if tp in assigned))
            self._backlogged.difference_update(paused)

    async def _loop(self) -> None:
        """Fetch, and hand each partition's records to its worker; a worker with a backlog has
        its partitions paused until it catches up."""
        consumer = self._consumer
        assert consumer is not None
        s = self.settings
        while True:
            batches = await consumer.getmany(timeout_ms=MAX_WAIT_MS, max_records=s.orchestrator_batch_max)
            self._failing.pop(LOOP, None)
            async with self._lock:
                await self._retry_claims()
                for tp in sorted(batches, key=lambda tp: self._rank.get(tp.topic, 99)):
                    worker = self._workers.get(tp.partition)
                    if worker is None:
                        continue  # not claimed (yet): fetched again from the committed position
                    lane = worker.offer(batches[tp])
                    if len(worker.queues[lane]) > BACKLOG_BATCHES * s.orchestrator_batch_max:
                        self._pause(tp.partition, lane)
                if self._must_rejoin:
                    await self._rejoin()

    def active(self, priority: Priority, now: float) -> bool:
        """A priority counts in the weighted turns of every partition here while any partition
        has its requests waiting or took an input of one of its runs in the last
        ``ACTIVE_SECONDS`` (``now``: monotonic): the partitions share one event loop, so a
        partition's big low batch delays every other partition's high one."""
        if priority in self.seen and now - self.seen[priority] < ACTIVE_SECONDS:
            return True
        return self.waiting(priority)

    def waiting(self, priority: Priority) -> bool:
        """Whether start requests of ``priority`` wait in any partition worker here."""
        return any(w.queues[priority] for w in self._workers.values())

    def lane_of(self, topic: str) -> Priority | None:
        """The worker queue a topic's records wait in: a request topic's priority, or ``None``
        for commands and results (decided in offset order, whatever their run's priority)."""
        return self._lanes.get(topic)

    def _lane_partitions(self, number: int, lane: Priority | None) -> list[TopicPartition]:
        return [tp for tp in self._input_partitions(number) if self.lane_of(tp.topic) == lane]

    def _pause(self, number: int, lane: Priority | None) -> None:
        """Stop fetching one queue's topics of ``number``: a low-priority backlog then neither
        grows in memory nor stands in front of high-priority records in the consumer's buffer."""
        consumer = self._consumer
        assert consumer is not None
        assigned = consumer.assignment()
        tps = [tp for tp in self._lane_partitions(number, lane) if tp in assigned]
        consumer.pause(*tps)
        self._backlogged.update(tps)

    def caught_up(self, number: int) -> None:
        """Called by a worker after each batch: resume each of its paused topics once that
        topic's queue is down to one batch."""
        worker = self._workers.get(number)
        consumer = self._consumer
        if worker is None or consumer is None:
            return
        for lane, queue in worker.queues.items():
            if len(queue) > self.settings.orchestrator_batch_max:
                continue
            tps = [tp for tp in self._lane_partitions(number, lane) if tp in self._backlogged]
            if tps:
                assigned = consumer.assignment()
                consumer.resume(*(tp for tp in tps if tp in assigned))
                self._backlogged.difference_update(tps)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run_partition(
        self,
        number: int,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        now_ms: int,
        cut: Cut | None = None,
    ) -> int:
        """Commit one partition's batch, retrying aborted transactions with backoff. A batch
        that keeps failing is decided again one input at a time, and an input that keeps failing
        alone is dead-lettered: nothing retries forever, and no input is lost with its batch.
        Raises ``Abandon`` when the batch must be fetched again from the committed position.
        Returns how many records at the end ``cut`` left undecided (uncommitted)."""
        if not any(self._strikes.get(_key(r), 0) >= MAX_STRIKES for r in records):
            report = await self._commit_with_retries(number, records, now_ms, BATCH_RETRIES, cut)
            if report is not None:
                return report.left
            log.warning(
                "partition %d: a batch of %d keeps failing; one input at a time", number, len(records)
            )
        for record in records:
            if (
                self._strikes.get(_key(record), 0) >= MAX_STRIKES
                or await self._commit_with_retries(number, [record], now_ms, RECORD_RETRIES) is None
            ):
                await self._dead_letter_alone(number, record)
        return 0

    async def _commit_with_retries(
        self,
        number: int,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        now_ms: int,
        tries: int,
        cut: Cut | None = None,
    ) -> BatchReport | None:
        """The report once committed; None after ``tries`` failed transactions of which at least one
        was the inputs' fault (a record refused, a bug in deciding): the caller narrows the batch
        down. Failures that are the broker's (away, timing out) never count against the inputs:
        after ``tries`` of those, and on every other outcome (ownership lost or being revoked, a
        producer to replace, an input gap), the batch is abandoned (``Abandon``) and read again
        from the committed position later."""
        delay = 0.1
        faulted = False
        for attempt in range(1, tries + 1):
            partition = self.partitions.get(number)
            if partition is None or (self._revoking and attempt > 1):
                raise Abandon(f"partition {number} is being given up")
            started = time.perf_counter()
            self._committing[number] = self.clock()
            try:
                report = await partition.run_batch(records, now_ms, cut)
            except Fenced as exc:
                await self._lost(number, exc)
                raise Abandon(str(exc)) from exc
            except ProducerBroken as exc:
                if exc.input_fault:
                    self._strike(records)
                self.record_failure(number)
                await self._broken(number, exc)
                raise Abandon(str(exc)) from exc
            except InputGap as exc:
                self.metrics.offset_gaps.labels(exc.topic, str(exc.partition)).inc()
                log.exception("partition %d: reading it again from the committed position", number)
                raise Abandon(str(exc)) from exc
            except Exception as exc:
                if not isinstance(exc, CommitFailed):
                    log.exception("partition %d: deciding a batch failed", number)
                    self._strike(records)
                    faulted = True
                self.record_failure(number)
                log.warning("partition %d: try %d of %d failed: %s", number, attempt, tries, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            finally:
                self._committing.pop(number, None)
            self._failing.pop(number, None)
            for record in records[: len(records) - report.left]:
                self._strikes.pop(_key(record), None)
            self._observe(report, time.perf_counter() - started)
            return report
        if not faulted:
            raise Abandon(f"partition {number}: the broker keeps failing the transaction")
        return None

    def _strike(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Count a failed try against each input; the count survives a re-claim, so an input
        that breaks every transaction it is in ends in the DLQ, not in a loop."""
        for record in records:
            self._strikes[_key(record)] = self._strikes.get(_key(record), 0) + 1

    def record_failure(self, number: int) -> None:
        """Count a failed try; ``number`` (a partition, or ``LOOP``) is failing since its first."""
        self.metrics.commit_failures.inc()
        self._failing.setdefault(number, self.clock())

    async def _dead_letter_alone(self, number: int, record: ConsumerRecord[bytes, bytes]) -> None:
        """The last resort for an input whose transaction cannot commit: its dead letter and
        its offset, in a transaction of their own. If even that fails, the batch is abandoned
        and read again (the input keeps its strikes)."""
        partition = self.partitions.get(number)
        if partition is None:
            raise Abandon(f"partition {number} is being given up")
        tp = TopicPartition(record.topic, record.partition)
        expected = partition.positions.get(tp, record.offset)
        if record.offset < expected:
            return  # decided already
        if record.offset > expected:
            raise Abandon(f"{tp.topic}[{tp.partition}]: cannot dead-letter {record.offset} before {expected}")
        letter = dead_letter_record(
            record, "its transaction failed repeatedly", self.settings.topic(topic_names.DLQ)
        )
        offsets = {tp: record.offset + 1}
        records = [letter, *partition.changelog_records_of(offsets)]
        try:
            await partition.producer.commit(records, partition.group_offsets(offsets), self.group_id)
        except Fenced as exc:
            await self._lost(number, exc)
            raise Abandon(str(exc)) from exc
        except ProducerBroken as exc:
            await self._broken(number, exc)
            raise Abandon(str(exc)) from exc
        except CommitFailed as exc:
            self.record_failure(number)
            raise Abandon(str(exc)) from exc
        partition.positions[tp] = record.offset + 1
        self._strikes.pop(_key(record), None)
        self.metrics.dlq.labels(record.topic.removeprefix(self.settings.topic_prefix)).inc()

    def _observe(self, report: BatchReport, seconds: float) -> None:
        m = self.metrics
        m.transaction_seconds.observe(seconds)
        if report.records:
            m.commit_seconds.observe(report.commit_seconds)
            m.batch_records.observe(report.records)
        for step in report.observed:
            m.observe(step.after, step.events)
        if self.spans is not None:
            for step in report.observed:
                try:
                    self.spans.record(step.before, step.input, step.events)
                except Exception:
                    log.exception("spans of %s could not be made; the run goes on", step.after.id)
        for topic in report.dead_lettered:
            m.dlq.labels(topic).inc()
        for kind in report.orphans:
            m.orphans.labels(kind).inc()
        for lag in report.input_lags:
            m.input_lag.observe(lag)


class _Worker:
    """Decides one partition's batches as they arrive, in turns with the other partitions here
    (``BatchTurn``); a slow batch (a long inline expression, a broker hiccup on one transaction)
    holds up only its own partition once it is overdue (``batch_turn.MAX_HOLD_SECONDS``).

    Records wait in one queue per priority for start requests and one for commands and results;
    batches take them by weighted turns between the priorities, may be cut short for a higher
    request, and lower requests are paced while a higher priority is active (ADR 0029)."""

    def __init__(self, orchestrator: Orchestrator, number: int) -> None:
        self.orchestrator = orchestrator
        self.number = number
        self.queues: dict[Priority | None, list[ConsumerRecord[bytes, bytes]]] = {
            **{p: [] for p in PRECEDENCE},
            None: [],
        }
        """Start requests per priority, and (``None``) commands and results."""
        self.held_until = 0.0
        """Until then (monotonic), requests below the highest active priority wait (``_pace``)."""
        self._first: set[int] = set()
        """Ids of the first request of each priority in the batch being decided (never cut)."""
        self._paced: tuple[Priority, Priority] | None = None
        """(highest active, lowest taken) when the batch being decided took only requests below
        the highest active priority."""
        self.wake = asyncio.Event()
        self.busy = asyncio.Lock()
        """Held while a batch is decided and committed; ``stop`` waits for it."""
        self.task = asyncio.create_task(self._run(), name=f"orchestrator-partition-{number}")

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def offer(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> Priority | None:
        """Queue one topic-partition's fetched records; returns the queue they went to."""
        lane = self.orchestrator.lane_of(records[0].topic) if records else None
        self.queues[lane].extend(records)
        self.wake.set()
        return lane

    def clear(self) -> None:
        for queue in self.queues.values():
            queue.clear()

    def _put_back(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Return a batch's records to the front of their queues, in their order."""
        for lane, queue in self.queues.items():
            queue[:0] = [r for r in records if self.orchestrator.lane_of(r.topic) == lane]

    def _take(self, partition: Partition) -> list[ConsumerRecord[bytes, bytes]]:
        """The next batch: high requests, then commands and results (in offset order; they may
        be any run's), then normal and low requests, taken by weighted turns. A normal or low
        request may be cut off the end of the batch while it is decided (``_cut``)."""
        settings = self.orchestrator.settings
        batch_max = settings.orchestrator_batch_max
        weights = settings.priority_weights
        now = time.monotonic()
        rest = self.queues[None][:batch_max]
        del self.queues[None][:batch_max]
        orch = self.orchestrator
        for record in rest:
            state = partition.states.get((record.key or b"").decode(errors="replace"))
            if state is not None:
                orch.seen[state.priority] = now
        active = [orch.active(p, now) for p in PRECEDENCE]
        room = batch_max - len(rest)  # each priority with requests waiting still gets one
        held = self._held(active, now)
        waiting = [0 if p in held else len(self.queues[p]) for p in PRECEDENCE]
        counts = turns(waiting, active, room, weights)
        records: list[ConsumerRecord[bytes, bytes]] = []
        self._first = set()
        for p, n in zip(PRECEDENCE, counts, strict=True):
            if n:
                self._first.add(id(self.queues[p][0]))
                records.extend(self.queues[p][:n])
                del self.queues[p][:n]
                orch.seen[p] = now
        self._paced = None
        if records and not rest and any(active):
            top = PRECEDENCE[active.index(True)]
            taken = [p for p, n in zip(PRECEDENCE, counts, strict=True) if n]
            if top not in taken:
                self._paced = (top, taken[-1])
        high = counts[0]
        return records[:high] + rest + records[high:]

    def _cut(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """End the batch before ``record``, a normal or low request, when requests of a higher
        priority wait in any partition here; never before the first request of its priority in
        the batch, so each priority still moves one request a batch."""
        lane = self.orchestrator.lane_of(record.topic)
        if lane is None or lane is PRECEDENCE[0] or id(record) in self._first:
            return False
        higher = PRECEDENCE[: PRECEDENCE.index(lane)]
        return any(self.orchestrator.waiting(p) for p in higher)

    def _held(self, active: Sequence[bool], now: float) -> set[Priority]:
        """The priorities whose requests wait for ``held_until``: those below the highest
        active one, while it lasts."""
        if now >= self.held_until or not any(active):
            return set()
        return set(PRECEDENCE[active.index(True) + 1 :])

    def _takeable(self, now: float) -> bool:
        """Whether ``_take`` would take anything now."""
        if self.queues[None]:
            return True
        active = [self.orchestrator.active(p, now) for p in PRECEDENCE]
        held = self._held(active, now)
        return any(self.queues[p] for p in PRECEDENCE if p not in held)

    def _pace(self, seconds: float) -> None:
        """After a batch of only lower-priority requests that took ``seconds`` while a higher
        priority was active, hold the lower ones back for ``seconds * (w_top / w_lower - 1)``:
        they then use about ``w_lower / w_top`` of this partition's time, and the rest of the
        process's time (one event loop for every partition) is left to the higher runs."""
        if self._paced is None:
            return
        weights = dict(zip(PRECEDENCE, self.orchestrator.settings.priority_weights, strict=True))
        top, lower = self._paced
        self.held_until = time.monotonic() + seconds * max(0.0, weights[top] / weights[lower] - 1)

    async def stop(self) -> None:
        async with self.busy:
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def _idle(self, wake_ms: int | None, now_ms: int) -> None:
        wait = MAX_WAIT_MS if wake_ms is None else max(1, min(MAX_WAIT_MS, wake_ms - now_ms))
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait / 1000):  # not wait_for (ADR 0074)
                await self.wake.wait()

    async def _run(self) -> None:
        orch = self.orchestrator
        partition = orch.partitions.get(self.number)
        delay = 0.1
        while partition is not None and orch.partitions.get(self.number) is partition:
            now_ms = orch.now_ms()
            wake_ms = partition.next_wakeup_ms()
            mono = time.monotonic()
            if not self._takeable(mono) and (wake_ms is None or wake_ms > now_ms):
                if self.pending and self.held_until > mono:  # held back: look again when it ends
                    held_ms = now_ms + int((self.held_until - mono) * 1000) + 1
                    wake_ms = held_ms if wake_ms is None else min(wake_ms, held_ms)
                await self._idle(wake_ms, now_ms)
                continue
            async with orch.turn.held(self.rank):
                if orch.partitions.get(self.number) is not partition:
                    break  # given up while it waited for its turn
                failed = await self._batch(partition, delay)
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            elif failed is not None:
                delay = 0.1

    def rank(self) -> int:
        """This worker's place in the queue for a turn (``BatchTurn``): high requests waiting
        first, then commands and results (runs under way), then the rest."""
        if self.queues[PRECEDENCE[0]]:
            return 0
        return 1 if self.queues[None] else 2

    async def _batch(self, partition: Partition, delay: float) -> bool | None:
        """Take, decide and commit one batch: ``False`` committed, ``True`` failed (the caller
        pauses ``delay`` after giving up its turn, then tries again), ``None`` abandoned (read
        again from the committed position, at once)."""
        orch = self.orchestrator
        records = self._take(partition)
        began = time.monotonic()
        try:
            if orch.codec.ids is not None:  # a schema registry: ids to know before decoding
                await orch.codec.learn(record.value for record in records)
        except Exception:
            # A schema id nobody here knows, and the registry cannot say: hold the batch and
            # ask again; its inputs are valid and must be neither skipped nor dead-lettered.
            log.exception("partition %d: schema ids not resolved; again in %.1fs", self.number, delay)
            orch.record_failure(self.number)
            self._put_back(records)
            return True
        async with self.busy:
            try:
                left = await orch.run_partition(self.number, records, orch.now_ms(), self._cut)
            except Abandon:
                # Nothing of this batch committed: read it again from the committed position.
                orch.rewind_partition(self.number)
                return None
            except Exception:
                log.exception("partition %d: batch failed; going on in %.1fs", self.number, delay)
                orch.record_failure(self.number)
                orch.rewind_partition(self.number)
                return True
        if left:
            self._put_back(records[len(records) - left :])
            self._paced = None
        self._pace(time.monotonic() - began)
        orch.caught_up(self.number)
        return False

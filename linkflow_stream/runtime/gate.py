"""The concurrency gate's processor: one owner, transactional, restored from its changelog.

``linkflow.gate`` has one partition, consumed by the group ``<app>.gate`` of the orchestrator
instances, so exactly one of them owns the gate at a time. The owner claims the transactional id
``<app>.gate.0`` (fencing any former owner), reads the gate's state back from the compacted
``linkflow.state.gate`` and the group's committed position, and only then decides. Each batch of
requests is folded by the pure gate (``core/gate.py``); its ``admit`` commands (to
``linkflow.commands``), the changed entries of the state and the input offset commit in one
transaction, so after a kill -9 or a takeover the new owner resumes from exactly what committed:
no admission is lost or sent twice, and the counts match the runs admitted (ADR 0030).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from prometheus_client import Counter, Gauge

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.gate import (
    GateEntry,
    GateMeta,
    GateRecord,
    GateRequest,
    GateState,
    advance,
)
from linkflow_stream.core.messages import CommandKind, ExecutionCommand
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.kafka.codec import Codec, DecodeError
from linkflow_stream.kafka.consumers import group_reader
from linkflow_stream.kafka.dlq import dead_letter_record
from linkflow_stream.kafka.records import ProducerRecord, encode
from linkflow_stream.kafka.topics import max_message_bytes
from linkflow_stream.kafka.transactions import (
    CommitFailed,
    Fenced,
    KafkaTransactionalProducer,
    TransactionalProducer,
)
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.restore import committed_positions, read_latest
from linkflow_stream.settings import Settings

log = logging.getLogger(__name__)

META_KEY = b"meta"
ENTRY_PREFIX = b"run:"
BATCH_MAX = 500
MAX_BACKOFF_SECONDS = 5.0


async def read_gate_state(
    bootstrap_servers: str, topic: str, codec: Codec, *, within: float = 120.0
) -> GateState:
    """The committed gate state: the latest record of every key of its changelog."""
    latest = await read_latest(bootstrap_servers, topic, 0, within=within)
    await codec.learn(latest.values())
    meta, entries = GateMeta(), []
    for key, value in latest.items():
        record = codec.decode(value, GateRecord)
        if key == META_KEY and record.meta is not None:
            meta = record.meta
        elif record.entry is not None:
            entries.append(record.entry)
    return GateState.of(entries, meta)


class Gate(ConsumerRebalanceListener):  # type: ignore[misc]
    """The gate's loop in one orchestrator instance; it decides only while it owns the gate."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        metrics: Metrics,
        *,
        producer_factory: Callable[[], TransactionalProducer] | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.group_id = settings.group("gate")
        self.topic = settings.topic(topic_names.GATE)
        self.tp = TopicPartition(self.topic, 0)
        self.producer_factory = producer_factory or self._kafka_producer
        self.state: GateState | None = None
        """The committed state while this instance owns the gate; ``None`` otherwise."""
        self.position = 0
        self.producer: TransactionalProducer | None = None
        self._fresh = False
        """Just claimed: run one admission pass even without input (the team cap may differ)."""
        self._dirty = False
        """A batch changed the state in memory and has not committed: it must be read back."""
        self._lock = asyncio.Lock()
        self._must_rejoin = False
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        r = metrics.registry
        self.queued_gauge = Gauge(
            "linkflow_gate_queued", "Runs waiting queued for a concurrency slot", registry=r
        )
        self.running_gauge = Gauge(
            "linkflow_gate_running", "Gated runs admitted and not ended (holding a slot)", registry=r
        )
        self.admitted = Counter("linkflow_gate_admitted_total", "Queued runs the gate admitted", registry=r)

    def _kafka_producer(self) -> TransactionalProducer:
        return KafkaTransactionalProducer(
            self.settings.bootstrap_servers, f"{self.group_id}.0", max_message_bytes()
        )

    async def start(self) -> None:
        s = self.settings
        consumer = group_reader(s, self.group_id, "gate")
        await consumer.start()
        consumer.subscribe([self.topic], listener=self)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="gate")

    async def stop(self) -> None:
        if self._task is not None:
            async with self._lock:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        async with self._lock:
            await self._release()
        if self._consumer is not None:
            await self._consumer.stop()

    # -- ownership ----------------------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:
            await self._release()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        async with self._lock:
            if self.tp in set(assigned) and self.state is None:
                await self._claim()

    async def _claim(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        consumer.pause(self.tp)
        producer = self.producer_factory()
        try:
            await producer.start()
            state = await read_gate_state(
                self.settings.bootstrap_servers, self.settings.topic(topic_names.GATE_STATE), self.codec
            )
            position = (await committed_positions(consumer, [self.tp]))[self.tp]
        except Exception:
            log.exception("could not claim the gate; trying again")
            with contextlib.suppress(Exception):
                await producer.stop()
            self._must_rejoin = True
            return
        consumer.seek(self.tp, position)
        self.producer, self.state, self.position, self._fresh = producer, state, position, True
        self._gauges(state)
        consumer.resume(self.tp)
        running = state.running_count()
        log.info("claimed the gate: %d queued, %d admitted", len(state.entries) - running, running)

    async def _release(self) -> None:
        producer, self.producer, self.state = self.producer, None, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
            log.info("released the gate")

    async def _rejoin(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        self._must_rejoin = False
        await self._release()
        consumer.unsubscribe()
        consumer.subscribe([self.topic], listener=self)

    # -- the loop -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        delay = 0.1
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=100, max_records=BATCH_MAX)
                async with self._lock:
                    if self._must_rejoin:
                        await self._rejoin()
                        continue
                    if self._dirty:  # a batch failed after changing memory: what committed, again
                        await self._restore()
                        continue
                    records = [r for r in batches.get(self.tp, []) if r.offset >= self.position]
                    if self.state is None or (not records and not self._fresh):
                        continue
                    await self._decide(records)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Fenced as exc:
                log.warning("the gate was taken over (%s); rejoining", exc)
                self._must_rejoin = True
            except CommitFailed as exc:
                log.warning("gate transaction aborted (%s); reading its state back in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                async with self._lock:
                    await self._restore()
            except Exception:
                log.exception("gate batch failed; claiming the gate afresh in %.1fs", delay)
                self._must_rejoin = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    async def _restore(self) -> None:
        """After an aborted transaction: the committed state and position again, same producer."""
        consumer = self._consumer
        if consumer is None or self.state is None:
            return
        try:
            self.state = await read_gate_state(
                self.settings.bootstrap_servers, self.settings.topic(topic_names.GATE_STATE), self.codec
            )
            self.position = (await committed_positions(consumer, [self.tp]))[self.tp]
            consumer.seek(self.tp, self.position)
            self._dirty, self._fresh = False, True
        except Exception:
            log.exception("could not read the gate's state back; claiming it afresh")
            self._must_rejoin = True

    async def _decide(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        state, producer = self.state, self.producer
        assert state is not None
        assert producer is not None
        requests: list[GateRequest] = []
        out: list[ProducerRecord] = []
        dlq = self.settings.topic(topic_names.DLQ)
        for record in records:
            try:
                requests.append(self.codec.decode(record.value, GateRequest))
            except DecodeError as exc:
                out.append(dead_letter_record(record, str(exc), dlq))
        # In place: a batch that then fails to commit leaves memory ahead of the log, so every
        # failure below reads the committed state back (``_restore`` or a new claim).
        self._dirty = True
        change = advance(state, requests, self.settings.team_max_running)
        admitted = change.admitted
        # The admission's time (the run's start, its deadline's origin) is the gate's clock: the
        # inputs' own times come from many partitions and need not grow with the gate's order.
        now = from_millis(int(time.time() * 1000))
        for execution_id in admitted:
            command = ExecutionCommand(
                execution_id=execution_id, kind=CommandKind.ADMIT, reason="a concurrency slot is free"
            )
            outgoing = Outgoing(
                topic_names.COMMANDS,
                execution_id,
                command,
                "io.linkflow.command.admit",
                ce_id=f"gate/{execution_id}",
                time=now,
            )
            out.append(encode(self.codec, outgoing, self.settings.topic(topic_names.COMMANDS)))
        out.extend(self._changelog(ENTRY_PREFIX + i.encode(), state.entries.get(i)) for i in change.changed)
        if change.meta_changed:
            out.append(self._changelog(META_KEY, state.meta))
        offsets = {self.tp: records[-1].offset + 1} if records else {}
        if out or offsets:
            await producer.commit(out, offsets, self.group_id)
        self._dirty, self._fresh = False, False
        if records:
            self.position = records[-1].offset + 1
        self.admitted.inc(len(admitted))
        self._gauges(state)

    def _changelog(self, key: bytes, value: GateEntry | GateMeta | None) -> ProducerRecord:
        topic = self.settings.topic(topic_names.GATE_STATE)
        if value is None:
            body = None
        elif isinstance(value, GateEntry):
            body = self.codec.encode(GateRecord(entry=value), topic)
        else:
            body = self.codec.encode(GateRecord(meta=value), topic)
        return ProducerRecord(topic=topic, key=key, value=body, headers=[], partition=0)

    def _gauges(self, state: GateState) -> None:
        running = state.running_count()
        self.running_gauge.set(running)
        self.queued_gauge.set(len(state.entries) - running)

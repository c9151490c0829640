"""Feeds node tasks from ``linkflow.tasks.<pool>.<priority>`` to the executor (ADR 0028).

One consumer per pool this process serves (``linkflow run --pools``), in the pool's consumer group
``<app>.executor.<pool>``, so adding a process adds capacity to its pools, a dead one's partitions
move to the others of its pool, and a worker joining one pool never rebalances another.

A task is taken only when the pool has a free slot: the executor never runs more than its slots,
and nothing waits in memory but the broker's last fetch and at most one record per priority
(held so that the turn can choose between them). While the pool's slots are all in use for more
than a moment its partitions are paused, so the fetcher stops reading ahead while the consumer
still polls and stays in its group. Between the priorities the pool takes weighted turns
(``LINKFLOW_PRIORITY_WEIGHTS``, 8:3:1 by default; ``core/turns.py``), so high goes first and low
still moves.

Tasks are read ``read_committed``: a task from an aborted orchestrator transaction never runs.
Offsets are committed automatically: a task skipped by a crash costs its lease, and one delivered
twice is the same attempt, which the executor runs once per process and the decider accepts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import NodeTask, Priority
from linkflow_stream.core.trace_context import TRACEPARENT, TraceParent
from linkflow_stream.core.turns import next_turn, weights_of
from linkflow_stream.kafka.codec import Codec, DecodeError
from linkflow_stream.kafka.dlq import dead_letter
from linkflow_stream.kafka.fetch_wait import wait_adaptively
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.kafka.topics import max_message_bytes
from linkflow_stream.runtime.executor import Executor
from linkflow_stream.settings import Settings
from linkflow_stream.tracing.messaging import Delivery

log = logging.getLogger(__name__)

FULL_GRACE_SECONDS = 0.5
"""How long a pool's slots may all be in use before its partitions are paused."""
IDLE_WAIT_MS = 200
"""Longest wait of a fetch when nothing is held: how often the loop looks up again."""
BUSY_FETCH_WAIT_MS = 5
"""The longest a fetch waits at the broker while it leaves a partition out (its records fetched
and not all taken, or paused while the pool is full): that partition's next tasks wait for it.
A fetch that asks for every partition waits up to ``fetch_wait.IDLE_WAIT_MS``; a task for any
of them ends the wait."""


def executor_group(settings: Settings, pool: str) -> str:
    """The consumer group of ``pool``'s executors (its lag is the pool's backlog)."""
    return settings.group(f"executor.{pool}")


class TaskConsumer:
    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        executor: Executor,
        publisher: Publisher,
        on_dead_letter: Callable[[str], None] = lambda _topic: None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.executor = executor
        self.publisher = publisher
        self.on_dead_letter = on_dead_letter
        self.weights = weights_of(settings.priority_weights)
        self._consumers: dict[str, AIOKafkaConsumer] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        for pool in s.executor_pools:
            consumer = AIOKafkaConsumer(
                *(s.topic(t) for t in topic_names.pool_tasks(pool)),
                bootstrap_servers=s.bootstrap_servers,
                group_id=executor_group(s, pool),
                client_id=f"{s.app_id}-executor-{pool}",
                enable_auto_commit=True,
                auto_commit_interval_ms=int(s.commit_interval_seconds * 1000),
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                session_timeout_ms=int(s.session_timeout_seconds * 1000),
                heartbeat_interval_ms=int(min(3.0, s.session_timeout_seconds / 3) * 1000),
                max_partition_fetch_bytes=max_message_bytes(),
                fetch_max_wait_ms=BUSY_FETCH_WAIT_MS,
            )
            await consumer.start()
            wait_adaptively(consumer)
            self._consumers[pool] = consumer
            self._tasks.append(asyncio.create_task(self._run(pool), name=f"task-consumer-{pool}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for consumer in self._consumers.values():
            await consumer.stop()

    async def _run(self, pool: str) -> None:
        """Kept alive: an error is logged and the loop goes on (a task it skipped costs a lease)."""
        while True:
            try:
                await self._consume(pool)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task consumer of pool %s failed; going on in 1 s", pool)
                await asyncio.sleep(1.0)

    def _delivery(self, record: ConsumerRecord[bytes, bytes], pool: str) -> Delivery | None:
        """Where the task came from and the trace context it carries, for its process span;
        ``None`` (nothing read) while tracing is off."""
        if self.executor.spans is None:
            return None
        headers = dict(record.headers)
        message_id = headers.get("ce_id")
        return Delivery(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            group=executor_group(self.settings, pool),
            traceparent=TraceParent.parse(headers.get(TRACEPARENT)),
            message_id=message_id.decode(errors="replace") if message_id else None,
        )

    async def _learn(self, values: list[bytes | None]) -> None:
        """Resolve the records' schema ids before decoding, asking again until the registry answers:
        a task is never dead-lettered because the registry was away."""
        delay = 0.1
        while True:
            try:
                await self.codec.learn(values)
            except Exception:
                log.exception("task schema ids not resolved; again in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                return

    async def _wait_for_a_slot(self, pool: str, consumer: AIOKafkaConsumer) -> None:
        """Return once ``pool`` has a free slot. After ``FULL_GRACE_SECONDS`` the pool's partitions
        are paused (no more read ahead) and polled empty, so the consumer stays in its group."""
        freed = self.executor.freed[pool]
        paused = False
        try:
            while self.executor.free(pool) <= 0:
                freed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FULL_GRACE_SECONDS):  # not wait_for (ADR 0074)
                        await freed.wait()
                if self.executor.free(pool) <= 0:
                    consumer.pause(*consumer.assignment())
                    paused = True
                    # A poll, so the group sees us. Nothing comes from paused partitions; should a
                    # partition assigned meanwhile give something, it is read again later.
                    for tp, records in (await consumer.getmany(timeout_ms=0)).items():
                        consumer.seek(tp, records[0].offset)
        finally:
            if paused:
                consumer.resume(*consumer.assignment())

    async def _fill(
        self,
        consumer: AIOKafkaConsumer,
        by_priority: dict[Priority, list[TopicPartition]],
        held: dict[Priority, ConsumerRecord[bytes, bytes]],
    ) -> None:
        """Hold one fetched record of every priority that has one and holds none yet."""
        for priority, parts in by_priority.items():
            if priority in held or not parts:
                continue
            for records in (await consumer.getmany(*parts, timeout_ms=0, max_records=1)).values():
                held[priority] = records[0]

    async def _consume(self, pool: str) -> None:
        consumer = self._consumers[pool]
        priority_of = {self.settings.topic(topic_names.tasks(pool, p)): p for p in Priority}
        held: dict[Priority, ConsumerRecord[bytes, bytes]] = {}
        credits: dict[Priority, int] = {}
        while True:
            if self.executor.free(pool) <= 0:
                await self._wait_for_a_slot(pool, consumer)
            by_priority: dict[Priority, list[TopicPartition]] = {p: [] for p in Priority}
            for tp in consumer.assignment():
                by_priority[priority_of[tp.topic]].append(tp)
            await self._fill(consumer, by_priority, held)
            if not held:
                for records in (await consumer.getmany(timeout_ms=IDLE_WAIT_MS, max_records=1)).values():
                    held[priority_of[records[0].topic]] = records[0]
                await self._fill(consumer, by_priority, held)  # what came in the same fetch
            priority, credits = next_turn(self.weights, credits, held)
            if priority is not None:
                await self._take(held.pop(priority), pool)

    async def _take(self, record: ConsumerRecord[bytes, bytes], pool: str) -> None:
        """Decode the record and hand it to the executor (a slot is free), or dead-letter it."""
        if self.codec.ids is not None:  # a schema registry: ids to know before decoding
            await self._learn([record.value])
        try:
            task = self.codec.decode(record.value, NodeTask)
        except DecodeError as exc:
            try:
                await dead_letter(self.publisher, record, str(exc))
                self.on_dead_letter(record.topic.removeprefix(self.settings.topic_prefix))
            except Exception:
                log.exception("could not dead-letter a task record; its lease will tell")
            return
        await self.executor.submit(task, self._delivery(record, pool), pool)

"""Feeds node tasks from ``linkflow.tasks.<pool>`` to the executor.

A consumer group per engine (``<app>.executor``), so adding a process adds capacity and a dead
one's partitions move to the others. Tasks are read ``read_committed``: a task from an aborted
orchestrator transaction never runs. Offsets are committed automatically: a task skipped by a
crash costs its lease, and one delivered twice is the same attempt, which the executor runs once
per process and the decider accepts once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import NodeTask
from linkflow_stream.core.trace_context import TRACEPARENT, TraceParent
from linkflow_stream.kafka.codec import Codec, DecodeError
from linkflow_stream.kafka.dlq import dead_letter
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.kafka.topics import max_message_bytes
from linkflow_stream.runtime.executor import Executor
from linkflow_stream.settings import Settings
from linkflow_stream.tracing.messaging import Delivery

log = logging.getLogger(__name__)


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
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            *(s.topic(topic_names.tasks(pool)) for pool in s.executor_pools),
            bootstrap_servers=s.bootstrap_servers,
            group_id=s.group("executor"),
            client_id=f"{s.app_id}-executor",
            enable_auto_commit=True,
            auto_commit_interval_ms=int(s.commit_interval_seconds * 1000),
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=int(s.session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(min(3.0, s.session_timeout_seconds / 3) * 1000),
            max_partition_fetch_bytes=max_message_bytes(),
            fetch_max_wait_ms=5,
        )
        await consumer.start()
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="task-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        """Kept alive: an error is logged and the loop goes on (a task it skipped costs a lease)."""
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task consumer failed; going on in 1 s")
                await asyncio.sleep(1.0)

    def _delivery(self, record: ConsumerRecord[bytes, bytes]) -> Delivery | None:
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
            group=self.settings.group("executor"),
            traceparent=TraceParent.parse(headers.get(TRACEPARENT)),
            message_id=message_id.decode(errors="replace") if message_id else None,
        )

    async def _learn(self, values: list[bytes | None]) -> None:
        """Resolve the batch's schema ids before decoding, asking again until the registry answers:
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

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            if self.codec.ids is not None:  # a schema registry: ids to know before decoding
                await self._learn([record.value for records in batches.values() for record in records])
            for records in batches.values():
                for record in records:
                    try:
                        task = self.codec.decode(record.value, NodeTask)
                    except DecodeError as exc:
                        try:
                            await dead_letter(self.publisher, record, str(exc))
                            self.on_dead_letter(record.topic.removeprefix(self.settings.topic_prefix))
                        except Exception:
                            log.exception("could not dead-letter a task record; its lease will tell")
                        continue
                    await self.executor.submit(task, self._delivery(record))

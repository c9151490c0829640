"""Feeds a fold from every partition of a topic, from offset 0, in every instance.

Because each instance reads the whole log, any instance can answer any read, and dropping a
view and reading again from offset 0 rebuilds it: replay is the normal start-up path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.client import AIOKafkaClient

log = logging.getLogger(__name__)

Handler = Callable[[ConsumerRecord[bytes, bytes]], None]


async def topic_partitions(bootstrap_servers: str, topic: str) -> set[int]:
    """The partition numbers of ``topic``, from a fresh metadata fetch (empty if it does not exist)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
    await client.bootstrap()
    try:
        metadata = await client.fetch_all_metadata()
        return set(metadata.partitions_for_topic(topic) or ())
    finally:
        await client.close()


class LogReader:
    """Reads ``topic`` from the beginning and hands each record to ``handle``, forever."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        handle: Handler,
        *,
        on_error: Callable[[ConsumerRecord[bytes, bytes], Exception], Awaitable[None]] | None = None,
        from_beginning: bool = True,
    ) -> None:
        self.from_beginning = from_beginning
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.handle = handle
        self.on_error = on_error
        self.caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._targets: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        self._consumer = consumer
        partitions = await topic_partitions(self.bootstrap_servers, self.topic)
        if not partitions:
            await consumer.stop()
            msg = f"topic {self.topic} does not exist: run `linkflow topics apply`"
            raise RuntimeError(msg)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if self.from_beginning:
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            self._targets = {tp: off for tp, off in ends.items() if off > 0}
        else:
            await consumer.seek_to_end(*tps)
        if not self._targets:
            self.caught_up.set()
        self._task = asyncio.create_task(self._run(), name=f"log-reader:{self.topic}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=2000)
            for tp, records in batches.items():
                for record in records:
                    try:
                        self.handle(record)
                    except Exception as exc:
                        log.exception("view %s could not apply %s@%s", self.topic, tp, record.offset)
                        if self.on_error is not None:
                            await self.on_error(record, exc)
            if not self.caught_up.is_set():
                done = all(await asyncio.gather(*(self._reached(tp, t) for tp, t in self._targets.items())))
                if done:
                    self.caught_up.set()

    async def _reached(self, tp: TopicPartition, target: int) -> bool:
        assert self._consumer is not None
        return bool(await self._consumer.position(tp) >= target)

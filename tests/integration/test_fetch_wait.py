"""Adaptive fetch waits on the real broker: an idle consumer's fetch waits long and a committed
record still ends it at once; a fetch that leaves a paused partition out waits briefly, so the
partition's records are fetched soon after it is resumed. The idle wait here is 30 s, so a record
that arrives within the tests' 10 s bounds was fetched because of the rule, not a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from linkflow_stream.kafka.consumers import committed_reader
from linkflow_stream.kafka.fetch_wait import wait_adaptively

pytestmark = pytest.mark.integration

BUSY_MS = 5
IDLE_MS = 30_000
ARRIVES_WITHIN = 10.0


class Reading:
    """A started reader of two partitions with adaptive waits, consumed by a background task;
    ``waits`` holds the wait of every fetch it sent."""

    def __init__(self, kafka: str, topic: str) -> None:
        self.kafka = kafka
        self.tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        self.consumer = committed_reader(kafka, fetch_max_wait_ms=BUSY_MS)
        self.records: asyncio.Queue[tuple[int, bytes | None]] = asyncio.Queue()
        self.waits: list[int] = []
        self._fetched = asyncio.Event()
        self.take: int | None = None
        """Records one ``getmany`` takes (None: all fetched)."""
        self.released = asyncio.Event()
        """Cleared: the reader takes nothing more until it is set."""
        self.released.set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        assert wait_adaptively(self.consumer, IDLE_MS)
        fetcher: Any = self.consumer._fetcher
        hook = fetcher._get_actions_per_node

        def recorded(assignment: Any) -> Any:
            actions = hook(assignment)
            self.waits.extend(request._max_wait_ms for _, request in actions[0])
            if actions[0]:
                self._fetched.set()
            return actions

        fetcher._get_actions_per_node = recorded
        self.consumer.assign(self.tps)
        await self.consumer.seek_to_end(*self.tps)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            got = await self.consumer.getmany(timeout_ms=100, max_records=self.take)
            for tp, records in got.items():
                for r in records:
                    self.records.put_nowait((tp.partition, r.value))
            if got:  # held after a take (not after an empty poll, or a late record is never taken)
                await self.released.wait()  # while held, what was fetched stays in the fetcher

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()

    async def fetching(self) -> None:
        """Return once a fetch has been sent (the reader is polling the broker)."""
        await asyncio.wait_for(self._fetched.wait(), ARRIVES_WITHIN)


@pytest.fixture
async def reading(kafka: str) -> AsyncIterator[Reading]:
    topic = f"fetch-wait-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    r = Reading(kafka, topic)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def commit_one(kafka: str, tp: TopicPartition, value: bytes) -> None:
    """Write ``value`` to ``tp`` in a transaction: readable to ``read_committed`` at its marker."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=f"fw-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(tp.topic, value, partition=tp.partition)
    finally:
        await producer.stop()


async def test_an_idle_fetch_waits_long_and_a_committed_record_still_ends_it(
    reading: Reading, kafka: str
) -> None:
    await reading.fetching()
    await asyncio.sleep(1.0)  # idle: at a 5 ms wait this would have been about 200 fetches
    assert reading.waits and set(reading.waits) == {IDLE_MS}
    assert len(reading.waits) <= 3  # the first fetch, and one after each position reset at most
    await commit_one(kafka, reading.tps[0], b"one")
    assert await asyncio.wait_for(reading.records.get(), ARRIVES_WITHIN) == (0, b"one")


async def test_a_fetch_that_leaves_a_paused_partition_out_waits_briefly(reading: Reading, kafka: str) -> None:
    await reading.fetching()
    reading.consumer.pause(reading.tps[0])
    # A record for the other partition ends the fetch in flight (it asked for both); the next
    # one leaves the paused partition out.
    await commit_one(kafka, reading.tps[1], b"other")
    assert await asyncio.wait_for(reading.records.get(), ARRIVES_WITHIN) == (1, b"other")
    await commit_one(kafka, reading.tps[0], b"while paused")
    await asyncio.sleep(0.3)
    assert BUSY_MS in reading.waits
    reading.consumer.resume(reading.tps[0])
    # The fetch in flight leaves partition 0 out: at the idle wait it would hold it for 30 s.
    assert await asyncio.wait_for(reading.records.get(), ARRIVES_WITHIN) == (0, b"while paused")


async def test_records_fetched_and_not_yet_taken_make_the_next_fetch_brief(
    reading: Reading, kafka: str
) -> None:
    await reading.fetching()
    reading.take = 1
    reading.released.clear()
    await commit_one(kafka, reading.tps[0], b"taken")
    await commit_one(kafka, reading.tps[0], b"held")
    assert await asyncio.wait_for(reading.records.get(), ARRIVES_WITHIN) == (0, b"taken")
    # "held" stays in the fetcher; after aiokafka's 100 ms grace for it, the fetches that leave
    # partition 0 out go again, and they wait briefly.
    sent = len(reading.waits)
    await asyncio.sleep(0.5)
    assert BUSY_MS in reading.waits[sent:]
    reading.released.set()
    assert await asyncio.wait_for(reading.records.get(), ARRIVES_WITHIN) == (0, b"held")


async def test_a_consumer_without_the_hook_keeps_its_wait() -> None:
    class NoFetcher:
        pass

    assert wait_adaptively(NoFetcher()) is False  # type: ignore[arg-type]

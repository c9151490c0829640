"""The view feeder on the real broker: replay from offset 0, and sync for read-your-writes."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from linkflow_stream.kafka.log_reader import LogReader

pytestmark = pytest.mark.integration


async def test_replays_then_syncs_to_what_was_written_before_the_call(kafka: str) -> None:
    topic = f"i{uuid.uuid4().hex[:8]}.linkflow.events"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await producer.start()
    seen: list[bytes] = []

    def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        seen.append(record.value)

    reader = LogReader(kafka, [topic], handle)
    try:
        for i in range(30):
            await producer.send_and_wait(topic, f"old-{i}".encode(), key=str(i).encode())
        await reader.start()
        await reader.caught_up.wait()
        assert sorted(seen) == sorted(f"old-{i}".encode() for i in range(30)), "replay from offset 0"
        for i in range(5):
            await producer.send_and_wait(topic, f"new-{i}".encode(), key=str(i).encode())
        assert await reader.sync(within=5)
        assert {f"new-{i}".encode() for i in range(5)} <= set(seen), "sync returned before the new records"
    finally:
        await reader.stop()
        await producer.stop()

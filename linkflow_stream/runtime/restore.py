"""Reading a partition's committed state back: the changelog, and the group's input positions.

Both are read only after this instance has claimed the partition's transactional id, which
aborts or completes any transaction a former owner had open; what is read then is final.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from linkflow_stream.core.state import ExecutionState
from linkflow_stream.kafka.codec import Codec
from linkflow_stream.kafka.consumers import committed_reader

log = logging.getLogger(__name__)


class RestoreError(RuntimeError):
    """The changelog could not be read to its end in time."""


async def read_changelog(
    bootstrap_servers: str, topic: str, partition: int, codec: Codec, *, within: float = 120.0
) -> list[ExecutionState]:
    """The latest committed state of every execution in one changelog partition (tombstones
    remove)."""
    latest = await read_latest(bootstrap_servers, topic, partition, within=within)
    await codec.learn(latest.values())
    return [codec.decode(value, ExecutionState) for value in latest.values() if value is not None]


async def read_latest(
    bootstrap_servers: str, topic: str, partition: int, *, within: float = 120.0
) -> dict[bytes, bytes]:
    """The latest committed value of every key of one partition of a compacted topic, read to its
    end (a key whose latest record is a tombstone is left out)."""
    tp = TopicPartition(topic, partition)
    consumer = committed_reader(bootstrap_servers)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        latest: dict[bytes, bytes | None] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while await consumer.position(tp) < end:
            if loop.time() > deadline:
                raise RestoreError(f"{topic}[{partition}] not read to offset {end} within {within}s")
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
            for record in batch.get(tp, []):
                if record.key is not None:
                    latest[record.key] = record.value
        return {key: value for key, value in latest.items() if value is not None}
    finally:
        await consumer.stop()


async def committed_positions(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """Where the group resumes each partition: its committed offset, else the log's start."""
    tps = list(partitions)
    committed = await asyncio.gather(*(consumer.committed(tp) for tp in tps))  # one round trip each
    out = {tp: offset for tp, offset in zip(tps, committed, strict=True) if offset is not None}
    missing = [tp for tp in tps if tp not in out]
    if missing:
        out.update(await consumer.beginning_offsets(missing))
    return out

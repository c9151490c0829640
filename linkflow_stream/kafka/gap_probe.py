"""Whether a jump in a partition's offsets skipped a record a ``read_committed`` reader sees.

Offsets of a topic written with transactions are not contiguous for such a reader: commit and
abort markers take an offset each, and aborted records are hidden. So a jump from ``expected`` to
``got`` is a gap only if a committed record lies between; reading that range as a
``read_committed`` reader settles it. It is rare (only transactional writers leave markers), so
a short-lived consumer per question is cheap enough.
"""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from linkflow_stream.kafka.consumers import committed_reader


async def explained_jump(bootstrap_servers: str, tp: TopicPartition, expected: int, got: int) -> bool:
    """True when no committed record has an offset in ``[expected, got)``."""
    consumer = committed_reader(bootstrap_servers)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, expected)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
            for record in batch.get(tp, []):
                return bool(record.offset >= got)
            if await consumer.position(tp) >= got:
                return True
        return False
    finally:
        await consumer.stop()

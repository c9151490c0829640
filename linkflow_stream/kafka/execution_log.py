"""Reading ``linkflow.events`` as people want it: one run's events (the API's ``/events`` route
and ``?as_of_seq=``, ``linkflow replay execution``), or the log as it grows (``linkflow events
tail``). Readers are ``read_committed``, so an aborted orchestrator batch is never shown.

One run's events live on one partition (the key is the execution id), so only that partition
is read; given when the run was created, reading starts at the first record written a few
minutes before (``offsets_for_times``) instead of at the partition's start.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from aiokafka import ConsumerRecord, TopicPartition

from linkflow_stream.core.clock import to_millis
from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.kafka.codec import Codec
from linkflow_stream.kafka.consumers import LogUnavailable, committed_reader, stop_reader
from linkflow_stream.kafka.metadata import topic_partitions
from linkflow_stream.kafka.partitioning import partition_for

LOOKBACK = timedelta(minutes=5)
"""How far before a run's creation its events are looked for: an event's record timestamp is
the deciding instance's clock, which may run behind the one that created the run."""
READ_SECONDS = 30.0
"""Longest a read of one run's events may take before it gives up (the broker is away)."""


async def _partitions(bootstrap_servers: str, topic: str) -> list[int]:
    found = sorted(await topic_partitions(bootstrap_servers, topic))
    if not found:
        raise LogUnavailable(f"topic {topic} does not exist: run `linkflow topics apply`")
    return found


async def execution_events(
    bootstrap_servers: str,
    topic: str,
    execution_id: str,
    codec: Codec,
    *,
    created_at: datetime | None = None,
    within: float = READ_SECONDS,
) -> list[ExecutionEvent]:
    """Every event of ``execution_id`` up to the log's end now, in log order (a repeated seq
    included). ``created_at`` (when the run was created) lets the read skip older records."""
    key = execution_id.encode()
    partitions = await _partitions(bootstrap_servers, topic)
    tp = TopicPartition(topic, partition_for(key, len(partitions)))
    consumer = committed_reader(bootstrap_servers)
    await consumer.start()
    events: list[ExecutionEvent] = []
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        start = None
        if created_at is not None:
            found = await consumer.offsets_for_times({tp: max(0, to_millis(created_at - LOOKBACK))})
            start = found[tp].offset if found.get(tp) is not None else end
        if start is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while await consumer.position(tp) < end:
            if loop.time() > deadline:
                raise LogUnavailable(f"the events of {execution_id} were not read within {within:g} s")
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
            mine = [r for r in batch.get(tp, []) if r.key == key]
            await codec.learn(r.value for r in mine)  # schema ids new to this process (a registry)
            events += [codec.decode(r.value, ExecutionEvent) for r in mine]
    finally:
        await stop_reader(consumer)
    return events


async def tail(
    bootstrap_servers: str, topic: str, *, execution_id: str | None = None, follow: bool = False
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """The records of the event log from its start (only ``execution_id``'s, if given), up to
    its end now, or, with ``follow``, on as they are written until the caller stops."""
    partitions = await _partitions(bootstrap_servers, topic)
    key = execution_id.encode() if execution_id is not None else None
    numbers = partitions if key is None else [partition_for(key, len(partitions))]
    tps = [TopicPartition(topic, n) for n in numbers]
    consumer = committed_reader(bootstrap_servers)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while True:
            if not follow and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                return
            batch = await consumer.getmany(*tps, timeout_ms=200, max_records=1000)
            for tp in tps:
                for record in batch.get(tp, []):
                    if key is None or record.key == key:
                        yield record
    finally:
        await stop_reader(consumer)

"""Standalone readers: consumers outside any group that see what ``read_committed`` readers see,
from the beginning unless told otherwise, with fetches as large as any record. The views, the
orchestrator's changelog restore, the gap probe and the test helpers all read this way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from linkflow_stream.core.errors import LinkflowError
from linkflow_stream.kafka.metadata import cluster_metadata
from linkflow_stream.kafka.topics import max_message_bytes
from linkflow_stream.settings import Settings


def committed_reader(bootstrap_servers: str, **overrides: Any) -> AIOKafkaConsumer:
    """A not yet started ``read_committed`` consumer with no group; ``overrides`` change any
    setting (the tests read ``read_uncommitted`` on purpose)."""
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": max_message_bytes(),
        **overrides,
    }
    return AIOKafkaConsumer(**settings)


def group_reader(settings: Settings, group_id: str, client: str, **overrides: Any) -> AIOKafkaConsumer:
    """A not yet started ``read_committed`` consumer in ``group_id`` that commits only on purpose
    (in a transaction or after its work is acknowledged), with the session settings every group of
    the engine shares; ``overrides`` change any setting."""
    return committed_reader(
        settings.bootstrap_servers,
        group_id=group_id,
        client_id=f"{settings.app_id}-{client}",
        session_timeout_ms=int(settings.session_timeout_seconds * 1000),
        heartbeat_interval_ms=int(min(3.0, settings.session_timeout_seconds / 3) * 1000),
        **overrides,
    )


async def log_ends(bootstrap_servers: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """The end offset (as ``read_committed`` readers see it) of every partition of ``topics``."""
    metadata = await cluster_metadata(bootstrap_servers)
    partitions = [
        TopicPartition(t, p) for t in topics for p in sorted(metadata.partitions_for_topic(t) or ())
    ]
    if not partitions:
        return {}
    consumer = committed_reader(bootstrap_servers)
    await consumer.start()
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
    finally:
        await stop_reader(consumer)
    return {(tp.topic, tp.partition): offset for tp, offset in ends.items()}


STOP_SECONDS = 5.0
"""Longest ``stop_reader`` waits for a consumer to close: readers that commit nothing are left
behind rather than hold up their caller (a busy machine, a broker away, a Ctrl-C)."""


async def stop_reader(consumer: AIOKafkaConsumer) -> None:
    """Stop a group-less reader. aiokafka 0.14: one stopped before its reset task ran re-raises
    its cancellation; one turn of the loop lets it start."""
    await asyncio.sleep(0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(consumer.stop(), STOP_SECONDS)


class LogUnavailable(LinkflowError):
    """The log could not be read in time; the same read may work later."""

    error_type = "unavailable"
    retryable = True


async def record_at(bootstrap_servers: str, tp: TopicPartition, offset: int, within: float) -> bytes | None:
    """The value of the record at ``offset`` of ``tp``, or ``None`` if none is there (compaction
    removed it, or the offset is past the end). Raises ``LogUnavailable`` if the broker cannot be
    reached or the read takes longer than ``within`` seconds, connecting included."""
    consumer = committed_reader(bootstrap_servers)
    try:
        async with asyncio.timeout(within):
            return await _value_at(consumer, tp, offset)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise LogUnavailable(f"{tp.topic}[{tp.partition}]@{offset} could not be read: {exc!r}") from exc
    finally:
        await stop_reader(consumer)


async def _value_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> bytes | None:
    await consumer.start()
    consumer.assign([tp])
    end = (await consumer.end_offsets([tp]))[tp]
    if offset >= end:
        return None
    consumer.seek(tp, offset)
    while await consumer.position(tp) < end:
        batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
        for record in batch.get(tp, []):
            return record.value if record.offset == offset else None
    return None

"""The execution queue as operators see it (``GET /api/admin/queue/status``).

Start requests wait on ``linkflow.requests.{high,normal,low}``. What is queued, running and
lagging comes from two places: the status view (accepted but not started, started but not ended)
and Kafka itself (the orchestrator group's committed offsets against the topics' end offsets).
The group's offsets follow the positions the orchestrator commits on its changelog within about
half a second (ADR 0061), so a start decided a moment ago may still count as lag.
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import Priority
from linkflow_stream.kafka.gap_probe import holding_records
from linkflow_stream.kafka.log_reader import LogReader
from linkflow_stream.settings import Settings
from projections.status import StatusView


async def consumer_lag(settings: Settings, ends: dict[TopicPartition, int]) -> dict[str, int]:
    """Records not yet consumed by the orchestrator, per topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(
            settings.group("orchestrator"), partitions=list(ends)
        )
    finally:
        await admin.close()
    spans = {}
    for tp, end in ends.items():
        done = committed.get(tp)
        spans[tp] = (done.offset if done is not None and done.offset >= 0 else 0, end)
    # a transaction's commit marker takes an offset that no record is at, and the orchestrator
    # commits the offset after the last record it decided: counted as lag, it never went to 0 at
    # idle. A gap that holds no committed record is none.
    holding = await holding_records(settings.bootstrap_servers, spans)
    lag: dict[str, int] = {}
    for tp, (offset, end) in spans.items():
        lag[tp.topic] = lag.get(tp.topic, 0) + (max(0, end - offset) if tp in holding else 0)
    return lag


async def queue_status(settings: Settings, status: StatusView, requests: LogReader) -> dict[str, Any]:
    ends = {
        tp: off
        for tp, off in (await requests.end_offsets()).items()
        if tp.topic.removeprefix(settings.topic_prefix) in topic_names.REQUESTS
    }
    lag = await consumer_lag(settings, ends)
    counts = status.queue_counts()
    queues = {}
    for priority in Priority:
        topic = settings.topic(topic_names.requests(priority))
        queues[priority.value] = {**counts[priority.value], "topic": topic, "consumer_lag": lag.get(topic, 0)}
    return {
        "queues": queues,
        "queued": sum(q["queued"] for q in queues.values()),
        "running": sum(q["running"] for q in queues.values()),
        "consumer_lag": sum(q["consumer_lag"] for q in queues.values()),
        "order": [p.value for p in Priority],
    }

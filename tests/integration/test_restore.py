"""Restoring a partition on the real broker (ADR 0039): the changelog holds a snapshot of each run
now and then, not its every step, and a new owner folds the run's committed events after the
snapshot onto it, so it holds exactly the state the former owner decided from."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
from aiokafka import TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.messages import NodeResult, Priority
from linkflow_stream.core.state import ExecutionStatus
from linkflow_stream.dev.testing import read_topic
from linkflow_stream.kafka.topics import apply_topics, max_message_bytes
from linkflow_stream.kafka.transactions import Fenced, KafkaTransactionalProducer
from linkflow_stream.runtime import partition as partition_module
from linkflow_stream.runtime.partition import Partition, Tail
from linkflow_stream.runtime.restore import SNAPSHOT_OFFSET, read_states
from linkflow_stream.settings import Settings
from tests.unit.test_partition_batch import CODEC, record, start_record, stepper

pytestmark = pytest.mark.integration
NOW = int(time.time() * 1000)
"""Records carry real times here: the broker refuses timestamps far in the future (``T0``)."""

CHAIN = [
    {
        "id": f"h{i}",
        "type": "http",
        "config": {"url": "https://example.com/x", "method": "GET"},
        **({"depends_on": [f"h{i - 1}"]} if i else {}),
    }
    for i in range(8)
]


def result(node: int) -> NodeResult:
    return NodeResult(
        execution_id="e1",
        node_id=f"h{node}",
        attempt=1,
        ok=True,
        output={"node": node},
        started_at=from_millis(NOW),
        finished_at=from_millis(NOW),
    )


async def owner(kafka: str, settings: Settings, positions: dict[TopicPartition, int]) -> Partition:
    """Partition 0 of ``settings``' topics under its transactional id, claimed and restored."""
    producer = KafkaTransactionalProducer(
        kafka, f"{settings.topic_prefix}orchestrator.0", max_message_bytes()
    )
    await producer.start()
    restored = await read_states(
        kafka, settings.topic(topic_names.STATE), settings.topic(topic_names.EVENTS), 0, CODEC
    )
    p = Partition(
        0,
        producer,
        stepper(),
        CODEC,
        topic=settings.topic,
        group_id=f"{settings.topic_prefix}orchestrator",
        finished_ttl_seconds=300,
    )
    tails = {
        r.state.id: Tail(r.events_from, r.snapshot_bytes, r.events_since, r.bytes_since)
        for r in restored.runs
        if r.events_from is not None
    }
    p.load(restored.states, positions, events_end=restored.events_end, tails=tails)
    return p


async def test_a_new_owner_restores_snapshot_plus_events_and_carries_on(
    kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(partition_module, "SNAPSHOT_EVENTS_MIN", 5)
    monkeypatch.setattr(partition_module, "SNAPSHOT_EVENTS_PER_NODE", 0)
    settings = Settings(bootstrap_servers=kafka, topic_prefix=f"r{uuid.uuid4().hex[:8]}.")
    await apply_topics(settings)
    requests = TopicPartition(settings.topic(topic_names.requests(Priority.NORMAL)), 0)
    results = TopicPartition(settings.topic(topic_names.RESULTS), 0)
    first = await owner(kafka, settings, {requests: 0, results: 0})
    owners = [first]
    try:
        await carry_on(kafka, settings, owners, requests, results)
    finally:
        for p in owners:
            await p.producer.stop()


async def carry_on(
    kafka: str, settings: Settings, owners: list[Partition], requests: TopicPartition, results: TopicPartition
) -> None:
    first = owners[0]

    start = dataclasses.replace(start_record(0, CHAIN), topic=requests.topic, timestamp=NOW)
    await first.run_batch([start], NOW)
    for node in range(7):  # one result a batch, as tasks finish one by one
        await first.run_batch(
            [record(results, node, CODEC.encode(result(node)), ms=NOW + node + 1)], NOW + node + 1
        )
    decided = first.states["e1"]
    assert decided.status is ExecutionStatus.RUNNING and decided.seq == 2 + 2 * 7 + 1

    changelog = [
        r
        for r in await read_topic(kafka, settings.topic(topic_names.STATE))
        if r.key == b"e1" and r.partition == 0
    ]
    assert 1 < len(changelog) < 8, "a snapshot at the start and every 5 events, not one per step"
    assert all(dict(r.headers).get(SNAPSHOT_OFFSET) for r in changelog)
    assert CODEC.decode(changelog[-1].value, type(decided)).seq < decided.seq, "events follow it"

    second = await owner(kafka, settings, {requests: 1, results: 7})  # fences the first
    owners.append(second)
    assert second.states == {"e1": decided}
    with pytest.raises(Fenced):
        await first.run_batch([record(results, 7, CODEC.encode(result(7)), ms=NOW + 9)], NOW + 9)
    await second.run_batch([record(results, 7, CODEC.encode(result(7)), ms=NOW + 9)], NOW + 9)
    assert second.states["e1"].status is ExecutionStatus.SUCCESS
    third = await owner(kafka, settings, {requests: 1, results: 8})
    owners.append(third)
    assert third.states["e1"].status is ExecutionStatus.SUCCESS
    assert third.states["e1"].seq == decided.seq + 2

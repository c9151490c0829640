"""The start intake in-process on the real broker: a batch whose transaction aborts is read again
(a redelivery) and still becomes exactly one start request per record, the aborted attempt stays
invisible to ``read_committed`` readers, and the intake's offsets move only with its output."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.core.messages import StartExecution
from linkflow_stream.core.start_request import Origin, StartRequest, position_id
from linkflow_stream.core.workflow import NodeDefinition, WorkflowDefinition
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.metadata import topic_partitions
from linkflow_stream.kafka.records import ProducerRecord
from linkflow_stream.kafka.topics import apply_topics, max_message_bytes
from linkflow_stream.kafka.transactions import CommitFailed, KafkaTransactionalProducer
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.start_intake import StartIntake
from linkflow_stream.settings import Settings
from projections.workflows import WorkflowView

pytestmark = pytest.mark.integration

CODEC = default_codec()
REQUESTS = "linkflow.requests.normal"


class AbortsFirst(KafkaTransactionalProducer):
    """Writes the first batch inside a transaction and then aborts it, as a crash before the
    commit would; every later batch commits."""

    aborted = 0
    aborted_starts = 0
    """Start requests written by the aborted transaction."""

    async def commit(
        self, records: Sequence[ProducerRecord], offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        if AbortsFirst.aborted == 0 and records:
            AbortsFirst.aborted += 1
            AbortsFirst.aborted_starts = sum(".requests." in r.topic for r in records)
            producer = self._producer
            await producer.begin_transaction()
            for r in records:
                await producer.send_and_wait(r.topic, r.value, key=r.key, headers=r.headers)
            await producer.abort_transaction()
            raise CommitFailed("aborted on purpose")
        await super().commit(records, offsets, group_id)


async def read(settings: Settings, logical: str, isolation_level: str) -> list[Any]:
    topic = settings.topic(logical)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        isolation_level=isolation_level,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for p in sorted(await topic_partitions(settings.bootstrap_servers, topic))
        ]
        assert partitions, f"{topic} has no partitions"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        out = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


async def test_an_aborted_batch_is_read_again_and_starts_each_run_once(kafka: str) -> None:
    settings = Settings(bootstrap_servers=kafka, topic_prefix=f"t{uuid.uuid4().hex[:10]}.")
    await apply_topics(settings)
    workflows = WorkflowView()
    workflows.apply(
        WorkflowDefinition(
            id="wf",
            nodes=(NodeDefinition(id="a", type="transform", config={"expression": "1"}),),
            created_at=now(),
        )
    )

    async def no_run(_execution_id: str) -> dict[str, Any] | None:
        return None

    async def synced(_within: float) -> bool:
        return True

    AbortsFirst.aborted = 0
    intake = StartIntake(
        settings,
        CODEC,
        workflows,
        no_run,
        synced,
        Metrics(active=lambda: 0),
        producer_factory=lambda n: AbortsFirst(kafka, f"{settings.group('intake')}.{n}", max_message_bytes()),
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(
                settings.topic(topic_names.START),
                CODEC.encode(StartRequest(workflow_id=name, input={"i": i})),
                key=b"same",
            )
            for i, name in enumerate(("wf", "wf", "nope", "wf"))
        ]
    finally:
        await producer.stop()
    await intake.start()
    try:
        for _ in range(150):
            if len(await read(settings, REQUESTS, "read_committed")) >= 3:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # anything more would show up by now
        committed = await read(settings, REQUESTS, "read_committed")
    finally:
        await intake.stop()

    assert AbortsFirst.aborted == 1
    expected = [position_id(Origin(m.topic, m.partition, m.offset, m.timestamp)) for m in sent]
    starts = [CODEC.decode(r.value, StartExecution) for r in committed]
    assert sorted(s.execution_id for s in starts) == sorted([expected[0], expected[1], expected[3]])
    assert sorted(s.input["i"] for s in starts) == [0, 1, 3]
    everything = await read(settings, REQUESTS, "read_uncommitted")
    assert AbortsFirst.aborted_starts >= 1
    assert len(everything) == 3 + AbortsFirst.aborted_starts, "the aborted attempt's starts stay invisible"
    letters = await read(settings, topic_names.DLQ, "read_committed")
    assert [dict(r.headers)["dlq_reason"].decode() for r in letters] == [
        "unknown_workflow: workflow 'nope' is not registered"
    ]
    group = AIOKafkaConsumer(
        bootstrap_servers=kafka, group_id=settings.group("intake"), enable_auto_commit=False
    )
    await group.start()
    try:
        tp = TopicPartition(settings.topic(topic_names.START), sent[0].partition)
        assert await group.committed(tp) == sent[-1].offset + 1
    finally:
        await group.stop()

"""The dead-letter path: a record that cannot be decoded or decided goes to ``linkflow.dlq`` with
its origin and the reason in headers. Nothing is dropped silently, and the loop goes on.

The orchestrator writes its dead letters inside the batch's transaction, so a poison input's
offset and its dead letter commit together; ``linkflow.dlq`` takes records as large as any input
topic plus these headers.
"""

from __future__ import annotations

import logging

from aiokafka import ConsumerRecord

from linkflow_stream.core import topic_names
from linkflow_stream.kafka.publisher import Publisher
from linkflow_stream.kafka.records import ProducerRecord

log = logging.getLogger(__name__)

MAX_REASON_BYTES = 4000


def dlq_headers(topic: str, partition: int, offset: int, reason: str) -> list[tuple[str, bytes]]:
    return [
        # backslashreplace: a reason quoting a lone surrogate from a JSON record still encodes
        ("dlq_reason", reason.encode(errors="backslashreplace")[:MAX_REASON_BYTES]),
        ("dlq_topic", topic.encode()),
        ("dlq_partition", str(partition).encode()),
        ("dlq_offset", str(offset).encode()),
    ]


def dead_letter_record(record: ConsumerRecord[bytes, bytes], reason: str, dlq_topic: str) -> ProducerRecord:
    """``record`` as it came, bound for ``dlq_topic`` (the real name) with why."""
    log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
    return ProducerRecord(
        topic=dlq_topic,
        key=record.key,
        value=record.value,
        headers=dlq_headers(record.topic, record.partition, record.offset, reason),
    )


async def dead_letter(publisher: Publisher, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
    """Outside a transaction (the executor's task stream): publish the dead letter and wait."""
    log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
    await publisher.send_raw(
        topic_names.DLQ,
        record.key,
        record.value,
        dlq_headers(record.topic, record.partition, record.offset, reason),
    )

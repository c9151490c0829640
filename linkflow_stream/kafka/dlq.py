"""The dead-letter path: a record that cannot be decoded or processed goes to ``linkflow.dlq``
with its origin and the reason in headers. Nothing is dropped silently, and the agent goes on."""

from __future__ import annotations

import logging

from linkflow_stream.core import topic_names
from linkflow_stream.kafka.publisher import Publisher

log = logging.getLogger(__name__)


async def dead_letter(
    publisher: Publisher,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
) -> None:
    log.warning("dead-lettering %s[%d]@%d: %s", topic, partition, offset, reason)
    headers = [
        ("dlq_reason", reason.encode()[:4000]),
        ("dlq_topic", topic.encode()),
        ("dlq_partition", str(partition).encode()),
        ("dlq_offset", str(offset).encode()),
    ]
    await publisher.send_raw(topic_names.DLQ, key, value, headers)

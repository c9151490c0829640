"""Records as Kafka carries them: encoded value, UTF-8 key, CloudEvents headers, and the size
rule that decides, before anything is sent, whether the broker will take one.

Checking size here instead of catching the producer's error keeps a transaction clean: a record
refused after it joined a transaction would doom the whole batch; refused before, it fails only
the node or input that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import to_millis
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.kafka.codec import Codec, cloudevent_headers
from linkflow_stream.kafka.topics import load_specs

SOURCE = "/linkflow/engine"
BROKER_DEFAULT_MAX_BYTES = 1_048_588
"""Kafka's default ``max.message.bytes`` for a topic that sets none (1 MiB + 12)."""
RECORD_OVERHEAD_BYTES = 512
"""Room for the record batch header and record framing around key, value and headers."""


@dataclass(frozen=True)
class ProducerRecord:
    """One record ready for a producer: the real topic name and bytes."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None = None
    partition: int | None = None
    """Set where the partition must not depend on the partitioner (the state changelog)."""

    @property
    def size(self) -> int:
        """An upper estimate of the record's size on the wire."""
        headers = sum(len(k) + len(v) for k, v in self.headers)
        return len(self.key or b"") + len(self.value or b"") + headers + RECORD_OVERHEAD_BYTES


@cache
def topic_limits() -> dict[str, int]:
    """``max.message.bytes`` of every declared topic, by logical name."""
    return {s.name: s.max_message_bytes or BROKER_DEFAULT_MAX_BYTES for s in load_specs()}


def limit_of(logical_topic: str) -> int:
    """The largest record ``logical_topic`` takes; a task topic outside the spec file takes the
    default pool's."""
    limits = topic_limits()
    if logical_topic in limits:
        return limits[logical_topic]
    if logical_topic.startswith(topic_names.TASKS_PREFIX):
        return limits.get(topic_names.tasks(topic_names.DEFAULT_POOL), BROKER_DEFAULT_MAX_BYTES)
    return BROKER_DEFAULT_MAX_BYTES


def encode(codec: Codec, outgoing: Outgoing, topic: str, partition: int | None = None) -> ProducerRecord:
    """``outgoing`` as bytes for the real topic name ``topic`` (for ``partition``; ``None``: the
    key's)."""
    headers = cloudevent_headers(
        outgoing.ce_type,
        SOURCE,
        outgoing.key,
        ce_id=outgoing.ce_id,
        time=outgoing.time,
        extra=outgoing.headers,
    )
    return ProducerRecord(
        topic=topic,
        key=outgoing.key.encode(),
        value=codec.encode(outgoing.record, topic),
        headers=headers,
        timestamp_ms=to_millis(outgoing.time) if outgoing.time else None,
        partition=partition,
    )

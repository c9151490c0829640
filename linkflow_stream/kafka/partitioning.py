"""Which partition a key lives on: the one rule every producer and the state table share.

All producers here (the publisher, Faust's producer) use Kafka's default partitioner, murmur2 of
the key bytes, so an execution's requests, commands, results, events and state all land on the
same partition number of their co-partitioned topics.
"""

from __future__ import annotations

from typing import Any

import faust
from aiokafka.partitioner import DefaultPartitioner


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partition of ``key`` among ``partitions`` partitions."""
    return int(DefaultPartitioner()(key, list(range(partitions)), list(range(partitions))))


class ExecutionTable(faust.Table[bytes, bytes | None]):
    """A Faust table whose changelog partition is computed from the key, not from the event
    being processed, so one batch may store states of several partitions, and writes need no
    producer metadata."""

    def partition_for_key(self, key: Any) -> int:
        assert self.partitions is not None, "the engine always sets the table's partition count"
        return partition_for(key, self.partitions)

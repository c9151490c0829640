"""Which partition a key lives on: Kafka's default partitioner (murmur2 of the key bytes), the
rule every producer here uses, so an execution's requests, commands, results, events and state
all share one partition number of their co-partitioned topics."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partition of ``key`` among ``partitions`` partitions."""
    return int(DefaultPartitioner()(key, list(range(partitions)), list(range(partitions))))

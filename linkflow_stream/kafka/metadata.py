"""What the broker says exists: one fresh metadata fetch, for the readers that must know a
topic's partitions (the views) and the pools that exist (registration, dispatch)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata


async def cluster_metadata(bootstrap_servers: str) -> ClusterMetadata:
    """Every topic and partition the broker knows now, from a fresh fetch."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
    await client.bootstrap()
    try:
        return await client.fetch_all_metadata()
    finally:
        await client.close()


async def topic_partitions(bootstrap_servers: str, topic: str) -> set[int]:
    """The partition numbers of ``topic`` (empty if it does not exist)."""
    return set((await cluster_metadata(bootstrap_servers)).partitions_for_topic(topic) or ())


async def cluster_id(bootstrap_servers: str) -> str:
    """The cluster's id: it changes when the broker's data is formatted anew, which tells a
    durable view that the log it folded is gone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        return str((await admin.describe_cluster()).get("cluster_id") or "unknown")
    finally:
        await admin.close()

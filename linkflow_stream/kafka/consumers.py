"""Standalone readers: consumers outside any group that see what ``read_committed`` readers see,
from the beginning unless told otherwise, with fetches as large as any record. The views, the
orchestrator's changelog restore, the gap probe and the test helpers all read this way."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

from linkflow_stream.kafka.topics import max_message_bytes


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

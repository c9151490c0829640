"""Which task pools exist: a pool is a ``linkflow.tasks.<pool>`` topic on the broker.

Registration refuses a workflow whose task node names a pool without a topic, and the
orchestrator fails such a node (a topic deleted since) instead of waiting on a send that can
never succeed. The answer comes from the broker's metadata, cached briefly and fetched again on
a miss, so a pool created a moment ago is found.
"""

from __future__ import annotations

import asyncio
import time

from linkflow_stream.core import topic_names
from linkflow_stream.kafka.metadata import cluster_metadata
from linkflow_stream.settings import Settings

FRESH_SECONDS = 10.0
"""A cached answer younger than this is trusted for pools it lists."""
MISS_REFRESH_SECONDS = 1.0
"""A pool missing from the cache is looked up again at most this often."""


class TaskPools:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._prefix = settings.topic(topic_names.tasks(""))
        self._known: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def names(self) -> frozenset[str]:
        """The pools that exist, from metadata no older than ``FRESH_SECONDS``."""
        if time.monotonic() - self._fetched_at > FRESH_SECONDS:
            await self._refresh()
        return self._known

    async def exists(self, pool: str) -> bool:
        if pool in await self.names():
            return True
        if time.monotonic() - self._fetched_at > MISS_REFRESH_SECONDS:
            await self._refresh()
        return pool in self._known

    async def _refresh(self) -> None:
        async with self._lock:
            metadata = await cluster_metadata(self.settings.bootstrap_servers)
            self._known = frozenset(
                t.removeprefix(self._prefix) for t in metadata.topics() if t.startswith(self._prefix)
            )
            self._fetched_at = time.monotonic()

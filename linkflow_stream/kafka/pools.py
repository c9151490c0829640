"""Which task pools exist: a pool is declared by a ``[[pool]]`` of ``topics/topics.toml`` and
served by its three topics ``linkflow.tasks.<pool>.{high,normal,low}`` on the broker (ADR 0028).

Registration refuses a workflow whose task node names a pool that is not declared or whose topics
are missing (``linkflow topics apply`` makes them), and the orchestrator fails such a node (a
topic deleted since) instead of waiting on a send that can never succeed. The broker's answer
comes from its metadata, cached briefly and fetched again on a miss, so a pool applied a moment
ago is found.
"""

from __future__ import annotations

import asyncio
import time

from linkflow_stream.core import topic_names
from linkflow_stream.kafka.metadata import cluster_metadata
from linkflow_stream.kafka.topics import load_pools
from linkflow_stream.settings import Settings

FRESH_SECONDS = 10.0
"""A cached answer younger than this is trusted for pools it lists."""
MISS_REFRESH_SECONDS = 1.0
"""A pool missing from the cache is looked up again at most this often."""


class TaskPools:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.declared = frozenset(load_pools())
        """The pools ``topics/topics.toml`` declares."""
        self._known: frozenset[str] = frozenset()
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def names(self) -> frozenset[str]:
        """The declared pools whose task topics exist, from metadata no older than ``FRESH_SECONDS``."""
        if time.monotonic() - self._fetched_at > FRESH_SECONDS:
            await self._refresh()
        return self._known

    async def exists(self, pool: str) -> bool:
        if pool not in self.declared:
            return False
        if pool in await self.names():
            return True
        if time.monotonic() - self._fetched_at > MISS_REFRESH_SECONDS:
            await self._refresh()
        return pool in self._known

    async def _refresh(self) -> None:
        async with self._lock:
            topics = (await cluster_metadata(self.settings.bootstrap_servers)).topics()
            self._known = frozenset(
                pool
                for pool in self.declared
                if all(self.settings.topic(t) in topics for t in topic_names.pool_tasks(pool))
            )
            self._fetched_at = time.monotonic()

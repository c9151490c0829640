"""The orchestrator group's committed offsets, following the positions on the changelog.

Since ADR 0061 a batch's transaction commits its input positions on the changelog, not as the
group's offsets. Operators still read the group's offsets (the queue status's lag, Kafka UI,
``kafka-consumer-groups``), so a process commits them outside the transaction every
``EVERY_SECONDS``, for the partitions it owns whose positions moved. These commits are for
observers only: they never run ahead of what committed, and a claim resumes from the larger of
them and the changelog (``positions.resume_from``), so one lost, late or refused (the group
rebalanced) changes nothing but how soon the lag reads 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

EVERY_SECONDS = 0.5
"""How often moved positions are committed as the group's offsets."""
COMMIT_TIMEOUT_SECONDS = 5.0
"""Longest one commit may take (aiokafka retries a broker away for ever); the next tick retries."""


class GroupOffsets:
    """Commits ``positions()`` (every owned input's next offset) as the group's offsets when they
    moved; ``run`` is a task of its own beside the fetch loop."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        positions: Callable[[], Mapping[TopicPartition, int]],
        *,
        every_seconds: float = EVERY_SECONDS,
    ) -> None:
        self.consumer = consumer
        self.positions = positions
        self.every_seconds = every_seconds
        self.committed: dict[TopicPartition, int] = {}
        """What this process last committed, per input."""
        self._failing = False

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_seconds)
            try:
                await self.commit()
            except Exception:  # a bug here must not end the lag's updates for good
                log.exception("committing the group's offsets failed; trying again at the next tick")

    async def commit(self) -> None:
        """Commit the owned positions that moved since the last commit; a failure is logged (once
        a streak) and left to the next tick."""
        assigned = self.consumer.assignment()
        moved = {
            tp: offset
            for tp, offset in self.positions().items()
            if tp in assigned and self.committed.get(tp) != offset
        }
        if not moved:
            return
        try:
            await asyncio.wait_for(self.consumer.commit(moved), COMMIT_TIMEOUT_SECONDS)
        except (KafkaError, TimeoutError) as exc:
            if not self._failing:
                log.warning("group offsets not committed (%r); the lag shown waits for the next try", exc)
            self._failing = True
            return
        if self._failing:
            log.info("group offsets committed again")
        self._failing = False
        self.committed.update(moved)

"""The group's offsets following the changelog's positions (ADR 0061), with a stand-in consumer;
tests/e2e/test_input_positions.py runs it on the real broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from linkflow_stream.runtime.group_offsets import GroupOffsets

A = TopicPartition("requests", 0)
B = TopicPartition("results", 0)
C = TopicPartition("requests", 1)


class Consumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.commits: list[dict[TopicPartition, int]] = []
        self.fail = 0
        self.committed = asyncio.Event()

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.fail:
            self.fail -= 1
            raise CommitFailedError("the group rebalanced")
        self.commits.append(dict(offsets))
        self.committed.set()


async def test_only_moved_positions_of_assigned_inputs_are_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = Consumer({A, B})
    positions = {A: 3, B: 0, C: 9}  # C: a partition no longer assigned here
    follower = GroupOffsets(consumer, lambda: positions)  # type: ignore[arg-type]
    await follower.commit()
    assert consumer.commits == [{A: 3, B: 0}]
    await follower.commit()
    assert len(consumer.commits) == 1, "nothing moved: no request"
    positions[A] = 5
    consumer.fail = 2
    await follower.commit()
    await follower.commit()
    assert len(consumer.commits) == 1
    assert [r.levelname for r in caplog.records] == ["WARNING"], "logged once a streak"
    await follower.commit()
    assert consumer.commits[-1] == {A: 5}, "a refused commit is tried again at the next tick"


async def test_run_commits_at_each_tick() -> None:
    consumer = Consumer({A})
    positions: dict[TopicPartition, Any] = {A: 1}
    follower = GroupOffsets(consumer, lambda: positions, every_seconds=0.01)  # type: ignore[arg-type]

    task = asyncio.create_task(follower.run())
    await asyncio.wait_for(consumer.committed.wait(), 5)
    consumer.committed.clear()
    positions[A] = 2
    await asyncio.wait_for(consumer.committed.wait(), 5)
    task.cancel()
    assert consumer.commits == [{A: 1}, {A: 2}]

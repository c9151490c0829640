"""Weighted turns between priorities (ADR 0029): the pure share of a batch, and the orchestrator
worker that takes its batches by it and pauses a long queue's topic alone. Without Kafka; the
same loop runs on the real broker in tests/e2e/test_priority.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.messages import Priority, StartExecution
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.orchestrator import BACKLOG_BATCHES, Orchestrator, _Worker
from linkflow_stream.runtime.priority import turns
from linkflow_stream.settings import Settings
from tests.unit.test_partition_batch import (
    CODEC,
    COMMANDS,
    RESULTS,
    T0,
    TRANSFORM,
    FakeConsumer,
    FakeProducer,
    partition,
    record,
    stepper,
    workflow,
)

W = (8, 3, 1)
HIGH, NORMAL, LOW = (TopicPartition(topic_names.requests(p), 0) for p in Priority)


# -- the pure share ------------------------------------------------------------------------------
def test_high_alone_fills_the_room_and_a_lower_class_alone_its_weighted_share() -> None:
    assert turns([1000, 0, 0], [False, False, False], 256, W) == [256, 0, 0]
    assert turns([0, 1000, 0], [False, False, False], 256, W) == [0, 64, 0]
    assert turns([0, 0, 1000], [False, False, False], 256, W) == [0, 0, 21]
    assert turns([0, 10, 0], [False, False, False], 256, W) == [0, 10, 0]


def test_all_flooded_the_batch_is_shared_8_3_1() -> None:
    assert turns([1000, 1000, 1000], [True, True, True], 240, W) == [160, 60, 20]
    assert turns([0, 1000, 1000], [False, True, True], 240, W) == [0, 60, 20]


def test_a_trickle_of_high_keeps_lower_batches_in_proportion_to_it() -> None:
    # 5 high waiting: one weight unit of high, so one low and three normal beside them
    assert turns([5, 1000, 1000], [True, True, True], 256, W) == [5, 3, 1]
    # 80 high waiting: ten units, ten low
    assert turns([80, 0, 1000], [True, False, True], 256, W) == [80, 0, 10]
    # high active (a run of it took an input a moment ago) but none waiting: one low a batch
    assert turns([0, 0, 1000], [True, False, False], 256, W) == [0, 0, 1]
    # normal is the highest about: low follows normal's demand
    assert turns([0, 6, 1000], [False, True, True], 256, W) == [0, 6, 2]


def test_a_small_room_is_not_overfilled_by_the_lower_classes_weights() -> None:
    # hypothesis found it: low's weighted share (2 of 3) plus one each for high and normal made 4
    assert turns([1, 1, 2], [False, False, False], 3, (1, 1, 4)) == [1, 1, 1]


def test_a_class_with_any_waiting_gets_at_least_one_so_none_starves() -> None:
    assert turns([1000, 1000, 1000], [True, True, True], 12, (100, 10, 1)) == [10, 1, 1]
    assert turns([0, 0, 3], [True, True, False], 0, W) == [0, 0, 1]


def test_nothing_waiting_takes_nothing_and_bad_weights_are_refused() -> None:
    assert turns([0, 0, 0], [True, True, True], 256, W) == [0, 0, 0]
    with pytest.raises(ValueError, match="at least 1"):
        turns([1, 1, 1], [True, True, True], 10, (8, 0, 1))
    with pytest.raises(ValueError, match="same classes"):
        turns([1, 1], [True, True, True], 10, W)


counts = st.lists(st.integers(0, 2000), min_size=3, max_size=3)
flags = st.lists(st.booleans(), min_size=3, max_size=3)
weights = st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 20))


@given(counts, flags, st.integers(0, 600), weights)
def test_turns_properties(waiting: list[int], active: list[bool], room: int, w: tuple[int, int, int]) -> None:
    take = turns(waiting, active, room, w)
    on = [a or n > 0 for a, n in zip(active, waiting, strict=True)]
    # never more than waiting
    assert all(0 <= t <= n for t, n in zip(take, waiting, strict=True))
    # no starvation: every class with work gets a turn
    assert all(t >= 1 for t, n in zip(take, waiting, strict=True) if n > 0)
    # the room is kept, up to the one request each class is always given
    assert sum(take) <= max(room, sum(1 for n in waiting if n > 0))
    for i in (1, 2):
        # a class below high never takes more than its weighted share of the room (or one)
        assert take[i] <= max(1, room * w[i] // sum(w))
        # below a higher class about, it follows that class's demand in weight units
        if any(on[:i]):
            top = on.index(True)
            assert take[i] <= max(1, -(-waiting[top] // w[top]) * w[i])
    # high is work-conserving: it takes what it has waiting or what the others left
    assert take[0] == waiting[0] or sum(take) >= room


# -- the worker ----------------------------------------------------------------------------------
def start_at(tp: TopicPartition, offset: int, execution_id: str) -> Any:
    request = StartExecution(
        execution_id=execution_id,
        workflow=workflow(TRANSFORM),
        input={"x": 1},
        priority=Priority(tp.topic.rsplit(".", 1)[1]),
        requested_at=from_millis(T0),
    )
    return record(tp, offset, CODEC.encode(request), key=execution_id)


async def idle_worker(batch_max: int = 64) -> tuple[Orchestrator, _Worker]:
    """An orchestrator owning partition 0 through a fake producer and consumer, and its worker
    stopped, so a test drives ``_take`` itself."""
    producer = FakeProducer()
    settings = Settings(orchestrator_batch_max=batch_max)
    orch = Orchestrator(
        settings, CODEC, stepper(), Metrics(active=lambda: 0), producer_factory=lambda _n: producer
    )
    p = partition(producer)
    p.load([], {HIGH: 0, NORMAL: 0, LOW: 0, RESULTS: 0, COMMANDS: 0})
    orch.partitions[0] = p
    orch._consumer = FakeConsumer(orch._input_partitions(0))  # type: ignore[assignment]
    worker = _Worker(orch, 0)
    worker.task.cancel()
    await asyncio.gather(worker.task, return_exceptions=True)
    orch._workers[0] = worker
    return orch, worker


async def test_a_batch_takes_waiting_high_requests_first_and_only_lows_share_beside_them() -> None:
    orch, worker = await idle_worker(batch_max=64)
    worker.offer([start_at(LOW, i, f"low{i}") for i in range(500)])
    worker.offer([start_at(HIGH, i, f"high{i}") for i in range(3)])
    batch = worker._take(orch.partitions[0])
    topics = [r.topic for r in batch]
    assert topics == [HIGH.topic] * 3 + [LOW.topic], "high first, one low beside a trickle of high"
    # high stays active for a moment after its last input: low is still held to one a batch
    batch = worker._take(orch.partitions[0])
    assert [(r.topic, r.offset) for r in batch] == [(LOW.topic, 1)]
    # once high has not been seen for a while, low takes its share of a batch: 64 // 12
    orch.seen.clear()
    batch = worker._take(orch.partitions[0])
    assert [r.offset for r in batch] == list(range(2, 2 + 64 // 12)), "in offset order"


async def test_a_high_request_waiting_on_another_partition_holds_low_back_here_too() -> None:
    orch, worker = await idle_worker(batch_max=64)
    other = _Worker(orch, 1)
    other.task.cancel()
    await asyncio.gather(other.task, return_exceptions=True)
    orch._workers[1] = other
    other.offer([start_at(TopicPartition(HIGH.topic, 1), 0, "high-elsewhere")])
    worker.offer([start_at(LOW, i, f"low{i}") for i in range(500)])
    assert len(worker._take(orch.partitions[0])) == 1


async def test_results_of_a_high_run_keep_high_active_and_come_in_offset_order() -> None:
    orch, worker = await idle_worker(batch_max=64)
    p = orch.partitions[0]
    await p.run_batch([start_at(HIGH, 0, "h0")], T0)  # a started high run, now held in p.states
    orch.seen.clear()
    results = [record(RESULTS, i, b"x", key="h0") for i in range(3)]
    worker.offer(results)
    worker.offer([start_at(LOW, i, f"low{i}") for i in range(500)])
    batch = worker._take(p)
    assert batch[:3] == results, "commands and results before lower requests, in offset order"
    assert [r.topic for r in batch[3:]] == [LOW.topic], "a high run's result makes high active"


async def test_a_batch_of_low_requests_is_cut_short_when_a_high_one_arrives_and_the_rest_waits() -> None:
    orch, worker = await idle_worker(batch_max=64)
    p = orch.partitions[0]
    lows = [start_at(LOW, i, f"low{i}") for i in range(5)]
    worker.offer(lows)
    batch = worker._take(p)
    assert batch == lows
    high = start_at(HIGH, 0, "high0")

    def cut(record: Any) -> bool:
        if record is lows[2]:  # a high request arrives while the second low one is decided
            worker.offer([high])
        return worker._cut(record)

    left = await orch.run_partition(0, batch, T0, cut)
    assert left == 3
    assert set(p.states) == {"low0", "low1"}
    assert p.positions[LOW] == 2, "only the decided prefix's offsets committed"
    worker._put_back(batch[-left:])
    batch = worker._take(p)
    assert [r.key for r in batch] == [b"high0", b"low2"], "high first, and low still moves one"
    # the first request of its priority in a batch is never cut, whatever waits
    worker.offer([start_at(HIGH, 1, "high1")])
    assert not worker._cut(batch[1])


async def test_after_a_batch_of_only_low_while_high_is_active_low_waits_its_weighted_time() -> None:
    orch, worker = await idle_worker(batch_max=64)
    p = orch.partitions[0]
    worker.offer([start_at(LOW, i, f"low{i}") for i in range(10)])
    orch.seen[Priority.HIGH] = time.monotonic()  # a high run took an input a moment ago
    batch = worker._take(p)
    assert len(batch) == 1
    before = time.monotonic()
    worker._pace(0.05)  # that batch took 50 ms: low waits 7 x 50 ms (8:1)
    after = time.monotonic()
    # bounded by the clock on both sides of the call, so a stalled test process cannot fail it
    assert before + 0.35 - 1e-6 <= worker.held_until <= after + 0.35 + 1e-6
    assert not worker._takeable(after) and worker._take(p) == []
    worker.offer([start_at(HIGH, 0, "high0")])
    assert worker._takeable(time.monotonic()), "a high request is never held"
    assert [r.key for r in worker._take(p)] == [b"high0"]
    worker.held_until = 0.0
    assert len(worker._take(p)) == 1


async def test_a_long_low_queue_pauses_only_the_low_request_topic_until_it_is_down_to_one_batch() -> None:
    orch, worker = await idle_worker(batch_max=16)
    consumer = orch._consumer
    assert isinstance(consumer, FakeConsumer)
    lane = worker.offer([start_at(LOW, i, f"low{i}") for i in range(BACKLOG_BATCHES * 16 + 1)])
    assert lane is Priority.LOW
    orch._pause(0, lane)
    assert consumer.paused == {TopicPartition(orch.settings.topic(LOW.topic), 0)}
    orch.caught_up(0)
    assert consumer.paused, "still more than a batch waiting"
    while len(worker.queues[Priority.LOW]) > 16:
        worker._take(orch.partitions[0])
    orch.caught_up(0)
    assert consumer.paused == set()
    # a rewind resumes whatever was paused and drops the queues (they are fetched again)
    orch._pause(0, None)
    assert consumer.paused == {RESULTS, COMMANDS}
    orch.rewind_partition(0)
    assert consumer.paused == set() and worker.pending == 0


# -- the setting ---------------------------------------------------------------------------------
def test_priority_weights_read_from_the_environment_as_three_integers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().priority_weights == (8, 3, 1)
    monkeypatch.setenv("LINKFLOW_PRIORITY_WEIGHTS", " 4, 2,1")
    assert Settings().priority_weights == (4, 2, 1)
    monkeypatch.setenv("LINKFLOW_PRIORITY_WEIGHTS", "[5,3,1]")
    assert Settings().priority_weights == (5, 3, 1)
    for bad, why in (("8,0,1", "at least 1"), ("8,x,1", "three integers"), ("8,3", "priority_weights")):
        monkeypatch.setenv("LINKFLOW_PRIORITY_WEIGHTS", bad)
        with pytest.raises(ValueError, match=why):
            Settings()

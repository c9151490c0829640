"""One orchestrator process's partitions take turns to decide and commit (ADR 0052): the turn
itself, then two partition workers of a real ``Orchestrator`` over fake producers whose commits
the test holds open."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import Priority
from linkflow_stream.kafka.records import ProducerRecord
from linkflow_stream.runtime.batch_turn import PATIENCE, BatchTurn
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.orchestrator import Orchestrator, _Worker
from linkflow_stream.runtime.partition import Partition
from linkflow_stream.settings import Settings
from tests.unit.test_partition_batch import (
    CODEC,
    TRANSFORM,
    FakeConsumer,
    FakeProducer,
    start_record,
    stepper,
)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


# -- the turn ------------------------------------------------------------------------------------
async def test_a_second_holder_waits_for_the_first() -> None:
    turn = BatchTurn(1)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str) -> None:
        async with turn.held(lambda: 0):
            order.append(f"{name} in")
            await release.wait()
            order.append(f"{name} out")

    first = asyncio.create_task(hold("a"))
    await settle()
    second = asyncio.create_task(hold("b"))
    await settle()
    assert order == ["a in"] and turn.waiting == 1
    release.set()
    await asyncio.gather(first, second)
    assert order == ["a in", "a out", "b in", "b out"]


async def test_turns_go_by_rank_asked_when_handed_on_then_in_the_order_asked() -> None:
    turn = BatchTurn(1)
    granted: list[str] = []
    ranks = {"low": 2, "results": 1, "high": 0, "late-high": 2}
    release = asyncio.Event()

    async def ask(name: str) -> None:
        async with turn.held(lambda: ranks[name]):
            granted.append(name)
            if name == "holder":
                await release.wait()

    ranks["holder"] = 0
    tasks = [asyncio.create_task(ask("holder"))]
    await settle()
    for name in ("low", "late-high", "results", "high"):
        tasks.append(asyncio.create_task(ask(name)))
        await settle()
    ranks["late-high"] = 0  # a high request reached this worker while it waited
    release.set()
    await asyncio.gather(*tasks)
    assert granted == ["holder", "late-high", "high", "results", "low"]


async def test_a_cancelled_ask_leaves_the_queue_and_a_turn_it_was_handed_goes_on() -> None:
    turn = BatchTurn(1)
    release = asyncio.Event()
    got: list[str] = []

    async def ask(name: str, wait: bool = False) -> None:
        async with turn.held(lambda: 0):
            got.append(name)
            if wait:
                await release.wait()

    holder = asyncio.create_task(ask("holder", wait=True))
    await settle()
    gone = asyncio.create_task(ask("gone"))
    await settle()
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert turn.waiting == 0
    # handed the turn, then cancelled before it ran: the turn passes to the next ask
    handed = asyncio.create_task(ask("handed"))
    after = asyncio.create_task(ask("after"))
    await settle()
    release.set()
    await asyncio.sleep(0)  # the holder leaves and hands the turn to "handed"
    assert turn.waiting == 1, "handed has the turn (not yet run); after waits"
    handed.cancel()
    async with asyncio.timeout(1):  # a turn lost with the cancelled ask would hang here
        await asyncio.gather(holder, handed, after, return_exceptions=True)
    assert got == ["holder", "after"]
    async with asyncio.timeout(1):  # the turn is free again
        async with turn.held(lambda: 0):
            pass


async def test_no_limit_lets_every_holder_in_at_once() -> None:
    turn = BatchTurn(0)
    inside = 0
    most = 0

    async def hold() -> None:
        nonlocal inside, most
        async with turn.held(lambda: 0):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    async with asyncio.timeout(1):
        await asyncio.gather(*(hold() for _ in range(4)))
    assert most == 4


async def test_an_ask_passed_over_patience_times_goes_first_whatever_its_rank() -> None:
    """Two workers that always have results (rank 1) must not keep a third with only normal
    requests (rank 2) waiting for ever."""
    turn = BatchTurn(1)
    granted: list[str] = []
    rounds = {"a": 6, "b": 6}

    async def busy(name: str) -> None:
        while rounds[name]:
            async with turn.held(lambda: 1):
                granted.append(name)
                rounds[name] -= 1
                await asyncio.sleep(0)

    async def patient() -> None:
        async with turn.held(lambda: 2):
            granted.append("normal")

    tasks = [asyncio.create_task(busy("a")), asyncio.create_task(busy("b"))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(patient()))
    await asyncio.gather(*tasks)
    assert PATIENCE == 4 and granted.index("normal") <= 6, granted  # without patience: last (12)
    assert granted.count("a") == granted.count("b") == 6


async def test_a_turn_held_past_max_hold_lets_the_next_in_and_hands_nothing_on_when_it_ends() -> None:
    turn = BatchTurn(1, max_hold=0.05)
    slow_done = asyncio.Event()
    inside: list[str] = []

    async def slow() -> None:
        async with turn.held(lambda: 2):
            inside.append("slow")
            await slow_done.wait()

    async def quick(name: str) -> None:
        async with turn.held(lambda: 2):
            inside.append(name)
            await asyncio.sleep(0.01)

    held = asyncio.create_task(slow())
    await asyncio.sleep(0)
    async with asyncio.timeout(1):
        await asyncio.gather(quick("q1"), quick("q2"))  # not waiting for the slow one
    assert inside == ["slow", "q1", "q2"]
    slow_done.set()
    await held
    # one place, free again: a holder and an ask, as at the start
    turn.max_hold = 60  # from here on no turn is overdue, however slow the machine
    first = asyncio.Event()

    async def hold_until_set() -> None:
        async with turn.held(lambda: 0):
            await first.wait()

    holder = asyncio.create_task(hold_until_set())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(quick("q3"))
    await settle()
    assert turn.waiting == 1, "the overdue turn gave its place back only once"
    first.set()
    await asyncio.gather(holder, waiter)


# -- two partitions of one orchestrator ----------------------------------------------------------
class HeldProducer(FakeProducer):
    """Commits when the test lets it; counts the commits in flight across every instance."""

    in_flight = 0
    most = 0

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def commit(
        self, records: Sequence[ProducerRecord], offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        HeldProducer.in_flight += 1
        HeldProducer.most = max(HeldProducer.most, HeldProducer.in_flight)
        try:
            await self.gate.wait()
            await super().commit(records, offsets, group_id)
        finally:
            HeldProducer.in_flight -= 1


def requests(number: int) -> TopicPartition:
    return TopicPartition(topic_names.requests(Priority.NORMAL), number)


async def two_partitions(at_once: int) -> tuple[Orchestrator, list[HeldProducer], list[_Worker]]:
    HeldProducer.in_flight = HeldProducer.most = 0
    producers = [HeldProducer(), HeldProducer()]
    orch = Orchestrator(
        Settings(orchestrator_batches_at_once=at_once),
        CODEC,
        stepper(),
        Metrics(active=lambda: 0),
        producer_factory=lambda n: producers[n],
    )
    consumer = FakeConsumer([*orch._input_partitions(0), *orch._input_partitions(1)])
    orch._consumer = consumer  # type: ignore[assignment]
    workers = []
    for number in (0, 1):
        p = Partition(
            number,
            producers[number],
            stepper(),
            CODEC,
            topic=lambda name: name,
            group_id="g",
            finished_ttl_seconds=300,
        )
        p.load([], dict.fromkeys(orch._input_partitions(number), 0))
        orch.partitions[number] = p
        worker = _Worker(orch, number)
        orch._workers[number] = worker
        workers.append(worker)
    orch.turn = BatchTurn(at_once, max_hold=60)  # no turn overdue however slow the machine
    return orch, producers, workers


def start_on(number: int, offset: int, execution_id: str) -> Any:
    return dataclasses.replace(start_record(offset, TRANSFORM, execution_id), partition=number)


async def stop(workers: list[_Worker]) -> None:
    for worker in workers:
        await worker.stop()


async def test_one_partitions_batch_at_a_time_and_the_others_inputs_gather_into_one_batch() -> None:
    orch, producers, workers = await two_partitions(at_once=1)
    try:
        producers[0].gate.clear()  # partition 0's commit stays open
        workers[0].offer([start_on(0, 0, "a0")])
        await settle()
        assert HeldProducer.in_flight == 1
        for offset in range(5):  # partition 1's inputs arrive one by one meanwhile
            workers[1].offer([start_on(1, offset, f"b{offset}")])
            await settle()
        assert producers[1].committed == [] and HeldProducer.in_flight == 1, "partition 1 waits its turn"
        producers[0].gate.set()
        for _ in range(50):
            await settle()
        assert len(orch.partitions[1].states) == 5
        assert HeldProducer.most == 1
        (batch,) = producers[1].committed  # the five inputs in one transaction
        assert batch[1] == {requests(1): 5}
    finally:
        await stop(workers)


async def test_with_no_limit_each_partition_commits_as_its_inputs_come() -> None:
    """The behaviour before ADR 0052 (``LINKFLOW_ORCHESTRATOR_BATCHES_AT_ONCE=0``): what the test
    above tells apart from."""
    _orch, producers, workers = await two_partitions(at_once=0)
    try:
        producers[0].gate.clear()
        workers[0].offer([start_on(0, 0, "a0")])
        await settle()
        for offset in range(5):
            workers[1].offer([start_on(1, offset, f"b{offset}")])
            await settle()
        assert HeldProducer.most == 2
        assert len(producers[1].committed) == 5, "one transaction per input as it came"
        producers[0].gate.set()
    finally:
        await stop(workers)


async def test_a_worker_given_up_while_it_waits_for_its_turn_decides_nothing() -> None:
    orch, producers, workers = await two_partitions(at_once=1)
    try:
        producers[0].gate.clear()
        workers[0].offer([start_on(0, 0, "a0")])
        await settle()
        workers[1].offer([start_on(1, 0, "b0")])
        await settle()
        assert orch.turn.waiting == 1, "partition 1 waits for its turn"
        # given up and claimed again meanwhile: a new Partition, whose worker is not this one
        again = Partition(
            1, producers[1], stepper(), CODEC, topic=lambda name: name, group_id="g", finished_ttl_seconds=300
        )
        again.load([], dict.fromkeys(orch._input_partitions(1), 0))
        orch.partitions[1] = again
        producers[0].gate.set()
        await settle()
        assert producers[1].committed == [] and producers[0].committed
        assert workers[1].task.done(), "its worker has ended"
        assert workers[1].queues[Priority.NORMAL], "its request is left for the new worker to fetch again"
    finally:
        await stop(workers)

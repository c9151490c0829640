"""The scheduler's look at the schedules (``runtime/scheduler.py``), with a fake transactional
producer and a clock passed in: what one look commits, and that a catch-up waits for a run the
views have not seen yet."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiokafka import TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.schedule import Schedule, ScheduleProgress, execution_id_for
from linkflow_stream.core.start_request import StartRequest
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.records import ProducerRecord
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.scheduler import Scheduler
from linkflow_stream.settings import Settings
from projections.schedules import ScheduleView

T0 = from_millis(1_800_000_000_000)
CODEC = default_codec()


@dataclass
class Producer:
    committed: list[list[ProducerRecord]] = field(default_factory=list)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def prepare(self, partitions: Sequence[TopicPartition]) -> None:
        pass

    async def commit(
        self, records: Sequence[ProducerRecord], offsets: Mapping[TopicPartition, int], group_id: str
    ) -> None:
        self.committed.append(list(records))


def owner(view: ScheduleView, clock: list[datetime], runs: dict[str, Any]) -> tuple[Scheduler, Producer]:
    producer = Producer()

    async def find_run(execution_id: str) -> dict[str, Any] | None:
        return runs.get(execution_id)

    scheduler = Scheduler(
        Settings(),
        CODEC,
        view,
        find_run,
        Metrics(active=lambda: 0),
        producer_factory=lambda: producer,
        clock=lambda: clock[0],
    )
    scheduler.producer = producer  # as after a takeover with no progress on the topic
    return scheduler, producer


def fired(producer: Producer) -> list[str]:
    start = Settings().topic(topic_names.START)
    return [
        CODEC.decode(r.value, StartRequest).execution_id or ""
        for records in producer.committed
        for r in records
        if r.topic == start
    ]


def test_a_look_fires_due_slots_with_their_progress_in_one_commit() -> None:
    view = ScheduleView()
    s = Schedule(id="s", workflow_id="w", every_seconds=10, created_at=T0, effective_from=T0)
    view.apply("s", s)
    clock = [T0 + timedelta(seconds=5)]
    scheduler, producer = owner(view, clock, {})
    assert asyncio.run(scheduler.fire_due()) == 0  # nothing due: no commit at all
    assert producer.committed == []
    clock[0] = T0 + timedelta(seconds=10, milliseconds=300)
    assert asyncio.run(scheduler.fire_due()) == 1
    (records,) = producer.committed
    assert [r.topic for r in records] == [
        Settings().topic(topic_names.START),
        Settings().topic(topic_names.SCHEDULE_PROGRESS),
    ]
    request = CODEC.decode(records[0].value, StartRequest)
    assert request.execution_id == execution_id_for("s", T0 + timedelta(seconds=10))
    assert request.links == {"schedule_id": "s"}
    assert CODEC.decode(records[1].value, ScheduleProgress).fired == 1


def test_a_catch_up_waits_for_the_run_it_fired_even_when_its_slot_is_long_past() -> None:
    view = ScheduleView()
    s = Schedule.model_validate(
        {"id": "s", "workflow_id": "w", "every_seconds": 1, "catchup": "all", "overlap": "skip",
         "created_at": T0, "effective_from": T0}
    )  # fmt: skip
    view.apply("s", s)
    clock = [T0 + timedelta(minutes=5)]  # 300 slots missed
    runs: dict[str, Any] = {}
    scheduler, producer = owner(view, clock, runs)
    assert asyncio.run(scheduler.fire_due()) == 1  # the oldest; the rest skipped while it runs
    clock[0] += timedelta(seconds=0.5)  # the views have not seen the run yet: it counts as running
    assert asyncio.run(scheduler.fire_due()) == 0
    runs[fired(producer)[0]] = {"status": "success"}  # it ended
    clock[0] += timedelta(seconds=1)
    assert asyncio.run(scheduler.fire_due()) == 1
    assert len(set(fired(producer))) == 2


def test_a_deleted_schedules_progress_goes_in_the_same_kind_of_commit() -> None:
    view = ScheduleView()
    view.apply("s", Schedule(id="s", workflow_id="w", every_seconds=1, created_at=T0, effective_from=T0))
    clock = [T0 + timedelta(seconds=1, milliseconds=100)]
    scheduler, producer = owner(view, clock, {})
    asyncio.run(scheduler.fire_due())
    view.apply("s", None)
    asyncio.run(scheduler.fire_due())
    tombstone = producer.committed[-1]
    assert [(r.topic, r.key, r.value) for r in tombstone] == [
        (Settings().topic(topic_names.SCHEDULE_PROGRESS), b"s", None)
    ]
    assert scheduler.progress == {}

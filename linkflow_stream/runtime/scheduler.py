"""The scheduler: fires the due slots of every schedule as start requests, each slot once.

Invariant: the start requests a look fires (to ``linkflow.start``) and the progress that records
them (to ``linkflow.schedules.progress``) commit in one Kafka transaction, so after any crash
either both are in the log or neither is; and a slot's run id is fixed by the schedule id and the
slot (``core.schedule.execution_id_for``), so even a request written twice names one run, which
the start intake starts once (it looks the id up before starting it).

One instance fires at a time: the one the scheduler consumer group assigns the single partition
of ``linkflow.schedules`` to. Taking over, it claims the transactional id ``<app>.scheduler``,
which fences the former owner (whose next commit fails) and ends any transaction it left open,
and only then reads the progress topic to its end: what it reads is final. A schedule's
definition comes from the schedule view every instance folds; what it fires is decided by the
pure ``core.schedule.plan``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now
from linkflow_stream.core.outgoing import Outgoing
from linkflow_stream.core.schedule import (
    NOT_SEEN_FOR,
    Schedule,
    ScheduleProgress,
    execution_id_for,
    plan,
)
from linkflow_stream.core.start_request import StartRequest
from linkflow_stream.kafka.codec import Codec
from linkflow_stream.kafka.records import ProducerRecord, encode
from linkflow_stream.kafka.topics import max_message_bytes
from linkflow_stream.kafka.transactions import (
    CommitFailed,
    Fenced,
    KafkaTransactionalProducer,
    ProducerBroken,
    TransactionalProducer,
)
from linkflow_stream.runtime.metrics import Metrics
from linkflow_stream.runtime.restore import read_latest
from linkflow_stream.settings import Settings
from projections.schedules import ScheduleView

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
"""How often the owner looks for due slots: a slot fires at most about this late."""
TERMINAL = frozenset({"success", "failed", "cancelled"})
SCHEDULED = "io.linkflow.schedule.fired"
PROGRESSED = "io.linkflow.schedule.progressed"

FindRun = Callable[[str], Awaitable[dict[str, object] | None]]


class Scheduler(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        schedules: ScheduleView,
        find_run: FindRun,
        metrics: Metrics,
        *,
        ready: Callable[[], bool] = lambda: True,
        producer_factory: Callable[[], TransactionalProducer] | None = None,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.schedules = schedules
        self.find_run = find_run
        self.metrics = metrics
        self.clock = clock
        self.ready = ready
        """Whether the schedule view has read its topic to the end once: before that it may hold
        an old definition (one paused since, say), so nothing fires."""
        self.group_id = settings.group("scheduler")
        self.topic = settings.topic(topic_names.SCHEDULES)
        self.producer_factory = producer_factory or self._kafka_producer
        self.producer: TransactionalProducer | None = None
        self.progress: dict[str, ScheduleProgress] = {}
        """The committed progress of every schedule, as of the last commit (owner only)."""
        self.fired_at: dict[str, datetime] = {}
        """When this owner last fired each schedule (a catch-up fires slots long past)."""
        self._assigned = False
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def _kafka_producer(self) -> TransactionalProducer:
        return KafkaTransactionalProducer(self.settings.bootstrap_servers, self.group_id, max_message_bytes())

    @property
    def owner(self) -> bool:
        """Whether this instance fires schedules now."""
        return self.producer is not None

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=self.group_id,
            client_id=f"{s.app_id}-scheduler",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=int(s.session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(min(3.0, s.session_timeout_seconds / 3) * 1000),
        )
        await consumer.start()
        consumer.subscribe([self.topic], listener=self)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            async with self._lock:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        async with self._lock:
            await self._release()
        if self._consumer is not None:
            await self._consumer.stop()

    # -- ownership ----------------------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:
            self._assigned = False
            await self._release()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        parts = list(assigned)
        consumer.pause(*parts)  # the group only elects the owner; its records are the view's
        async with self._lock:
            self._assigned = bool(parts)
            if self._assigned and self.producer is None:
                await self._claim()

    async def _claim(self) -> None:
        """Fence the former owner, then read every schedule's committed progress."""
        producer = self.producer_factory()
        try:
            await producer.start()
            latest = await read_latest(
                self.settings.bootstrap_servers, self.settings.topic(topic_names.SCHEDULE_PROGRESS), 0
            )
            await self.codec.learn(latest.values())
            progress = {
                key.decode(): self.codec.decode(value, ScheduleProgress) for key, value in latest.items()
            }
        except Exception:
            log.exception("scheduler: could not take over; trying again")
            with contextlib.suppress(Exception):
                await producer.stop()
            return
        self.progress = progress
        self.producer = producer
        log.info("scheduler: this instance fires schedules now (%d with progress)", len(progress))

    async def _release(self) -> None:
        producer, self.producer = self.producer, None
        self.progress = {}
        self.fired_at = {}
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
            log.info("scheduler: this instance no longer fires schedules")

    # -- the loop -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                await consumer.getmany(timeout_ms=int(TICK_SECONDS * 1000))  # keeps the group going
                async with self._lock:
                    if self._assigned and self.producer is None:
                        await self._claim()
                    if self.producer is not None and self.ready():
                        await self.fire_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler: a look at the schedules failed; looking again")
                await asyncio.sleep(TICK_SECONDS)

    async def fire_due(self) -> int:
        """Fire every due slot of every schedule, in one transaction; the number of runs fired."""
        producer = self.producer
        assert producer is not None
        at = self.clock()
        records: list[ProducerRecord] = []
        changed: dict[str, ScheduleProgress | None] = {}
        fired_now: set[str] = set()
        fired = 0
        for schedule in list(self.schedules.schedules.values()):
            progress = self._progress_of(schedule)
            if not _anything_due(schedule, progress, at):
                continue  # the common case: no look-up of its last run
            decided = plan(schedule, progress, at, await self._running(schedule.id, progress, at))
            if decided.progress == progress:
                continue
            for slot in decided.fire:
                records.append(self._start_request(schedule, slot, at))
            if decided.fire:
                fired_now.add(schedule.id)
            fired += len(decided.fire)
            changed[schedule.id] = decided.progress
            records.append(self._progress_record(schedule.id, decided.progress))
        for gone in set(self.progress) - set(self.schedules.schedules):
            changed[gone] = None  # deleted: its progress goes too
            records.append(self._progress_record(gone, None))
        if not records:
            return 0
        try:
            await producer.commit(records, {}, self.group_id)
        except Fenced:
            log.warning("scheduler: another instance took over")
            await self._release()
            return 0
        except ProducerBroken as exc:
            log.warning("scheduler: %s; taking over afresh", exc)
            await self._release()
            return 0
        except CommitFailed as exc:
            log.warning("scheduler: %s; looking again", exc)
            return 0
        for schedule_id, progress in changed.items():
            if progress is None:
                self.progress.pop(schedule_id, None)
                self.fired_at.pop(schedule_id, None)
            else:
                self.progress[schedule_id] = progress
        self.fired_at.update(dict.fromkeys(fired_now, at))
        if fired:
            self.metrics.schedule_fires.inc(fired)
        return fired

    def _progress_of(self, schedule: Schedule) -> ScheduleProgress | None:
        """The schedule's progress; one left by an earlier schedule of the same id (deleted and
        created again) does not count: every slot it decided is older than the new one."""
        progress = self.progress.get(schedule.id)
        if progress is not None and progress.last_slot < schedule.created_at:
            return None
        return progress

    async def _running(self, schedule_id: str, progress: ScheduleProgress | None, at: datetime) -> bool:
        """Whether the schedule's last run is still going, by the views. One they have not seen
        yet counts as running for ``NOT_SEEN_FOR`` after it was fired (the intake has not started
        it yet), then as not running (its start was dead-lettered). Fired by a former owner: from
        its slot, the best this one knows."""
        if progress is None or progress.last_execution_id is None:
            return False
        body = await self.find_run(progress.last_execution_id)
        if body is None:
            fired = self.fired_at.get(schedule_id, progress.last_fired_slot)
            return fired is not None and at - fired < NOT_SEEN_FOR
        return body.get("status") not in TERMINAL

    def _start_request(self, schedule: Schedule, slot: datetime, at: datetime) -> ProducerRecord:
        execution_id = execution_id_for(schedule.id, slot)
        request = StartRequest(
            workflow_id=schedule.workflow_id,
            input=schedule.input_data,
            execution_id=execution_id,
            links={"schedule_id": schedule.id},
        )
        outgoing = Outgoing(topic_names.START, execution_id, request, SCHEDULED, time=at)
        return encode(self.codec, outgoing, self.settings.topic(topic_names.START))

    def _progress_record(self, schedule_id: str, progress: ScheduleProgress | None) -> ProducerRecord:
        topic = self.settings.topic(topic_names.SCHEDULE_PROGRESS)
        if progress is None:
            return ProducerRecord(topic=topic, key=schedule_id.encode(), value=None, headers=[])
        outgoing = Outgoing(
            topic_names.SCHEDULE_PROGRESS, schedule_id, progress, PROGRESSED, time=progress.last_slot
        )
        return encode(self.codec, outgoing, topic)


def _anything_due(schedule: Schedule, progress: ScheduleProgress | None, at: datetime) -> bool:
    """Whether a look at ``at`` may change the schedule: a slot is due or one is buffered."""
    if progress is not None and progress.buffered_slot is not None:
        return True
    last = max(schedule.effective_from, progress.last_slot if progress else schedule.effective_from)
    upcoming = schedule.next_slot(last)
    return upcoming is not None and upcoming <= at

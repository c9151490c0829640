"""Feeds a fold from every partition of a topic, in every instance.

Each instance reads the whole log, so any instance can answer any read. A fold kept in memory
(workflows, workers) reads from offset 0 at every start; a durable one (the read model) passes
the positions it has stored and reads on from there, handed whole batches so it can store each
with its positions in one transaction.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from linkflow_stream.kafka.consumers import committed_reader
from linkflow_stream.kafka.fetch_wait import wait_adaptively
from linkflow_stream.kafka.metadata import topic_partitions

log = logging.getLogger(__name__)

Handler = Callable[[ConsumerRecord[bytes, bytes]], None]
BatchHandler = Callable[[list[ConsumerRecord[bytes, bytes]]], Awaitable[None]]
Prepare = Callable[[Iterable[bytes | None]], Awaitable[None]]
"""Awaited with a fetched batch's values before any is handled (``Codec.learn``)."""
PREPARE_MAX_PAUSE_SECONDS = 5.0
BATCH_RECORDS = 2000
"""Records handed over in one batch at most."""
AHEAD_FETCH_RECORDS = 500
"""Records one fetch of the read-ahead takes: decoding and classifying them holds the loop, so
the stretch is kept short (the urgent records they hold wait for it too)."""
READ_AHEAD_BYTES = 64 * 1024 * 1024
"""And at most this many bytes of values (a record may carry a node's output of megabytes)."""
MAX_REST_SECONDS = 0.25
"""The longest the in-order side rests after a batch while urgent work is under way."""
READ_AHEAD_RECORDS = 20_000
"""Records a reader with an urgent lane fetches ahead of its fold, so an urgent record sitting
behind a backlog is seen (and folded first) without waiting for the backlog's batches."""
URGENT_FETCH_WAIT_MS = 20
"""The longest a fetch of a reader with an urgent lane waits at the broker while it leaves a
partition out (records read ahead, not yet taken): that partition's urgent records wait for it."""


class LogReader:
    """Reads ``topics`` and hands each record to ``handle`` (or each batch to ``handle_batch``),
    forever: from the beginning, from ``positions`` where given, or from the end."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        handle: Handler | None = None,
        *,
        handle_batch: BatchHandler | None = None,
        positions: Mapping[tuple[str, int], int] | None = None,
        on_error: Callable[[ConsumerRecord[bytes, bytes], Exception], Awaitable[None]] | None = None,
        from_beginning: bool = True,
        prepare: Prepare | None = None,
        prepared: Callable[[ConsumerRecord[bytes, bytes]], bool] | None = None,
        urgent: Callable[[ConsumerRecord[bytes, bytes]], bool] | None = None,
        handle_urgent: BatchHandler | None = None,
        read_ahead: int = READ_AHEAD_RECORDS,
        yield_to_urgent: Callable[[], bool] | None = None,
    ) -> None:
        if (handle is None) == (handle_batch is None):
            msg = "give a LogReader exactly one of handle and handle_batch"
            raise ValueError(msg)
        if (urgent is None) != (handle_urgent is None) or (urgent is not None and handle_batch is None):
            msg = "an urgent lane needs urgent, handle_urgent and handle_batch"
            raise ValueError(msg)
        self.urgent = urgent
        self.handle_urgent = handle_urgent
        self.read_ahead = max(read_ahead, BATCH_RECORDS)
        self.yield_to_urgent = yield_to_urgent
        """While it says so (urgent work is under way), the in-order side rests as long as its last
        batch took after each batch: it then uses at most half of the process's time, and the rest
        goes to the urgent work (its decisions, commits and fold ahead share this event loop)."""
        self.handle_batch = handle_batch
        self.positions = dict(positions or {})
        self.from_beginning = from_beginning
        self.bootstrap_servers = bootstrap_servers
        self.topics = tuple(topics)
        self.handle = handle
        self.on_error = on_error
        self.prepare = prepare
        self.prepared = prepared
        """Which records' values ``prepare`` gets (default: all): a record the handler will not
        decode need not hold the batch up (a dead letter's bytes may name any schema id)."""
        self.caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._ends: AIOKafkaConsumer | None = None
        """Asks the log's end offsets on a connection of its own: the reading consumer's
        connection is held by its fetch in flight, which may wait up to 500 ms at the broker (one
        request per connection at a time), and ``sync`` would wait behind it (ADR 0042)."""
        self._catching_up: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._partitions: list[TopicPartition] = []
        self._handled: dict[TopicPartition, int] = {}
        self._progress = asyncio.Event()
        self.failed = False
        """The reading task died (it is logged); readiness says so."""

    async def start(self) -> None:
        """Open the reading consumer and the offsets one, and start reading; a start that fails
        midway closes what it opened."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        # An urgent lane is there for latency: a fetch that leaves a partition out (records read
        # ahead and not yet taken) waits at most 20 ms for more bytes, not 500.
        lane = {} if self.urgent is None else {"fetch_max_wait_ms": URGENT_FETCH_WAIT_MS}
        consumer = committed_reader(self.bootstrap_servers, **lane)
        self._consumer = consumer
        await consumer.start()
        if self.urgent is not None:
            wait_adaptively(consumer)
        for topic in self.topics:
            partitions = await topic_partitions(self.bootstrap_servers, topic)
            if not partitions:
                msg = f"topic {topic} does not exist: run `linkflow topics apply`"
                raise RuntimeError(msg)
            self._partitions += [TopicPartition(topic, p) for p in sorted(partitions)]
        self._ends = committed_reader(self.bootstrap_servers)
        await self._ends.start()
        consumer.assign(self._partitions)
        if self.from_beginning:
            await consumer.seek_to_beginning(*self._partitions)
            for tp in self._partitions:
                stored = self.positions.get((tp.topic, tp.partition))
                if stored is not None:
                    consumer.seek(tp, stored)
                    self._handled[tp] = stored
        else:
            await consumer.seek_to_end(*self._partitions)
            for tp in self._partitions:
                self._handled[tp] = await consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name=f"log-reader:{','.join(self.topics)}")
        self._task.add_done_callback(self._ended)
        if self.from_beginning:
            self._catching_up = asyncio.create_task(self._mark_caught_up(), name="log-reader:caught-up")
        else:
            self.caught_up.set()

    async def _mark_caught_up(self) -> None:
        while not await self.sync(within=60):
            log.warning("view of %s still replaying", ",".join(self.topics))
        self.caught_up.set()

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A reader only ends when stopped; one that failed freezes its view, so say it loudly."""
        if not task.cancelled() and task.exception() is not None:
            self.failed = True
            log.error("view of %s stopped reading", ",".join(self.topics), exc_info=task.exception())

    async def stop(self) -> None:
        """Stop reading and close both consumers, each even if the other fails to close."""
        for task in (self._task, self._catching_up):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        # aiokafka 0.14: a group-less consumer stopped before its reset task ever ran re-raises
        # that task's cancellation (a start that failed right after it); one turn lets it run.
        await asyncio.sleep(0)
        try:
            if self._consumer is not None:
                await self._consumer.stop()
        finally:
            if self._ends is not None:
                await self._ends.stop()

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """The current end offset of every partition this reader follows."""
        assert self._ends is not None
        return dict(await self._ends.end_offsets(self._partitions))

    async def sync(self, within: float) -> bool:
        """Wait until every record written before this call has been handled; False on timeout.

        A view answers "not found" only after a sync, so a client never misses what another
        instance has already acknowledged to it.
        """
        ends = await self.end_offsets()
        deadline = asyncio.get_running_loop().time() + within
        while any(self._handled.get(tp, 0) < end for tp, end in ends.items()):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.05)):  # not wait_for (ADR 0074)
                    await self._progress.wait()
        return True

    async def _run(self) -> None:
        if self.urgent is not None:
            await self._run_with_lane()
            return
        consumer = self._consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=BATCH_RECORDS)
            await self._prepare(batches)
            if self.handle_batch is not None:
                await self._hand_over(batches)
            for tp, records in batches.items() if self.handle_batch is None else ():
                for record in records:
                    try:
                        assert self.handle is not None
                        self.handle(record)
                    except Exception as exc:
                        log.exception("view of %s could not apply %s@%s", tp.topic, tp, record.offset)
                        if self.on_error is not None:
                            await self.on_error(record, exc)
                    self._handled[tp] = record.offset + 1
            await self._read_tails()

    async def _prepare(self, batches: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Await ``prepare`` with the batch's values until it succeeds: the batch waits (and the
        view stands still) while, say, the schema registry is away, rather than being skipped."""
        if self.prepare is None or not batches:
            return
        wanted = self.prepared
        values = [
            record.value
            for records in batches.values()
            for record in records
            if wanted is None or wanted(record)
        ]
        if not values:
            return
        for attempt in itertools.count():
            try:
                await self.prepare(values)
            except Exception:
                pause = min(PREPARE_MAX_PAUSE_SECONDS, 0.2 * 2**attempt)
                log.exception(
                    "view of %s: preparing a batch failed; again in %.1fs", ",".join(self.topics), pause
                )
                await asyncio.sleep(pause)
            else:
                return

    async def _hand_over(self, batches: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """One batch to ``handle_batch``; it is handled (and counts for ``sync``) only once that
        returns. A handler that fails has changed nothing (the read model reads before it folds and
        retries its own writes), so the same batch is handed over again after a pause: the view
        stands still rather than skipping records."""
        assert self.handle_batch is not None
        records = [record for records in batches.values() for record in records]
        for attempt in itertools.count():
            if not records:
                break
            try:
                await self.handle_batch(records)
                break
            except Exception:
                pause = min(5.0, 0.2 * 2**attempt)
                log.exception(
                    "view of %s could not fold a batch; again in %.1fs", ",".join(self.topics), pause
                )
                await asyncio.sleep(pause)
        for tp, got in batches.items():
            if got:
                self._handled[tp] = got[-1].offset + 1

    async def _run_with_lane(self) -> None:
        """Batches in log order as usual, fed by a fetcher that reads up to ``read_ahead`` records
        ahead and hands the urgent ones among them to ``handle_urgent`` at once, while the batch
        in front is still being handled: an urgent record waits neither for the backlog in front
        of it nor for the batch being folded. Only the in-order batches count as handled (``sync``),
        so read-your-writes still means "everything before this point is folded"; the handler of
        urgent records must not move stored positions, and the batch handler must tolerate
        records it already folded ahead."""
        lane = _Lane()
        name = f"log-reader-ahead:{','.join(self.topics)}"
        fetcher = asyncio.create_task(self._fetch_ahead(lane), name=name)
        consumer = self._consumer
        assert consumer is not None
        try:
            while True:
                if not lane.buffered:
                    lane.ready.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):  # not wait_for (ADR 0074)
                            await lane.ready.wait()
                batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
                for _ in range(min(BATCH_RECORDS, len(lane.buffered))):
                    tp, record = lane.buffered.popleft()
                    lane.bytes -= len(record.value or b"")
                    batch.setdefault(tp, []).append(record)
                lane.room.set()
                began = asyncio.get_running_loop().time()
                await self._hand_over(batch)
                took = asyncio.get_running_loop().time() - began
                for tp, records in batch.items():
                    lane.waiting[tp] -= len(records)
                await self._read_tails(lane.waiting)
                if self._should_rest(batch, lane):
                    await asyncio.sleep(min(took, MAX_REST_SECONDS))
                if fetcher.done():
                    await fetcher  # its failure is this reader's
        finally:
            fetcher.cancel()
            await asyncio.gather(fetcher, return_exceptions=True)

    async def _read_tails(self, waiting: Mapping[TopicPartition, int] | None = None) -> None:
        """Count every partition as read up to the consumer's position (an empty or compacted tail,
        or control records, still count), except one with fetched records not yet handed over
        (``waiting``), and tell ``sync`` waiters."""
        consumer = self._consumer
        assert consumer is not None
        for tp in self._partitions:
            if waiting is None or waiting.get(tp, 0) <= 0:
                position = await consumer.position(tp)
                if waiting is None or waiting.get(tp, 0) <= 0:  # nothing fetched meanwhile
                    self._handled[tp] = max(self._handled.get(tp, 0), position)
        self._progress.set()

    def _should_rest(
        self, batch: Mapping[TopicPartition, list[ConsumerRecord[bytes, bytes]]], lane: _Lane
    ) -> bool:
        """Rest after a batch while urgent work is under way; not while replaying at start-up,
        and not while the buffer is full (the urgent records may be behind what it holds)."""
        return (
            bool(batch)
            and self.yield_to_urgent is not None
            and self.caught_up.is_set()
            and not lane.full(self.read_ahead)
            and self.yield_to_urgent()
        )

    async def _fetch_ahead(self, lane: _Lane) -> None:
        consumer = self._consumer
        assert consumer is not None
        assert self.urgent is not None
        assert self.handle_urgent is not None
        while True:
            if lane.full(self.read_ahead):
                lane.room.clear()
                await lane.room.wait()
                continue
            fetched = await consumer.getmany(
                timeout_ms=200, max_records=min(AHEAD_FETCH_RECORDS, self.read_ahead - len(lane.buffered))
            )
            for tp, records in fetched.items():  # counted at once: the tail is not read yet
                lane.waiting[tp] += len(records)
            if not fetched:
                lane.ready.set()
                continue
            await self._prepare(fetched)
            urgent: list[ConsumerRecord[bytes, bytes]] = []
            for tp, records in fetched.items():
                for record in records:
                    lane.buffered.append((tp, record))
                    lane.bytes += len(record.value or b"")
                    if self.urgent(record):
                        urgent.append(record)
            lane.ready.set()
            if urgent:
                try:
                    await self.handle_urgent(urgent)
                except Exception:
                    log.exception("view of %s could not fold urgent records ahead", ",".join(self.topics))


class _Lane:
    """What a reader with an urgent lane has fetched and not yet handed over in order."""

    def __init__(self) -> None:
        self.buffered: collections.deque[tuple[TopicPartition, ConsumerRecord[bytes, bytes]]]
        self.buffered = collections.deque()
        self.bytes = 0
        """Bytes of the values in ``buffered``."""
        self.waiting: collections.Counter[TopicPartition] = collections.Counter()
        """Records fetched and not yet handled in order, per partition."""
        self.ready = asyncio.Event()
        """Set when records were buffered (or a fetch came back empty)."""
        self.room = asyncio.Event()
        """Set when the in-order side took records out of a full buffer."""

    def full(self, records: int) -> bool:
        return len(self.buffered) >= records or self.bytes >= READ_AHEAD_BYTES

"""The view feeder on the real broker: replay from offset 0, and sync for read-your-writes; and
one record read by its position."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from linkflow_stream.dev.broker import free_port
from linkflow_stream.kafka.consumers import LogUnavailable, committed_reader, record_at
from linkflow_stream.kafka.log_reader import LogReader

pytestmark = pytest.mark.integration


async def _topic(kafka: str, partitions: int) -> str:
    """A fresh topic of its own for one test."""
    topic = f"i{uuid.uuid4().hex[:8]}.linkflow.events"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def test_replays_then_syncs_to_what_was_written_before_the_call(kafka: str) -> None:
    topic = await _topic(kafka, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await producer.start()
    seen: list[bytes] = []

    def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        seen.append(record.value)

    reader = LogReader(kafka, [topic], handle)
    try:
        for i in range(30):
            await producer.send_and_wait(topic, f"old-{i}".encode(), key=str(i).encode())
        await reader.start()
        await reader.caught_up.wait()
        assert sorted(seen) == sorted(f"old-{i}".encode() for i in range(30)), "replay from offset 0"
        for i in range(5):
            await producer.send_and_wait(topic, f"new-{i}".encode(), key=str(i).encode())
        assert await reader.sync(within=5)
        assert {f"new-{i}".encode() for i in range(5)} <= set(seen), "sync returned before the new records"
    finally:
        await reader.stop()
        await producer.stop()


async def test_an_urgent_lane_sees_records_behind_a_backlog_first_and_loses_none(kafka: str) -> None:
    """ADR 0029: records the ``urgent`` test picks are handed to ``handle_urgent`` before the
    in-order batch that holds them, however much backlog is in front of them; every record still
    comes through the in-order batches exactly once and in log order, and ``sync`` waits for those."""
    topic = await _topic(kafka, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    await producer.start()
    order: list[tuple[str, list[bytes]]] = []

    async def batch(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        order.append(("batch", [r.value for r in records]))
        await asyncio.sleep(0.3)  # a slow fold: the backlog stays behind it

    async def urgent(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        order.append(("urgent", [r.value for r in records]))

    reader = LogReader(
        kafka, [topic], handle_batch=batch, urgent=lambda r: r.key == b"hi", handle_urgent=urgent
    )
    try:
        sent = [f"low-{i}".encode() for i in range(6000)]
        for value in sent:
            await producer.send(topic, value, key=b"lo")
        for i in range(3):
            await producer.send(topic, f"hi-{i}".encode(), key=b"hi")
        await producer.flush()
        await reader.start()
        await reader.caught_up.wait()
        in_order = [v for kind, values in order if kind == "batch" for v in values]
        assert in_order == [*sent, *(f"hi-{i}".encode() for i in range(3))], "every record once, in order"
        first_urgent = next(n for n, (kind, _v) in enumerate(order) if kind == "urgent")
        holding = next(n for n, (kind, values) in enumerate(order) if kind == "batch" and b"hi-0" in values)
        kinds = [k for k, _ in order]
        assert first_urgent < holding - 1, f"the urgent records waited for the backlog: {kinds}"
        assert [v for kind, values in order if kind == "urgent" for v in values] == [
            f"hi-{i}".encode() for i in range(3)
        ]
        await producer.send_and_wait(topic, b"last", key=b"lo")
        assert await reader.sync(within=10)
        assert order[-1] == ("batch", [b"last"])
    finally:
        await reader.stop()
        await producer.stop()


async def test_while_urgent_work_is_under_way_the_in_order_side_rests_as_long_as_each_batch_took(
    kafka: str,
) -> None:
    """The in-order fold gives the process back half its time while high runs are live: after a
    batch that took t, it rests t before the next (a lower bound, so the test cannot flake)."""
    topic = await _topic(kafka, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    await producer.start()
    starts: list[float] = []
    asked: list[bool] = []

    async def batch(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        starts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0.15)

    async def urgent(records: list[ConsumerRecord[bytes, bytes]]) -> None:
        return None

    def live() -> bool:
        asked.append(True)
        return True

    reader = LogReader(
        kafka, [topic], handle_batch=batch, urgent=lambda r: False, handle_urgent=urgent, yield_to_urgent=live
    )
    try:
        await reader.start()
        await reader.caught_up.wait()  # a replay at start-up never rests: only what comes after
        for i in range(5000):
            await producer.send(topic, f"low-{i}".encode(), key=b"lo")
        await producer.flush()
        assert await reader.sync(within=30)
        assert len(starts) >= 3, "5000 records come in batches of at most 2000"
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert min(gaps) >= 0.29, f"the in-order side did not rest after its batches: {gaps}"
        assert asked, "it asked whether urgent work was under way"
    finally:
        await reader.stop()
        await producer.stop()


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - aiokafka's fetcher has no event to wait on
        await asyncio.sleep(0.01)


async def test_sync_does_not_wait_behind_the_readers_idle_fetch(
    kafka: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 0042: the broker answers one request per connection at a time, so an offset lookup
    sent on the reading consumer's connection waits for its fetch in flight, which waits up to its
    fetch wait when nothing arrives. Here that wait is 30 s: a sync that returns within 10 s
    looked the offsets up elsewhere."""
    import linkflow_stream.kafka.log_reader as log_reader

    def slow_reader(bootstrap_servers: str, **overrides: object) -> object:
        return committed_reader(bootstrap_servers, **{"fetch_max_wait_ms": 30_000, **overrides})

    monkeypatch.setattr(log_reader, "committed_reader", slow_reader)
    topic = await _topic(kafka, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka)
    await producer.start()
    seen: list[bytes] = []
    first = asyncio.Event()

    def handle(record: ConsumerRecord[bytes, bytes]) -> None:
        seen.append(record.value)
        first.set()

    reader = LogReader(kafka, [topic], handle)
    try:
        await reader.start()
        await asyncio.wait_for(reader.caught_up.wait(), 10)
        await producer.send_and_wait(topic, b"one")
        await asyncio.wait_for(first.wait(), 10)  # the fetch in flight ends with the record
        # and the next one waits 30 s at the broker: nothing more is written
        fetcher = reader._consumer._fetcher  # type: ignore[union-attr]
        await asyncio.wait_for(_until(lambda: bool(fetcher._in_flight)), 10)
        await asyncio.sleep(0.2)
        assert fetcher._in_flight, "the reader's next fetch is not in flight"
        began = asyncio.get_running_loop().time()
        assert await reader.sync(within=40)
        # aiokafka's request cannot be cancelled midway, so the bound is checked afterwards.
        assert asyncio.get_running_loop().time() - began < 10, "sync waited behind the idle fetch"
        assert seen == [b"one"]
    finally:
        await reader.stop()
        await producer.stop()


async def test_the_record_at_an_offset_or_none_where_no_record_is(kafka: str) -> None:
    """``record_at``: how an older workflow version is read back (ADR 0048)."""
    topic = await _topic(kafka, partitions=1)
    tp = TopicPartition(topic, 0)
    plain = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    txn = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=f"i-{uuid.uuid4().hex}")
    await plain.start()
    await txn.start()
    try:
        first = await plain.send_and_wait(topic, b"v1", key=b"wf@1")
        await txn.begin_transaction()
        aborted = (await txn.send_and_wait(topic, b"never visible", key=b"wf@2", partition=0)).offset
        await txn.abort_transaction()
        last = await plain.send_and_wait(topic, b"v3", key=b"wf@3")
    finally:
        await txn.stop()
        await plain.stop()
    assert first.offset < aborted < last.offset
    assert await record_at(kafka, tp, first.offset, within=10) == b"v1"
    assert await record_at(kafka, tp, last.offset, within=10) == b"v3"
    assert await record_at(kafka, tp, aborted, within=10) is None, "an aborted record is no record"
    assert await record_at(kafka, tp, last.offset + 1, within=10) is None, "past the end"


async def test_a_record_read_from_a_broker_that_is_away_fails_within_its_time() -> None:
    """Connecting counts in the time given: a caller (an API request, the start intake) waits
    ``within`` seconds at most, then gets ``LogUnavailable`` (a 503, or a batch held), not a 500."""
    started = time.monotonic()
    with pytest.raises(LogUnavailable, match="could not be read"):
        await record_at(f"127.0.0.1:{free_port()}", TopicPartition("linkflow.workflows", 0), 3, within=2)
    assert time.monotonic() - started < 10

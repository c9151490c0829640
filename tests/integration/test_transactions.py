"""The orchestrator's transaction machinery on the real broker: a commit moves records and input
offsets together, a second holder of a transactional id fences the first, and the gap probe
tells transaction markers and aborted records from skipped ones."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from linkflow_stream.dev.testing import read_topic
from linkflow_stream.kafka import transactions
from linkflow_stream.kafka.gap_probe import explained_jump, holding_records
from linkflow_stream.kafka.produce_retries import RETRY_MESSAGE, count_routine_retries
from linkflow_stream.kafka.records import ProducerRecord
from linkflow_stream.kafka.transactions import (
    RETRY_BACKOFF_MS,
    Fenced,
    KafkaTransactionalProducer,
    ProducerBroken,
)

pytestmark = pytest.mark.integration


async def topics(kafka: str, *names: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, 1, 1) for n in names])
    finally:
        await admin.close()


async def read_all(kafka: str, topic: str, isolation_level: str) -> list[tuple[int, bytes | None]]:
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka, group_id=None, isolation_level=isolation_level, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[tuple[int, bytes | None]] = []
        while await consumer.position(tp) < end:
            for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                out.append((record.offset, record.value))
        return out
    finally:
        await consumer.stop()


async def fresh(kafka: str, *outputs: str) -> tuple[list[str], TopicPartition, str, str]:
    """A test's own output topics (named ``outputs``) and input topic: the output names, the
    input's partition, a consumer group and a transactional id, all new."""
    run = uuid.uuid4().hex[:8]
    names = [f"i{run}.{name}" for name in outputs]
    await topics(kafka, *names, f"i{run}.in")
    return names, TopicPartition(f"i{run}.in", 0), f"g{run}", f"t{run}"


def record(topic: str, value: bytes) -> ProducerRecord:
    return ProducerRecord(topic=topic, key=b"k", value=value, headers=[], partition=0)


async def committed_offset(kafka: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(tp)
    finally:
        await consumer.stop()


async def test_records_and_offsets_commit_together_and_a_new_holder_fences_the_old(kafka: str) -> None:
    (out,), input_tp, group, txn_id = await fresh(kafka, "out")
    first = KafkaTransactionalProducer(kafka, txn_id, 1_048_576)
    await first.start()
    try:
        await first.commit([record(out, b"one")], {input_tp: 1}, group)
        assert await read_all(kafka, out, "read_committed") == [(0, b"one")]
        assert await committed_offset(kafka, group, input_tp) == 1

        second = KafkaTransactionalProducer(kafka, txn_id, 1_048_576)
        await second.start()  # the takeover: same transactional id, newer epoch
        try:
            with pytest.raises(Fenced):
                await first.commit([record(out, b"zombie")], {input_tp: 2}, group)
            await second.commit([record(out, b"two")], {input_tp: 2}, group)
        finally:
            await second.stop()
    finally:
        await first.stop()
    committed = [value for _, value in await read_all(kafka, out, "read_committed")]
    assert committed == [b"one", b"two"], "the fenced holder's write is not visible to read_committed"
    assert await committed_offset(kafka, group, input_tp) == 2


async def test_the_gap_probe_explains_markers_and_aborted_records_but_not_skips(kafka: str) -> None:
    run = uuid.uuid4().hex[:8]
    topic = f"i{run}.inputs"
    await topics(kafka, topic)
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=f"p{run}")
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send_and_wait(topic, b"a", partition=0)
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted", partition=0)  # 2, marker at 3
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"b", partition=0)
            await producer.send_and_wait(topic, b"c", partition=0)
    finally:
        await producer.stop()
    visible = await read_all(kafka, topic, "read_committed")
    assert [v for _, v in visible] == [b"a", b"b", b"c"]
    (a, _), (b, _), (c, _) = visible
    assert b > a + 1, "a marker and an aborted record lie between a and b"
    assert await explained_jump(kafka, tp, a + 1, b), "a reader that saw a and then b skipped nothing"
    assert not await explained_jump(kafka, tp, a + 1, c), "a reader that saw a and then c skipped b"
    # the same question for many ranges at once (the queue status's lag): markers and aborted
    # records are no record; the range past c holds only c's commit marker
    other = TopicPartition(f"i{run}.none", 0)
    end = c + 2  # c, then its transaction's marker
    assert await holding_records(kafka, {tp: (a + 1, b)}) == set()
    assert await holding_records(kafka, {tp: (a + 1, c + 1)}) == {tp}, "b lies in it"
    assert await holding_records(kafka, {tp: (c + 1, end)}) == set(), "only a marker"
    assert await holding_records(kafka, {other: (5, 5)}) == set(), "an empty range holds nothing"


async def test_a_record_the_broker_refuses_breaks_the_producer_and_a_new_one_commits(kafka: str) -> None:
    """A refused record takes idempotent sequence numbers that are never given back, so the same
    producer's next transaction would fail: the error says the producer must be replaced, and
    that it was the batch's fault."""
    run = uuid.uuid4().hex[:8]
    out, source = f"i{run}.small", f"i{run}.in"
    await topics(kafka, out, source)  # the broker's default 1 MiB record limit
    input_tp = TopicPartition(source, 0)
    group = f"g{run}"
    first = KafkaTransactionalProducer(kafka, f"t{run}", 4 * 1_048_576)
    await first.start()
    try:
        with pytest.raises(ProducerBroken) as broken:
            await first.commit([record(out, b"x" * 2_000_000)], {input_tp: 1}, group)
        assert broken.value.input_fault
    finally:
        await first.stop()
    second = KafkaTransactionalProducer(kafka, f"t{run}", 4 * 1_048_576)
    await second.start()
    try:
        await second.commit([record(out, b"small")], {input_tp: 1}, group)
    finally:
        await second.stop()
    assert [v for _, v in await read_all(kafka, out, "read_committed")] == [b"small"]
    assert await committed_offset(kafka, group, input_tp) == 1


async def test_back_to_back_transactions_each_commit_once_in_order(kafka: str) -> None:
    """A transaction started right after the previous commit may have its records refused once
    (the previous commit marker has not reached the partition yet: KIP-890's check, told to this
    produce version as NOT_ENOUGH_REPLICAS). They are sent again after ``RETRY_BACKOFF_MS``, not
    aiokafka's 100 ms (bench.diamond: the slowest runs at one caller), and every commit lands
    once, in order, with its offsets."""
    run = uuid.uuid4().hex[:8]
    out, source = f"i{run}.out", f"i{run}.in"
    await topics(kafka, out, source)
    input_tp = TopicPartition(source, 0)
    producer = KafkaTransactionalProducer(kafka, f"t{run}", 1_048_576)
    assert producer._producer._sender._retry_backoff == RETRY_BACKOFF_MS / 1000
    await producer.start()
    try:
        for n in range(1, 61):
            await producer.commit([record(out, str(n).encode())], {input_tp: n}, f"g{run}")
    finally:
        await producer.stop()
    values = [value for _, value in await read_all(kafka, out, "read_committed")]
    assert values == [str(n).encode() for n in range(1, 61)]
    assert await committed_offset(kafka, f"g{run}", input_tp) == 60


async def test_a_transaction_refused_until_the_previous_marker_lands_is_counted_not_warned(
    kafka: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Back-to-back transactions on one partition: now and then the broker refuses a produce
    until the previous commit's marker is written there (KIP-890: NOT_ENOUGH_REPLICAS to this
    produce version) and aiokafka retries it. Routine, so counted; a WARNING each time was noise in
    the log an operator reads. The real broker and aiokafka's real message: a version that words
    it otherwise fails here."""
    name = f"refused-{uuid.uuid4().hex[:8]}"
    await topics(kafka, name, f"{name}-in")
    retried: list[str] = []
    undo = count_routine_retries(retried.append)
    producer = KafkaTransactionalProducer(kafka, f"tx-{name}", 1024 * 1024)
    await producer.start()
    try:
        # The topic is new: its first produce can find the partition's leader not elected yet
        # (NotLeaderForPartition, retried and rightly warned; seen on a loaded CI machine). So
        # the first commit is made before the log is watched.
        await producer.commit([record(name, b"0")], {TopicPartition(f"{name}-in", 0): 1}, f"g-{name}")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="aiokafka"):
            committed = 1
            while len(retried) < 2 and committed < 2000:  # about 1-3% are refused once
                offsets = {TopicPartition(f"{name}-in", 0): committed + 1}
                await producer.commit([record(name, str(committed).encode())], offsets, f"g-{name}")
                committed += 1
    finally:
        await producer.stop()
        undo()
    assert retried[:2] == ["NotEnoughReplicasError"] * 2, f"none refused in {committed} transactions"
    warned = [r for r in caplog.records if r.getMessage().startswith(RETRY_MESSAGE)]
    assert warned == [], "a routine retry was logged as a warning"
    assert [v for _o, v in await read_all(kafka, name, "read_committed")] == [
        str(i).encode() for i in range(committed)
    ], "every refused produce was written once"


async def test_records_naming_partitions_fill_batches_in_order_beside_records_that_do_not(kafka: str) -> None:
    """Records that name their partition go in record batches built by the producer wrapper, a
    full one handed over and a new one begun (here every 16 kB); the rest go through aiokafka's
    ``send``. Each partition's records land once, in order, all in the one transaction, also where
    both kinds go to the same partition."""
    run = uuid.uuid4().hex[:8]
    named, keyed, mixed, source = f"n{run}", f"k{run}", f"m{run}", f"n{run}.in"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(named, 2, 1), *(NewTopic(t, 1, 1) for t in (keyed, mixed, source))]
        )
    finally:
        await admin.close()
    producer = KafkaTransactionalProducer(kafka, f"t{run}", 16 * 1024)
    at = 1_700_000_000_000
    records = [
        ProducerRecord(
            topic=named,
            key=b"k",
            value=f"{i:04d}".encode() * 250,
            headers=[("n", str(i).encode())],
            timestamp_ms=at + i,
            partition=i % 2,
        )
        if i % 10
        else ProducerRecord(topic=keyed, key=str(i).encode(), value=str(i).encode(), headers=[])
        for i in range(120)
    ]
    # One partition, records that name it and records left to the partitioner, interleaved.
    records += [
        ProducerRecord(
            topic=mixed, key=b"k", value=str(i).encode(), headers=[], partition=0 if i % 3 else None
        )
        for i in range(30)
    ]
    await producer.start()
    try:
        await producer.commit(records, {TopicPartition(source, 0): 1}, f"g{run}")
    finally:
        await producer.stop()
    in_named = await read_topic(kafka, named, partitions=2)
    for part in (0, 1):
        got = [r.value for r in in_named if r.partition == part]
        assert got == [r.value for r in records if r.topic == named and r.partition == part]
        assert len(got) >= 48, "1000-byte records, 16 kB batches: three batches a partition or more"
    for got_record in in_named:
        n = int(got_record.value[:4])
        assert (got_record.timestamp, list(got_record.headers)) == (at + n, [("n", str(n).encode())])
    assert [v for _o, v in await read_all(kafka, keyed, "read_committed")] == [
        str(i).encode() for i in range(0, 120, 10)
    ]
    in_mixed = [v for _o, v in await read_all(kafka, mixed, "read_committed")]
    assert in_mixed == [str(i).encode() for i in range(30)]


async def test_a_record_over_the_request_size_breaks_the_producer_before_anything_is_written(
    kafka: str,
) -> None:
    """A record that names its partition and is larger than a request may be is refused before
    it is sent, as aiokafka's ``send`` refuses one: the batch's fault, and nothing of the
    transaction is visible."""
    run = uuid.uuid4().hex[:8]
    out, source = f"o{run}", f"o{run}.in"
    await topics(kafka, out, source)
    producer = KafkaTransactionalProducer(kafka, f"t{run}", 16 * 1024)
    await producer.start()
    try:
        small = record(out, b"small")
        with pytest.raises(ProducerBroken, match="larger than the maximum request size") as broken:
            await producer.commit(
                [small, record(out, b"x" * 20_000)], {TopicPartition(source, 0): 1}, f"g{run}"
            )
        assert broken.value.input_fault
    finally:
        await producer.stop()
    assert await read_all(kafka, out, "read_committed") == []


async def test_a_prepared_transaction_has_its_partitions_before_any_record_and_survives_a_failed_decision(
    kafka: str,
) -> None:
    """ADR 0060: ``prepare`` opens the transaction and the broker adds its partitions while the
    batch is decided; a decision that fails leaves it open and unused, and the next commit uses it:
    its records are written once, with the offsets, and a takeover still fences the holder."""
    (events, state), input_tp, group, txn_id = await fresh(kafka, "events", "state")
    written = [TopicPartition(events, 0), TopicPartition(state, 0)]
    holder = KafkaTransactionalProducer(kafka, txn_id, 1_048_576)
    await holder.start()
    try:
        await holder.prepare(written)
        manager: Any = holder._producer._txn_manager
        for _ in range(200):  # the producer's sender adds them on its own; nothing is sent yet
            if set(written) <= manager.txn_partitions:
                break
            await asyncio.sleep(0.01)
        assert set(written) <= manager.txn_partitions, "the partitions were not added before a record"
        # The decision failed here: nothing committed. The batch is tried again.
        await holder.prepare(written)
        await holder.commit([record(events, b"one"), record(state, b"s1")], {input_tp: 1}, group)
        await holder.prepare(written)  # the next batch: decided, and it wrote nothing but offsets
        await holder.commit([], {input_tp: 2}, group)

        await holder.prepare(written)
        successor = KafkaTransactionalProducer(kafka, txn_id, 1_048_576)
        await successor.start()  # a takeover while the holder's next transaction is prepared
        try:
            with pytest.raises(Fenced):
                await holder.commit([record(events, b"zombie")], {input_tp: 3}, group)
            await successor.prepare(written)
            await successor.commit([record(events, b"two")], {input_tp: 3}, group)
        finally:
            await successor.stop()
    finally:
        await holder.stop()
    assert [v for _, v in await read_all(kafka, events, "read_committed")] == [b"one", b"two"]
    assert [v for _, v in await read_all(kafka, state, "read_committed")] == [b"s1"]
    assert await committed_offset(kafka, group, input_tp) == 3


async def test_a_holder_fenced_while_its_prepared_partitions_are_added_is_told_it_is_fenced(
    kafka: str,
) -> None:
    """A takeover before the holder's next batch: the partitions ``prepare`` adds in the
    background are refused (a newer epoch), and the commit after the decision says ``Fenced``
    (the holder lets the partition go), not that the producer broke (which would claim the
    partition again and fence the rightful holder back)."""
    (events,), input_tp, group, txn_id = await fresh(kafka, "events")
    holder = KafkaTransactionalProducer(kafka, txn_id, 1_048_576)
    await holder.start()
    successor = KafkaTransactionalProducer(kafka, txn_id, 1_048_576)
    try:
        await holder.commit([record(events, b"one")], {input_tp: 1}, group)
        await successor.start()  # the takeover
        await holder.prepare([TopicPartition(events, 0)])
        manager: Any = holder._producer._txn_manager
        for _ in range(200):  # the refusal comes back while the holder decides
            if not manager.is_in_transaction():
                break
            await asyncio.sleep(0.01)
        assert not manager.is_in_transaction(), "the prepared partitions were not refused"
        with pytest.raises(Fenced):
            await holder.commit([record(events, b"zombie")], {input_tp: 2}, group)
        await successor.commit([record(events, b"two")], {input_tp: 2}, group)
    finally:
        await successor.stop()
        await holder.stop()
    assert [v for _, v in await read_all(kafka, events, "read_committed")] == [b"one", b"two"]
    assert await committed_offset(kafka, group, input_tp) == 2


async def test_a_prepared_transaction_kept_too_long_is_aborted_and_begun_again(
    kafka: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch given up after ``prepare`` and a partition quiet since: the next commit does not
    use the old transaction (the broker would time it out and fence this producer) but aborts it
    and begins another, and its records land once."""
    monkeypatch.setattr(transactions, "PREPARED_SECONDS", 0.05)
    (events,), input_tp, group, txn_id = await fresh(kafka, "events")
    holder = KafkaTransactionalProducer(kafka, txn_id, 1_048_576)
    await holder.start()
    try:
        await holder.prepare([TopicPartition(events, 0)])
        await asyncio.sleep(0.2)
        with caplog.at_level(logging.WARNING, logger=transactions.log.name):
            await holder.commit([record(events, b"one")], {input_tp: 1}, group)
        warnings = [r.getMessage() for r in caplog.records if r.name == transactions.log.name]
        assert any("prepared more than" in w for w in warnings), warnings
        await holder.prepare([TopicPartition(events, 0)])
        await holder.commit([record(events, b"two")], {input_tp: 2}, group)
    finally:
        await holder.stop()
    assert [v for _, v in await read_all(kafka, events, "read_committed")] == [b"one", b"two"]
    assert await committed_offset(kafka, group, input_tp) == 2

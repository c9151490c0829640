"""ADR 0061: an orchestrator batch commits its input positions on the changelog, not as the
group's offsets; a claim resumes from them, and the group's offsets follow them for operators."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from linkflow_stream.core import topic_names
from linkflow_stream.core.messages import Priority
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.dev.testing import EngineProcess, call, read_changelog_tail
from linkflow_stream.kafka.codec import default_codec
from linkflow_stream.kafka.consumers import committed_reader
from linkflow_stream.kafka.topics import apply_topics, execution_partitions
from linkflow_stream.runtime.positions import POSITIONS_KEY
from linkflow_stream.runtime.restore import read_latest
from tests.e2e.exactly_once import assert_exactly_once

pytestmark = pytest.mark.e2e

RUNS = 6


def request_partitions(engine: EngineProcess) -> list[TopicPartition]:
    topic = engine.settings().topic(topic_names.requests(Priority.NORMAL))
    return [TopicPartition(topic, p) for p in range(execution_partitions())]


async def group_offsets(engine: EngineProcess) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=engine.bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(
            engine.settings().group("orchestrator"), partitions=request_partitions(engine)
        )
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in committed.items() if meta is not None and meta.offset >= 0}


async def log_ends(engine: EngineProcess) -> dict[TopicPartition, int]:
    reader = committed_reader(engine.bootstrap)
    await reader.start()
    try:
        return dict(await reader.end_offsets(request_partitions(engine)))
    finally:
        await reader.stop()


async def move_group_offsets(engine: EngineProcess, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for the (empty) orchestrator group, as an operator's reset would."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=engine.bootstrap,
        group_id=engine.settings().group("orchestrator"),
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)


def test_a_claim_resumes_from_the_changelog_when_the_group_offsets_are_behind(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    """The runs are forgotten (tombstoned) before the restart, so a start request decided again
    would start its run again: a second log under the same id, which ``assert_exactly_once``
    refuses. The group's offsets are put back to 0 while the engine is down, so only the
    positions on the changelog can say that every request was decided."""
    engine = engine_factory(LINKFLOW_FINISHED_STATE_TTL_SECONDS="1")
    wf_id = f"positions-{uuid.uuid4().hex[:8]}"
    engine.register(
        {"id": wf_id, "nodes": [{"id": "a", "type": "transform", "config": {"expression": "input.i"}}]}
    )
    ids = [engine.start_execution(wf_id, {"i": i})[1]["id"] for i in range(RUNS)]
    for execution_id in ids:
        assert engine.wait_status(execution_id)["status"] == "success"

    ends = asyncio.run(log_ends(engine))
    assert sum(ends.values()) >= RUNS
    # the group's offsets follow the changelog outside the transactions: the lag reads 0 soon
    wait_until(
        lambda: asyncio.run(group_offsets(engine)) == ends,
        f"the group's offsets reach the log's end {ends}: {asyncio.run(group_offsets(engine))}",
    )
    status, body = call("GET", f"{engine.url}/api/admin/queue/status")
    assert status == 200 and body["consumer_lag"] == 0, body

    def forgotten() -> bool:
        tail = asyncio.run(read_changelog_tail(engine.bootstrap, engine.settings().topic(topic_names.STATE)))
        return all(tail.get(i, "missing") is None for i in ids)

    wait_until(forgotten, "every finished run tombstoned on the changelog")
    engine.stop()
    asyncio.run(move_group_offsets(engine, dict.fromkeys(ends, 0)))
    assert asyncio.run(group_offsets(engine)) == dict.fromkeys(ends, 0)

    engine.start()
    status, body = engine.start_execution(wf_id, {"i": 99}, wait=30)
    assert status == 200 and body["status"] == "success", body
    assert_exactly_once(engine, [*ids, body["id"]])
    after = asyncio.run(log_ends(engine))
    wait_until(lambda: asyncio.run(group_offsets(engine)) == after, "the group's offsets follow again")


async def latest_changelog_values(engine: EngineProcess) -> dict[bytes, bytes]:
    """Every changelog key's latest value, tombstoned keys left out, as any release reads them."""
    state = engine.settings().topic(topic_names.STATE)
    latest: dict[bytes, bytes] = {}
    for number in range(execution_partitions()):
        latest.update(await read_latest(engine.bootstrap, state, number))
    return latest


def test_with_offsets_in_the_transaction_a_claim_hands_the_positions_to_the_group(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    """Before going back to a release that reads every changelog value as a run's state (and
    resumes from the group's offsets alone), the orchestrators restart with
    LINKFLOW_OFFSETS_IN_TRANSACTION: each claim replaces the positions record by the group's
    offsets in one transaction. The group's offsets are put back to 0 first, so only that
    transaction can bring them to the log's end."""
    engine = engine_factory()
    wf_id = f"positions-back-{uuid.uuid4().hex[:8]}"
    engine.register(
        {"id": wf_id, "nodes": [{"id": "a", "type": "transform", "config": {"expression": "input.i"}}]}
    )
    ids = [engine.start_execution(wf_id, {"i": i})[1]["id"] for i in range(RUNS)]
    for execution_id in ids:
        assert engine.wait_status(execution_id)["status"] == "success"
    assert POSITIONS_KEY in asyncio.run(latest_changelog_values(engine)), "the record is written by default"
    ends = asyncio.run(log_ends(engine))
    engine.stop()
    asyncio.run(move_group_offsets(engine, dict.fromkeys(ends, 0)))

    engine.extra_env["LINKFLOW_OFFSETS_IN_TRANSACTION"] = "true"
    engine.start()
    status, body = engine.start_execution(wf_id, {"i": 99}, wait=30)
    assert status == 200 and body["status"] == "success", body
    latest = asyncio.run(latest_changelog_values(engine))
    assert POSITIONS_KEY not in latest
    for value in latest.values():  # what a release before ADR 0061 does with each of them
        default_codec().decode(value, ExecutionState)
    after = asyncio.run(log_ends(engine))
    assert asyncio.run(group_offsets(engine)) == after, "moved in the transactions, at once"
    assert_exactly_once(engine, [*ids, body["id"]])


async def delete_topic(engine: EngineProcess, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=engine.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    reader = committed_reader(engine.bootstrap)
    await reader.start()
    try:
        for _ in range(100):  # deletion is asynchronous: wait until the broker no longer lists it
            if topic not in await reader.topics():
                return
            await asyncio.sleep(0.1)
    finally:
        await reader.stop()
    raise AssertionError(f"{topic} still listed after deletion")


async def make_again(engine: EngineProcess) -> None:
    """Make the topics again once the broker has let the deleted one go (its deletion finishes
    in the background, and a create meanwhile is refused as existing)."""
    topic = engine.settings().topic(topic_names.requests(Priority.NORMAL))
    for _ in range(100):
        await apply_topics(engine.settings())
        reader = committed_reader(engine.bootstrap)
        await reader.start()
        try:
            if topic in await reader.topics():
                return
        finally:
            await reader.stop()
        await asyncio.sleep(0.2)
    raise AssertionError(f"{topic} not made again")


def test_a_request_topic_made_again_is_read_from_its_start_not_the_old_position(
    engine_factory: Callable[..., EngineProcess],
) -> None:
    """The changelog keeps the positions of a log that was deleted and made again (the group's
    offsets of a deleted topic are dropped): resuming from them would skip the new log's records
    as decided before, and its runs would never start."""
    engine = engine_factory()
    wf_id = f"positions-again-{uuid.uuid4().hex[:8]}"
    engine.register(
        {"id": wf_id, "nodes": [{"id": "a", "type": "transform", "config": {"expression": "input.i"}}]}
    )
    for i in range(100):  # until every partition of the request topic has moved past 0
        status, body = engine.start_execution(wf_id, {"i": i}, wait=30)
        assert status == 200 and body["status"] == "success", body
        if i >= RUNS and all(end > 0 for end in asyncio.run(log_ends(engine)).values()):
            break
    assert all(end > 0 for end in asyncio.run(log_ends(engine)).values())
    engine.stop()
    asyncio.run(delete_topic(engine, engine.settings().topic(topic_names.requests(Priority.NORMAL))))

    asyncio.run(make_again(engine))
    engine.start()
    assert asyncio.run(log_ends(engine)) == dict.fromkeys(request_partitions(engine), 0)
    ids = [engine.start_execution(wf_id, {"i": 100 + i})[1]["id"] for i in range(RUNS)]
    for execution_id in ids:
        assert engine.wait_status(execution_id, timeout=30)["status"] == "success", engine.log_tail()
    assert "deleted and made again" in engine.log_path.read_text()

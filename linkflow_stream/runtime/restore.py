"""Reading a partition's committed state back: the changelog with its input positions (ADR 0061),
and the group's committed offsets.

Both are read only after this instance has claimed the partition's transactional id, which
aborts or completes any transaction a former owner had open; what is read then is final.

The changelog holds a snapshot of each run, not its every step (ADR 0039): a run's state is its
latest snapshot with the run's committed events after it folded on (``evolve``, the same fold
the orchestrator applied when it decided them). Each snapshot carries, in its ``SNAPSHOT_OFFSET``
header, an offset of the events partition at or below every event of the run that follows the
snapshot, so the events partition is read from the lowest such offset of the live runs, never
from its start. A snapshot without the header (written before ADR 0039: one per step) is whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.state import ExecutionState, evolve
from linkflow_stream.kafka.codec import Codec
from linkflow_stream.kafka.consumers import committed_reader
from linkflow_stream.runtime.positions import POSITIONS_KEY, read_positions

log = logging.getLogger(__name__)

SNAPSHOT_OFFSET = "linkflow-events-from"
"""Header of a changelog snapshot: the events partition's offset (decimal ASCII) from which the
run's events after the snapshot are to be read."""


class RestoreError(RuntimeError):
    """The changelog could not be read to its end in time."""


@dataclass
class RestoredRun:
    """A run as restored: its state, and where its snapshot's events begin (``None``: a snapshot
    written before ADR 0039, whole). A finished run's snapshot is its marker (ADR 0071; a whole
    state before it), with nothing to fold onto it."""

    state: ExecutionState
    events_from: int | None
    snapshot_bytes: int
    events_since: int = 0
    """Events folded onto the snapshot."""
    bytes_since: int = 0
    """Their encoded size."""


@dataclass
class Restored:
    """A partition's committed runs, and the end of its events partition when it was read (a
    lower bound of the offset of every event written after)."""

    runs: list[RestoredRun] = field(default_factory=list)
    events_end: int = 0
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    """The input positions committed with these runs (ADR 0061); empty when no batch of this
    release committed on the partition yet."""

    @property
    def states(self) -> list[ExecutionState]:
        return [run.state for run in self.runs]


async def read_states(
    bootstrap_servers: str,
    state_topic: str,
    events_topic: str,
    partition: int,
    codec: Codec,
    *,
    within: float = 120.0,
) -> Restored:
    """Every run of one partition as committed: its latest snapshot on the changelog with the
    run's committed events after it folded on."""
    latest = await read_latest_records(bootstrap_servers, state_topic, partition, within=within)
    positions = latest.pop(POSITIONS_KEY, None)
    await codec.learn(r.value for r in latest.values())
    runs: dict[str, RestoredRun] = {}
    for record in latest.values():
        state = codec.decode(record.value, ExecutionState)
        runs[state.id] = RestoredRun(state, _events_from(record), len(record.value or b""))
    tp = TopicPartition(events_topic, partition)
    consumer = committed_reader(bootstrap_servers)
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        wanted = {  # a finished run's snapshot is its marker: nothing to fold onto it, nothing to read
            run.state.id.encode(): run
            for run in runs.values()
            if run.events_from is not None and not run.state.status.terminal
        }
        start = min((run.events_from for run in wanted.values() if run.events_from is not None), default=end)
        if start < end:
            await _fold_events(consumer, tp, start, end, wanted, codec, within)
    finally:
        await asyncio.sleep(0)  # see kafka.consumers.log_ends
        await consumer.stop()
    return Restored(
        list(runs.values()), end, read_positions(positions.value or b"", partition) if positions else {}
    )


def _events_from(record: ConsumerRecord[bytes, bytes]) -> int | None:
    for key, value in record.headers:
        if key == SNAPSHOT_OFFSET:
            return int(value)
    return None


async def _fold_events(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    end: int,
    wanted: dict[bytes, RestoredRun],
    codec: Codec,
    within: float,
) -> None:
    """Fold each ``wanted`` run's committed events (by key) from its snapshot's offset onto it."""
    consumer.seek(tp, start)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await consumer.position(tp) < end:
        if loop.time() > deadline:
            raise RestoreError(f"{tp.topic}[{tp.partition}] not read to offset {end} within {within}s")
        batch = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
        records = [r for r in batch.get(tp, []) if r.key in wanted and r.value is not None]
        await codec.learn(r.value for r in records)
        for record in records:
            run = wanted[record.key]
            if record.offset < (run.events_from or 0):
                continue
            event = codec.decode(record.value, ExecutionEvent)
            if event.seq <= run.state.seq:
                continue  # in the snapshot already
            if event.seq != run.state.seq + 1:
                raise RestoreError(
                    f"{run.state.id}: event seq {event.seq} at {tp.topic}[{tp.partition}]@{record.offset}"
                    f" does not follow the restored seq {run.state.seq}"
                )
            run.state = evolve(run.state, event)
            run.events_since += 1
            run.bytes_since += len(record.value or b"")


async def read_latest_records(
    bootstrap_servers: str, topic: str, partition: int, *, within: float = 120.0
) -> dict[bytes, ConsumerRecord[bytes, bytes]]:
    """The latest committed record of every key of one partition of a compacted topic, read to
    its end (a key whose latest record is a tombstone is left out)."""
    tp = TopicPartition(topic, partition)
    consumer = committed_reader(bootstrap_servers)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        latest: dict[bytes, ConsumerRecord[bytes, bytes]] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while await consumer.position(tp) < end:
            if loop.time() > deadline:
                raise RestoreError(f"{topic}[{partition}] not read to offset {end} within {within}s")
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=5000)
            for record in batch.get(tp, []):
                if record.key is not None:
                    latest[record.key] = record
        return {key: record for key, record in latest.items() if record.value is not None}
    finally:
        await consumer.stop()


async def read_latest(
    bootstrap_servers: str, topic: str, partition: int, *, within: float = 120.0
) -> dict[bytes, bytes]:
    """The latest committed value of every key of one partition of a compacted topic, read to its
    end (a key whose latest record is a tombstone is left out)."""
    latest = await read_latest_records(bootstrap_servers, topic, partition, within=within)
    return {key: record.value for key, record in latest.items() if record.value is not None}


async def committed_positions(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, int]:
    """Where the group resumes each partition: its committed offset, else the log's start."""
    tps = list(partitions)
    committed = await asyncio.gather(*(consumer.committed(tp) for tp in tps))  # one round trip each
    out = {tp: offset for tp, offset in zip(tps, committed, strict=True) if offset is not None}
    missing = [tp for tp in tps if tp not in out]
    if missing:
        out.update(await consumer.beginning_offsets(missing))
    return out

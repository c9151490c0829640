"""Event-replay tooling: rebuild the read model from offset 0 into a fresh store and compare it
with the live one, or print one execution's history as the log has it.

The rebuild reads exactly up to the positions the live store had folded when it began, so with a
stopped engine the two must be equal row for row and line for line; with a running one, a row
the live store has since moved on (a higher ``seq``) is counted, not compared.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from aiokafka import ConsumerRecord, TopicPartition

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import now, to_millis
from linkflow_stream.core.events import ExecutionEvent
from linkflow_stream.core.messages import Priority
from linkflow_stream.core.state import ExecutionState
from linkflow_stream.kafka.codec import Codec, default_codec
from linkflow_stream.kafka.codecs import codec_for
from linkflow_stream.kafka.consumers import committed_reader, log_ends
from linkflow_stream.kafka.execution_log import execution_events
from linkflow_stream.settings import Settings
from projections.read_model import ReadModel, Topics
from projections.store import LineRow, Position, ReadStore, StoredState, open_store

REBUILD_WRITE_ATTEMPTS = 5
"""A rebuild's store write is tried this often (about 4 s of backoff) before the replay fails
with why; a live engine tries until its store is back (``ReadModel.write_attempts``)."""


def view_topics(settings: Settings) -> Topics:
    """The topics the read model folds, the engine's as a rebuild's."""
    return Topics(
        events=settings.topic(topic_names.EVENTS),
        requests=frozenset(settings.topic(t) for t in topic_names.REQUESTS),
        urgent_requests=settings.topic(topic_names.requests(Priority.HIGH)),
        dlq=settings.topic(topic_names.DLQ),
    )


def live_store(settings: Settings) -> ReadStore:
    """The store a ``linkflow run`` with these settings writes."""
    return open_store(settings.views_url, settings.data_dir, f"{settings.topic_prefix}views")


async def rebuild(
    settings: Settings,
    into: ReadStore,
    until: dict[Position, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Fold the view topics from offset 0 into the empty store ``into``, up to ``until`` (the
    positions to stop before; default: the log's end now). How many records were read."""
    topics = view_topics(settings)
    names = [topics.events, *sorted(topics.requests), settings.topic(topic_names.DLQ)]
    targets = until if until is not None else await log_ends(settings.bootstrap_servers, names)
    codec = codec_for(settings)
    await into.open("replay")
    await into.reset()
    model = ReadModel(into, codec, topics, write_attempts=REBUILD_WRITE_ATTEMPTS)
    consumer = committed_reader(settings.bootstrap_servers)
    await consumer.start()
    read = 0
    try:
        partitions = [TopicPartition(t, p) for (t, p), end in targets.items() if end > 0]
        if not partitions:
            return 0
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        pending = set(partitions)
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            records: list[ConsumerRecord[bytes, bytes]] = []
            for tp, got in batches.items():
                records += [r for r in got if r.offset < targets[(tp.topic, tp.partition)]]
            if records:
                await codec.learn([r.value for r in records if model.decodes(r)])
                await model.fold(records)
                read += len(records)
                if progress is not None and read // 50_000 != (read - len(records)) // 50_000:
                    progress(read)  # every 50,000 records
            for tp in list(pending):
                if await consumer.position(tp) >= targets[(tp.topic, tp.partition)]:
                    pending.discard(tp)
        await model.write_all()  # the live runs' rows (ADR 0063)
    finally:
        await consumer.stop()
        await codec.close()
    return read


@dataclass
class Comparison:
    compared: int = 0
    equal: int = 0
    moved_on: int = 0
    """Rows the live store has folded further since the rebuild's positions (a running engine)."""
    missing_live: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    different_lines: list[str] = field(default_factory=list)
    expired: int = 0
    """Finished before the retention cutoff: the live store may already have deleted them."""

    @property
    def ok(self) -> bool:
        return not (self.missing_live or self.different or self.different_lines)


async def compare(fresh: ReadStore, live: ReadStore, codec: Codec, retention: timedelta) -> Comparison:
    """Row by row and line by line: the rebuilt store against the live one."""
    result = Comparison()
    fresh_rows, fresh_lines = await fresh.dump()
    live_rows, live_lines = await live.dump()
    by_id = {row.id: row for row in live_rows}
    lines_fresh = _lines_by_execution(fresh_lines)
    lines_live = _lines_by_execution(live_lines)
    cutoff = to_millis(now() - retention)
    for row in fresh_rows:
        mine = codec.decode(row.state, ExecutionState)
        if mine.finished_at is not None and to_millis(mine.finished_at) < cutoff:
            result.expired += 1
            continue
        theirs = by_id.get(row.id)
        if theirs is None:
            result.missing_live.append(row.id)
            continue
        if theirs.seq > row.seq:
            result.moved_on += 1
            continue
        result.compared += 1
        if not _same_state(row, theirs, codec):
            result.different.append(row.id)
        elif lines_fresh.get(row.id, []) != lines_live.get(row.id, []):
            result.different_lines.append(row.id)
        else:
            result.equal += 1
    return result


def _same_state(a: StoredState, b: StoredState, codec: Codec) -> bool:
    """The same state, and for an ended run the same body and summary too: they are what the API
    serves (``GET /api/executions`` full and ``view=summary``), stored beside the state when the
    row was written, so a row whose body or summary went wrong (or was changed by hand) shows
    here. A running run's body holds its time queued so far, which moves with the clock, so only
    an ended run's is compared."""
    if a.seq != b.seq:
        return False
    mine = codec.decode(a.state, ExecutionState)
    if a.state != b.state and mine != codec.decode(b.state, ExecutionState):
        return False
    if not mine.status.terminal:
        return True
    return json.loads(a.body) == json.loads(b.body) and _json(a.summary) == _json(b.summary)


def _json(text: str | None) -> object:
    return None if text is None else json.loads(text)


def _lines_by_execution(lines: list[LineRow]) -> dict[str, list[LineRow]]:
    out: dict[str, list[LineRow]] = {}
    for line in lines:
        out.setdefault(line.execution_id, []).append(line)
    return out


async def replay_and_compare(
    settings: Settings, into: Path, progress: Callable[[int], None] | None = None
) -> tuple[int, Comparison]:
    """Rebuild into a fresh SQLite file at ``into`` up to the live store's positions, then compare."""
    live = live_store(settings)
    fresh = open_store(f"sqlite:///{into}", into.parent)
    try:
        await live.attach()
        until = await live.positions()
        read = await rebuild(settings, fresh, until, progress)
        return read, await compare(fresh, live, default_codec(), timedelta(days=settings.retention_days))
    finally:
        with contextlib.suppress(Exception):
            await fresh.close()
        with contextlib.suppress(Exception):
            await live.close()


async def history(settings: Settings, execution_id: str) -> list[ExecutionEvent]:
    """Every event of one execution in log order, duplicates included."""
    codec = codec_for(settings)
    try:
        return await execution_events(
            settings.bootstrap_servers, settings.topic(topic_names.EVENTS), execution_id, codec
        )
    finally:
        await codec.close()

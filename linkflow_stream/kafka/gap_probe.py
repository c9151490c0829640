"""Whether a jump in a partition's offsets skipped a record a ``read_committed`` reader sees.

Offsets of a topic written with transactions are not contiguous for such a reader: commit and
abort markers take an offset each, and aborted records are hidden. So a jump from ``expected`` to
``got`` is a gap only if a committed record lies between; reading that range as a
``read_committed`` reader settles it. It is rare (only transactional writers leave markers), so
a short-lived consumer per question is cheap enough.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from aiokafka import TopicPartition

from linkflow_stream.kafka.consumers import committed_reader, stop_reader


async def explained_jump(bootstrap_servers: str, tp: TopicPartition, expected: int, got: int) -> bool:
    """True when no committed record has an offset in ``[expected, got)`` (not settled within
    10 s: False, the cautious answer for a gap)."""
    return tp not in await holding_records(bootstrap_servers, {tp: (expected, got)})


async def holding_records(
    bootstrap_servers: str, ranges: dict[TopicPartition, tuple[int, int]]
) -> set[TopicPartition]:
    """The partitions whose ``[start, end)`` range holds a record a ``read_committed`` reader sees
    (not only markers or aborted records), all read by one short-lived consumer. A partition not
    settled within 10 s counts as holding one (the cautious answer for a lag). A settled range's
    answer never changes (the log below its end is fixed), so it is remembered: the queue status,
    which the web UI asks for every 2 s, finds the same marker-only ranges again at idle."""
    wanted = {tp: span for tp, span in ranges.items() if span[0] < span[1] and (tp, *span) not in _SETTLED}
    holding = {tp for tp, span in ranges.items() if span[0] < span[1] and _SETTLED.get((tp, *span))}
    if not wanted:
        return holding
    consumer = committed_reader(bootstrap_servers)
    try:
        await consumer.start()
        consumer.assign(list(wanted))
        for tp, (start, _end) in wanted.items():
            consumer.seek(tp, start)
        open_ = set(wanted)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while open_ and loop.time() < deadline:
            batch = await consumer.getmany(*open_, timeout_ms=200, max_records=len(open_))
            for tp, records in batch.items():
                if tp in open_ and records:
                    found = records[0].offset < wanted[tp][1]
                    _settle(tp, wanted[tp], found)
                    if found:
                        holding.add(tp)
                    open_.discard(tp)
            for tp in list(open_):
                if await consumer.position(tp) >= wanted[tp][1]:
                    _settle(tp, wanted[tp], False)
                    open_.discard(tp)
        return holding | open_
    finally:
        await stop_reader(consumer)


_SETTLED: OrderedDict[tuple[TopicPartition, int, int], bool] = OrderedDict()
SETTLED_KEPT = 4096
"""Answers remembered (a few per partition are ever asked for again)."""


def _settle(tp: TopicPartition, span: tuple[int, int], holds: bool) -> None:
    _SETTLED[(tp, *span)] = holds
    while len(_SETTLED) > SETTLED_KEPT:
        _SETTLED.popitem(last=False)

"""A partition's input positions, kept on its changelog (ADR 0061).

The orchestrator's transaction used to move the group's offsets itself (AddOffsetsToTxn, then
TxnOffsetCommit to the group coordinator): two of a batch's five round trips, and a marker on
``__consumer_offsets`` at every commit. Now a batch that took inputs writes one more record to the
changelog partition it writes anyway, under a key no run can have, holding the next offset to
decide of every input topic-partition of that partition. It commits or aborts with the batch's
events and states, so what it says is exactly what they hold; compaction keeps its latest.

The group's committed offsets follow it outside the transaction, a moment later (operators' lag,
Kafka UI). A claim resumes each input from the larger of the two: the group's offset is never
ahead of what committed, and one moved in a transaction that wrote no positions record (by a
release before ADR 0061, or with ``Settings.offsets_in_transaction``) is ahead of a stale record.
With that setting a claim also replaces the record by the group's offsets, in one transaction, so
a release that cannot read the record can claim the partition after it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiokafka import TopicPartition

from linkflow_stream.kafka.records import ProducerRecord

POSITIONS_KEY = b"linkflow:input-positions"
"""The changelog key of the positions record. Run ids are letters, digits, ``_``, ``.`` and ``-``
(``core.start_request.check_execution_id``): none is this key."""


class PositionsError(ValueError):
    """A positions record that does not say what it should (written by something else)."""


def positions_record(
    state_topic: str, partition: int, positions: Mapping[TopicPartition, int]
) -> ProducerRecord:
    """The changelog record of ``partition``'s input positions (real topic names)."""
    offsets = {tp.topic: offset for tp, offset in sorted(positions.items()) if tp.partition == partition}
    value = json.dumps({"positions": offsets}, separators=(",", ":"), sort_keys=True).encode()
    return ProducerRecord(state_topic, POSITIONS_KEY, value, [], partition=partition)


def positions_tombstone(state_topic: str, partition: int) -> ProducerRecord:
    """The record that removes ``partition``'s positions record (compaction then drops both): a
    release before ADR 0061 reads every changelog value as a run's state, and cannot claim a
    partition that holds one."""
    return ProducerRecord(state_topic, POSITIONS_KEY, None, [], partition=partition)


def read_positions(value: bytes, partition: int) -> dict[TopicPartition, int]:
    """The input positions a positions record of ``partition`` holds."""
    try:
        offsets = json.loads(value)["positions"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PositionsError(f"not a positions record: {value[:200]!r}") from exc
    if not isinstance(offsets, dict) or not all(
        isinstance(t, str) and type(o) is int and o >= 0 for t, o in offsets.items()
    ):
        raise PositionsError(f"positions must map topic names to offsets: {value[:200]!r}")
    return {TopicPartition(topic, partition): offset for topic, offset in offsets.items()}


def resume_from(
    changelog: Mapping[TopicPartition, int], group: Mapping[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Where a claim resumes each input: the larger of the changelog's position and the group's
    committed offset (``group`` holds every input: its committed offset, else the log's start)."""
    return {tp: max(offset, changelog.get(tp, offset)) for tp, offset in group.items()}


def beyond_the_logs(
    changelog: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]
) -> list[TopicPartition]:
    """The inputs whose recorded position lies past their log's end (``ends``: as ``read_committed``
    readers see it, never below a position that committed). Only a log deleted and made again
    under the same name is that short: its records start again from 0, and reading it from the old
    position would skip every one of them as decided before."""
    return sorted(tp for tp, offset in changelog.items() if tp in ends and offset > ends[tp])

"""The changelog holds snapshots, not every step (ADR 0039): a run's state is written when it
starts, when it ends, every ``snapshot_every`` events and when its snapshot lags far behind the
events partition; each snapshot says from which events offset its run's later events lie."""

from __future__ import annotations

from typing import Any

import pytest

from linkflow_stream.core import topic_names
from linkflow_stream.core.clock import from_millis
from linkflow_stream.core.messages import NodeResult
from linkflow_stream.core.state import ExecutionState, ExecutionStatus
from linkflow_stream.runtime import partition as partition_module
from linkflow_stream.runtime.partition import Tail, snapshot_every
from linkflow_stream.runtime.restore import SNAPSHOT_OFFSET
from tests.unit.test_partition_batch import (
    CODEC,
    RESULTS,
    T0,
    WAIT,
    FakeProducer,
    partition,
    record,
    start_record,
)

CHAIN = [
    {
        "id": f"h{i}",
        "type": "http",
        "config": {"url": "https://example.com/x", "method": "GET"},
        **({"depends_on": [f"h{i - 1}"]} if i else {}),
    }
    for i in range(20)
]


def result(node: int, execution_id: str = "e1") -> Any:
    done = NodeResult(
        execution_id=execution_id,
        node_id=f"h{node}",
        attempt=1,
        ok=True,
        output={"node": node},
        started_at=from_millis(T0),
        finished_at=from_millis(T0),
    )
    return record(RESULTS, node, CODEC.encode(done), key=execution_id)


def snapshots(producer: FakeProducer, execution_id: str = "e1") -> list[tuple[int, ExecutionState]]:
    """(events_from, state) of every snapshot of the run, in commit order."""
    return [
        (int(dict(r.headers)[SNAPSHOT_OFFSET]), CODEC.decode(r.value, ExecutionState))
        for r in producer.records(topic_names.STATE)
        if r.key == execution_id.encode() and r.value is not None
    ]


async def test_steps_between_snapshots_write_events_only_and_the_floor_counts_them() -> None:
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([start_record(0, CHAIN)], T0)
    assert len(snapshots(producer)) == 1, "a run's first step writes its snapshot"
    for node in range(5):
        await p.run_batch([result(node)], T0 + node + 1)
    assert len(snapshots(producer)) == 1, "results whose events are the change write no state"
    assert p.events_floor == len(producer.records(topic_names.EVENTS))
    tail = p.tails["e1"]
    assert tail.events_from == 0 and tail.events_since == 2 * 5
    assert tail.bytes_since == sum(len(r.value or b"") for r in producer.records(topic_names.EVENTS)[-10:])


async def test_a_snapshot_follows_every_snapshot_every_events_and_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(partition_module, "SNAPSHOT_EVENTS_PER_NODE", 0)
    monkeypatch.setattr(partition_module, "SNAPSHOT_EVENTS_MIN", 6)
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([start_record(0, CHAIN)], T0)
    for node in range(20):
        await p.run_batch([result(node)], T0 + node + 1)
    written = snapshots(producer)
    assert written[-1][1].status is ExecutionStatus.SUCCESS, "a run's end writes its marker (ADR 0071)"
    assert written[-1][1].nodes == {} and written[-2][1].nodes, "the snapshots before it are whole"
    assert 4 <= len(written) <= 9, f"about one per 6 events of 41: {[s.seq for _, s in written]}"
    floors = [f for f, _ in written]
    assert floors == sorted(floors) and floors[-1] > 0
    assert "e1" not in p.tails, "a finished run has no tail"


def test_snapshot_interval_grows_with_the_workflow() -> None:
    small = partition_module.SNAPSHOT_EVENTS_MIN
    assert snapshot_every(_state(5)) == small
    assert snapshot_every(_state(200)) == partition_module.SNAPSHOT_EVENTS_PER_NODE * 200 > small


async def test_a_run_waiting_while_others_write_is_snapshotted_again_when_it_lags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(partition_module, "RESNAPSHOT_LAG", 10)
    producer = FakeProducer()
    p = partition(producer)
    waiting = [{**WAIT[0], "config": {"seconds": 3600}}]
    await p.run_batch([start_record(0, waiting, "idle")], T0)
    assert len(snapshots(producer, "idle")) == 1
    await p.run_batch([start_record(1, CHAIN)], T0 + 1)
    for node in range(6):
        await p.run_batch([result(node)], T0 + node + 2)
    again = snapshots(producer, "idle")
    assert len(again) == 2, "its snapshot lagged more than 10 events behind: written again"
    assert again[1][0] > again[0][0] and again[1][1] == again[0][1] == p.states["idle"]
    assert p.tails["idle"] == Tail(again[1][0], p.tails["idle"].snapshot_bytes)


async def test_an_aborted_batch_puts_its_lagging_entries_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partition_module, "RESNAPSHOT_LAG", 1)
    producer = FakeProducer()
    p = partition(producer)
    await p.run_batch([start_record(0, [{**WAIT[0], "config": {"seconds": 3600}}], "idle")], T0)
    await p.run_batch([start_record(1, CHAIN)], T0 + 1)
    before = len(snapshots(producer, "idle"))
    producer.fail = 1
    with pytest.raises(Exception, match="broker away"):
        await p.run_batch([result(0)], T0 + 2)
    await p.run_batch([result(0)], T0 + 2)
    assert len(snapshots(producer, "idle")) == before + 1, "the retry writes the snapshot the abort lost"


def _state(nodes: int) -> ExecutionState:
    return ExecutionState.model_construct(nodes={f"n{i}": None for i in range(nodes)})
